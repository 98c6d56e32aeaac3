"""What a `--model` argument names, and a rollout pool that serves it.

A model is a Hugging Face folder (`*.safetensors` + config), or a LoRA adapter folder (PEFT's
`adapter_config.json` + `adapter_model.safetensors`, as LoRA runs write them) on the base model
its config names. `vidrl eval` and `vidrl select` take either; the engines start from the base
and an adapter is pushed into them like any weights version, so a pool serves several
checkpoints in turn (full ones replace the base weights, adapters go on top of them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidrl.rollout.config import RolloutConfig

ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class ModelRef:
    """base: the model folder the engines start from; adapter: a LoRA adapter folder on it."""

    base: str
    adapter: str | None = None
    rank: int | None = None


def model_ref(path: str, base: str | None = None) -> ModelRef:
    """A model folder, or an adapter folder on `base` (default: the base its config names)."""
    config_file = Path(path) / ADAPTER_CONFIG
    if not config_file.exists():
        return ModelRef(path)
    config = json.loads(config_file.read_text())
    base_path = base or config.get("base_model_name_or_path")
    if not base_path:
        raise ValueError(f"{path}: the adapter names no base model; pass the base with --base")
    return ModelRef(str(base_path), path, int(config["r"]))


def serving_config(rollout: RolloutConfig, refs: Sequence[ModelRef]) -> RolloutConfig:
    """The rollout config with LoRA support when any of `refs` is an adapter."""
    ranks = [r.rank for r in refs if r.rank is not None]
    if not ranks or (rollout.lora_rank or 0) >= max(ranks):
        return rollout
    return rollout.model_copy(update={"lora_rank": max(ranks)})


def weight_refs(ref: ModelRef, version: int) -> list[Any]:
    """The weights of `ref` as buckets in the object store for `RolloutPool.update_weights`:
    the adapter's tensors (with its config) for an adapter, else the folder's safetensors."""
    import ray
    from safetensors.torch import load_file

    from vidrl.weights import pack_bucket, split_into_buckets

    if ref.adapter is not None:
        folder = Path(ref.adapter)
        config = (folder / ADAPTER_CONFIG).read_text()
        tensors = load_file(str(folder / "adapter_model.safetensors")).items()
        return [ray.put(pack_bucket(version, group, config)) for group in split_into_buckets(tensors)]
    files = sorted(Path(ref.base).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{ref.base}: no *.safetensors weights")
    named = ((name, t) for file in files for name, t in load_file(str(file)).items())
    return [ray.put(pack_bucket(version, group)) for group in split_into_buckets(named)]


def serve(pool: Any, ref: ModelRef, version: int, engines: ModelRef) -> ModelRef:
    """Make the pool's engines, which serve `engines` now, generate with `ref`: the base weights
    are pushed when they change (or when an adapter must go), then the adapter if any. Returns
    what the engines serve afterwards."""
    if ref.base != engines.base or (engines.adapter is not None and ref.adapter is None):
        pool.update_weights(version, weight_refs(ModelRef(ref.base), version))  # drops any adapter
    if ref.adapter is not None:
        pool.update_weights(version, weight_refs(ref, version))
    return ref
