"""The embedded default job (`make demo`): the whole pipeline on synthetic videos and a tiny
model, on the local machine, with no downloads.

1. synthesize the dataset (mp4 videos with known event intervals, Temporal-R1 records) and an
   out-of-distribution split of longer videos;
2. copy the tiny Qwen2.5-VL that sees (`vidrl tiny-model --pretrain`'s committed build);
3. score a spread of responses (perfect, shifted, reversed, no reasoning, garbage) with every
   reward preset: what each reward pays for;
4. train: SFT warm start (so the tiny model emits the answer format), then GRPO with a vLLM
   rollout worker, the reward actor pool and a 2-rank FSDP2 learner;
5. evaluate the base, the SFT warm start and the final GRPO checkpoint on every held-out and
   every out-of-distribution video with the `vidrl eval` harness (one rollout pool per split:
   each model's weights are pushed into the engine that evaluated the one before), all in the
   Ray cluster that trained;
6. write the plots and print a summary: the training curve's ends, whether the run learned
   visibly (`learning_check`), and the side-by-side evaluation table.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from vidrl.data.answers import render_answer, render_response
from vidrl.data.config import DataConfig
from vidrl.data.readers import load_samples
from vidrl.data.sample import Sample
from vidrl.data.skips import SkipLog
from vidrl.rewards.config import RewardsConfig, build_reward
from vidrl.rewards.types import RewardInput

if TYPE_CHECKING:
    from vidrl.cluster.config import RunConfig
    from vidrl.data.synth import SynthResult

CURVE_NAMES = {"reward/mean": "reward", "response/length_mean": "length (tokens)"}
"""How the summary names a curve; reward components go by their own names (tvg_iou, ...)."""
CurveEnds = dict[str, float]
"""One logged curve's ends: first / last (the first and last step), first_mean / last_mean
(means of the first and last `vidrl.cluster.plots.WINDOW` steps)."""

log = logging.getLogger(__name__)

DEMO_VIDEOS = 80
DEMO_TEST_FRACTION = 0.6
"""32 training videos (107 questions) and 48 held out (84 grounding, 70 multiple choice): enough
held-out answers per task that a few of them do not swing the table."""
OOD_VIDEOS = 30
OOD_TEST_FRACTION = 0.9
OOD_SECONDS = (20, 32)
OOD_SEED = 3_000
"""The out-of-distribution split: videos of 20-32 s where training saw 8-16 s (the same 8
frames, so each covers 2-3 times as long), as Temporal-R1 tests on ActivityNet after training
on Charades-STA. Its test part (27 videos) is evaluated; its scenes are planned from seed
OOD_SEED + the demo's seed, apart from the training and held-out ones."""
REWARD_GAIN = 0.1
"""How far the training reward's mean over the last steps must rise above the first steps'
for the demo to call its run a visible learner (`learning_check`)."""
SCORE_NOISE = 0.1
"""How far a task's own score may fall between the first and last steps' means before the
demo calls it falling: the spread of the difference of two 5-step means of multiple-choice
accuracy at chance (about 3 questions x 8 answers a step) is about 0.065."""
PRESETS = ("vidrl", "temporal_r1", "videochat_r1")


@dataclass
class DemoReport:
    """What the demo did, where it wrote it, and the numbers it measured."""

    out: Path
    steps: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)

    def did(self, what: str) -> None:
        log.info(what)
        self.steps.append(what)


DEMO_OVERRIDES = (
    # A tiny model on 2 cores: short answers without reasoning, few frames, small batches.
    "prompt.think=false",
    "video.fps=2.0",
    "video.max_frames=8",
    "video.max_pixels_per_frame=12544",
    "rollout.num_workers=1",
    "rollout.cpus_per_worker=0.5",
    "rollout.samples_per_prompt=8",
    "rollout.max_response_tokens=40",
    "rollout.max_model_len=1024",
    "rollout.dtype=float32",
    "rollout.kv_cache_bytes=268435456",
    "learner.num_ranks=2",
    "learner.cpus_per_rank=0.5",
    "learner.lr=1e-3",
    "learner.loss.kl_coef=0.0",
    "cluster.local_num_cpus=2",
    "trainer.steps=40",
    "trainer.prompts_per_step=8",
    "trainer.sft_steps=80",
    "trainer.sft_lr=3e-3",
    "trainer.sft_prompts_per_step=16",
    "trainer.eval_max_samples=256",  # every held-out question (154) when evaluated in the run
    "trainer.checkpoint_every_steps=10",
)


def run_demo(out: Path, seed: int = 0, train: bool = True) -> DemoReport:
    from vidrl.cluster.pretrain import SEEING_MODEL

    out = out.resolve()
    report = DemoReport(out=out)
    started = time.perf_counter()
    synth, ood = demo_data(out, seed)
    report.did(
        f"synthesized {DEMO_VIDEOS} videos with questions into {synth.root}, and "
        f"{OOD_VIDEOS} longer ones ({OOD_SECONDS[0]}-{OOD_SECONDS[1]} s) into {ood.root}"
    )
    model_dir = seeing_base(out / "model")
    report.did(f"copied the tiny Qwen2.5-VL that sees ({SEEING_MODEL.name}) into {model_dir}")
    samples = load_samples(synth.train_yaml, DataConfig(), SkipLog())
    rows = score_spread(samples[:12])
    scored = out / "scored.jsonl"
    scored.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    report.did(f"scored {len(rows)} responses with presets {', '.join(PRESETS)} into {scored}")
    report.numbers["mean_reward_by_kind"] = _mean_by_kind(rows)
    if train:
        splits = {"held-out": synth.test_yaml, "out-of-distribution": ood.test_yaml}
        _train(report, model_dir, synth.train_yaml, splits, seed)
    report.numbers["seconds"] = round(time.perf_counter() - started, 1)
    (out / "summary.json").write_text(json.dumps(report.numbers, indent=2) + "\n", encoding="utf-8")
    print_summary(report)
    return report


def demo_data(out: Path, seed: int) -> tuple[SynthResult, SynthResult]:
    """The demo's dataset (training and held-out videos) and its out-of-distribution split,
    drawn with the seeing model's shape sizes, under `out`."""
    from vidrl.cluster.pretrain import SEEING_RADIUS
    from vidrl.data.synth import synthesize

    synth = synthesize(
        out / "data",
        num_videos=DEMO_VIDEOS,
        seed=seed,
        test_fraction=DEMO_TEST_FRACTION,
        shape_radius=SEEING_RADIUS,
    )
    ood = synthesize(
        out / "data_ood",
        num_videos=OOD_VIDEOS,
        seed=OOD_SEED + seed,
        test_fraction=OOD_TEST_FRACTION,
        min_seconds=OOD_SECONDS[0],
        max_seconds=OOD_SECONDS[1],
        shape_radius=SEEING_RADIUS,
    )
    return synth, ood


def seeing_base(folder: Path) -> Path:
    """A copy of the committed tiny model that sees (the runs write beside their model, never
    into the package); `folder`."""
    from vidrl.cluster.pretrain import SEEING_MODEL

    shutil.copytree(SEEING_MODEL, folder, dirs_exist_ok=True)
    return folder


def demo_config(model_dir: Path, train_yaml: Path, out: Path, seed: int) -> RunConfig:
    """The demo's run config: DEMO_OVERRIDES on the data and model it just wrote."""
    from vidrl.cluster.config import load_run_config

    overrides = [
        *DEMO_OVERRIDES,
        f"model_path={model_dir}",
        f"data.train_path={train_yaml}",
        # Evaluated afterwards by the `vidrl eval` harness, not inside the run (the same greedy
        # answers twice would only cost time).
        "data.eval_path=null",
        f"output_dir={out / 'runs'}",
        "run_name=grpo",
        f"seed={seed}",
        f"rollout.seed={seed}",
    ]
    return load_run_config(None, overrides)


def _train(report: DemoReport, model_dir: Path, train_yaml: Path, splits: dict[str, Path], seed: int) -> None:
    from vidrl.cluster.build import ray_session
    from vidrl.cluster.job import train
    from vidrl.cluster.plots import plot_run, read_metrics

    cfg = demo_config(model_dir, train_yaml, report.out, seed)
    with ray_session(cfg):  # one Ray cluster for training and evaluation
        train(cfg)
        report.did(
            f"trained: SFT warm start ({cfg.trainer.sft_steps} steps), then GRPO "
            f"({cfg.trainer.steps} steps) with 1 vLLM rollout worker, the reward pool and a "
            f"2-rank FSDP2 learner; run directory {cfg.run_dir}"
        )
        _evaluate(report, cfg, model_dir, splits)
    curve = training_curve(read_metrics(cfg.run_dir))
    report.numbers["training_curve"] = curve
    report.numbers["learned"], report.numbers["learning_check"] = learning_check(curve)
    report.numbers["plots"] = [str(p) for p in plot_run(cfg.run_dir)]
    report.did(f"wrote plots into {cfg.run_dir / 'plots'}")


def _evaluate(report: DemoReport, cfg: RunConfig, base: Path, splits: dict[str, Path]) -> None:
    """The base, the SFT warm start and the final GRPO model through the `vidrl eval` harness,
    on every sample of each split (name -> data yaml)."""
    from vidrl.cluster.eval_job import evaluate_models, load_eval_set, write_eval
    from vidrl.cluster.job import latest_checkpoint
    from vidrl.evaluation.compare import format_table
    from vidrl.evaluation.metrics import blind_best

    final = latest_checkpoint(cfg)
    if final is None:
        raise RuntimeError(f"{cfg.run_dir}: training left no checkpoint to evaluate")
    models = {"base": str(base), "sft": str(cfg.run_dir / "sft" / "hf"), "grpo": str(final / "hf")}
    columns = {"base": "base", "sft": "after SFT", "grpo": "after GRPO"}
    for split, data in splits.items():
        samples, _ = load_eval_set(cfg, str(data))  # every sample of the split
        results = evaluate_models(cfg, models, samples)
        where = report.out / "eval" / split.replace("-", "_")
        summaries = {
            name: write_eval(where / name, by_variant, {"model": models[name], "data": str(data)})
            for name, by_variant in results.items()
        }
        counts = Counter(s.task for s in samples)
        per_task = ", ".join(f"{n} {task}" for task, n in sorted(counts.items(), reverse=True))
        report.did(f"evaluated the base, SFT and GRPO models (greedy, {split}: {per_task}) into {where}")
        grounding = [s for s in samples if s.task == "tvg"]
        ceiling, interval = blind_best([s.interval for s in grounding], max(s.duration for s in grounding))
        numbers = report.numbers.setdefault("evaluation", {})
        numbers[split] = {
            "samples": dict(counts),
            "blind_best": {"mIoU": round(ceiling, 1), "interval": list(interval)},
            "distinct_intervals": {
                name: distinct_intervals(by_variant) for name, by_variant in results.items()
            },
            "summaries": {name: s["variants"] for name, s in summaries.items()},
            "table": format_table({columns[name]: s for name, s in summaries.items()}),
        }


def distinct_intervals(by_variant: dict[str, Any]) -> int:
    """How many different intervals a model answered to the split's grounding questions: one
    answer for every video means it does not answer from the video, whatever its mIoU."""
    return len(
        {
            tuple(row["parsed"])
            for result in by_variant.values()
            for row in result.rows()
            if row["task"] == "tvg" and row["parsed"] is not None
        }
    )


def training_curve(rows: list[dict[str, Any]]) -> dict[str, CurveEnds]:
    """The ends of the reward, of each reward component and of the response length."""
    from vidrl.cluster.plots import ends, series, task_score_keys

    curve: dict[str, CurveEnds] = {}
    for key in ("reward/mean", *task_score_keys(rows), "response/length_mean"):
        _, values = series(rows, key)
        windows = ends(rows, key)
        if windows is not None:
            first_mean, last_mean = windows
            curve[key] = {
                "first": values[0],
                "last": values[-1],
                "first_mean": first_mean,
                "last_mean": last_mean,
            }
    return curve


def learning_check(curve: dict[str, CurveEnds]) -> tuple[bool, str]:
    """Whether the run visibly learned, and why in one line: the training reward's last-window
    mean at least REWARD_GAIN above its first-window mean, and no task's own score (IoU,
    accuracy; the format term is shared by all tasks) lower at the end than at the start by
    more than SCORE_NOISE."""
    if "reward/mean" not in curve:
        return False, "too few GRPO steps for two windows of the curve"
    reward = curve["reward/mean"]
    gain = reward["last_mean"] - reward["first_mean"]
    tasks = [k for k in curve if k not in ("reward/mean", "reward/format", "response/length_mean")]
    fell = [k.split("/", 1)[1] for k in tasks if curve[k]["last_mean"] < curve[k]["first_mean"] - SCORE_NOISE]
    problems = [f"reward gained {gain:+.3f} < {REWARD_GAIN}"] if gain < REWARD_GAIN else []
    problems += [f"{name} fell" for name in fell]
    if problems:
        return False, "; ".join(problems)
    return True, f"reward {gain:+.3f} (>= {REWARD_GAIN}), no task's score fell by over {SCORE_NOISE}"


RESPONSE_KINDS = ("reference", "shifted", "reversed", "no_think", "garbage")


PRESET_ANSWER_STYLE: dict[str, Literal["json", "to"]] = {
    "vidrl": "json",
    "temporal_r1": "json",
    "videochat_r1": "to",
}


def _responses(sample: Sample, style: Literal["json", "to"]) -> dict[str, str]:
    """A perfect answer and typical failures: off by a bit, reversed, no reasoning, garbage,
    written in the grounding answer style the preset's prompt asks for."""
    tail = render_answer(sample, style)
    responses = {
        "reference": render_response(tail, think="I look at the frames."),
        "no_think": tail,
        "garbage": 'A or B {"start_time": nan} </answer><think>',
    }
    if sample.task == "tvg":
        start, end = sample.interval
        shift = (end - start) / 2
        shifted = render_answer(_with_interval(sample, start + shift, end + shift), style)
        reversed_ = render_answer(_with_interval(sample, end, start), style)
        responses["shifted"] = render_response(shifted, think="Roughly then.")
        responses["reversed"] = render_response(reversed_, think="Backwards.")
    return responses


def _with_interval(sample: Sample, start: float, end: float) -> Sample:
    from dataclasses import replace

    return replace(sample, timestamps=((start, end),))


def score_spread(samples: list[Sample]) -> list[dict[str, Any]]:
    """Score every kind of response to each sample with every preset (one row per response)."""
    rows: list[dict[str, Any]] = []
    for preset in PRESETS:
        reward = build_reward(RewardsConfig(preset=preset))
        for sample in samples:
            for kind, response in _responses(sample, PRESET_ANSWER_STYLE[preset]).items():
                score = reward([RewardInput(sample=sample, response=response)])[0]
                row: dict[str, Any] = {
                    "preset": preset,
                    "sample": sample.id,
                    "task": sample.task,
                    "kind": kind,
                    "response": response,
                    "duration": sample.duration,
                }
                if sample.task == "tvg":
                    row["timestamps"] = list(sample.interval)
                else:
                    row["answer"] = sample.answer
                row["reward"] = None if score is None else score.total
                row["components"] = None if score is None else dict(score.components)
                rows.append(row)
    return rows


def _mean_by_kind(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """kind -> preset -> mean total reward over the samples the preset scores."""
    table: dict[str, dict[str, float]] = {}
    for kind in RESPONSE_KINDS:
        for preset in PRESETS:
            scores = [
                r["reward"]
                for r in rows
                if r["kind"] == kind and r["preset"] == preset and r["reward"] is not None
            ]
            if scores:
                table.setdefault(kind, {})[preset] = round(sum(scores) / len(scores), 3)
    return table


def print_summary(report: DemoReport) -> None:
    print(f"\nvidrl demo: wrote everything under {report.out}")
    for step in report.steps:
        print(f"  - {step}")
    print("\n  mean reward by response kind (columns: presets)")
    print(f"  {'kind':<10}" + "".join(f"{p:>14}" for p in PRESETS))
    for kind, by_preset in report.numbers["mean_reward_by_kind"].items():
        print(f"  {kind:<10}" + "".join(f"{by_preset.get(p, float('nan')):>14.3f}" for p in PRESETS))
    _print_curve(report.numbers.get("training_curve", {}))
    if "learning_check" in report.numbers:
        verdict = "yes" if report.numbers["learned"] else "NO"
        print(f"  learned visibly: {verdict} ({report.numbers['learning_check']})")
    for split, numbers in report.numbers.get("evaluation", {}).items():
        counts = ", ".join(f"{n} {task}" for task, n in numbers["samples"].items())
        print(f"\n  {split} evaluation (greedy, `vidrl eval` harness; {counts} samples)")
        print("\n".join(f"  {line}" for line in numbers["table"].splitlines()))
        distinct = ", ".join(f"{name} {n}" for name, n in numbers["distinct_intervals"].items())
        tvg = numbers["samples"].get("tvg", 0)
        print(f"  different intervals answered to the {tvg} grounding questions: {distinct}")
        blind = numbers["blind_best"]
        start, end = blind["interval"]
        print(f"  the best one interval for all of them ({start} to {end} s) scores mIoU {blind['mIoU']}")
    for path in report.numbers.get("plots", []):
        print(f"  plot: {path}")
    print(f"\n  took {report.numbers['seconds']} s; summary in {report.out / 'summary.json'}")


def _print_curve(curve: dict[str, CurveEnds]) -> None:
    if not curve:
        return
    from vidrl.cluster.plots import WINDOW

    print(f"\n  training curve: first and last step; mean of the first and last {WINDOW} steps")
    heads = ("first", "last", f"first {WINDOW}", f"last {WINDOW}", "change")
    print(f"  {'':<16}" + "".join(f"{h:>10}" for h in heads))
    for key, c in curve.items():
        change = c["last_mean"] - c["first_mean"]
        name = CURVE_NAMES.get(key, key.split("/", 1)[1])
        values = (c["first"], c["last"], c["first_mean"], c["last_mean"])
        print(f"  {name:<16}" + "".join(f"{v:>10.3f}" for v in values) + f"{change:>+10.3f}")
