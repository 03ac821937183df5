"""Search controllers: they propose choice vectors and learn from the rewards of finished trials.

A controller works on choice indices, one int per decision of a
:class:`~mnasnet.search.space.SearchSpace` (``space.decode(choices)`` is the
candidate). Decisions with a single option are always 0 and never searched.

- ``random``: uniform sampling, the baseline.
- ``evolution``: regularised ("aging") evolution, Real et al. 2019.
- ``reinforce``: TuNAS (Bender et al. 2020): independent logits per decision,
  REINFORCE with a moving-average baseline and Adam.
- ``ppo``: the MNAS paper's controller (section 3, after NASNet): one LSTM layer
  of 100 units, weights U(-0.1, 0.1), trained with PPO, learning rate 3.5e-4,
  entropy weight 1e-5 and an exponential-moving-average reward baseline (0.95).

Determinism and asynchronous trials
-----------------------------------
Trials run in parallel, so several proposals may be outstanding before their
rewards arrive. Two rules make a search exactly reproducible:

1. The controller's state after ``n`` observations is a pure function of the
   seed, the options and the first ``n`` finished trials ``(choices, reward)``
   in the order they were observed. ``observe`` draws no random numbers; the
   "old" policy of a PPO update is the policy at the start of that update.
2. The k-th proposal (k counts from 0 over every proposal ever made) is a pure
   function of the seed, ``k`` and the state at the moment it was made, i.e.
   of the ``observed`` trials before it. Its random numbers come from a
   generator seeded with ``(seed, k)``, never from a shared stream.

So a driver records, per trial, its proposal index (:attr:`Controller.proposals_made`
before the call), its choices and, once finished, its reward in finishing order.
:func:`replay` rebuilds the controller from those records: it observes the finished
trials in order and sets the proposal counter past every proposal made (finished or
outstanding). A resumed driver that resubmits the outstanding trials and proposes at
the same points (after the same number of observations) continues exactly as the
uninterrupted run. :meth:`Controller.state_dict` is the same state as a checkpoint,
which avoids re-running the updates.

Torch computations run single-threaded (:func:`_one_thread` sets the process's
torch thread count to 1 for the call and restores it), so results do not depend
on the thread count; parameters are initialised from a local ``torch.Generator``
seeded with the controller's seed. Call a controller from one thread at a time.
"""

from __future__ import annotations

import collections
import contextlib
import inspect
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from mnasnet.errors import MnasNetError

__all__ = [
    "CONTROLLERS",
    "Controller",
    "ControllerError",
    "EvolutionController",
    "FinishedTrial",
    "LSTMPolicy",
    "PPOController",
    "RandomController",
    "ReinforceController",
    "make_controller",
    "replay",
]


class ControllerError(MnasNetError, ValueError):
    """A controller name or option that cannot be used, or a trial that does not fit the space."""


class FinishedTrial(NamedTuple):
    """A trial's choice indices and its reward, as observed."""

    choices: tuple[int, ...]
    reward: float


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    # Reductions split over threads round differently; one thread makes every run identical.
    threads = torch.get_num_threads()
    if threads != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads != 1:
            torch.set_num_threads(threads)


def _choice_counts(space: Any) -> tuple[int, ...]:
    """Options per decision, from a SearchSpace (its ``decisions``) or a plain sequence of counts."""
    decisions = getattr(space, "decisions", None)
    counts = [len(d.choices) for d in decisions] if decisions is not None else space
    try:
        counts = tuple(int(count) for count in counts)
    except (TypeError, ValueError):
        raise ControllerError(f"expected a search space or a list of option counts, got {space!r}") from None
    if not counts or any(count < 1 for count in counts):
        raise ControllerError(f"every decision needs at least one option, got counts {counts}")
    if all(count == 1 for count in counts):
        raise ControllerError("the search space has no decision with more than one option: nothing to search")
    return counts


def _check_number(
    name: str,
    value: Any,
    *,
    low: float,
    high: float = math.inf,
    integer: bool = False,
    low_open: bool = False,
    high_open: bool = False,
) -> Any:
    """``value`` if it is a finite number in range; ``low_open``/``high_open`` exclude the bounds."""
    kind = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ControllerError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        raise ControllerError(f"{name} must be finite, got {value!r}")
    if (value <= low if low_open else value < low) or (value >= high if high_open else value > high):
        left = "(" if low_open else "["
        right = ")" if high_open or high == math.inf else "]"
        raise ControllerError(f"{name} must be in {left}{low:g}, {high:g}{right}, got {value!r}")
    return int(value) if integer else float(value)


def _proposal_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def _sample(probabilities: np.ndarray, uniform: float) -> int:
    """Inverse-CDF draw: one uniform number per decision, so draws never shift between decisions."""
    index = int(np.searchsorted(np.cumsum(probabilities), uniform * probabilities.sum(), side="right"))
    return min(index, len(probabilities) - 1)


class Controller:
    """Proposes choice vectors and learns from finished trials (see the module docstring for determinism).

    Args:
        space: a :class:`~mnasnet.search.space.SearchSpace`, or a list of option counts per decision.
        seed: a non-negative integer; with the observed trials it fixes every proposal.
    """

    name = "controller"

    def __init__(self, space: Any, *, seed: int = 0) -> None:
        self.counts = _choice_counts(space)
        self.searched = tuple(i for i, count in enumerate(self.counts) if count > 1)
        self.seed = _check_number("seed", seed, low=0, integer=True)
        self.proposals_made = 0
        self.observed = 0
        self.options: dict[str, Any] = {}  # the keyword arguments besides the seed, checked on load

    def propose(self) -> list[int]:
        """The next trial's choice indices (the proposal with index :attr:`proposals_made`)."""
        rng = _proposal_rng(self.seed, self.proposals_made)
        self.proposals_made += 1
        return self._propose(rng)

    def observe(self, choices: Sequence[int], reward: float) -> None:
        """Learns from a finished trial; call in the order trials finish.

        Raises:
            ControllerError: choices that do not fit the space, or a reward that is not a finite number.
        """
        choices = self._check_choices(choices)
        if isinstance(reward, bool) or not isinstance(reward, int | float | np.integer | np.floating):
            raise ControllerError(f"reward must be a number, got {reward!r}")
        if not math.isfinite(reward):
            raise ControllerError(f"reward must be finite, got {reward!r} (give failed trials a finite reward)")
        self._observe(choices, float(reward))
        self.observed += 1

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`load_state_dict` needs to continue exactly (a checkpoint instead of a replay)."""
        identity = {"controller": self.name, "counts": list(self.counts), "seed": self.seed, "options": self.options}
        return identity | {"proposals_made": self.proposals_made, "observed": self.observed, **self._state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output into a controller built with the same space and options.

        Raises:
            ControllerError: the state is another controller's, space's, seed's or options'.
        """
        expected = {"controller": self.name, "counts": list(self.counts), "seed": self.seed, "options": self.options}
        for key, value in expected.items():
            if state.get(key) != value:
                raise ControllerError(f"controller state has {key} = {state.get(key)!r}, this controller {value!r}")
        self.proposals_made = int(state["proposals_made"])
        self.observed = int(state["observed"])
        self._load_state(state)

    def _check_choices(self, choices: Sequence[int]) -> tuple[int, ...]:
        try:
            values = tuple(choices)
        except TypeError:
            raise ControllerError(f"choices must be a list of indices, got {choices!r}") from None
        if len(values) != len(self.counts):
            raise ControllerError(f"expected {len(self.counts)} choice indices, got {len(values)}")
        for position, (value, count) in enumerate(zip(values, self.counts, strict=True)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= value < count:
                raise ControllerError(f"choice {position} is {value!r}, expected an index below {count}")
        return tuple(int(value) for value in values)

    def _propose(self, rng: np.random.Generator) -> list[int]:
        raise NotImplementedError

    def _observe(self, choices: tuple[int, ...], reward: float) -> None:
        pass

    def _state(self) -> dict[str, Any]:
        return {}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        pass

    def _uniform(self, rng: np.random.Generator) -> list[int]:
        return [int(rng.integers(count)) if count > 1 else 0 for count in self.counts]


class RandomController(Controller):
    """Uniform sampling over every decision: the baseline every other controller must beat."""

    name = "random"

    def _propose(self, rng: np.random.Generator) -> list[int]:
        return self._uniform(rng)


class EvolutionController(Controller):
    """Regularised ("aging") evolution (Real et al. 2019, "Regularized Evolution for Image Classifier ...").

    While fewer than ``population_size`` trials have been observed, proposals are uniform
    random. After that, each proposal samples ``sample_size`` distinct members of the
    population (the most recently observed ``population_size`` trials), takes the one with
    the best reward (the earliest sampled on a tie) and changes one searched decision to
    another option. Observing a trial adds it and drops the oldest: age, not fitness,
    decides who dies. The defaults (20, 5) suit budgets of 100-200 trials; the paper
    used 100 and 25 for 20,000.

    Args:
        population_size: members kept, at least 2.
        sample_size: tournament size, 1 to ``population_size``.
    """

    name = "evolution"

    def __init__(self, space: Any, *, seed: int = 0, population_size: int = 20, sample_size: int = 5) -> None:
        super().__init__(space, seed=seed)
        self.population_size = _check_number("population_size", population_size, low=2, integer=True)
        self.sample_size = _check_number("sample_size", sample_size, low=1, integer=True)
        if self.sample_size > self.population_size:
            raise ControllerError(f"sample_size ({sample_size}) must not exceed population_size ({population_size})")
        self.options = {"population_size": self.population_size, "sample_size": self.sample_size}
        self.population: collections.deque[FinishedTrial] = collections.deque(maxlen=self.population_size)

    def _propose(self, rng: np.random.Generator) -> list[int]:
        if len(self.population) < self.population_size:
            return self._uniform(rng)
        contenders = rng.choice(len(self.population), size=self.sample_size, replace=False)
        parent = max(contenders, key=lambda i: self.population[i].reward)  # max keeps the first of equals
        child = list(self.population[parent].choices)
        decision = self.searched[int(rng.integers(len(self.searched)))]
        offset = int(rng.integers(1, self.counts[decision]))  # 1..n-1 away: always a different option
        child[decision] = (child[decision] + offset) % self.counts[decision]
        return child

    def _observe(self, choices: tuple[int, ...], reward: float) -> None:
        self.population.append(FinishedTrial(choices, reward))

    def _state(self) -> dict[str, Any]:
        return {"population": [[list(t.choices), t.reward] for t in self.population]}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.population.clear()
        self.population.extend(FinishedTrial(tuple(c), float(r)) for c, r in state["population"])


class _PolicyGradient(Controller):
    """Shared parts of the REINFORCE and PPO controllers: EMA baseline, Adam, checkpoints."""

    def __init__(self, space: Any, *, seed: int, learning_rate: float, entropy_weight: float, baseline_decay: float):
        super().__init__(space, seed=seed)
        self.learning_rate = _check_number("learning_rate", learning_rate, low=0, low_open=True)
        self.entropy_weight = _check_number("entropy_weight", entropy_weight, low=0)
        self.baseline_decay = _check_number("baseline_decay", baseline_decay, low=0, high=1, high_open=True)
        self.baseline: float | None = None
        self.options = {
            "learning_rate": self.learning_rate,
            "entropy_weight": self.entropy_weight,
            "baseline_decay": self.baseline_decay,
        }
        self.generator = torch.Generator().manual_seed(self.seed)

    def _advantage(self, reward: float) -> float:
        """``reward - baseline`` with the baseline before this reward; the first trial starts it."""
        if self.baseline is None:
            self.baseline = reward
        advantage = reward - self.baseline
        self.baseline = self.baseline_decay * self.baseline + (1 - self.baseline_decay) * reward
        return advantage

    def _state(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "module": self.module.state_dict(), "optimizer": self.optimizer.state_dict()}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.baseline = state["baseline"]
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])


class _Logits(nn.Module):
    def __init__(self, counts: Sequence[int]) -> None:
        super().__init__()
        # TuNAS starts every logit at 0: a uniform policy.
        self.logits = nn.ParameterList(nn.Parameter(torch.zeros(count)) for count in counts)


class ReinforceController(_PolicyGradient):
    """TuNAS's controller: one categorical distribution per searched decision, trained with REINFORCE.

    Each observed trial is one update step: loss ``-(reward - baseline) * log p(choices)
    - entropy_weight * entropy``, Adam with beta1 = 0, beta2 = 0.999, eps = 1e-8 (TuNAS's
    settings). TuNAS's learning rate, 0.0048 at batch 4096 rising tenfold, is meant for
    tens of thousands of steps; the default 0.05 moves a logit by up to about 10 over
    200 trials. TuNAS uses no entropy term (0 here too); its baseline decay is 0.95.
    Rewards are used as they come (TuNAS's absolute reward needs no normalisation); the
    gradient of an older proposal is taken at the current policy.

    Args:
        learning_rate: Adam's step size (> 0).
        entropy_weight: weight of the entropy bonus (>= 0).
        baseline_decay: decay of the reward's moving average, in [0, 1).
    """

    name = "reinforce"

    def __init__(
        self,
        space: Any,
        *,
        seed: int = 0,
        learning_rate: float = 0.05,
        entropy_weight: float = 0.0,
        baseline_decay: float = 0.95,
    ) -> None:
        super().__init__(
            space, seed=seed, learning_rate=learning_rate, entropy_weight=entropy_weight, baseline_decay=baseline_decay
        )
        self.module = _Logits([self.counts[i] for i in self.searched])
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=self.learning_rate, betas=(0.0, 0.999), eps=1e-8)

    def probabilities(self) -> list[np.ndarray]:
        """The policy's option probabilities, one array per searched decision."""
        with torch.no_grad():
            return [torch.softmax(logits.double(), 0).numpy() for logits in self.module.logits]

    def _propose(self, rng: np.random.Generator) -> list[int]:
        choices = [0] * len(self.counts)
        uniforms = rng.random(len(self.searched))
        with _one_thread():
            for decision, probabilities, uniform in zip(self.searched, self.probabilities(), uniforms, strict=True):
                choices[decision] = _sample(probabilities, uniform)
        return choices

    def _observe(self, choices: tuple[int, ...], reward: float) -> None:
        advantage = self._advantage(reward)
        with _one_thread():
            log_prob = torch.zeros(())
            entropy = torch.zeros(())
            for decision, logits in zip(self.searched, self.module.logits, strict=True):
                log_probs = torch.log_softmax(logits, 0)
                log_prob = log_prob + log_probs[choices[decision]]
                entropy = entropy - (log_probs.exp() * log_probs).sum()
            loss = -advantage * log_prob - self.entropy_weight * entropy
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()


class LSTMPolicy(nn.Module):
    """NASNet's controller: an LSTM that emits one decision per step, fed the embedding of its last choice.

    Step 0 reads a learned start vector; step t > 0 reads the embedding of decision
    t-1's option; step t's output goes through decision t's own linear head. Every
    weight is drawn from U(-0.1, 0.1) (MNAS paper section 3).

    Args:
        counts: options per decision (all at least 2).
        hidden_size: LSTM units, also the embedding size.
        generator: the random source for the initial weights.
    """

    def __init__(self, counts: Sequence[int], hidden_size: int = 100, generator: torch.Generator | None = None):
        super().__init__()
        self.counts = tuple(counts)
        self.lstm = nn.LSTM(hidden_size, hidden_size, num_layers=1)
        self.start = nn.Parameter(torch.empty(hidden_size))
        self.embeddings = nn.ModuleList(nn.Embedding(count, hidden_size) for count in self.counts[:-1])
        self.heads = nn.ModuleList(nn.Linear(hidden_size, count) for count in self.counts)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.uniform_(-0.1, 0.1, generator=generator)

    def forward(self, choices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability and entropy of each row of ``choices`` (batch x decisions), summed over decisions."""
        batch = choices.shape[0]
        inputs = [self.start.expand(batch, -1)]
        inputs += [embedding(choices[:, step]) for step, embedding in enumerate(self.embeddings)]
        outputs, _ = self.lstm(torch.stack(inputs))
        log_prob = torch.zeros(batch)
        entropy = torch.zeros(batch)
        for step, head in enumerate(self.heads):
            log_probs = torch.log_softmax(head(outputs[step]), -1)
            log_prob = log_prob + log_probs.gather(1, choices[:, step : step + 1]).squeeze(1)
            entropy = entropy - (log_probs.exp() * log_probs).sum(-1)
        return log_prob, entropy

    @torch.no_grad()
    def sample(self, uniforms: Sequence[float]) -> list[int]:
        """One choice per decision, each drawn by inverse CDF from one of ``uniforms``."""
        state = None
        step_input = self.start.view(1, 1, -1)
        choices = []
        for step, head in enumerate(self.heads):
            output, state = self.lstm(step_input, state)
            probabilities = torch.softmax(head(output[0, 0]).double(), -1).numpy()
            choices.append(_sample(probabilities, uniforms[step]))
            if step < len(self.embeddings):
                step_input = self.embeddings[step](torch.tensor([[choices[-1]]]))
        return choices


class PPOController(_PolicyGradient):
    """The MNAS paper's controller: an :class:`LSTMPolicy` trained with PPO.

    Each observed trial gets its advantage ``reward - baseline`` (baseline: an
    exponential moving average, decay 0.95). Every ``batch_size`` observed trials,
    ``epochs`` full-batch Adam steps minimise PPO's clipped objective
    ``-min(ratio A, clip(ratio, 1 - clip, 1 + clip) A) - entropy_weight * entropy``,
    the ratio taken against the policy at the start of the update. The paper's
    settings are the defaults (learning rate 3.5e-4, entropy weight 1e-5, for about
    8,000 trials); budgets of a few hundred trials learn faster with about 3e-3.

    Args:
        learning_rate: Adam's step size (> 0).
        entropy_weight: weight of the entropy bonus (>= 0).
        baseline_decay: decay of the reward's moving average, in [0, 1).
        clip: PPO's ratio clip, in (0, 1).
        epochs: optimisation steps per batch.
        batch_size: observed trials per update.
        hidden_size: LSTM units.
    """

    name = "ppo"

    def __init__(
        self,
        space: Any,
        *,
        seed: int = 0,
        learning_rate: float = 3.5e-4,
        entropy_weight: float = 1e-5,
        baseline_decay: float = 0.95,
        clip: float = 0.2,
        epochs: int = 4,
        batch_size: int = 8,
        hidden_size: int = 100,
    ) -> None:
        super().__init__(
            space, seed=seed, learning_rate=learning_rate, entropy_weight=entropy_weight, baseline_decay=baseline_decay
        )
        self.clip = _check_number("clip", clip, low=0, high=1, low_open=True, high_open=True)
        self.epochs = _check_number("epochs", epochs, low=1, integer=True)
        self.batch_size = _check_number("batch_size", batch_size, low=1, integer=True)
        hidden_size = _check_number("hidden_size", hidden_size, low=1, integer=True)
        self.options |= {
            "clip": self.clip,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "hidden_size": hidden_size,
        }
        with _one_thread():
            self.module = LSTMPolicy([self.counts[i] for i in self.searched], hidden_size, generator=self.generator)
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=self.learning_rate)
        self.batch: list[tuple[tuple[int, ...], float]] = []  # searched choices and advantage

    def _propose(self, rng: np.random.Generator) -> list[int]:
        uniforms = rng.random(len(self.searched))
        with _one_thread():
            sampled = self.module.sample(uniforms)
        choices = [0] * len(self.counts)
        for decision, choice in zip(self.searched, sampled, strict=True):
            choices[decision] = choice
        return choices

    def _observe(self, choices: tuple[int, ...], reward: float) -> None:
        self.batch.append((tuple(choices[i] for i in self.searched), self._advantage(reward)))
        if len(self.batch) >= self.batch_size:
            with _one_thread():
                self._update()
            self.batch.clear()

    def _update(self) -> None:
        choices = torch.tensor([row for row, _ in self.batch])
        advantages = torch.tensor([advantage for _, advantage in self.batch])
        with torch.no_grad():
            old_log_prob, _ = self.module(choices)
        for _ in range(self.epochs):
            log_prob, entropy = self.module(choices)
            ratio = torch.exp(log_prob - old_log_prob)
            clipped = torch.clamp(ratio, 1 - self.clip, 1 + self.clip)
            objective = torch.minimum(ratio * advantages, clipped * advantages)
            loss = -objective.mean() - self.entropy_weight * entropy.mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()

    def _state(self) -> dict[str, Any]:
        return super()._state() | {"batch": [[list(row), advantage] for row, advantage in self.batch]}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        super()._load_state(state)
        self.batch = [(tuple(row), float(advantage)) for row, advantage in state["batch"]]


CONTROLLERS: dict[str, type[Controller]] = {
    "random": RandomController,
    "evolution": EvolutionController,
    "reinforce": ReinforceController,
    "ppo": PPOController,
}


def make_controller(name: str, space: Any, seed: int = 0, **options: Any) -> Controller:
    """A controller by name: ``random``, ``evolution``, ``reinforce`` or ``ppo``.

    Args:
        name: the controller.
        space: a :class:`~mnasnet.search.space.SearchSpace`, or a list of option counts per decision.
        seed: a non-negative integer.
        **options: the controller's keyword arguments (e.g. ``population_size`` for evolution).

    Raises:
        ControllerError: an unknown name, an option the controller does not take, or a bad value.
    """
    if name not in CONTROLLERS:
        raise ControllerError(f"unknown controller {name!r}; choose from {', '.join(CONTROLLERS)}")
    cls = CONTROLLERS[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "space", "seed")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        allowed = ", ".join(accepted) or "none"
        raise ControllerError(f"controller {name!r} has no option {unknown[0]!r}; its options: {allowed}")
    return cls(space, seed=seed, **options)


def _as_trial(trial: Any) -> tuple[Sequence[int], float]:
    if isinstance(trial, Mapping):
        return trial["choices"], trial["reward"]
    if hasattr(trial, "choices") and hasattr(trial, "reward"):
        return trial.choices, trial.reward
    choices, reward = trial
    return choices, reward


def replay(
    name: str,
    space: Any,
    seed: int,
    finished_trials: Sequence[Any],
    *,
    proposals_made: int | None = None,
    **options: Any,
) -> Controller:
    """Rebuilds a controller from its seed and the finished trials, in the order they were observed.

    Args:
        name / space / seed / options: as given to :func:`make_controller` for the original run.
        finished_trials: ``(choices, reward)`` pairs, :class:`FinishedTrial` or mappings with
            ``choices`` and ``reward``.
        proposals_made: every proposal made so far, finished or outstanding (the highest
            proposal index plus one); defaults to the number of finished trials.

    Raises:
        ControllerError: a trial that does not fit the space, or fewer proposals than finished trials.
    """
    controller = make_controller(name, space, seed, **options)
    for trial in finished_trials:
        try:
            choices, reward = _as_trial(trial)
        except (KeyError, TypeError, ValueError):
            raise ControllerError(f"a finished trial must hold choices and a reward, got {trial!r}") from None
        controller.observe(choices, reward)
    made = len(finished_trials) if proposals_made is None else proposals_made
    made = _check_number("proposals_made", made, low=len(finished_trials), integer=True)
    controller.proposals_made = made
    return controller
