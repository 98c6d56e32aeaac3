"""Rollout/learner mismatch: how far the engine's log-probs are from the learner's, and the two
corrections for it, as pure functions over [B, L] tensors (B responses x L tokens, right-padded,
`mask` true on real tokens).

The rollout engine samples with its own kernels (bf16, other reductions, other attention), so
pi_rollout(token) differs from the learner's pi_old(token) for the very same weights. Without a
correction the policy gradient is biased towards what the engine over-samples. With `log_w` =
log pi_old - log pi_rollout per token:

    truncated IS (TIS)  weight = min(e^log_w, C) per token, or min(e^(sum log_w), C) per sequence
    rejection (MIS)     keep a token if e^log_w is in [low, high]; a sequence if its geometric
                        mean e^(mean log_w) is; rejected tokens leave the loss and its counts
    metrics             mean |log_w|; k3 = e^log_w - log_w - 1 (an estimate of
                        KL(pi_rollout || pi_old) from the rollout's samples); the share of tokens
                        with e^log_w outside [1/C, C]

These follow the definitions of verl's rollout correction and TRL's
`vllm_importance_sampling_correction` (truncate) / MIS (mask). pi_old is the learner's policy
before the step's first update (`old_logprobs: recompute`); with the engine's own log-probs as
pi_old, log_w is 0 and there is nothing to correct.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from vidrl.learner.loss_config import CorrectionLevel

LOG_WEIGHT_BOUND = 20.0
"""|log w| clamp before exp() (as the PPO ratio's): keeps weights finite in float32."""


def truncated_weights(
    learner_old: Tensor, rollout: Tensor, mask: Tensor, level: CorrectionLevel, cap: float
) -> Tensor:
    """TIS weights [B, L]: min(pi_old / pi_rollout, cap) per token, or min(prod over the response, cap)
    for every token of it; 1 everywhere with level "none"; 0 on padding. No gradient."""
    real = mask.bool()
    if level == "none":
        return real.to(learner_old.dtype)
    log_w = torch.where(real, learner_old - rollout, torch.zeros_like(learner_old)).detach()  # [B, L]
    if level == "sequence":
        log_w = log_w.sum(-1, keepdim=True).expand_as(log_w)  # [B, L]
    elif level != "token":
        raise ValueError(f"unknown correction level {level!r}")
    weights = log_w.clamp(min=-LOG_WEIGHT_BOUND, max=math.log(cap)).exp()
    return torch.where(real, weights, torch.zeros_like(weights))


def rejection_mask(
    learner_old: Tensor, rollout: Tensor, mask: Tensor, level: CorrectionLevel, low: float, high: float
) -> Tensor:
    """Bool [B, L]: the real tokens kept. token: pi_old / pi_rollout within [low, high]; sequence:
    the geometric mean of the response's ratios within it (then all its tokens or none)."""
    real = mask.bool()
    if level == "none":
        return real
    log_w = torch.where(real, learner_old - rollout, torch.zeros_like(learner_old)).detach()  # [B, L]
    if level == "sequence":
        log_w = (log_w.sum(-1, keepdim=True) / real.sum(-1, keepdim=True).clamp(min=1)).expand_as(log_w)
    elif level != "token":
        raise ValueError(f"unknown correction level {level!r}")
    inside = (log_w >= math.log(low)) & (log_w <= math.log(high))
    return real & inside


@dataclass(frozen=True, slots=True)
class MismatchSums:
    """Sums over real tokens (divide by `tokens` for means; they add over micro-batches and ranks).

    abs_log_ratio: sum |log pi_old - log pi_rollout|; k3: sum of e^log_w - log_w - 1;
    beyond: tokens with e^log_w outside [1/bound, bound]; tokens: real tokens.
    """

    abs_log_ratio: float
    k3: float
    beyond: float
    tokens: float


def mismatch_sums(learner_old: Tensor, rollout: Tensor, mask: Tensor, bound: float) -> MismatchSums:
    """How far the learner's log-probs are from the engine's for the same tokens."""
    real = mask.bool()
    log_w = (learner_old - rollout).detach().double()[real]  # [N]
    clamped = log_w.clamp(-LOG_WEIGHT_BOUND, LOG_WEIGHT_BOUND)
    k3 = clamped.exp() - clamped - 1.0
    return MismatchSums(
        abs_log_ratio=float(log_w.abs().sum()),
        k3=float(k3.sum()),
        beyond=float((log_w.abs() > math.log(bound)).sum()),
        tokens=float(real.sum()),
    )
