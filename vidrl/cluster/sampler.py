"""PromptSampler: the order in which training samples are drawn, resumable to the sample.

Each epoch is a permutation of the dataset drawn from (seed, epoch); the state is just
(epoch, position), so a resumed run continues with the next unseen sample: no replay,
no skip (test: a sampler restored from state_dict() yields what the original would have).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from vidrl.data.sample import Sample
from vidrl.data.skips import DataError


class PromptSampler:
    def __init__(self, samples: Sequence[Sample], seed: int) -> None:
        if not samples:
            raise ValueError("the sampler needs at least one sample")
        self.samples = tuple(samples)
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.samples))

    def next(self, count: int, excluded: Collection[str] = ()) -> list[Sample]:
        """The next `count` samples, crossing into the next epoch when this one runs out; those
        whose id is in `excluded` (quarantined) are passed over."""
        if excluded and all(s.id in excluded for s in self.samples):
            raise DataError(
                f"every one of the {len(self.samples)} samples is quarantined: nothing left to draw"
            )
        drawn: list[Sample] = []
        while len(drawn) < count:
            if self.position == len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
            sample = self.samples[self._order[self.position]]
            self.position += 1
            if sample.id not in excluded:
                drawn.append(sample)
        return drawn

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "num_samples": len(self.samples)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_samples"] != len(self.samples):
            raise ValueError(
                f"the checkpoint's sampler saw {state['num_samples']} samples, this run has "
                f"{len(self.samples)}: the data changed, so the position would not mean the same"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)
