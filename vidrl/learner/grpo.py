"""The GRPO objective as pure functions over tensors.

Shapes: P prompts x G samples per prompt for rewards; B sequences x L response tokens
(right-padded, `mask` true on real tokens) x V vocabulary entries for everything else.

    advantages = group_advantages(rewards, ...)                 # [P, G] -> [P, G]
    logprobs   = token_logprobs(logits, targets)                # [B, L, V] -> [B, L]
    entropy    = entropy_from_logits(logits)                    # [B, L, V] -> [B, L]
    terms      = grpo_loss(logprobs, old, adv, mask, config, ref_logprobs=..., entropy=...)
    terms.loss.backward()

loss = policy + kl_coef * kl - entropy_coef * entropy, each term aggregated the same way.

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
- `token_logprobs` and `entropy_from_logits` work on chunks of tokens in float32 and save
  only the logits (no float32 copy of [B, L, V]) for a backward pass that recomputes the
  softmax chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from vidrl.learner.loss_config import AdvantageEstimator, KLEstimator, LossAggregation, LossConfig

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


def policy_loss_terms(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None = None,
) -> tuple[Tensor, Tensor]:
    """PPO's clipped surrogate per token, and where the clip cut its gradient.

    logprobs, old_logprobs, mask: [B, L]; advantages: [B] (one per sequence).
    loss = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A), ratio = e^(logp - old);
    with dual_clip c, a token with A < 0 loses at most c * |A|.
    Returns (loss [B, L], 0 on padding; clipped [B, L] bool, true where the loss is
    held constant by either clip, i.e. the token contributes no gradient).
    """
    if not 0.0 <= clip_low < 1.0 or clip_high < 0.0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")
    log_ratio = (logprobs - old_logprobs).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)  # [B, L]
    ratio = log_ratio.exp()  # [B, L]
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


# ---------------------------------------------------------------- from logits


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types; float64 stays float64 (gradcheck)."""
    return torch.promote_types(dtype, torch.float32)


def _token_chunks(batch: int, length: int, chunk_tokens: int) -> Iterator[tuple[int, slice]]:
    """(row, token span) pieces of a [B, L] grid, each at most chunk_tokens long.

    Indexing logits[row, span] is a view even when the logits are a slice such as
    model_logits[:, :-1], so no chunk is copied before its float32 upcast.
    """
    for row in range(batch):
        for start in range(0, length, chunk_tokens):
            yield row, slice(start, min(start + chunk_tokens, length))


class _TokenLogprobs(torch.autograd.Function):
    """log softmax(logits)[target], saving the logits and their logsumexp only."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor, chunk_tokens: int) -> Tensor:
        dtype = _compute_dtype(logits.dtype)
        lse = logits.new_empty(targets.shape, dtype=dtype)  # [B, L]
        out = logits.new_empty(targets.shape, dtype=dtype)  # [B, L]
        for row, span in _token_chunks(*targets.shape, chunk_tokens):
            z = logits[row, span].to(dtype)  # [n, V]
            lse[row, span] = torch.logsumexp(z, dim=-1)
            out[row, span] = z.gather(-1, targets[row, span, None]).squeeze(-1) - lse[row, span]
        ctx.save_for_backward(logits, targets, lse)
        ctx.chunk_tokens = chunk_tokens
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None, None]:
        logits, targets, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)  # [B, L, V]
        for row, span in _token_chunks(*targets.shape, ctx.chunk_tokens):
            g = grad_out[row, span, None]  # [n, 1]
            probs = (logits[row, span].to(lse.dtype) - lse[row, span, None]).exp_()  # [n, V]
            # d logp_t / d z_j = [j == t] - p_j
            piece = probs.mul_(-g).scatter_add_(-1, targets[row, span, None], g)
            grad[row, span] = piece
        return grad, None, None


class _Entropy(torch.autograd.Function):
    """-sum p log p of softmax(logits), saving the logits, logsumexp and entropy only."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, chunk_tokens: int) -> Tensor:
        dtype = _compute_dtype(logits.dtype)
        lse = logits.new_empty(logits.shape[:-1], dtype=dtype)  # [B, L]
        out = logits.new_empty(logits.shape[:-1], dtype=dtype)  # [B, L]
        for row, span in _token_chunks(*logits.shape[:-1], chunk_tokens):
            z = logits[row, span].to(dtype)  # [n, V]
            lse[row, span] = torch.logsumexp(z, dim=-1)
            probs = (z - lse[row, span, None]).exp_()  # [n, V]
            # xlogy gives 0 for p = 0 (a -inf logit) where p * log p would give NaN.
            out[row, span] = -torch.xlogy(probs, probs).sum(-1)
        ctx.save_for_backward(logits, lse, out)
        ctx.chunk_tokens = chunk_tokens
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:
        logits, lse, entropy = ctx.saved_tensors
        grad = torch.empty_like(logits)  # [B, L, V]
        for row, span in _token_chunks(*lse.shape, ctx.chunk_tokens):
            probs = (logits[row, span].to(lse.dtype) - lse[row, span, None]).exp_()  # [n, V]
            # dH / dz_j = -p_j (log p_j + H)
            piece = torch.xlogy(probs, probs).add_(probs * entropy[row, span, None])
            grad[row, span] = piece.mul_(-grad_out[row, span, None])
        return grad, None


def token_logprobs(logits: Tensor, targets: Tensor, chunk_tokens: int = 1024) -> Tensor:
    """Log-probability of each target token: logits [B, L, V], targets int [B, L] -> [B, L].

    Computed in float32 (float64 stays float64) chunk_tokens tokens at a time, so the
    transient memory is chunk_tokens * V floats rather than a float32 copy of the logits.
    Targets must be valid ids everywhere (put any id, e.g. 0, on padding). Logits are taken
    as they are: divide them by the sampling temperature first to match the rollout.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not fit targets {tuple(targets.shape)}")
    return _TokenLogprobs.apply(logits, targets.long(), chunk_tokens)


def entropy_from_logits(logits: Tensor, chunk_tokens: int = 1024) -> Tensor:
    """Entropy of each token's next-token distribution: logits [B, L, V] -> [B, L] (nats).

    Same float32 chunking as `token_logprobs`; H = -sum p log p with p = e^(z - logsumexp z).
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, L, V], got shape {tuple(logits.shape)}")
    return _Entropy.apply(logits, chunk_tokens)


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
) -> GRPOLossTerms:
    """The GRPO loss of B sequences, with its parts as metrics.

    logprobs, old_logprobs, mask, ref_logprobs, entropy: [B, L]; advantages: [B].
    ref_logprobs is needed when kl_coef > 0, entropy (from `entropy_from_logits`) when
    entropy_coef > 0; given with a zero coefficient, they are only reported.
    global_denominator: the whole batch's `loss_denominator` (see the module docstring).
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

    clip = (config.clip_low, config.clip_high, config.dual_clip)
    per_token, clipped = policy_loss_terms(logprobs, old_logprobs, advantages, mask, *clip)
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
