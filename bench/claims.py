"""The seed papers' claims, measured in miniature over seeds, on the demo's task.

Run: `.venv/bin/python bench/claims.py [--seeds 0 1 2] [--out bench_results/claims.json]`
(CPU; nothing is downloaded; see docs/benchmarks.md for the time it takes).

Every seed s starts from the demo's base, the committed tiny model that sees (one build: its
pretraining takes 23 minutes), and trains its own SFT warm start (sample order s) on the demo's
dataset (the same videos for every seed), then trains every arm from that warm start with seed
s (prompt order, rollout sampling) and the demo's GRPO settings:

  dual       GRPO on the full training set, format + IoU + accuracy (the demo's run)
  sft_budget SFT continued on the full training set for the GRPO budget (the same steps and
             prompts per step): the SFT that saw as much as GRPO did
  iou_only   the same, but the content reward is IoU alone (mcq answers earn the format term only)
  acc_only   the same, accuracy alone (tvg answers earn the format term only)
  selected   `vidrl select` on the warm start (K responses per sample), the top half by reward
             variance within each task; GRPO on it
  random     GRPO on a random subset of the training set of the selected size
  tvg_sft    SFT continued on the training set's grounding samples only, for the GRPO budget
             (the same steps and prompts per step), as Temporal-R1's SFT baseline saw grounding
             only and was then asked multiple-choice questions (MVBench)
  tvg_grpo   GRPO on those grounding samples, the same steps and prompts per step

Each arm is evaluated greedily on every held-out sample with the run's own evaluation, and on
the demo's out-of-distribution split (longer videos) with the `vidrl eval` harness. The
claims, each a comparison of two arms in a stated direction (`CLAIMS`), are tabulated with
both arms' mean ± sample standard deviation over the seeds, the difference per seed, and in
how many seeds the claimed direction held (strictly). Nothing is averaged away: a claim that
holds in fewer seeds than were run says so.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from vidrl.cluster.build import ray_session
from vidrl.cluster.config import RunConfig, load_run_config
from vidrl.cluster.eval_job import evaluate_models, load_eval_set
from vidrl.cluster.job import train, warm_start
from vidrl.cluster.select_job import run_select
from vidrl.data.readers import load_samples, write_samples
from vidrl.data.sample import Sample
from vidrl.data.skips import SkipLog
from vidrl.data.synth import SynthResult
from vidrl.demo import DEMO_OVERRIDES, demo_data, distinct_intervals, seeing_base

FORMAT = "{name: format, fn: format_reward, weight: 0.5, kwargs: {grammar: answer_only+task}}"
IOU = "{name: tvg_iou, fn: tvg_iou, tasks: [tvg], kwargs: {style: any}}"
ACCURACY = "{name: mcq_accuracy, fn: mcq_accuracy, tasks: [mcq]}"
REWARDS: dict[str, list[str]] = {
    "iou_only": ["rewards.preset=null", f"rewards.components=[{FORMAT}, {IOU}]"],
    "acc_only": ["rewards.preset=null", f"rewards.components=[{FORMAT}, {ACCURACY}]"],
}
"""The single-reward arms: the vidrl preset (think off) without one of its content terms."""


class Claim(NamedTuple):
    """`a` beats `b` on `metric` (a key of `arm_metrics`) when (a - b) * sign > 0."""

    claim: str
    metric: str
    a: str
    b: str
    sign: int = 1


CLAIMS: tuple[Claim, ...] = (
    Claim("1. GRPO beats its SFT warm start", "mIoU", "dual", "sft"),
    Claim("1. GRPO beats its SFT warm start", "mcq_accuracy", "dual", "sft"),
    Claim("1. GRPO beats its SFT warm start, out of distribution", "ood_mIoU", "dual", "sft"),
    Claim("1. GRPO beats SFT of the same budget", "mIoU", "dual", "sft_budget"),
    Claim("1. GRPO beats SFT of the same budget, out of distribution", "ood_mIoU", "dual", "sft_budget"),
    Claim("2. RL keeps mcq validity, SFT loses it", "invalid_option", "tvg_sft", "tvg_grpo"),
    Claim("2. RL keeps mcq validity, SFT loses it", "mcq_accuracy", "tvg_grpo", "tvg_sft"),
    Claim("3. variance-aware selection beats random", "mIoU", "selected", "random"),
    Claim("3. variance-aware selection beats random", "mcq_accuracy", "selected", "random"),
    Claim("3. selected half vs the full set", "mIoU", "selected", "dual"),
    Claim("4. dual reward vs IoU alone", "mIoU", "dual", "iou_only"),
    Claim("4. dual reward vs IoU alone", "mcq_accuracy", "dual", "iou_only"),
    Claim("4. dual reward vs accuracy alone", "mIoU", "dual", "acc_only"),
    Claim("4. dual reward vs accuracy alone", "mcq_accuracy", "dual", "acc_only"),
)


def base_config(root: Path, model: Path, data: SynthResult, seed: int, *extra: str) -> RunConfig:
    return load_run_config(
        None,
        [
            *DEMO_OVERRIDES,
            f"model_path={model}",
            f"data.train_path={data.train_yaml}",
            f"data.eval_path={data.test_yaml}",
            f"output_dir={root / 'runs'}",
            f"seed={seed}",
            f"rollout.seed={seed}",
            "trainer.checkpoint_every_steps=0",
            "trainer.progress_bar=false",
            "trainer.tensorboard=false",
            *extra,
        ],
    )


def arm_metrics(evaluation: dict[str, Any], ood: dict[str, Any], ood_intervals: int) -> dict[str, float]:
    """The numbers the claims compare (percent; `reward` is the mean total): held-out from the
    run's evaluation, `ood_*` from the harness's summary on the out-of-distribution split, where
    `ood_intervals` counts the different intervals the arm answered (few: it answers from the
    question alone)."""
    return {
        "mIoU": evaluation["tvg"]["mIoU"],
        "R1@0.5": evaluation["tvg"]["R1@0.5"],
        "mcq_accuracy": evaluation["mcq"]["accuracy"],
        "invalid_option": evaluation["mcq"]["invalid_option"],
        "reward": evaluation["reward"],
        "ood_mIoU": ood["tvg"]["mIoU"],
        "ood_mcq_accuracy": ood["mcq"]["accuracy"],
        "ood_intervals": ood_intervals,
    }


def quota_policy(samples: Sequence[Sample], keep_fraction: float = 0.5) -> str:
    """selection.max_per_task keeping `keep_fraction` of each task (0/1 and IoU variances
    differ in scale, so one ranking over both tasks would fill up with mcq)."""
    counts = Counter(s.task for s in samples)
    quotas = ", ".join(f"{task}: {max(1, round(keep_fraction * n))}" for task, n in counts.items())
    return f"selection.max_per_task={{{quotas}}}"


def run_seed(root: Path, data: SynthResult, ood: Sequence[Sample], seed: int) -> dict[str, dict[str, float]]:
    """Every arm of one seed; arm -> its numbers (`sft` is the warm start)."""
    root = root / f"seed{seed}"
    model = seeing_base(root / "model")
    full = load_samples(data.train_yaml, load_run_config(None, list(DEMO_OVERRIDES)).data, SkipLog())
    base = base_config(root, model, data, seed, "run_name=sft", quota_policy(full))
    sft = warm_start(base)
    steps = base.trainer.steps
    # SFT of the same budget: as many steps, on as many prompts per step, as GRPO had.
    same_budget = [
        "trainer.steps=0",
        f"trainer.sft_steps={steps}",
        f"trainer.sft_prompts_per_step={base.trainer.prompts_per_step}",
    ]
    results: dict[str, dict[str, Any]] = {}
    finals: dict[str, str] = {"sft": sft}

    def run_arm(name: str, train_path: Path, *extra: str) -> None:
        overrides = [f"run_name={name}", f"data.train_path={train_path}", "trainer.sft_steps=0"]
        summary = train(base_config(root, Path(sft), data, seed, *overrides, *extra))
        if "checkpoint" in summary:  # a GRPO arm: its final model, evaluated after
            results[name], finals[name] = summary["eval_after"], f"{summary['checkpoint']}/hf"
        else:  # an SFT arm: the model its warm start wrote, evaluated before (no GRPO step)
            results[name], finals[name] = summary["eval_before"], str(root / "runs" / name / "sft" / "hf")
        if name == "dual":
            results["sft"] = summary["eval_before"]

    run_arm("dual", data.train_yaml)
    run_arm("sft_budget", data.train_yaml, *same_budget)
    for name, rewards in REWARDS.items():
        run_arm(name, data.train_yaml, *rewards)
    selection = run_select(base, root / "selection", model_path=sft, progress=False)
    chosen = load_samples(selection.selected, base.data)
    randomly = sorted(random.Random(seed).sample(full, len(chosen)), key=lambda s: s.id)
    run_arm("selected", selection.selected)
    run_arm("random", write_samples(root / "random.jsonl", randomly))
    tvg = write_samples(root / "tvg.jsonl", [s for s in full if s.task == "tvg"])
    run_arm("tvg_grpo", tvg)
    run_arm("tvg_sft", tvg, *same_budget)
    ood_results = evaluate_models(base, finals, ood)
    return {
        arm: arm_metrics(
            results[arm],
            next(iter(ood_results[arm].values())).summary(),
            distinct_intervals(ood_results[arm]),
        )
        for arm in finals
    }


def compare(claim: Claim, by_seed: dict[int, dict[str, dict[str, float]]]) -> dict[str, Any]:
    """One claim's row: both arms' values per seed, their means and spreads, how often it held."""
    a = [arms[claim.a][claim.metric] for arms in by_seed.values()]
    b = [arms[claim.b][claim.metric] for arms in by_seed.values()]
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    return {
        **claim._asdict(),
        "a_values": a,
        "b_values": b,
        "differences": diffs,
        "held": sum((d * claim.sign) > 0 for d in diffs),
        "seeds": len(diffs),
    }


def mean_sd(values: Sequence[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.1f} ± {spread:.1f}"


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    print("| claim | metric | A | B | A mean ± sd | B mean ± sd | A − B per seed | held |")
    print("|---|---|---|---|---:|---:|---|---:|")
    for r in rows:
        diffs = ", ".join(f"{d:+.1f}" for d in r["differences"])
        direction = "" if r["sign"] > 0 else " (lower is better for A)"
        print(
            f"| {r['claim']} | {r['metric']}{direction} | {r['a']} | {r['b']} | {mean_sd(r['a_values'])} "
            f"| {mean_sd(r['b_values'])} | {diffs} | {r['held']}/{r['seeds']} |"
        )


def print_arms(by_seed: dict[int, dict[str, dict[str, float]]]) -> None:
    """Every arm's held-out numbers, mean ± sd over the seeds."""
    arms = next(iter(by_seed.values()))
    metrics = list(next(iter(arms.values())))
    print("\n| arm | " + " | ".join(metrics) + " |")
    print("|---|" + "---:|" * len(metrics))
    for arm in arms:
        cells = [mean_sd([seeds[arm][m] for seeds in by_seed.values()]) for m in metrics]
        print(f"| {arm} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="bench_results/claims", help="working folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="bench_results/claims.json")
    args = parser.parse_args()
    root = Path(args.root).resolve()
    data, ood_data = demo_data(root, seed=0)
    started = time.perf_counter()
    by_seed: dict[int, dict[str, dict[str, float]]] = {}
    cfg = load_run_config(None, list(DEMO_OVERRIDES))
    ood, _ = load_eval_set(cfg, str(ood_data.test_yaml))
    with ray_session(cfg):  # one Ray cluster for every arm
        for seed in args.seeds:
            by_seed[seed] = run_seed(root, data, ood, seed)
    rows = [compare(claim, by_seed) for claim in CLAIMS]
    result = {"seconds": round(time.perf_counter() - started, 1), "arms": by_seed, "claims": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print_table(rows)
    print_arms(by_seed)
    print(f"\n{len(args.seeds)} seeds in {result['seconds']} s")


if __name__ == "__main__":
    main()
