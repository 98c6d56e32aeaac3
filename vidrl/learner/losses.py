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

Every sum is a share of an update-wide total (`UpdatePlan.totals`), so micro-batches and ranks
add up to the update's value.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vidrl.learner.batch import StepTotals, TrainGroup
from vidrl.learner.forward import ResponseLogprobs
from vidrl.learner.grpo import grpo_loss
from vidrl.learner.loss_config import LossConfig
from vidrl.learner.offpolicy import mismatch_sums, rejection_mask, truncated_weights

MISMATCH_PREFIX = "mismatch_"
"""Raw sums over tokens (not shares of a total): the group divides them by the token sum."""


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
) -> tuple[Tensor, dict[str, float]]:
    """GRPO loss of the micro-batch and metric partial sums (`<name>_sum`, mismatch raw sums).

    learner_old[i]: group i's log-probs under the policy before the step's first update, or None
    (old_logprobs: rollout). measure_mismatch: compare the current forward with the engine (the
    policy has not moved yet in this step's first update)."""
    denominator = totals.response_tokens if cfg.loss_agg == "token-mean" else totals.sequences
    loss = torch.zeros((), device=outputs[0].logprobs.device)
    parts: dict[str, float] = {}
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
        for name in ("policy_loss", "kl", "entropy", "clip_fraction"):
            _add(parts, f"{name}_sum", float(getattr(terms, name)))
        _add(parts, "loss_sum", float(terms.loss.detach()))
        if measure_mismatch and engine is not None:
            add_mismatch(parts, out.logprobs.detach(), engine, out.mask, cfg.rollout_is_cap)
    return loss, parts


def add_mismatch(
    parts: dict[str, float], learner: Tensor, engine: Tensor, mask: Tensor, bound: float
) -> None:
    sums = mismatch_sums(learner, engine, mask, bound)
    for name in ("abs_log_ratio", "k3", "beyond", "tokens"):
        _add(parts, f"{MISMATCH_PREFIX}{name}", getattr(sums, name))


def sft_microbatch(
    outputs: Sequence[ResponseLogprobs], totals: StepTotals
) -> tuple[Tensor, dict[str, float]]:
    """Cross-entropy of the reference responses, averaged over all their tokens in the update."""
    nll = sum(-(out.logprobs * out.mask).sum() for out in outputs) / max(totals.response_tokens, 1)
    entropy = sum((out.entropies * out.mask).sum() for out in outputs if out.entropies is not None)
    entropy = float(entropy) / max(totals.response_tokens, 1)
    return nll, {"loss_sum": float(nll.detach()), "entropy_sum": entropy}  # type: ignore[union-attr]


def _add(parts: dict[str, float], key: str, value: float) -> None:
    parts[key] = parts.get(key, 0.0) + value
