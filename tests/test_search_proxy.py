"""The search's proxy training: the built-in proxy it defaults to, and what one proxy training scores."""

from __future__ import annotations

import json

import pytest

from mnasnet.search.driver import SearchSettings
from mnasnet.search.proxy import ProxySettings, a1_family, train_candidate


def test_a_search_trains_on_the_search_set_by_default():
    from mnasnet.data.datasets import BUILTIN_DATASETS

    assert SearchSettings().proxy_settings() == ProxySettings()
    assert ProxySettings().data == "photos-search" and "photos-search" in BUILTIN_DATASETS


@pytest.mark.parametrize(("final_eval_only", "ema_decay"), [(True, 0.0), (False, 0.0), (True, 0.9)])
def test_a_proxy_training_scores_its_checkpoint_on_the_held_out_split(tmp_path, final_eval_only, ema_decay):
    from mnasnet.evaluate import evaluate
    from train_helpers import make_colour_dataset

    data = make_colour_dataset(tmp_path / "data", classes=3, per_class=8, val_per_class=5)
    proxy = ProxySettings(data=str(data), epochs=2, batch_size=8, final_eval_only=final_eval_only, ema_decay=ema_decay)
    candidate = a1_family(32, (0.35,))["a1_x0.35"]
    result = train_candidate(candidate, tmp_path / "trial", proxy, seed=0)
    # the trial's accuracy is its checkpoint's, evaluated independently on the validation split
    assert evaluate(result["checkpoint"], data)["top1"] == pytest.approx(100 * result["accuracy"])
    rows = [json.loads(line) for line in (tmp_path / "trial" / "train" / "metrics.jsonl").read_text().splitlines()]
    evaluated = [row["epoch"] for row in rows if row.get("val_top1") is not None]
    assert evaluated == ([2] if final_eval_only else [1, 2])
    # the scored weights are the EMA's when it is on (the engine writes them as the checkpoint)
    settings = (tmp_path / "trial" / "train" / "config.yaml").read_text()
    assert f"ema_decay: {ema_decay}" in settings and "channels_last: true" in settings


def test_repeated_proxy_trainings_score_their_mean_under_distinct_seeds(tmp_path):
    from train_helpers import make_colour_dataset

    data = make_colour_dataset(tmp_path / "data", classes=3, per_class=8, val_per_class=5)
    candidate = a1_family(32, (0.35,))["a1_x0.35"]
    single = ProxySettings(data=str(data), epochs=1, batch_size=8)
    repeated = ProxySettings(data=str(data), epochs=1, batch_size=8, repeats=2)
    result = train_candidate(candidate, tmp_path / "trial", repeated, seed=5)
    first = train_candidate(candidate, tmp_path / "alone", single, seed=5)
    # the first repeat is the single training with the trial's own seed; the second is another seed's
    assert result["accuracies"][0] == pytest.approx(first["accuracy"])
    assert result["accuracy"] == pytest.approx(sum(result["accuracies"]) / 2)
    seeds = [
        next(
            line
            for line in (tmp_path / "trial" / run / "config.yaml").read_text().splitlines()
            if line.startswith("seed:")
        )
        for run in ("train", "train-2")
    ]
    assert seeds[0] == "seed: 5" and seeds[1] != seeds[0]
    # the checkpoint kept is the best-scoring repeat's
    best = max(range(2), key=lambda index: result["accuracies"][index])
    assert result["checkpoint"].endswith(f"{('train', 'train-2')[best]}/best.safetensors")


@pytest.mark.parametrize("repeats", [0, -1, 2.5, True, "2", 10**6])
def test_a_repeat_count_that_cannot_work_is_refused(repeats):
    from mnasnet.errors import ConfigError

    with pytest.raises(ConfigError, match="repeats must be an integer"):
        ProxySettings(repeats=repeats)
