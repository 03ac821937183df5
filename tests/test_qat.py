"""Quantisation-aware training: QAT runs, and the int8 files they export, against outside yardsticks.

The float model is MnasNet-small x0.35 at 32 px trained on the built-in ``photos`` (a fixture file).
QAT fine-tunes it for one short epoch on a 100-image slice of ``photos``; the int8
files are then run by LiteRT and ONNX Runtime and compared with the QAT fake-quant model in
PyTorch, with the post-training int8 files of the same float model, and with Vela.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import mnasnet
from mnasnet.checkpoint import read_checkpoint, save_checkpoint
from mnasnet.data.datasets import resolve_dataset
from mnasnet.data.photos import PHOTO_CLASSES
from mnasnet.data.preprocess import Preprocess, build_eval_transform
from mnasnet.deploy import DeployError, export_onnx, export_tflite, read_metadata
from mnasnet.deploy.export_tflite import tflite_io_details
from mnasnet.deploy.graph import ExportableMnasNet
from mnasnet.deploy.npu import vela_report
from mnasnet.deploy.qat import observers_frozen, sync_qparams
from mnasnet.errors import CheckpointError, ConfigError, DataError, MnasNetError
from mnasnet.runtime import load_predictor
from mnasnet.train import load_config, train_qat

RESOLUTION = 32
PER_CLASS = {"train": 8, "val": 2}  # 80 training images: 5 steps of 16


@pytest.fixture(scope="module")
def tiny_photos(tmp_path_factory):
    """The first few patches of each class of the built-in ``photos``."""
    source, root = resolve_dataset("photos"), tmp_path_factory.mktemp("tiny_photos")
    for split, count in PER_CLASS.items():
        for name in PHOTO_CLASSES:
            (root / split / name).mkdir(parents=True)
            for path in sorted((source / split / name).iterdir())[:count]:
                shutil.copy(path, root / split / name / path.name)
    return root


def _images(root, split: str) -> tuple[np.ndarray, np.ndarray]:
    from mnasnet.data.images import load_image

    transform = build_eval_transform(Preprocess.for_resolution(RESOLUTION))
    files = sorted((root / split).glob("*/*.png"))
    images = np.stack([transform(load_image(path)).numpy() for path in files])
    labels = np.array([PHOTO_CLASSES.index(path.parent.name) for path in files])
    return images, labels


# MnasNet-small x0.35 at 32 px trained on the built-in photos (60-epoch recipe of benchmarks/qat.py,
# stopped at epoch 46: 79.0% val top-1). A trained model, because int8 of a random-weight network is
# chaotic: LiteRT's integer kernels and PyTorch's simulation of them then agree on ~55% of top-1s.
FLOAT_CHECKPOINT = Path(__file__).parent / "fixtures" / "qat_photos_small_x035_32px.safetensors"


@pytest.fixture(scope="module")
def float_checkpoint():
    return FLOAT_CHECKPOINT


def _config(data, weights, output, **overrides):
    settings = dict(qat=True, weights=str(weights), data=str(data), resolution=RESOLUTION, epochs=1,
                    batch_size=16, lr=1e-4, warmup_epochs=0.0, workers=0, tensorboard=False, plot=False,
                    output=str(output))  # fmt: skip
    return load_config(overrides={**settings, **overrides})


@pytest.fixture(scope="module")
def qat_training(tiny_photos, float_checkpoint, tmp_path_factory):
    """The module's QAT run, with copies of its final model states taken before any test uses its models.

    test_resumed_qat_run_ends_equal_to_an_uninterrupted_one compares a resumed run with these states
    (the same settings, trained in the same process), rather than training the same run again.
    """
    output = tmp_path_factory.mktemp("qat") / "run"
    run = train_qat(_config(tiny_photos, float_checkpoint, output), progress=False)
    states = {name: copy.deepcopy(getattr(run, name).state_dict()) for name in ("train_model", "model")}
    return run, states


@pytest.fixture(scope="module")
def qat_run(qat_training):
    return qat_training[0]


@pytest.fixture(scope="module")
def qat_files(qat_run):
    best = qat_run.run_dir / "best.safetensors"
    tflite = export_tflite(best, qat_run.run_dir / "qat.tflite", int8=True)
    onnx_file = export_onnx(best, qat_run.run_dir / "qat.onnx", int8=True)
    return best, tflite, onnx_file


def _weight_scale_lengths(path) -> list[int]:
    """Scale counts of the int8 weight tensors (filters, constant buffers) of a TFLite file."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(bytearray(path.read_bytes()), 0)
    graph = model.Subgraphs(0)
    lengths = []
    for index in range(graph.TensorsLength()):
        tensor = graph.Tensors(index)
        buffer = model.Buffers(tensor.Buffer())
        if tensor.Type() == schema.TensorType.INT8 and buffer is not None and buffer.DataLength() > 0:
            lengths.append(tensor.Quantization().ScaleLength())
    return lengths


def test_qat_checkpoint_is_a_float_checkpoint_that_refolds_exactly(qat_run):
    best = qat_run.run_dir / "best.safetensors"
    extra = read_checkpoint(best).extra
    assert extra["qat"]["per_channel"] is True and len(extra["qat"]["activation_ranges"]) > 50
    assert all(low <= 0.0 <= high or low <= high for low, high in extra["qat"]["activation_ranges"])
    # the exporter folds the saved BN again: it must get back the trained graph's float32 weights, bit for bit
    refolded = ExportableMnasNet(mnasnet.load_model(best)).state_dict()
    trained = qat_run.model.state_dict()
    assert all(torch.equal(refolded[name], trained[name]) for name in refolded)


@pytest.mark.slow
def test_qat_exports_are_the_standard_int8_files_and_agree_with_the_fake_quant_model(
    qat_run, qat_files, float_checkpoint, tiny_photos
):
    import onnx
    from ai_edge_litert.interpreter import Interpreter

    best, tflite, onnx_file = qat_files
    # the post-training files are compared by their form (tensors, operators, metadata), not by accuracy:
    # a few calibration images make the same form
    ptq_tflite = export_tflite(
        float_checkpoint, best.with_name("ptq.tflite"), int8=True, calibration=tiny_photos, calibration_limit=4
    )
    ptq_onnx = export_onnx(
        float_checkpoint, best.with_name("ptq.onnx"), int8=True, calibration=tiny_photos, calibration_limit=4
    )
    # LiteRT's own view of the files: int8 NHWC input, int8 output, as the post-training file
    details = []
    for path in (tflite, ptq_tflite):
        interpreter = Interpreter(model_path=str(path))
        details.append([(d["dtype"], tuple(d["shape"])) for d in interpreter.get_input_details()
                        + interpreter.get_output_details()])  # fmt: skip
    assert details[0] == details[1] == [(np.int8, (1, RESOLUTION, RESOLUTION, 3)), (np.int8, (1, 10))]
    for qat_file, ptq_file in ((tflite, ptq_tflite), (onnx_file, ptq_onnx)):
        qat_meta, ptq_meta = read_metadata(qat_file), read_metadata(ptq_file)
        assert (qat_meta.precision, qat_meta.layout, qat_meta.labels) == ("int8", ptq_meta.layout, ptq_meta.labels)
        assert qat_meta.quantization["calibration_images"] == 0 and "QAT" in qat_meta.quantization["activations"]
    # ONNX: the same QDQ form (float input/output, int8 QuantizeLinear/DequantizeLinear around the ops)
    graphs = [onnx.load(str(path)).graph for path in (onnx_file, ptq_onnx)]
    for graph in graphs:
        ops = {node.op_type for node in graph.node}
        assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
        assert graph.input[0].type.tensor_type.elem_type == graph.output[0].type.tensor_type.elem_type == 1
    # the runtimes running the files agree with the QAT fake-quant model in PyTorch
    images, _ = _images(resolve_dataset("photos"), "val")
    images = images[::4]  # 100 patches
    fake_quant = qat_run.model
    sync_qparams(fake_quant)
    with torch.no_grad(), observers_frozen(fake_quant):
        expected = fake_quant(torch.from_numpy(images)).numpy()
    # The logits are int8 (this model's range is wide: steps of ~0.5): compare in output steps, and top-1
    # where the fake-quant model's winner leads by at least one step (ties are broken arbitrarily).
    step = tflite_io_details(tflite)["output"]["scale"]
    ordered = np.sort(expected, 1)
    clear = ordered[:, -1] - ordered[:, -2] >= step * 0.999
    assert clear.sum() >= 50
    for path in (tflite, onnx_file):
        logits = load_predictor(path)(images)
        agreement = (logits.argmax(1) == expected.argmax(1))[clear].mean()
        assert agreement >= 0.9, (path.suffix, agreement)
        assert np.abs(logits - expected).mean() <= 0.25 * step, path.suffix  # integer kernels round otherwise


@pytest.mark.slow
def test_qat_tflite_runs_entirely_on_the_npu(qat_files):
    report = vela_report(qat_files[1], "ethos-u65-256")
    assert report.cpu_operators == 0, report.format()


@pytest.mark.slow
def test_weight_scales_follow_the_exporters_granularity(qat_files, tiny_photos, float_checkpoint, tmp_path):
    per_channel_lengths = _weight_scale_lengths(qat_files[1])
    assert max(per_channel_lengths) > 1  # one scale per output channel
    # one step makes a per-tensor QAT checkpoint (last.safetensors, written where max_steps stops the run);
    # the scales' granularity does not depend on how long it trained
    run = train_qat(_config(tiny_photos, float_checkpoint, tmp_path / "run", per_tensor=True, max_steps=1),
                    progress=False)  # fmt: skip
    assert run.status == "stopped"
    last = run.run_dir / "last.safetensors"
    with pytest.raises(DeployError, match="per-tensor"):
        export_tflite(last, tmp_path / "wrong.tflite", int8=True)  # per-channel asked of a per-tensor QAT
    per_tensor = export_tflite(last, tmp_path / "qat_pt.tflite", int8=True, per_channel=False)
    ptq = export_tflite(float_checkpoint, tmp_path / "ptq_pt.tflite", int8=True, calibration=tiny_photos,
                        calibration_limit=2, per_channel=False)  # fmt: skip
    # the same weight tensors as the exporter's own per-tensor file, each with one scale
    assert _weight_scale_lengths(per_tensor) == _weight_scale_lengths(ptq)
    assert set(_weight_scale_lengths(per_tensor)) == {1}
    assert len(per_channel_lengths) == len(_weight_scale_lengths(ptq))


@pytest.mark.slow
def test_resumed_qat_run_ends_equal_to_an_uninterrupted_one(qat_training, tiny_photos, float_checkpoint, tmp_path):
    whole, whole_states = qat_training  # the uninterrupted run: the same settings (only the output differs)
    first = train_qat(_config(tiny_photos, float_checkpoint, tmp_path / "split", max_steps=2), progress=False)
    assert first.status == "stopped" and first.step == 2
    second = train_qat(_config(tiny_photos, float_checkpoint, tmp_path / "split"), resume=True, progress=False)
    assert second.status == "completed" and second.step == whole.step
    for model_name in ("train_model", "model"):
        state, reference = getattr(second, model_name).state_dict(), whole_states[model_name]
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[name], reference[name]) for name in reference)


def test_bad_qat_input_gives_one_clear_error(tiny_photos, float_checkpoint, tmp_path):
    from mnasnet.cli import main

    with pytest.raises(ConfigError, match="--weights"):
        load_config(overrides={"qat": True, "data": str(tiny_photos)})
    with pytest.raises(ConfigError, match="lr"):
        _config(tiny_photos, float_checkpoint, tmp_path / "nan", lr=float("nan"))
    with pytest.raises(ConfigError, match="--qat"):
        load_config(overrides={"per_tensor": True})
    exported = tmp_path / "model.tflite"
    exported.write_bytes(b"\0" * 16)
    with pytest.raises(CheckpointError, match="exported file"):
        train_qat(_config(tiny_photos, exported, tmp_path / "exported"), progress=False)
    with pytest.raises(MnasNetError, match="unknown|not found"):
        train_qat(_config(tiny_photos, "resnet50.tv_in1k", tmp_path / "registry"), progress=False)
    # a model of other classes (a registry ImageNet model would be this case): fine-tune in float first
    other = mnasnet.create_model("small", width_multiplier=0.35, resolution=RESOLUTION, num_classes=1000)
    save_checkpoint(other, tmp_path / "imagenet.safetensors")
    with pytest.raises(DataError, match="1000 classes"):
        train_qat(_config(tiny_photos, tmp_path / "imagenet.safetensors", tmp_path / "classes"), progress=False)
    assert not any((tmp_path / name).exists() for name in ("nan", "exported", "registry", "classes"))
    # the command line: one line, exit code 2, no traceback
    assert main(["train", "--qat", "--data", str(tiny_photos), "--output", str(tmp_path / "cli")]) != 0
