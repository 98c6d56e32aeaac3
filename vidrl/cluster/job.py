"""A training job from start to finish: warm start, evaluate, GRPO, checkpoints, evaluate.

    runs/NAME/
      config.yaml  metrics.jsonl  tb/  summary.json  history.jsonl
      sft/hf/                          the SFT warm start (when trainer.sft_steps > 0)
      checkpoints/step_000050/         resumable (vidrl.learner.checkpoint), with its config.yaml

A run directory that already holds checkpoints is resumed from the newest one that loads, and
only with the config it was trained with (vidrl.cluster.identity): the sampler continues with the
next unseen prompt, the weights version and the progress bar go on from where they were.
Checkpoints are written whole or not at all and pruned to `trainer.keep_checkpoints`
(vidrl.cluster.checkpoints); config.yaml always describes the newest one.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from vidrl.cluster import checkpoints, identity, recovery
from vidrl.cluster.build import Run, build_run, ray_session, reserved
from vidrl.cluster.config import RunConfig, dump_config
from vidrl.cluster.driver import run_grpo
from vidrl.cluster.evaluate import evaluate, evaluate_run
from vidrl.cluster.metrics import Progress
from vidrl.cluster.resources import Placement
from vidrl.data.readers import load_samples
from vidrl.data.sample import Sample
from vidrl.data.skips import SkipLog

log = logging.getLogger(__name__)

FAULT_KILL_IN_SAVE = "VIDRL_FAULT_KILL_IN_SAVE"
"""Fault-injection hook for tests: set to a step, the job kills itself (SIGKILL) while saving that
step's checkpoint, after the learner wrote its files and before the checkpoint is complete."""


def train(cfg: RunConfig, resume_anyway: bool = False) -> dict[str, Any]:
    """Run (or resume) the job `cfg` describes; returns the summary written to summary.json.

    A run directory with checkpoints is resumed only with the config it was trained with
    (vidrl.cluster.identity); `resume_anyway` accepts the new values and records them."""
    started = time.perf_counter()
    root = checkpoints_root(cfg)
    checkpoints.remove_partial(root)
    checkpoints.remove_partial(cfg.run_dir)  # a warm start cut short
    newest = latest_checkpoint(cfg)
    accepted: list[str] = []
    if newest is not None:
        saved = identity.saved_tree(newest) or identity.saved_tree(cfg.run_dir)
        if saved is not None:
            accepted = identity.check_resume(saved, cfg, newest, resume_anyway)
    else:
        write_config(cfg, cfg.run_dir)
    identity.record_start(cfg, newest, accepted)
    # One placement group for the job: the warm start's learner, then the GRPO run, in it.
    with ray_session(cfg), reserved(cfg) as placement:
        start_model = warm_start(cfg, placement) if cfg.trainer.sft_steps else cfg.model_path
        summary = _train(cfg, start_model, placement)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    (cfg.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _train(cfg: RunConfig, model_path: str | None, placement: Placement) -> dict[str, Any]:
    """The GRPO run, rebuilt and resumed from its last checkpoint after each fault (a dead, hung
    or unresponsive actor: vidrl.cluster.recovery), up to `trainer.max_restarts` times."""
    causes: list[str] = []
    while True:
        run: Run | None = None
        try:
            # Inside the retry: an actor can die while it starts (a worker process lost before
            # its first call), and fresh actors would not meet that again.
            run = build_run(cfg, model_path, placement)
            run.restarts = len(causes)
            return _train_run(run) | {"restarts": causes}
        except Exception as error:
            cause = recovery.fault_of(error, run.learner if run is not None else None)
            if cause is None:
                raise
            causes.append(cause)
            if len(causes) > cfg.trainer.max_restarts:
                raise recovery.RunFailed(causes) from error
            log.error(
                "fault %d (at most %d restarts): %s; rebuilding the actors, resuming from the checkpoint",
                len(causes),
                cfg.trainer.max_restarts,
                cause,
            )
        finally:
            if run is not None:
                run.shutdown()


def _train_run(run: Run) -> dict[str, Any]:
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


def checkpoints_root(cfg: RunConfig) -> Path:
    return cfg.run_dir / "checkpoints"


def checkpoint_dir(cfg: RunConfig, step: int) -> Path:
    return checkpoints.step_dir(checkpoints_root(cfg), step)


def write_config(cfg: RunConfig, folder: Path) -> None:
    """config.yaml in `folder`, written whole (a temporary file renamed over it), and beside it
    the fingerprint of the model it trains from (identity.MODEL)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in ((identity.CONFIG, dump_config(cfg)), (identity.MODEL, identity.model_json(cfg))):
        temporary = folder / f".{name}.tmp"
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(folder / name)


def save(run: Run, step: int) -> Path:
    """Everything needed to continue after `step` GRPO steps, written atomically with the config
    it was trained with; the run's config.yaml then describes it, and only the newest
    `trainer.keep_checkpoints` are kept."""
    sampler = run.sampler_state or run.sampler.state_dict()
    gate = run.gate_state if run.gate_state is not None else run.gate.state_dict()
    failures = run.failures_state or run.failures.state_dict()
    extra = {"step": step, "weights_version": run.weights_version, "sampler": sampler, "gate": gate}
    extra["failures"] = failures

    def fill(folder: Path) -> None:
        run.learner.save(str(folder), extra)
        write_config(run.cfg, folder)
        if os.environ.get(FAULT_KILL_IN_SAVE) == str(step):
            os.kill(os.getpid(), signal.SIGKILL)

    path = checkpoints.write(checkpoint_dir(run.cfg, step), fill)
    write_config(run.cfg, run.cfg.run_dir)
    removed = checkpoints.prune(checkpoints_root(run.cfg), run.cfg.trainer.keep_checkpoints)
    log.info(
        "checkpoint after step %d: %s%s", step, path, f" (removed {len(removed)} older)" if removed else ""
    )
    return path


def latest_checkpoint(cfg: RunConfig) -> Path | None:
    found = checkpoints.complete(checkpoints_root(cfg))
    return found[-1] if found else None


def resume(run: Run) -> int:
    """Load the newest checkpoint that loads (a damaged one is named and the one before it
    tried); the step to continue from (0 without one). Metrics rows of later steps are dropped:
    those steps run again."""
    found = checkpoints.complete(checkpoints_root(run.cfg))
    extra: dict[str, Any] | None = None
    for path in reversed(found):
        damage = checkpoints.problems(path)
        if damage:
            log.warning(
                "checkpoint %s cannot be loaded (%s): trying the one before it", path, "; ".join(damage)
            )
            continue
        extra = run.learner.load(str(path))
        log.info("resumed from %s at step %d", path, extra["step"])
        break
    if found and extra is None:
        raise RuntimeError(
            f"none of the {len(found)} checkpoints in {checkpoints_root(run.cfg)} can be loaded"
        )
    start = 0 if extra is None else int(extra["step"])
    trim_metrics(run.sink.path, start)
    run.sink.reopen()
    if extra is None:
        return 0
    run.sampler.load_state_dict(extra["sampler"])
    if extra.get("gate"):  # absent when the checkpoint was written with the gate off
        run.gate.load_state_dict(extra["gate"])
    if extra.get("failures"):  # absent in checkpoints written before quarantines
        run.failures.load_state_dict(extra["failures"])
    run.weights_version = int(extra["weights_version"])
    run.rollout.update_weights(run.weights_version, run.learner.export_weights(run.weights_version))
    return start


def trim_metrics(path: Path, first_step: int) -> None:
    """Drop metric rows of steps at or after `first_step` (a run killed after its last checkpoint
    logged steps that the resumed run does again) and rows that cannot be read (a line torn by
    a kill or a full disk), each named; the file is replaced whole, never rewritten in place."""
    if not path.exists():
        return
    kept = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(keepends=True), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            log.warning("%s: line %d cannot be read (a torn write?): dropped", path, number)
            continue
        if row.get("step", -1) < first_step:
            kept.append(line if line.endswith("\n") else line + "\n")
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text("".join(kept), encoding="utf-8")
    temporary.replace(path)


def load_eval_samples(cfg: RunConfig) -> list[Sample]:
    if cfg.data.eval_path is None:
        return []
    samples = load_samples(cfg.data.eval_path, cfg.data, SkipLog(cfg.data.max_skipped_fraction))
    return samples[: cfg.trainer.eval_max_samples]


def warm_start(cfg: RunConfig, placement: Placement | None = None) -> str:
    """SFT on reference answers (the papers' SFT baseline) in the learner bundles of `placement`;
    returns the HF folder it wrote. A warm start in the run directory is reused when it was
    trained with this config's model, data and SFT settings (a resumed run does not redo it),
    and trained again otherwise; it is written atomically, with its config."""
    from vidrl.cluster.sft import run_sft

    folder = cfg.run_dir / "sft"
    if (folder / checkpoints.COMPLETE).exists():
        if identity.same_warm_start(identity.saved_tree(folder), cfg):
            return str(folder / "hf")
        log.warning(
            "the warm start in %s was trained with another model, data or SFT settings: training it again",
            folder,
        )

    def fill(partial: Path) -> None:
        run_sft(cfg, partial, placement)
        write_config(cfg, partial)

    checkpoints.write(folder, fill)
    return str(folder / "hf")
