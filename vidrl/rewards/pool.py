"""RewardPool: CPU Ray actors that score a step's responses while the next rollout runs.

Each actor builds the configured reward itself (`build_reward`), so a stateful user reward
(a class, say one holding a judge model) is constructed once per actor and keeps its state
between calls. `submit` returns at once; `collect` waits at most `timeout_seconds` per call.
A call that raises, dies or times out fails only its own samples: their scores are None
and each is logged with its sample id and counted; an actor that timed out is replaced,
since it may be stuck. A reward never hangs or crashes the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vidrl.rewards.config import RewardsConfig, build_reward
from vidrl.rewards.types import RewardInput, RewardScore

log = logging.getLogger(__name__)


class RewardActor:
    """One reward actor: the composed reward, built where it runs."""

    def __init__(self, cfg: RewardsConfig) -> None:
        self.reward = build_reward(cfg)

    def score(self, batch: list[RewardInput]) -> tuple[list[RewardScore | None], list[str]]:
        """Scores in batch order, and one line per sample a component failed on."""
        result = self.reward.score(batch)
        failures = [f"sample {f.sample_id}: component {f.component}: {f.error}" for f in result.failures]
        return result.scores, failures


@dataclass(frozen=True)
class PendingScores:
    """Calls in flight: (actor index, object ref, the slice of the batch it scores)."""

    calls: tuple[tuple[int, Any, slice], ...]
    inputs: tuple[RewardInput, ...]
    submitted: float


@dataclass(frozen=True)
class PoolScores:
    """Scores in input order (None: failed, timed out or not applicable) and what failed."""

    scores: list[RewardScore | None]
    failures: list[str]


class RewardPool:
    def __init__(
        self,
        cfg: RewardsConfig,
        num_actors: int,
        cpus_per_actor: float = 0.1,
        gpus_per_actor: float = 0.0,
        timeout_seconds: float = 60.0,
    ) -> None:
        import ray

        build_reward(cfg)  # fail here, naming the bad spec, rather than inside an actor
        self.cfg = cfg
        self.timeout_seconds = timeout_seconds
        self._actor = ray.remote(RewardActor).options(num_cpus=cpus_per_actor, num_gpus=gpus_per_actor)
        self.actors = [self._actor.remote(cfg) for _ in range(num_actors)]

    def submit(self, inputs: Sequence[RewardInput]) -> PendingScores:
        """Spread `inputs` over the actors in contiguous slices and start scoring."""
        count = len(self.actors)
        size = -(-len(inputs) // count) if inputs else 0
        calls = []
        for index in range(count):
            part = slice(index * size, min((index + 1) * size, len(inputs)))
            if part.start < part.stop:
                calls.append((index, self.actors[index].score.remote(list(inputs[part])), part))
        return PendingScores(tuple(calls), tuple(inputs), time.perf_counter())

    def collect(self, pending: PendingScores) -> PoolScores:
        import ray
        from ray.exceptions import GetTimeoutError, RayError

        scores: list[RewardScore | None] = [None] * len(pending.inputs)
        failures: list[str] = []
        for index, ref, part in pending.calls:
            left = max(self.timeout_seconds - (time.perf_counter() - pending.submitted), 0.0)
            try:
                part_scores, part_failures = ray.get(ref, timeout=left)
                scores[part] = part_scores
                failures += part_failures
            except (GetTimeoutError, RayError) as err:
                timed_out = isinstance(err, GetTimeoutError)
                why = f"timed out after {self.timeout_seconds:.0f} s" if timed_out else f"failed: {err}"
                for item in pending.inputs[part]:
                    failures.append(f"sample {item.sample.id}: reward actor {index} {why}"[:500])
                self._replace(index)
        for line in failures:
            log.warning("reward: %s", line)
        return PoolScores(scores, failures)

    def score(self, inputs: Sequence[RewardInput]) -> PoolScores:
        return self.collect(self.submit(inputs))

    def _replace(self, index: int) -> None:
        import ray

        ray.kill(self.actors[index], no_restart=True)
        self.actors[index] = self._actor.remote(self.cfg)

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
