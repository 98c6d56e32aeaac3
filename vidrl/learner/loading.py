"""Loading a model onto FSDP2 ranks without a full copy on any rank.

    model = build_on_meta(path, attention, dtype)        # the module tree, no parameter memory
    names = checkpoint_names(model, path)                  # checkpoint key -> parameter name
    shard_model(model, cfg)                                # FSDP2 units (vidrl.learner.model)
    materialise(model, device)                            # this rank's shards allocated, buffers rebuilt
    load_shards(model, path, names)                       # each rank reads only its rows

Why each rank reads its own rows rather than rank 0 reading everything and broadcasting: FSDP2
shards every parameter along dim 0 in `torch.chunk` pieces, and safetensors can read a row range
of a tensor without reading the rest (`get_slice`), so rank r reads exactly the bytes it keeps.
No rank ever holds a whole model (rank 0 would, with a broadcast), nothing crosses the network,
and host memory per rank is the shard plus one parameter's slice in the checkpoint's dtype.

Checkpoint names are mapped to the model's with transformers' own renaming rules (the rules
`from_pretrained` applies: Qwen2.5-VL checkpoints of the hub store `model.layers.*` and
`visual.*`, the transformers 5 module tree has `model.language_model.*` and `model.visual.*`), so
the weights after loading are those of `from_pretrained` (tests/test_loading.py compares them).
A checkpoint that needs a real conversion (experts merged into one tensor, say) is refused with
a message that says how to convert it once.

Buffers: on the meta device the non-persistent buffers (rotary inverse frequencies) are
placeholders. `materialise` fills every floating buffer with NaN, has the model's own
`_init_weights` recompute the modules that own buffers, and refuses to go on if a NaN is left,
naming the buffer, rather than train with garbage positions.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

SAFETENSORS_INDEX = "model.safetensors.index.json"


def build_on_meta(model_path: str, attention: str | dict[str, str], dtype: torch.dtype) -> nn.Module:
    """The Hugging Face model of `model_path`'s config with every tensor on the meta device."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config, attn_implementation=attention, dtype=dtype)
    model.config.use_cache = False
    return model


def materialise(model: nn.Module, device: torch.device) -> None:
    """Allocate this rank's parameter shards on `device` (uninitialised) and rebuild the buffers."""
    model.to_empty(device=device)
    owners = [m for m in model.modules() if any(True for _ in m.buffers(recurse=False))]
    with torch.no_grad():
        for module in owners:
            for buffer in module.buffers(recurse=False):
                if buffer.is_floating_point():
                    buffer.fill_(float("nan"))
            model._init_weights(module)  # type: ignore[operator]
    for name, buffer in model.named_buffers():
        if buffer.is_floating_point() and bool(buffer.isnan().any()):
            raise RuntimeError(
                f"buffer {name} ({type(_owner(model, name)).__name__}) is not rebuilt by the model's "
                "_init_weights after a meta-device build; this model family cannot be loaded this way"
            )


def _owner(model: nn.Module, buffer_name: str) -> nn.Module:
    path = buffer_name.rpartition(".")[0]
    return model.get_submodule(path) if path else model


def load_shards(
    model: nn.Module, model_path: str, names: dict[str, str], fresh: Callable[[str], bool] | None = None
) -> int:
    """Copy each parameter's local rows from the checkpoint's safetensors; returns bytes read.

    Works on FSDP2-sharded parameters (DTensors sharded on dim 0) and on plain ones (a single
    process reads whole tensors). `names` is `checkpoint_names` of the model before it was
    sharded. Missing parameters are an error that lists them, except those `fresh` names
    (parameters the caller initialises, e.g. new LoRA adapters).
    """
    files = checkpoint_files(Path(model_path))
    params = dict(model.named_parameters())
    missing = sorted(n for n in set(params) - set(names.values()) if fresh is None or not fresh(n))
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise ValueError(
            f"{model_path}: the checkpoint has no weights for {len(missing)} parameters: {shown}"
        )
    bytes_read = 0
    with ExitStack() as stack, torch.no_grad():
        from safetensors import safe_open

        for file, keys in files.items():
            handle = stack.enter_context(safe_open(str(file), framework="pt"))
            for key in keys:
                target = names.get(key)
                if target is None or target not in params:
                    continue
                bytes_read += _copy_rows(handle.get_slice(key), params[target], f"{file.name}:{key}")
    return bytes_read


def _copy_rows(source: Any, param: nn.Parameter, where: str) -> int:
    """Copy the rows of `source` (a safetensors slice) that this rank holds into `param`."""
    shape = tuple(source.get_shape())
    if shape != tuple(param.shape):
        raise ValueError(f"{where}: checkpoint shape {list(shape)} but the model expects {list(param.shape)}")
    local = param.to_local() if hasattr(param, "to_local") else param.data
    start, stop = local_rows(param)
    if stop <= start:
        return 0
    rows = source[start:stop] if shape else source[:]
    local.copy_(rows.to(local.dtype))
    return rows.numel() * rows.element_size()


def local_rows(param: nn.Parameter) -> tuple[int, int]:
    """[start, stop) of dim 0 that this rank's shard holds: FSDP2 cuts dim 0 as torch.chunk does
    (pieces of ceil(n / W) rows; the last ranks may hold fewer, or none). A plain tensor: all rows."""
    if not hasattr(param, "device_mesh") or param.dim() == 0:
        return 0, (param.shape[0] if param.dim() else 1)
    placement = param.placements[0]
    if getattr(placement, "dim", None) != 0 or len(param.placements) != 1:
        raise ValueError(f"expected FSDP2's Shard(0) placement, got {param.placements}")
    mesh = param.device_mesh
    rank, world = mesh.get_local_rank(), mesh.size()
    rows = param.shape[0]
    chunk = -(-rows // world)
    start = min(rank * chunk, rows)
    stop = min(start + chunk, rows)
    if param.to_local().shape[0] != stop - start:
        raise RuntimeError(
            f"shard of {stop - start} rows expected, the local tensor has {param.to_local().shape}"
        )
    return start, stop


def checkpoint_files(folder: Path) -> dict[Path, list[str]]:
    """Each safetensors file of a model folder with the tensor names it holds."""
    index = folder / SAFETENSORS_INDEX
    if index.exists():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        files: dict[Path, list[str]] = {}
        for key, file in weight_map.items():
            files.setdefault(folder / file, []).append(key)
        return files
    single = folder / "model.safetensors"
    if not single.exists():
        raise FileNotFoundError(f"{folder}: no model.safetensors or {SAFETENSORS_INDEX}")
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as handle:
        return {single: list(handle.keys())}


def checkpoint_names(model: nn.Module, model_path: str) -> dict[str, str]:
    """Checkpoint key -> the model's parameter name, by transformers' loading rules.

    Call it before `fully_shard`: the rules are looked up by the model's class name, which FSDP2
    replaces (FSDPQwen2_5_VL...)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming, rename_source_key

    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if not isinstance(t, WeightRenaming)]
    known = {name: True for name, _ in _model_state_names(model)}
    prefix = getattr(model, "base_model_prefix", None)
    out: dict[str, str] = {}
    for key in (k for keys in checkpoint_files(Path(model_path)).values() for k in keys):
        renamed, converter = rename_source_key(key, renamings, converters, prefix, known)
        if converter is not None:
            raise ValueError(
                f"checkpoint tensor {key} needs a weight conversion ({converter}), not a rename; "
                "convert the checkpoint once with transformers (from_pretrained, then save_pretrained)"
            )
        out[key] = renamed
    return out


def _model_state_names(model: nn.Module) -> Iterator[tuple[str, Any]]:
    yield from model.named_parameters(remove_duplicate=False)
    yield from model.named_buffers()


MODEL_FOLDER_FILES = ("*.json", "*.jinja", "*.txt", "*.model")
"""A model folder's config, tokenizer, processor and template files (what is not weights)."""


def copy_model_files(source: Path, folder: Path) -> None:
    """The model folder's config, tokenizer, processor and template files (not its weights)."""
    for pattern in MODEL_FOLDER_FILES:
        for file in source.glob(pattern):
            if file.name != SAFETENSORS_INDEX:
                shutil.copy2(file, folder / file.name)
