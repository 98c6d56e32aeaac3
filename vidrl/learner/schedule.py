"""The learning-rate schedule: linear warmup, then constant or cosine decay."""

from __future__ import annotations

import math
from collections.abc import Callable

from vidrl.learner.config import LearnerConfig


def lr_lambda(cfg: LearnerConfig) -> Callable[[int], float]:
    """Multiplier of cfg.lr at optimizer step `step` (0-based), for torch's LambdaLR.

    Warmup reaches the full rate at step warmup_steps - 1, so the first update is never
    made at lr 0; the cosine then falls to min_lr_ratio at total_steps and stays there.
    """

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        span = max(cfg.total_steps - cfg.warmup_steps, 1)
        progress = min((step - cfg.warmup_steps) / span, 1.0)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine

    return factor
