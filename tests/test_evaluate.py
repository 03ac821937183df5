"""The backend-independent evaluator: known answers, an independent NumPy computation, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mnasnet.checkpoint import save_checkpoint
from mnasnet.cli import main as cli_main
from mnasnet.data.preprocess import Preprocess, build_eval_transform
from mnasnet.errors import DataError
from mnasnet.evaluate import evaluate
from mnasnet.model import create_model
from mnasnet.runtime import Predictor

CLASSES = 8
# where each class's true label lands in the fake model's ranking (1 = top)
RANK_OF_TRUTH = {0: 1, 1: 3, 2: 6, 3: 1, 4: 1, 5: 3, 6: 6, 7: 1}  # top-1 4/8, top-5 6/8


def make_red_dataset(root, per_class=3):
    """Class c: flat images whose red channel is 20 + 25 * c (the fake model reads it back)."""
    for c in range(CLASSES):
        folder = root / "val" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (20 + 3 * i, 18), (20 + 25 * c, 90, 60)).save(folder / f"{i}.png")
    return root


class RedChannelPredictor(Predictor):
    """Recovers the class from the red level, then ranks the truth at RANK_OF_TRUTH[c]."""

    def __init__(self, labels=None):
        self.preprocess = Preprocess.for_resolution(16)
        self.labels = labels
        self.name = "fake"
        self.calls = 0

    def predict_logits(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        red = images[:, 0].mean(axis=(1, 2)) * self.preprocess.std[0] + self.preprocess.mean[0]
        classes = np.rint((red * 255 - 20) / 25).astype(int)
        logits = np.zeros((len(images), CLASSES), dtype=np.float32)
        for row, c in enumerate(classes):
            others = [k for k in range(CLASSES) if k != c]
            order = others[: RANK_OF_TRUTH[c] - 1] + [c] + others[RANK_OF_TRUTH[c] - 1 :]
            truth_index = c if self.labels is None else self.labels.index(f"class{c}")
            mapped = [k if self.labels is None else self.labels.index(f"class{k}") for k in order]
            logits[row, mapped] = np.arange(CLASSES, 0, -1)
            assert logits[row, truth_index] == CLASSES - RANK_OF_TRUTH[c] + 1
        return logits


def test_known_answer_top1_top5_and_per_class(tmp_path):
    root = make_red_dataset(tmp_path / "data")
    predictor = RedChannelPredictor()
    result = evaluate(predictor, root, batch_size=5, per_class=True)
    assert result["n"] == 24 and result["runtime"] == "fake"
    assert result["top1"] == pytest.approx(50.0) and result["top5"] == pytest.approx(75.0)
    assert result["per_class"]["class0"] == {"top1": 100.0, "n": 3}
    assert result["per_class"]["class1"]["top1"] == 0.0
    assert predictor.calls == 5  # 24 images in batches of 5
    # labels in another order: classes are matched by name, not position
    shuffled = [f"class{c}" for c in (5, 2, 7, 0, 1, 6, 3, 4)]
    assert evaluate(RedChannelPredictor(shuffled), root)["top1"] == pytest.approx(50.0)
    limited = evaluate(RedChannelPredictor(), root, limit=8)
    assert limited["n"] == 8


def test_checkpoint_accuracy_matches_independent_numpy(tmp_path):
    root = make_red_dataset(tmp_path / "data", per_class=2)
    model = create_model("small", width_multiplier=0.35, num_classes=CLASSES, resolution=32)
    # give the random model confident, varied outputs so top-1 and top-5 are not trivial
    torch.manual_seed(0)
    with torch.no_grad():
        model.classifier.weight.mul_(20)
    path = save_checkpoint(model, tmp_path / "m.safetensors", labels=[f"class{c}" for c in range(CLASSES)])
    result = evaluate(path, root)
    # independent: our own file walk, the documented eval transform, plain torch forward, numpy ranking
    transform = build_eval_transform(Preprocess.for_resolution(32))
    images, labels = [], []
    for c in range(CLASSES):
        for file in sorted((root / "val" / f"class{c}").iterdir()):
            images.append(transform(Image.open(file).convert("RGB")))
            labels.append(c)
    model.eval()
    with torch.no_grad():
        logits = model(torch.stack(images)).numpy()
    ranks = (logits > logits[np.arange(len(labels)), labels][:, None]).sum(1)  # classes scoring higher
    assert result["n"] == len(labels)
    assert result["top1"] == pytest.approx(100 * np.mean(ranks == 0))
    assert result["top5"] == pytest.approx(100 * np.mean(ranks < 5))
    assert 0 < result["top5"] < 100 or result["top1"] < result["top5"]


def test_cli_json_and_errors(tmp_path, capsys):
    root = make_red_dataset(tmp_path / "data", per_class=1)
    model = create_model("small", width_multiplier=0.35, num_classes=CLASSES, resolution=32)
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    assert cli_main(["evaluate", "--weights", str(path), "--data", str(root), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) >= {"top1", "top5", "n"} and printed["n"] == CLASSES
    assert cli_main(["evaluate", "--weights", str(path), "--data", str(root), "--per-class"]) == 0
    assert "class7" in capsys.readouterr().out
    assert cli_main(["evaluate", "--weights", str(path), "--data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dataset folder not found" in err[0]
    small = create_model("small", width_multiplier=0.35, num_classes=3, resolution=32)
    with pytest.raises(DataError, match="8 classes but the model predicts only 3"):
        evaluate(save_checkpoint(small, tmp_path / "s.safetensors"), root)
