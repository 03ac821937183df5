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
