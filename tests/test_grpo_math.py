"""The GRPO math (vidrl.learner.grpo) on numbers worked out by hand, and its gradients."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch.autograd import gradcheck

from vidrl.learner.grpo import (
    aggregate,
    group_advantages,
    grpo_loss,
    kl_penalty,
    loss_denominator,
    policy_loss_terms,
)
from vidrl.learner.loss_config import LossAggregation, LossConfig

LN2 = math.log(2.0)
LN3 = math.log(3.0)


def close(actual: torch.Tensor, expected: object, atol: float = 1e-4) -> None:
    expected_t = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual.detach(), expected_t, atol=atol, rtol=0)


# ---------------------------------------------------------------- advantages


def test_grpo_advantages_use_unbiased_std() -> None:
    # [1, 0, 0, 1]: mean 0.5; unbiased var = 4 * 0.25 / 3 = 1/3, std 0.5774;
    # 0.5 / 0.5774 = 0.8660 (a biased std of 0.5 would give 1.0).
    # [1, 0, 0, 0]: mean 0.25; var = (0.75^2 + 3 * 0.25^2) / 3 = 0.75 / 3 = 0.25, std 0.5;
    # 0.75 / 0.5 = 1.5 and -0.25 / 0.5 = -0.5.
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    adv = group_advantages(rewards, "grpo", eps=1e-6)
    close(adv, [[0.8660, -0.8660, -0.8660, 0.8660], [1.5, -0.5, -0.5, -0.5]])


def test_grpo_advantage_eps_is_a_parameter() -> None:
    # [1, 0]: mean 0.5, unbiased std sqrt(2 * 0.25 / 1) = 0.70711;
    # eps 1e-4: 0.5 / 0.70721 = 0.70701; eps 1e-6: 0.5 / 0.70711 = 0.70711.
    rewards = torch.tensor([[1.0, 0.0]])
    close(group_advantages(rewards, "grpo", eps=1e-4), [[0.70701, -0.70701]], atol=2e-5)
    close(group_advantages(rewards, "grpo", eps=1e-6), [[0.70711, -0.70711]], atol=2e-5)


def test_drgrpo_advantages_are_only_centred() -> None:
    # [1, 0, 0, 1] - 0.5; [3, 1, 3, 1] - 2 (no division by the std).
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 1.0, 3.0, 1.0]])
    close(group_advantages(rewards, "drgrpo", 1e-6), [[0.5, -0.5, -0.5, 0.5], [1, -1, 1, -1]])


@pytest.mark.parametrize("estimator", ["grpo", "drgrpo"])
def test_groups_without_signal_get_zero(estimator: str) -> None:
    # A lone sample (its unbiased std would be NaN) gives exactly 0.
    lone = group_advantages(torch.tensor([[0.7], [0.2]]), estimator, eps=1e-6)  # type: ignore[arg-type]
    assert torch.equal(lone, torch.zeros(2, 1))
    # Eight rewards of 0.7: the float32 mean is off by one rounding step, r - mean = 5.96e-8
    # and std 6.37e-8, so the plain formula would give 5.96e-8 / (6.37e-8 + 1e-6) = 0.056
    # to every sample (0.935 with eps 0). Equal rewards must give exactly 0.
    rewards = torch.tensor([[0.7] * 8, [1.0] + [0.0] * 7])
    for eps in (1e-6, 0.0):
        adv = group_advantages(rewards, estimator, eps=eps)  # type: ignore[arg-type]
        assert torch.equal(adv[0], torch.zeros(8))
        assert adv[1, 0] > 0


def test_advantages_accept_integer_rewards_and_reject_bad_input() -> None:
    # [2, 0]: mean 1, centred [1, -1].
    close(group_advantages(torch.tensor([[2, 0]]), "drgrpo", 1e-6), [[1.0, -1.0]])
    with pytest.raises(ValueError, match=r"\[P, G\]"):
        group_advantages(torch.zeros(4), "grpo", 1e-6)
    with pytest.raises(ValueError, match="estimator"):
        group_advantages(torch.zeros(1, 2), "ppo", 1e-6)  # type: ignore[arg-type]


# ---------------------------------------------------------------- clipped surrogate

RATIOS = [0.5, 1.1, 1.5, 4.0]  # band [1 - 0.2, 1 + 0.28] = [0.8, 1.28]


def surrogate(advantages: list[float], dual_clip: float | None) -> tuple[torch.Tensor, ...]:
    logprobs = torch.tensor([RATIOS] * len(advantages)).log().requires_grad_()
    old = torch.zeros_like(logprobs)
    mask = torch.ones_like(logprobs, dtype=torch.bool)
    loss, clipped = policy_loss_terms(logprobs, old, torch.tensor(advantages), mask, 0.2, 0.28, dual_clip)
    (grad,) = torch.autograd.grad(loss.sum(), logprobs)
    return loss, clipped, grad


def test_clip_positive_and_negative_advantages() -> None:
    loss, clipped, grad = surrogate([1.0, -1.0], dual_clip=None)
    # A = +1: -min(r, clip(r)): 0.5 -> -min(0.5, 0.8) = -0.5 (free); 1.1 inside -> -1.1;
    #         1.5 and 4.0 -> -1.28 (clipped above).
    # A = -1: -min(-r, -clip(r)) = max(r, clip(r)): 0.5 -> 0.8 (clipped below); 1.1; 1.5; 4.0.
    close(loss, [[-0.5, -1.1, -1.28, -1.28], [0.8, 1.1, 1.5, 4.0]])
    assert clipped.tolist() == [[False, False, True, True], [True, False, False, False]]
    # d(-A r)/d logp = -A r where the ratio is free; 0 where it is clipped.
    close(grad, [[-0.5, -1.1, 0.0, 0.0], [0.0, 1.1, 1.5, 4.0]])


def test_dual_clip_bounds_negative_advantage_loss() -> None:
    loss, clipped, grad = surrogate([1.0, -1.0, -2.0], dual_clip=3.0)
    # A = +1: untouched by the dual clip.
    # A = -1: min(max(r, clip(r)), 3 * 1): 4.0 -> 3.0, the rest as without dual clip.
    # A = -2: max(2r, 2 clip(r)) = [1.6, 2.2, 3.0, 8.0], then min(., 3 * 2 = 6): 8.0 -> 6.0.
    close(loss, [[-0.5, -1.1, -1.28, -1.28], [0.8, 1.1, 1.5, 3.0], [1.6, 2.2, 3.0, 6.0]])
    assert clipped[1].tolist() == [True, False, False, True]
    assert clipped[2].tolist() == [True, False, False, True]
    # Gradient -A r where free: A = -2 -> [0, 2.2, 3.0, 0].
    close(grad[1:], [[0.0, 1.1, 1.5, 0.0], [0.0, 2.2, 3.0, 0.0]])


def test_padding_gives_zero_loss_and_no_clip() -> None:
    # Garbage log-probs on padding (-inf, 50) must not leak into the loss or the clip count.
    logprobs = torch.tensor([[math.log(1.5), -math.inf, 50.0]])
    mask = torch.tensor([[1, 0, 0]])
    old = torch.zeros(1, 3)
    loss, clipped = policy_loss_terms(logprobs, old, torch.tensor([1.0]), mask, 0.2, 0.2)
    close(loss, [[-1.2, 0.0, 0.0]])  # -min(1.5, 1.2)
    assert clipped.tolist() == [[True, False, False]]


def test_clip_arguments_are_checked() -> None:
    args = (torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1))
    with pytest.raises(ValueError, match="dual_clip"):
        policy_loss_terms(*args, 0.2, 0.28, dual_clip=1.0)
    with pytest.raises(ValueError, match="clip_low"):
        policy_loss_terms(*args, 1.0, 0.28)


# ---------------------------------------------------------------- KL


def test_kl_estimators_at_a_hand_worked_point() -> None:
    # logp = ln 0.5, ref = ln 0.25: d = logp - ref = ln 2 = 0.69315.
    # k1 = 0.69315; k2 = 0.5 * 0.69315^2 = 0.24023; k3 = e^-d + d - 1 = 0.5 + 0.69315 - 1 = 0.19315.
    logp = torch.tensor([[math.log(0.5)]])
    ref = torch.tensor([[math.log(0.25)]])
    close(kl_penalty(logp, ref, "k1"), [[0.69315]])
    close(kl_penalty(logp, ref, "k2"), [[0.24023]])
    close(kl_penalty(logp, ref, "k3"), [[0.19315]])


def test_k3_is_nonnegative_zero_at_equality_and_clamped() -> None:
    logp = torch.linspace(-3.0, 3.0, 13).unsqueeze(0)
    assert (kl_penalty(logp, torch.zeros_like(logp), "k3") >= 0).all()
    for estimator in ("k1", "k2", "k3"):
        assert torch.equal(kl_penalty(logp, logp, estimator), torch.zeros_like(logp))  # type: ignore[arg-type]
    # ref - logp = 5: e^5 - 5 - 1 = 148.41 - 6 = 142.41, clamped to 10 (default) or kept under 200.
    logp, ref = torch.tensor([[-5.0]]), torch.tensor([[0.0]])
    close(kl_penalty(logp, ref, "k3"), [[10.0]])
    close(kl_penalty(logp, ref, "k3", clamp=200.0), [[142.41]], atol=1e-2)


def test_k3_gradient_stays_finite_when_exp_would_overflow() -> None:
    # ref - logp = 100: e^100 overflows float32; the clamped token must give gradient 0, not NaN.
    logp = torch.tensor([[-100.0, -0.5]], requires_grad=True)
    kl_penalty(logp, torch.zeros(1, 2), "k3").sum().backward()
    assert logp.grad is not None
    # Second token: d/dlogp (e^(-logp) + logp - 1) = 1 - e^0.5 = 1 - 1.64872 = -0.64872.
    close(logp.grad, [[0.0, -0.64872]])


# ---------------------------------------------------------------- aggregation

# Row 0: 4 tokens summing to 10; row 1: 2 tokens summing to 11 (NaN on its padding);
# row 2: no tokens at all.
RAGGED_LOSS = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 0.0, math.nan], [9.0, 9.0, 9.0, 9.0]])
RAGGED_MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])


def test_aggregation_modes_on_a_ragged_mask() -> None:
    # token-mean: (10 + 11) / 6 tokens = 3.5
    close(aggregate(RAGGED_LOSS, RAGGED_MASK, "token-mean"), 3.5)
    # seq-mean-token-mean: (10 / 4 + 11 / 2) / 2 sequences = (2.5 + 5.5) / 2 = 4.0; row 2 left out.
    close(aggregate(RAGGED_LOSS, RAGGED_MASK, "seq-mean-token-mean"), 4.0)
    # seq-mean-token-sum-norm with 8 tokens: 21 / (2 sequences * 8) = 1.3125.
    close(aggregate(RAGGED_LOSS, RAGGED_MASK, "seq-mean-token-sum-norm", norm_tokens=8), 1.3125)


def test_denominators_and_the_global_count() -> None:
    assert loss_denominator(RAGGED_MASK, "token-mean").item() == 6
    assert loss_denominator(RAGGED_MASK, "seq-mean-token-mean").item() == 2
    assert loss_denominator(RAGGED_MASK, "seq-mean-token-sum-norm").item() == 2
    # Global counts replace the local ones: 21 / 12 tokens = 1.75; (2.5 + 5.5) / 5 seqs = 1.6.
    close(aggregate(RAGGED_LOSS, RAGGED_MASK, "token-mean", global_denominator=12), 1.75)
    close(aggregate(RAGGED_LOSS, RAGGED_MASK, "seq-mean-token-mean", global_denominator=5), 1.6)


def test_empty_batch_aggregates_to_zero() -> None:
    empty = torch.zeros(2, 3, dtype=torch.bool)
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        assert aggregate(torch.ones(2, 3), empty, mode, norm_tokens=4).item() == 0.0  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="norm_tokens"):
        aggregate(torch.ones(2, 3), empty, "seq-mean-token-sum-norm")


# ---------------------------------------------------------------- the composed loss


def test_grpo_loss_composes_the_terms() -> None:
    # One sequence, A = +1, ratios [1.1, 1.5] (band [0.8, 1.28]): policy tokens [-1.1, -1.28],
    # token-mean -1.19; one of two tokens clipped -> clip fraction 0.5.
    # ref - logp = -ln 2 on both: k3 = 0.5 + 0.69315 - 1 = 0.19315; entropy [1, 2] -> 1.5.
    # loss = -1.19 + 0.1 * 0.19315 - 0.01 * 1.5 = -1.19 + 0.019315 - 0.015 = -1.185685.
    config = LossConfig(kl_coef=0.1, entropy_coef=0.01)
    logprobs = torch.tensor([[math.log(1.1), math.log(1.5)]])
    terms = grpo_loss(
        logprobs,
        torch.zeros(1, 2),
        torch.tensor([1.0]),
        torch.ones(1, 2),
        config,
        ref_logprobs=logprobs - LN2,
        entropy=torch.tensor([[1.0, 2.0]]),
    )
    close(terms.policy_loss, -1.19)
    close(terms.kl, 0.19315)
    close(terms.entropy, 1.5)
    close(terms.clip_fraction, 0.5)
    close(terms.loss, -1.185685)


def test_grpo_loss_needs_the_inputs_its_coefficients_use() -> None:
    args = (torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1), torch.ones(1, 2))
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(*args, LossConfig(kl_coef=0.1, entropy_coef=0.0))
    with pytest.raises(ValueError, match="entropy"):
        grpo_loss(*args, LossConfig(kl_coef=0.0, entropy_coef=0.1))
    # Zero coefficients: nothing needed, kl and entropy reported as 0.
    terms = grpo_loss(*args, LossConfig(kl_coef=0.0, entropy_coef=0.0))
    assert terms.kl.item() == 0.0 and terms.entropy.item() == 0.0


def random_batch(seed: int, rows: int = 8, length: int = 6) -> dict[str, torch.Tensor]:
    """float64 inputs with ragged lengths (row 3 empty), ratios on both sides of the band."""
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(rows, length, generator=gen, dtype=torch.float64) * 3
    lengths = torch.tensor([6, 1, 4, 0, 6, 2, 5, 3])[:rows]
    return {
        "logprobs": old + torch.randn(rows, length, generator=gen, dtype=torch.float64) * 0.5,
        "old_logprobs": old,
        "advantages": torch.randn(rows, generator=gen, dtype=torch.float64),
        "mask": torch.arange(length)[None, :] < lengths[:, None],
        "ref_logprobs": old + torch.randn(rows, length, generator=gen, dtype=torch.float64) * 0.3,
        "entropy": torch.rand(rows, length, generator=gen, dtype=torch.float64) * 2,
    }


MODES: list[LossAggregation] = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


@pytest.mark.parametrize("mode", MODES)
def test_four_micro_batches_give_the_whole_batch_loss_and_gradient(mode: LossAggregation) -> None:
    config = LossConfig(loss_agg=mode, max_response_tokens_norm=8, kl_coef=0.1, entropy_coef=0.01)
    batch = random_batch(seed=2)
    leaves = {k: batch[k].clone().requires_grad_() for k in ("logprobs", "entropy")}

    def run(rows: slice, denominator: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        inputs = {k: v[rows] for k, v in batch.items()} | {k: v[rows] for k, v in leaves.items()}
        terms = grpo_loss(
            inputs.pop("logprobs"),
            inputs.pop("old_logprobs"),
            inputs.pop("advantages"),
            inputs.pop("mask"),
            config,
            global_denominator=denominator,
            **inputs,
        )
        return terms.loss, terms.policy_loss, terms.kl, terms.entropy, terms.clip_fraction

    whole = run(slice(None), None)
    whole_grads = torch.autograd.grad(whole[0], list(leaves.values()))

    pieces = [slice(i, i + 2) for i in range(0, 8, 2)]
    total = sum(loss_denominator(batch["mask"][p], mode) for p in pieces)
    parts = [run(p, total) for p in pieces]
    split = [torch.stack(values).sum() for values in zip(*parts, strict=True)]
    split_grads = torch.autograd.grad(split[0], list(leaves.values()))

    for a, b in zip(whole, split, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(whole_grads, split_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # Local denominators (a plain mean of micro-batch losses) would not agree on this
    # ragged batch: the global count is what makes the split exact.
    naive = torch.stack([run(p, None)[0] for p in pieces]).mean()
    assert abs(naive.item() - whole[0].item()) > 1e-3


@pytest.mark.parametrize("mode", MODES)
def test_total_loss_gradient_matches_finite_differences(mode: LossAggregation) -> None:
    config = LossConfig(loss_agg=mode, max_response_tokens_norm=8, kl_coef=0.1, entropy_coef=0.01)
    batch = random_batch(seed=3)
    logprobs = batch.pop("logprobs").requires_grad_()
    entropy = batch.pop("entropy").requires_grad_()
    terms = grpo_loss(logprobs, **batch, config=config, entropy=entropy)  # type: ignore[arg-type]
    # The sample must exercise both sides: some tokens clipped, some free.
    assert 0.0 < terms.clip_fraction.item() < 1.0

    def total(logp: torch.Tensor, ent: torch.Tensor) -> torch.Tensor:
        return grpo_loss(logp, **batch, config=config, entropy=ent).loss  # type: ignore[arg-type]

    assert gradcheck(total, (logprobs, entropy))


# ---------------------------------------------------------------- config


def test_loss_config_defaults_follow_the_references() -> None:
    config = LossConfig()
    assert (config.clip_low, config.clip_high, config.dual_clip) == (0.2, 0.28, 3.0)
    assert (config.kl_estimator, config.kl_coef, config.kl_clamp) == ("k3", 1e-2, 10.0)
    assert (config.entropy_coef, config.advantage_eps) == (1e-3, 1e-6)
    assert (config.advantage_estimator, config.loss_agg) == ("grpo", "token-mean")
    assert LossConfig(dual_clip=None).dual_clip is None


@pytest.mark.parametrize(
    "overrides",
    [
        {"loss_agg": "seq-mean-token-sum-norm"},  # needs max_response_tokens_norm
        {"dual_clip": 1.0},
        {"clip_low": 1.0},
        {"kl_coef": -0.1},
        {"kl_estimator": "k4"},
        {"clip": 0.2},  # unknown key
    ],
)
def test_loss_config_rejects_bad_values(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        LossConfig(**overrides)  # type: ignore[arg-type]
