"""A composed reward: the weighted sum of named components, each a batch reward function.

    total(sample) = sum(weight_c * value_c(sample) for every component c that applies)

A component declares the tasks it scores; it is only called on those samples. A component
that answers None for a sample ("not applicable") is left out of that sample's total and
components. A sample no component applies to gets None.

Failures: a component is user code and may raise, return the wrong number of scores, or
return nan. That never crashes the step. When a batch call fails, the component is called
again one sample at a time to find the culprits; for each failing sample the composed
score is None (the trainer drops it rather than learning from a made-up number), and the
failure is logged and returned by `ComposedReward.score` with the sample id. A component
may therefore be called twice on some samples after a failure.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from vidrl.data.sample import TASK_KINDS
from vidrl.rewards.types import RewardFn, RewardInput, RewardScore

logger = logging.getLogger(__name__)

SampleRewardFn = Callable[..., float | None]
"""A per-sample reward `(response: str, sample: Sample, **kwargs) -> float | None`."""


@dataclass(frozen=True, slots=True)
class RewardComponent:
    """One named, weighted term of a composed reward."""

    name: str
    fn: RewardFn
    weight: float = 1.0
    tasks: frozenset[str] | None = None
    """Tasks this component scores; None: every task."""


@dataclass(frozen=True, slots=True)
class RewardFailure:
    """A component that failed on one sample: its score for that sample is None."""

    sample_id: str
    component: str
    error: str


@dataclass(frozen=True, slots=True)
class ComposedScores:
    """Scores in batch order (None: not applicable or failed) and the failures behind them."""

    scores: list[RewardScore | None]
    failures: list[RewardFailure]


class ComposedReward:
    """A `RewardFn` made of components; call it on a batch, or use `score` for failures."""

    def __init__(self, components: Sequence[RewardComponent]) -> None:
        _check_unique_per_task(components)
        self.components = tuple(components)

    def __call__(self, batch: list[RewardInput]) -> list[RewardScore | None]:
        return self.score(batch).scores

    def score(self, batch: list[RewardInput]) -> ComposedScores:
        parts: list[list[tuple[RewardComponent, float]]] = [[] for _ in batch]
        failures: list[RewardFailure] = []
        failed: set[int] = set()
        for component in self.components:
            tasks = component.tasks
            rows = [i for i, item in enumerate(batch) if tasks is None or item.sample.task in tasks]
            outcomes = _run_component(component, [batch[i] for i in rows])
            for i, outcome in zip(rows, outcomes, strict=True):
                if isinstance(outcome, _Failed):
                    failed.add(i)
                    sample_id = batch[i].sample.id
                    failures.append(RewardFailure(sample_id, component.name, outcome.message))
                    logger.warning(
                        "reward component %r failed on sample %r: %s",
                        component.name,
                        sample_id,
                        outcome.message,
                    )
                elif outcome is not None:
                    parts[i].append((component, outcome))
        scores = [
            None if i in failed or not sample_parts else _total(sample_parts)
            for i, sample_parts in enumerate(parts)
        ]
        return ComposedScores(scores, failures)


def _total(parts: list[tuple[RewardComponent, float]]) -> RewardScore:
    # Summed in the components' declared order starting from 0.0, so a preset's total is
    # bit for bit the reference's `w1 * a + w2 * b`.
    total = 0.0
    for component, value in parts:
        total += component.weight * value
    return RewardScore(total=total, components={c.name: value for c, value in parts})


class _Failed(NamedTuple):
    """A component's outcome on one sample when it raised or returned something unusable."""

    message: str


_Outcome = float | _Failed | None
"""A component's result on one sample: its value, None (not applicable), or a failure."""


def per_sample(fn: SampleRewardFn, **kwargs: object) -> RewardFn:
    """Adapt a per-sample reward to the batch contract (picklable: no closure)."""
    return functools.partial(_score_each, fn, kwargs)


def _score_each(
    fn: SampleRewardFn, kwargs: dict[str, object], batch: list[RewardInput]
) -> list[RewardScore | None]:
    scores: list[RewardScore | None] = []
    for item in batch:
        value = fn(item.response, item.sample, **kwargs)
        scores.append(None if value is None else RewardScore(total=float(value)))
    return scores


def _run_component(component: RewardComponent, batch: list[RewardInput]) -> list[_Outcome]:
    """One outcome per sample; a failing batch is retried one sample at a time."""
    if not batch:
        return []
    try:
        outcomes = _call(component.fn, batch)
    except Exception as error:  # user code: isolate the failing samples below
        if len(batch) == 1:
            return [_Failed(f"{type(error).__name__}: {error}")]
        logger.info("reward component %r failed on a batch; retrying per sample", component.name)
        return [_run_component(component, [item])[0] for item in batch]
    return outcomes


def _call(fn: RewardFn, batch: list[RewardInput]) -> list[_Outcome]:
    results = fn(batch)
    if not isinstance(results, list | tuple) or len(results) != len(batch):
        count = len(results) if isinstance(results, list | tuple) else type(results).__name__
        raise ValueError(f"returned {count} scores for a batch of {len(batch)}")
    return [_as_value(result) for result in results]


def _as_value(result: object) -> _Outcome:
    if result is None:
        return None
    total = result.total if isinstance(result, RewardScore) else result
    if isinstance(total, bool) or not isinstance(total, int | float):
        return _Failed(f"returned {type(result).__name__}; expected RewardScore, number or None")
    if not math.isfinite(total):
        return _Failed(f"returned a non-finite score ({total})")
    return float(total)


def _check_unique_per_task(components: Sequence[RewardComponent]) -> None:
    problem = duplicate_names(components)
    if problem is not None:
        raise ValueError(problem)


class _NamedForTasks(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def tasks(self) -> Collection[str] | None: ...


def duplicate_names(components: Sequence[_NamedForTasks]) -> str | None:
    """Why the components' names clash, or None: names key the reported components, so no
    two components that apply to the same task may share one. Takes anything with `name`
    and `tasks` (None: every task), so configs are checked the same way."""
    for task in TASK_KINDS:
        names = [c.name for c in components if c.tasks is None or task in c.tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            return (
                f"reward components {duplicates} are named twice for task {task!r}; names "
                "must be unique among the components that apply to a task"
            )
    return None
