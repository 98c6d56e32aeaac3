"""Faults cost what they touch, piece by piece: a failing sample is quarantined, a run whose samples
keep failing stops, a wait on actors has a deadline and names who failed, a fault is told apart
from an error a restart would repeat. (The whole run surviving them: tests/test_pipeline.py.)"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from vidrl.cluster.quarantine import FILE, FailingData, SampleFailures
from vidrl.cluster.sampler import PromptSampler
from vidrl.data.sample import Sample
from vidrl.data.skips import DataError


def sample(i: int) -> Sample:
    return Sample(
        id=f"s{i}", task="tvg", video=f"v{i}.mp4", question="q", duration=10.0, timestamps=((1.0, 2.0),)
    )


def test_a_sample_that_keeps_failing_is_quarantined_and_listed(tmp_path: Path) -> None:
    failures = SampleFailures(max_failures=2, window=100, max_fraction=0.9, folder=tmp_path)
    assert failures.observe(["s1", "s2"], {"s1": "the engine refused the request"}) == []
    assert failures.observe(["s1", "s3"], {"s1": "the engine refused the request"}) == ["s1"]
    assert list(failures.quarantined) == ["s1"]
    (entry,) = [json.loads(line) for line in (tmp_path / FILE).read_text().splitlines()]
    assert entry == {"sample": "s1", "failures": 2, "last_reason": "the engine refused the request"}
    again = SampleFailures(max_failures=2, window=100, max_fraction=0.9)
    again.load_state_dict(json.loads(json.dumps(failures.state_dict())))  # as a checkpoint keeps it
    assert again.quarantined == failures.quarantined and again.counts == failures.counts


def test_a_resume_lists_only_what_its_checkpoint_quarantined(tmp_path: Path) -> None:
    """Samples quarantined in steps after the checkpoint are taken again by the resume: listed once."""
    failures = SampleFailures(max_failures=1, window=100, max_fraction=0.9, folder=tmp_path)
    failures.observe(["s1"], {"s1": "video v1.mp4: unreadable"})
    checkpoint = json.loads(json.dumps(failures.state_dict()))
    failures.observe(["s2"], {"s2": "video v2.mp4: unreadable"})  # after the checkpoint
    resumed = SampleFailures(max_failures=1, window=100, max_fraction=0.9, folder=tmp_path)
    resumed.load_state_dict(checkpoint)
    resumed.observe(["s2"], {"s2": "video v2.mp4: unreadable"})  # the same step, taken again
    listed = [json.loads(line)["sample"] for line in (tmp_path / FILE).read_text().splitlines()]
    assert listed == ["s1", "s2"]


def test_a_run_whose_recent_samples_fail_too_often_stops_with_the_reasons() -> None:
    failures = SampleFailures(max_failures=99, window=4, max_fraction=0.5)
    failures.observe(["a", "b"], {"a": "video x.mp4: moov atom not found"})
    failures.observe(["c", "d"], {"c": "no response could be scored"})  # 2 of 4: not more than half
    with pytest.raises(FailingData, match=r"(?s)3 of the last 4 samples drawn failed .*\n  e: reward down"):
        failures.observe(["e", "f"], {"e": "reward down", "f": "reward down"})


def test_the_sampler_passes_over_quarantined_samples() -> None:
    samples = [sample(i) for i in range(5)]
    plain, skipping = PromptSampler(samples, seed=3), PromptSampler(samples, seed=3)
    order = [s.id for s in plain.next(10)]
    drawn = [s.id for s in skipping.next(8, excluded={"s2"})]
    assert drawn == [i for i in order if i != "s2"]
    with pytest.raises(DataError, match="every one of the 5 samples is quarantined"):
        skipping.next(1, excluded={s.id for s in samples})


def test_what_failed_in_a_round_is_named_per_sample() -> None:
    from vidrl.cluster.driver import failed_samples
    from vidrl.cluster.inputs import StepInputs
    from vidrl.rewards.types import RewardScore
    from vidrl.rollout.types import RolloutBatch, RolloutGroup, SkippedPrompt

    inputs = StepInputs((), (), (), failed=(("s1", "video v1.mp4: cannot decode"),))
    groups = tuple(
        RolloutGroup(i, f"s{i}", np.zeros(2, np.int32), np.zeros(0, np.int64), (), 0) for i in (3, 4)
    )
    batch = RolloutBatch(groups, (SkippedPrompt(1, "s2", "the engine refused the request"),), (), None, 0)  # type: ignore[arg-type]
    scores = ((None, None), (RewardScore(1.0), None))
    assert failed_samples(inputs, batch, scores) == {
        "s1": "video v1.mp4: cannot decode",
        "s2": "the engine refused the request",
        "s3": "no response could be scored (every reward call failed)",
    }


# ---------------------------------------------------------------- waits on real actors


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.ray
def test_a_wait_on_actors_names_who_failed_or_hung(cluster: None) -> None:
    import ray

    from vidrl.actors import ActorFailed, ActorTimeout, gather
    from vidrl.cluster.recovery import fault_of

    class Sleeper:  # defined here: travels by value (the workers cannot import this module)
        def pid(self) -> int:
            return os.getpid()

        def answer(self, value: int) -> int:
            return value

        def fail(self) -> None:
            raise ValueError("the method's own error")

    actors = [ray.remote(Sleeper).remote() for _ in range(2)]
    names = ["rank 0", "rank 1"]
    assert gather([a.answer.remote(i) for i, a in enumerate(actors)], names, "a step", 30) == [0, 1]
    with pytest.raises(
        ActorFailed, match=r"rank 1 failed during a step: RayTaskError.*the method's own error"
    ) as raised:
        gather([actors[0].answer.remote(0), actors[1].fail.remote()], names, "a step", 30)
    learner = SimpleNamespace(workers=actors, names=names)
    assert fault_of(raised.value, learner) is None  # every actor answers: a restart would repeat it
    pid = ray.get(actors[1].pid.remote())
    os.kill(pid, signal.SIGSTOP)  # a hung process: alive, silent
    try:
        with pytest.raises(ActorTimeout, match="rank 1 did not finish a step within 2 s") as hung:
            gather([a.answer.remote(i) for i, a in enumerate(actors)], names, "a step", 2)
        assert fault_of(hung.value, learner) is not None
    finally:
        os.kill(pid, signal.SIGKILL)  # the process this test stopped
    with pytest.raises(ActorFailed) as died:
        gather([actors[1].answer.remote(1)], names[1:], "a step", 30)
    assert fault_of(died.value, learner) == "rank 1 died during a step"


@pytest.mark.ray
def test_an_actor_whose_constructor_raises_is_no_fault(cluster: None) -> None:
    """Ray reports it as a dead actor too, but a fresh one would raise again: no restart."""
    import ray

    from vidrl.actors import ActorFailed, gather
    from vidrl.cluster.recovery import fault_of

    class Unloadable:
        def __init__(self) -> None:
            raise FileNotFoundError("no model at /nowhere")

        def answer(self) -> int:
            return 0

    actor = ray.remote(Unloadable).remote()
    with pytest.raises(ActorFailed, match="no model at /nowhere") as raised:
        gather([actor.answer.remote()], ["rank 0"], "the rendezvous", 30)
    assert fault_of(raised.value, None) is None


@pytest.mark.ray
@pytest.mark.vllm
def test_an_engine_that_cannot_load_its_model_is_not_retried(cluster: None, tmp_path: Path) -> None:
    """A rollout worker whose engine raises while starting (here: a checkpoint without its
    weights) is a plain error, not the RolloutWorkerError the job restarts for."""
    pytest.importorskip("vllm")
    from vidrl.data.tiny import build_tiny_model
    from vidrl.rollout.config import RolloutConfig
    from vidrl.rollout.pool import RolloutPool
    from vidrl.rollout.types import RolloutWorkerError

    broken = build_tiny_model(tmp_path / "no_weights")
    for weights in Path(broken).glob("*.safetensors"):
        weights.unlink()
    cfg = RolloutConfig(num_workers=1, max_model_len=512, max_response_tokens=8, kv_cache_bytes=32 << 20)
    message = "rollout worker 0 could not start its engine: .*model weights"
    with pytest.raises(RuntimeError, match=message) as raised:
        RolloutPool(cfg, str(broken))
    assert not isinstance(raised.value, RolloutWorkerError)
