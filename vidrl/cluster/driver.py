"""The GRPO loop. One step, top to bottom (`collect` then `grpo_step`), phase by phase:

    data     prompts = sampler.next(prompts_per_step), decoded once, frames in the object store
    rollout  groups  = rollout.generate(prompts)        # [P] groups of G responses + log-probs
    reward   scores  = rewards.score(groups)            # [P, G] totals + named components
             kept    = gate.admit(scores)               # groups with reward spread (vidrl.selection);
                                                        # dropped ones are refilled with new prompts
             adv     = group_advantages(scores[kept])   # [P', G]
    prepare  batch   = processor(kept groups, adv)      # the learner's view: pixels, grids, ids
    learn    metrics = learner.train_step(batch)        # FSDP2 update on N ranks
    sync     rollout.update_weights(learner.export_weights(v + 1))
             sink.log(step, metrics | rollout | reward | gate | phase seconds)

With `trainer.max_staleness: 1` the collection of step t+1 (rollout, rewards, gate) runs in a
thread, on the rollout and reward actors, while step t is learned: its responses come from
weights one update old, and the clipped importance ratio corrects for that (one-step
off-policy).

Each step's phase seconds (`time/<phase>`) are timed by that step's own objects (its
collection's `Rollout`, its `grpo_step`), so a row never holds another step's seconds; with
one-step off-policy, `time/overlap` is how much of the step's collection ran while the step
before it was learning (the phases then add up to `time/step` plus that overlap).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vidrl.cluster.build import Run
from vidrl.cluster.inputs import StepInputs
from vidrl.cluster.metrics import PhaseTimer
from vidrl.data.sample import Sample
from vidrl.learner.grpo import group_advantages
from vidrl.learner.types import LearnerStep, TrainGroup
from vidrl.rewards.types import RewardInput, RewardScore
from vidrl.rollout.types import RolloutBatch
from vidrl.selection.gates import filter_groups, prompts_to_draw

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Round:
    """One draw of prompts: their inputs, the groups the engines returned, the scores.

    drawn: prompts drawn from the sampler (a prompt whose video failed to decode is counted
    here but has no input); scores[g][i] is the score of batch.groups[g].responses[i]
    (None: the reward failed); kept holds the indices of the groups the gate admitted.
    """

    drawn: int
    inputs: StepInputs
    batch: RolloutBatch
    scores: tuple[tuple[RewardScore | None, ...], ...]
    kept: tuple[int, ...]
    reward_failures: int
    failed_samples: int = 0
    """Drawn samples that produced nothing to train on (video, request or rewards failed)."""


@dataclass(frozen=True)
class Rollout:
    """One step's rounds (the first draw, then refills) and the selection state right after
    them: a checkpoint after this step resumes the sampler and the gate from here.

    seconds: this collection's phase seconds ("time/data", "time/rollout", "time/reward");
    started / finished: its perf_counter clock at the start and the end (the overlap with the
    step before is read from them)."""

    rounds: tuple[Round, ...]
    sampler_state: dict[str, Any]
    gate_state: dict[str, Any]
    failures_state: dict[str, Any]
    gate_metrics: dict[str, float]
    seconds: dict[str, float]
    started: float
    finished: float


def collect(run: Run, step: int) -> Rollout:
    """Draw prompts, generate, score and gate until `prompts_per_step` groups are kept or the
    refill rounds (`gate.max_refill_rounds`) are spent."""
    started = time.perf_counter()
    timer = PhaseTimer()
    wanted = run.cfg.trainer.prompts_per_step
    rounds: list[Round] = []
    kept, draw = 0, wanted
    while draw:
        rounds.append(draw_round(run, step, draw, timer, refill_round=len(rounds)))
        kept += len(rounds[-1].kept)
        draw = prompts_to_draw(kept, wanted, len(rounds) - 1, run.cfg.gate)
    return Rollout(
        tuple(rounds),
        run.sampler.state_dict(),
        run.gate.state_dict(),
        run.failures.state_dict(),
        run.gate.metrics(),
        timer.pop(),
        started,
        time.perf_counter(),
    )


def draw_round(run: Run, step: int, count: int, timer: PhaseTimer, refill_round: int = 0) -> Round:
    """`count` new prompts through rollout, rewards and the gate, timed by `timer`; `refill_round`
    (0 for the first draw of the step) picks the sampling streams, so refills never reuse the
    first draw's."""
    import ray

    with timer.phase("data"):
        samples = run.sampler.next(count, run.failures.quarantined)
        inputs = run.inputs.step_inputs(samples, run.skips, put=ray.put)
    with timer.phase("rollout"):
        batch = run.rollout.generate(list(inputs.prompts), step, refill_round=refill_round)
    with timer.phase("reward"):
        scores, failures = score_batch(run.rewards, batch, inputs.samples)
    totals = [[s.total for s in group if s is not None] for group in scores]
    kept = filter_groups(run.gate, totals)
    failed = failed_samples(inputs, batch, scores)
    run.failures.observe([s.id for s in samples], failed)
    return Round(count, inputs, batch, scores, tuple(kept), failures, len(failed))


def failed_samples(
    inputs: StepInputs, batch: RolloutBatch, scores: Sequence[Sequence[RewardScore | None]]
) -> dict[str, str]:
    """Sample id -> why it produced nothing to train on: its video, its request, or its rewards
    (each costs that sample only; vidrl.cluster.quarantine counts them)."""
    failed = dict(inputs.failed)
    failed |= {s.sample_id: s.reason for s in batch.skipped}
    for group, group_scores in zip(batch.groups, scores, strict=True):
        if group_scores and all(score is None for score in group_scores):
            failed[group.sample_id] = "no response could be scored (every reward call failed)"
    return failed


def score_batch(
    rewards: Any, batch: RolloutBatch, samples: Sequence[Sample]
) -> tuple[tuple[tuple[RewardScore | None, ...], ...], int]:
    """Every response of `batch` scored on the reward pool against `samples[prompt_index]`:
    (scores[g][i] of batch.groups[g].responses[i], None where the reward failed; failures)."""
    inputs = [
        RewardInput(samples[g.prompt_index], r.text, len(r.token_ids))
        for g in batch.groups
        for r in g.responses
    ]
    scored = rewards.score(inputs)
    grouped, cursor = [], 0
    for group in batch.groups:
        grouped.append(tuple(scored.scores[cursor : cursor + len(group.responses)]))
        cursor += len(group.responses)
    return tuple(grouped), len(scored.failures)


class NonFiniteUpdates(RuntimeError):
    """`trainer.max_consecutive_skips` updates in a row had a non-finite loss or gradient."""


@dataclass
class SkipStreak:
    """Updates skipped in a row for a non-finite loss or gradient (vidrl.learner.guard): a run
    whose updates keep going bad stops, naming the step and what was not finite."""

    limit: int
    count: int = 0

    def observe(self, step: int, learned: LearnerStep | None) -> None:
        if learned is None:
            return
        if learned.metrics.get("updates", 0.0) > 0:
            self.count = 0
        self.count += len(learned.skipped)
        if learned.skipped and self.count >= self.limit:
            raise NonFiniteUpdates(
                f"step {step}: {self.count} updates in a row were not applied "
                f"(trainer.max_consecutive_skips={self.limit}); the last: {learned.skipped[-1]}"
            )


def grpo_step(run: Run, step: int, rollout: Rollout) -> tuple[dict[str, float], LearnerStep | None]:
    """Learn from one step's kept groups and push the weights; returns the step's metrics and
    what the learner did (None: no group to train on). A step whose updates were all skipped
    (no group, or a non-finite loss or gradient) pushes nothing: the weights version stays.

    Colocated (learner and engines on the same devices), the two take turns: the engines slept
    after generating, the learner's state comes back for the update and goes to host memory
    once the weights are exported, and the engines then wake to load them."""
    colocated = run.cfg.cluster.placement == "colocated"
    timer = PhaseTimer()
    with timer.phase("prepare"):  # the processor: pixels and grids of each kept group's video
        groups = [g for r in rollout.rounds for g in learner_groups(run, r)]
    with timer.phase("learn"):
        if colocated:
            run.learner.onload()
        learned = run.learner.train_step(groups) if groups else None
    if not groups:  # every group failed, was filtered or was left unscored
        log.warning(
            "step %d: no group to train on; nothing learned or pushed, weights stay at version %d",
            step,
            run.weights_version,
        )
    applied = learned is not None and learned.metrics["updates"] > 0
    update: dict[str, float] = {}
    with timer.phase("sync"):
        if applied:
            run.weights_version += 1
            refs = run.learner.export_weights(run.weights_version)
        if colocated:
            run.learner.offload()
        if applied:
            update = dict(run.rollout.update_weights(run.weights_version, refs).as_dict())
    metrics = {} if learned is None else learned.metrics
    return {
        **{f"learner/{k}": v for k, v in metrics.items()},
        **rollout_metrics(rollout.rounds),
        **update,
        **reward_metrics(rollout.rounds),
        **rollout.gate_metrics,
        "groups/drawn": float(sum(r.drawn for r in rollout.rounds)),
        "groups/generated": float(sum(len(r.batch.groups) for r in rollout.rounds)),
        "groups/kept": float(sum(len(r.kept) for r in rollout.rounds)),
        "groups/trained": float(len(groups)),
        "groups/refill_rounds": float(len(rollout.rounds) - 1),
        "samples/failed": float(sum(r.failed_samples for r in rollout.rounds)),
        "samples/quarantined": float(len(rollout.failures_state.get("quarantined", {}))),
        **rollout.seconds,
        **timer.pop(),
    }, learned


def learner_groups(run: Run, round_: Round) -> list[TrainGroup]:
    """The kept groups with their advantages; responses whose reward failed are left out, and
    so are responses cut by the token limit under `loss.overlong_filter` (DAPO), after the
    advantages: they still count in their group's baseline."""
    loss = run.cfg.learner.loss
    out: list[TrainGroup] = []
    for index in round_.kept:
        group, scores = round_.batch.groups[index], round_.scores[index]
        scored = [i for i, s in enumerate(scores) if s is not None]
        if not scored:
            continue
        values = torch.tensor([[scores[i].total for i in scored]])  # type: ignore[union-attr]
        advantages = group_advantages(values, loss.advantage_estimator, loss.advantage_eps)[0]
        trained = [
            j for j, i in enumerate(scored) if not (loss.overlong_filter and group.responses[i].truncated)
        ]
        if not trained:
            continue
        keep, adv = [scored[j] for j in trained], advantages[trained]
        kept = type(group)(
            group.prompt_index,
            group.sample_id,
            group.prompt_token_ids,
            group.frame_positions,
            tuple(group.responses[i] for i in keep),
            group.weights_version,
        )
        prompt, clip = round_.inputs.prompts[group.prompt_index], round_.inputs.clips[group.prompt_index]
        out.append(run.inputs.train_group(kept, prompt, clip, adv.numpy()))
    return out


def reward_metrics(rounds: Sequence[Round]) -> dict[str, float]:
    """Reward and length statistics over every scored response of the step, kept or not
    (what the policy does now, not what the gate let through)."""
    totals: list[float] = []
    components: dict[str, list[float]] = {}
    lengths: list[int] = []
    for round_ in rounds:
        for group, scores in zip(round_.batch.groups, round_.scores, strict=True):
            for response, score in zip(group.responses, scores, strict=True):
                if score is None:
                    continue
                totals.append(score.total)
                lengths.append(len(response.token_ids))
                for name, value in score.components.items():
                    components.setdefault(name, []).append(value)
    metrics = {
        "reward/mean": float(np.mean(totals)) if totals else 0.0,
        "reward/std": float(np.std(totals)) if totals else 0.0,
        "reward/failures": float(sum(r.reward_failures for r in rounds)),
        "response/length_mean": float(np.mean(lengths)) if lengths else 0.0,
    }
    return metrics | {f"reward/{name}": float(np.mean(v)) for name, v in components.items()}


def rollout_metrics(rounds: Sequence[Round]) -> dict[str, float]:
    """The rollout metrics of the step's rounds: counts and seconds add up; rates are recomputed."""
    summed: dict[str, float] = {}
    for round_ in rounds:
        for name, value in round_.batch.metrics.as_dict().items():
            summed[name] = summed.get(name, 0.0) + value
    if len(rounds) > 1:
        seconds, responses = summed["rollout/seconds"], summed["rollout/responses"]
        summed["rollout/tokens_per_second"] = summed["rollout/tokens_generated"] / max(seconds, 1e-9)
        truncated = sum(r.batch.metrics.truncated_fraction * r.batch.metrics.responses for r in rounds)
        summed["rollout/truncated_fraction"] = truncated / max(responses, 1.0)
    return summed


def run_grpo(
    run: Run,
    start_step: int,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    extra_metrics: Callable[[int], dict[str, float]] | None = None,
) -> None:
    """Steps start_step .. trainer.steps - 1, synchronous or one step off-policy.

    extra_metrics(step) is logged with the step's row (e.g. a held-out evaluation every K
    steps); on_step(step, metrics) runs after the row is logged (progress, checkpoints)."""
    cfg = run.cfg
    steps = cfg.trainer.steps
    if start_step >= steps:
        return
    streak = SkipStreak(cfg.trainer.max_consecutive_skips)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout")
    try:
        pending: Future[Rollout] | None = None
        for step in range(start_step, steps):
            started = time.perf_counter()
            rollout = pending.result() if pending is not None else collect(run, step)
            pending = None
            if cfg.trainer.max_staleness == 1 and step + 1 < steps:
                pending = executor.submit(collect, run, step + 1)
            metrics, learned = grpo_step(run, step, rollout)
            # A checkpoint after this step resumes with the prompts (and gate counts) after
            # this step's, even when the next step's prompts were already drawn (max_staleness 1).
            run.sampler_state, run.gate_state = rollout.sampler_state, rollout.gate_state
            run.failures_state = rollout.failures_state
            metrics["time/step"] = time.perf_counter() - started
            # The part of this step's collection that ran while the step before it learned.
            metrics["time/overlap"] = max(0.0, min(rollout.finished, started) - rollout.started)
            metrics["weights_version"] = float(run.weights_version)
            metrics["run/restarts"] = float(run.restarts)
            metrics["time/finished_at"] = time.time()  # when the step ended (seconds since the epoch)
            if extra_metrics is not None:
                metrics |= extra_metrics(step)
            run.sink.log(step, metrics)
            streak.observe(step, learned)  # after the row is logged, before any checkpoint of it
            if on_step is not None:
                on_step(step, metrics)
    finally:
        executor.shutdown(wait=True)
