"""RunConfig: one typed config composed of each part's own config.

Each part keeps its config next to its code (`vidrl.data.config`, `vidrl.data.video`,
`vidrl.data.prompts`, `vidrl.rewards.config`, `vidrl.selection.config`); this module only composes them and
loads them from YAML with dotted overrides (`vidrl.overrides`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import Field, model_validator

from vidrl.cluster.config import ClusterConfig, TrainerConfig
from vidrl.configbase import StrictConfig
from vidrl.data.config import DataConfig
from vidrl.data.prompts import PromptConfig
from vidrl.data.video import VideoConfig
from vidrl.learner.config import LearnerConfig
from vidrl.overrides import ConfigError, dump_config, load_config
from vidrl.rewards.config import RewardsConfig
from vidrl.rollout.config import RolloutConfig
from vidrl.selection.config import GateConfig, SelectionConfig

__all__ = ["ConfigError", "RunConfig", "dump_config", "load_run_config"]


class RunConfig(StrictConfig):
    run_name: str = Field("run", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    """Name of the run; its files go to output_dir/run_name."""
    output_dir: str = "runs"
    """Folder that holds run directories."""
    seed: int = Field(0, ge=0)
    """Seed of every random choice in the run (data order, sampling, initialisation)."""
    model_path: str | None = None
    """A Hugging Face model folder (a checkpoint, or `vidrl tiny-model` output)."""
    data: DataConfig = DataConfig()
    """Where samples come from and how bad ones are handled."""
    video: VideoConfig = VideoConfig()
    """How frames are sampled from each video and resized."""
    prompt: PromptConfig = PromptConfig()
    """How questions are put to the model."""
    rewards: RewardsConfig = RewardsConfig()
    """Which rewards score each task's responses, with their weights."""
    rollout: RolloutConfig = RolloutConfig()
    """The vLLM rollout workers and how they sample."""
    learner: LearnerConfig = LearnerConfig()
    """The FSDP2 learner ranks, optimizer and GRPO objective."""
    cluster: ClusterConfig = ClusterConfig()
    """Where actors run: the Ray cluster, placement, node pins, reward actors."""
    trainer: TrainerConfig = TrainerConfig()
    """Steps, prompts per step, warm start, checkpoints, evaluation, logging."""
    gate: GateConfig = GateConfig()
    """The online group filter of training (drop groups without reward spread, refill)."""
    selection: SelectionConfig = SelectionConfig()
    """Offline selection by repeated inference (`vidrl select`): repeats and the keep policy."""

    @model_validator(mode="after")
    def _prompt_and_reward_agree(self) -> RunConfig:
        # The format reward checks for <think> exactly when the prompt asks for it; a mismatch
        # would score every well-formed answer 0 on format.
        if self.prompt.think != self.rewards.think:
            raise ValueError(
                f"prompt.think={self.prompt.think} but rewards.think={self.rewards.think}: "
                "set both to the same value"
            )
        return self

    @model_validator(mode="after")
    def _overlong_limit_is_the_rollouts(self) -> RunConfig:
        # The punishment's ramp ends at the response limit: another limit would punish or spare
        # responses the engine never cuts.
        for component in self.rewards.resolved_components():
            limit = component.kwargs.get("max_tokens")
            if component.fn == "overlong_penalty" and limit != self.rollout.max_response_tokens:
                raise ValueError(
                    f"reward component {component.name!r}: overlong_penalty max_tokens={limit} but "
                    f"rollout.max_response_tokens={self.rollout.max_response_tokens}: set them equal"
                )
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name


def load_run_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Load a RunConfig from YAML (None = defaults) with `key.sub=value` overrides."""
    return load_config(RunConfig, path, overrides)
