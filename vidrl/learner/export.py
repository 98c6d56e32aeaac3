"""A rank's weights out to the rollout engines: gathered one parameter at a time, published in
buckets of bounded size through Ray's object store (vidrl.weights).

Every rank takes part in each gather (a collective); only rank 0 keeps the full tensors, and only
until its bucket is full: then it is packed, put in the object store and dropped, so beyond the
model at most one bucket is held. Shards are cast to the engine's dtype before the gather: half
the bytes of float32 masters for a bf16 engine. Under LoRA the adapter alone travels, under
PEFT's names.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from vidrl.learner.config import LearnerConfig


def publish_weights(
    model: nn.Module,
    version: int,
    rank: int,
    cfg: LearnerConfig,
    model_path: str,
    export_dtype: torch.dtype | None,
    skip: set[str],
) -> list[Any]:
    """Object-store references to the buckets of weights `version` (on rank 0; empty elsewhere),
    without the parameters in `skip` (whose buckets say so: `keeps_vision`)."""
    import ray

    from vidrl.weights import pack_bucket, split_into_buckets

    adapter = None
    tensors = full_parameters(model, rank, cfg, export_dtype, skip)
    if cfg.lora is not None:
        from vidrl.learner.lora import adapter_config_json, peft_tensors

        adapter = adapter_config_json(cfg.lora, model_path)
        tensors = peft_tensors(tensors)
    refs: list[Any] = []
    for group in split_into_buckets(tensors, cfg.weight_bucket_bytes):
        if rank == 0:
            refs.append(ray.put(pack_bucket(version, group, adapter, bool(skip))))
    return refs


def full_parameters(
    model: nn.Module, rank: int, cfg: LearnerConfig, export_dtype: torch.dtype | None, skip: set[str]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter but those in `skip` gathered in turn (only LoRA's adapters under LoRA),
    whole on rank 0."""
    from vidrl.learner.lora import is_adapter

    nothing = torch.empty(0)
    for name, param in model.named_parameters():
        if (cfg.lora is not None and not is_adapter(name)) or name in skip:
            continue
        cast = param.detach() if export_dtype is None else param.detach().to(export_dtype)
        full = cast.full_tensor() if hasattr(cast, "full_tensor") else cast
        yield name, full.to("cpu") if rank == 0 else nothing
