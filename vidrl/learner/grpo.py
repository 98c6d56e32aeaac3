"""The GRPO objective as pure functions over tensors.

Shapes: P prompts x G samples per prompt for rewards; B sequences x L response tokens
(right-padded, `mask` true on real tokens) x V vocabulary entries for everything else.

    advantages = group_advantages(rewards, ...)                 # [P, G] -> [P, G]
    logprobs, entropy = ...                                     # [B, L] (vidrl.learner.logprobs)
    terms      = grpo_loss(logprobs, old, adv, mask, config, ref_logprobs=..., entropy=...)
    terms.loss.backward()

loss = policy + kl_coef * kl - entropy_coef * entropy, each term aggregated the same way. The
policy term's ratio is per token (PPO/GRPO) or per sequence (GSPO, `importance_sampling_level`);
off-policy correction between the rollout engine and the learner is in vidrl.learner.offpolicy.

Splitting a batch into micro-batches and ranks (the update must not depend on the split):
every aggregation is sum(per-micro-batch numerator) / (one count over the WHOLE batch), so

    total = sum(loss_denominator(mb.mask, mode) for mb in micro_batches)   # this rank's
    total = all_reduce(total, SUM)                                         # all ranks
    for mb in micro_batches:
        grpo_loss(..., global_denominator=total).loss.backward()           # grads add up

gives the gradient of the whole batch, provided gradients are SUMMED over ranks: FSDP2
averages them by default, so call `model.set_gradient_divide_factor(1.0)` (or scale the
loss by the world size). The count per mode:
- token-mean: real tokens; each token weighs 1 / (tokens in the batch).
- seq-mean-token-mean: sequences with at least one token. A sequence's token mean is local
  to it, so a micro-batch must hold whole sequences (rows); only the count is global.
- seq-mean-token-sum-norm: the same sequence count; the per-token weight is
  1 / (sequences * norm_tokens), a constant.
Metrics are aggregated with the same denominator, so they also add up over micro-batches.

Departures from the papers and the reference code:
- GRPO divides by the UNBIASED group std (torch.std, as verl and EasyR1 do); a group of one
  sample, or one whose rewards are all equal, gets advantage exactly 0 (verl gives a lone
  sample its raw reward; a tiny nonzero advantage from rounding in the mean is noise).
- Dr.GRPO's "number of sequences" counts sequences with at least one real token, so that
  padding rows added to fill a micro-batch change nothing.
- The log-ratios inside exp() are clamped to [-20, 20] (as verl does) so that neither the
  ratio nor k3 overflows; beyond that the gradient of the token is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vidrl.learner.loss_config import (
    AdvantageEstimator,
    ImportanceLevel,
    KLEstimator,
    LossAggregation,
    LossConfig,
)

LOG_RATIO_BOUND = 20.0
"""|log-ratio| clamp before exp(): e^20 ~ 4.9e8 stays finite in float32 and bf16."""


# ---------------------------------------------------------------- advantages


def group_advantages(rewards: Tensor, estimator: AdvantageEstimator, eps: float) -> Tensor:
    """Advantages of each sample relative to its group: [P, G] -> [P, G].

    grpo: (r - mean) / (std + eps), std unbiased over the G samples; drgrpo: r - mean.
    Groups of one sample and groups of equal rewards carry no signal: advantage 0.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [P, G], got shape {tuple(rewards.shape)}")
    if estimator not in ("grpo", "drgrpo"):
        raise ValueError(f"unknown advantage estimator {estimator!r}")
    rewards = rewards if rewards.is_floating_point() else rewards.float()
    if rewards.shape[1] < 2:
        return torch.zeros_like(rewards)
    centred = rewards - rewards.mean(dim=1, keepdim=True)  # [P, G]
    if estimator == "grpo":
        centred = centred / (rewards.std(dim=1, keepdim=True) + eps)  # [P, G] / [P, 1]
    # An all-equal group can have mean != r by one rounding step; its advantage must be 0.
    spread = rewards.amax(dim=1, keepdim=True) - rewards.amin(dim=1, keepdim=True)  # [P, 1]
    return torch.where(spread > 0, centred, torch.zeros_like(centred))


# ---------------------------------------------------------------- per-token terms


def importance_log_ratio(
    logprobs: Tensor, old_logprobs: Tensor, mask: Tensor, level: ImportanceLevel = "token"
) -> Tensor:
    """log(pi / pi_old) per token [B, L], at the level the ratio is taken (GSPO, arXiv 2507.18071).

    token:          logp_t - old_t (PPO / GRPO).
    sequence:       the mean over the response's real tokens of (logp - old), the same for every
                    token of the response: s_i = (pi(y_i) / pi_old(y_i))^(1 / |y_i|) (GSPO).
    sequence_token: the sequence value, with each token's own gradient: sg[log s_i] + logp_t -
                    sg[logp_t] (GSPO-token; equal in value to "sequence").
    Padding gets 0.
    """
    real = mask.bool()
    token = torch.where(real, logprobs - old_logprobs, torch.zeros_like(logprobs))  # [B, L]
    if level == "token":
        return token
    if level not in ("sequence", "sequence_token"):
        raise ValueError(f"unknown importance sampling level {level!r}")
    sequence = token.sum(-1, keepdim=True) / real.sum(-1, keepdim=True).clamp(min=1)  # [B, 1]
    if level == "sequence_token":
        sequence = sequence.detach() + (logprobs - logprobs.detach())  # [B, L]
    return torch.where(real, sequence.expand_as(token), torch.zeros_like(token))


def policy_loss_terms(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None = None,
    level: ImportanceLevel = "token",
) -> tuple[Tensor, Tensor]:
    """PPO's clipped surrogate per token, and where the clip cut its gradient.

    logprobs, old_logprobs, mask: [B, L]; advantages: [B] (one per sequence).
    loss = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A), ratio = e^(log ratio)
    at `level` (`importance_log_ratio`); with dual_clip c, a token with A < 0 loses at most
    c * |A|. Returns (loss [B, L], 0 on padding; clipped [B, L] bool, true where the loss is
    held constant by either clip, i.e. the token contributes no gradient).
    """
    if not 0.0 <= clip_low < 1.0 or clip_high < 0.0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")
    log_ratio = importance_log_ratio(logprobs, old_logprobs, mask, level)  # [B, L]
    ratio = log_ratio.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND).exp()  # [B, L]
    adv = advantages.unsqueeze(-1)  # [B, 1]
    unclipped = -adv * ratio  # [B, L]
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)  # [B, L]
    loss = torch.maximum(unclipped, clipped)  # [B, L]
    cut = clipped > unclipped  # [B, L]
    if dual_clip is not None:
        bound = -adv * dual_clip  # [B, 1]: c * |A| where A < 0
        dual = (adv < 0) & (loss > bound)  # [B, L]
        loss = torch.where(dual, bound, loss)
        cut = cut | dual
    real = mask.bool()
    return torch.where(real, loss, torch.zeros_like(loss)), cut & real


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator, clamp: float = 10.0) -> Tensor:
    """Per-token estimate of KL(policy || reference) at the sampled tokens: [B, L] -> [B, L].

    k1 = logp - ref; k2 = (logp - ref)^2 / 2; k3 = e^(ref - logp) - (ref - logp) - 1 (>= 0,
    unbiased and low-variance; verl's low_var_kl), clamped to [-clamp, clamp].
    """
    log_ratio = logprobs - ref_logprobs  # [B, L]
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        # Clamped before exp(): an overflowed exp would turn the clamp's zero gradient into NaN.
        back = (-log_ratio).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)  # [B, L]
        return (back.exp() - back - 1.0).clamp(-clamp, clamp)
    raise ValueError(f"unknown KL estimator {estimator!r}")


# ---------------------------------------------------------------- aggregation


def loss_denominator(mask: Tensor, mode: LossAggregation) -> Tensor:
    """The count `aggregate` divides by, for this [B, L] mask: an int64 scalar.

    Sum it over micro-batches and ranks to get the `global_denominator` of a split batch.
    token-mean: real tokens; seq-mean-*: sequences with at least one real token.
    """
    real = mask.bool()
    if mode == "token-mean":
        return real.sum()
    if mode in ("seq-mean-token-mean", "seq-mean-token-sum-norm"):
        return real.any(dim=-1).sum()
    raise ValueError(f"unknown loss aggregation {mode!r}")


def aggregate(
    loss: Tensor,
    mask: Tensor,
    mode: LossAggregation,
    *,
    norm_tokens: int | None = None,
    global_denominator: Tensor | float | None = None,
) -> Tensor:
    """Per-token values [B, L] -> one scalar, counting only tokens where mask is true.

    token-mean:              sum(loss) / tokens
    seq-mean-token-mean:     sum over sequences of (sequence's token mean) / sequences
    seq-mean-token-sum-norm: sum(loss) / norm_tokens / sequences        (Dr.GRPO)
    "sequences" counts those with at least one real token. `global_denominator`
    replaces the local count (tokens or sequences) with the whole batch's; see the
    module docstring. An empty batch gives 0.
    """
    denominator = loss_denominator(mask, mode) if global_denominator is None else global_denominator
    real = mask.bool()
    token_sums = torch.where(real, loss, torch.zeros_like(loss)).sum(dim=-1)  # [B]
    if mode == "token-mean":
        numerator = token_sums.sum()
    elif mode == "seq-mean-token-mean":
        numerator = (token_sums / real.sum(dim=-1).clamp(min=1)).sum()
    else:
        if norm_tokens is None or norm_tokens < 1:
            raise ValueError("seq-mean-token-sum-norm needs norm_tokens >= 1")
        numerator = token_sums.sum() / norm_tokens
    count = torch.as_tensor(denominator, dtype=numerator.dtype, device=numerator.device)
    return numerator / count.clamp(min=1)


# ---------------------------------------------------------------- the loss


@dataclass(frozen=True, slots=True)
class GRPOLossTerms:
    """Scalars of one (micro-)batch. Only `loss` carries a graph; the rest are metrics.

    loss = policy_loss + kl_coef * kl - entropy_coef * entropy, each aggregated by the
    config's mode. clip_fraction is a per-token fraction (token-mean, or seq-mean-token-mean
    for the sequence modes, whose denominator is the same); kl / entropy are 0 when their
    inputs were not given.
    """

    loss: Tensor
    policy_loss: Tensor
    kl: Tensor
    entropy: Tensor
    clip_fraction: Tensor


def grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    config: LossConfig,
    *,
    ref_logprobs: Tensor | None = None,
    entropy: Tensor | None = None,
    global_denominator: Tensor | float | None = None,
    rollout_weights: Tensor | None = None,
) -> GRPOLossTerms:
    """The GRPO loss of B sequences, with its parts as metrics.

    logprobs, old_logprobs, mask, ref_logprobs, entropy: [B, L]; advantages: [B].
    ref_logprobs is needed when kl_coef > 0, entropy (from vidrl.learner.logprobs) when
    entropy_coef > 0; given with a zero coefficient, they are only reported.
    global_denominator: the whole batch's `loss_denominator` (see the module docstring).
    rollout_weights: [B, L] truncated importance weights pi_old / pi_rollout (no gradient;
    vidrl.learner.offpolicy) multiplying each token's policy loss; None: 1.
    """
    mode = config.loss_agg

    def reduce(values: Tensor, how: LossAggregation = mode) -> Tensor:
        return aggregate(
            values,
            mask,
            how,
            norm_tokens=config.max_response_tokens_norm,
            global_denominator=global_denominator,
        )

    level = config.importance_sampling_level
    bounds = (config.clip_low, config.clip_high)
    if level != "token":
        bounds = (config.sequence_clip_low, config.sequence_clip_high)
    per_token, clipped = policy_loss_terms(
        logprobs, old_logprobs, advantages, mask, *bounds, config.dual_clip, level
    )
    if rollout_weights is not None:
        per_token = per_token * rollout_weights.detach()
    policy = reduce(per_token)
    loss = policy
    zero = policy.new_zeros(()).detach()

    # With a zero coefficient a term is only reported: it stays out of the loss's graph.
    kl = zero
    if ref_logprobs is None and config.kl_coef > 0:
        raise ValueError("kl_coef > 0 needs ref_logprobs")
    if ref_logprobs is not None:
        kl = reduce(kl_penalty(logprobs, ref_logprobs, config.kl_estimator, config.kl_clamp))
        if config.kl_coef > 0:
            loss = loss + config.kl_coef * kl

    mean_entropy = zero
    if entropy is None and config.entropy_coef > 0:
        raise ValueError("entropy_coef > 0 needs the per-token entropy")
    if entropy is not None:
        mean_entropy = reduce(entropy)
        if config.entropy_coef > 0:
            loss = loss - config.entropy_coef * mean_entropy

    # Both sequence modes count the same sequences, so the same denominator fits the metric.
    fraction_mode: LossAggregation = "token-mean" if mode == "token-mean" else "seq-mean-token-mean"
    clip_fraction = reduce(clipped.to(per_token.dtype), fraction_mode)
    return GRPOLossTerms(
        loss=loss,
        policy_loss=policy.detach(),
        kl=kl.detach(),
        entropy=mean_entropy.detach(),
        clip_fraction=clip_fraction.detach(),
    )
