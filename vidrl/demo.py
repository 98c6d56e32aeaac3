"""The embedded default job (`make demo`): the whole pipeline on synthetic videos and a tiny
model, on the local machine, with no downloads.

1. synthesize the dataset (mp4 videos with known event intervals, Temporal-R1 records);
2. build the tiny Qwen2.5-VL (random weights, local tokenizer and processor);
3. score a spread of responses (perfect, shifted, reversed, no reasoning, garbage) with every
   reward preset: what each reward pays for;
4. train: SFT warm start (so the tiny model emits the answer format), then GRPO with a vLLM
   rollout worker, the reward actor pool and a 2-rank FSDP2 learner;
5. evaluate the SFT warm start and the final GRPO checkpoint on the held-out videos with the
   `vidrl eval` harness (one rollout pool: the GRPO weights are pushed into the engine that
   evaluated the SFT model), all in the Ray cluster that trained;
6. write the plots and print a summary with the side-by-side evaluation table.
"""

from __future__ import annotations

import json
import logging
import time
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
    from vidrl.config import RunConfig

log = logging.getLogger(__name__)

DEMO_VIDEOS = 32
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
    "rewards.think=false",
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
    "trainer.steps=20",
    "trainer.prompts_per_step=8",
    "trainer.sft_steps=80",
    "trainer.sft_lr=3e-3",
    "trainer.sft_prompts_per_step=16",
    "trainer.eval_max_samples=32",
    "trainer.checkpoint_every_steps=10",
)


def run_demo(out: Path, seed: int = 0, train: bool = True) -> DemoReport:
    from vidrl.data.synth import synthesize
    from vidrl.data.tiny import build_tiny_model

    out = out.resolve()
    report = DemoReport(out=out)
    started = time.perf_counter()
    synth = synthesize(out / "data", num_videos=DEMO_VIDEOS, seed=seed)
    report.did(f"synthesized {DEMO_VIDEOS} videos with questions into {synth.root}")
    model_dir = build_tiny_model(out / "model", seed=seed)
    report.did(f"built the tiny Qwen2.5-VL into {model_dir}")
    samples = load_samples(synth.train_yaml, DataConfig(), SkipLog())
    rows = score_spread(samples[:12])
    scored = out / "scored.jsonl"
    scored.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    report.did(f"scored {len(rows)} responses with presets {', '.join(PRESETS)} into {scored}")
    report.numbers["mean_reward_by_kind"] = _mean_by_kind(rows)
    if train:
        _train(report, model_dir, synth.train_yaml, synth.test_yaml, seed)
    report.numbers["seconds"] = round(time.perf_counter() - started, 1)
    (out / "summary.json").write_text(json.dumps(report.numbers, indent=2) + "\n", encoding="utf-8")
    print_summary(report)
    return report


def _train(report: DemoReport, model_dir: Path, train_yaml: Path, test_yaml: Path, seed: int) -> None:
    from vidrl.cluster.build import ray_session
    from vidrl.cluster.job import train
    from vidrl.cluster.plots import plot_run
    from vidrl.config import load_run_config

    overrides = [
        *DEMO_OVERRIDES,
        f"model_path={model_dir}",
        f"data.train_path={train_yaml}",
        # Evaluated afterwards by the `vidrl eval` harness, not inside the run (the same greedy
        # answers twice would only cost time).
        "data.eval_path=null",
        f"output_dir={report.out / 'runs'}",
        "run_name=grpo",
        f"seed={seed}",
        f"rollout.seed={seed}",
    ]
    cfg = load_run_config(None, overrides)
    with ray_session(cfg):  # one Ray cluster for training and evaluation
        train(cfg)
        report.did(
            f"trained: SFT warm start ({cfg.trainer.sft_steps} steps), then GRPO "
            f"({cfg.trainer.steps} steps) with 1 vLLM rollout worker, the reward pool and a "
            f"2-rank FSDP2 learner; run directory {cfg.run_dir}"
        )
        _evaluate(report, cfg, test_yaml)
    report.numbers["plots"] = [str(p) for p in plot_run(cfg.run_dir)]
    report.did(f"wrote plots into {cfg.run_dir / 'plots'}")


def _evaluate(report: DemoReport, cfg: RunConfig, test_yaml: Path) -> None:
    """The SFT warm start and the final GRPO model through the `vidrl eval` harness."""
    from vidrl.cluster.eval_job import evaluate_models, load_eval_set, write_eval
    from vidrl.cluster.job import latest_checkpoint
    from vidrl.evaluation.compare import format_table

    final = latest_checkpoint(cfg)
    if final is None:
        raise RuntimeError(f"{cfg.run_dir}: training left no checkpoint to evaluate")
    models = {"sft": str(cfg.run_dir / "sft" / "hf"), "grpo": str(final / "hf")}
    samples, _ = load_eval_set(cfg, str(test_yaml))
    samples = samples[: cfg.trainer.eval_max_samples]
    results = evaluate_models(cfg, models, samples)
    summaries = {
        name: write_eval(
            report.out / "eval" / name, by_variant, {"model": models[name], "data": str(test_yaml)}
        )
        for name, by_variant in results.items()
    }
    where = report.out / "eval"
    report.did(f"evaluated the SFT and GRPO models (greedy, {len(samples)} held-out samples) into {where}")
    report.numbers["evaluation"] = {name: s["variants"] for name, s in summaries.items()}
    report.numbers["eval_table"] = format_table(
        {"after SFT": summaries["sft"], "after GRPO": summaries["grpo"]}
    )


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
    table = report.numbers.get("eval_table")
    if table:
        print("\n  held-out evaluation (greedy, `vidrl eval` harness)")
        print("\n".join(f"  {line}" for line in table.splitlines()))
    for path in report.numbers.get("plots", []):
        print(f"  plot: {path}")
    print(f"\n  took {report.numbers['seconds']} s; summary in {report.out / 'summary.json'}")
