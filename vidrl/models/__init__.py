"""The model families vidrl trains, one module each; everything that differs between them is here.

    family = family_of(model.config)         # by the checkpoint config's model_type
    family.placeholder_token_ids(config)     # never sampled, never scored
    family.prompt_positions(config, ids, grid, seconds)

The family is always read from the checkpoint's config, never from a run config. This package
stands beside vidrl.data: it imports transformers (lazily, inside functions) and torch, never the
learner, the rollout or the cluster. What each family answers: vidrl.models.family.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vidrl.models import qwen2_5_vl, qwen3_5, qwen3_vl
from vidrl.models.family import ModelFamily

FAMILIES: dict[str, ModelFamily] = {
    family.name: family for family in (qwen2_5_vl.FAMILY, qwen3_vl.FAMILY, qwen3_5.FAMILY)
}
"""Every family by name (= the config's model_type); the first is the default of the tiny model."""


def family_named(name: str) -> ModelFamily:
    """The family called `name` (a config model_type); an error lists the known ones."""
    family = FAMILIES.get(name)
    if family is None:
        raise ValueError(f"unknown model family {name!r}; vidrl trains {', '.join(FAMILIES)}")
    return family


def family_of(config: Any) -> ModelFamily:
    """The family of a model config (transformers' PretrainedConfig, or anything with model_type)."""
    return family_named(str(getattr(config, "model_type", None)))


def family_at(model_path: str | Path) -> ModelFamily:
    """The family of the checkpoint folder `model_path`, from its config.json alone (no
    transformers import: safe in any thread, cheap in any process)."""
    config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    return family_named(str(config.get("model_type")))


__all__ = ["FAMILIES", "ModelFamily", "family_at", "family_named", "family_of"]
