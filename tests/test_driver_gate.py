"""The driver's collection of a step with the online gate (pure logic, actors faked): groups
without reward spread are dropped, refill rounds draw exactly the missing prompts, only kept
groups reach the learner, and reward metrics cover every scored response."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from vidrl.cluster.config import load_run_config
from vidrl.cluster.driver import collect, learner_groups, reward_metrics, rollout_metrics
from vidrl.cluster.inputs import StepInputs
from vidrl.cluster.quarantine import SampleFailures
from vidrl.cluster.sampler import PromptSampler
from vidrl.data.sample import Sample
from vidrl.data.skips import SkipLog
from vidrl.learner.types import LearnerStep
from vidrl.rewards.types import RewardInput, RewardScore
from vidrl.rollout.types import Response, RolloutBatch, RolloutGroup, RolloutMetrics, RolloutPrompt
from vidrl.selection.gates import build_gate

# Each sample's id says the rewards its G=4 responses get: "flat" -> all 1.0 (no spread),
# "mixed" -> 0, 1, 0, 1 (std 0.5).
REWARDS = {"flat": [1.0, 1.0, 1.0, 1.0], "mixed": [0.0, 1.0, 0.0, 1.0]}


def sample(i: int, kind: str) -> Sample:
    return Sample(
        id=f"{kind}-{i}", task="tvg", video=f"v{i}.mp4", question="q", duration=10.0, timestamps=((1.0, 2.0),)
    )


class FakeInputs:
    def step_inputs(self, samples: Sequence[Sample], skips: SkipLog, put: Any = None) -> StepInputs:
        prompts = tuple(RolloutPrompt(s.id, "prompt") for s in samples)
        return StepInputs(tuple(samples), tuple(None for _ in samples), prompts)  # type: ignore[arg-type]

    def train_group(self, group: RolloutGroup, prompt: Any, clip: Any, advantages: np.ndarray) -> Any:
        return (group.sample_id, advantages.tolist())


class FakeRollout:
    def __init__(self) -> None:
        self.calls: list[int] = []
        self.refill_rounds: list[int] = []

    def generate(self, prompts: Sequence[RolloutPrompt], step: int, refill_round: int = 0) -> RolloutBatch:
        self.calls.append(len(prompts))
        self.refill_rounds.append(refill_round)
        groups = []
        for index, prompt in enumerate(prompts):
            kind = prompt.sample_id.split("-")[0]
            responses = tuple(
                Response(np.array([1, 2], np.int32), np.zeros(2, np.float32), str(r), "stop", 0)
                for r in REWARDS[kind]
            )
            groups.append(
                RolloutGroup(
                    index, prompt.sample_id, np.zeros(3, np.int32), np.zeros(0, np.int64), responses, 0
                )
            )
        n = 4 * len(prompts)
        metrics = RolloutMetrics(len(prompts), 0, 0, n, 2 * n, 3 * len(prompts), 1.0, 0.9, 2.0 * n, 0.0, 0)
        return RolloutBatch(tuple(groups), (), (), metrics, 0)


@dataclass
class Scored:
    scores: list[RewardScore | None]
    failures: list[str]


class FakeRewards:
    def score(self, inputs: Sequence[RewardInput]) -> Scored:
        return Scored([RewardScore(float(x.response), {"tvg_iou": float(x.response)}) for x in inputs], [])


def fake_run(samples: list[Sample], gate: bool, refills: int, prompts_per_step: int = 4) -> SimpleNamespace:
    cfg = load_run_config(
        None,
        [
            f"gate.enabled={str(gate).lower()}",
            f"gate.max_refill_rounds={refills}",
            f"trainer.prompts_per_step={prompts_per_step}",
        ],
    )
    return SimpleNamespace(
        cfg=cfg,
        sampler=PromptSampler(samples, seed=0),
        skips=SkipLog(1.0),
        inputs=FakeInputs(),
        rollout=FakeRollout(),
        rewards=FakeRewards(),
        gate=build_gate(cfg.gate),
        failures=SampleFailures(max_failures=2, window=100, max_fraction=0.5),
    )


def test_the_gate_drops_flat_groups_and_refills_exactly_the_missing_prompts() -> None:
    # 6 mixed + 6 flat samples; 4 prompts per step, at most 2 refill rounds.
    samples = [sample(i, "mixed") for i in range(6)] + [sample(i, "flat") for i in range(6, 12)]
    run = fake_run(samples, gate=True, refills=2)
    rollout = collect(run, step=0)  # type: ignore[arg-type]
    kept_ids = [r.batch.groups[i].sample_id for r in rollout.rounds for i in r.kept]
    assert all(i.startswith("mixed") for i in kept_ids)
    # Each round draws what is still missing: 4, then 4 - kept, ... (never more than dropped).
    drawn = [r.drawn for r in rollout.rounds]
    assert run.rollout.calls == drawn and drawn[0] == 4
    assert run.rollout.refill_rounds == [0, 1, 2]  # each refill samples streams of its own
    assert drawn == [4, 2, 1]  # with sampler seed 0: kept 2, then 1, then 1 -> the batch is full
    kept_per_round = [len(r.kept) for r in rollout.rounds]
    for i in range(1, len(drawn)):
        assert drawn[i] == 4 - sum(kept_per_round[:i])
    assert len(rollout.rounds) <= 3 and run.sampler.state_dict()["position"] == sum(drawn)
    assert rollout.gate_state == {"groups_seen": sum(drawn), "groups_kept": len(kept_ids)}
    trained = [g for r in rollout.rounds for g in learner_groups(run, r)]  # type: ignore[arg-type]
    assert [sample_id for sample_id, _ in trained] == kept_ids
    # GRPO advantages of 0, 1, 0, 1: mean 0.5, std (unbiased) sqrt(1/3) -> -/+ 0.866
    assert trained[0][1] == pytest.approx([-0.866, 0.866, -0.866, 0.866], abs=1e-3)


def test_refills_stop_after_max_rounds_and_the_step_trains_on_fewer_groups() -> None:
    samples = [sample(i, "flat") for i in range(10)]  # no group has signal
    run = fake_run(samples, gate=True, refills=1)
    rollout = collect(run, step=0)  # type: ignore[arg-type]
    assert [r.drawn for r in rollout.rounds] == [4, 4]  # the first draw, then one refill of 4
    assert all(not r.kept for r in rollout.rounds)
    assert rollout.gate_metrics["gate/kept_fraction"] == 0.0
    # Reward metrics still describe all 8 scored groups (32 responses of reward 1).
    metrics = reward_metrics(rollout.rounds)
    assert metrics["reward/mean"] == 1.0 and metrics["reward/std"] == 0.0
    # Rollout counts add up over rounds; the rate is recomputed: 64 tokens / 2 s.
    summed = rollout_metrics(rollout.rounds)
    assert summed["rollout/responses"] == 32 and summed["rollout/tokens_per_second"] == 32.0


def test_without_the_gate_every_group_is_trained_and_nothing_is_refilled() -> None:
    samples = [sample(i, "flat") for i in range(2)] + [sample(i, "mixed") for i in range(2, 4)]
    run = fake_run(samples, gate=False, refills=2)
    rollout = collect(run, step=0)  # type: ignore[arg-type]
    assert [r.drawn for r in rollout.rounds] == [4] and rollout.rounds[0].kept == (0, 1, 2, 3)
    assert rollout.gate_state == {} and rollout.gate_metrics == {}
    # 2 flat groups (all 1.0) + 2 mixed (0,1,0,1): mean (8 + 4) / 16 = 0.75
    assert reward_metrics(rollout.rounds)["reward/mean"] == 0.75


class RecordingLearner:
    """Records the learner calls of a step, in order."""

    def __init__(self, calls: list[str], skipped: tuple[str, ...] = ()) -> None:
        self.calls, self.skipped = calls, skipped

    def onload(self) -> float:
        self.calls.append("learner.onload")
        return 0.0

    def train_step(self, groups: Sequence[Any]) -> LearnerStep:
        self.calls.append("learner.train_step")
        return LearnerStep({"loss": 0.0, "updates": 0.0 if self.skipped else 1.0}, self.skipped)

    def export_weights(self, version: int) -> list[Any]:
        self.calls.append("learner.export_weights")
        return []

    def offload(self) -> float:
        self.calls.append("learner.offload")
        return 0.0


@pytest.mark.parametrize("placement", ["separate", "colocated"])
def test_colocated_learner_and_engines_take_turns(placement: str) -> None:
    from vidrl.cluster.driver import grpo_step
    from vidrl.rollout.types import UpdateMetrics

    calls: list[str] = []
    samples = [sample(i, "mixed") for i in range(2)]
    run = fake_run(samples, gate=False, refills=0, prompts_per_step=2)
    run.cfg = run.cfg.model_copy(
        update={"cluster": run.cfg.cluster.model_copy(update={"placement": placement})}
    )
    run.learner, run.weights_version = RecordingLearner(calls), 0

    def update_weights(version: int, refs: list[Any]) -> UpdateMetrics:
        calls.append("rollout.update_weights")
        return UpdateMetrics(version, 0.0, 0.0, 0)

    run.rollout.update_weights = update_weights
    grpo_step(run, 0, collect(run, step=0))  # type: ignore[arg-type]
    expected = ["learner.train_step", "learner.export_weights", "rollout.update_weights"]
    if placement == "colocated":  # the learner's state is back for the update and away for the load
        expected = ["learner.onload", *expected[:2], "learner.offload", expected[2]]
    assert calls == expected


def test_overlong_responses_leave_the_loss_after_their_groups_advantages() -> None:
    samples = [sample(0, "mixed")]
    run = fake_run(samples, gate=False, refills=0, prompts_per_step=1)
    loss = run.cfg.learner.loss.model_copy(update={"overlong_filter": True})
    run.cfg = run.cfg.model_copy(update={"learner": run.cfg.learner.model_copy(update={"loss": loss})})
    rollout = collect(run, step=0)  # type: ignore[arg-type]
    round_ = rollout.rounds[0]
    group = round_.batch.groups[0]
    # Responses 1 and 3 (rewards 1 and 1) were cut by the token limit.
    cut = tuple(
        Response(r.token_ids, r.logprobs, r.text, "length" if i in (1, 3) else "stop", 0)
        for i, r in enumerate(group.responses)
    )
    batch = RolloutBatch(
        (RolloutGroup(0, group.sample_id, group.prompt_token_ids, group.frame_positions, cut, 0),),
        (),
        (),
        round_.batch.metrics,
        0,
    )
    seen: list[list[str]] = []
    run.inputs.train_group = lambda g, p, c, adv: seen.append([r.text for r in g.responses]) or adv.tolist()
    (advantages,) = learner_groups(run, dataclasses.replace(round_, batch=batch))  # type: ignore[arg-type]
    # The advantages come from all four (0, 1, 0, 1: -/+ 0.866); only the two uncut responses train.
    assert seen == [["0.0", "0.0"]]
    assert advantages == pytest.approx([-0.866, -0.866], abs=1e-3)


def test_a_collection_times_its_own_phases() -> None:
    """Each step's collection carries its own phase seconds (a one-step-off collection runs in a
    thread while the step before learns: a shared timer would mix the two steps' rows)."""
    samples = [sample(i, "mixed") for i in range(4)]
    rollout = collect(fake_run(samples, gate=False, refills=0), step=0)  # type: ignore[arg-type]
    assert set(rollout.seconds) == {"time/data", "time/rollout", "time/reward"}
    assert all(v >= 0 for v in rollout.seconds.values())
    assert rollout.started <= rollout.finished
    assert sum(rollout.seconds.values()) <= rollout.finished - rollout.started


def test_a_step_whose_updates_were_all_skipped_pushes_nothing() -> None:
    from vidrl.cluster.driver import NonFiniteUpdates, SkipStreak, grpo_step

    calls: list[str] = []
    run = fake_run([sample(i, "mixed") for i in range(2)], gate=False, refills=0, prompts_per_step=2)
    run.learner, run.weights_version = (
        RecordingLearner(calls, ("update 1 of 1 (pass 1): loss not finite (samples a)",)),
        4,
    )
    metrics, learned = grpo_step(run, 0, collect(run, step=0))  # type: ignore[arg-type]
    assert calls == ["learner.train_step"] and run.weights_version == 4  # no export, no push
    assert learned is not None and metrics["learner/updates"] == 0.0
    # Three skipped updates in a row stop the run, naming the step and the reason; an applied
    # update in between starts the count again.
    streak = SkipStreak(limit=3)
    skipped, applied = (
        LearnerStep({"updates": 0.0}, ("loss not finite (samples a)",)),
        LearnerStep({"updates": 1.0}),
    )
    for step, learned_step in enumerate([skipped, skipped, applied, skipped, skipped]):
        streak.observe(step, learned_step)
    with pytest.raises(NonFiniteUpdates, match=r"step 5: 3 updates in a row .*samples a"):
        streak.observe(5, skipped)
