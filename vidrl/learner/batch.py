"""What the learner trains on, and how a step's groups are split across ranks and micro-batches.

A `TrainGroup` is one prompt with its G responses: the unit of GRPO (advantages are
relative within it) and of the shared-prefix layout (the prompt is computed once for the
G responses). Splitting never cuts a group. The loss is normalised by counts taken over
the WHOLE step (`StepTotals`), so that the update does not depend on how the step was split
into ranks and micro-batches (see vidrl.learner.grpo for how each aggregation uses them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class VisionArrays:
    """The processor's output for one prompt's video, computed once, shipped as numpy
    (zero-copy through Ray's object store).

    pixel_values_videos: float32 [N_patches, C * temporal_patch * patch * patch]
    video_grid_thw:      int64 [num_videos, 3] (frames / temporal patch, height, width in patches)
    second_per_grid_ts:  float64 [num_videos], seconds one temporal patch spans (rotary time)
    """

    pixel_values_videos: np.ndarray
    video_grid_thw: np.ndarray
    second_per_grid_ts: np.ndarray


@dataclass(frozen=True, slots=True)
class TrainGroup:
    """One prompt and its G responses.

    prompt_ids:    int64 [P], video pad tokens expanded (as the rollout engine saw them)
    responses:     G x int64 [L_g]
    advantages:    float32 [G] (GRPO) ; for SFT, ones
    old_logprobs:  G x float32 [L_g] from the rollout engine, or None (recompute / SFT)
    vision:        the prompt's video, or None for a text-only prompt
    """

    prompt_ids: np.ndarray
    responses: tuple[np.ndarray, ...]
    advantages: np.ndarray
    old_logprobs: tuple[np.ndarray, ...] | None = None
    vision: VisionArrays | None = None

    @property
    def num_response_tokens(self) -> int:
        return int(sum(len(r) for r in self.responses))

    def cost(self, shared_prefix: bool) -> int:
        """Tokens one forward pass processes: P + sum(L) shared, G * P + sum(L) plain."""
        copies = 1 if shared_prefix else len(self.responses)
        return copies * len(self.prompt_ids) + self.num_response_tokens


@dataclass(frozen=True, slots=True)
class StepTotals:
    """Counts over one optimizer update (all ranks, all micro-batches): the loss's denominators."""

    response_tokens: int
    sequences: int


def step_totals(groups: Sequence[TrainGroup]) -> StepTotals:
    return StepTotals(
        response_tokens=sum(g.num_response_tokens for g in groups),
        sequences=sum(sum(1 for r in g.responses if len(r)) for g in groups),
    )


@dataclass(frozen=True, slots=True)
class UpdatePlan:
    """One optimizer update as one rank runs it.

    microbatches:     this rank's micro-batches, each a tuple of whole groups (may be empty).
    num_microbatches: how many forward/backward passes every rank runs for this update (the
                      most any rank has: a rank with fewer runs an idle group at weight 0).
    totals:           the update's counts over all ranks (its loss denominators).
    """

    microbatches: tuple[tuple[TrainGroup, ...], ...]
    num_microbatches: int
    totals: StepTotals


def split_into_updates(groups: Sequence[TrainGroup], updates: int) -> list[list[int]]:
    """Indices of the groups of each optimizer update: consecutive runs of whole groups, as
    equal in count as they can be (verl's and EasyR1's mini-batches). Fewer groups than updates
    give one update per group."""
    count = min(updates, len(groups))
    bounds = [round(i * len(groups) / count) for i in range(count + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(count)]


def split_across_ranks(groups: Sequence[TrainGroup], num_ranks: int, shared_prefix: bool) -> list[list[int]]:
    """Indices of the groups each rank trains on, balanced by token cost (largest first).

    Every rank gets at least one group when there are enough groups; a rank with none
    still takes part in the collectives (the worker runs an empty micro-batch).
    """
    order = sorted(range(len(groups)), key=lambda i: -groups[i].cost(shared_prefix))
    loads = [0] * num_ranks
    shares: list[list[int]] = [[] for _ in range(num_ranks)]
    for index in order:
        rank = min(range(num_ranks), key=lambda r: (loads[r], len(shares[r])))
        shares[rank].append(index)
        loads[rank] += groups[index].cost(shared_prefix)
    return [sorted(share) for share in shares]


def micro_batches(groups: Sequence[TrainGroup], max_tokens: int, shared_prefix: bool) -> list[list[int]]:
    """Consecutive groups packed into micro-batches of at most `max_tokens` (a larger group
    gets one of its own: groups are never cut)."""
    batches: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index, group in enumerate(groups):
        cost = group.cost(shared_prefix)
        if current and used + cost > max_tokens:
            batches.append(current)
            current, used = [], 0
        current.append(index)
        used += cost
    if current:
        batches.append(current)
    return batches
