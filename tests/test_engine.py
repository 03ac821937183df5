"""The engine with a task that is not classification: a small regression on random tensors.

It must train (to the least-squares optimum, computed independently with NumPy), resume
bit-exactly after a stop or a signal, refuse a folder another process has locked, and
stop on a NaN loss; and it must do so without importing any classification code.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from mnasnet.engine import EngineConfig, RunLockedError, Task, TrainingDivergedError, fit
from mnasnet.engine.checkpoint import load_training_state
from mnasnet.errors import CheckpointError, DataError
from mnasnet.fileio import atomic_path

DIMS, TRAIN, VAL = 5, 96, 32


# 2 shared cores: one intra-op thread is both faster and reproducible here
pytestmark = pytest.mark.usefixtures("one_thread")


def regression_data(seed: int = 0):
    """``y = x @ w + b + noise``: the linear least-squares fit is the best any model can do on average."""
    rng = np.random.default_rng(seed)
    weight, bias = rng.normal(size=(DIMS, 1)), 0.5
    x = rng.normal(size=(TRAIN + VAL, DIMS))
    y = x @ weight + bias + 0.1 * rng.normal(size=(TRAIN + VAL, 1))
    return x.astype(np.float32), y.astype(np.float32)


class PairsByIndexAndSeed(torch.utils.data.Dataset):
    """Training samples with a seeded jitter, as the engine's ``(index, seed)`` contract asks."""

    def __init__(self, x: np.ndarray, y: np.ndarray, *, jitter: float = 0.0, fail_at: int | None = None):
        self.x, self.y, self.jitter, self.fail_at = x, y, jitter, fail_at

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        if index == self.fail_at:
            raise DataError(f"cannot read sample {index}: broken")
        x = torch.from_numpy(self.x[index])
        if seed is not None and self.jitter:
            x = x + torch.from_numpy(np.random.default_rng(seed).normal(0, self.jitter, DIMS).astype(np.float32))
        return x, torch.from_numpy(self.y[index])


class RegressionTask(Task):
    best_metric = "val_mse"
    higher_is_better = False

    def __init__(self, *, hidden: int = 16, jitter: float = 0.01, nan_at_call: int | None = None, **hooks):
        self.hidden, self.jitter, self.nan_at_call, self.hooks = hidden, jitter, nan_at_call, hooks
        self.calls = 0

    def setup(self, context) -> None:
        x, y = regression_data()
        self.train_set = PairsByIndexAndSeed(x[:TRAIN], y[:TRAIN], jitter=self.jitter, fail_at=self.hooks.get("fail"))
        self.val_set = PairsByIndexAndSeed(x[TRAIN:], y[TRAIN:])

    def build_model(self) -> nn.Module:
        torch.manual_seed(0)
        # BN buffers (EMA, DDP broadcast) and dropout (RNG state on resume) take part too
        return nn.Sequential(
            nn.Linear(DIMS, self.hidden), nn.BatchNorm1d(self.hidden), nn.Dropout(0.1), nn.Linear(self.hidden, 1)
        )

    def train_dataset(self):
        return self.train_set

    def val_dataset(self):
        return self.val_set

    def loss(self, output, batch):
        self.calls += 1
        if self.calls == self.hooks.get("signal_at_call"):
            os.kill(os.getpid(), signal.SIGINT)  # as if Ctrl-C arrived during this step
        loss = F.mse_loss(output, batch[1])
        if self.calls == self.nan_at_call:
            loss = loss * float("nan")
        return loss, {"abs_error": (output.detach() - batch[1]).abs().sum()}

    @torch.no_grad()
    def validate(self, model, loader, step):
        model.eval()
        totals = torch.zeros(2, dtype=torch.float64)
        for batch in loader:
            x, y = step.prepare(batch)
            totals[0] += F.mse_loss(model(x), y, reduction="sum").double()
            totals[1] += len(y)
        step.context.all_reduce_sum(totals)
        return {"val_mse": float(totals[0] / totals[1])}

    def save_weights(self, model, path, info):
        from safetensors.torch import save_file

        with atomic_path(path) as temp:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(temp), metadata={"epoch": "1"})

    def config_dict(self):
        return {"task": "regression", "hidden": self.hidden}

    def signature(self):
        return {"hidden": self.hidden}


def settings(output: Path, **overrides) -> EngineConfig:
    values = {
        "output": str(output),
        "epochs": 6,
        "batch_size": 16,
        "optimizer": "sgd",
        "lr": 0.1,
        "schedule": "cosine",
        "warmup_epochs": 0.5,
        "weight_decay": 1e-4,
        "ema_decay": 0.9,
        "workers": 0,
        "save_every": 0,
        "log_every": 1,
        "tensorboard": False,
    }
    return EngineConfig(**{**values, **overrides})


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def least_squares_val_mse() -> float:
    x, y = regression_data()
    design = np.hstack([x, np.ones((len(x), 1), dtype=np.float32)]).astype(np.float64)
    solution, *_ = np.linalg.lstsq(design[:TRAIN], y[:TRAIN], rcond=None)
    return float(np.mean((design[TRAIN:] @ solution - y[TRAIN:]) ** 2))


def test_a_regression_task_trains_to_the_least_squares_optimum(tmp_path):
    result = fit(RegressionTask(), settings(tmp_path / "run"), progress=False)
    assert result.status == "completed" and result.epoch == 6 and result.step == 36  # 96 / 16 per epoch
    _, y = regression_data()
    baseline = float(np.var(y[TRAIN:]))  # predicting the mean
    optimum = least_squares_val_mse()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[-1]["val_mse"] < 3 * optimum < 0.1 * baseline, (rows[-1]["val_mse"], optimum, baseline)
    assert result.best == min(row["val_mse"] for row in rows)  # lower is better for this task
    assert "train_abs_error" in rows[-1] and rows[-1]["train_abs_error"] < rows[0]["train_abs_error"]
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == [
        "best.safetensors",
        "checkpoint.pt",
        "config.yaml",
        "last.safetensors",
        "metrics.csv",
        "metrics.jsonl",
    ]  # fmt: skip  (the lock file is gone with the run)


def test_stop_then_resume_ends_bit_identical(tmp_path):
    straight = fit(RegressionTask(), settings(tmp_path / "straight"), progress=False)
    first = fit(RegressionTask(), settings(tmp_path / "resumed", max_steps=9), progress=False)
    assert first.status == "stopped" and first.step == 9
    stopped_state = load_training_state(tmp_path / "resumed" / "checkpoint.pt")
    assert stopped_state["step_in_epoch"] == 3
    # cut short mid-epoch, the run still leaves the weights it stopped with (the evaluated ones: the EMA)
    assert_same_state(stopped_state["ema"]["module"], load_file(tmp_path / "resumed" / "last.safetensors"))
    resumed = fit(RegressionTask(), settings(tmp_path / "resumed"), resume=True, progress=False)
    assert resumed.status == "completed" and resumed.step == straight.step
    a = load_training_state(tmp_path / "straight" / "checkpoint.pt")
    b = load_training_state(tmp_path / "resumed" / "checkpoint.pt")
    assert_same_state(a["model"], b["model"])
    assert_same_state(a["ema"]["module"], b["ema"]["module"])
    assert straight.metrics[-1]["train_loss"] == resumed.metrics[-1]["train_loss"]
    assert straight.metrics[-1]["val_mse"] == resumed.metrics[-1]["val_mse"]


def test_a_signal_saves_and_stops_and_the_resumed_run_matches(tmp_path):
    straight = fit(RegressionTask(), settings(tmp_path / "straight", epochs=2), progress=False)
    interrupted = fit(RegressionTask(signal_at_call=8), settings(tmp_path / "run", epochs=2), progress=False)
    assert interrupted.status == "interrupted" and interrupted.step == 8
    assert load_training_state(tmp_path / "run" / "checkpoint.pt")["reason"] == "interrupted"
    resumed = fit(RegressionTask(), settings(tmp_path / "run", epochs=2), resume=True, progress=False)
    assert resumed.step == straight.step == 12
    assert_same_state(
        load_training_state(tmp_path / "straight" / "checkpoint.pt")["model"],
        load_training_state(tmp_path / "run" / "checkpoint.pt")["model"],
    )


_HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")
def test_a_locked_run_folder_is_refused_until_its_holder_dies(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(run_dir / ".lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match="another training run is writing to"):
            fit(RegressionTask(), settings(run_dir, epochs=1), progress=False)
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # nothing written
    finally:
        holder.kill()  # SIGKILL: no clean-up, the kernel drops the lock
        holder.wait()
    assert fit(RegressionTask(), settings(run_dir, epochs=1), progress=False).status == "completed"


def test_nan_loss_stops_with_the_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at step 5 .*checkpoint\.pt"):
        fit(RegressionTask(nan_at_call=5), settings(tmp_path / "run", save_every=2), progress=False)
    assert load_training_state(tmp_path / "run" / "checkpoint.pt")["step"] == 4


def test_resume_with_another_model_names_the_difference_and_writes_nothing(tmp_path):
    fit(RegressionTask(), settings(tmp_path / "run", max_steps=2), progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    with pytest.raises(CheckpointError, match=r"hidden 16 -> 32"):
        fit(RegressionTask(hidden=32), settings(tmp_path / "run"), resume=True, progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before


def test_worker_errors_arrive_as_the_task_error(tmp_path):
    with pytest.raises(DataError) as caught:
        fit(RegressionTask(fail=7), settings(tmp_path / "run", workers=2, epochs=1), progress=False)
    assert str(caught.value) == "cannot read sample 7: broken"  # not "Caught DataError in DataLoader worker..."


def test_the_engine_imports_no_classification_code():
    code = textwrap.dedent(
        """
        import sys
        import mnasnet.engine
        print(" ".join(m for m in sys.modules if m.startswith(("mnasnet.tasks", "mnasnet.train", "mnasnet.checkpoint",
                                                             "mnasnet.data.transforms_train", "mnasnet.weights"))))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_adamw_steps_as_torch_adamw_with_decoupled_decay_and_bn_exempt(tmp_path):
    from mnasnet.engine.step import TrainStep

    task = RegressionTask()
    task.setup(None)
    model = task.build_model()
    reference = copy.deepcopy(model)
    config = settings(tmp_path / "run", optimizer="adamw", weight_decay=0.3, momentum=0.8, ema_decay=0.0).validate()
    step = TrainStep(model, task=task, config=config, device=torch.device("cpu"))
    bn = set(map(id, reference[1].parameters()))
    groups = [
        {"params": [p for p in reference.parameters() if id(p) not in bn], "weight_decay": 0.3},
        {"params": list(reference[1].parameters()), "weight_decay": 0.0},
    ]
    oracle = torch.optim.AdamW(groups, lr=0.05, betas=(0.8, 0.999))
    model.eval(), reference.eval()  # no dropout: both see the same function
    batch = (torch.from_numpy(task.train_set.x[:16]), torch.from_numpy(task.train_set.y[:16]))
    for _ in range(3):
        step([batch], lr=0.05)
        oracle.zero_grad()
        F.mse_loss(reference(batch[0]), batch[1]).backward()
        oracle.step()
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs)
    assert not torch.equal(model[0].weight, task.build_model()[0].weight)  # it did move


def test_adamw_run_resumes_bit_identical(tmp_path):
    straight = fit(RegressionTask(), settings(tmp_path / "straight", optimizer="adamw", lr=0.01), progress=False)
    fit(RegressionTask(), settings(tmp_path / "resumed", optimizer="adamw", lr=0.01, max_steps=9), progress=False)
    resumed = fit(
        RegressionTask(), settings(tmp_path / "resumed", optimizer="adamw", lr=0.01), resume=True, progress=False
    )
    assert resumed.step == straight.step
    assert_same_state(
        load_training_state(tmp_path / "straight" / "checkpoint.pt")["model"],
        load_training_state(tmp_path / "resumed" / "checkpoint.pt")["model"],
    )
    assert straight.metrics[-1]["val_mse"] < straight.metrics[0]["val_mse"]
