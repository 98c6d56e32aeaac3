"""The loss of one micro-batch of groups, from the log-probs the model gave for it.

The worker runs the model (vidrl.learner.worker); this module turns its per-group records into
the GRPO (or SFT) loss and the metric partial sums, choosing the old policy and the rollout
corrections as the config says:

    old policy   the learner's own log-probs from before the step's first update
                 (`old_logprobs: recompute`), else the engine's (`rollout`), else (no engine
                 log-probs, e.g. tests) the current forward's, detached
    corrections  truncated IS weights and rejection masks of pi_old / pi_rollout
                 (vidrl.learner.offpolicy), when the engine's log-probs are known
    mismatch     how far the learner's log-probs are from the engine's, summed for metrics

Every loss term is a share of an update-wide total (`UpdatePlan.totals`), so micro-batches and
ranks add up to the update's value (`LossSums`); the mismatch is kept as raw sums over tokens
(`MismatchSums`), made into means once all ranks' sums are in (vidrl.learner.types).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vidrl.learner.grpo import grpo_loss
from vidrl.learner.loss_config import LossConfig
from vidrl.learner.offpolicy import MismatchSums, mismatch_sums, rejection_mask, truncated_weights
from vidrl.learner.types import LossSums, ResponseLogprobs, StepTotals, TrainGroup, add_mismatch


def rollout_logprobs(group: TrainGroup, like: Tensor) -> Tensor | None:
    """The engine's log-probs of the group's responses, [G, Lmax] like `like` (0 on padding),
    or None when the group carries none."""
    if group.old_logprobs is None:
        return None
    out = torch.zeros_like(like)
    for row, values in enumerate(group.old_logprobs):
        out[row, : len(values)] = torch.as_tensor(values, dtype=out.dtype)
    return out


def kept_mask(
    out: ResponseLogprobs, group: TrainGroup, learner_old: Tensor | None, cfg: LossConfig
) -> Tensor:
    """The tokens that count in the loss: the real ones, less those rejected by the rollout ratio."""
    engine = rollout_logprobs(group, out.logprobs)
    if cfg.rollout_rejection == "none" or learner_old is None or engine is None:
        return out.mask
    low, high = cfg.rollout_rejection_low, cfg.rollout_rejection_high
    return rejection_mask(learner_old, engine, out.mask, cfg.rollout_rejection, low, high)


def grpo_microbatch(
    groups: Sequence[TrainGroup],
    outputs: Sequence[ResponseLogprobs],
    references: Sequence[ResponseLogprobs] | None,
    learner_old: Sequence[Tensor | None],
    cfg: LossConfig,
    totals: StepTotals,
    measure_mismatch: bool,
) -> tuple[Tensor, LossSums, MismatchSums | None]:
    """GRPO loss of the micro-batch, its share of the loss terms, and the mismatch sums (None
    unless measured).

    learner_old[i]: group i's log-probs under the policy before the step's first update, or None
    (old_logprobs: rollout). measure_mismatch: compare the current forward with the engine (the
    policy has not moved yet in this step's first update)."""
    denominator = totals.response_tokens if cfg.loss_agg == "token-mean" else totals.sequences
    loss = torch.zeros((), device=outputs[0].logprobs.device)
    sums, mismatch = LossSums(), None
    for index, (group, out) in enumerate(zip(groups, outputs, strict=True)):
        engine = rollout_logprobs(group, out.logprobs)
        old_learner = learner_old[index]
        old = old_learner if old_learner is not None else engine
        old = out.logprobs.detach() if old is None else old
        mask = kept_mask(out, group, old_learner, cfg)
        weights = None
        if cfg.rollout_is != "none" and old_learner is not None and engine is not None:
            weights = truncated_weights(old_learner, engine, out.mask, cfg.rollout_is, cfg.rollout_is_cap)
        terms = grpo_loss(
            out.logprobs,
            old,
            torch.as_tensor(group.advantages, dtype=torch.float32, device=out.logprobs.device),
            mask,
            cfg,
            ref_logprobs=None if references is None else references[index].logprobs,
            entropy=out.entropies,
            global_denominator=denominator,
            rollout_weights=weights,
        )
        loss = loss + terms.loss
        sums = sums + LossSums(
            loss=float(terms.loss.detach()),
            policy_loss=float(terms.policy_loss),
            kl=float(terms.kl),
            entropy=float(terms.entropy),
            clip_fraction=float(terms.clip_fraction),
        )
        if measure_mismatch and engine is not None:
            measured = mismatch_sums(out.logprobs.detach(), engine, out.mask, cfg.rollout_is_cap)
            mismatch = add_mismatch(mismatch, measured)
    return loss, sums, mismatch


def sft_microbatch(outputs: Sequence[ResponseLogprobs], totals: StepTotals) -> tuple[Tensor, LossSums]:
    """Cross-entropy of the reference responses, averaged over all their tokens in the update."""
    nll = sum(-(out.logprobs * out.mask).sum() for out in outputs) / max(totals.response_tokens, 1)
    entropy = sum((out.entropies * out.mask).sum() for out in outputs if out.entropies is not None)
    entropy = float(entropy) / max(totals.response_tokens, 1)
    return nll, LossSums(loss=float(nll.detach()), entropy=entropy)  # type: ignore[union-attr]
