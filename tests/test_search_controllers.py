"""Search controllers: deterministic, exactly resumable with trials in flight, and better than random.

The yardsticks: the expected score of uniform sampling and the known optimum of a
synthetic reward (how many decisions match a hidden target), Real et al.'s definition
of aging evolution, PyTorch's own LSTM for the controller's size, and the MNAS
paper's controller settings.
"""

from __future__ import annotations

import copy
import io
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from mnasnet.errors import MnasNetError
from mnasnet.search.controllers import (
    ControllerError,
    EvolutionController,
    LSTMPolicy,
    PPOController,
    make_controller,
    replay,
)
from mnasnet.search.space import load_space, parse_space

NAMES = ("random", "evolution", "reinforce", "ppo")
# MNAS paper section 3 (REFERENCE.md section 9): NASNet's RNN controller, one LSTM layer of
# 100 units, weights U(-0.1, 0.1), PPO with learning rate 3.5e-4, entropy penalty 1e-5,
# reward baseline an exponential moving average with decay 0.95.
PAPER_PPO = {"hidden_size": 100, "learning_rate": 3.5e-4, "entropy_weight": 1e-5, "baseline_decay": 0.95}
PAPER_INIT_RANGE = 0.1
# Evolution's population and tournament are small so it leaves its random start within 30 trials.
SMALL = {"evolution": {"population_size": 8, "sample_size": 3}, "ppo": {"batch_size": 4}}


@pytest.fixture(scope="module")
def space():
    """Three stages of the paper's per-stage choices: 18 searched decisions of 2 or 3 options."""
    return parse_space({"stages": [{"repeats": 2, "filters": 64, "stride": 2}] * 3})


def counts(space):
    return [len(decision.choices) for decision in space.decisions]


def hidden_target(space, seed):
    return np.random.default_rng([1000, seed]).integers(counts(space))


def synthetic_reward(space, target, choices, proposal_index):
    """Searched decisions equal to the hidden target, plus noise fixed by the trial's proposal index."""
    matches = sum(int(a == b) for a, b, n in zip(choices, target, counts(space), strict=True) if n > 1)
    return matches + float(np.random.default_rng([2000, proposal_index]).normal(0, 0.5))


def drive(controller, space, target, *, total, outstanding=3, stop_after=None, pending=None, finished=None):
    """An asynchronous search: ``outstanding`` trials in flight, finishing in a scrambled but fixed order.

    Returns (pending, finished) where each trial is (proposal index, choices[, reward]).
    Stops after refilling the queue once ``stop_after`` trials have finished.
    """
    pending = list(pending or [])
    finished = list(finished or [])
    while len(finished) < total:
        while len(pending) < outstanding:
            pending.append((controller.proposals_made, controller.propose()))
        if len(finished) == stop_after:
            break
        which = int(np.random.default_rng([3000, len(finished)]).integers(len(pending)))
        index, choices = pending.pop(which)
        reward = synthetic_reward(space, target, choices, index)
        controller.observe(choices, reward)
        finished.append((index, choices, reward))
    return pending, finished


def as_observed(finished):
    return [(choices, reward) for _, choices, reward in finished]


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_search_other_seed_another(space, name):
    target = hidden_target(space, 0)
    runs = [
        drive(make_controller(name, space, seed, **SMALL.get(name, {})), space, target, total=30) for seed in (7, 7, 8)
    ]
    assert runs[0][1] == runs[1][1]
    assert len({tuple(choices) for _, choices, _ in runs[0][1]}) >= 20  # fresh random numbers per proposal
    assert [c for _, c, _ in runs[0][1]] != [c for _, c, _ in runs[2][1]]


@pytest.mark.parametrize("name", NAMES)
def test_replay_with_trials_in_flight_continues_exactly(space, name):
    options = SMALL.get(name, {})
    target = hidden_target(space, 1)
    whole = make_controller(name, space, 5, **options)
    _, uninterrupted = drive(whole, space, target, total=30)

    first = make_controller(name, space, 5, **options)
    pending, finished = drive(first, space, target, total=30, stop_after=15)
    assert len(finished) == 15 and len(pending) == 3  # three proposals outstanding at the interruption
    made = 1 + max(index for index, _ in pending)
    resumed = replay(name, space, 5, as_observed(finished), proposals_made=made, **options)
    _, continued = drive(resumed, space, target, total=30, pending=pending, finished=finished)

    assert continued == uninterrupted
    assert [resumed.propose() for _ in range(5)] == [whole.propose() for _ in range(5)]


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_continues_exactly(space, name):
    options = SMALL.get(name, {})
    target = hidden_target(space, 2)
    original = make_controller(name, space, 3, **options)
    pending, finished = drive(original, space, target, total=30, stop_after=13)
    buffer = io.BytesIO()
    torch.save(copy.deepcopy(original.state_dict()), buffer)
    restored = make_controller(name, space, 3, **options)
    restored.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False))

    _, expected = drive(original, space, target, total=30, pending=pending, finished=finished)
    _, got = drive(restored, space, target, total=30, pending=pending, finished=finished)
    assert got == expected
    with pytest.raises(ControllerError, match="seed"):
        make_controller(name, space, 4, **options).load_state_dict(original.state_dict())
    if options:
        other = {key: value + 1 for key, value in options.items()}
        with pytest.raises(ControllerError, match="options"):
            make_controller(name, space, 3, **other).load_state_dict(original.state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_proposals_decode_in_the_paper_space(name):
    space = load_space("mobilenetv2")
    controller = make_controller(name, space, 0)
    fixed = [i for i, decision in enumerate(space.decisions) if len(decision.choices) == 1]
    assert fixed  # width and resolution have one option each
    for step in range(3):
        choices = controller.propose()
        assert len(space.decode(choices).blocks) == 7
        assert all(choices[i] == 0 for i in fixed)
        controller.observe(choices, float(step))


def test_evolution_is_aging_evolution(space):
    """Real et al. 2019: random until the population is full, then a one-decision mutation of a member; oldest dies."""
    controller = EvolutionController(space, seed=0, population_size=6, sample_size=2)
    target = hidden_target(space, 3)
    observed = []
    for index in range(40):
        choices = controller.propose()
        if len(observed) >= 6:
            distances = [sum(a != b for a, b in zip(choices, member, strict=True)) for member in observed[-6:]]
            assert 1 in distances, distances  # the parent; a child may repeat another member
        controller.observe(choices, synthetic_reward(space, target, choices, index))
        observed.append(choices)
    assert [list(member.choices) for member in controller.population] == observed[-6:]


@pytest.mark.parametrize("name", ["reinforce", "ppo"])
def test_policy_moves_towards_a_rewarded_choice(space, name):
    controller = make_controller(name, space, 0, **({"batch_size": 2} if name == "ppo" else {}))
    poor, good = [0] * len(space.decisions), controller.propose()

    def log_prob(choices):
        with torch.no_grad():
            if name == "ppo":
                row = torch.tensor([[choices[i] for i in controller.searched]])
                return float(controller.module(row)[0])
            return sum(
                math.log(p[choices[i]]) for i, p in zip(controller.searched, controller.probabilities(), strict=True)
            )

    before = log_prob(good)
    controller.observe(poor, 0.0)
    controller.observe(good, 1.0)
    assert log_prob(good) > before


def test_lstm_controller_size_and_init(space):
    controller = PPOController(space, seed=0)
    policy = controller.module
    assert isinstance(policy, LSTMPolicy)
    reference_lstm = torch.nn.LSTM(100, 100, num_layers=1)
    lstm_params = sum(p.numel() for p in policy.lstm.parameters())
    assert lstm_params == sum(p.numel() for p in reference_lstm.parameters()) == 80_800
    searched = [n for n in counts(space) if n > 1]
    hidden = 100
    expected = lstm_params + hidden + hidden * sum(searched[:-1]) + sum((hidden + 1) * n for n in searched)
    assert sum(p.numel() for p in policy.parameters()) == expected
    values = torch.cat([p.detach().flatten() for p in policy.parameters()])
    assert values.abs().max() <= PAPER_INIT_RANGE
    assert values.abs().max() > 0.99 * PAPER_INIT_RANGE and abs(float(values.mean())) < 0.01  # uniform, centred
    same = PPOController(space, seed=0).module.state_dict()
    other = PPOController(space, seed=1).module.state_dict()
    assert all(torch.equal(same[key], value) for key, value in policy.state_dict().items())
    assert not torch.equal(other["lstm.weight_ih_l0"], same["lstm.weight_ih_l0"])


def test_ppo_defaults_are_the_papers(space):
    controller = make_controller("ppo", space, 0)
    assert controller.module.lstm.hidden_size == PAPER_PPO["hidden_size"]
    assert controller.module.lstm.num_layers == 1
    assert controller.learning_rate == PAPER_PPO["learning_rate"]
    assert controller.entropy_weight == PAPER_PPO["entropy_weight"]
    assert controller.baseline_decay == PAPER_PPO["baseline_decay"]
    assert controller.clip == 0.2


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("evolution", {"population_size": -1}, "population_size"),
        ("evolution", {"population_size": 5, "sample_size": 6}, "sample_size"),
        ("evolution", {"sample_size": 0}, "sample_size"),
        ("evolution", {"population_size": True}, "population_size"),
        ("evolution", {"learning_rate": 0.1}, "no option 'learning_rate'"),
        ("reinforce", {"learning_rate": 0.0}, "learning_rate"),
        ("reinforce", {"learning_rate": -1e-3}, "learning_rate"),
        ("reinforce", {"baseline_decay": 1.0}, "baseline_decay"),
        ("ppo", {"learning_rate": float("nan")}, "learning_rate"),
        ("ppo", {"entropy_weight": float("inf")}, "entropy_weight"),
        ("ppo", {"clip": 1.5}, "clip"),
        ("ppo", {"epochs": 0}, "epochs"),
        ("ppo", {"batch_size": 2.5}, "batch_size"),
        ("random", {"seed": -1}, "seed"),
        ("genetic", {}, "unknown controller 'genetic'"),
    ],
)
def test_bad_options_raise_one_clear_error(space, name, options, match):
    options = dict(options)
    seed = options.pop("seed", 0)
    with pytest.raises(ControllerError, match=match) as error:
        make_controller(name, space, seed, **options)
    assert isinstance(error.value, MnasNetError) and isinstance(error.value, ValueError)


@pytest.mark.parametrize(
    ("choices", "reward", "match"),
    [
        ([0] * 3, 1.0, "expected 20 choice indices"),
        ([0] * 19 + [1], 1.0, "choice 19"),
        ([-1] + [0] * 19, 1.0, "choice 0"),
        ([0] * 20, float("nan"), "finite"),
        ([0] * 20, "0.7", "number"),
    ],
)
def test_bad_trials_raise_one_clear_error(space, choices, reward, match):
    controller = make_controller("reinforce", space, 0)
    with pytest.raises(ControllerError, match=match):
        controller.observe(choices, reward)
    with pytest.raises(ControllerError, match="finished trial"):
        replay("random", space, 0, [{"choices": [0] * 20}])
    with pytest.raises(ControllerError, match="nothing to search"):
        make_controller("random", [1, 1], 0)


_THREADS_SCRIPT = textwrap.dedent(
    """
    import torch
    from mnasnet.search.controllers import make_controller
    counts = [3, 2, 2, 2, 3, 3] * 3
    for name in ("reinforce", "ppo"):
        controller = make_controller(name, counts, 11, **({"batch_size": 4} if name == "ppo" else {}))
        for step in range(24):
            choices = controller.propose()
            controller.observe(choices, float(sum(choices)) + 0.1 * step)
        print(name, controller.propose())
        print(sorted((k, v.double().sum().item()) for k, v in controller.module.state_dict().items()))
    print("threads", torch.get_num_threads())
    """
)


@pytest.mark.slow
def test_results_do_not_depend_on_the_thread_count():
    outputs = []
    for threads in ("1", "2"):
        environment = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PATH": "/usr/bin:/bin"}
        result = subprocess.run(
            [sys.executable, "-c", _THREADS_SCRIPT], capture_output=True, text=True, env=environment, timeout=120
        )
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    results = [output.splitlines() for output in outputs]
    assert [lines[-1] for lines in results] == ["threads 1", "threads 2"]  # restored after each call
    assert results[0][:-1] == results[1][:-1]


@pytest.mark.slow
def test_learning_controllers_beat_random(space):
    """Mean reward of the last 50 of 200 trials, 3 seeds, 4 trials in flight."""
    searched = [n for n in counts(space) if n > 1]
    random_expectation = sum(1 / n for n in searched)  # 7.5 of an optimum of 18
    scores = {}
    for name in NAMES:
        last = []
        for seed in range(3):
            controller = make_controller(name, space, seed)
            _, finished = drive(controller, space, hidden_target(space, seed), total=200, outstanding=4)
            last.append(np.mean([reward for _, _, reward in finished[-50:]]))
        scores[name] = float(np.mean(last))
    assert abs(scores["random"] - random_expectation) < 0.6, scores
    for name in ("evolution", "reinforce", "ppo"):
        assert scores[name] > random_expectation + 3.5, scores  # measured: 14.4, 15.5, 12.7
        assert scores[name] <= len(searched) + 0.5, scores
