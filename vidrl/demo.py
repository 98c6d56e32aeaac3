"""The embedded default job: everything on synthetic videos and a tiny model, no downloads.

What runs today (the foundation): synthesize the dataset, build the tiny Qwen2.5-VL, read
the data the way training will (data config, skips), decode the sampled frames of each
video once, put the questions to the tiny model's processor (chat template + visual
tokens), and score a spread of responses, from perfect to garbage, with each reward
preset, then compute evaluation metrics of those responses. GRPO itself joins this job as
the rollout, learner and driver land.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vidrl.data.answers import render_answer, render_response
from vidrl.data.config import DataConfig
from vidrl.data.prompts import PromptConfig, render_prompt
from vidrl.data.readers import load_samples
from vidrl.data.sample import Sample
from vidrl.data.skips import SkipLog
from vidrl.data.video import Clip, VideoConfig, VideoError, decode_clip
from vidrl.rewards.config import RewardsConfig, build_reward
from vidrl.rewards.types import RewardInput

log = logging.getLogger(__name__)

DEMO_VIDEOS = 24
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


def run_demo(out: Path, seed: int = 0) -> DemoReport:
    from vidrl.data.synth import synthesize
    from vidrl.data.tiny import build_tiny_model

    report = DemoReport(out=out)
    started = time.perf_counter()
    synth = synthesize(out / "data", num_videos=DEMO_VIDEOS, seed=seed)
    report.did(f"synthesized {DEMO_VIDEOS} videos with questions into {synth.root}")
    model_dir = build_tiny_model(out / "model", seed=seed)
    report.did(f"built the tiny Qwen2.5-VL into {model_dir}")

    skips = SkipLog()
    samples = load_samples(synth.train_yaml, DataConfig(), skips)
    per_task = _count_tasks(samples)
    report.did(
        f"read {len(samples)} training samples from {synth.train_yaml} {per_task}, skipped {skips.skipped}"
    )

    video_cfg = VideoConfig(max_frames=16, max_pixels_per_frame=64 * 28 * 28)
    clips = decode_once(samples, video_cfg, skips)
    frames = sum(c.num_frames for c in clips.values())
    report.did(f"decoded {len(clips)} videos once each ({frames} sampled frames, decord)")
    report.numbers["visual_tokens_first_prompt"] = _first_prompt(samples[0], clips, model_dir, out, report)

    rows = score_spread(samples[:12])
    scored = out / "scored.jsonl"
    scored.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    report.did(f"scored {len(rows)} responses with presets {', '.join(PRESETS)} into {scored}")
    report.numbers["mean_reward_by_kind"] = _mean_by_kind(rows)
    report.numbers["metrics_of_reference_answers"] = _metrics_of(rows, "reference")
    report.numbers["seconds"] = round(time.perf_counter() - started, 1)
    (out / "summary.json").write_text(json.dumps(report.numbers, indent=2) + "\n", encoding="utf-8")
    print_summary(report)
    return report


def decode_once(samples: list[Sample], cfg: VideoConfig, skips: SkipLog) -> dict[str, Clip]:
    """Each distinct video decoded once; an unreadable one is skipped and counted."""
    clips: dict[str, Clip] = {}
    for sample in samples:
        if sample.video in clips:
            continue
        try:
            clips[sample.video] = decode_clip(sample.video, cfg)
        except VideoError as err:
            skips.skip(sample.video, str(err), counted=True)
    return clips


def _first_prompt(
    sample: Sample, clips: dict[str, Clip], model_dir: Path, out: Path, report: DemoReport
) -> int:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    prompt = render_prompt(sample, PromptConfig(), processor)
    clip = clips[sample.video]
    inputs = processor(
        text=[prompt], videos=[clip.frames], return_tensors="np", videos_kwargs={"do_sample_frames": False}
    )
    video_pad = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    visual = int((inputs["input_ids"] == video_pad).sum())
    (out / "first_prompt.txt").write_text(prompt, encoding="utf-8")
    report.did(
        f"rendered a prompt with the chat template ({visual} visual tokens) into {out / 'first_prompt.txt'}"
    )
    return visual


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


def _metrics_of(rows: list[dict[str, Any]], kind: str) -> dict[str, object]:
    from vidrl.evaluation.report import compute_metrics

    picked = [
        {k: v for k, v in r.items() if k in ("timestamps", "duration", "answer")}
        | {"prediction": r["response"]}
        for r in rows
        if r["kind"] == kind and r["preset"] == "vidrl"
    ]
    return compute_metrics(picked, "tags")


def _count_tasks(samples: list[Sample]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for sample in samples:
        counts[sample.task] = counts.get(sample.task, 0) + 1
    return counts


def print_summary(report: DemoReport) -> None:
    print(f"\nvidrl demo: wrote everything under {report.out}")
    for step in report.steps:
        print(f"  - {step}")
    print("\n  mean reward by response kind (columns: presets)")
    print(f"  {'kind':<10}" + "".join(f"{p:>14}" for p in PRESETS))
    for kind, by_preset in report.numbers["mean_reward_by_kind"].items():
        print(f"  {kind:<10}" + "".join(f"{by_preset.get(p, float('nan')):>14.3f}" for p in PRESETS))
    metrics = report.numbers["metrics_of_reference_answers"]
    print(
        f"\n  metrics of the reference answers: mIoU {metrics['mIoU']:.1f}, "
        f"accuracy {metrics.get('accuracy', float('nan')):.1f} (both 100 by construction)"
    )
    print(f"  took {report.numbers['seconds']} s; summary in {report.out / 'summary.json'}")
