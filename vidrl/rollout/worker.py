"""A rollout worker: the Ray actor that owns one vLLM engine.

`RolloutWorker` is a plain class; `RolloutPool` makes it an actor with `ray.remote` and the
resources from the config. It imports the engine (and so vLLM) only in its own process, so
the driver imports this module without vLLM. Its job around the engine: read the prompts'
clips from the object store (zero-copy), derive the step's seed, and record the weights
version it holds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import ray

from vidrl.rollout.config import RolloutConfig
from vidrl.rollout.types import RolloutPrompt, Sampling, WorkerOutput

if TYPE_CHECKING:
    from vidrl.rollout.engine import RolloutEngine


def step_seed(run_seed: int, worker_index: int, step: int) -> int:
    """The engine seed for one worker's share of one step: independent streams per
    (run, worker, step), the same on every rerun and after a worker restart."""
    return int(np.random.SeedSequence([run_seed, worker_index, step]).generate_state(1)[0])


class RolloutWorker:
    """One engine, its weights version, and the clips of the prompts it is given."""

    def __init__(self, cfg: RolloutConfig, model_path: str, worker_index: int) -> None:
        from vidrl.rollout.engine import RolloutEngine  # vLLM is imported in this process only

        self.cfg = cfg
        self.worker_index = worker_index
        self.engine: RolloutEngine = RolloutEngine(cfg, model_path)

    def weights_version(self) -> int:
        return self.engine.weights_version

    def generate(
        self, prompts: Sequence[tuple[int, RolloutPrompt]], sampling: Sampling, step: int
    ) -> WorkerOutput:
        """Groups for `prompts`, given as (position in the caller's list, prompt)."""
        from vidrl.rollout.engine import EnginePrompt

        clips = _resolve_clips([prompt.clip for _, prompt in prompts])
        pairs = zip(prompts, clips, strict=True)
        items = [EnginePrompt(index, prompt, clip) for (index, prompt), clip in pairs]
        seed = step_seed(self.cfg.seed, self.worker_index, step)
        return self.engine.generate(items, sampling, seed)

    def update_weights(self, version: int, bucket_refs: Sequence[Any]) -> float:
        """Load the buckets in place as `version`; returns the seconds it took."""
        start = time.perf_counter()
        self.engine.load_weights(version, bucket_refs)
        return time.perf_counter() - start


def _resolve_clips(sources: Sequence[Any]) -> list[Any]:
    """Clips as values: references are fetched together, in one round trip."""
    positions = [i for i, source in enumerate(sources) if isinstance(source, ray.ObjectRef)]
    fetched = ray.get([sources[i] for i in positions]) if positions else []
    resolved = list(sources)
    for i, clip in zip(positions, fetched, strict=True):
        resolved[i] = clip
    return resolved
