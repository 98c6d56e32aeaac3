"""Shared-prefix vs plain forward+backward at the shape of real video RL, on CPU.

    .venv/bin/python bench/prefix.py

Builds a ~19M-parameter Qwen2.5-VL-shaped model (text 512 wide, 6 layers; the tiny vision tower)
with random weights, and prompts of a real 30-frame 224x224 video (960 visual tokens) plus the
chat template, about 1,000 tokens each, with 8 responses of 128 tokens per prompt. Times one
forward+backward of a token-mean policy-gradient loss over all responses in each layout:

- plain: G sequences of prompt + response per prompt, in micro-batches of 4 (the fast setting on
  this CPU: one batch of 32 was about twice as slow), each running the vision encoder on its video;
- shared: one packed sequence per prompt (`vidrl.learner.prefix`), one group per micro-batch,
  the vision encoder once per prompt;

in fp32 and under bf16 autocast, and checks that the two layouts' log-probs agree. Prints a
markdown table. The default is 2 prompts: the speedup is per group, so more prompts only take
longer (`--prompts 4` is the issue's 4 x 8 step: 36,208 plain tokens vs 8,110 shared; it took
10.5 minutes at load average 4-6 on the 2 shared cores). Timings are wall-clock and move with
whatever else runs on the machine, so the load average is printed with them; on a busy machine
`--threads 1` avoids two intra-op threads spinning on each other.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from bench_utils import host_malloc_settings
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from vidrl.data.tiny import TinyQwenShape, build_tiny_model
from vidrl.learner.forward import (
    config_prompt_position_ids,
    response_logprobs_plain,
    response_logprobs_shared,
)
from vidrl.learner.memory import HostMalloc, peak_host_bytes
from vidrl.learner.prefix import pack_group, split_group
from vidrl.learner.types import PackedGroup, ResponseLogprobs, VisionInputs

# ~19M parameters: 6 x 3.0M in the decoder layers, 0.55M embeddings and head, 0.36M vision.
BENCH_SHAPE = TinyQwenShape(
    text_hidden_size=512, text_layers=6, text_heads=8, text_kv_heads=2, text_intermediate_size=1536
)
QUESTIONS = (
    "the person opens the door",
    "a man picks up a cup",
    "the red square moves left",
    "a woman sits down",
)
LogprobFn = Callable[..., list[ResponseLogprobs]]


@dataclass(frozen=True)
class Workload:
    """The groups of one step and the per-token weights of its loss."""

    groups: list[PackedGroup]
    vision: list[VisionInputs | None]
    advantages: list[torch.Tensor]  # one [G, 1] per group
    response_tokens: int


@dataclass(frozen=True)
class Timing:
    layout: str
    precision: str
    tokens: int
    seconds: float
    logprobs: list[torch.Tensor]  # one [G, L] per group, detached


def build_workload(
    model: torch.nn.Module,
    processor: AutoProcessor,
    args: argparse.Namespace,
) -> Workload:
    """Process each prompt's video once and pack it with random responses."""
    rng = np.random.default_rng(0)
    generator = torch.Generator().manual_seed(0)
    groups, vision, advantages = [], [], []
    for index in range(args.prompts):
        question = QUESTIONS[index % len(QUESTIONS)]
        content = [{"type": "video"}, {"type": "text", "text": question}]
        messages = [{"role": "user", "content": content}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        frames = rng.integers(0, 256, (args.frames, 224, 224, 3), dtype=np.uint8)
        out = processor(
            text=[text],
            videos=[frames],
            videos_kwargs={"do_sample_frames": False},
            return_tensors="pt",
        )
        ids = out["input_ids"][0]
        positions = config_prompt_position_ids(
            model.config, ids, out["video_grid_thw"], out["second_per_grid_ts"]
        )
        # Ordinary vocabulary only (no special tokens), as a sampler would produce.
        responses = torch.randint(1, 400, (args.samples, args.response_tokens), generator=generator)
        groups.append(pack_group(ids, positions, responses.tolist()))
        vision.append(VisionInputs(out["pixel_values_videos"], out["video_grid_thw"]))
        advantages.append(torch.randn(args.samples, 1, generator=generator))
    return Workload(groups, vision, advantages, args.prompts * args.samples * args.response_tokens)


def micro_batches(
    work: Workload, layout: str, sequences_per_batch: int
) -> Iterator[tuple[list[PackedGroup], list[VisionInputs | None], list[torch.Tensor]]]:
    """Shared: one group per micro-batch. Plain: `sequences_per_batch` single-response groups."""
    if layout == "shared":
        for group, video, adv in zip(work.groups, work.vision, work.advantages, strict=True):
            yield [group], [video], [adv]
        return
    singles = [
        (single, video, adv[row : row + 1])
        for group, video, adv in zip(work.groups, work.vision, work.advantages, strict=True)
        for row, single in enumerate(split_group(group))
    ]
    for start in range(0, len(singles), sequences_per_batch):
        chunk = singles[start : start + sequences_per_batch]
        yield [c[0] for c in chunk], [c[1] for c in chunk], [c[2] for c in chunk]


def forward_backward(
    model: torch.nn.Module,
    work: Workload,
    layout: str,
    precision: str,
    sequences_per_batch: int,
    host: HostMalloc | None = None,
) -> Timing:
    """One step's forward+backward in micro-batches; the loss is a token mean over the step."""
    fn: LogprobFn = response_logprobs_shared if layout == "shared" else response_logprobs_plain
    autocast: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if precision == "bf16":
        autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    model.zero_grad(set_to_none=True)
    logprobs: list[torch.Tensor] = []
    start = time.perf_counter()
    for groups, vision, advantages in micro_batches(work, layout, sequences_per_batch):
        with autocast:
            records = fn(model, groups, vision)
        loss = torch.zeros(())
        for adv, record in zip(advantages, records, strict=True):
            loss = loss - (adv * record.logprobs * record.mask).sum()
        (loss / work.response_tokens).backward()
        logprobs.extend(r.logprobs.detach() for r in records)
        del loss, records
        if host is not None:
            host.after("microbatch")
    if host is not None:
        host.after("step")
    seconds = time.perf_counter() - start
    # shared: P + sum(L) per group; plain: G copies of the prompt, G * P + sum(L).
    copies = [1 if layout == "shared" else g.num_responses for g in work.groups]
    tokens = sum(
        c * g.prompt_length + sum(g.response_lengths) for c, g in zip(copies, work.groups, strict=True)
    )
    if layout == "plain":  # one [1, L] record per sequence: stack them back into groups
        size = len(logprobs) // len(work.groups)
        logprobs = [torch.cat(logprobs[i : i + size]) for i in range(0, len(logprobs), size)]
    return Timing(layout, precision, tokens, seconds, logprobs)


def max_difference(first: Sequence[torch.Tensor], second: Sequence[torch.Tensor]) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(first, second, strict=True))


def warm_up(model: torch.nn.Module, work: Workload) -> None:
    """Run both layouts once on a cut-down group so first-call costs stay out of the timings."""
    group = work.groups[0]
    small = pack_group(
        group.input_ids[: group.prompt_length],
        group.position_ids[:, : group.prompt_length],
        [group.targets[:8].tolist(), group.targets[8:16].tolist()],
    )
    small_work = Workload([small], work.vision[:1], [torch.ones(2, 1)], 16)
    for precision in ("fp32", "bf16"):
        for layout in ("plain", "shared"):
            forward_backward(model, small_work, layout, precision, sequences_per_batch=2)


def report(timings: list[Timing], args: argparse.Namespace, parameters: int) -> None:
    """Print the markdown table: each shared row against the plain row of its precision."""
    plain = {t.precision: t for t in timings if t.layout == "plain"}
    print(
        f"\n{parameters / 1e6:.1f}M parameters; {args.prompts} prompts x {args.samples} samples, "
        f"{timings[0].tokens // (args.prompts * args.samples) - args.response_tokens} prompt "
        f"tokens ({args.frames} frames), {args.response_tokens}-token responses; "
        f"plain in micro-batches of {args.microbatch} sequences, shared one group per micro-batch; "
        f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}\n"
    )
    print("| layout | precision | tokens | fwd+bwd s | speedup | max abs logprob diff vs plain |")
    print("|---|---|---:|---:|---:|---:|")
    for t in timings:
        base = plain[t.precision]
        diff = "-" if t.layout == "plain" else f"{max_difference(t.logprobs, base.logprobs):.1e}"
        speedup = base.seconds / t.seconds
        cells = [
            t.layout,
            t.precision,
            f"{t.tokens:,}",
            f"{t.seconds:.2f}",
            f"{speedup:.2f}x",
            diff,
        ]
        print("| " + " | ".join(cells) + " |")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=2, help="groups per step")
    parser.add_argument("--samples", type=int, default=8, help="responses per prompt (G)")
    parser.add_argument("--response-tokens", type=int, default=128, help="tokens per response")
    parser.add_argument("--frames", type=int, default=30, help="video frames (2 per 64 tokens)")
    parser.add_argument("--microbatch", type=int, default=4, help="plain sequences per micro-batch")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--host-malloc",
        type=host_malloc_settings,
        default=None,
        help="apply learner.host_malloc in this process, e.g. mmap=131072,trim=step (default: glibc's own)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        model_dir = build_tiny_model(folder, seed=0, shape=BENCH_SHAPE)
        processor = AutoProcessor.from_pretrained(model_dir)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            model_dir,
            attn_implementation="sdpa",
        )
    model.train()
    parameters = sum(p.numel() for p in model.parameters())
    host = None if args.host_malloc is None else HostMalloc(args.host_malloc)
    if host is not None:
        host.apply()
    work = build_workload(model, processor, args)
    warm_up(model, work)
    timings = [
        forward_backward(model, work, layout, precision, args.microbatch, host)
        for precision in ("fp32", "bf16")
        for layout in ("plain", "shared")
    ]
    peak = peak_host_bytes()
    if peak is not None:
        print(f"peak host memory of the process: {peak / 1e9:.2f} GB ({args.host_malloc})")
    report(timings, args, parameters)


if __name__ == "__main__":
    main()
