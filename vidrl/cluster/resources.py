"""The run's placement group, sized from the config: one bundle per device slot.

A device slot is one tensor-parallel rank of a rollout worker (one slot per worker on CPU,
where its ranks are processes of the worker's own) or one learner rank.

separate:  the rollout slots, then the learner slots, each with its own CPUs/GPUs;
colocated: slot i of the rollout and learner rank i share bundle i. On GPUs that bundle is
           one whole GPU, which the two actors split by their fractional shares
           (rollout.gpus_per_worker / tensor_parallel_size + learner.gpus_per_rank <= 1) and
           use in turns: the engine sleeps while the learner trains (rollout.sleep_mode,
           turned on here).

A rollout worker's actor sits in the bundle of its rank 0, with its CPUs; with several ranks
on GPUs it holds no GPU itself, and vLLM starts one actor per rank in the worker's bundles
(vidrl.rollout.placement). Such a bundle is one whole GPU, so two ranks of one engine never
share a device. A node pin (cluster.rollout_node_resource / learner_node_resource) adds a
sliver of that custom resource to every bundle of its side, so Ray can only place it on
nodes that offer it: that is how the two-node test puts the rollout on one node and the
learner on the other. The group is reserved by vidrl.cluster.build (`reserve`), with PACK,
which keeps an engine's ranks together where it can (best effort).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vidrl.cluster.config import RunConfig
from vidrl.rollout.config import RolloutConfig
from vidrl.rollout.placement import WorkerPlacement, gpus_per_rank, uses_gpu_ranks

PIN = 0.001
"""How much of a node's custom pin resource one bundle takes (nodes offer 1 or more)."""
Bundle = dict[str, float]


@dataclass(frozen=True)
class Layout:
    """The placement group's bundles and who uses which.

    rollout: for each rollout worker, the bundle of each of its device slots (its actor sits
             in the first); learner: the bundle of each learner rank.
    """

    bundles: list[Bundle]
    rollout: list[tuple[int, ...]]
    learner: list[int]


def _bundle(cpus: float, gpus: float, pin: str | None) -> Bundle:
    out = {"CPU": cpus} if cpus else {}
    if gpus:
        out["GPU"] = gpus
    if pin:
        out[pin] = PIN
    return out


def rollout_slots(cfg: RunConfig) -> list[list[Bundle]]:
    """The bundles of each rollout worker's device slots, rank 0's (with the CPUs) first."""
    r, pin = cfg.rollout, cfg.cluster.rollout_node_resource
    if not uses_gpu_ranks(r):
        return [[_bundle(r.cpus_per_worker, r.gpus_per_worker, pin)] for _ in range(r.num_workers)]
    # One whole GPU per rank: VLLM_RAY_PER_WORKER_GPUS says how much of it the rank takes.
    ranks = [_bundle(r.cpus_per_worker, 1.0, pin)]
    ranks += [_bundle(0.0, 1.0, pin) for _ in range(r.tensor_parallel_size - 1)]
    return [list(ranks) for _ in range(r.num_workers)]


def _merged(rollout: Bundle, learner: Bundle) -> Bundle:
    merged = {k: rollout.get(k, 0.0) + learner.get(k, 0.0) for k in rollout.keys() | learner.keys()}
    if "GPU" in merged:
        merged["GPU"] = 1.0  # one device, split by the two actors' own shares
    return merged


def _check_colocated(cfg: RunConfig) -> None:
    r, lr = cfg.rollout, cfg.learner
    if not (r.gpus_per_worker and lr.gpus_per_rank):
        return
    rank_share = gpus_per_rank(r)
    if rank_share + lr.gpus_per_rank > 1.0 + 1e-9:
        raise ValueError(
            f"cluster.placement colocated: a rollout rank ({rank_share:g} GPU = "
            f"rollout.gpus_per_worker / tensor_parallel_size) and a learner rank "
            f"({lr.gpus_per_rank:g} GPU) share one GPU, so their shares must add up to at most 1 "
            "(e.g. 0.5 and 0.5)"
        )
    if cfg.trainer.max_staleness:
        raise ValueError(
            "cluster.placement colocated takes turns on the GPUs (the engine sleeps while the "
            "learner trains): trainer.max_staleness must be 0"
        )


def layout(cfg: RunConfig, rollout: bool = True, learner: bool = True) -> Layout:
    """The bundles of the run and the bundles of each rollout worker and learner rank; a side
    left out (eval and select need no learner, SFT alone no rollout) gets none."""
    lr = cfg.learner
    workers = rollout_slots(cfg) if rollout else []
    ranks = [
        _bundle(lr.cpus_per_rank, lr.gpus_per_rank, cfg.cluster.learner_node_resource)
        for _ in range(lr.num_ranks if learner else 0)
    ]
    flat = [slot for slots in workers for slot in slots]
    spans, start = [], 0
    for slots in workers:
        spans.append(tuple(range(start, start + len(slots))))
        start += len(slots)
    if cfg.cluster.placement == "separate":
        learner_index = list(range(len(flat), len(flat) + len(ranks)))
        return Layout(flat + ranks, spans, learner_index)
    _check_colocated(cfg)
    size = max(len(flat), len(ranks))
    merged = [
        _merged(flat[i] if i < len(flat) else {}, ranks[i] if i < len(ranks) else {}) for i in range(size)
    ]
    return Layout(merged, spans, list(range(len(ranks))))


def bundles(cfg: RunConfig) -> tuple[list[Bundle], list[int], list[int]]:
    """(bundles, bundle of each rollout worker's actor, bundle of each learner rank)."""
    plan = layout(cfg)
    return plan.bundles, [span[0] for span in plan.rollout], plan.learner


def placed_rollout_config(cfg: RunConfig) -> RolloutConfig:
    """The rollout config as placed: sleep mode on when the engines share GPUs with the learner."""
    if cfg.cluster.placement == "colocated" and cfg.rollout.gpus_per_worker and not cfg.rollout.sleep_mode:
        return cfg.rollout.model_copy(update={"sleep_mode": True})
    return cfg.rollout


@dataclass(frozen=True)
class Placement:
    """The run's placement group, where each rollout worker runs and one scheduling strategy per
    learner rank. `remove` gives the reserved resources back to a cluster that outlives the run."""

    group: Any
    rollout: list[WorkerPlacement]
    learner: list[Any]

    def remove(self) -> None:
        import ray

        ray.util.remove_placement_group(self.group)
