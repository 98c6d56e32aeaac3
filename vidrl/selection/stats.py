"""Per-sample reward statistics over K repeated inferences, and their Parquet table.

`vidrl select` draws K responses for every training sample and scores them; this module
turns those K scores into one `SampleStats` (mean, variance, std of the total reward and
of each named component, and a pass rate), which the selection policies read.

Choices (Temporal-R1 describes "the variance of rewards over repeated inference" without
a formula, so these are ours):
- Variance is the population variance (ddof=0) of the K values: the spread of this
  sample's reward distribution as seen in K draws, the quantity a GRPO group of size K
  normalises by. A single response (k=1) has variance 0, not NaN.
- Values that are all equal have variance exactly 0 (not a rounding residue such as
  1e-34), so "no signal" is never mistaken for a little.
- A None score (failed or not applicable) is left out and counted in `failed`; so is a
  non-finite total. Every number in a `SampleStats` is finite: a sample with no usable
  score has k=0, zeros everywhere and `has_scores` False.
- Pass rate: on discrete tasks (mcq, gqa) the fraction of responses whose accuracy
  component (`mcq_accuracy` / `gqa_accuracy`) is 1; on continuous tasks (tvg, track),
  and on a discrete response without its accuracy component (a custom reward), the
  fraction whose total is at least `pass_threshold`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vidrl.data.sample import TASK_KINDS, TaskKind
from vidrl.rewards.types import RewardScore

ACCURACY_COMPONENTS: Mapping[str, str] = {"mcq": "mcq_accuracy", "gqa": "gqa_accuracy"}
"""The component whose value 1 marks a correct response, per discrete task."""

DISCRETE_TASKS: frozenset[str] = frozenset(ACCURACY_COMPONENTS)
"""Tasks whose learning signal is a right/wrong answer; the others (tvg, track) are continuous."""

_MOMENTS = ("mean", "variance", "std")
_BASE_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("task", pa.string()),
        ("k", pa.int64()),
        ("failed", pa.int64()),
        ("has_scores", pa.bool_()),
        ("mean", pa.float64()),
        ("variance", pa.float64()),
        ("std", pa.float64()),
        ("pass_rate", pa.float64()),
    ]
)


@dataclass(frozen=True, slots=True)
class ComponentStats:
    """Moments of one named component over the responses it applied to (`count` of them)."""

    count: int
    mean: float
    variance: float
    std: float


@dataclass(frozen=True, slots=True)
class SampleStats:
    """Reward statistics of one training sample over its K repeated responses.

    k:          responses with a usable score; `failed` more had none (None or non-finite).
    mean, variance, std: of the total reward over those k (population variance, ddof=0).
    pass_rate:  fraction of the k that passed (see the module docstring); 0 when k=0.
    components: name -> moments of that component, over the responses it applied to.
    """

    sample_id: str
    task: TaskKind
    k: int
    failed: int
    mean: float
    variance: float
    std: float
    pass_rate: float
    components: Mapping[str, ComponentStats] = field(default_factory=dict)

    @property
    def has_scores(self) -> bool:
        """False when every response failed: the numbers are placeholders, not measurements."""
        return self.k > 0


def sample_stats(
    sample_id: str,
    task: TaskKind,
    scores: Sequence[RewardScore | None],
    pass_threshold: float = 0.5,
) -> SampleStats:
    """Statistics of one sample's K scores (None scores are counted as failed, not as 0)."""
    if task not in TASK_KINDS:
        raise ValueError(f"sample {sample_id!r}: unknown task {task!r}; allowed: {TASK_KINDS}")
    usable = [s for s in scores if s is not None and math.isfinite(s.total)]
    totals = [s.total for s in usable]
    mean, variance, std = _moments(totals)
    passed = sum(_passes(s, task, pass_threshold) for s in usable)
    return SampleStats(
        sample_id=sample_id,
        task=task,
        k=len(usable),
        failed=len(scores) - len(usable),
        mean=mean,
        variance=variance,
        std=std,
        pass_rate=passed / len(usable) if usable else 0.0,
        components=_component_stats(usable),
    )


def _passes(score: RewardScore, task: str, pass_threshold: float) -> bool:
    accuracy = ACCURACY_COMPONENTS.get(task)
    if accuracy is not None and accuracy in score.components:
        return score.components[accuracy] >= 1.0
    return score.total >= pass_threshold


def _component_stats(scores: Sequence[RewardScore]) -> dict[str, ComponentStats]:
    values: dict[str, list[float]] = {}
    for score in scores:
        for name, value in score.components.items():
            if math.isfinite(value):
                values.setdefault(name, []).append(value)
    return {name: ComponentStats(len(v), *_moments(v)) for name, v in sorted(values.items())}


def _moments(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, population variance, std); zeros for no values, exact zero spread for equal ones."""
    if not values:
        return 0.0, 0.0, 0.0
    if min(values) == max(values):
        return float(values[0]), 0.0, 0.0
    mean = math.fsum(values) / len(values)
    variance = math.fsum((v - mean) ** 2 for v in values) / len(values)
    return mean, variance, math.sqrt(variance)


def stats_table(stats: Sequence[SampleStats]) -> pa.Table:
    """One row per sample; component c's moments in columns `component/<c>/{mean,...,count}`.

    A component that does not apply to a sample is null in that row.
    """
    columns: dict[str, list[Any]] = {name: [] for name in _BASE_SCHEMA.names}
    for s in stats:
        for name in _BASE_SCHEMA.names:
            columns[name].append(s.has_scores if name == "has_scores" else getattr(s, name))
    fields = list(_BASE_SCHEMA)
    names = sorted({name for s in stats for name in s.components})
    for name in names:
        present = [s.components.get(name) for s in stats]
        fields.append(pa.field(f"component/{name}/count", pa.int64()))
        columns[f"component/{name}/count"] = [c.count if c else None for c in present]
        for moment in _MOMENTS:
            fields.append(pa.field(f"component/{name}/{moment}", pa.float64()))
            values = [getattr(c, moment) if c else None for c in present]
            columns[f"component/{name}/{moment}"] = values
    return pa.Table.from_pydict(columns, schema=pa.schema(fields))


def write_stats(path: str | Path, stats: Sequence[SampleStats]) -> None:
    """Write the stats table as Parquet (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(stats_table(stats), path)
