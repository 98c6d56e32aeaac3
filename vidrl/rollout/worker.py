"""A rollout worker: the Ray actor that owns one vLLM engine.

`RolloutWorker` is a plain class; `RolloutPool` makes it an actor with `ray.remote` and the
options of vidrl.rollout.placement. It imports the engine (and so vLLM) only in its own
process, so the driver imports this module without vLLM. Its job around the engine: read the
prompts' clips and the weight buckets from the object store in its own process (zero-copy),
so that the engine, and with several tensor-parallel ranks each rank's process, gets values,
never references; and record the weights version it holds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import ray

from vidrl.rollout.config import RolloutConfig
from vidrl.rollout.types import Sampling, SeededPrompt, WorkerOutput
from vidrl.weights import WeightBucket

if TYPE_CHECKING:
    from vidrl.rollout.engine import RolloutEngine


class RolloutWorker:
    """One engine, its weights version, and the clips of the prompts it is given."""

    def __init__(self, cfg: RolloutConfig, model_path: str) -> None:
        from vidrl.rollout.engine import RolloutEngine  # vLLM is imported in this process only

        self.cfg = cfg
        self.engine: RolloutEngine = RolloutEngine(cfg, model_path)

    def weights_version(self) -> int:
        return self.engine.weights_version

    def sleep(self) -> None:
        """Free the engine's GPU memory until its next call (with cfg.sleep_mode)."""
        self.engine.sleep()

    def memory_events(self) -> tuple[str, ...]:
        """The engine's last sleep / wake / load / generate calls (see RolloutEngine)."""
        return tuple(self.engine.memory_events)

    def generate(self, prompts: Sequence[SeededPrompt], sampling: Sampling) -> WorkerOutput:
        """Groups for `prompts`, each sampled with its own seed."""
        from vidrl.rollout.engine import EnginePrompt

        clips = _resolved([p.prompt.clip for p in prompts])
        pairs = zip(prompts, clips, strict=True)
        items = [EnginePrompt(p.index, p.prompt, clip, p.seed) for p, clip in pairs]
        return self.engine.generate(items, sampling)

    def update_weights(self, version: int, bucket_refs: Sequence[Any]) -> float:
        """Load the buckets (references or values) in place as `version`; returns the seconds
        it took, the fetch from the object store included."""
        start = time.perf_counter()
        buckets: list[WeightBucket] = _resolved(bucket_refs)
        self.engine.load_weights(version, buckets)
        return time.perf_counter() - start


def _resolved(sources: Sequence[Any]) -> list[Any]:
    """Object-store references replaced by their values, fetched together in one round trip
    (numpy buffers come back as zero-copy views of the store's shared memory)."""
    positions = [i for i, source in enumerate(sources) if isinstance(source, ray.ObjectRef)]
    fetched = ray.get([sources[i] for i in positions]) if positions else []
    resolved = list(sources)
    for i, value in zip(positions, fetched, strict=True):
        resolved[i] = value
    return resolved
