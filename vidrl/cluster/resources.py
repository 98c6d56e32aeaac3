"""Placement groups sized from the config: one bundle per rollout worker and per learner rank.

separate:  rollout bundles then learner bundles, each with its own CPUs/GPUs;
colocated: bundle i holds rollout worker i and learner rank i together (their resources
           added), so on GPUs the two share devices and take turns.
A node pin (cluster.rollout_node_resource / learner_node_resource) adds a sliver of that
custom resource to the bundle, so Ray can only place it on nodes that offer it: that is how
the two-node test puts the rollout on one node and the learner on the other. A cluster that
cannot hold the group fails fast with what was asked and what the cluster has.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from vidrl.config import RunConfig

log = logging.getLogger(__name__)

PIN = 0.001
"""How much of a node's custom pin resource one bundle takes (nodes offer 1 or more)."""
READY_TIMEOUT_SECONDS = 120.0


def bundles(cfg: RunConfig) -> tuple[list[dict[str, float]], list[int], list[int]]:
    """(bundles, bundle index of each rollout worker, bundle index of each learner rank)."""

    def bundle(cpus: float, gpus: float, pin: str | None) -> dict[str, float]:
        out = {"CPU": cpus}
        if gpus:
            out["GPU"] = gpus
        if pin:
            out[pin] = PIN
        return out

    r, lr = cfg.rollout, cfg.learner
    rollout = [
        bundle(r.cpus_per_worker, r.gpus_per_worker, cfg.cluster.rollout_node_resource)
        for _ in range(r.num_workers)
    ]
    learner = [
        bundle(lr.cpus_per_rank, lr.gpus_per_rank, cfg.cluster.learner_node_resource)
        for _ in range(lr.num_ranks)
    ]
    if cfg.cluster.placement == "separate":
        return (
            rollout + learner,
            list(range(len(rollout))),
            list(range(len(rollout), len(rollout) + len(learner))),
        )
    size = max(len(rollout), len(learner))
    merged = []
    for i in range(size):
        a = rollout[i] if i < len(rollout) else {}
        b = learner[i] if i < len(learner) else {}
        merged.append({k: a.get(k, 0.0) + b.get(k, 0.0) for k in a.keys() | b.keys()})
    return merged, list(range(len(rollout))), list(range(len(learner)))


@dataclass(frozen=True)
class Placement:
    """The run's placement group and one scheduling strategy per rollout worker and learner rank.
    `remove` gives the reserved resources back to a cluster that outlives the run."""

    group: Any
    rollout: list[Any]
    learner: list[Any]

    def remove(self) -> None:
        import ray

        ray.util.remove_placement_group(self.group)


def scheduling_strategies(cfg: RunConfig) -> Placement:
    """Reserve the run's bundles; one Ray scheduling strategy per rollout worker and learner rank."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    specs, rollout_index, learner_index = bundles(cfg)
    group = placement_group(specs, strategy="PACK")
    try:
        ray.get(group.ready(), timeout=READY_TIMEOUT_SECONDS)
    except ray.exceptions.GetTimeoutError:
        ray.util.remove_placement_group(group)
        raise RuntimeError(
            f"the cluster cannot hold the run's actors: asked for bundles {specs}, "
            f"the cluster has {ray.cluster_resources()} (lower cpus/gpus per worker or rank)"
        ) from None
    log.info("placement group ready: %d bundles %s", len(specs), specs)

    def strategy(index: int) -> Any:
        return PlacementGroupSchedulingStrategy(placement_group=group, placement_group_bundle_index=index)

    return Placement(group, [strategy(i) for i in rollout_index], [strategy(i) for i in learner_index])
