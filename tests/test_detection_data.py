"""COCO and VOC readers: boxes as pycocotools reads them, every bad-annotation family counted or raised."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnasnet.detection.data import (
    AnnotationWarning,
    DetectionDataset,
    collate,
    eval_transform,
    load_coco,
    load_voc,
)
from mnasnet.errors import DataError

SIZES = {1: (100, 80), 2: (64, 48), 7: (50, 50)}  # image id -> (width, height)


def _image(path: Path, width: int, height: int, seed: int = 0) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _document() -> dict:
    return {
        "images": [{"id": i, "file_name": f"img/{i}.png", "width": w, "height": h} for i, (w, h) in SIZES.items()],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [10.0, 20.0, 30.0, 15.5], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 90, "bbox": [0, 0, 100, 80], "iscrowd": 0},
            {"id": 12, "image_id": 2, "category_id": 5, "bbox": [1.5, 2.5, 3, 4], "iscrowd": 0},
            {"id": 13, "image_id": 2, "category_id": 5, "bbox": [5, 5, 20, 20], "iscrowd": 1},
        ],
        "categories": [{"id": 90, "name": "zebra"}, {"id": 3, "name": "car"}, {"id": 5, "name": "dog"}],
    }


@pytest.fixture
def coco_dir(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    for image_id, (width, height) in SIZES.items():
        _image(tmp_path / "img" / f"{image_id}.png", width, height, seed=image_id)
    return tmp_path


def _write(folder: Path, document: dict, name: str = "train.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(document))  # json writes NaN and Infinity, as some tools do
    return path


def _load_quietly(path: Path, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_coco(path, **kwargs)
    return data, [str(w.message) for w in caught if issubclass(w.category, AnnotationWarning)]


def test_coco_boxes_match_pycocotools(coco_dir: Path) -> None:
    from pycocotools.coco import COCO

    path = _write(coco_dir, _document())
    data, messages = _load_quietly(path)
    assert messages == []
    coco = COCO(str(path))
    assert [r.image_id for r in data.records] == coco.getImgIds()
    for record in data.records:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=record.image_id, iscrowd=False))
        expected = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        np.testing.assert_allclose(record.boxes, np.array(expected, dtype=np.float32).reshape(-1, 4))
        assert record.category_ids.tolist() == [a["category_id"] for a in anns]
        assert (record.width, record.height) == (
            coco.imgs[record.image_id]["width"],
            coco.imgs[record.image_id]["height"],
        )
    # contiguous labels in category-id order: 3 -> 1, 5 -> 2, 90 -> 3; 0 is background
    assert data.class_names == ["car", "dog", "zebra"] and data.num_classes == 4
    assert data.labels(data.records[0]).tolist() == [1, 3]
    assert data.category_of(3) == 90


# (name, mutation of the document, reason in the warning, "annotation" or "image")
def _set(path, value):
    def mutate(document):
        target = document
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _delete(path):
    def mutate(document):
        target = document
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


def _append(section, entry):
    return lambda document: document[section].append(entry)


BAD_FAMILIES = [
    ("fully outside", _set(("annotations", 0, "bbox"), [200, 10, 10, 10]), "1 outside image", "annotation"),
    ("zero width", _set(("annotations", 0, "bbox"), [10, 10, 0, 10]), "1 zero or negative area", "annotation"),
    ("negative height", _set(("annotations", 0, "bbox"), [10, 10, 5, -3]), "1 zero or negative area", "annotation"),
    ("nan", _set(("annotations", 0, "bbox"), [float("nan"), 1, 2, 3]), "1 NaN or infinite coordinate", "annotation"),
    ("inf", _set(("annotations", 0, "bbox"), [1, 1, float("inf"), 3]), "1 NaN or infinite coordinate", "annotation"),
    ("unknown category", _set(("annotations", 0, "category_id"), 4), "1 unknown category", "annotation"),
    ("unknown image", _set(("annotations", 0, "image_id"), 999), "1 unknown image id", "annotation"),
    ("duplicate annotation id", _set(("annotations", 2, "id"), 10), "1 duplicate annotation id", "annotation"),
    ("missing bbox", _delete(("annotations", 0, "bbox")), "1 malformed annotation", "annotation"),
    ("bbox as text", _set(("annotations", 0, "bbox"), "10,20,30,40"), "1 malformed annotation", "annotation"),
    ("bbox of 3", _set(("annotations", 0, "bbox"), [1, 2, 3]), "1 malformed annotation", "annotation"),
    ("category as text", _set(("annotations", 0, "category_id"), "3"), "1 malformed annotation", "annotation"),
    ("annotation not a dict", _set(("annotations", 0), [1, 2]), "1 malformed annotation", "annotation"),
    ("bad iscrowd", _set(("annotations", 0, "iscrowd"), "no"), "1 malformed annotation", "annotation"),
    ("missing file", _set(("images", 2, "file_name"), "img/none.png"), "1 missing file", "image"),
    (
        "duplicate image id",
        _append("images", {"id": 7, "file_name": "img/1.png", "width": 100, "height": 80}),
        "1 duplicate image id",
        "image",
    ),  # fmt: skip
    ("size mismatch", _set(("images", 2, "width"), 51), "1 size differs from file", "image"),
    ("width as text", _set(("images", 2, "width"), "50"), "1 malformed image entry", "image"),
    ("missing file_name", _delete(("images", 2, "file_name")), "1 malformed image entry", "image"),
    ("image id missing", _delete(("images", 2, "id")), "1 malformed image entry", "image"),
]


@pytest.mark.parametrize(("mutate", "reason", "kind"), [f[1:] for f in BAD_FAMILIES], ids=[f[0] for f in BAD_FAMILIES])
def test_bad_entry_is_counted_in_one_warning_and_raised_when_strict(coco_dir, mutate, reason, kind) -> None:
    clean = load_coco(_write(coco_dir, _document(), "clean.json"))
    document = _document()
    mutate(document)
    path = _write(coco_dir, document)
    data, messages = _load_quietly(path)
    assert len(messages) == 1, messages
    assert messages[0] == f"train.json: skipped 1 {kind} ({reason})"
    if kind == "annotation":
        assert sum(len(r.boxes) for r in data.records) == sum(len(r.boxes) for r in clean.records) - 1
    else:
        assert len(data.records) == len(clean.records) - (0 if "duplicate" in reason else 1)
    with pytest.raises(DataError, match="train.json: .*" + reason.split(" ", 1)[1].replace("(", r"\(")):
        load_coco(path, strict=True)


def test_unreadable_image_file_is_counted(coco_dir: Path) -> None:
    (coco_dir / "img" / "7.png").write_bytes(b"not an image at all")
    _, messages = _load_quietly(_write(coco_dir, _document()))
    assert messages == ["train.json: skipped 1 image (1 unreadable image)"]


def test_partly_outside_box_is_clipped_and_counted(coco_dir: Path) -> None:
    document = _document()
    document["annotations"][0]["bbox"] = [90, -5, 30, 20]  # image 1 is 100x80
    document["annotations"].append({"id": 20, "image_id": 2, "category_id": 5, "bbox": [60, 40, 4.5, 8.9]})
    data, messages = _load_quietly(_write(coco_dir, document))
    # the second box passes the 64x48 border by 0.5 and 0.9 pixels: rounding, clipped without a word
    assert messages == ["train.json: clipped 1 box partly outside the image"]
    np.testing.assert_allclose(data.records[0].boxes[0], [90, 0, 100, 15])
    np.testing.assert_allclose(data.records[1].boxes[-1], [60, 40, 64, 48])
    with pytest.raises(DataError, match="partly outside"):
        load_coco(_write(coco_dir, document), strict=True)


def test_summary_groups_reasons_in_one_line(coco_dir: Path) -> None:
    document = _document()
    document["annotations"][0]["bbox"] = [1, 1, 0, 4]
    document["annotations"][1]["bbox"] = [1, 1, 4, 0]
    document["annotations"][2]["category_id"] = 77
    document["images"][2]["file_name"] = "img/gone.png"
    _, messages = _load_quietly(_write(coco_dir, document))
    assert messages == [
        "train.json: skipped 3 annotations (2 zero or negative area, 1 unknown category) and 1 image (1 missing file)"
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b"[1, 2, 3]", "not a COCO annotation file"),
        (b'{"images": [], "categories": [{"id": 1, "name": "a"}]}', "has no images"),
        (b'{"images": {}, "categories": []}', "must be lists"),
        (b'{"images": [{"id": 1}]}', "categories"),
        (b'{"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}', "twice"),
        (b'{"images": [{"id": 1}], "categories": [{"id": "1", "name": "a"}]}', "integer id"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON|not a COCO"),
    ],
)
def test_unreadable_files_are_one_data_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_coco(path)


def test_no_usable_image_is_an_error(coco_dir: Path) -> None:
    document = _document()
    for entry in document["images"]:
        entry["file_name"] = "img/missing.png"
    with pytest.warns(AnnotationWarning), pytest.raises(DataError, match="no usable images"):
        load_coco(_write(coco_dir, document))
    with pytest.raises(DataError, match="not found|cannot read"):
        load_coco(coco_dir / "absent.json")


def test_resource_limits_refuse_before_reading(coco_dir: Path) -> None:
    path = _write(coco_dir, _document())
    with pytest.raises(DataError, match="the limit is 100 bytes"):
        load_coco(path, max_bytes=100)
    with pytest.raises(DataError, match="4 annotations; the limit is 3"):
        load_coco(path, max_annotations=3)
    with pytest.raises(DataError, match="3 images; the limit is 2"):
        load_coco(path, max_images=2)
    assert len(load_coco(path, max_annotations=4, max_images=3)) == 3


def test_declared_size_of_exif_rotated_image_is_the_rotated_one(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)  # stored 60 wide, 40 high
    pixels[:10, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display: shown 40 wide, 60 high
    Image.fromarray(pixels).save(tmp_path / "img" / "r.jpg", exif=exif, quality=95)
    document = {
        "images": [{"id": 1, "file_name": "img/r.jpg", "width": 40, "height": 60}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [30, 0, 10, 20]}],
        "categories": [{"id": 1, "name": "white"}],
    }
    data = load_coco(_write(tmp_path, document), strict=True)
    image, target = DetectionDataset(data)[0]
    assert image.shape == (3, 60, 40)
    # the white corner, after rotation, is where the box says (normalised white is far above 0)
    assert image[:, :20, 30:].mean() > 1.5 and image[:, 30:, :20].mean() < -1.0
    torch.testing.assert_close(target["boxes"], torch.tensor([[30.0, 0.0, 40.0, 20.0]]))
    document["images"][0].update(width=60, height=40)
    with pytest.raises(DataError, match="declared 60x40, file 40x60"):
        load_coco(_write(tmp_path, document), strict=True)


MODES = ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1", "RGB"]


@pytest.mark.parametrize("mode", MODES)
def test_dataset_reads_every_image_mode_as_rgb(tmp_path: Path, mode: str) -> None:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8))
    image = rgb.convert("L").convert("I;16") if mode == "I;16" else rgb.convert(mode)
    name = "x.jpg" if mode == "CMYK" else "x.tiff" if mode == "I;16" else "x.png"
    image.save(tmp_path / name)
    document = {
        "images": [{"id": 3, "file_name": name, "width": 50, "height": 30}],
        "annotations": [{"id": 1, "image_id": 3, "category_id": 1, "bbox": [5, 6, 20, 10]}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    data = load_coco(_write(tmp_path, document), strict=True)
    dataset = DetectionDataset(data, eval_transform(64))
    tensor, target = dataset[0]
    assert tensor.shape == (3, 64, 64) and tensor.dtype == torch.float32 and torch.isfinite(tensor).all()
    # plain resize 50x30 -> 64x64: x * 64/50, y * 64/30
    torch.testing.assert_close(target["boxes"], torch.tensor([[6.4, 12.8, 32.0, 34.133333]]))
    assert target["labels"].tolist() == [1] and target["labels"].dtype == torch.int64
    assert target["image_id"] == 3 and target["orig_size"].tolist() == [30, 50]


def test_collate_pads_images_and_keeps_targets(coco_dir: Path) -> None:
    data = load_coco(_write(coco_dir, _document()))
    dataset = DetectionDataset(data)  # no transform: images keep their sizes
    batch = [dataset[i] for i in range(len(dataset))]
    images, targets = collate(batch)
    assert images.shape == (3, 3, 80, 100)
    torch.testing.assert_close(images[1, :, :48, :64], batch[1][0])
    assert images[1, :, 48:].abs().sum() == 0 and images[1, :, :, 64:].abs().sum() == 0
    assert [len(t["boxes"]) for t in targets] == [2, 1, 0]
    assert targets[2]["boxes"].shape == (0, 4) and targets[2]["labels"].shape == (0,)


# -- Pascal VOC ----------------------------------------------------------------------------

VOC_XML = """<annotation>
  <folder>VOC2007</folder><filename>{filename}</filename>
  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>
  {objects}
</annotation>"""


def _voc_object(name: str, box, difficult: int = 0) -> str:
    xmin, ymin, xmax, ymax = box
    return (
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin>"
        f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
    )


@pytest.fixture
def voc_dir(tmp_path: Path) -> Path:
    root = tmp_path / "VOC2007"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for stem, (width, height) in {"000001": (100, 80), "000002": (64, 48)}.items():
        _image(root / "JPEGImages" / f"{stem}.jpg", width, height)
    objects = _voc_object("dog", (1, 1, 10, 20)) + _voc_object("person", (50, 30, 100, 80), difficult=1)
    (root / "Annotations" / "000001.xml").write_text(
        VOC_XML.format(filename="000001.jpg", width=100, height=80, objects=objects)
    )
    (root / "Annotations" / "000002.xml").write_text(
        VOC_XML.format(filename="000002.jpg", width=64, height=48, objects=_voc_object("cat", (5.5, 6, 30, 40)))
    )
    (root / "ImageSets" / "Main" / "val.txt").write_text("000002\n")
    return root


def test_voc_boxes_are_continuous_coordinates(voc_dir: Path) -> None:
    data = load_voc(voc_dir, strict=True)
    assert len(data) == 2 and data.num_classes == 21
    # VOC pixel 1..10 (1-based, inclusive) is the continuous span [0, 10]; difficult objects left out
    np.testing.assert_allclose(data.records[0].boxes, [[0, 0, 10, 20]])
    assert data.class_names[data.labels(data.records[0])[0] - 1] == "dog"
    np.testing.assert_allclose(data.records[1].boxes, [[4.5, 5, 30, 40]])
    with_difficult = load_voc(voc_dir, include_difficult=True)
    assert with_difficult.class_names[with_difficult.labels(with_difficult.records[0])[1] - 1] == "person"
    assert [r.path.name for r in load_voc(voc_dir, split="val").records] == ["000002.jpg"]
    listed = load_voc([voc_dir / "Annotations" / "000002.xml"], classes=("cat",))
    assert listed.class_names == ["cat"] and listed.labels(listed.records[0]).tolist() == [1]


@pytest.mark.parametrize(
    ("content", "reason", "kind"),
    [
        ("<annotation><filename>000002.jpg", "1 malformed XML", "image"),
        ('<!DOCTYPE a [<!ENTITY x "y">]><annotation/>', "1 malformed XML", "image"),
        ("<other/>", "1 malformed XML", "image"),
        (VOC_XML.format(filename="000002.jpg", width="abc", height=48, objects=""), "1 malformed image entry", "image"),
        (VOC_XML.format(filename="nope.jpg", width=64, height=48, objects=""), "1 missing file", "image"),
        (VOC_XML.format(filename="000002.jpg", width=65, height=48, objects=""), "1 size differs from file", "image"),
        (VOC_XML.format(filename="000001.jpg", width=100, height=80, objects=""), "1 duplicate image id", "image"),
        (  # a size claimed in the XML is refused before the file is opened
            VOC_XML.format(filename="000002.jpg", width=10**6, height=10**6, objects=""),
            "1 malformed image entry",
            "image",
        ),
        (
            VOC_XML.format(filename="000002.jpg", width=64, height=48, objects=_voc_object("unicorn", (1, 1, 5, 5))),
            "1 unknown category",
            "annotation",
        ),  # fmt: skip
        (
            VOC_XML.format(filename="000002.jpg", width=64, height=48, objects=_voc_object("cat", (1, 1, "x", 5))),
            "1 malformed annotation",
            "annotation",
        ),  # fmt: skip
        (
            VOC_XML.format(filename="000002.jpg", width=64, height=48, objects=_voc_object("cat", (9, 1, 5, 5))),
            "1 zero or negative area",
            "annotation",
        ),  # fmt: skip
        (
            VOC_XML.format(filename="000002.jpg", width=64, height=48, objects=_voc_object("cat", (1, 1, "nan", 5))),
            "1 NaN or infinite coordinate",
            "annotation",
        ),  # fmt: skip
    ],
)
def test_voc_bad_entries_counted_and_strict(voc_dir: Path, content: str, reason: str, kind: str) -> None:
    (voc_dir / "Annotations" / "000002.xml").write_text(content)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_voc(voc_dir)
    messages = [str(w.message) for w in caught if issubclass(w.category, AnnotationWarning)]
    assert messages == [f"VOC2007: skipped 1 {kind} ({reason})"]
    with pytest.raises(DataError, match=reason.split(" ", 1)[1]):
        load_voc(voc_dir, strict=True)


def test_voc_limits_and_missing_folders(voc_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="2 annotation files; the limit is 1"):
        load_voc(voc_dir, max_files=1)
    with pytest.raises(DataError, match="not a VOC folder"):
        load_voc(tmp_path / "nothing")
    listing = voc_dir / "ImageSets" / "Main" / "val.txt"
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("000002\n../../outside\n")
    with pytest.raises(DataError, match="id '../../outside' names a file outside"):
        load_voc(voc_dir, split="val")
    big = voc_dir / "Annotations" / "000002.xml"
    big.write_text("<annotation>" + " " * (5 * 2**20) + "</annotation>")
    with pytest.warns(AnnotationWarning, match="1 malformed XML"):
        load_voc(voc_dir)
