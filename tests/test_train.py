"""The training loop end to end on tiny runs: resume, Ctrl-C, NaN, AMP, channels-last, accumulation, finetune."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import mnasnet
from mnasnet.checkpoint import read_checkpoint, save_checkpoint
from mnasnet.cli import main as cli_main
from mnasnet.engine.checkpoint import load_training_state
from mnasnet.model import create_model
from mnasnet.train import TrainingDivergedError, load_config, train
from train_helpers import make_colour_dataset, tiny_settings

MNASNET = Path(sys.executable).with_name("mnasnet")


# 2 shared cores: one intra-op thread is both faster and reproducible here
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_colour_dataset(tmp_path_factory.mktemp("colours") / "data")


def run(data, output, *, resume=False, **overrides):
    return train(load_config(overrides=tiny_settings(data, output, **overrides)), resume=resume, progress=False)


def subprocess_env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_run_folder_outputs_and_checkpoint_loads(data, tmp_path):
    result = run(data, tmp_path / "run", plot=True, tensorboard=True)
    assert result.status == "completed" and result.epoch == 2 and result.step == 6  # 24 images / batch 8
    run_dir = tmp_path / "run"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert all({"epoch", "train_loss", "val_top1", "val_top5", "lr"} <= row.keys() for row in rows)
    assert rows[-1]["val_n"] == 12
    assert (run_dir / "metrics.csv").read_text().splitlines()[0].startswith("epoch,step,train_loss")
    assert any((run_dir / "tensorboard").iterdir())
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = load_config(yaml_path=run_dir / "config.yaml")
    assert (saved.arch, saved.width, saved.resolution) == ("small", 0.35, 32)
    model = mnasnet.load_model(run_dir / "best.safetensors")
    assert model.labels == ["c0", "c1", "c2"] and model.config.num_classes == 3
    assert model.preprocess.resolution == 32
    # best.safetensors holds the EMA weights the loop evaluated
    state = load_training_state(run_dir / "checkpoint.pt")
    ema = {k: v for k, v in state["ema"]["module"].items()}
    last = read_checkpoint(run_dir / "last.safetensors").state_dict
    assert_same_state(ema, last)
    with pytest.raises(mnasnet.MnasNetError, match="already holds a run"):
        run(data, tmp_path / "run")


def test_resume_after_interrupt_gives_identical_weights(data, tmp_path):
    settings = {"epochs": 2, "dropout": 0.2}
    straight = run(data, tmp_path / "straight", **settings)
    # "killed" after 4 of 6 steps (mid-epoch 2), then resumed with data-loading workers
    first = run(data, tmp_path / "resumed", max_steps=4, **settings)
    assert first.status == "stopped" and first.step == 4
    assert load_training_state(tmp_path / "resumed" / "checkpoint.pt")["step_in_epoch"] == 1
    resumed = run(data, tmp_path / "resumed", resume=True, workers=2, **settings)
    assert resumed.status == "completed" and resumed.step == straight.step == 6
    a = load_training_state(tmp_path / "straight" / "checkpoint.pt")
    b = load_training_state(tmp_path / "resumed" / "checkpoint.pt")
    assert_same_state(a["model"], b["model"])
    assert_same_state(a["ema"]["module"], b["ema"]["module"])
    assert_same_state(
        read_checkpoint(tmp_path / "straight" / "best.safetensors").state_dict,
        read_checkpoint(tmp_path / "resumed" / "best.safetensors").state_dict,
    )
    assert straight.metrics[-1]["train_loss"] == resumed.metrics[-1]["train_loss"]
    assert [r["epoch"] for r in resumed.metrics] == [1, 2]
    # and the resumed run really trained: its weights moved from the interrupted ones
    interrupted_model = create_model("small", width_multiplier=0.35, num_classes=3, resolution=32).state_dict()
    assert not torch.equal(interrupted_model["stem.conv.weight"], b["model"]["stem.conv.weight"])


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(data, tmp_path):
    output = tmp_path / "run"
    command = [
        str(MNASNET),
        "train",
        "--data",
        str(data),
        "--output",
        str(output),
        "--arch",
        "small",
        "--width",
        "0.35",
        "--resolution",
        "32",
        "--epochs",
        "500",
        "--batch-size",
        "2",
        "--workers",
        "1",
        "--save-every",
        "0",
        "--no-tensorboard",
        "--no-plot",
        "--lr",
        "0.01",
    ]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, env=subprocess_env(), text=True)
    seen_progress = threading.Event()
    stderr_lines: list[str] = []

    def watch():
        buffer = ""
        while True:
            char = process.stderr.read(1)
            if not char:
                return
            buffer += char
            if "/12 [" in buffer and any(f" {n}/12 [" in buffer for n in range(2, 13)):
                seen_progress.set()  # at least two steps done
            if char == "\n":
                stderr_lines.append(buffer)
                buffer = ""

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert seen_progress.wait(120), "training never showed progress"
    process.send_signal(signal.SIGINT)
    stdout, _ = process.communicate(timeout=120)
    watcher.join(5)
    assert process.returncode == 130, stdout + "".join(stderr_lines)
    assert "--resume" in stdout
    state = load_training_state(output / "checkpoint.pt")
    assert state["reason"] == "interrupted" and state["step"] >= 2
    assert "Traceback" not in "".join(stderr_lines)
    # resume with a shorter plan: the run finishes from the saved position
    completed = cli_main(["train", "--output", str(output), "--resume", "--epochs", str(state["epoch"] + 1), "--quiet"])
    assert completed == 0
    assert load_training_state(output / "checkpoint.pt")["reason"] == "epoch"


def test_nan_loss_stops_with_clear_message_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch, capsys):
    import mnasnet.tasks.classification as classification

    calls = {"n": 0}
    real_loss = classification.smoothed_cross_entropy

    def poisoned(logits, targets, smoothing):
        calls["n"] += 1
        loss = real_loss(logits, targets, smoothing)
        return loss * float("nan") if calls["n"] > 4 else loss  # steps 1-4 fine, step 5 diverges

    monkeypatch.setattr(classification, "smoothed_cross_entropy", poisoned)
    output = tmp_path / "run"
    with pytest.raises(
        TrainingDivergedError, match=r"loss became nan at step 5 .*last good checkpoint is .*checkpoint\.pt"
    ):
        run(data, output, save_every=2, log_every=1, epochs=3)
    state = load_training_state(output / "checkpoint.pt")
    assert state["step"] == 4 and state["reason"] == "every_n_steps"
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    # through the CLI: one line, exit code 2, no traceback
    calls["n"] = 0
    argv = (
        ["train"]
        + [
            f"--{k.replace('_', '-')}={v}"
            for k, v in tiny_settings(data, tmp_path / "cli").items()
            if not isinstance(v, bool)
        ]
        + ["--no-tensorboard", "--no-plot", "--quiet"]
    )
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mnasnet train: error: loss became nan")


def test_bf16_autocast_and_channels_last_on_cpu(data, tmp_path):
    one_step = {"epochs": 1, "max_steps": 1, "ema_decay": 0.0, "dropout": 0.0, "lr": 0.01, "warmup_epochs": 0.0}
    run(data, tmp_path / "fp32", **one_step)
    run(data, tmp_path / "cl", channels_last=True, **one_step)
    run(data, tmp_path / "bf16", amp="bf16", **one_step)
    a, b, c = (load_training_state(tmp_path / name / "checkpoint.pt")["model"] for name in ("fp32", "cl", "bf16"))
    start = create_model("small", width_multiplier=0.35, num_classes=3, resolution=32).state_dict()
    moved = {name: float((a[name] - start[name]).abs().max()) for name in a if a[name].is_floating_point()}
    assert moved["stem.conv.weight"] > 1e-3
    # Random-init gradients are in the hundreds here, so float rounding is absolute, not relative:
    # compare each change of weight with the size of the step itself.
    for name in ("stem.conv.weight", "classifier.weight", "stages.3.0.project.conv.weight", "head.bn.weight"):
        # channels-last computes the same function: the same update up to float rounding
        assert float((b[name] - a[name]).abs().max()) < 0.02 * moved[name], name
        # bf16 rounds activations: an update in the fp32 direction, but not bit-equal (autocast really was on)
        fp32_step, bf16_step = (a[name] - start[name]).flatten(), (c[name] - start[name]).flatten()
        assert float(torch.nn.functional.cosine_similarity(fp32_step, bf16_step, dim=0)) > 0.8, name
        assert not torch.equal(c[name], a[name]), name
    assert all(t.dtype == torch.float32 for t in c.values() if t.is_floating_point())  # fp32 master weights
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        run(data, tmp_path / "fp16", amp="fp16")


def test_gradient_accumulation_matches_the_large_batch(data, tmp_path):
    # With BN statistics frozen (BN then works per sample) and no dropout, 2 x batch 4
    # accumulated must give the update of one batch of 8; the batch-4 single step must not.
    common = {
        "epochs": 1,
        "max_steps": 1,
        "freeze_bn": True,
        "dropout": 0.0,
        "ema_decay": 0.0,
        "lr": 0.05,
        "warmup_epochs": 0.0,
        "label_smoothing": 0.1,
        "weight_decay": 1e-2,
    }
    run(data, tmp_path / "big", batch_size=8, **common)
    run(data, tmp_path / "accum", batch_size=4, accum_steps=2, **common)
    run(data, tmp_path / "small", batch_size=4, **common)
    big = load_training_state(tmp_path / "big" / "checkpoint.pt")["model"]
    accum = load_training_state(tmp_path / "accum" / "checkpoint.pt")["model"]
    small = load_training_state(tmp_path / "small" / "checkpoint.pt")["model"]
    start = create_model("small", width_multiplier=0.35, num_classes=3, resolution=32).state_dict()
    name = "classifier.weight"
    assert float((big[name] - start[name]).abs().max()) > 1e-3  # the step did something
    for key in big:
        if big[key].is_floating_point():
            torch.testing.assert_close(accum[key], big[key], rtol=1e-4, atol=1e-6)
    assert float((small[name] - big[name]).abs().max()) > 1e-4


def test_finetune_loads_backbone_and_replaces_head(data, tmp_path):
    pretrained = create_model("small", width_multiplier=0.35, num_classes=1000, resolution=64)
    torch.manual_seed(5)
    with torch.no_grad():
        for tensor in pretrained.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.01)
    path = save_checkpoint(pretrained, tmp_path / "pretrained.safetensors")
    # one step in one epoch, which warmup starts at lr 0, and frozen BN: the backbone must come out
    # exactly as loaded, with a new 3-class head
    result = run(
        data,
        tmp_path / "ft",
        recipe="finetune",
        weights=str(path),
        epochs=1,
        batch_size=24,
        warmup_epochs=1.0,
        freeze_bn=True,
        ema_decay=0.0,
        arch="a1",
    )
    assert result.status == "completed"
    tuned = mnasnet.load_model(tmp_path / "ft" / "best.safetensors")
    assert tuned.config.num_classes == 3 and tuned.labels == ["c0", "c1", "c2"]
    assert tuned.config.arch == "small" and tuned.config.resolution == 32  # the checkpoint's arch wins
    reference = pretrained.state_dict()
    for name, tensor in tuned.state_dict().items():
        if not name.startswith("classifier"):
            assert torch.equal(tensor, reference[name]), name
    with pytest.raises(ValueError, match="finetune recipe needs pretrained weights"):
        run(data, tmp_path / "nope", recipe="finetune")


def test_missing_dataset_is_one_clear_error(tmp_path):
    command = [
        str(MNASNET),
        "train",
        "--data",
        str(tmp_path / "nowhere"),
        "--output",
        str(tmp_path / "run"),
        "--arch",
        "small",
        "--epochs",
        "1",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "dataset folder not found" in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


def test_plot_writes_a_real_png(tmp_path):
    from PIL import Image

    rows = [
        {
            "epoch": e,
            "train_loss": 2.0 / e,
            "val_loss": 2.2 / e,
            "train_top1": 10.0 * e,
            "val_top1": 9.0 * e,
            "val_top5": 50 + e,
            "lr": 0.01 * e,
        }
        for e in range(1, 6)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli_main(["plot", str(tmp_path)]) == 0
    png = tmp_path / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        assert image.size == (1500, 420)
        # not a blank canvas: the curves put several colours on it
        assert len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)) > 20
    assert cli_main(["plot", str(tmp_path / "empty")]) == 2


@pytest.mark.slow
def test_torchrun_two_processes_only_rank0_writes(data, tmp_path):
    """`torchrun --nproc_per_node 2 --no-python mnasnet train`: gloo on CPU, one writer, sharded validation."""
    import yaml

    torchrun = Path(sys.executable).with_name("torchrun")
    output = tmp_path / "ddp"
    command = [
        str(torchrun),
        "--nproc_per_node",
        "2",
        "--master_port",
        str(29500 + os.getpid() % 1000),
        "--no-python",
        str(MNASNET),
        "train",
    ]
    command += [
        f"--{k.replace('_', '-')}={v}"
        for k, v in tiny_settings(data, output, batch_size=4).items()
        if not isinstance(v, bool)
    ]
    command += ["--no-tensorboard", "--no-plot", "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    # 24 images over 2 ranks of batch 4: 3 steps per epoch; one summary line (rank 0's)
    assert done.stdout.count("completed: 2 epoch(s), 6 steps") == 1, done.stdout
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[-1]["val_n"] == 12  # validation shards summed over ranks
    resolved = yaml.safe_load((output / "config.yaml").read_text())["resolved"]
    assert resolved["world_size"] == 2 and resolved["global_batch"] == 8
    assert sorted(p.name for p in output.iterdir()) == [
        "best.safetensors",
        "checkpoint.pt",
        "config.yaml",
        "last.safetensors",
        "metrics.csv",
        "metrics.jsonl",
    ]


_RANK_SCRIPT = """
import os, sys, torch
sys.path.insert(0, {tests!r})
from train_helpers import tiny_settings
from mnasnet.train import load_config, train
torch.set_num_threads(1)
result = train(load_config(overrides=tiny_settings({data!r}, {output!r}, batch_size=4, dropout=0.2)), progress=False)
torch.save({{"model": result.train_model.state_dict(), "ema": result.model.state_dict()}},
           {dump!r}.format(rank=os.environ["RANK"]))
"""


@pytest.mark.slow
def test_two_gloo_processes_end_with_identical_weights(data, tmp_path):
    dump = str(tmp_path / "rank{rank}.pt")
    script = _RANK_SCRIPT.format(
        tests=str(Path(__file__).parent), data=str(data), output=str(tmp_path / "run"), dump=dump
    )
    port = str(30500 + os.getpid() % 1000)
    processes = []
    for rank in (0, 1):
        env = {
            **subprocess_env(),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for part in ("model", "ema"):  # parameters, BN statistics and their EMA agree bit for bit
        assert_same_state(rank0[part], rank1[part])
    assert_same_state(rank0["model"], load_training_state(tmp_path / "run" / "checkpoint.pt")["model"])
    start = create_model("small", width_multiplier=0.35, num_classes=3, resolution=32).state_dict()
    assert not torch.equal(start["stem.conv.weight"], rank0["model"]["stem.conv.weight"])  # it trained


def test_evaluation_imports_no_training_code():
    """Top-k evaluation of an exported model must not pull in the optimiser, the loop or the tasks."""
    code = (
        "import sys, mnasnet.evaluate; "
        "print(' '.join(m for m in sys.modules if m.startswith(('mnasnet.train', 'mnasnet.engine', 'mnasnet.tasks'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
