"""The GRPO and SFT loops. `grpo_step` is the whole algorithm, top to bottom:

    prompts   = sampler.next(prompts_per_step), decoded once, frames in the object store
    groups    = rollout.generate(prompts)          # [P] groups of G responses + log-probs
    scores    = rewards.score(groups)              # [P, G] totals + named components
    groups    = gate(groups, scores)               # (vidrl.selection supplies gates; none yet)
    adv       = group_advantages(scores)           # [P, G]
    metrics   = learner.train_step(groups, adv)    # FSDP2 update on N ranks
    rollout.update_weights(learner.export_weights(v + 1))
    sink.log(step, metrics | rollout | reward | phase times)

With `trainer.max_staleness: 1` the rollout of step t+1 runs (in a thread, on the rollout
actors) while step t is scored and learned: its responses come from weights one update old,
and the clipped importance ratio corrects for that (one-step off-policy).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vidrl.cluster.build import Run
from vidrl.cluster.inputs import StepInputs
from vidrl.learner.batch import TrainGroup
from vidrl.learner.grpo import group_advantages
from vidrl.rewards.types import RewardInput, RewardScore
from vidrl.rollout.types import RolloutBatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rollout:
    """One step's prompts and the groups the engines returned for them."""

    inputs: StepInputs
    batch: RolloutBatch
    sampler_state: dict[str, Any]  # the sampler right after drawing these prompts


def sample_and_generate(run: Run, step: int) -> Rollout:
    import ray

    with run.timer.phase("data"):
        samples = run.sampler.next(run.cfg.trainer.prompts_per_step)
        sampler_state = run.sampler.state_dict()
        inputs = run.inputs.step_inputs(samples, run.skips, put=ray.put)
    with run.timer.phase("rollout"):
        batch = run.rollout.generate(list(inputs.prompts), step)
    return Rollout(inputs, batch, sampler_state)


def grpo_step(run: Run, step: int, rollout: Rollout) -> dict[str, float]:
    """Score, filter, learn and push weights for one step's rollout; returns its metrics."""
    inputs, batch = rollout.inputs, rollout.batch
    with run.timer.phase("reward"):
        reward_inputs = [
            RewardInput(sample=inputs.samples[g.prompt_index], response=r.text)
            for g in batch.groups
            for r in g.responses
        ]
        scored = run.rewards.score(reward_inputs)
    with run.timer.phase("learn"):
        groups, reward_metrics = learner_groups(run, rollout, scored.scores)
        metrics = run.learner.train_step(groups) if groups else {}
    with run.timer.phase("sync"):
        run.weights_version += 1
        refs = run.learner.export_weights(run.weights_version)
        update = run.rollout.update_weights(run.weights_version, refs)
    return {
        **{f"learner/{k}": v for k, v in metrics.items()},
        **batch.metrics.as_dict(),
        **update.as_dict(),
        **reward_metrics,
        "reward/failures": float(len(scored.failures)),
        "groups/trained": float(len(groups)),
    }


def learner_groups(
    run: Run, rollout: Rollout, scores: list[RewardScore | None]
) -> tuple[list[TrainGroup], dict[str, float]]:
    """Advantages per group (responses whose reward failed are left out) and reward metrics."""
    cfg, inputs = run.cfg, rollout.inputs
    out: list[TrainGroup] = []
    totals: list[float] = []
    components: dict[str, list[float]] = {}
    lengths: list[int] = []
    cursor = 0
    for group in rollout.batch.groups:
        group_scores = scores[cursor : cursor + len(group.responses)]
        cursor += len(group.responses)
        keep = [i for i, s in enumerate(group_scores) if s is not None]
        if not keep:
            continue
        values = torch.tensor([[group_scores[i].total for i in keep]])  # type: ignore[union-attr]
        adv = group_advantages(values, cfg.learner.loss.advantage_estimator, cfg.learner.loss.advantage_eps)[
            0
        ]
        kept = type(group)(
            group.prompt_index,
            group.sample_id,
            group.prompt_token_ids,
            group.frame_positions,
            tuple(group.responses[i] for i in keep),
            group.weights_version,
        )
        prompt, clip = inputs.prompts[group.prompt_index], inputs.clips[group.prompt_index]
        out.append(run.inputs.train_group(kept, prompt, clip, adv.numpy()))
        for i in keep:
            score = group_scores[i]
            totals.append(score.total)  # type: ignore[union-attr]
            lengths.append(len(group.responses[i].token_ids))
            for name, value in score.components.items():  # type: ignore[union-attr]
                components.setdefault(name, []).append(value)
    metrics = {
        "reward/mean": float(np.mean(totals)) if totals else 0.0,
        "reward/std": float(np.std(totals)) if totals else 0.0,
        "response/length_mean": float(np.mean(lengths)) if lengths else 0.0,
    }
    metrics |= {f"reward/{name}": float(np.mean(v)) for name, v in components.items()}
    return out, metrics


def run_grpo(run: Run, start_step: int, on_step: object = None) -> None:
    """Steps start_step .. trainer.steps - 1, synchronous or one step off-policy."""
    cfg = run.cfg
    steps = cfg.trainer.steps
    if start_step >= steps:
        return
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout")
    try:
        pending: Future[Rollout] | None = None
        for step in range(start_step, steps):
            started = time.perf_counter()
            rollout = pending.result() if pending is not None else sample_and_generate(run, step)
            pending = None
            if cfg.trainer.max_staleness == 1 and step + 1 < steps:
                pending = executor.submit(sample_and_generate, run, step + 1)
            metrics = grpo_step(run, step, rollout)
            # A checkpoint after this step resumes with the prompts after these ones, even
            # when the next step's prompts were already drawn (max_staleness 1).
            run.sampler_state = rollout.sampler_state
            metrics |= run.timer.pop() | {"time/step": time.perf_counter() - started}
            metrics["weights_version"] = float(run.weights_version)
            run.sink.log(step, metrics)
            if callable(on_step):
                on_step(step, metrics)
    finally:
        executor.shutdown(wait=True)
