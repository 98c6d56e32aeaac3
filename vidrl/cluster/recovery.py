"""Runs that survive their faults: a dead, hung or unresponsive actor costs the steps since the last
checkpoint, not the run.

The job (vidrl.cluster.job) asks `fault_of` about any error that ends a run's start or its
steps. A fault is something a fresh set of actors would not meet again: an actor that died (a
learner rank killed by the OOM killer, or a worker process lost while the actors start), calls
that outlived their deadline (vidrl.actors), a rollout pool that could not restart a worker.
Then the job shuts every actor down, builds them again through vidrl.cluster.build, resumes from
the last complete checkpoint and goes on, up to `trainer.max_restarts` times. Any other error (a
bug, a config, bad data, an actor whose constructor raised, updates that keep going non-finite)
would only happen again, and stops the run at once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from vidrl.actors import ActorFailed, ActorTimeout

log = logging.getLogger(__name__)

PING_SECONDS = 30.0
"""How long a learner rank may take to answer a ping after a failed call before it counts as
unresponsive (it is then stuck, e.g. in a collective with a dead rank)."""


class RunFailed(RuntimeError):
    """More faults than `trainer.max_restarts`: the causes, in order."""

    def __init__(self, causes: Sequence[str]) -> None:
        self.causes = tuple(causes)
        listed = "\n  ".join(f"{i + 1}. {cause}" for i, cause in enumerate(self.causes))
        super().__init__(
            f"the run met {len(self.causes)} faults, more than trainer.max_restarts allows:\n  {listed}"
        )


def fault_of(error: BaseException, learner: Any) -> str | None:
    """The fault to restart for, in one line, or None when `error` is not one. `learner`: the
    run's LearnerGroup, whose ranks are pinged when one of its calls failed (a surviving rank
    reports the broken collective before Ray reports its dead peer)."""
    from vidrl.rollout.types import RolloutWorkerError

    if isinstance(error, ActorTimeout | RolloutWorkerError):
        return f"{type(error).__name__}: {error}"
    if not isinstance(error, ActorFailed):
        return None
    if _actor_died(error.cause):
        return f"{error.name} died during {error.phase}"
    silent = unresponsive(learner.workers, learner.names) if learner is not None else []
    if silent:
        return f"{', '.join(silent)} died or stopped answering during {error.phase} ({error})"
    return None  # every rank answers: the error is the method's own, and would come back


def unresponsive(actors: Sequence[Any], names: Sequence[str], timeout: float = PING_SECONDS) -> list[str]:
    """The names of the actors that do not answer a ping within `timeout` seconds, or died."""
    import ray

    pings = {actor.__ray_ready__.remote(): name for actor, name in zip(actors, names, strict=True)}
    ready, pending = ray.wait(list(pings), num_returns=len(pings), timeout=timeout)
    silent = [pings[ref] for ref in pending]
    for ref in ready:
        try:
            ray.get(ref)
        except Exception:
            silent.append(pings[ref])
    return sorted(silent)


def _actor_died(cause: BaseException) -> bool:
    """The actor's process was lost; not an actor whose constructor raised (that would raise again)."""
    from ray.exceptions import RayActorError

    return isinstance(cause, RayActorError) and not cause.actor_init_failed
