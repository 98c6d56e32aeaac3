"""Shared-prefix groups: packing worked by hand, and equality with the plain layout on a real model.

The model tests run the tiny Qwen2.5-VL on real video prompts (processor + chat template). Its
weights are drawn with init_std 0.1 rather than the default 0.02 so that the logits depend
strongly on context: a wrong mask or wrong positions then moves log-probs by 0.1-1, far above
the 1e-5 tolerance of the equality checks (the negative controls below show it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from vidrl.data.prompts import PromptConfig, render_prompt
from vidrl.data.sample import Sample
from vidrl.data.tiny import build_tiny_model
from vidrl.learner.attention import SHARED_PREFIX_ATTENTION, register_shared_prefix_attention
from vidrl.learner.forward import config_prompt_position_ids, model_attention_mask
from vidrl.learner.forward import response_logprobs_plain as plain_fn
from vidrl.learner.forward import response_logprobs_shared as shared_fn
from vidrl.learner.prefix import (
    batch_groups,
    pack_group,
    prefix_attention_mask,
    response_mask,
    split_group,
    unpack_responses,
)
from vidrl.learner.types import PackedGroup, ResponseLogprobs, VisionInputs
from vidrl.models.qwen2_5_vl import prompt_position_ids

# --------------------------------------------------------------------------------------------
# Packing, by hand
# --------------------------------------------------------------------------------------------

# A 3-token prompt whose largest position (5, a visual token's temporal position) is not its
# last, and two responses of 2 and 1 tokens.
PROMPT_IDS = torch.tensor([10, 11, 12])
PROMPT_POSITIONS = torch.tensor([[0, 5, 2], [0, 1, 2], [0, 1, 2]])
RESPONSES = [[20, 21], [30]]


def test_pack_group_lays_out_ids_positions_rows_and_targets() -> None:
    group = pack_group(PROMPT_IDS, PROMPT_POSITIONS, RESPONSES)
    assert group.input_ids.tolist() == [10, 11, 12, 20, 21, 30]
    # Both responses continue from max(prompt positions) + 1 = 5 + 1 = 6, in all three rows.
    assert group.position_ids.tolist() == [[0, 5, 2, 6, 7, 6]] * 1 + [[0, 1, 2, 6, 7, 6]] * 2
    assert group.segment_ids.tolist() == [0, 0, 0, 1, 1, 2]
    # Token 20 and token 30 are predicted by the last prompt row (2); token 21 by row 3 (token 20).
    assert group.logit_rows.tolist() == [2, 3, 2]
    assert group.targets.tolist() == [20, 21, 30]
    assert group.response_lengths == (2, 1)
    assert (group.prompt_length, group.length, group.num_responses) == (3, 6, 2)
    assert group.response_spans() == [(3, 5), (5, 6)]


def test_prefix_mask_sees_prompt_and_own_response_only() -> None:
    mask = prefix_attention_mask(pack_group(PROMPT_IDS, PROMPT_POSITIONS, RESPONSES))
    expected = [
        # keys: p0 p1 p2 a0 a1 b0
        [1, 0, 0, 0, 0, 0],  # p0: causal within the prompt
        [1, 1, 0, 0, 0, 0],  # p1
        [1, 1, 1, 0, 0, 0],  # p2
        [1, 1, 1, 1, 0, 0],  # a0: the prompt and itself
        [1, 1, 1, 1, 1, 0],  # a1: the prompt, a0 and itself
        [1, 1, 1, 0, 0, 1],  # b0: the prompt and itself, not response a
    ]
    assert mask.int().tolist() == expected


def test_one_response_gives_the_causal_mask() -> None:
    group = pack_group(PROMPT_IDS, PROMPT_POSITIONS, [[20, 21]])
    assert torch.equal(prefix_attention_mask(group), torch.ones(5, 5, dtype=torch.bool).tril())


def test_batch_groups_pads_right_and_leaves_no_row_empty() -> None:
    long = pack_group(PROMPT_IDS, PROMPT_POSITIONS, RESPONSES)  # 6 tokens
    short = pack_group(torch.tensor([40, 41]), torch.arange(2).expand(3, 2), [[50, 51]])  # 4
    batch = batch_groups([long, short], pad_token_id=99)
    assert batch.input_ids.tolist() == [[10, 11, 12, 20, 21, 30], [40, 41, 50, 51, 99, 99]]
    # The short group's responses start at max(0, 1) + 1 = 2; padding gets position 0.
    assert batch.position_ids[:, 1].tolist() == [[0, 1, 2, 3, 0, 0]] * 3
    assert batch.padding_mask.int().tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0]]
    assert batch.attention_mask.shape == (2, 1, 6, 6)
    short_mask = batch.attention_mask[1, 0].int().tolist()
    assert short_mask == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 0],  # padding rows attend to themselves only (no all-masked row)
        [0, 0, 0, 0, 0, 1],
    ]


def test_split_group() -> None:
    group = pack_group(PROMPT_IDS, PROMPT_POSITIONS, RESPONSES)
    singles = split_group(group)
    assert [s.input_ids.tolist() for s in singles] == [[10, 11, 12, 20, 21], [10, 11, 12, 30]]
    assert [s.position_ids[0].tolist() for s in singles] == [[0, 5, 2, 6, 7], [0, 5, 2, 6]]


def test_unpack_responses_and_mask() -> None:
    group = pack_group(PROMPT_IDS, PROMPT_POSITIONS, RESPONSES)
    values = torch.tensor([0.5, -1.0, 2.0])  # packed order: a0, a1, b0
    assert unpack_responses(values, group).tolist() == [[0.5, -1.0], [2.0, 0.0]]
    assert response_mask(group).tolist() == [[True, True], [True, False]]


def test_pack_group_rejects_empty_inputs() -> None:
    with pytest.raises(ValueError, match="every response"):
        pack_group(PROMPT_IDS, PROMPT_POSITIONS, [[20], []])
    with pytest.raises(ValueError, match="at least one token"):
        pack_group(torch.tensor([], dtype=torch.long), torch.zeros(3, 0), [[20]])
    with pytest.raises(ValueError, match="prompt positions"):
        pack_group(PROMPT_IDS, torch.zeros(3, 2), [[20]])


def test_prompt_positions_follow_the_reference_rule() -> None:
    video = 7
    # 2 text tokens, a video of grid (t=2, h=4, w=4) -> merged 2 x 2 x 2 = 8 tokens, 2 text tokens.
    ids = torch.tensor([1, 2] + [video] * 8 + [3, 4])
    positions = prompt_position_ids(
        ids, video, torch.tensor([[2, 4, 4]]), [1.0], spatial_merge_size=2, tokens_per_second=2
    )
    # Video starts at 2; temporal step = 1.0 s x 2 tokens/s = 2 -> t = 2 + (0 or 2);
    # h = 2 + (0, 1); w = 2 + (0, 1). Text after continues from max = 4 (temporal) + 1 = 5.
    assert positions.tolist() == [
        [0, 1, 2, 2, 2, 2, 4, 4, 4, 4, 5, 6],
        [0, 1, 2, 2, 3, 3, 2, 2, 3, 3, 5, 6],
        [0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 5, 6],
    ]
    text_only = prompt_position_ids(torch.tensor([1, 2, 3]), video)
    assert text_only.tolist() == [[0, 1, 2]] * 3
    with pytest.raises(ValueError, match="videos"):
        prompt_position_ids(ids, video)


def test_attention_mask_forms() -> None:
    mask = torch.tensor([[[[True, False], [True, True]]]])
    assert model_attention_mask(mask, "sdpa", torch.float32) is mask
    additive = model_attention_mask(mask, "eager", torch.float32)
    lowest = torch.finfo(torch.float32).min
    assert additive.tolist() == [[[[0.0, lowest], [0.0, 0.0]]]]
    with pytest.raises(ValueError, match="4D mask"):
        model_attention_mask(mask, "flash_attention_2", torch.float32)


# --------------------------------------------------------------------------------------------
# Shared equals plain, on the tiny Qwen2.5-VL with real video prompts
# --------------------------------------------------------------------------------------------

Prompt = tuple[torch.Tensor, torch.Tensor, VisionInputs | None]  # ids [P], positions [3, P]
LogprobFn = Callable[..., list[ResponseLogprobs]]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The tiny model's ops are too small to split: with other processes on the 2 cores, two
    intra-op threads spin on each other and ran the forward 10x slower than one (0.8 s vs 0.07)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("prefix") / "tiny", seed=0, init_std=0.1)


@pytest.fixture(scope="module")
def processor(model_dir: Path) -> AutoProcessor:
    return AutoProcessor.from_pretrained(model_dir)


def load_model(model_dir: Path, attention: str) -> Qwen2_5_VLForConditionalGeneration:
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(
        model_dir, attn_implementation=attention, dtype=torch.float32
    )


@pytest.fixture(scope="module")
def model(model_dir: Path) -> Qwen2_5_VLForConditionalGeneration:
    """SDPA attention, what the learner runs on CPU and on GPUs without flash-attn."""
    return load_model(model_dir, "sdpa")


def _sample(question: str) -> Sample:
    return Sample(
        id="q",
        task="tvg",
        video="v.mp4",
        question=question,
        duration=8.0,
        timestamps=((1.0, 3.0),),
    )


def video_prompt(
    processor: AutoProcessor, model: torch.nn.Module, video: np.ndarray, question: str
) -> tuple[Prompt, dict[str, torch.Tensor]]:
    """Render and process a real video prompt: (ids, positions, vision) and the raw output."""
    text = render_prompt(_sample(question), PromptConfig(), processor)
    out = processor(
        text=[text], videos=[video], videos_kwargs={"do_sample_frames": False}, return_tensors="pt"
    )
    ids = out["input_ids"][0]
    positions = config_prompt_position_ids(
        model.config, ids, out["video_grid_thw"], out["second_per_grid_ts"]
    )
    vision = VisionInputs(out["pixel_values_videos"], out["video_grid_thw"])
    return (ids, positions, vision), out


def first_prompt(
    processor: AutoProcessor,
    model: torch.nn.Module,
) -> tuple[Prompt, dict[str, torch.Tensor]]:
    """The prompt most tests use: 4 frames of 56x56 (2 x 4 x 4 patches -> 8 visual tokens)."""
    return video_prompt(processor, model, frames(4, 56, 56, 0), "sits down")


def text_prompt(processor: AutoProcessor, question: str) -> Prompt:
    messages = [{"role": "user", "content": [{"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = processor(text=[text], return_tensors="pt")["input_ids"][0]
    return ids, prompt_position_ids(ids, video_token_id=-1), None


def frames(count: int, height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def responses(lengths: list[int], seed: int, vocab: int = 400) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=generator).tolist() for n in lengths]


def loss_and_grads(
    model: torch.nn.Module,
    fn: LogprobFn,
    groups: list[PackedGroup],
    vision: list[VisionInputs | None],
    advantages: list[torch.Tensor],
) -> tuple[list[ResponseLogprobs], dict[str, torch.Tensor]]:
    """A GRPO-like loss, sum(advantage x logprob) + 0.01 x sum(entropy), and its gradients."""
    model.zero_grad(set_to_none=True)
    records = fn(model, groups, vision, with_entropy=True)
    loss = sum(
        ((adv * r.logprobs + 0.01 * r.entropies) * r.mask).sum()
        for adv, r in zip(advantages, records, strict=True)
    )
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return records, grads


def assert_layouts_agree(
    model: torch.nn.Module,
    groups: list[PackedGroup],
    vision: list[VisionInputs | None],
    attention: str = "mask",
    kernel: str = "sdpa",
) -> None:
    """Log-probs, entropies and every parameter's gradient agree between the two layouts."""
    generator = torch.Generator().manual_seed(1)
    advantages = [torch.randn(g.num_responses, 1, generator=generator) for g in groups]

    def shared_layout(*args: object, **kwargs: object) -> list[ResponseLogprobs]:
        return shared_fn(*args, attention=attention, kernel=kernel, **kwargs)  # type: ignore[arg-type]

    shared, shared_grads = loss_and_grads(model, shared_layout, groups, vision, advantages)
    plain, plain_grads = loss_and_grads(model, plain_fn, groups, vision, advantages)
    for s, p in zip(shared, plain, strict=True):
        assert torch.equal(s.mask, p.mask)
        torch.testing.assert_close(s.logprobs, p.logprobs, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s.entropies, p.entropies, rtol=1e-5, atol=1e-5)
    # Every parameter, the vision tower's included, gets a gradient in both layouts.
    names = [name for name, _ in model.named_parameters()]
    assert sorted(shared_grads) == sorted(plain_grads) == sorted(names)
    for name in names:
        # Relative to each tensor's largest entry (fp32 rounding: seen up to 2e-6).
        error = (shared_grads[name] - plain_grads[name]).abs().max()
        scale = plain_grads[name].abs().max()
        assert error <= 1e-5 * scale, f"{name}: gradients differ by {error / scale:.1e}"


def test_plain_layout_matches_the_models_own_forward(
    model: torch.nn.Module, processor: AutoProcessor
) -> None:
    """Anchor: our plain layout (our positions) equals transformers' forward with its own rope."""
    (ids, positions, vision), out = first_prompt(processor, model)
    response = responses([5], seed=0)[0]
    group = pack_group(ids, positions, [response])
    ours = plain_fn(model, [group], [vision])[0].logprobs[0]
    full = torch.cat([ids, torch.tensor(response)]).unsqueeze(0)
    response_types = torch.zeros(len(response), dtype=torch.long)  # 0: text
    token_types = torch.cat([out["mm_token_type_ids"][0], response_types])
    with torch.no_grad():
        logits = model(
            input_ids=full,
            mm_token_type_ids=token_types.unsqueeze(0),
            pixel_values_videos=out["pixel_values_videos"],
            video_grid_thw=out["video_grid_thw"],
            second_per_grid_ts=out["second_per_grid_ts"],
        ).logits[0, len(ids) - 1 : -1]
    theirs = torch.log_softmax(logits, -1).gather(-1, torch.tensor(response).unsqueeze(-1))[:, 0]
    torch.testing.assert_close(ours.detach(), theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_equals_plain_for_one_video_group(
    model_dir: Path, processor: AutoProcessor, attention: str
) -> None:
    """G = 3 responses of 5, 2 and 7 tokens after a real video prompt, under both attentions."""
    model = load_model(model_dir, attention)
    (ids, positions, vision), _ = first_prompt(processor, model)
    group = pack_group(ids, positions, responses([5, 2, 7], seed=0))
    assert_layouts_agree(model, [group], [vision])


@pytest.mark.parametrize("second", ["video", "text"])
def test_shared_equals_plain_for_two_padded_groups(
    model: torch.nn.Module, processor: AutoProcessor, second: str
) -> None:
    """Two groups of different lengths in one batch; the second prompt has a video or none."""
    (ids_a, pos_a, vision_a), _ = first_prompt(processor, model)
    if second == "video":
        # 6 frames of 84x56: 3 x 6 x 4 patches -> 18 merged tokens, a longer prompt than group a.
        (ids_b, pos_b, vision_b), _ = video_prompt(
            processor, model, frames(6, 84, 56, 1), "the red square moves left"
        )
    else:
        ids_b, pos_b, vision_b = text_prompt(processor, "When does the person open the door?")
    groups = [
        pack_group(ids_a, pos_a, responses([5, 2, 7], seed=0)),
        pack_group(ids_b, pos_b, responses([3, 6], seed=1)),
    ]
    assert groups[0].length != groups[1].length  # so one of them is padded
    assert_layouts_agree(model, groups, [vision_a, vision_b])


@pytest.fixture(scope="module")
def prefix_model(model_dir: Path) -> Qwen2_5_VLForConditionalGeneration:
    """The text model under vidrl's shared-prefix attention (plain SDPA when given no layout)."""
    model = load_model(model_dir, "sdpa")
    register_shared_prefix_attention()
    model.set_attn_implementation({"text_config": SHARED_PREFIX_ATTENTION})
    return model


def two_groups(processor: AutoProcessor, model: torch.nn.Module) -> tuple[list[PackedGroup], list]:
    """A video group (3 responses) and a longer video group (2 responses): one is padded."""
    (ids_a, pos_a, vision_a), _ = first_prompt(processor, model)
    (ids_b, pos_b, vision_b), _ = video_prompt(
        processor, model, frames(6, 84, 56, 1), "the red square moves left"
    )
    groups = [
        pack_group(ids_a, pos_a, responses([5, 2, 7], seed=0)),
        pack_group(ids_b, pos_b, responses([3, 6], seed=1)),
    ]
    return groups, [vision_a, vision_b]


@pytest.mark.parametrize(
    ("attention", "kernel"), [("mask", "sdpa"), ("two_pass", "sdpa"), ("two_pass", "sdpa_varlen")]
)
def test_two_pass_attention_equals_the_plain_layout(
    prefix_model: torch.nn.Module, processor: AutoProcessor, attention: str, kernel: str
) -> None:
    """No T x T mask: prefix self-attention, then responses against [prefix; own] keys, with
    SDPA per group or through the varlen packing flash-attn receives (an SDPA stand-in here)."""
    groups, vision = two_groups(processor, prefix_model)
    assert_layouts_agree(prefix_model, groups, vision, attention, kernel)


def test_flex_attention_forward_equals_the_plain_layout(
    prefix_model: torch.nn.Module, processor: AutoProcessor
) -> None:
    """FlexAttention's block mask (GPU path; torch has no flex backward on CPU, so forward only)."""
    groups, vision = two_groups(processor, prefix_model)
    with torch.no_grad():
        flex = shared_fn(prefix_model, groups, vision, attention="flex", with_entropy=True)
        plain = plain_fn(prefix_model, groups, vision, with_entropy=True)
    for f, p in zip(flex, plain, strict=True):
        torch.testing.assert_close(f.logprobs, p.logprobs, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(f.entropies, p.entropies, rtol=1e-5, atol=1e-5)


def test_two_pass_needs_the_shared_prefix_implementation(
    model: torch.nn.Module, processor: AutoProcessor
) -> None:
    groups, vision = two_groups(processor, model)
    with pytest.raises(ValueError, match="vidrl_shared_prefix"):
        shared_fn(model, groups, vision, attention="two_pass")


def test_batching_does_not_change_a_groups_logprobs(
    model: torch.nn.Module,
    processor: AutoProcessor,
) -> None:
    (ids_a, pos_a, vision_a), _ = first_prompt(processor, model)
    ids_b, pos_b, vision_b = text_prompt(processor, "When does the person open the door?")
    group_a = pack_group(ids_a, pos_a, responses([5, 2, 7], seed=0))
    group_b = pack_group(ids_b, pos_b, responses([3, 6], seed=1))
    with torch.no_grad():
        alone = shared_fn(model, [group_b], [vision_b])[0]
        together = shared_fn(model, [group_a, group_b], [vision_a, vision_b])[1]
    torch.testing.assert_close(alone.logprobs, together.logprobs, rtol=1e-5, atol=1e-5)


def test_vision_encoder_gets_gradients_in_the_shared_layout(
    model: torch.nn.Module, processor: AutoProcessor
) -> None:
    (ids, positions, vision), _ = first_prompt(processor, model)
    group = pack_group(ids, positions, responses([4, 3], seed=0))
    model.zero_grad(set_to_none=True)
    record = shared_fn(model, [group], [vision])[0]
    (record.logprobs * record.mask).sum().backward()
    patch_grad = model.model.visual.patch_embed.proj.weight.grad
    assert patch_grad is not None and patch_grad.abs().max() > 0


def test_wrong_mask_or_positions_are_caught(
    model: torch.nn.Module,
    processor: AutoProcessor,
) -> None:
    """Negative controls: the equality above is sensitive to the very mistakes it guards against."""
    (ids, positions, vision), _ = first_prompt(processor, model)
    group = pack_group(ids, positions, responses([5, 2, 7], seed=0))
    # All tokens in one segment: plain causal attention, so responses 2 and 3 see response 1.
    see_all = dataclasses.replace(group, segment_ids=torch.zeros_like(group.segment_ids))
    # Positions running on through the responses instead of restarting after the prompt.
    prompt_length = group.prompt_length
    running = group.position_ids.clone()
    tail = torch.arange(group.length - prompt_length)
    running[:, prompt_length:] = running[0, prompt_length] + tail
    shifted = dataclasses.replace(group, position_ids=running)
    with torch.no_grad():
        plain = plain_fn(model, [group], [vision])[0].logprobs
        for wrong in (see_all, shifted):
            shared = shared_fn(model, [wrong], [vision])[0].logprobs
            # Response 1 is unaffected by either mistake; the others move far beyond 1e-5.
            torch.testing.assert_close(shared[0], plain[0], rtol=1e-5, atol=1e-5)
            assert (shared[1:] - plain[1:]).abs().max() > 1e-2
