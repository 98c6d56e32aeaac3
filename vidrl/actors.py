"""Waiting on Ray actors without waiting forever: every wait has a deadline and names what it
waited on, and a failed actor is reported at once rather than after its healthy peers.

    gather(refs, names, phase, timeout)   the results in order; raises ActorFailed as soon as
                                          one call fails (an actor died, or raised), and
                                          ActorTimeout naming the calls still running at the
                                          deadline (a hung engine, a rank stuck in a collective)

Why not `ray.get(refs, timeout=...)`: it waits for the refs in order, so a learner rank killed by
the OOM killer is noticed only once the rank before it returns, and that rank is stuck in a
collective with the dead one until the process group's own timeout.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any


class ActorFailed(RuntimeError):
    """A call on an actor failed: the actor died, or its method raised."""

    def __init__(self, name: str, phase: str, cause: BaseException) -> None:
        self.name, self.phase, self.cause = name, phase, cause
        lines = str(cause).strip().splitlines()
        last = lines[-1] if lines else ""
        super().__init__(f"{name} failed during {phase}: {type(cause).__name__}: {last}"[:800])


class ActorTimeout(TimeoutError):
    """Calls on actors still running at their deadline."""

    def __init__(self, names: Sequence[str], phase: str, seconds: float) -> None:
        self.names, self.phase, self.seconds = tuple(names), phase, seconds
        super().__init__(f"{', '.join(names)} did not finish {phase} within {seconds:g} s")


def gather(refs: Sequence[Any], names: Sequence[str], phase: str, timeout: float) -> list[Any]:
    """The results of `refs` (calls on the actors `names`, e.g. "learner rank 1") in order."""
    import ray

    by_ref = dict(zip(refs, names, strict=True))
    results: dict[Any, Any] = {}
    pending, deadline = list(refs), time.monotonic() + timeout
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(deadline - time.monotonic(), 0.0))
        if not ready:
            raise ActorTimeout([by_ref[r] for r in pending], phase, timeout)
        try:
            results[ready[0]] = ray.get(ready[0])
        except Exception as err:  # a dead actor or the method's own error: name the actor
            raise ActorFailed(by_ref[ready[0]], phase, err) from err
    return [results[ref] for ref in refs]
