"""ONNX Runtime and LiteRT predictors: predict/evaluate on exported files match the PyTorch model."""

from __future__ import annotations

import numpy as np
import pytest

import mnasnet  # noqa: E402
from mnasnet.deploy.runtimes import LiteRTPredictor, OnnxPredictor, quantize_input  # noqa: E402
from mnasnet.errors import CheckpointError  # noqa: E402
from mnasnet.evaluate import evaluate  # noqa: E402
from mnasnet.predict import predict_images  # noqa: E402
from mnasnet.runtime import load_predictor  # noqa: E402
from test_export import LABELS  # noqa: E402


@pytest.mark.parametrize("exported", ["onnx_fp32", "tflite_fp32"])
def test_predict_and_evaluate_give_the_pytorch_top_k(exported, request, a1_checkpoint, photo_folder):
    path = request.getfixturevalue(exported)
    reference, predictor = load_predictor(a1_checkpoint), load_predictor(path)
    assert isinstance(predictor, OnnxPredictor if path.suffix == ".onnx" else LiteRTPredictor)
    images = sorted((photo_folder / "val").rglob("*.png"))
    expected = predict_images(reference, images, topk=5, progress=False)
    actual = predict_images(predictor, images, topk=5, progress=False)
    for mine, theirs in zip(actual, expected, strict=True):
        assert mine.top[0].label == theirs.top[0].label in LABELS
        ranked = [score.prob for score in theirs.top]
        for rank, (a, b) in enumerate(zip(mine.top, theirs.top, strict=True)):
            assert a.prob == pytest.approx(b.prob, abs=1e-4)
            # the linear-probe head leaves some lower ranks tied to float rounding; only clear gaps must keep order
            gaps = [abs(ranked[rank] - ranked[other]) for other in (rank - 1, rank + 1) if 0 <= other < len(ranked)]
            if min(gaps) > 1e-4:
                assert a.label == b.label
    assert evaluate(predictor, photo_folder)["top1"] == evaluate(reference, photo_folder)["top1"]


def test_int8_predictor_quantises_with_the_files_own_parameters(tflite_int8, photo_batch):
    predictor = load_predictor(tflite_int8)
    scale, zero_point = predictor.input["quantization"]
    quantised = quantize_input(photo_batch, scale, zero_point)
    assert quantised.dtype == np.int8
    # the quantisation grid reproduces the float input to within half a step (where not clipped)
    restored = (quantised.astype(np.float32) - zero_point) * scale
    inside = (quantised > -128) & (quantised < 127)
    assert np.abs(restored - photo_batch)[inside].max() <= scale / 2 + 1e-6
    logits = predictor(photo_batch[:3])
    assert logits.dtype == np.float32 and logits.shape == (3, len(LABELS))


def test_batch_sizes_other_than_the_files(tflite_fp32, photo_batch):
    predictor = load_predictor(tflite_fp32)  # a batch-1 file
    together = predictor(photo_batch[:4])
    one_by_one = np.concatenate([predictor(photo_batch[i : i + 1]) for i in range(4)])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_corrupt_and_missing_files_raise_checkpoint_error(tmp_path):
    for suffix in (".onnx", ".tflite"):
        corrupt = tmp_path / f"corrupt{suffix}"
        corrupt.write_bytes(b"garbage" * 100)
        with pytest.raises(CheckpointError):
            load_predictor(corrupt)
        with pytest.raises(CheckpointError, match="not found"):
            load_predictor(tmp_path / f"missing{suffix}")


def test_foreign_onnx_file_without_metadata_still_runs(tmp_path):
    import torch

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    path = tmp_path / "foreign.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 48, 48),), str(path), dynamo=True)
    predictor = load_predictor(path)
    assert predictor.labels is None and predictor.preprocess.resolution == 48 and predictor.layout == "nchw"
    assert predictor(np.zeros((1, 3, 48, 48), np.float32)).shape == (1, 4)
    assert mnasnet.MnasNetError  # the error base class every failure above derives from
