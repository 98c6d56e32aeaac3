"""The SFT warm start: the same learner, cross-entropy on reference answers.

It is the papers' SFT baseline, and in the embedded demo it teaches the tiny random model
the answer format, so that GRPO starts from a policy whose rewards vary.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm

from vidrl.cluster.build import reserved, sft_learner
from vidrl.cluster.config import RunConfig
from vidrl.cluster.inputs import LearnerInputs
from vidrl.cluster.metrics import MetricsSink
from vidrl.cluster.resources import Placement
from vidrl.cluster.sampler import PromptSampler
from vidrl.data.readers import load_samples
from vidrl.data.skips import SkipLog

log = logging.getLogger(__name__)


def run_sft(cfg: RunConfig, folder: Path, placement: Placement | None = None) -> Path:
    """`trainer.sft_steps` SFT steps from cfg.model_path; the model goes to folder/hf. The learner
    runs in the learner bundles of `placement` (None: bundles reserved for the SFT alone)."""
    if cfg.model_path is None or cfg.data.train_path is None:
        raise ValueError("SFT needs model_path and data.train_path")
    import ray

    if placement is None:
        with reserved(cfg, rollout=False) as own:
            return run_sft(cfg, folder, own)
    skips = SkipLog(cfg.data.max_skipped_fraction)
    sampler = PromptSampler(load_samples(cfg.data.train_path, cfg.data, skips), cfg.seed)
    inputs = LearnerInputs(cfg.model_path, cfg.video, cfg.prompt)
    learner = sft_learner(cfg, placement)
    sink = MetricsSink(folder, tensorboard=False)
    try:
        steps = range(cfg.trainer.sft_steps)
        for step in tqdm(steps, desc="sft", unit="step", disable=not cfg.trainer.progress_bar):
            samples = sampler.next(cfg.trainer.sft_prompts_per_step)
            step_inputs = inputs.step_inputs(samples, skips, put=ray.put)  # decoded apart from the driver
            groups = [
                inputs.sft_group(s, p, c)
                for s, p, c in zip(step_inputs.samples, step_inputs.prompts, step_inputs.clips, strict=True)
            ]
            metrics = learner.train_step(groups, mode="sft").metrics
            sink.log(step, {f"sft/{k}": v for k, v in metrics.items()})
        learner.save(str(folder), {"sft_steps": cfg.trainer.sft_steps})
    finally:
        learner.shutdown()
        sink.close()
    if cfg.learner.lora is not None:  # GRPO starts a fresh adapter on the warm start: merge this one
        from vidrl.learner.lora import export_merged

        export_merged(folder / "adapter", folder / "hf")
    log.info("SFT warm start: %d steps, model in %s", cfg.trainer.sft_steps, folder / "hf")
    return folder / "hf"
