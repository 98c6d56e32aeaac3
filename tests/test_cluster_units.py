"""Pure parts of the cluster: the resumable sampler, placement bundles, phase timers."""

from __future__ import annotations

import pytest

from vidrl.cluster.config import load_run_config
from vidrl.cluster.metrics import PhaseTimer
from vidrl.cluster.resources import PIN, bundles
from vidrl.cluster.sampler import PromptSampler
from vidrl.data.sample import Sample


def samples(n: int) -> list[Sample]:
    return [
        Sample(id=str(i), task="mcq", video="v", question="q", duration=1.0, answer="A") for i in range(n)
    ]


def test_sampler_covers_each_epoch_once_and_reshuffles() -> None:
    sampler = PromptSampler(samples(5), seed=0)
    first = [s.id for s in sampler.next(5)]
    second = [s.id for s in sampler.next(5)]
    assert sorted(first) == sorted(second) == ["0", "1", "2", "3", "4"]
    assert first != second  # epoch 1 is another permutation (seeded)


def test_sampler_resumes_with_the_next_unseen_sample() -> None:
    original = PromptSampler(samples(7), seed=3)
    original.next(4)
    state = original.state_dict()
    expected = [s.id for s in original.next(6)]  # crosses into the next epoch
    resumed = PromptSampler(samples(7), seed=3)
    resumed.load_state_dict(state)
    assert [s.id for s in resumed.next(6)] == expected  # no replay, no skip


def test_sampler_refuses_state_of_other_data() -> None:
    state = PromptSampler(samples(7), seed=0).state_dict()
    with pytest.raises(ValueError, match="the data changed"):
        PromptSampler(samples(8), seed=0).load_state_dict(state)


def test_bundles_separate_and_colocated_with_node_pins() -> None:
    cfg = load_run_config(
        None,
        [
            "rollout.num_workers=2",
            "rollout.cpus_per_worker=1",
            "rollout.gpus_per_worker=1",
            "learner.num_ranks=3",
            "learner.cpus_per_rank=2",
            "learner.gpus_per_rank=1",
            "cluster.rollout_node_resource=rollout_node",
            "cluster.learner_node_resource=learner_node",
        ],
    )
    specs, rollout, learner = bundles(cfg)
    assert (
        specs
        == [{"CPU": 1.0, "GPU": 1.0, "rollout_node": PIN}] * 2
        + [{"CPU": 2.0, "GPU": 1.0, "learner_node": PIN}] * 3
    )
    assert (rollout, learner) == ([0, 1], [2, 3, 4])
    colocated = load_run_config(
        None,
        [
            "rollout.num_workers=2",
            "learner.num_ranks=2",
            "cluster.placement=colocated",
            "rollout.gpus_per_worker=0.5",
            "learner.gpus_per_rank=0.5",
        ],
    )
    specs, rollout, learner = bundles(colocated)
    assert specs == [{"CPU": 2.0, "GPU": 1.0}] * 2  # worker i and rank i share bundle i's GPU
    assert (rollout, learner) == ([0, 1], [0, 1])


def test_phase_timer_accumulates_and_resets() -> None:
    timer = PhaseTimer()
    with timer.phase("a"):
        pass
    with timer.phase("a"):
        pass
    times = timer.pop()
    assert set(times) == {"time/a"} and times["time/a"] >= 0
    assert timer.pop() == {}
