"""Loading the policy and sharding it with FSDP2: one unit per decoder layer and per vision block.

The units are the model's own `_no_split_modules` (for Qwen2.5-VL: the decoder layers and
the vision blocks), so any Hugging Face model that declares them shards the same way. The
vision tower is also a unit of its own (its patch embedding and merger), which lets a rank
whose micro-batch has no video still run the tower on a dummy input: every rank must run
the same collectives, or the step hangs.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import torch
from torch import nn

from vidrl.learner.config import LearnerConfig

log = logging.getLogger(__name__)


def choose_attention(requested: str, device: torch.device) -> str:
    """flash-attn 2 on a GPU where it is installed, else PyTorch SDPA (logged)."""
    if requested != "auto":
        chosen = requested
    elif device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        chosen = "flash_attention_2"
    else:
        chosen = "sdpa"
    log.info("attention implementation: %s (requested %s, device %s)", chosen, requested, device)
    return chosen


def load_model(model_path: str, attention: str, gradient_checkpointing: bool) -> nn.Module:
    """The Hugging Face model in float32 (master weights), ready for training."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(
        model_path, dtype=torch.float32, attn_implementation=attention
    )
    model.config.use_cache = False
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def vision_tower(model: nn.Module) -> nn.Module | None:
    inner = getattr(model, "model", model)
    return getattr(inner, "visual", None)


def shard_model(model: nn.Module, cfg: LearnerConfig, trainable: bool = True) -> nn.Module:
    """FSDP2 (`fully_shard`) per no-split module, the vision tower, then the root."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dtype = torch.bfloat16 if cfg.param_dtype == "bfloat16" else torch.float32
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    unit_names = set(getattr(model, "_no_split_modules", None) or ())
    units = [m for m in model.modules() if type(m).__name__ in unit_names]
    for unit in units:
        fully_shard(unit, mp_policy=policy)
    tower = vision_tower(model)
    if tower is not None:
        fully_shard(tower, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    if not trainable:
        model.requires_grad_(False)
        model.eval()
    log.info("FSDP2: %d units (%s) + vision tower + root", len(units), ", ".join(sorted(unit_names)))
    return model


def dummy_vision_pass(model: nn.Module) -> torch.Tensor:
    """Run the vision tower on the smallest input (one 2x2-patch frame pair) and return a
    zero that depends on it, so a rank with no video joins the tower's collectives."""
    tower = vision_tower(model)
    if tower is None:
        return torch.zeros(())
    cfg: Any = tower.config
    patch_dim = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size * cfg.patch_size
    merge = cfg.spatial_merge_size
    grid = torch.tensor([[1, merge, merge]])
    pixels = torch.zeros(merge * merge, patch_dim)
    out = tower(pixels, grid_thw=grid)
    hidden = out.pooler_output if hasattr(out, "pooler_output") else out
    if isinstance(hidden, tuple | list):
        hidden = hidden[0]
    return hidden.float().sum() * 0.0
