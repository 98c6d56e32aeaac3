"""Reward configuration, and `build_reward`, which turns it into one composed RewardFn.

    rewards:
      preset: vidrl            # temporal_r1 | videochat_r1 | vidrl | null
      think: true              # false: the no-thinking answer grammars
      components:              # added to the preset's (or used alone when preset: null)
        - {name: length, fn: "my_rewards.py:length_penalty", weight: 0.1, tasks: [tvg]}

To change a preset's weights, set `preset: null` and list every component (the preset
lists are in `vidrl.rewards.presets`). Specs naming registered rewards and their kwargs are
checked when the config is validated; import specs are loaded by `build_reward`.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from vidrl.configbase import StrictConfig
from vidrl.data.sample import TaskKind
from vidrl.rewards.compose import ComposedReward, RewardComponent, duplicate_names
from vidrl.rewards.presets import PresetName, preset_components
from vidrl.rewards.registry import REWARDS, RewardSpecError, check_kwargs, resolve_reward


class RewardComponentConfig(StrictConfig):
    """One weighted term of the reward."""

    name: str = Field(min_length=1)
    """Key the component's value is reported under (unique among a task's components)."""
    fn: str = Field(min_length=1)
    """A registered reward name ("tvg_iou"), "package.module:function" or "file.py:function"."""
    weight: float = Field(default=1.0, ge=0.0, allow_inf_nan=False)
    """Multiplier of this component's value in the total reward."""
    tasks: tuple[TaskKind, ...] | None = None
    """Tasks this component scores; null: every task (it may still answer None)."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments bound to the function, e.g. {grammar: tags} for format_reward."""
    per_sample: bool = False
    """Import specs only: fn is `(response, sample, **kwargs) -> float | None`, not batch."""

    @field_validator("fn")
    @classmethod
    def _known_reward(cls, spec: str) -> str:
        if ":" not in spec and spec not in REWARDS:
            raise ValueError(
                f"unknown reward {spec!r}; allowed: {', '.join(sorted(REWARDS))}, "
                "'package.module:function' or 'path/to/file.py:function'"
            )
        return spec

    @model_validator(mode="after")
    def _kwargs_fit(self) -> RewardComponentConfig:
        # Only registered rewards are checked here: import specs would run user code.
        if ":" not in self.fn:
            try:
                check_kwargs(self.fn, REWARDS[self.fn], self.kwargs)
            except RewardSpecError as error:
                raise ValueError(f"components entry {self.name!r}: {error}") from None
        return self


class RewardsConfig(StrictConfig):
    """Which rewards score the rollouts, and how they are weighted."""

    preset: PresetName | None = "vidrl"
    """A named component list (see vidrl.rewards.presets); null: only `components`."""
    components: tuple[RewardComponentConfig, ...] | None = None
    """Extra components, added after the preset's (or used alone when preset is null)."""
    think: bool = True
    """Responses think first (<think>...</think>); false: the answer-only grammars."""

    @model_validator(mode="after")
    def _resolvable(self) -> RewardsConfig:
        if self.preset is None and not self.components:
            raise ValueError("rewards: preset is null and components is empty; set at least one")
        problem = duplicate_names(self.resolved_components())
        if problem is not None:
            raise ValueError(f"{problem} (preset {self.preset!r} included)")
        return self

    def resolved_components(self) -> list[RewardComponentConfig]:
        """The preset's components (with `think` applied) followed by `components`."""
        from_preset = [] if self.preset is None else preset_components(self.preset, self.think)
        return [RewardComponentConfig(**c) for c in from_preset] + list(self.components or ())


def build_reward(cfg: RewardsConfig) -> ComposedReward:
    """The composed batch reward the config describes (raises RewardSpecError on bad specs)."""
    return ComposedReward(
        [
            RewardComponent(
                name=c.name,
                fn=resolve_reward(c.fn, c.kwargs, per_sample=c.per_sample),
                weight=c.weight,
                tasks=None if c.tasks is None else frozenset(c.tasks),
            )
            for c in cfg.resolved_components()
        ]
    )
