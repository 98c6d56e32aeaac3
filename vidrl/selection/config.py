"""Configs of data selection: offline (`vidrl select`, `SelectionConfig`) and online (`GateConfig`).

In a run config (every key optional; these are examples, the defaults are below):

    selection:
      repeats: 8                  # K responses per training sample
      min_variance: 1.0e-4        # tvg / track: keep when the total's variance is above this
      min_pass_rate: 0.0          # mcq / gqa: keep when min < pass rate < max
      max_pass_rate: 1.0
      min_mean: 0.0               # optional band: min_mean < mean <= max_mean ...
      max_mean: 0.7
      band_component: tvg_iou     # ... of this component (null: of the total)
      max_per_task: {tvg: 500}    # optional quotas, highest variance first
      top_k: 800                  # optional overall cap, highest variance first

    gate:
      enabled: true               # DAPO dynamic sampling: drop groups with no reward spread
      eps: 1.0e-6
      max_refill_rounds: 2
"""

from __future__ import annotations

from pydantic import Field, model_validator

from vidrl.configbase import StrictConfig
from vidrl.data.sample import TaskKind


class SelectionConfig(StrictConfig):
    """Which training samples to keep, from the statistics of K repeated inferences."""

    repeats: int = Field(8, ge=1, le=256)
    """Responses drawn per training sample by repeated inference (K)."""
    prompts_per_call: int = Field(16, ge=1)
    """Samples sent to the rollout pool per generate call (each gets `repeats` responses)."""
    pass_threshold: float = Field(0.5, allow_inf_nan=False)
    """tvg / track: a response counts as passed when its total reward is at least this."""
    min_variance: float = Field(1e-4, ge=0.0, allow_inf_nan=False)
    """tvg / track: keep a sample only when the variance of its total reward is above this."""
    min_pass_rate: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    """mcq / gqa: keep a sample only when its pass rate (accuracy) is above this."""
    max_pass_rate: float = Field(1.0, ge=0.0, le=1.0, allow_inf_nan=False)
    """mcq / gqa: keep a sample only when its pass rate (accuracy) is below this."""
    min_mean: float | None = Field(None, allow_inf_nan=False)
    """Band: keep only samples whose mean is above this (exclusive); null: no lower bound."""
    max_mean: float | None = Field(None, allow_inf_nan=False)
    """Band: keep only samples whose mean is at most this (inclusive); null: no upper bound."""
    band_component: str | None = Field(None, min_length=1)
    """Component whose mean the band bounds (samples without it skip the band); null: the total."""
    max_per_task: dict[TaskKind, int] = Field(default_factory=dict)
    """Per-task quota after the filters: the highest-variance samples of that task are kept."""
    top_k: int | None = Field(None, ge=1)
    """Overall cap after the quotas: the highest-variance samples are kept; null: no cap."""

    @model_validator(mode="after")
    def _consistent(self) -> SelectionConfig:
        if self.min_pass_rate >= self.max_pass_rate:
            raise ValueError(
                f"min_pass_rate ({self.min_pass_rate}) must be below max_pass_rate "
                f"({self.max_pass_rate}): no discrete sample could be kept"
            )
        low, high = self.min_mean, self.max_mean
        if low is not None and high is not None and low >= high:
            raise ValueError(f"min_mean ({self.min_mean}) must be below max_mean ({self.max_mean})")
        if self.band_component is not None and self.min_mean is None and self.max_mean is None:
            raise ValueError("band_component is set but neither min_mean nor max_mean is")
        negative = {task: n for task, n in self.max_per_task.items() if n < 0}
        if negative:
            raise ValueError(f"max_per_task quotas must be >= 0, got {negative}")
        return self


class GateConfig(StrictConfig):
    """The online group filter of training (DAPO's dynamic sampling)."""

    enabled: bool = False
    """Drop groups whose rewards have (near) zero spread; false: every group is trained on."""
    eps: float = Field(1e-6, ge=0.0, allow_inf_nan=False)
    """A group is dropped when the population std of its rewards is at most this."""
    max_refill_rounds: int = Field(0, ge=0, le=16)
    """Extra rounds of prompts drawn per step to replace dropped groups (0: train on fewer)."""
