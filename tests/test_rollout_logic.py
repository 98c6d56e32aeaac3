"""The rollout's pure parts: spreading prompts, seeds, metrics, config checks, error records."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from pydantic import ValidationError

from vidrl.rollout.config import RolloutConfig
from vidrl.rollout.pool import rollout_metrics, spread_prompts
from vidrl.rollout.types import (
    FinishReason,
    Response,
    RolloutGroup,
    RolloutWorkerError,
    Sampling,
    WeightsVersionMismatch,
    WorkerOutput,
)
from vidrl.rollout.worker import step_seed


def test_spread_puts_the_costliest_prompt_on_the_least_loaded_worker() -> None:
    # Costliest first: 9 (prompt 1) -> w0 [9]; 7 (3) -> w1 [7]; 5 (0) -> w1 [12];
    # 3 (4) -> w0 [12]; 2 (2) -> tie at 12, lower index w0 [14]. Shares in prompt order.
    assert spread_prompts([5, 9, 2, 7, 3], 2) == [[1, 2, 4], [0, 3]]


def test_spread_with_more_workers_than_prompts_leaves_some_idle() -> None:
    assert spread_prompts([4, 4], 3) == [[0], [1], []]
    assert spread_prompts([], 2) == [[], []]


def test_step_seed_is_fixed_by_run_worker_and_step() -> None:
    seed = step_seed(0, 1, 5)
    assert seed == step_seed(0, 1, 5) and 0 <= seed < 2**32
    others = {step_seed(1, 1, 5), step_seed(0, 0, 5), step_seed(0, 1, 6)}
    assert seed not in others and len(others) == 3


def response(length: int, reason: FinishReason) -> Response:
    return Response(np.zeros(length, np.int32), np.zeros(length, np.float32), "", reason, 0)


def group(index: int, prompt_tokens: int, responses: tuple[Response, ...]) -> RolloutGroup:
    ids = np.zeros(prompt_tokens, np.int32)
    return RolloutGroup(index, f"s{index}", ids, np.arange(0), responses, 0)


def test_metrics_of_a_call() -> None:
    groups = [
        group(0, 10, (response(3, "stop"), response(5, "length"))),
        group(2, 20, (response(2, "stop"), response(6, "length"))),
    ]
    outputs = [WorkerOutput(tuple(groups[:1]), (), 1, 3.0, 0), WorkerOutput((), (), 0, 2.0, 0)]
    m = rollout_metrics(groups, skipped=1, outputs=outputs, restarts=0, seconds=4.0)
    assert (m.prompts, m.skipped_prompts, m.reduced_prompts, m.responses) == (2, 1, 1, 4)
    assert m.tokens_generated == 16  # 3 + 5 + 2 + 6
    assert m.prompt_tokens == 30  # 10 + 20
    assert m.tokens_per_second == 4.0  # 16 tokens / 4 s
    assert m.slowest_worker_seconds == 3.0  # max(3.0, 2.0)
    assert m.truncated_fraction == 0.5  # 2 of 4 responses hit the limit
    assert m.as_dict()["rollout/tokens_per_second"] == 4.0
    empty = rollout_metrics([], skipped=0, outputs=[], restarts=0, seconds=0.0)
    assert (empty.tokens_per_second, empty.truncated_fraction) == (0.0, 0.0)


def test_config_sampling_record() -> None:
    cfg = RolloutConfig(samples_per_prompt=4, temperature=0.5, stop_strings=("</answer>",))
    assert cfg.sampling == Sampling(4, 0.5, 1.0, 512, ("</answer>",))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_response_tokens": 512, "max_model_len": 512}, "no room"),
        ({"min_pixels_per_frame": 3136}, "both"),
        ({"min_pixels_per_frame": 9000, "max_pixels_per_frame": 3136}, "9000 > "),
        ({"gpus_per_worker": 1, "tensor_parallel_size": 2}, "tensor_parallel_size 2"),
        ({"batch_size": 8}, "Extra inputs"),
    ],
)
def test_config_rejects_inconsistent_fields(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RolloutConfig(**fields)  # type: ignore[arg-type]


def test_errors_survive_pickling_across_actors() -> None:
    mismatch = pickle.loads(pickle.dumps(WeightsVersionMismatch({0: 3, 1: 4}, expected=4)))
    assert mismatch.versions == {0: 3, 1: 4} and mismatch.expected == 4
    assert str(mismatch) == "rollout weights disagree: expected v4, got worker 0: v3, worker 1: v4"
    failed = pickle.loads(pickle.dumps(RolloutWorkerError(1, "ActorDiedError: killed")))
    assert (failed.worker_index, failed.cause) == (1, "ActorDiedError: killed")
