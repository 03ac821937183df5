"""The built-in faces-coins detection dataset: deterministic, valid COCO for pycocotools, tight boxes, exact labels."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from mnasnet.detection import synthetic
from mnasnet.detection.data import load_coco
from mnasnet.detection.synthetic import SyntheticSettings, generate_faces_coins, render_image
from mnasnet.errors import DataError

SMALL = SyntheticSettings(train_images=24, val_images=40)

# The 24 coin boxes (row, col, row_end, col_end) of skimage.data.coins(), checked by eye on the
# photograph with the boxes drawn (every coin boxed once, tight on its rim).
COIN_BOXES = [
    (16, 305, 72, 365), (28, 132, 74, 179), (30, 192, 73, 240), (34, 255, 72, 297), (35, 22, 74, 67),
    (39, 81, 74, 120), (95, 245, 144, 296), (104, 25, 145, 67), (105, 186, 144, 226), (106, 317, 145, 356),
    (108, 84, 145, 122), (110, 134, 145, 173), (156, 315, 218, 380), (170, 189, 217, 237), (172, 251, 217, 297),
    (175, 80, 217, 124), (179, 26, 217, 63), (179, 135, 217, 174), (233, 18, 288, 75), (236, 144, 288, 201),
    (239, 276, 289, 326), (240, 220, 288, 269), (245, 93, 287, 136), (248, 336, 289, 382),
]  # fmt: skip


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    return generate_faces_coins(tmp_path_factory.mktemp("fc") / "faces-coins", SMALL)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.*")}


def test_same_seed_same_bytes(generated: Path, tmp_path: Path) -> None:
    again = generate_faces_coins(tmp_path / "again", SMALL)
    assert _digest(again) == _digest(generated)
    other = generate_faces_coins(tmp_path / "other", dataclasses.replace(SMALL, seed=1, train_images=0))
    assert _digest(other)["val.json"] != _digest(generated)["val.json"]


def test_coin_cutouts_match_the_boxes_checked_by_eye() -> None:
    cutouts = synthetic.coin_cutouts()
    assert [(c.shape[0], c.shape[1]) for c, _ in cutouts] == [(b[2] - b[0], b[3] - b[1]) for b in COIN_BOXES]
    for _, mask in cutouts:  # an outline touching all four sides of its box, mostly filled (a disc: pi/4)
        assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()
        assert 0.7 < mask.mean() < 0.85


def _evaluate(gt_path: Path, detections: list[dict]) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(gt_path))
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def _as_detections(annotations: list[dict]) -> list[dict]:
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
        for a in annotations
    ]


def test_pycocotools_scores_the_ground_truth_perfect_and_broken_boxes_zero(generated: Path) -> None:
    path = generated / "val.json"
    annotations = json.loads(path.read_text())["annotations"]
    perfect = _evaluate(path, _as_detections(annotations))
    # AP, AP50, AP75, and small / medium / large: each size range holds objects and is found
    np.testing.assert_allclose(perfect[:6], 1.0)

    shifted = _as_detections(annotations)
    for detection in shifted:  # a coder off by half a box: IoU 1/7
        x, y, w, h = detection["bbox"]
        detection["bbox"] = [x + w / 2, y + h / 2, w, h]
    assert _evaluate(path, shifted)[0] < 0.02

    swapped = _as_detections(annotations)
    for detection in swapped:  # a label offset: face <-> coin
        detection["category_id"] = 3 - detection["category_id"]
    assert _evaluate(path, swapped)[0] == 0.0

    halved = copy.deepcopy(_as_detections(annotations))
    for detection in halved:  # boxes not tight (or scaled wrongly): half the side
        x, y, w, h = detection["bbox"]
        detection["bbox"] = [x + w / 4, y + h / 4, w / 2, h / 2]
    assert _evaluate(path, halved)[1] == 0.0  # AP50: IoU 1/4 never counts


def test_readers_agree_with_pycocotools_and_find_nothing_bad(generated: Path) -> None:
    from pycocotools.coco import COCO

    for split in ("train", "val"):
        data = load_coco(generated / f"{split}.json", strict=True)
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(generated / f"{split}.json"))
        assert data.class_names == ["face", "coin"]
        assert [r.image_id for r in data.records] == sorted(coco.getImgIds())
        for record in data.records:
            anns = coco.loadAnns(coco.getAnnIds(imgIds=record.image_id))
            expected = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
            np.testing.assert_allclose(record.boxes, expected)
            assert (record.width, record.height) == (320, 320)


def test_object_sizes_span_16_to_160_and_distractors_are_present(generated: Path) -> None:
    document = json.loads((generated / "train.json").read_text())
    sides = np.array([max(a["bbox"][2:]) for a in document["annotations"]])
    assert sides.min() >= 12 and sides.max() <= 160
    assert (sides < 32).sum() >= 5 and (sides > 96).sum() >= 5
    categories = [a["category_id"] for a in document["annotations"]]
    assert {1, 2} == set(categories) and 0.3 < np.mean(np.array(categories) == 1) < 0.7
    with_distractors = {d["image_id"] for d in document["distractors"]}
    assert len(with_distractors) >= 0.5 * len(document["images"])
    assert {d["kind"] for d in document["distractors"]} == {"non-face", "patch", "disc"}


def _union(boxes: list[list[float]], size: int) -> np.ndarray:
    covered = np.zeros((size, size), dtype=bool)
    for x, y, w, h in boxes:
        covered[int(y) : int(y + h), int(x) : int(x + w)] = True
    return covered


@pytest.mark.parametrize("index", range(6))
def test_boxes_are_tight_and_distractors_unlabelled(index: int) -> None:
    """Rendering with objects (or distractors) turned off changes only the pixels inside their boxes,
    and each object's changed pixels reach all four sides of its box."""
    settings = dataclasses.replace(SMALL, image_format="png")
    full, objects, distractors = render_image(settings, "train", index)
    no_objects, _, same_distractors = render_image(dataclasses.replace(settings, objects=False), "train", index)
    no_distractors, same_objects, _ = render_image(dataclasses.replace(settings, distractors=False), "train", index)
    assert same_distractors == distractors and same_objects == objects

    changed = (full != no_objects).any(-1)
    assert not (changed & ~_union([b for _, b in objects], 320)).any()
    for n, (_, (x, y, w, h)) in enumerate(objects):
        others = _union([b for m, (_, b) in enumerate(objects) if m != n], 320)
        region = changed[int(y) : int(y + h), int(x) : int(x + w)]
        if others[int(y) : int(y + h), int(x) : int(x + w)].any():
            continue  # overlapped by another object: its edge may be hidden
        rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
        assert rows[0] == 0 and cols[0] == 0 and rows[-1] == h - 1 and cols[-1] == w - 1

    changed = (full != no_distractors).any(-1)
    assert not (changed & ~_union([b for _, b in distractors], 320)).any()
    covered = _union([b for _, b in objects], 320)
    hidden = [covered[int(y) : int(y + h), int(x) : int(x + w)].all() for _, (x, y, w, h) in distractors]
    assert changed.any() == (not all(hidden))  # a distractor can only vanish under objects


def test_resolve_builtin_generates_once_atomically(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MNASNET_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(synthetic, "_BUILTIN_SETTINGS", dataclasses.replace(SMALL, train_images=6, val_images=3))
    target = tmp_path / "home" / "datasets" / "faces-coins-v1"

    real_write = synthetic._write_split

    def killed_after_train(folder, settings, split, count):
        real_write(folder, settings, split, count)
        if split == "train":
            raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_write_split", killed_after_train)
    with pytest.raises(KeyboardInterrupt):
        synthetic.resolve_detection_dataset("faces-coins")
    assert not target.exists() and list(target.parent.iterdir()) == []
    monkeypatch.setattr(synthetic, "_write_split", real_write)

    results: list[Path] = []

    def resolve() -> None:
        results.append(synthetic.resolve_detection_dataset("faces-coins"))

    threads = [threading.Thread(target=resolve) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [target, target]
    assert len(json.loads((target / "val.json").read_text())["images"]) == 3
    assert [p.name for p in target.parent.iterdir()] == ["faces-coins-v1"]
    stamp = (target / "val.json").stat().st_mtime_ns
    assert synthetic.resolve_detection_dataset("faces-coins") == target
    assert (target / "val.json").stat().st_mtime_ns == stamp  # not generated again


def test_resolve_user_folder_or_clear_error(generated: Path, tmp_path: Path) -> None:
    assert synthetic.resolve_detection_dataset(generated) == generated
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "train.json").write_text("{}")
    with pytest.raises(DataError, match=r"needs val.json .*faces-coins"):
        synthetic.resolve_detection_dataset(tmp_path / "half")
    with pytest.raises(DataError, match="train.json and val.json"):
        synthetic.resolve_detection_dataset(tmp_path / "nothing")
    with pytest.raises(DataError, match="already exists"):
        generate_faces_coins(generated, SMALL)
    with pytest.raises(ValueError, match="max_object_size"):
        SyntheticSettings(max_object_size=400)
