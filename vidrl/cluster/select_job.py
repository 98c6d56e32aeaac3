"""`vidrl select CONFIG`: variance-aware data selection by repeated inference (Temporal-R1).

    out/
      stats.parquet        one row per sample: mean / variance / std of the total and of each
                           reward component over K responses, pass rate (vidrl.selection.stats)
      selected.jsonl       the kept samples, in the format the trainer reads
                           (data.train_path=out/selected.jsonl)
      summary.json         counts per task before and after, why samples were dropped
      variance.png         histogram of the reward variance, one panel per task

K responses per training sample come from the rollout pool (the config's sampling, with
`selection.repeats` samples per prompt) on the model at `--model` (default: model_path; a LoRA
adapter folder is served on its base),
scored by the configured rewards on the reward pool; the policy is `selection` of the run
config (vidrl.selection.policies). A sample whose video cannot be decoded, or whose prompt
is too long, gets no row and is counted under `skipped`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vidrl.cluster.build import ray_session, reward_pool, serving
from vidrl.cluster.config import RunConfig
from vidrl.cluster.driver import score_batch
from vidrl.cluster.inputs import LearnerInputs
from vidrl.cluster.models import ModelRef, model_ref, serve, serving_config
from vidrl.data.readers import load_samples, write_samples
from vidrl.data.sample import Sample
from vidrl.data.skips import SkipLog
from vidrl.selection.policies import SelectionResult, select
from vidrl.selection.stats import SampleStats, sample_stats, write_stats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelectOutput:
    """Where `run_select` wrote its files, and what it kept."""

    stats: Path
    selected: Path
    summary: Path
    histogram: Path
    result: SelectionResult


def run_select(
    cfg: RunConfig, out: Path, model_path: str | None = None, progress: bool = True
) -> SelectOutput:
    """Repeated inference on every training sample, then the selection policy; see the module doc."""
    path = model_path or cfg.model_path
    if path is None or cfg.data.train_path is None:
        raise ValueError("vidrl select needs model_path (or --model) and data.train_path")
    skips = SkipLog(cfg.data.max_skipped_fraction)
    samples = load_samples(cfg.data.train_path, cfg.data, skips)
    with ray_session(cfg):
        stats = repeated_inference(cfg, path, samples, skips, progress)
    return write_selection(cfg, out, samples, stats, skips)


def repeated_inference(
    cfg: RunConfig, model_path: str, samples: Sequence[Sample], skips: SkipLog, progress: bool
) -> list[SampleStats]:
    """K scored responses per sample -> one SampleStats per sample that produced a group."""
    import ray
    from tqdm import tqdm

    ref = model_ref(model_path)  # a model folder, or a LoRA adapter on its base
    rollout_cfg = serving_config(cfg.rollout, [ref])
    inputs = LearnerInputs(ref.base, cfg.video, cfg.prompt)
    sampling = replace(cfg.rollout.sampling, samples_per_prompt=cfg.selection.repeats)
    chunk = cfg.selection.prompts_per_call
    out: list[SampleStats] = []
    bar = tqdm(total=len(samples), desc="select", unit="sample", disable=not progress, dynamic_ncols=True)
    with serving(cfg, rollout_cfg, ref.base) as rollout:
        serve(rollout, ref, 0, ModelRef(ref.base))
        rewards = reward_pool(cfg)
        try:
            for call, first in enumerate(range(0, len(samples), chunk)):
                step = inputs.step_inputs(samples[first : first + chunk], skips, put=ray.put)
                batch = rollout.generate(list(step.prompts), step=call, sampling=sampling)
                for skipped in batch.skipped:
                    skips.skip(f"sample {skipped.sample_id}", skipped.reason, counted=True)
                scores, _ = score_batch(rewards, batch, step.samples)
                for group, group_scores in zip(batch.groups, scores, strict=True):
                    sample = step.samples[group.prompt_index]
                    stats = sample_stats(sample.id, sample.task, group_scores, cfg.selection.pass_threshold)
                    out.append(stats)
                bar.update(min(chunk, len(samples) - first))
        finally:
            bar.close()
            rewards.shutdown()
    return out


def write_selection(
    cfg: RunConfig, out: Path, samples: Sequence[Sample], stats: Sequence[SampleStats], skips: SkipLog
) -> SelectOutput:
    """Apply the policy to `stats` and write the table, the selected dataset, the summary and
    the histogram into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    result = select(stats, cfg.selection)
    by_id = {s.id: s for s in samples}
    stats_path, selected = out / "stats.parquet", out / "selected.jsonl"
    write_stats(stats_path, stats)
    write_samples(selected, [by_id[i] for i in result.kept])
    summary = {
        "samples": len(samples),
        "scored": len(stats),
        "skipped": skips.skipped,
        "first_skip_reasons": skips.reasons,
        "repeats": cfg.selection.repeats,
        "kept": len(result.kept),
        "before": dict(result.before),
        "after": dict(result.after),
        "dropped": dict(Counter(result.dropped.values())),
        "mean_variance": _mean_variance_by_task(stats),
        "selected": str(selected),
    }
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    histogram = plot_variance(stats, out / "variance.png")
    log.info("selected %d of %d samples into %s", len(result.kept), len(samples), selected)
    return SelectOutput(stats_path, selected, summary_path, histogram, result)


def _mean_variance_by_task(stats: Sequence[SampleStats]) -> dict[str, float]:
    values: dict[str, list[float]] = {}
    for s in stats:
        if s.has_scores:
            values.setdefault(s.task, []).append(s.variance)
    return {task: sum(v) / len(v) for task, v in sorted(values.items())}


def plot_variance(stats: Sequence[SampleStats], path: Path) -> Path:
    """One histogram panel per task of the variance of the total reward over K responses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({s.task for s in stats}) or ["none"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.5 * len(tasks), 3.0), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        values: list[Any] = [s.variance for s in stats if s.task == task and s.has_scores]
        ax.hist(values, bins=20)
        ax.set_title(f"{task} (n={len(values)})")
        ax.set_xlabel("variance of the total reward")
    axes[0][0].set_ylabel("samples")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
