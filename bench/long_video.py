"""Long video in the learner: per-rank memory and step time against frames per video, with the
tokens split across ranks (sequence parallelism) or not, and the frozen vision tower.

    .venv/bin/python bench/long_video.py [--frames 64 128 ... 1024] [--budget-gb 4] [--out F.json]

The real video path: one synthetic mp4 (vidrl.data.synth, H.264) decoded by decord at each frame
count (vidrl.data.video: the same fps, more frames, 112 x 112 each), through the model's own
processor (vidrl.cluster.inputs.LearnerInputs), into one GRPO group of G responses on a
2-rank LearnerGroup in local Ray (FSDP2 over gloo):

    S = 1   the ranks are 2 data-parallel ranks: the group runs on one of them (the other runs the
            idle group), which holds the whole sequence, video included
    S = 2   one sequence-parallel group: each rank holds half of every layer's tokens and encodes
            half of the frames (vidrl.learner.sequence_parallel)

A model where the sequence's cost shows: the Qwen2.5-VL architecture with a 512-wide, 8-layer text
model and a 256-wide, 4-block vision tower (about 30M parameters), float32, no activation
checkpointing (so activations, which grow with the frames, dominate). Peak host memory is each
rank's peak resident set during the step (vidrl.learner.memory); the table gives the fullest rank.

Each S scans the frame counts upwards until its first step over the per-rank budget; the longest
video within the budget is the last point under it (and, interpolated, where the line to the next
point crosses it). Then, at each S's longest video within the budget: the step time with
`learner.freeze_vision` off and on (old log-probs recomputed and KL on, so a step runs the
policy, old and reference passes: the tower runs three times per video unfrozen, once frozen).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_utils import host_malloc_settings, print_table

from vidrl.data.tiny import TinyQwenShape, build_tiny_model

GB = 1e9
SIDE = 112  # pixels: 4 x 4 merged tokens per temporal patch (2 frames)
FPS = 4
SHAPE = TinyQwenShape(
    text_hidden_size=512,
    text_layers=8,
    text_heads=8,
    text_kv_heads=2,
    text_intermediate_size=1536,
    vision_depth=4,
    vision_hidden_size=256,
    vision_heads=4,
    vision_intermediate_size=768,
    max_positions=65_536,
    min_pixels_per_frame=SIDE * SIDE,
    max_pixels_per_frame=SIDE * SIDE,
)


def long_video(root: Path, seconds: int) -> Path:
    """One synthetic mp4 of `seconds` at FPS frames per second (shapes moving on noise)."""
    from vidrl.data.synth import plan_scene, write_video

    scene = plan_scene(
        seed=0, index=0, width=SIDE, height=SIDE, fps=FPS, min_seconds=seconds, max_seconds=seconds
    )
    path = root / "long.mp4"
    write_video(path, scene)
    return path


def video_group(model_dir: Path, video: Path, frames: int, responses: int, response_tokens: int) -> Any:
    """A GRPO group on `frames` frames of `video`, decoded and processed as a run does it."""
    from vidrl.cluster.inputs import LearnerInputs
    from vidrl.data.prompts import PromptConfig, render_prompt
    from vidrl.data.sample import Sample
    from vidrl.data.video import VideoConfig, decode_clip
    from vidrl.learner.types import TrainGroup

    video_cfg = VideoConfig(
        fps=FPS,
        max_frames=frames,
        min_frames=frames,
        min_pixels_per_frame=SIDE * SIDE,
        max_pixels_per_frame=SIDE * SIDE,
        max_total_pixels=frames * SIDE * SIDE,
        decode_workers=0,
    )
    inputs = LearnerInputs(str(model_dir), video_cfg, PromptConfig())
    clip = decode_clip(video, inputs.video)
    if clip.num_frames != frames:
        raise RuntimeError(f"decoded {clip.num_frames} frames, not {frames}")
    question = "when does the red circle move?"
    sample = Sample("long", "tvg", str(video), question, duration=clip.duration, timestamps=((1.0, 2.0),))
    ids, vision = inputs.vision(render_prompt(sample, PromptConfig(), inputs.processor), clip)
    rng = np.random.default_rng(frames)
    return TrainGroup(
        prompt_ids=ids.astype(np.int64),
        responses=tuple(rng.integers(10, 300, response_tokens).astype(np.int64) for _ in range(responses)),
        advantages=rng.normal(size=responses).astype(np.float32),
        old_logprobs=tuple(np.full(response_tokens, -5.0, dtype=np.float32) for _ in range(responses)),
        vision=vision,
    )


def one_config(
    model_dir: Path, group: Any, size: int, freeze: bool, steps: int, kl: bool, host_malloc: Any
) -> dict[str, float]:
    from vidrl.learner.config import LearnerConfig
    from vidrl.learner.group import LearnerGroup
    from vidrl.learner.loss_config import LossConfig

    cfg = LearnerConfig(
        num_ranks=2,
        sequence_parallel_size=size,
        freeze_vision=freeze,
        lr=1e-5,
        max_tokens_per_microbatch=1 << 20,
        old_logprobs="recompute" if kl else "rollout",
        loss=LossConfig(kl_coef=0.01 if kl else 0.0),
        host_malloc=host_malloc,
    )
    learner = LearnerGroup(str(model_dir), cfg, seed=0)
    try:
        metrics = [learner.train_step([group]).metrics for _ in range(steps)]
    finally:
        learner.shutdown()
    measured = metrics[1:] or metrics  # the first step pays one-time costs
    return {
        "peak_host_gb": max(m["peak_host_bytes"] for m in metrics) / GB,
        "step_seconds": float(np.mean([m["step_seconds"] for m in measured])),
        "loss": metrics[0]["loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--frames", type=int, nargs="+", default=[64, 128, 256, 384, 512, 640, 768, 896, 1024]
    )
    parser.add_argument("--budget-gb", type=float, default=4.0, help="per-rank host memory budget")
    parser.add_argument("--responses", type=int, default=4)
    parser.add_argument("--response-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--host-malloc", type=host_malloc_settings, default=None, help="e.g. mmap=131072")
    parser.add_argument("--skip-freeze", action="store_true", help="leave out the freeze_vision runs")
    args = parser.parse_args()
    if args.host_malloc is None:
        from vidrl.learner.config import HostMallocSettings

        args.host_malloc = HostMallocSettings()
    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            model_dir = build_tiny_model(root / "model", seed=0, shape=SHAPE)
            video = long_video(root, seconds=max(args.frames) // FPS + 2)
            groups: dict[int, Any] = {}
            over = {1: False, 2: False}  # each S scans up to its first point over the budget
            for frames in args.frames:
                if all(over.values()):
                    break
                groups[frames] = video_group(model_dir, video, frames, args.responses, args.response_tokens)
                tokens = len(groups[frames].prompt_ids) + args.responses * args.response_tokens
                for size in (1, 2):
                    if over[size]:
                        continue
                    started = time.perf_counter()
                    row = one_config(
                        model_dir, groups[frames], size, False, args.steps, False, args.host_malloc
                    )
                    row |= {"frames": frames, "S": size, "tokens": tokens, "freeze_vision": False}
                    row["wall_seconds"] = time.perf_counter() - started
                    over[size] = row["peak_host_gb"] > args.budget_gb
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            for size in () if args.skip_freeze else (1, 2):  # the frozen tower at the longest fitting video
                fitting = [
                    r["frames"] for r in rows if r["S"] == size and r["peak_host_gb"] <= args.budget_gb
                ]
                if not fitting:
                    continue
                for freeze in (False, True):
                    row = one_config(
                        model_dir, groups[max(fitting)], size, freeze, args.steps + 1, True, args.host_malloc
                    )
                    row |= {"frames": max(fitting), "S": size, "freeze_vision": freeze, "kl": True}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        ray.shutdown()
    report(rows, args)


def longest_within(points: list[tuple[int, float]], budget: float) -> tuple[int, float | None]:
    """The most frames measured within `budget` GB, and where the line between it and the next
    measured point (the first over the budget) crosses the budget (None: no such point)."""
    fitting = [(frames, peak) for frames, peak in points if peak <= budget]
    if not fitting:
        return 0, None
    frames, peak = max(fitting)
    after = [(f, p) for f, p in points if f > frames]
    if not after:
        return frames, None
    next_frames, next_peak = min(after)
    return frames, frames + (budget - peak) * (next_frames - frames) / (next_peak - peak)


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    load = os.getloadavg()
    scan = [r for r in rows if "kl" not in r]
    print(
        f"\n## Long video on 2 learner ranks (load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f})\n"
    )
    table = []
    for frames in sorted({r["frames"] for r in scan}):
        by_size = {r["S"]: r for r in scan if r["frames"] == frames}
        one, two = by_size.get(1), by_size.get(2)

        def cell(row: dict[str, Any] | None, key: str, form: str) -> str:
            return "-" if row is None else format(row[key], form)

        ratio = f"{two['peak_host_gb'] / one['peak_host_gb']:.2f}" if one and two else "-"
        speedup = f"{one['step_seconds'] / two['step_seconds']:.2f}x" if one and two else "-"
        tokens = (one or two or {}).get("tokens", 0)
        table.append(
            [
                str(frames),
                str(tokens),
                cell(one, "peak_host_gb", ".2f"),
                cell(two, "peak_host_gb", ".2f"),
                ratio,
                cell(one, "step_seconds", ".1f"),
                cell(two, "step_seconds", ".1f"),
                speedup,
            ]
        )
    header = [
        "frames",
        "tokens",
        "peak/rank S=1 GB",
        "peak/rank S=2 GB",
        "S=2 / S=1",
        "step S=1 s",
        "step S=2 s",
    ]
    print_table([*header, "S=1 / S=2 time"], table, 1)
    fits = {}
    for size in (1, 2):
        points = sorted((r["frames"], r["peak_host_gb"]) for r in scan if r["S"] == size)
        fits[size] = longest_within(points, args.budget_gb)
    print(
        f"\nLongest video within {args.budget_gb:g} GB per rank (measured; interpolated to the next point):"
    )
    for size, (measured, line) in fits.items():
        extra = "" if line is None else f", about {line:.0f} between it and the next point"
        print(f"  S = {size}: {measured} frames{extra}")
    if fits[1][0]:
        print(f"  S=2 / S=1, measured points: {fits[2][0] / fits[1][0]:.2f}x", end="")
        print(f"; interpolated: {fits[2][1] / fits[1][1]:.2f}x" if fits[1][1] and fits[2][1] else "")
    frozen = [r for r in rows if r.get("kl")]
    print(
        "\n## freeze_vision at each S's longest video within the budget (old log-probs recomputed, KL on)\n"
    )
    table = []
    for size in (1, 2):
        by = {r["freeze_vision"]: r for r in frozen if r["S"] == size}
        if len(by) < 2:
            continue
        table.append(
            [
                str(size),
                str(by[True]["frames"]),
                f"{by[False]['step_seconds']:.1f}",
                f"{by[True]['step_seconds']:.1f}",
                f"{by[False]['step_seconds'] / by[True]['step_seconds']:.2f}x",
                f"{by[False]['peak_host_gb']:.2f}",
                f"{by[True]['peak_host_gb']:.2f}",
            ]
        )
    header = [
        "S",
        "frames",
        "step, tower trained s",
        "step, frozen s",
        "speedup",
        "peak GB",
        "peak frozen GB",
    ]
    print_table(header, table, 1)
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "load": load}, indent=1))


if __name__ == "__main__":
    main()
