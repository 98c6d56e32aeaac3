"""LearnerGroup: N Ray actors, one torch.distributed rank each, driven as one learner.

The group plans each step on the driver side (which groups go to which rank, in how many
micro-batches), so every rank runs the same number of forward/backward passes and the
FSDP2 collectives line up; the loss denominators are counted over the whole step, so the
update does not depend on that plan (tests: 1 vs 4 micro-batches, 1 vs 2 ranks).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from vidrl.learner.batch import split_into_updates, update_plans
from vidrl.learner.config import LearnerConfig
from vidrl.learner.types import LearnerStep, TrainGroup, UpdatePlan, describe_skips, merge_rank_metrics

log = logging.getLogger(__name__)


class LearnerGroup:
    """Creates the rank actors, wires their process group, and drives them in lockstep."""

    def __init__(
        self,
        model_path: str,
        cfg: LearnerConfig,
        seed: int = 0,
        scheduling: Sequence[Any] | None = None,
        temperature: float = 1.0,
        export_dtype: str | None = None,
    ) -> None:
        """scheduling: one Ray scheduling strategy per rank (placement-group bundles or
        node pins from vidrl.cluster); None lets Ray place the actors. temperature: the
        rollout's sampling temperature (log-probs are of logits / temperature, as sampled).
        export_dtype: the rollout engine's dtype, which exported weights are cast to."""
        import ray

        from vidrl.learner.worker import LearnerWorker

        self.cfg = cfg
        actor = ray.remote(LearnerWorker)
        self.workers = [
            actor.options(
                num_cpus=cfg.cpus_per_rank,
                num_gpus=cfg.gpus_per_rank,
                scheduling_strategy=None if scheduling is None else scheduling[rank],
            ).remote(rank, cfg.num_ranks, model_path, cfg, seed, max(temperature, 1e-6), export_dtype)
            for rank in range(cfg.num_ranks)
        ]
        address, port = ray.get(self.workers[0].rendezvous_address.remote())
        ray.get([w.init_process_group.remote(address, port) for w in self.workers])
        self.build_memory: list[dict[str, float]] = ray.get([w.build.remote() for w in self.workers])
        """Each rank's host memory while building: at the start, after policy, reference, optimizer."""
        log.info("learner group ready: %d ranks, rendezvous %s:%d", cfg.num_ranks, address, port)

    def train_step(
        self, groups: Sequence[TrainGroup], mode: str = "grpo", max_tokens_per_microbatch: int | None = None
    ) -> LearnerStep:
        """One step over `groups`: `updates_per_step` optimizer updates on consecutive mini-batches
        of whole groups, `epochs` times (GRPO; SFT cross-entropy with mode="sft" makes one update).
        An update with a non-finite loss or gradient is skipped by every rank and named in the
        result's `skipped`.

        max_tokens_per_microbatch overrides the config's budget for this step only.
        """
        import ray

        if not groups:
            raise ValueError("train_step needs at least one group")
        started = time.perf_counter()
        budget = max_tokens_per_microbatch or self.cfg.max_tokens_per_microbatch
        count, epochs = (1, 1) if mode == "sft" else (self.cfg.updates_per_step, self.cfg.epochs)
        per_rank: list[list[UpdatePlan]] = [[] for _ in self.workers]
        for indices in split_into_updates(groups, count):
            for rank, plan in enumerate(update_plans([groups[i] for i in indices], self.cfg, budget)):
                per_rank[rank].append(plan)
        results = ray.get(
            [
                worker.train_step.remote(plans, epochs, mode)
                for worker, plans in zip(self.workers, per_rank, strict=True)
            ]
        )
        metrics = merge_rank_metrics(results)
        # The driver's clock adds Ray's dispatch and the transfer of the groups to the ranks'
        # compute (step_seconds): the throughput a training loop actually gets.
        metrics["wall_seconds"] = time.perf_counter() - started
        metrics["tokens_per_second"] = metrics["tokens"] / metrics["wall_seconds"]
        skipped = describe_skips([rank.skipped for rank in results])
        for line in skipped:
            log.warning("learner: skipped %s", line)
        return LearnerStep(metrics, skipped)

    def export_weights(self, version: int) -> list[Any]:
        """Publish the full weights as buckets in the object store; ObjectRefs in order."""
        import ray

        refs = ray.get([w.export_weights.remote(version) for w in self.workers])
        return refs[0]

    def offload(self) -> float:
        """Every rank's training state to host memory (colocated GPUs); bytes moved per rank, summed."""
        import ray

        return float(sum(ray.get([w.offload.remote() for w in self.workers])))

    def onload(self) -> float:
        """Every rank's training state back on its device; bytes moved, summed."""
        import ray

        return float(sum(ray.get([w.onload.remote() for w in self.workers])))

    def peak_memory(self) -> list[dict[str, float]]:
        """Each rank's peak memory during the last step, build or weight export."""
        import ray

        return ray.get([w.peak_memory.remote() for w in self.workers])

    def save(self, path: str, extra_state: dict[str, Any]) -> None:
        """Model (HF safetensors), optimizer, scheduler, RNG and `extra_state` (JSON-able)."""
        import ray

        ray.get([w.save.remote(path, extra_state) for w in self.workers])

    def load(self, path: str) -> dict[str, Any]:
        """Restore what `save` wrote; returns its extra_state."""
        import ray

        return ray.get([w.load.remote(path) for w in self.workers])[0]

    def shutdown(self) -> None:
        import ray

        for worker in self.workers:
            ray.kill(worker)
        self.workers = []
