"""The reward actor pool: user functions and stateful classes, failures and timeouts counted
per sample, never a hung or crashed step."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vidrl.data.sample import Sample
from vidrl.rewards.config import RewardComponentConfig, RewardsConfig
from vidrl.rewards.types import RewardInput

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")

USER_REWARDS = '''
import time
from vidrl.rewards.types import RewardScore

def length_bonus(batch):
    return [RewardScore(total=min(len(x.response), 10) / 10) for x in batch]

def explodes_on_b(batch):
    if any("b" in x.response for x in batch):
        raise RuntimeError("judge crashed")
    return [RewardScore(total=1.0) for x in batch]

def hangs(batch):
    time.sleep(30)  # a stuck judge: the pool must give up after its timeout
    return [RewardScore(total=1.0) for x in batch]

class Counter:
    """State kept across calls inside the actor: the n-th call scores n."""
    def __init__(self, start=0):
        self.calls = start
    def __call__(self, batch):
        self.calls += 1
        return [RewardScore(total=float(self.calls)) for x in batch]
'''


@pytest.fixture(scope="module")
def rewards_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rewards") / "user_rewards.py"
    path.write_text(USER_REWARDS)
    return path


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    yield
    ray.shutdown()


def batch(*responses: str) -> list[RewardInput]:
    return [
        RewardInput(
            sample=Sample(id=f"s{i}", task="mcq", video="v", question="q", duration=1.0, answer="A"),
            response=r,
        )
        for i, r in enumerate(responses)
    ]


def only(spec: str, **kwargs: object) -> RewardsConfig:
    return RewardsConfig(preset=None, components=[RewardComponentConfig(name="user", fn=spec, kwargs=kwargs)])


def test_user_function_scores_in_actors(cluster: None, rewards_file: Path) -> None:
    from vidrl.rewards.pool import RewardPool

    pool = RewardPool(only(f"{rewards_file}:length_bonus"), num_actors=2)
    try:
        result = pool.score(batch("abc", "abcdefghijklmnop", "", "x"))
    finally:
        pool.shutdown()
    assert [s.total for s in result.scores] == [0.3, 1.0, 0.0, 0.1]  # min(len, 10) / 10
    assert result.failures == []


def test_a_raising_reward_fails_only_its_samples(cluster: None, rewards_file: Path) -> None:
    from vidrl.rewards.pool import RewardPool

    pool = RewardPool(only(f"{rewards_file}:explodes_on_b"), num_actors=1)
    try:
        result = pool.score(batch("a", "b", "c"))
    finally:
        pool.shutdown()
    assert [None if s is None else s.total for s in result.scores] == [1.0, None, 1.0]
    assert (
        len(result.failures) == 1
        and "sample s1" in result.failures[0]
        and "judge crashed" in result.failures[0]
    )


def test_a_hanging_reward_times_out_and_the_actor_is_replaced(cluster: None, rewards_file: Path) -> None:
    from vidrl.rewards.pool import RewardPool

    pool = RewardPool(only(f"{rewards_file}:hangs"), num_actors=1, timeout_seconds=2.0)
    try:
        first = pool.actors[0]
        result = pool.score(batch("a", "b"))
        assert result.scores == [None, None]
        assert all("timed out after 2 s" in f for f in result.failures) and len(result.failures) == 2
        assert pool.actors[0] != first  # the stuck actor was replaced
    finally:
        pool.shutdown()


def test_a_stateful_class_is_built_once_per_actor(cluster: None, rewards_file: Path) -> None:
    from vidrl.rewards.pool import RewardPool

    pool = RewardPool(only(f"{rewards_file}:Counter", start=10), num_actors=1)
    try:
        totals = [pool.score(batch("a")).scores[0].total for _ in range(3)]  # type: ignore[union-attr]
    finally:
        pool.shutdown()
    assert totals == [11.0, 12.0, 13.0]  # constructed with start=10, then called 3 times


def test_bad_spec_fails_before_any_actor_starts(cluster: None) -> None:
    from vidrl.rewards.pool import RewardPool
    from vidrl.rewards.registry import RewardSpecError

    with pytest.raises(RewardSpecError, match=r"nope\.py"):
        RewardPool(only("nope.py:fn"), num_actors=1)
