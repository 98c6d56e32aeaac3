"""Per-request sampling seeds: one stream per (run seed, sample id, step, refill round).

Why per request rather than one seed per engine: on GPUs vLLM 0.32/0.33 runs Model Runner V2,
which never reads torch's generator; a request without `SamplingParams.seed` gets a seed
drawn from NumPy's process-wide RNG (`vllm/v1/worker/gpu/sample/states.py`), so its samples
would depend on how many requests the process served before. A request with a seed draws its
noise from (seed, position) on V2 and from a generator of its own on V1 (the CPU build), and
the `n` samples of a group get seed + 0, ..., seed + n - 1 (`vllm/v1/engine/parallel_sampling.py`)
on both. So a group's responses are fixed by its own seed and the weights alone: not by the
worker it lands on, by the other prompts in the batch, or by the process's history, and a
restarted or resumed worker reproduces the step.

A seed is 62 bits wide, so seed + n stays inside int64 (V2 keeps seeds in an int64 tensor);
two groups' seed ranges overlap with probability about P^2 G / 2^62, nil at any real size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

SEED_BITS = 62


def request_seed(run_seed: int, sample_id: str, step: int, refill_round: int, occurrence: int = 0) -> int:
    """The seed of one group. `occurrence` counts earlier prompts with the same sample id in
    the same call (a sample drawn twice in one round still gets two streams)."""
    # Integers first, the free-form id last: the "/"-joined text cannot be read two ways.
    key = f"{run_seed}/{step}/{refill_round}/{occurrence}/{sample_id}".encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - SEED_BITS)


def call_seeds(run_seed: int, sample_ids: Sequence[str], step: int, refill_round: int) -> list[int]:
    """The seed of each prompt of one `generate` call, in order."""
    seen: dict[str, int] = {}
    seeds = []
    for sample_id in sample_ids:
        occurrence = seen.get(sample_id, 0)
        seen[sample_id] = occurrence + 1
        seeds.append(request_seed(run_seed, sample_id, step, refill_round, occurrence))
    return seeds
