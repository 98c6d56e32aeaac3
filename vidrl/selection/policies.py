"""Variance-aware data selection: which training samples give GRPO a learning signal.

Temporal-R1 keeps the samples whose rewards vary over repeated inference: a sample the
model always gets right (or always wrong) gives every response of its group the same
reward, so its GRPO advantages are all zero. `select` applies, in this order:

1. no usable score (every response failed)                 -> dropped "no_scores"
2. discrete tasks (mcq, gqa): keep min_pass_rate < pass rate < max_pass_rate, by default
   accuracy strictly between 0 and 1 (0/8 and 8/8 dropped, 3/8 kept)
                                                            -> "pass_rate_too_low" / "_high"
   continuous tasks (tvg, track): keep variance of the total > min_variance
                                                            -> "low_variance"
3. optional band on a mean: min_mean < mean <= max_mean, of `band_component` (samples
   without that component skip the band) or of the total (Time-R1 keeps 0 < IoU <= 0.7)
                                                            -> "below_band" / "above_band"
4. optional per-task quotas, then an optional overall top_k, each keeping the highest
   variance of the total first (ties: earlier in the input first)
                                                            -> "task_quota" / "top_k"

Discrete vs continuous is decided by the task, not by looking at the values: gqa counts
as discrete (its answer letter is the signal) although its total also carries an IoU.
Departure from the paper: Temporal-R1 states no threshold or ranking; these rules and
their defaults are ours. Kept ids come out in the order of the input, so the selected
dataset keeps the order of the source dataset.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from vidrl.selection.config import SelectionConfig
from vidrl.selection.stats import DISCRETE_TASKS, SampleStats

DropReason = Literal[
    "no_scores",
    "pass_rate_too_low",
    "pass_rate_too_high",
    "low_variance",
    "below_band",
    "above_band",
    "task_quota",
    "top_k",
]
"""Why `select` dropped a sample (the first rule it failed, in the order of the module doc)."""


@dataclass(frozen=True, slots=True)
class SelectionResult:
    """What `select` kept and why it dropped the rest.

    kept:    sample ids, in input order.
    dropped: sample id -> reason, in input order.
    before / after: task -> number of samples in the input / kept (every input task is a
             key of both, with 0 when none of it was kept).
    """

    kept: tuple[str, ...]
    dropped: Mapping[str, DropReason]
    before: Mapping[str, int]
    after: Mapping[str, int]


def select(stats: Sequence[SampleStats], cfg: SelectionConfig) -> SelectionResult:
    """Keep the samples with a learning signal (rules in the module docstring)."""
    ids = [s.sample_id for s in stats]
    repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
    if repeated:
        raise ValueError(f"sample ids appear more than once in the stats: {repeated[:5]}")
    dropped: dict[str, DropReason] = {}
    for s in stats:
        reason = filter_reason(s, cfg)
        if reason is not None:
            dropped[s.sample_id] = reason
    survivors = [(i, s) for i, s in enumerate(stats) if s.sample_id not in dropped]
    survivors = _apply_quotas(survivors, cfg.max_per_task, dropped)
    if cfg.top_k is not None:
        survivors = _keep_top(survivors, cfg.top_k, "top_k", dropped)
    kept_ids = {s.sample_id for _, s in survivors}
    before = Counter(s.task for s in stats)
    after = Counter(s.task for s in stats if s.sample_id in kept_ids)
    return SelectionResult(
        kept=tuple(i for i in ids if i in kept_ids),
        dropped={i: dropped[i] for i in ids if i in dropped},
        before=dict(before),
        after={task: after.get(task, 0) for task in before},
    )


def filter_reason(s: SampleStats, cfg: SelectionConfig) -> DropReason | None:
    """The first per-sample rule (1-3) the sample fails, or None when it passes them all."""
    if not s.has_scores:
        return "no_scores"
    if s.task in DISCRETE_TASKS:
        if s.pass_rate <= cfg.min_pass_rate:
            return "pass_rate_too_low"
        if s.pass_rate >= cfg.max_pass_rate:
            return "pass_rate_too_high"
    elif s.variance <= cfg.min_variance:
        return "low_variance"
    return _band_reason(s, cfg)


def _band_reason(s: SampleStats, cfg: SelectionConfig) -> DropReason | None:
    if cfg.band_component is None:
        mean = s.mean
    elif cfg.band_component in s.components:
        mean = s.components[cfg.band_component].mean
    else:
        return None  # the band is about a component this task does not have
    if cfg.min_mean is not None and mean <= cfg.min_mean:
        return "below_band"
    if cfg.max_mean is not None and mean > cfg.max_mean:
        return "above_band"
    return None


Ranked = list[tuple[int, SampleStats]]
"""(position in the input, stats): the position breaks ties so ranking is deterministic."""
Dropped = dict[str, DropReason]
"""Sample id -> why it was dropped; the rules write into it as they drop."""


def _apply_quotas(survivors: Ranked, quotas: Mapping[str, int], dropped: Dropped) -> Ranked:
    """Each task with a quota keeps its highest-variance samples; other tasks keep all."""
    out: Ranked = [(i, s) for i, s in survivors if s.task not in quotas]
    for task, quota in quotas.items():
        of_task = [(i, s) for i, s in survivors if s.task == task]
        out += _keep_top(of_task, quota, "task_quota", dropped)
    return sorted(out, key=lambda item: item[0])


def _keep_top(ranked: Ranked, count: int, reason: DropReason, dropped: Dropped) -> Ranked:
    """The `count` highest-variance entries (input order kept); the rest are marked dropped."""
    order = sorted(ranked, key=lambda item: (-item[1].variance, item[0]))
    for _, s in order[count:]:
        dropped[s.sample_id] = reason
    return sorted(order[:count], key=lambda item: item[0])
