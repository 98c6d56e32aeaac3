"""The rollout pool: several workers behind one `generate` and one `update_weights`.

`generate(prompts, step, refill_round=r)` spreads the prompts over the workers by estimated
cost (longest first onto the least loaded worker), runs every share at once, and returns the
groups in prompt order with the step's metrics. Each prompt's group is sampled with a seed of
its own, from (run seed, sample id, step, refill round) (vidrl.rollout.seeds): the samples do
not depend on the worker a prompt lands on, and a restarted worker or a resumed run
reproduces them. Before it runs, the workers' weight versions are compared with each other
and with the last published one: a disagreement raises `WeightsVersionMismatch` instead of
mixing policies.

`update_weights(version, bucket_refs)` has every worker load the buckets in place. The pool
keeps the last published references (which keeps those buckets in the object store) so that
a worker restarted after a crash comes back with the current weights.

Faults: a worker whose call fails (the actor died, or its engine raised) or does not answer
within its deadline (`rollout.generate_timeout_seconds`, `update_timeout_seconds`: a hung or
stopped engine) is reported with its index and the cause, killed, started afresh, given the last
published weights, and its share of the call is retried once; a second failure raises
`RolloutWorkerError`, as does a worker lost while the pool starts. A worker whose engine cannot
start (its constructor raised: a model or setting it cannot load) is a RuntimeError, which the
job does not retry: a fresh worker would meet it again.

Threads: one `generate` and one `update_weights` may run at once (the driver overlaps the
rollout of step t+1 with the update of step t). Calls are submitted under a lock and Ray
runs each worker's calls in the order they were submitted, so an update lands either
before a whole generate call (on every worker) or after it, never between its workers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError

from vidrl.models import family_at
from vidrl.rollout.config import RolloutConfig
from vidrl.rollout.placement import WorkerPlacement, worker_options
from vidrl.rollout.prompts import estimate_prompt_tokens
from vidrl.rollout.seeds import call_seeds
from vidrl.rollout.types import (
    RolloutBatch,
    RolloutGroup,
    RolloutMetrics,
    RolloutPrompt,
    RolloutWorkerError,
    Sampling,
    SeededPrompt,
    UpdateMetrics,
    WeightsVersionMismatch,
    WorkerFailure,
    WorkerOutput,
)
from vidrl.rollout.worker import RolloutWorker

log = logging.getLogger(__name__)


def spread_prompts(costs: Sequence[int], num_workers: int) -> list[list[int]]:
    """Prompt indices per worker: costliest first, each to the least loaded worker (the
    lowest index on ties); each share in prompt order."""
    loads = [0] * num_workers
    shares: list[list[int]] = [[] for _ in range(num_workers)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        worker = min(range(num_workers), key=lambda w: (loads[w], w))
        loads[worker] += costs[index]
        shares[worker].append(index)
    return [sorted(share) for share in shares]


class RolloutPool:
    """`cfg.num_workers` rollout workers, started from the checkpoint at `model_path`."""

    def __init__(
        self,
        cfg: RolloutConfig,
        model_path: str,
        scheduling: Sequence[WorkerPlacement] | None = None,
    ) -> None:
        """scheduling: where each worker runs (placement-group bundles or node pins, from
        vidrl.cluster); None lets Ray place the workers."""
        self.cfg = cfg
        self.model_path = model_path
        # Visual tokens per frame pair and this many pixels square: for balancing the workers.
        self._merged_patch_pixels = family_at(model_path).resize_factor
        self._scheduling = list(scheduling) if scheduling is not None else None
        self._actor = ray.remote(RolloutWorker)
        # Held while calls are submitted (never while engines run): see "Threads" above.
        self._lock = threading.RLock()
        self._timeouts = {
            "generate": cfg.generate_timeout_seconds,
            "weights_version": cfg.start_timeout_seconds,
        }
        self._start_and_load = cfg.start_timeout_seconds + cfg.update_timeout_seconds
        self._workers: list[Any] = [self._start(i) for i in range(cfg.num_workers)]
        self._published: tuple[int, list[Any]] | None = None
        for index, worker in enumerate(self._workers):  # they start in parallel; wait for all
            try:
                ray.get(worker.weights_version.remote(), timeout=cfg.start_timeout_seconds)
            except (RayError, GetTimeoutError) as err:
                self.shutdown()
                if getattr(err, "actor_init_failed", False):  # the engine's constructor raised
                    cause = _cause(err)
                    raise RuntimeError(f"rollout worker {index} could not start its engine: {cause}") from err
                raise RolloutWorkerError(index, _cause(err)) from err

    @property
    def workers(self) -> tuple[Any, ...]:
        """The worker actors' handles, by worker index."""
        return tuple(self._workers)

    @property
    def weights_version(self) -> int:
        """The last published weights version (0: the checkpoint's weights)."""
        return 0 if self._published is None else self._published[0]

    def _start(self, index: int) -> Any:
        placement = None if self._scheduling is None else self._scheduling[index]
        options = worker_options(self.cfg, placement)
        return self._actor.options(**options).remote(self.cfg, self.model_path)

    def generate(
        self,
        prompts: Sequence[RolloutPrompt],
        step: int,
        sampling: Sampling | None = None,
        refill_round: int = 0,
    ) -> RolloutBatch:
        """A group of responses for each prompt, as `sampling` says (default: the config's),
        with the seeds of (`step`, `refill_round`): refill rounds of one step get other
        streams than its first draw."""
        start = time.perf_counter()
        sampling = sampling or self.cfg.sampling
        budget = sampling.samples_per_prompt * sampling.max_response_tokens
        # Every prompt may cost a full response budget on top of its own tokens.
        costs = [estimate_prompt_tokens(p, self._merged_patch_pixels) + budget for p in prompts]
        shares = spread_prompts(costs, len(self._workers))
        seeds = call_seeds(self.cfg.seed, [p.sample_id for p in prompts], step, refill_round)
        busy = [w for w, share in enumerate(shares) if share]
        failures: list[WorkerFailure] = []

        def share_of(w: int) -> tuple[Any, ...]:
            return [SeededPrompt(i, prompts[i], seeds[i]) for i in shares[w]], sampling

        with self._lock:  # no update may slip between the check and the calls
            version = self._checked_version(failures)
            calls = self._submit(busy, "generate", share_of)
        outputs: list[WorkerOutput] = self._gather(calls, "generate", share_of, failures)
        used = {w: out.weights_version for w, out in zip(busy, outputs, strict=True)}
        if any(v != version for v in used.values()):  # a worker restarted on newer weights
            raise WeightsVersionMismatch(used, version)
        groups = sorted((g for out in outputs for g in out.groups), key=lambda g: g.prompt_index)
        skipped = sorted((s for out in outputs for s in out.skipped), key=lambda s: s.prompt_index)
        seconds = time.perf_counter() - start
        metrics = rollout_metrics(groups, len(skipped), outputs, len(failures), seconds)
        return RolloutBatch(tuple(groups), tuple(skipped), tuple(failures), metrics, version)

    def _checked_version(self, failures: list[WorkerFailure]) -> int:
        everyone = list(range(len(self._workers)))
        calls = self._submit(everyone, "weights_version", lambda w: ())
        versions = self._gather(calls, "weights_version", lambda w: (), failures)
        expected = self.weights_version
        if any(v != expected for v in versions):
            raise WeightsVersionMismatch(dict(enumerate(versions)), expected)
        return expected

    def update_weights(self, version: int, bucket_refs: Sequence[Any]) -> UpdateMetrics:
        """Every worker loads the buckets (object-store references to WeightBuckets) in
        place as `version`."""
        start = time.perf_counter()
        published = (version, list(bucket_refs))
        everyone = list(range(len(self._workers)))
        with self._lock:
            self._published = published
            calls = self._submit(everyone, "update_weights", lambda w: published)
        # A worker restarted meanwhile has loaded these weights already; loading them again
        # on retry is harmless.
        failures: list[WorkerFailure] = []
        worker_seconds = self._gather(calls, "update_weights", lambda w: published, failures)
        seconds = time.perf_counter() - start
        return UpdateMetrics(version, seconds, max(worker_seconds, default=0.0), len(failures))

    def sleep(self) -> None:
        """Free the engines' GPU memory now (with `cfg.sleep_mode`; otherwise nothing): the
        learner is about to load next to them. The next call wakes them itself."""
        everyone = list(range(len(self._workers)))
        self._gather(self._submit(everyone, "sleep", lambda w: ()), "sleep", lambda w: (), [])

    def _submit(
        self, indices: Sequence[int], method: str, args: Callable[[int], tuple[Any, ...]]
    ) -> dict[int, tuple[Any, Any]]:
        """Worker index -> (handle, reference to the result) of `method(*args(w))` on each."""
        with self._lock:
            handles = {w: self._workers[w] for w in indices}
            return {w: (h, getattr(h, method).remote(*args(w))) for w, h in handles.items()}

    def _gather(
        self,
        calls: dict[int, tuple[Any, Any]],
        method: str,
        args: Callable[[int], tuple[Any, ...]],
        failures: list[WorkerFailure],
    ) -> list[Any]:
        """The results in worker order; a failed worker is restarted and retried once."""
        results: dict[int, Any] = {}
        timeout = self._timeouts.get(method, self.cfg.update_timeout_seconds)
        deadline = time.monotonic() + timeout
        for w, (handle, ref) in calls.items():
            try:
                results[w] = ray.get(ref, timeout=max(deadline - time.monotonic(), 0.0))
            except (RayError, GetTimeoutError) as err:
                cause = (
                    f"no answer to {method} within {timeout:g} s"
                    if isinstance(err, GetTimeoutError)
                    else _cause(err)
                )
                failures.append(WorkerFailure(w, cause))
                log.error("rollout worker %d failed: %s; restarting it", w, cause)
                try:
                    worker = self._replace(w, handle)
                    results[w] = ray.get(getattr(worker, method).remote(*args(w)), timeout=timeout)
                except (RayError, GetTimeoutError) as again:
                    raise RolloutWorkerError(w, _cause(again)) from again
        return [results[w] for w in calls]

    def _replace(self, index: int, failed: Any) -> Any:
        """A fresh worker `index` holding the last published weights, unless another thread
        has already replaced `failed`. Returns the current worker."""
        with self._lock:
            if self._workers[index] is failed:
                ray.kill(failed, no_restart=True)
                worker = self._start(index)
                try:
                    if self._published is not None:
                        ray.get(worker.update_weights.remote(*self._published), timeout=self._start_and_load)
                    else:
                        ray.get(worker.weights_version.remote(), timeout=self.cfg.start_timeout_seconds)
                except (RayError, GetTimeoutError):
                    ray.kill(worker, no_restart=True)
                    raise
                self._workers[index] = worker
            return self._workers[index]

    def shutdown(self) -> None:
        """Stop the workers (the pool's own actors only)."""
        with self._lock:
            for worker in self._workers:
                ray.kill(worker, no_restart=True)
            self._workers = []


def _cause(err: BaseException) -> str:
    """The error's type and its message's last line (a task error ends with the cause)."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"[:500]


def rollout_metrics(
    groups: Sequence[RolloutGroup],
    skipped: int,
    outputs: Sequence[WorkerOutput],
    restarts: int,
    seconds: float,
) -> RolloutMetrics:
    """The metrics of one call from its groups, the workers' outputs and its wall time."""
    responses = [r for g in groups for r in g.responses]
    tokens = sum(r.token_ids.size for r in responses)
    truncated = sum(r.truncated for r in responses)
    return RolloutMetrics(
        prompts=len(groups),
        skipped_prompts=skipped,
        reduced_prompts=sum(out.reduced_prompts for out in outputs),
        responses=len(responses),
        tokens_generated=tokens,
        prompt_tokens=sum(g.prompt_token_ids.size for g in groups),
        seconds=seconds,
        slowest_worker_seconds=max((out.seconds for out in outputs), default=0.0),
        tokens_per_second=tokens / seconds if seconds > 0 else 0.0,
        truncated_fraction=truncated / len(responses) if responses else 0.0,
        worker_restarts=restarts,
    )
