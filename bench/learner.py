"""The learner's throughput: FSDP2 ranks against a plain torch loop, shared prefixes, real size.

    .venv/bin/python bench/learner.py [--steps 5] [--prefix-prompts 1] [--skip-prefix] ...
    .venv/bin/python bench/learner.py --quick     # about a minute: run it before and after a learner change

Prints three markdown tables:

(a) A GRPO step of the tiny Qwen2.5-VL (`vidrl.data.tiny`) on a batch of video prompts, run by
    `LearnerGroup`s (1 and 2 FSDP2 ranks in local Ray; plain and shared-prefix layouts) and by a
    plain single-process loop on the SAME batch: the model loaded with transformers, each
    sequence prompt + response, the same micro-batches, the loss from `vidrl.learner.grpo`,
    AdamW. All runs start from the same weights, so their step-1 losses must agree: the check
    that they do the same work. Each run uses the cores once (threads = --threads / ranks), and
    the runs take their steps in turn, round after round, so that all see the same load on the
    shared machine; the first --warmup rounds are left out of the means.
(b) The shared-prefix speedup at the shape of real video RL, by bench/prefix.py's own functions.
(c) Qwen2.5-VL-3B's shapes, random weights, bf16 compute, gradient checkpointing, 2,048 visual +
    1,024 response tokens per sample, on one CUDA GPU: tokens/s, peak memory, MFU. The learner's
    own rank (`LearnerWorker`) runs in this process, a process group of one, without Ray.
    Skipped without a GPU.

What (a) measures: the tiny model's arithmetic is milliseconds, so fixed costs dominate (Ray's
dispatch, FSDP2's gloo collectives, and the vision tower, whose windowed attention makes one small
SDPA call per window and video), not what a learner does on a real model. The wall column (the
driver's clock) against the rank-compute column (the slowest rank's clock) shows Ray's share.
MFU in (c) counts 6 x parameters x tokens run (the policy's forward and backward), neither the
reference model's forward nor the recomputation of checkpointed layers.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from bench_utils import Row, StepFn, host_malloc_settings, measure, print_table
from torch import nn
from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from vidrl.data.tiny import build_tiny_model
from vidrl.learner.batch import micro_batches, step_totals
from vidrl.learner.config import HostMallocSettings, LearnerConfig
from vidrl.learner.forward import config_prompt_position_ids
from vidrl.learner.grpo import group_advantages, grpo_loss
from vidrl.learner.loss_config import LossConfig
from vidrl.learner.prefix import response_positions
from vidrl.learner.types import TrainGroup, VisionInputs

# ---------------------------------------------------------------- (a) the batch


def tiny_batch(model_dir: Path, args: argparse.Namespace) -> list[TrainGroup]:
    """Video prompts through the tiny model's processor, each with G random responses and the
    GRPO advantages of random rewards. Old log-probs are left to the learner (ratio 1)."""
    processor = AutoProcessor.from_pretrained(model_dir)
    rng = np.random.default_rng(0)
    groups = []
    for index in range(args.prompts):
        frames = rng.integers(0, 256, (args.frames, args.frame_size, args.frame_size, 3), np.uint8)
        content = [{"type": "video"}, {"type": "text", "text": f"When does event {index} happen?"}]
        messages = [{"role": "user", "content": content}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        kwargs = {"do_sample_frames": False}  # the frames given are the frames sampled
        out = processor(text=[text], videos=[frames], return_tensors="np", videos_kwargs=kwargs)
        rewards = torch.from_numpy(rng.random((1, args.samples)))  # [1, G]
        responses = rng.integers(10, 300, (args.samples, args.response_tokens)).astype(np.int64)
        vision = VisionInputs(
            pixel_values_videos=out["pixel_values_videos"].astype(np.float32),
            video_grid_thw=out["video_grid_thw"].astype(np.int64),
            second_per_grid_ts=np.asarray(out["second_per_grid_ts"], np.float64),
        )
        advantages = group_advantages(rewards, "grpo", 1e-6)[0].float().numpy()  # [G]
        prompt = out["input_ids"][0].astype(np.int64)
        groups.append(TrainGroup(prompt, tuple(responses), advantages, vision=vision))
    return groups


# ---------------------------------------------------------------- (a) the plain loop


def plain_sequences(
    group: TrainGroup, config: Qwen2_5_VLConfig
) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """(ids [P + L], positions [3, P + L], P) of each response behind its own prompt copy."""
    prompt, vision = torch.from_numpy(group.prompt_ids), group.vision
    positions = config_prompt_position_ids(
        config,
        prompt,
        None if vision is None else torch.from_numpy(vision.video_grid_thw),
        None if vision is None else vision.second_per_grid_ts.tolist(),
    )
    return [
        (
            torch.cat([prompt, torch.from_numpy(response)]),
            torch.cat([positions, response_positions(positions, len(response))], dim=1),
            len(prompt),
        )
        for response in group.responses
    ]


def plain_logits(
    model: nn.Module, groups: Sequence[TrainGroup], config: Qwen2_5_VLConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the groups' B responses, each as its own sequence with its own copy of the prompt and
    video, right-padded to T. Returns the logits [B, L, V] of the rows that predict each response
    token, the targets [B, L] and their mask [B, L]."""
    sequences = [s for group in groups for s in plain_sequences(group, config)]
    responses = [torch.from_numpy(r) for group in groups for r in group.responses]
    videos = [g.vision for g in groups for _ in g.responses if g.vision is not None]
    pad = functools.partial(nn.utils.rnn.pad_sequence, batch_first=True)
    input_ids = pad([s[0] for s in sequences], padding_value=config.text_config.pad_token_id)
    first = min(s[2] for s in sequences) - 1  # the earliest row that predicts a response token
    out = model(
        input_ids=input_ids,  # [B, T]
        position_ids=pad([s[1].T for s in sequences]).permute(2, 0, 1),  # [3, B, T]
        attention_mask=pad([torch.ones(len(s[0]), dtype=torch.long) for s in sequences]),
        pixel_values_videos=_cat([v.pixel_values_videos for v in videos]),
        video_grid_thw=_cat([v.video_grid_thw for v in videos]),
        logits_to_keep=input_ids.shape[1] - first,
        use_cache=False,
    )
    steps = torch.arange(max(len(r) for r in responses))  # [L]
    rows = torch.tensor([s[2] - 1 - first for s in sequences]).unsqueeze(1) + steps  # [B, L]
    rows = rows.clamp(max=out.logits.shape[1] - 1)  # padding steps read any row: masked anyway
    logits = out.logits.gather(1, rows.unsqueeze(-1).expand(-1, -1, out.logits.shape[-1]))
    mask = steps < torch.tensor([len(r) for r in responses]).unsqueeze(1)  # [B, L]
    return logits, pad(responses), mask


def _cat(arrays: Sequence[np.ndarray]) -> torch.Tensor | None:
    return torch.cat([torch.from_numpy(a) for a in arrays]) if arrays else None


def textbook_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(target), entropy) [B, L] the way one writes it: a float32 log_softmax over [B, L, V]."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return log_probs.gather(-1, targets[..., None])[..., 0], -(log_probs.exp() * log_probs).sum(-1)


def plain_loop(model_dir: Path, groups: Sequence[TrainGroup], cfg: LearnerConfig) -> StepFn:
    """A single-process GRPO step as one writes it without vidrl's learner: the same
    micro-batches, loss, gradient clipping and AdamW, no Ray, no FSDP2."""
    load = functools.partial(
        Qwen2_5_VLForConditionalGeneration.from_pretrained,
        model_dir,
        dtype=torch.float32,
        attn_implementation="sdpa",
    )
    model = load().train()
    reference = load().eval() if cfg.loss.kl_coef > 0 else None
    betas, eps, decay = cfg.adam_betas, cfg.adam_eps, cfg.weight_decay
    optimizer = torch.optim.AdamW(model.parameters(), cfg.lr, betas, eps, decay)
    totals = step_totals(groups)
    by_tokens = cfg.loss.loss_agg == "token-mean"
    denominator = totals.response_tokens if by_tokens else totals.sequences
    batches = micro_batches(groups, cfg.max_tokens_per_microbatch, shared_prefix=False)
    plan = [[groups[i] for i in batch] for batch in batches]

    def step() -> dict[str, float]:
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = 0.0
        for batch in plan:
            logits, targets, mask = plain_logits(model, batch, model.config)  # [B, L, (V)]
            logprobs, entropy = textbook_logprobs(logits, targets)  # [B, L] each
            reference_logprobs = None
            if reference is not None:
                with torch.no_grad():
                    reference_logits = plain_logits(reference, batch, model.config)[0]
                    reference_logprobs = textbook_logprobs(reference_logits, targets)[0]
            terms = grpo_loss(
                logprobs,
                logprobs.detach(),  # one update per step: the old policy is the current one
                torch.from_numpy(np.concatenate([g.advantages for g in batch])),  # [B]
                mask,
                cfg.loss,
                ref_logprobs=reference_logprobs,
                entropy=entropy,
                global_denominator=denominator,
            )
            terms.loss.backward()
            loss += float(terms.loss.detach())
        nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or float("inf"))
        optimizer.step()
        tokens = float(sum(g.cost(shared_prefix=False) for g in groups))
        return {"loss": loss, "tokens": tokens, "step_seconds": time.perf_counter() - started}

    return step


# ---------------------------------------------------------------- (a) the table


def tiny_config(args: argparse.Namespace, ranks: int, layout: str, cpus: float) -> LearnerConfig:
    """The learner's defaults (fp32, the loss of Temporal-R1's recipe) at the bench's budget."""
    return LearnerConfig(
        num_ranks=ranks,
        cpus_per_rank=cpus,
        max_tokens_per_microbatch=args.microbatch_tokens,
        shared_prefix=layout == "shared",
        loss=LossConfig(kl_coef=args.kl_coef),
        host_malloc=args.host_malloc,
    )


def section_tiny(args: argparse.Namespace, folder: Path) -> None:
    import ray

    from vidrl.learner.group import LearnerGroup

    model_dir = build_tiny_model(folder / "tiny", seed=0)
    groups = tiny_batch(model_dir, args)
    torch.set_num_threads(args.threads)
    loop = Row("plain torch loop", f"1 x {args.threads}", "plain")
    runs = [(loop, plain_loop(model_dir, groups, tiny_config(args, 1, "plain", 1.0)))]
    configs = list(itertools.product(args.ranks, args.layouts))
    # All learners stay up to take turns, so Ray's CPU count is only bookkeeping here: each
    # rank's threads are set below so that every run uses the cores once.
    cpus = 2 / sum(ranks for ranks, _ in configs)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    learners: list[LearnerGroup] = []
    try:
        for ranks, layout in configs:
            learners.append(LearnerGroup(str(model_dir), tiny_config(args, ranks, layout, cpus)))
            threads = max(args.threads // ranks, 1)
            set_threads = [
                w.__ray_call__.remote(lambda _, n=threads: torch.set_num_threads(n))
                for w in learners[-1].workers
            ]
            ray.get(set_threads)
            row = Row("LearnerGroup", f"{ranks} x {threads}", layout)
            runs.append((row, lambda learner=learners[-1]: learner.train_step(groups).metrics))
        measure(runs, args.warmup + args.steps)
    finally:
        for learner in learners:
            learner.shutdown()
        ray.shutdown()
    plain_tokens = sum(g.cost(shared_prefix=False) for g in groups)
    print(
        f"\n### (a) GRPO step of the tiny Qwen2.5-VL: {args.prompts} prompts x {args.samples} "
        f"samples, {len(groups[0].prompt_ids)}-token video prompts ({args.frames} frames), "
        f"{args.response_tokens}-token responses = {plain_tokens:,} tokens; fp32, kl_coef "
        f"{args.kl_coef}, micro-batch budget {args.microbatch_tokens:,} tokens; mean of "
        f"{args.steps} steps after {args.warmup}; load average {os.getloadavg()[0]:.1f}\n"
    )
    print_tiny_table([row for row, _ in runs], plain_tokens, args.warmup)
    if args.quick:
        print_guard([row for row, _ in runs], args.warmup)
        return
    print_metrics(runs[-1][0], args.warmup)


def print_tiny_table(rows: Sequence[Row], plain_tokens: int, skip: int) -> None:
    base = rows[0].mean("wall_seconds", skip)
    table = []
    for row in rows:
        wall, compute = row.mean("wall_seconds", skip), row.mean("step_seconds", skip)
        tokens, loss = row.metrics[0]["tokens"], row.metrics[0]["loss"]
        cells = [row.name, row.ranks, row.layout, f"{tokens:,.0f}", f"{wall:.3f}", f"{compute:.3f}"]
        cells += [f"{tokens / wall:,.0f}", f"{plain_tokens / wall:,.0f}", f"{base / wall:.2f}x"]
        table.append([*cells, f"{loss:.6f}"])
    header = ["run", "ranks x threads", "layout", "tokens run", "wall s", "rank compute s"]
    header += ["tokens run/s", "batch tokens/s", "vs plain loop", "step-1 loss"]
    print_table(header, table, text_columns=3)


GUARD = {
    ("2 x 1", "plain"): 0.95,
    ("1 x 2", "plain"): 0.85,
    ("1 x 2", "shared"): 3.0,
    ("2 x 1", "shared"): 3.0,
}
"""LearnerGroup / plain loop floors (issue #22): below one, the learner lost speed it had."""


def print_guard(rows: Sequence[Row], skip: int) -> None:
    """Each LearnerGroup row's ratio to the plain loop against its floor, one line each."""
    base = rows[0].mean("wall_seconds", skip)
    print(f"\nLearnerGroup / plain loop (load average {os.getloadavg()[0]:.1f}):")
    for row in rows[1:]:
        ratio, floor = base / row.mean("wall_seconds", skip), GUARD.get((row.ranks, row.layout))
        verdict = "" if floor is None else f" (floor {floor:.2f}x: {'ok' if ratio >= floor else 'BELOW'})"
        print(f"  {row.ranks} {row.layout:<6} {ratio:.2f}x{verdict}")


def print_metrics(row: Row, skip: int) -> None:
    """The learner's own per-step metrics, averaged over the measured steps."""
    print(f"\nThe learner's metrics ({row.ranks} ranks, {row.layout}), measured steps' mean:\n")
    table = [[key, f"{row.mean(key, skip):.6g}"] for key in sorted(row.metrics[-1])]
    print_table(["metric", "value"], table, text_columns=1)


# ---------------------------------------------------------------- (b) shared prefixes


def section_prefix(args: argparse.Namespace, folder: Path) -> None:
    """bench/prefix.py's measurement with a small number of prompts."""
    # bench/ is this script's folder, so it is first on sys.path.
    from prefix import BENCH_SHAPE, build_workload, forward_backward, report, warm_up

    shape = {"samples": 8, "response_tokens": 128, "frames": 30, "microbatch": 4}
    options = argparse.Namespace(prompts=args.prefix_prompts, threads=args.threads, **shape)
    model_dir = build_tiny_model(folder / "prefix", seed=0, shape=BENCH_SHAPE)
    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    work = build_workload(model, processor, options)
    warm_up(model, work)
    timings = [
        forward_backward(model, work, layout, precision, options.microbatch)
        for precision in ("fp32", "bf16")
        for layout in ("plain", "shared")
    ]
    print("\n### (b) Shared-prefix forward+backward at the shape of real video RL")
    report(timings, options, sum(p.numel() for p in model.parameters()))


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--prompts", type=int, default=4, help="(a) groups per step")
    add("--samples", type=int, default=8, help="(a, c) responses per prompt (G)")
    add("--response-tokens", type=int, default=64, help="(a) tokens per response")
    add("--frames", type=int, default=16, help="(a) video frames (2 per temporal patch)")
    add("--frame-size", type=int, default=112, help="(a) frame height and width in pixels")
    add("--microbatch-tokens", type=int, default=4096, help="(a) micro-batch token budget")
    add("--kl-coef", type=float, default=1e-2, help="(a, c) KL coefficient; 0: no reference")
    add("--ranks", type=_ints, default=[1, 2], help="(a) LearnerGroup sizes, e.g. 1,2")
    add("--layouts", type=_names, default=["plain", "shared"], help="(a) plain,shared")
    add("--real-layouts", type=_names, default=["plain", "mask", "two_pass", "flex"], help="(c) layouts")
    add("--threads", type=int, default=2, help="(a, b) torch threads of each run, all ranks")
    add("--warmup", type=int, default=2, help="(a) rounds left out of the means")
    add("--steps", type=int, default=5, help="(a) measured rounds")
    add("--prefix-prompts", type=int, default=1, help="(b) groups (~1,000-token prompts)")
    add("--real-prompts", type=int, default=2, help="(c) groups per step")
    add("--real-response-tokens", type=int, default=1024, help="(c) tokens per response")
    add("--real-microbatch-tokens", type=int, default=16384, help="(c) micro-batch budget")
    add("--real-warmup", type=int, default=1, help="(c) steps left out of the means")
    add("--real-steps", type=int, default=3, help="(c) measured steps")
    add(
        "--host-malloc",
        type=host_malloc_settings,
        default=HostMallocSettings(),
        help="(a) e.g. mmap=131072,trim=step",
    )
    add("--quick", action="store_true", help="the tiny section only, with its ratios against the floors")
    for section in ("tiny", "prefix", "real"):
        add(f"--skip-{section}", action="store_true", help=f"leave out the {section} section")
    return parser.parse_args()


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def _names(text: str) -> list[str]:
    return text.split(",")


def main() -> None:
    args = parse_args()
    if args.quick:  # the regression guard: the tiny section alone, and its ratios against the targets
        args.skip_prefix = args.skip_real = True
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as name:
        if not args.skip_tiny:
            section_tiny(args, Path(name))
        if not args.skip_prefix:
            section_prefix(args, Path(name))
        if not args.skip_real:
            from learner_real import section_real

            section_real(args, Path(name))


if __name__ == "__main__":
    main()
