"""Data efficiency of variance-aware selection (Temporal-R1's second claim), on the synthetic task.

Run: `.venv/bin/python bench/data_efficiency.py [--steps 16] [--out bench_results/data_efficiency.json]`
(CPU, about 5 minutes on a quiet machine; nothing is downloaded).

1. synthesize the dataset and build the tiny model; one SFT warm start (the demo's settings);
2. `vidrl select` on the training set with the warm-started model (K responses per sample):
   the default filters (variance > 1e-4 for tvg, accuracy strictly between 0 and 1 for mcq),
   then the highest-variance `--keep-fraction` within each task (selection.max_per_task), or
   with `--overall` in one ranking over all tasks (selection.top_k);
3. GRPO from the same warm start, the same steps, prompts per step and seed, on
   (a) the selected subset, (b) a random subset of the same size, (c) the full training set;
4. held-out mIoU / R1@0.5 / mcq accuracy of each (greedy), in one table.

All arms run in one process on one local Ray cluster, one after the other. One seed: the
table reports what was measured, not a significance test.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from vidrl.cluster.build import ray_session
from vidrl.cluster.config import RunConfig, load_run_config
from vidrl.cluster.job import train, warm_start
from vidrl.cluster.select_job import run_select
from vidrl.data.config import DataConfig
from vidrl.data.readers import load_samples, write_samples
from vidrl.data.skips import SkipLog
from vidrl.data.synth import synthesize
from vidrl.data.tiny import build_tiny_model
from vidrl.demo import DEMO_OVERRIDES


def config(root: Path, model: Path, train_path: Path, test_path: Path, *extra: str) -> RunConfig:
    return load_run_config(
        None,
        [
            *DEMO_OVERRIDES,
            f"model_path={model}",
            f"data.train_path={train_path}",
            f"data.eval_path={test_path}",
            f"output_dir={root / 'runs'}",
            "trainer.eval_max_samples=64",
            "trainer.checkpoint_every_steps=0",
            "trainer.progress_bar=false",
            "trainer.tensorboard=false",
            *extra,
        ],
    )


def arm_row(name: str, size: int, summary: dict[str, Any], seconds: float) -> dict[str, Any]:
    after, before = summary["eval_after"], summary["eval_before"]
    return {
        "arm": name,
        "train_samples": size,
        "mIoU_before": before["tvg"]["mIoU"],
        "mIoU_after": after["tvg"]["mIoU"],
        "R1@0.5_after": after["tvg"]["R1@0.5"],
        "mcq_acc_after": after.get("mcq", {}).get("accuracy", float("nan")),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="bench_results/data_efficiency", help="working folder")
    parser.add_argument("--steps", type=int, default=16, help="GRPO steps of every arm")
    parser.add_argument("--videos", type=int, default=48, help="synthetic videos")
    parser.add_argument(
        "--keep-fraction",
        type=float,
        default=0.5,
        help="selection.top_k as a fraction of the training set (the highest-variance samples kept)",
    )
    parser.add_argument(
        "--overall",
        action="store_true",
        help="rank all tasks together (top_k), not per task (0/1 and IoU variances differ in scale)",
    )
    parser.add_argument("--out", default="bench_results/data_efficiency.json")
    args = parser.parse_args()
    root = Path(args.root).resolve()
    data = synthesize(root / "data", num_videos=args.videos, seed=0)
    model = build_tiny_model(root / "model", seed=0)
    full = load_samples(data.train_yaml, DataConfig(), SkipLog())
    if args.overall:
        policy = f"selection.top_k={max(1, round(args.keep_fraction * len(full)))}"
    else:
        counts = Counter(s.task for s in full)
        quotas = ", ".join(f"{task}: {max(1, round(args.keep_fraction * n))}" for task, n in counts.items())
        policy = f"selection.max_per_task={{{quotas}}}"
    base = config(root, model, data.train_yaml, data.test_yaml, "run_name=sft", policy)
    with ray_session(base):
        rows, selection, select_seconds = run_arms(root, data, model, base, args.steps)
    result = {
        "steps": args.steps,
        "prompts_per_step": base.trainer.prompts_per_step,
        "select_seconds": round(select_seconds, 1),
        "selection": json.loads(selection.summary.read_text()),
        "arms": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print_table(rows)


def run_arms(
    root: Path, data: Any, model: Path, base: RunConfig, steps: int
) -> tuple[list[dict[str, Any]], Any, float]:
    """SFT warm start, selection, then the three GRPO arms; (rows, selection output, select seconds)."""
    sft = Path(warm_start(base))

    started = time.perf_counter()
    selection = run_select(base, root / "selection", model_path=str(sft), progress=False)
    select_seconds = time.perf_counter() - started
    full = load_samples(data.train_yaml, base.data, SkipLog())
    chosen = load_samples(selection.selected, base.data)
    rng = random.Random(0)
    randomly = sorted(rng.sample(full, len(chosen)), key=lambda s: s.id)
    subsets = {
        "selected (variance)": selection.selected,
        "random, same size": write_samples(root / "random.jsonl", randomly),
        "full": data.train_yaml,
    }
    sizes = {"selected (variance)": len(chosen), "random, same size": len(randomly), "full": len(full)}
    rows = []
    for index, (name, path) in enumerate(subsets.items()):
        cfg = config(
            root,
            sft,
            path,
            data.test_yaml,
            f"run_name=arm{index}",
            "trainer.sft_steps=0",
            f"trainer.steps={steps}",
        )
        began = time.perf_counter()
        rows.append(arm_row(name, sizes[name], train(cfg), time.perf_counter() - began))
    return rows, selection, select_seconds


def print_table(rows: list[dict[str, Any]]) -> None:
    print("| training set | samples | mIoU before | mIoU after | R1@0.5 after | mcq acc after |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['arm']} | {r['train_samples']} | {r['mIoU_before']:.1f} | {r['mIoU_after']:.1f} "
            f"| {r['R1@0.5_after']:.1f} | {r['mcq_acc_after']:.1f} |"
        )


if __name__ == "__main__":
    main()
