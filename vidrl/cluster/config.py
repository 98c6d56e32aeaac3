"""Where the actors run (ClusterConfig) and how the training loop is paced (TrainerConfig)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vidrl.configbase import StrictConfig


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
