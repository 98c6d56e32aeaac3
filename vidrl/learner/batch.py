"""How a step's groups are split into updates, across ranks and into micro-batches.

A `TrainGroup` (vidrl.learner.types) is one prompt with its G responses: the unit of GRPO (advantages are
relative within it) and of the shared-prefix layout (the prompt is computed once for the
G responses). Splitting never cuts a group. The loss is normalised by counts taken over
the WHOLE step (`StepTotals`), so that the update does not depend on how the step was split
into ranks and micro-batches (see vidrl.learner.grpo for how each aggregation uses them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vidrl.learner.config import LearnerConfig
from vidrl.learner.types import StepTotals, TrainGroup, UpdatePlan


def step_totals(groups: Sequence[TrainGroup]) -> StepTotals:
    return StepTotals(
        response_tokens=sum(g.num_response_tokens for g in groups),
        sequences=sum(sum(1 for r in g.responses if len(r)) for g in groups),
    )


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


def update_plans(groups: Sequence[TrainGroup], cfg: LearnerConfig, budget: int) -> list[UpdatePlan]:
    """One update's plan for every rank: its groups balanced over the data-parallel groups by
    cost, each share in micro-batches under the token budget, the totals over all of them. The
    ranks of one sequence-parallel group (consecutive ranks) get the same plan."""
    totals = step_totals(groups)
    shares = split_across_ranks(groups, cfg.data_parallel_size, cfg.shared_prefix)
    batches = []
    for share in shares:
        mine = [groups[i] for i in share]
        plan = micro_batches(mine, budget, cfg.shared_prefix)
        batches.append(tuple(tuple(mine[i] for i in batch) for batch in plan))
    most = max(len(b) for b in batches)
    return [UpdatePlan(b, most, totals) for b in batches for _ in range(cfg.sequence_parallel_size)]


def idle_group(banned_ids: Sequence[int]) -> TrainGroup:
    """The smallest group a rank with no work left runs (at weight 0) so that every FSDP2 unit
    still gathers and reduces with the other ranks: one text token of prompt, one of response,
    no video (the vision tower then runs its dummy pass). The token is the lowest id the engine
    can sample (a vision placeholder would ask for a video)."""
    banned = set(banned_ids)
    token = next(i for i in range(len(banned) + 1) if i not in banned)
    ids = np.array([token], dtype=np.int64)
    zero = np.zeros(1, dtype=np.float32)
    return TrainGroup(prompt_ids=ids, responses=(ids,), advantages=zero, old_logprobs=(zero,))
