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

from vidrl.actors import gather
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
        self.names = [f"learner rank {rank}" for rank in range(cfg.num_ranks)]
        actor = ray.remote(LearnerWorker)
        self.workers = [
            actor.options(
                num_cpus=cfg.cpus_per_rank,
                num_gpus=cfg.gpus_per_rank,
                scheduling_strategy=None if scheduling is None else scheduling[rank],
            ).remote(rank, cfg.num_ranks, model_path, cfg, seed, max(temperature, 1e-6), export_dtype)
            for rank in range(cfg.num_ranks)
        ]
        try:
            (rendezvous,) = self._all("rendezvous", "the rendezvous", ranks=1)
            self._all("init_process_group", "joining the process group", rendezvous)
            self.build_memory: list[dict[str, float]] = self._all("build", "building the model")
            """Each rank's host memory while building: at the start, after policy, reference, optimizer."""
        except BaseException:
            self.shutdown()
            raise
        log.info("learner group ready: %d ranks, rendezvous %s", cfg.num_ranks, rendezvous)

    def _all(
        self, method: str, phase: str, *args: Any, ranks: int | None = None, timeout: float | None = None
    ) -> list[Any]:
        """`method(*args)` on every rank (or the first `ranks`), their results in rank order; a
        rank that fails or outlives the timeout (learner.sync_timeout_seconds) is named
        (vidrl.actors)."""
        workers = self.workers[: ranks or len(self.workers)]
        refs = [getattr(w, method).remote(*args) for w in workers]
        return gather(refs, self.names[: len(refs)], phase, timeout or self.cfg.sync_timeout_seconds)

    def train_step(
        self, groups: Sequence[TrainGroup], mode: str = "grpo", max_tokens_per_microbatch: int | None = None
    ) -> LearnerStep:
        """One step over `groups`: `updates_per_step` optimizer updates on consecutive mini-batches
        of whole groups, `epochs` times (GRPO; SFT cross-entropy with mode="sft" makes one update).
        An update with a non-finite loss or gradient is skipped by every rank and named in the
        result's `skipped`.

        max_tokens_per_microbatch overrides the config's budget for this step only.
        """

        if not groups:
            raise ValueError("train_step needs at least one group")
        started = time.perf_counter()
        budget = max_tokens_per_microbatch or self.cfg.max_tokens_per_microbatch
        count, epochs = (1, 1) if mode == "sft" else (self.cfg.updates_per_step, self.cfg.epochs)
        per_rank: list[list[UpdatePlan]] = [[] for _ in self.workers]
        for indices in split_into_updates(groups, count):
            for rank, plan in enumerate(update_plans([groups[i] for i in indices], self.cfg, budget)):
                per_rank[rank].append(plan)
        refs = [
            w.train_step.remote(plans, epochs, mode) for w, plans in zip(self.workers, per_rank, strict=True)
        ]
        results = gather(refs, self.names, "the learner step", self.cfg.step_timeout_seconds)
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
        return self._all("export_weights", f"the export of weights version {version}", version)[0]

    def offload(self) -> float:
        """Every rank's training state to host memory (colocated GPUs); bytes moved per rank, summed."""
        return float(sum(self._all("offload", "the offload")))

    def onload(self) -> float:
        """Every rank's training state back on its device; bytes moved, summed."""
        return float(sum(self._all("onload", "the onload")))

    def peak_memory(self) -> list[dict[str, float]]:
        """Each rank's peak memory during the last step, build or weight export."""
        return self._all("peak_memory", "reading peak memory")

    def save(self, path: str, extra_state: dict[str, Any]) -> None:
        """Model (HF safetensors), optimizer, scheduler, RNG and `extra_state` (JSON-able)."""
        self._all("save", f"the save to {path}", path, extra_state)

    def load(self, path: str) -> dict[str, Any]:
        """Restore what `save` wrote; returns its extra_state."""
        return self._all("load", f"the load of {path}", path)[0]

    def shutdown(self) -> None:
        import ray

        for worker in self.workers:
            ray.kill(worker)
        self.workers = []
