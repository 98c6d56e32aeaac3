"""Policy-optimization terms on numbers worked out by hand: the GSPO ratio and its clip, the
rollout corrections (truncated IS weights, rejection masks, mismatch metrics), DAPO's overlong
punishment, mini-batch splitting, and the configs that refuse a combination that cannot work."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from vidrl.data.sample import Sample
from vidrl.learner.batch import split_into_updates
from vidrl.learner.config import LearnerConfig
from vidrl.learner.grpo import grpo_loss, importance_log_ratio, policy_loss_terms
from vidrl.learner.loss_config import LossConfig
from vidrl.learner.offpolicy import mismatch_sums, rejection_mask, truncated_weights
from vidrl.rewards.builtin import overlong_penalty
from vidrl.rewards.types import RewardInput

# Two responses: 2 real tokens, then 1 real token and a pad.
LOGP = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])
OLD = torch.tensor([[-1.5, -1.0], [-0.5, 0.0]])
MASK = torch.tensor([[True, True], [True, False]])


def close(actual: torch.Tensor, expected: object, atol: float = 1e-4) -> None:
    torch.testing.assert_close(
        actual.detach(), torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0
    )


# ---------------------------------------------------------------- GSPO


def test_sequence_ratio_is_the_mean_log_ratio_of_the_response() -> None:
    # Response 1: (0.5 + -1.0) / 2 = -0.25 on both tokens; response 2: 0 / 1 = 0, pad 0.
    close(importance_log_ratio(LOGP, OLD, MASK, "sequence"), [[-0.25, -0.25], [0.0, 0.0]])
    close(importance_log_ratio(LOGP, OLD, MASK, "token"), [[0.5, -1.0], [0.0, 0.0]])
    # GSPO-token has the sequence's value ...
    close(importance_log_ratio(LOGP, OLD, MASK, "sequence_token"), [[-0.25, -0.25], [0.0, 0.0]])


def test_gspo_token_gives_each_token_its_own_gradient() -> None:
    # The gradient of the first token's ratio: sequence spreads it as 1/|y| over the response's
    # tokens; sequence_token keeps it on the token itself.
    expected = {"sequence": [[0.5, 0.5], [1.0, 0.0]], "sequence_token": [[1.0, 0.0], [1.0, 0.0]]}
    for level, grad in expected.items():
        logp = LOGP.clone().requires_grad_()
        importance_log_ratio(logp, OLD, MASK, level)[:, 0].sum().backward()
        close(logp.grad, grad)


def test_sequence_clip_is_gspos_narrow_range() -> None:
    # s = e^-0.25 = 0.77880. A = +1: min(s, clip(s, 1 - 3e-4, 1 + 4e-4)) = s, not clipped, loss -0.7788.
    # A = -1: -min(-s, -0.9997) = 0.9997, clipped.
    advantages = torch.tensor([1.0, -1.0])
    loss, clipped = policy_loss_terms(LOGP, OLD, advantages, MASK, 3e-4, 4e-4, None, "sequence")
    close(loss, [[-0.77880, -0.77880], [1.0, 0.0]])  # response 2: ratio 1, A = -1: loss 1
    assert not clipped[0].any()
    loss2, clipped2 = policy_loss_terms(LOGP, OLD, -advantages, MASK, 3e-4, 4e-4, None, "sequence")
    close(loss2[0], [0.9997, 0.9997])
    assert clipped2[0].all()


def test_grpo_loss_uses_the_sequence_clips_at_sequence_level() -> None:
    cfg = LossConfig(importance_sampling_level="sequence", kl_coef=0.0, entropy_coef=0.0, dual_clip=None)
    terms = grpo_loss(LOGP, OLD, torch.tensor([-1.0, 1.0]), MASK, cfg)
    # Response 1 clipped at 0.9997 (A = -1), response 2 ratio 1 (A = +1: -1); token-mean over 3 tokens.
    close(terms.policy_loss, (0.9997 + 0.9997 - 1.0) / 3)
    close(terms.clip_fraction, 2 / 3)


# ---------------------------------------------------------------- rollout corrections

LEARNER_OLD = torch.tensor([[-1.0, -3.0], [-2.0, -2.0]])
ROLLOUT = torch.tensor([[-2.0, -1.0], [-2.1, -9.0]])  # log w = [1, -2] and [0.1, pad]


def test_truncated_weights_per_token_and_per_sequence() -> None:
    # Token: e^1 = 2.718 -> cap 2; e^-2 = 0.13534; e^0.1 = 1.10517; pad 0.
    close(truncated_weights(LEARNER_OLD, ROLLOUT, MASK, "token", 2.0), [[2.0, 0.13534], [1.10517, 0.0]])
    # Sequence: e^(1 - 2) = 0.36788 on both tokens; e^0.1 = 1.10517.
    close(
        truncated_weights(LEARNER_OLD, ROLLOUT, MASK, "sequence", 2.0), [[0.36788, 0.36788], [1.10517, 0.0]]
    )
    close(truncated_weights(LEARNER_OLD, ROLLOUT, MASK, "none", 2.0), MASK.float())


def test_rejection_masks_tokens_or_whole_sequences_outside_the_band() -> None:
    # Token ratios 2.718 and 0.135 leave [0.5, 2]; 1.105 stays.
    assert rejection_mask(LEARNER_OLD, ROLLOUT, MASK, "token", 0.5, 2.0).tolist() == [
        [False, False],
        [True, False],
    ]
    # Sequence: geometric mean e^(-1/2) = 0.6065 is inside, so response 1 stays whole.
    assert rejection_mask(LEARNER_OLD, ROLLOUT, MASK, "sequence", 0.5, 2.0).tolist() == [
        [True, True],
        [True, False],
    ]
    assert rejection_mask(LEARNER_OLD, ROLLOUT, MASK, "sequence", 0.7, 2.0).tolist() == [
        [False, False],
        [True, False],
    ]


def test_mismatch_sums() -> None:
    # log w = 1, -2, 0.1: |.| sums to 3.1; k3 = (e - 2) + (e^-2 + 1) + (e^0.1 - 1.1)
    #   = 0.71828 + 1.13534 + 0.00517 = 1.85879; beyond [1/2, 2]: the first two.
    sums = mismatch_sums(LEARNER_OLD, ROLLOUT, MASK, 2.0)
    assert sums.abs_log_ratio == pytest.approx(3.1)
    assert sums.k3 == pytest.approx(1.85879, abs=1e-4)
    assert (sums.beyond, sums.tokens) == (2.0, 3.0)


def test_rollout_weights_scale_the_policy_loss_only() -> None:
    cfg = LossConfig(kl_coef=0.0, entropy_coef=0.0, dual_clip=None)
    advantages = torch.tensor([1.0, 1.0])
    plain = grpo_loss(LOGP, LOGP.detach(), advantages, MASK, cfg)  # ratio 1: -1 per token
    weighted = grpo_loss(
        LOGP, LOGP.detach(), advantages, MASK, cfg, rollout_weights=torch.tensor([[2.0, 0.5], [1.0, 0.0]])
    )
    close(plain.policy_loss, -1.0)
    close(weighted.policy_loss, -(2.0 + 0.5 + 1.0) / 3)


# ---------------------------------------------------------------- overlong responses


def test_overlong_punishment_ramps_over_the_buffer() -> None:
    # max 10, buffer 4: 0 up to 6 tokens, then (6 - L) / 4, -1 at 10.
    sample = Sample("s", "tvg", "v", "q", 10.0, timestamps=((1.0, 2.0),))
    lengths = [3, 6, 7, 8, 10, 12, None]
    batch = [RewardInput(sample, "x", length) for length in lengths]
    assert overlong_penalty(batch, max_tokens=10, buffer_tokens=4) == [
        0.0,
        0.0,
        -0.25,
        -0.5,
        -1.0,
        -1.0,
        None,
    ]
    with pytest.raises(ValueError, match="buffer_tokens"):
        overlong_penalty(batch, max_tokens=4, buffer_tokens=4)


def test_overlong_punishment_must_end_at_the_rollouts_limit() -> None:
    from vidrl.cluster.config import load_run_config
    from vidrl.overrides import ConfigError

    component = "{name: overlong, fn: overlong_penalty, kwargs: {max_tokens: 100, buffer_tokens: 20}}"
    with pytest.raises(ConfigError, match="max_response_tokens"):
        load_run_config(None, ["rollout.max_response_tokens=200", f"rewards.components=[{component}]"])
    cfg = load_run_config(None, ["rollout.max_response_tokens=100", f"rewards.components=[{component}]"])
    assert cfg.rewards.resolved_components()[-1].fn == "overlong_penalty"


# ---------------------------------------------------------------- mini-batches and configs


def test_updates_take_consecutive_whole_groups() -> None:
    assert split_into_updates(list(range(4)), 2) == [[0, 1], [2, 3]]
    assert split_into_updates(list(range(5)), 2) == [[0, 1], [2, 3, 4]]
    assert split_into_updates(list(range(2)), 4) == [[0], [1]]
    assert split_into_updates(list(range(3)), 1) == [[0, 1, 2]]


def test_corrections_need_the_learners_own_old_policy() -> None:
    with pytest.raises(ValidationError, match="old_logprobs: recompute"):
        LearnerConfig(loss=LossConfig(rollout_is="token"))
    with pytest.raises(ValidationError, match="old_logprobs: recompute"):
        LearnerConfig(loss=LossConfig(rollout_rejection="sequence"))
    LearnerConfig(old_logprobs="recompute", loss=LossConfig(rollout_is="sequence", rollout_rejection="token"))
    assert math.isclose(LossConfig().sequence_clip_high, 4e-4)
