"""Checkpoints that resume exactly, and never load a pickle.

    step_000050/
      hf/                       the model in Hugging Face format, in the engines' dtype
                                (safetensors + the model folder's config, tokenizer and
                                processor files): loadable by transformers and vLLM
      adapter/                  instead of hf/ under LoRA: the adapter in PEFT's format
                                (adapter_model.safetensors + adapter_config.json naming its base)
      state/                    model and optimizer shards, written by torch.distributed.checkpoint
                                through its Hugging Face storage (safetensors, one file per rank)
      trainer_state.json        step, scheduler, learning rates, the caller's extra state
      rng_rank{R}.json          each rank's torch RNG state

Why DCP's Hugging Face storage and not its default: the default writes its metadata with
pickle and reads it back with pickle.load; the safetensors storage keeps the metadata in the
files' JSON headers, so nothing in a checkpoint is ever unpickled. Non-tensor optimizer
entries (learning rates, betas) go to trainer_state.json instead.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vidrl.learner.config import LoraSettings
from vidrl.learner.loading import copy_model_files

log = logging.getLogger(__name__)

ADAPTER_FOLDER = "adapter"


@dataclass(frozen=True)
class TrainingState:
    """What one rank checkpoints: its shard of the policy, the optimizer and schedule, the
    optimizer steps taken, and where the weights came from (the model folder's files are copied
    beside the saved weights; under LoRA the adapter names that folder as its base)."""

    rank: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: int
    model_path: str
    lora: LoraSettings | None
    seed: int
    hf_dtype: torch.dtype | None = None
    """The dtype of the Hugging Face copy (the engines'; None: the master weights' own)."""


def save_checkpoint(state: TrainingState, path: str, extra_state: dict[str, Any]) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    root = Path(path)
    if state.lora is None:
        _save_hf_model(state, root / "hf")
    else:
        _save_adapter(state, root / ADAPTER_FOLDER)
    tensors = _tensor_state(state)
    dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(root / "state"), save_distributed=True))
    rng = torch.get_rng_state().tolist()
    (root / f"rng_rank{state.rank}.json").write_text(json.dumps(rng))
    if state.rank == 0:
        trainer = {
            "step": state.step,
            "scheduler": _jsonable(state.scheduler.state_dict()),
            "lrs": [group["lr"] for group in state.optimizer.param_groups],
            "extra": extra_state,
        }
        (root / "trainer_state.json").write_text(json.dumps(trainer, indent=2))
    dist.barrier()
    # Every rank flushes what this node wrote (on a shared file system each node its own); the
    # job fsyncs the folders, marks the checkpoint complete and renames it into place.
    fsync_files(root)
    dist.barrier()


def load_checkpoint(state: TrainingState, path: str) -> tuple[int, dict[str, Any]]:
    """Restore `state`'s model, optimizer, schedule and this rank's RNG from `path`; returns
    (the optimizer steps taken, the caller's extra state)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    root = Path(path)
    tensors = _tensor_state(state)
    dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(root / "state")))
    model_state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    optim_state = {k.removeprefix("optim."): v for k, v in tensors.items() if k.startswith("optim.")}
    # Under LoRA only the adapters are saved (the base comes from the model folder).
    options = StateDictOptions(flatten_optimizer_state_dict=True, strict=state.lora is None)
    full_optim = _optimizer_flat_state(state) | optim_state
    set_state_dict(
        state.model,
        state.optimizer,
        model_state_dict=model_state,
        optim_state_dict=full_optim,
        options=options,
    )
    trainer = json.loads((root / "trainer_state.json").read_text())
    state.scheduler.load_state_dict(trainer["scheduler"])
    for group, lr in zip(state.optimizer.param_groups, trainer["lrs"], strict=True):
        group["lr"] = lr
    step = int(trainer["step"])
    _restore_rng(state, root, step)
    return step, dict(trainer["extra"])


def _restore_rng(state: TrainingState, root: Path, step: int) -> None:
    """This rank's RNG as saved; a rank the checkpoint had not (it was saved by fewer ranks) gets
    one derived from the seed, its rank and the step, and says so."""
    file = root / f"rng_rank{state.rank}.json"
    if file.exists():
        torch.set_rng_state(torch.tensor(json.loads(file.read_text()), dtype=torch.uint8))
        return
    saved = len(list(root.glob("rng_rank*.json")))
    torch.manual_seed(state.seed * 1_000_003 + state.rank * 1_009 + step)
    log.warning(
        "rank %d: the checkpoint was saved by %d ranks; its RNG is derived from the seed", state.rank, saved
    )


def fsync_files(folder: Path) -> None:
    """fsync every file under `folder` (what a crash may otherwise leave half on disk)."""
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def _tensor_state(state: TrainingState) -> dict[str, torch.Tensor]:
    """Model and flattened optimizer state, tensors only, keys prefixed model./optim."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    from vidrl.learner.lora import is_adapter

    lora = state.lora is not None
    model = {
        f"model.{k}": v for k, v in get_model_state_dict(state.model).items() if not lora or is_adapter(k)
    }
    optim = {f"optim.{k}": v for k, v in _optimizer_flat_state(state).items() if isinstance(v, torch.Tensor)}
    return model | optim


def _optimizer_flat_state(state: TrainingState) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(flatten_optimizer_state_dict=True)
    return dict(get_optimizer_state_dict(state.model, state.optimizer, options=options))


def materialise_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create AdamW's per-parameter state now (step 0, zero moments), as its first step would."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            if param not in optimizer.state:
                optimizer.state[param] = {
                    "step": torch.zeros((), dtype=torch.float32),
                    "exp_avg": torch.zeros_like(param),
                    "exp_avg_sq": torch.zeros_like(param),
                }


def _save_hf_model(state: TrainingState, folder: Path) -> None:
    """Full weights gathered on rank 0 (CPU), written as safetensors beside the model's files."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = get_model_state_dict(state.model, options=options)
    if state.rank != 0:
        return
    folder.mkdir(parents=True, exist_ok=True)
    seen: set[int] = set()
    tensors = {}
    for name, tensor in full.items():
        if tensor.data_ptr() in seen:  # tied weights (lm_head = embeddings) are stored once
            continue
        seen.add(tensor.data_ptr())
        cast = tensor.is_floating_point() and state.hf_dtype is not None
        tensors[name] = (tensor.to(state.hf_dtype) if cast else tensor).contiguous()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    copy_model_files(Path(state.model_path), folder)


def _save_adapter(state: TrainingState, folder: Path) -> None:
    """The LoRA adapter gathered on rank 0, written in PEFT's format; its config names the base
    model folder (tokenizer and processor come from there)."""
    from vidrl.learner.lora import is_adapter, peft_tensors, write_adapter

    gathered = []
    for name, param in state.model.named_parameters():
        if is_adapter(name):
            full = param.detach().full_tensor() if hasattr(param, "full_tensor") else param.detach()
            gathered.append((name, full.cpu()))
    if state.rank != 0 or state.lora is None:
        return
    write_adapter(folder, dict(peft_tensors(gathered)), state.lora, state.model_path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return None  # LambdaLR keeps its lambdas here: rebuilt from the config, not saved
