"""RunConfig: one typed config composed of each part's own, and the cluster's and trainer's.

Each part keeps its config next to its code (`vidrl.data.config`, `vidrl.data.video`,
`vidrl.data.prompts`, `vidrl.rewards.config`, `vidrl.rollout.config`, `vidrl.learner.config`,
`vidrl.selection.config`); this module composes them, as part of the wiring layer, and loads
them from YAML with dotted overrides (`vidrl.overrides`).

A fact two parts need is stated once; the other part's key is derived from it when left unset,
and set to anything else it is refused with an error naming both keys:

    rewards.think                         from prompt.think
    rollout.{min,max}_pixels_per_frame    from video.{min,max}_pixels_per_frame (the frames are
                                          decoded at that size; the processor keeps it)
    rollout.lora_rank                     from learner.lora.rank
    prompt.tvg_answer_style               from the style the tvg_iou reward reads (json or to)
    overlong_penalty's max_tokens         from rollout.max_response_tokens

The pixel multiple frames are resized to is the model family's (vidrl.models), read from the
checkpoint when the run is built (vidrl.cluster.inputs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from vidrl.configbase import StrictConfig
from vidrl.data.config import DataConfig
from vidrl.data.prompts import PromptConfig
from vidrl.data.video import VideoConfig
from vidrl.learner.config import LearnerConfig
from vidrl.overrides import ConfigError, dump_config, load_config
from vidrl.rewards.config import RewardsConfig
from vidrl.rewards.presets import preset_components
from vidrl.rollout.config import RolloutConfig
from vidrl.selection.config import GateConfig, SelectionConfig

__all__ = ["ClusterConfig", "ConfigError", "RunConfig", "TrainerConfig", "dump_config", "load_run_config"]


class ClusterConfig(StrictConfig):
    address: str | None = None
    """Ray cluster to join ("auto" = the one this machine belongs to); None starts a local one."""
    local_num_cpus: int | None = Field(None, ge=1)
    """CPUs of a local cluster started by vidrl (None: all of this machine's)."""
    placement: Literal["separate", "colocated"] = "separate"
    """Rollout workers and learner ranks on separate resources, or sharing them (time-sliced)."""
    rollout_node_resource: str | None = None
    """Custom Ray resource that pins rollout workers to the nodes offering it (e.g. "rollout_node")."""
    learner_node_resource: str | None = None
    """Custom Ray resource that pins learner ranks to the nodes offering it."""
    reward_actors: int = Field(1, ge=1)
    """Reward actors in the pool; each scores a share of a step's responses."""
    cpus_per_reward_actor: float = Field(0.1, gt=0)
    """CPUs Ray reserves for each reward actor (rule-based rewards need little)."""
    gpus_per_reward_actor: float = Field(0.0, ge=0)
    """GPUs Ray reserves for each reward actor (a judge model would need some)."""
    reward_timeout_seconds: float = Field(60.0, gt=0)
    """A reward call slower than this counts as failed for its samples (which score None)."""


class TrainerConfig(StrictConfig):
    steps: int = Field(20, ge=0)
    """GRPO steps (optimizer updates) of the run."""
    prompts_per_step: int = Field(8, ge=1)
    """Prompts drawn per step; each gets rollout.samples_per_prompt responses."""
    max_staleness: int = Field(0, ge=0, le=1)
    """0: synchronous; 1: the rollout of step t+1 overlaps the update of step t (one-step off-policy)."""
    sft_steps: int = Field(0, ge=0)
    """Supervised warm-start steps on reference answers before GRPO (0: none)."""
    sft_lr: float = Field(1e-5, gt=0)
    """Learning rate of the SFT warm start."""
    sft_prompts_per_step: int = Field(16, ge=1)
    """Samples per SFT step."""
    checkpoint_every_steps: int = Field(0, ge=0)
    """Save a resumable checkpoint every this many GRPO steps (0: only at the end)."""
    keep_checkpoints: int = Field(3, ge=0)
    """Keep the newest this many checkpoints, removing older ones after each save (0: keep all)."""
    eval_every_steps: int = Field(0, ge=0)
    """Evaluate on data.eval_path every this many steps (0: only before and after training)."""
    eval_max_samples: int = Field(64, ge=1)
    """Evaluation samples drawn from data.eval_path (the first ones, in file order)."""
    tensorboard: bool = True
    """Also write metrics as TensorBoard events under the run directory."""
    wandb_project: str | None = None
    """Weights & Biases project to log to (needs the wandb package); None: off."""
    progress_bar: bool = True
    """Show a progress bar with step, reward, step time and ETA."""
    max_restarts: int = Field(3, ge=0)
    """Faults (a dead, hung or unresponsive actor) the run recovers from by rebuilding its actors and
    resuming from the last checkpoint, before it stops listing them."""
    max_consecutive_skips: int = Field(3, ge=1)
    """Updates skipped in a row for a non-finite loss or gradient before the run stops."""


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
    """How frames are sampled from each video and resized (the engines' pixel bounds too)."""
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

    @model_validator(mode="before")
    @classmethod
    def _derive_shared_facts(cls, data: Any) -> Any:
        """Fill each derived key (`DERIVED`) that was left unset; refuse two that disagree."""
        sections = ("prompt", "rewards", "rollout", "video", "learner")
        if not isinstance(data, Mapping) or not all(_is_section(data.get(name)) for name in sections):
            return data  # not a config tree: pydantic says what is wrong with it
        tree = dict(data) | {name: _as_tree(data.get(name)) for name in sections}
        prompt, rewards, rollout, video = tree["prompt"], tree["rewards"], tree["rollout"], tree["video"]
        _agree(rewards, "think", prompt.get("think", True), "rewards.think", "prompt.think")
        for bound in ("min_pixels_per_frame", "max_pixels_per_frame"):
            default = VideoConfig.model_fields[bound].default
            _agree(rollout, bound, video.get(bound, default), f"rollout.{bound}", f"video.{bound}")
        lora = tree["learner"].get("lora")
        if _is_section(lora) and lora:
            lora = _as_tree(lora)
            rank = lora.get("rank", 16)
            _agree(rollout, "lora_rank", rank, "rollout.lora_rank", "learner.lora.rank")
        _derive_answer_style(prompt, rewards)
        _derive_overlong_limit(rewards, rollout.get("max_response_tokens"))
        return tree

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name


def _is_section(value: Any) -> bool:
    return value is None or isinstance(value, BaseModel | Mapping)


def _as_tree(value: Any) -> dict[str, Any]:
    """A config section as a plain dict of the keys that were set (None: empty)."""
    if value is None:
        return {}
    return value.model_dump(exclude_unset=True) if isinstance(value, BaseModel) else dict(value)


def _agree(section: dict[str, Any], key: str, value: Any, name: str, source: str) -> None:
    """section[key] := value when unset; an error naming both keys when set otherwise."""
    current = section.get(key)
    if current is None:
        section[key] = value
    elif current != value:
        raise ValueError(
            f"{name}={current!r} but {source}={value!r}: leave {name} unset (it follows {source})"
        )


def _derive_answer_style(prompt: dict[str, Any], rewards: dict[str, Any]) -> None:
    """prompt.tvg_answer_style from the style every tvg_iou component reads ("any" reads both)."""
    styles = {
        c.get("kwargs", {}).get("style", "any") for c in _components(rewards) if c.get("fn") == "tvg_iou"
    }
    styles.discard("any")
    if not styles:
        return
    if len(styles) > 1:
        raise ValueError(f"tvg_iou components read different answer styles {sorted(styles)}: use one")
    (style,) = styles
    _agree(
        prompt, "tvg_answer_style", style, "prompt.tvg_answer_style", f"the tvg_iou reward's style {style!r}"
    )


def _derive_overlong_limit(rewards: dict[str, Any], max_response_tokens: int | None) -> None:
    """Each overlong_penalty's max_tokens is the rollout's response limit: its ramp ends where the
    engine cuts, another limit would punish or spare responses the engine never cuts."""
    limit = max_response_tokens or RolloutConfig.model_fields["max_response_tokens"].default
    components = [dict(c) for c in rewards.get("components") or ()]
    for component in components:
        if component.get("fn") == "overlong_penalty":
            kwargs = dict(component.get("kwargs") or {})
            name = f"rewards.components[{component.get('name')}].kwargs.max_tokens"
            _agree(kwargs, "max_tokens", limit, name, "rollout.max_response_tokens")
            component["kwargs"] = kwargs
    if components:
        rewards["components"] = components


def _components(rewards: dict[str, Any]) -> list[dict[str, Any]]:
    """The preset's components and the listed ones, as plain dicts."""
    preset = rewards.get("preset", RewardsConfig.model_fields["preset"].default)
    listed = [_as_tree(c) for c in rewards.get("components") or ()]
    return ([] if preset is None else preset_components(preset)) + listed


def load_run_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Load a RunConfig from YAML (None = defaults) with `key.sub=value` overrides."""
    return load_config(RunConfig, path, overrides)
