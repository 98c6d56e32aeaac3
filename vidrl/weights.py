"""Model weights as buckets of bounded size, the form they travel in through Ray's object store.

A bucket is ONE flat uint8 numpy array holding several tensors back to back (each at an
offset aligned to 64 bytes), plus a small table of (name, dtype, shape, offset). Why one
array: Ray stores a numpy array out of band and hands it back zero-copy (a read-only view
of shared memory), so a rollout worker reads a bucket without copying it; a bucket of many
small arrays would pay per-object overhead for each. bf16 has no numpy dtype, which is
why bytes rather than typed arrays travel: every dtype is a view on arrival.

The learner (producer) and the rollout workers (consumers) both depend on this module
and on nothing of each other.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

ALIGN_BYTES = 64
DEFAULT_BUCKET_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """Where one tensor lies inside a bucket's buffer."""

    name: str
    dtype: str  # torch dtype name without the "torch." prefix, e.g. "bfloat16"
    shape: tuple[int, ...]
    offset: int  # bytes from the start of the buffer, a multiple of ALIGN_BYTES
    nbytes: int


@dataclass(frozen=True, slots=True)
class WeightBucket:
    """Part of a state dict for weights version `version`.

    buffer: uint8 [total_bytes], the tensors' bytes at their entries' offsets.
    adapter_config: None for model weights; for a LoRA adapter (its tensors under PEFT's names),
        its adapter_config.json text, which the engine needs to load it as an adapter.
    """

    version: int
    entries: tuple[TensorEntry, ...]
    buffer: np.ndarray
    adapter_config: str | None = None
    keeps_vision: bool = False
    """True: the push leaves the vision tower out (learner.freeze_vision, after the first push):
    the engine keeps the tower it has and requires every other parameter."""

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes)


def _aligned(offset: int) -> int:
    return (offset + ALIGN_BYTES - 1) // ALIGN_BYTES * ALIGN_BYTES


def pack_bucket(
    version: int,
    tensors: Iterable[tuple[str, torch.Tensor]],
    adapter_config: str | None = None,
    keeps_vision: bool = False,
) -> WeightBucket:
    """Copy tensors (any device, any dtype) into one bucket; one copy, to host memory."""
    named = [(name, t.detach()) for name, t in tensors]
    entries: list[TensorEntry] = []
    offset = 0
    for name, t in named:
        offset = _aligned(offset)
        nbytes = t.numel() * t.element_size()
        entries.append(TensorEntry(name, str(t.dtype).removeprefix("torch."), tuple(t.shape), offset, nbytes))
        offset += nbytes
    buffer = np.empty(_aligned(offset), dtype=np.uint8)
    flat = torch.from_numpy(buffer)
    for entry, (_, t) in zip(entries, named, strict=True):
        if entry.nbytes:
            raw = t.contiguous().reshape(-1).view(torch.uint8)
            flat[entry.offset : entry.offset + entry.nbytes].copy_(raw)
    return WeightBucket(
        version=version,
        entries=tuple(entries),
        buffer=buffer,
        adapter_config=adapter_config,
        keeps_vision=keeps_vision,
    )


def unpack_bucket(bucket: WeightBucket) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) views into the bucket's buffer: no copy (read-only when from Ray)."""
    flat = None
    if bucket.buffer.size:
        with warnings.catch_warnings():
            # Buffers from Ray's object store are read-only shared memory; vLLM's weight
            # loaders only read them (they copy into their own parameters).
            warnings.filterwarnings("ignore", message="The given buffer is not writable")
            flat = torch.frombuffer(memoryview(bucket.buffer), dtype=torch.uint8)
    for entry in bucket.entries:
        dtype = getattr(torch, entry.dtype)
        if flat is None or entry.nbytes == 0:
            yield entry.name, torch.empty(entry.shape, dtype=dtype)
            continue
        raw = flat[entry.offset : entry.offset + entry.nbytes]
        yield entry.name, raw.view(dtype).reshape(entry.shape)


def split_into_buckets(
    tensors: Iterable[tuple[str, torch.Tensor]], max_bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group (name, tensor) pairs into lists of at most max_bucket_bytes (a larger single
    tensor gets a list of its own), lazily, so only one group is held at a time."""
    group: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, t in tensors:
        nbytes = _aligned(t.numel() * t.element_size())
        if group and size + nbytes > max_bucket_bytes:
            yield group
            group, size = [], 0
        group.append((name, t))
        size += nbytes
    if group:
        yield group
