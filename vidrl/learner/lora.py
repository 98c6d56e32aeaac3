"""LoRA adapters for RL: injected into the language model, the only parameters trained and pushed.

    inject_adapters(model, cfg)          # PEFT's LoRA layers in place (no PeftModel wrapper)
    ... shard, materialise, load the base weights ...
    init_adapters(model, seed)           # A: nn.Linear's uniform init, B: 0 (the adapter starts as 0)
    adapters_enabled(model, False)       # the reference policy is the base model itself
    peft_tensors(named) / write_adapter  # PEFT's file format, which transformers + PEFT and vLLM load
    merge_adapter(base_state, adapter)   # W + (alpha / r) B A, for `vidrl export --merge`

Why inject rather than wrap: the model stays the Hugging Face model it was (same forward, same
output head, same attention implementations, same FSDP2 units), so LoRA needs nothing of its own
in the layouts, the chunked head or the loader. Parameter names only gain `.base_layer` (the
frozen weight) and `.lora_A.default` / `.lora_B.default`; PEFT's files drop the adapter name and
prefix `base_model.model.`.

The vision tower gets no adapter unless `train_vision` (EasyR1 and vLLM's LoRA work on the
language model; Qwen2.5-VL's vision blocks reuse the names gate_proj / up_proj / down_proj, so the
adapter's `exclude_modules` keeps them out by path).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vidrl.learner.config import LoraSettings
from vidrl.learner.loading import copy_model_files, local_rows

ADAPTER_NAME = "default"
PEFT_PREFIX = "base_model.model."
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
VISION_PATHS = r".*\.visual\..*"
"""Module paths of the vision tower (Qwen-VL families): excluded unless train_vision."""


def peft_config(cfg: LoraSettings, base_model_path: str | None = None) -> Any:
    """PEFT's LoraConfig for these settings (also what adapter_config.json holds)."""
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        exclude_modules=None if cfg.train_vision else VISION_PATHS,
        bias="none",
        base_model_name_or_path=base_model_path,
    )


def inject_adapters(model: nn.Module, cfg: LoraSettings) -> nn.Module:
    """Put LoRA layers into `model` in place and freeze everything but their A and B matrices."""
    from peft import inject_adapter_in_model

    inject_adapter_in_model(peft_config(cfg), model, adapter_name=ADAPTER_NAME)
    for name, param in model.named_parameters():
        param.requires_grad_(is_adapter(name))
    if not any(is_adapter(name) for name, _ in model.named_parameters()):
        raise ValueError(
            f"lora.target_modules {list(cfg.target_modules)} match no module of the language model"
        )
    return model


def is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def base_name(name: str) -> str:
    """The Hugging Face name of a frozen weight once LoRA wrapped its layer."""
    return name.replace(".base_layer.", ".")


def wrapped_names(names: Mapping[str, str], model: nn.Module) -> dict[str, str]:
    """`checkpoint_names` (checkpoint key -> parameter name) after `inject_adapters`: a weight of a
    wrapped layer now lives at `<layer>.base_layer.<leaf>`."""
    by_base = {
        base_name(n): n for n, _ in model.named_parameters(remove_duplicate=False) if not is_adapter(n)
    }
    return {key: by_base.get(name, name) for key, name in names.items()}


@torch.no_grad()
def init_adapters(model: nn.Module, seed: int) -> None:
    """A like nn.Linear's default init (uniform, bound 1/sqrt(in)), B = 0, from a generator per
    tensor seeded by (seed, name): the same values whatever the number of ranks."""
    for name, param in model.named_parameters():
        if not is_adapter(name):
            continue
        local = param.to_local() if hasattr(param, "to_local") else param.data
        start, stop = local_rows(param)
        if ".lora_B." in name:
            local.zero_()
            continue
        generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        bound = 1.0 / math.sqrt(param.shape[1])
        full = torch.empty(tuple(param.shape)).uniform_(-bound, bound, generator=generator)
        local.copy_(full[start:stop].to(local.dtype))


def adapters_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch every LoRA layer on or off (off: the base model, which is the reference policy)."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.enable_adapters(enabled)


def peft_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Model parameter names -> PEFT's file names, for the adapter tensors only."""
    suffix = f".{ADAPTER_NAME}."
    for name, tensor in named:
        if is_adapter(name):
            yield PEFT_PREFIX + name.replace(suffix, "."), tensor


def write_adapter(folder: Path, tensors: Mapping[str, torch.Tensor], cfg: LoraSettings, base: str) -> Path:
    """An adapter folder (PEFT's format: adapter_model.safetensors + adapter_config.json)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / ADAPTER_WEIGHTS))
    (folder / ADAPTER_CONFIG).write_text(adapter_config_json(cfg, base))
    return folder


def adapter_config_json(cfg: LoraSettings, base: str | None) -> str:
    """adapter_config.json as PEFT writes it (sets as sorted lists)."""
    config = peft_config(cfg, base).to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    return json.dumps(config, indent=2, default=str)


def read_adapter(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(PEFT-named tensors, adapter_config.json) of an adapter folder."""
    from safetensors.torch import load_file

    return load_file(str(folder / ADAPTER_WEIGHTS)), json.loads((folder / ADAPTER_CONFIG).read_text())


def merge_adapter(
    base: Mapping[str, torch.Tensor],
    adapter: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    checkpoint_key: Mapping[str, str],
) -> dict[str, torch.Tensor]:
    """Merged weights W + (lora_alpha / r) B A (float32 math, stored in each base weight's
    dtype). `base` is keyed as its checkpoint stores it; `checkpoint_key` maps the model's
    parameter names to those keys (`vidrl.learner.loading.checkpoint_names`, inverted)."""
    scale = float(config["lora_alpha"]) / float(config["r"])
    merged = dict(base)
    for name, a in adapter.items():
        if ".lora_A." not in name:
            continue
        b = adapter[name.replace(".lora_A.", ".lora_B.")]
        module_weight = name.removeprefix(PEFT_PREFIX).replace(".lora_A.weight", ".weight")
        key = checkpoint_key.get(module_weight)
        if key is None or key not in merged:
            raise KeyError(f"the base checkpoint has no weight for adapter module {module_weight}")
        weight = merged[key]
        merged[key] = (weight.float() + scale * (b.float() @ a.float())).to(weight.dtype)
    return merged


def export_merged(adapter: Path, out: Path, base: str | None = None) -> Path:
    """A Hugging Face model folder at `out` with the adapter merged into its base's weights
    (the base named by the adapter's config unless `base` is given): transformers and vLLM load
    it like any checkpoint. The base's config, tokenizer and processor files are copied along."""
    from safetensors.torch import load_file, save_file

    from vidrl.learner.loading import build_on_meta, checkpoint_files, checkpoint_names

    tensors, config = read_adapter(adapter)
    base_path = base or config.get("base_model_name_or_path")
    if not base_path:
        raise ValueError(f"{adapter}: the adapter names no base model; give one")
    names = checkpoint_names(build_on_meta(str(base_path), "sdpa", torch.float32), str(base_path))
    state = {k: t for file in checkpoint_files(Path(base_path)) for k, t in load_file(str(file)).items()}
    merged = merge_adapter(state, tensors, config, {name: key for key, name in names.items()})
    out.mkdir(parents=True, exist_ok=True)
    save_file(merged, str(out / "model.safetensors"), metadata={"format": "pt"})
    copy_model_files(Path(base_path), out)
    return out
