"""vidrl: distributed GRPO post-training for video language models.

The Python API, importable without vLLM or Ray installed (they load when a run starts):

    import vidrl
    vidrl.register_reward("my_reward", my_fn)  # fn(batch: list[RewardInput]) -> list[RewardScore | None]
    cfg = vidrl.load_run_config("examples/synthetic.yaml", ["trainer.steps=10"])
    summary = vidrl.train(cfg)
"""

from __future__ import annotations

from typing import Any

from vidrl.cluster.config import RunConfig, load_run_config
from vidrl.data.sample import Sample
from vidrl.rewards.registry import register_reward
from vidrl.rewards.types import RewardInput, RewardScore

__all__ = ["RewardInput", "RewardScore", "RunConfig", "Sample", "load_run_config", "register_reward", "train"]


def train(config: RunConfig, resume_anyway: bool = False) -> dict[str, Any]:
    """Run (or resume) the GRPO job `config` describes; returns its summary. A run directory
    whose checkpoints were trained with another config is resumed only with `resume_anyway`."""
    from vidrl.cluster.job import train as run_job

    return run_job(config, resume_anyway=resume_anyway)
