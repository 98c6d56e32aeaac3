"""A training job from start to finish: warm start, evaluate, GRPO, checkpoints, evaluate.

    runs/NAME/
      config.yaml  metrics.jsonl  tb/  summary.json
      sft/hf/                          the SFT warm start (when trainer.sft_steps > 0)
      checkpoints/step_000050/         resumable (see vidrl.learner.checkpoint)

A run directory that already holds checkpoints is resumed from the latest one: the sampler
continues with the next unseen prompt, the weights version and the progress bar go on from
where they were.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from vidrl.cluster.build import Run, build_run, ray_session, reserved
from vidrl.cluster.config import RunConfig
from vidrl.cluster.driver import run_grpo
from vidrl.cluster.evaluate import evaluate, evaluate_run
from vidrl.cluster.metrics import Progress
from vidrl.cluster.resources import Placement
from vidrl.data.readers import load_samples
from vidrl.data.sample import Sample
from vidrl.data.skips import SkipLog

log = logging.getLogger(__name__)


def train(cfg: RunConfig) -> dict[str, Any]:
    """Run (or resume) the job `cfg` describes; returns the summary written to summary.json."""
    started = time.perf_counter()
    # One placement group for the job: the warm start's learner, then the GRPO run, in it.
    with ray_session(cfg), reserved(cfg) as placement:
        start_model = warm_start(cfg, placement) if cfg.trainer.sft_steps else cfg.model_path
        run = build_run(cfg, start_model, placement)
        try:
            summary = _train(run)
        finally:
            run.shutdown()
    summary["seconds"] = round(time.perf_counter() - started, 1)
    (cfg.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _train(run: Run) -> dict[str, Any]:
    cfg = run.cfg
    start = resume(run)
    eval_samples = load_eval_samples(cfg)
    summary: dict[str, Any] = {"run_dir": str(cfg.run_dir), "start_step": start}
    if eval_samples and start == 0:
        summary["eval_before"] = evaluate(run, eval_samples)
        log.info("evaluation before GRPO: %s", summary["eval_before"])
    progress = Progress(cfg.trainer.steps, start, cfg.trainer.progress_bar)

    def on_step(step: int, metrics: dict[str, float]) -> None:
        progress.update(metrics)
        every = cfg.trainer.checkpoint_every_steps
        if every and (step + 1) % every == 0 and step + 1 < cfg.trainer.steps:
            save(run, step + 1)

    def periodic_eval(step: int) -> dict[str, float]:
        every = cfg.trainer.eval_every_steps
        if not (every and eval_samples and (step + 1) % every == 0 and step + 1 < cfg.trainer.steps):
            return {}
        return evaluate_run(run, eval_samples).metrics()

    try:
        run_grpo(run, start, on_step, periodic_eval)
    finally:
        progress.close()
    if cfg.trainer.steps > start:
        summary["checkpoint"] = str(save(run, cfg.trainer.steps))
    if eval_samples:
        summary["eval_after"] = evaluate(run, eval_samples)
        log.info("evaluation after GRPO: %s", summary["eval_after"])
    summary["skipped_samples"] = run.skips.skipped
    return summary


def checkpoint_dir(cfg: RunConfig, step: int) -> Path:
    return cfg.run_dir / "checkpoints" / f"step_{step:06d}"


def save(run: Run, step: int) -> Path:
    """Everything needed to continue after `step` GRPO steps."""
    path = checkpoint_dir(run.cfg, step)
    sampler = run.sampler_state or run.sampler.state_dict()
    gate = run.gate_state if run.gate_state is not None else run.gate.state_dict()
    extra = {"step": step, "weights_version": run.weights_version, "sampler": sampler, "gate": gate}
    run.learner.save(str(path), extra)
    (path / "COMPLETE").write_text("ok\n")  # written last: a checkpoint cut short is never resumed
    log.info("checkpoint after step %d: %s", step, path)
    return path


def latest_checkpoint(cfg: RunConfig) -> Path | None:
    found = sorted(p for p in (cfg.run_dir / "checkpoints").glob("step_*") if (p / "COMPLETE").exists())
    return found[-1] if found else None


def resume(run: Run) -> int:
    """Load the latest complete checkpoint, if any; the step to continue from."""
    path = latest_checkpoint(run.cfg)
    if path is None:
        return 0
    extra = run.learner.load(str(path))
    trim_metrics(run.sink.path, int(extra["step"]))
    run.sampler.load_state_dict(extra["sampler"])
    if extra.get("gate"):  # absent when the checkpoint was written with the gate off
        run.gate.load_state_dict(extra["gate"])
    run.weights_version = int(extra["weights_version"])
    run.rollout.update_weights(run.weights_version, run.learner.export_weights(run.weights_version))
    log.info("resumed from %s at step %d", path, extra["step"])
    return int(extra["step"])


def trim_metrics(path: Path, first_step: int) -> None:
    """Drop metric rows of steps at or after `first_step`: a run killed after its last
    checkpoint logged steps that the resumed run does again."""
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
        if line.strip() and json.loads(line).get("step", -1) < first_step
    ]
    path.write_text("".join(kept), encoding="utf-8")


def load_eval_samples(cfg: RunConfig) -> list[Sample]:
    if cfg.data.eval_path is None:
        return []
    samples = load_samples(cfg.data.eval_path, cfg.data, SkipLog(cfg.data.max_skipped_fraction))
    return samples[: cfg.trainer.eval_max_samples]


def warm_start(cfg: RunConfig, placement: Placement | None = None) -> str:
    """SFT on reference answers (the papers' SFT baseline) in the learner bundles of `placement`;
    returns the HF folder it wrote. An existing warm start in the run directory is reused (a
    resumed run does not redo it)."""
    from vidrl.cluster.sft import run_sft

    folder = cfg.run_dir / "sft"
    if not (folder / "COMPLETE").exists():
        run_sft(cfg, folder, placement)
        (folder / "COMPLETE").write_text("ok\n")
    return str(folder / "hf")
