"""Building the policy as FSDP2 shards: one unit per decoder layer and per vision block.

The units are the module classes the model family names (vidrl.models: the decoder layers and
the vision blocks of each family, its transformers `_no_split_modules`). The vision tower is
also a unit of its own (its patch embedding, merger and DeepStack mergers), which lets a rank
whose micro-batch has no video still run the tower on a dummy input: every rank must run
the same collectives in the same order, with a gradient for every parameter, or the step
hangs (`vision_tower_in_lockstep` runs the family's dummy pass where the real tower would run).
No rank ever holds the whole model: it is built on the meta device, sharded, and each rank reads
its own rows of the checkpoint (loading.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vidrl.learner.attention import SHARED_PREFIX_ATTENTION, Kernel, register_shared_prefix_attention
from vidrl.learner.config import LearnerConfig
from vidrl.learner.forward import MASKABLE_ATTENTION
from vidrl.learner.layouts import Layout
from vidrl.learner.loading import build_on_meta, checkpoint_names, load_shards, materialise
from vidrl.models import family_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttentionChoice:
    """The kernels of one model: its text model's and its vision tower's attention
    implementations (transformers names), and the shared-prefix kernel ("sdpa" or "flash")."""

    text: str
    vision: str
    prefix_kernel: Kernel

    def implementation(self) -> dict[str, str]:
        """The `attn_implementation` argument of transformers' model constructors."""
        return {"text_config": self.text, "vision_config": self.vision}


def choose_attention(cfg: LearnerConfig, device: torch.device, layout: Layout) -> AttentionChoice:
    """Each part of the model gets the best kernel it can use, independently (logged).

    auto: flash-attn 2 on a GPU where it is installed and compute is bf16, else PyTorch SDPA.
    flash-attn takes no float32 inputs, so asking for it with float32 compute is an error. The
    text model runs under the shared-prefix implementation for the two_pass and flex layouts
    (two_pass then uses flash-attn's varlen kernel where flash-attn was chosen); the layouts
    that hand the model a 4D mask (mask, prompt_state) need a maskable attention, so flash-attn
    falls back to SDPA there. Under sequence parallelism the text model always runs the
    shared-prefix implementation, which exchanges heads and tokens between the ranks.
    """
    flash_ok = device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None
    if cfg.attention == "flash_attention_2" and cfg.param_dtype == "float32":
        raise ValueError(
            "attention flash_attention_2 cannot run float32 compute (flash-attn takes bf16/fp16 inputs): "
            "set learner.param_dtype: bfloat16, or learner.attention: sdpa"
        )
    if cfg.attention != "auto":
        base = cfg.attention
    else:
        base = "flash_attention_2" if flash_ok and cfg.param_dtype == "bfloat16" else "sdpa"
    text = base
    if layout in ("two_pass", "flex") or cfg.sequence_parallel_size > 1:
        # Sequence parallelism runs every layout's attention through this implementation too.
        text = SHARED_PREFIX_ATTENTION
    elif layout in ("mask", "prompt_state") and base not in MASKABLE_ATTENTION:
        log.warning("the %s layout hands the model a 4D mask: text attention sdpa, not %s", layout, base)
        text = "sdpa"
    choice = AttentionChoice(text, base, "flash" if base == "flash_attention_2" else "sdpa")
    log.info("attention: %s (requested %s, layout %s, device %s)", choice, cfg.attention, layout, device)
    return choice


def build_sharded(
    model_path: str,
    attention: AttentionChoice,
    cfg: LearnerConfig,
    device: torch.device,
    dtype: torch.dtype,
    trainable: bool = True,
    seed: int = 0,
) -> nn.Module:
    """The model of `model_path` as FSDP2 shards on `device`, each rank reading only its own
    rows of the checkpoint (vidrl.learner.loading): parameters in `dtype` (float32 master
    weights for the policy; the compute dtype for the frozen reference). With `cfg.lora` the
    trainable policy gets LoRA adapters (vidrl.learner.lora), initialised from `seed`."""
    if attention.text == SHARED_PREFIX_ATTENTION:
        register_shared_prefix_attention()
    model = build_on_meta(model_path, attention.implementation(), dtype)
    names = checkpoint_names(model, model_path)
    adapters = trainable and cfg.lora is not None
    if adapters:
        from vidrl.learner.lora import inject_adapters, wrapped_names

        inject_adapters(model, cfg.lora)  # type: ignore[arg-type]
        names = wrapped_names(names, model)
    if trainable and cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    offload = not trainable and cfg.reference_offload
    shard_model(model, cfg, trainable=trainable, offload=offload)
    # Offloaded shards live in host memory; FSDP2 moves them to the device around each use.
    materialise(model, torch.device("cpu") if offload else device)
    if adapters:
        from vidrl.learner.lora import init_adapters, is_adapter

        load_shards(model, model_path, names, fresh=is_adapter)
        init_adapters(model, seed)
    else:
        load_shards(model, model_path, names)
    return model


def compute_dtype(cfg: LearnerConfig) -> torch.dtype:
    """The dtype of forward/backward compute (and of the frozen reference's weights)."""
    return torch.bfloat16 if cfg.param_dtype == "bfloat16" else torch.float32


def shard_model(
    model: nn.Module, cfg: LearnerConfig, trainable: bool = True, offload: bool = False
) -> nn.Module:
    """FSDP2 (`fully_shard`) per no-split module, the vision tower, then the root. With
    `offload`, the shards stay in host memory between uses (FSDP2's CPUOffloadPolicy)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=compute_dtype(cfg), reduce_dtype=torch.float32)
    options: dict[str, Any] = {"mp_policy": policy}
    if offload:
        options["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
    unit_names = set(family_of(model.config).sharding_units)
    units = [m for m in model.modules() if type(m).__name__ in unit_names]
    found = {type(m).__name__ for m in units}
    if found != unit_names:  # a renamed class after a transformers upgrade would shard nothing
        missing = ", ".join(sorted(unit_names - found))
        raise ValueError(f"{type(model).__name__} has no {missing} modules to shard (vidrl.models)")
    for unit in units:
        fully_shard(unit, **options)
    tower = family_of(model.config).vision_tower(model)
    if tower is not None:
        fully_shard(tower, **options)
    fully_shard(model, **options)
    if not trainable:
        model.requires_grad_(False)
        model.eval()
    log.info("FSDP2: %d units (%s) + vision tower + root", len(units), ", ".join(sorted(unit_names)))
    return model


@contextlib.contextmanager
def vision_tower_in_lockstep(model: nn.Module, no_video: bool) -> Iterator[list[torch.Tensor]]:
    """Within this block, a forward of `model` on a batch without video (`no_video`) runs the
    vision tower on its dummy input just before the text model, where a batch with video runs
    the real tower; yields a list that then holds the dummy's zero (add it to the loss so the
    tower's parameters get their gradients).

    Why there: FSDP2's all-gathers (and the backward's reduce-scatters, which follow the order
    the autograd graph was built in) must come in the same order on every rank. A dummy pass run
    after the forward would gather the tower after the decoder layers on this rank and before
    them on a rank with video: the collectives would pair tensors of different sizes.
    """
    zeros: list[torch.Tensor] = []
    family = family_of(model.config)
    if not no_video or family.vision_tower(model) is None:
        yield zeros
        return

    def before_text(module: nn.Module, args: Any) -> None:
        if not zeros:  # once per block: a family that runs the text model twice ran the tower once
            zeros.append(family.dummy_vision_pass(model))

    handle = family.text_model(model).register_forward_pre_hook(before_text)
    try:
        yield zeros
    finally:
        handle.remove()
