"""The learner's records: what crosses into a rank, what a forward pass returns, what comes back.

TrainGroup       one prompt and its G responses (numpy: zero-copy through Ray's object store)
VisionInputs     the processor's output for one prompt's video
EncodedVideo     a frozen vision tower's output for one video (learner.freeze_vision)
StepTotals       an update's counts over all ranks: the loss's denominators
UpdatePlan       one optimizer update as one rank runs it
PackedGroup      a group as one sequence [prompt | response 1 | ... | response G]
PackedBatch      B packed groups, right-padded
ResponseLogprobs per-token log-probs (and entropies) of one group's responses
LossSums         a micro-batch's share of the step's loss terms
SkippedUpdate    an update every rank skipped for a non-finite loss or gradient
RankMetrics      one rank's share of a step; `merge_rank_metrics` adds the shares of all ranks
LearnerStep      what a step returns: the merged metrics, and why any update was skipped
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from vidrl.learner.offpolicy import MismatchSums

# ---------------------------------------------------------------- into a rank


@dataclass(frozen=True, slots=True)
class VisionInputs:
    """The processor's output for one prompt's video, computed once, shipped as numpy arrays and
    read as tensors where the model runs (`torch.as_tensor`: no copy on the CPU).

    pixel_values_videos: float32 [N_patches, C * temporal_patch * patch * patch]
    video_grid_thw:      int64 [num_videos, 3] (frames / temporal patch, height, width in patches)
    second_per_grid_ts:  float64 [num_videos], seconds one temporal patch spans (rotary time in
                         Qwen2.5-VL; 1 where the family writes time as text)
    """

    pixel_values_videos: np.ndarray | torch.Tensor
    video_grid_thw: np.ndarray | torch.Tensor
    second_per_grid_ts: np.ndarray | torch.Tensor | None = None
    encoded: EncodedVideo | None = None
    """Set inside a rank with `learner.freeze_vision`: the frozen tower's output for this video,
    computed once per step (vidrl.learner.frozen_vision); the forward passes read it instead of
    running the tower on the pixels."""


@dataclass(frozen=True, slots=True)
class EncodedVideo:
    """The vision tower's output for one video, without an autograd graph.

    embeds:    [tokens, D] the merged patch embeddings the text model's video placeholders take
    deepstack: per DeepStack layer, [tokens, D] (Qwen3-VL, Qwen3.5); empty for Qwen2.5-VL
    """

    embeds: torch.Tensor
    deepstack: tuple[torch.Tensor, ...] = ()


@dataclass(frozen=True, slots=True)
class TrainGroup:
    """One prompt and its G responses.

    prompt_ids:    int64 [P], video pad tokens expanded (as the rollout engine saw them)
    responses:     G x int64 [L_g]
    advantages:    float32 [G] (GRPO) ; for SFT, ones
    old_logprobs:  G x float32 [L_g] from the rollout engine, or None (recompute / SFT)
    vision:        the prompt's video, or None for a text-only prompt
    sample_id:     the sample the prompt came from (named when its update is skipped)
    """

    prompt_ids: np.ndarray
    responses: tuple[np.ndarray, ...]
    advantages: np.ndarray
    old_logprobs: tuple[np.ndarray, ...] | None = None
    vision: VisionInputs | None = None
    sample_id: str = ""

    @property
    def num_response_tokens(self) -> int:
        return int(sum(len(r) for r in self.responses))

    def cost(self, shared_prefix: bool) -> int:
        """Tokens one forward pass processes: P + sum(L) shared, G * P + sum(L) plain."""
        copies = 1 if shared_prefix else len(self.responses)
        return copies * len(self.prompt_ids) + self.num_response_tokens


@dataclass(frozen=True, slots=True)
class StepTotals:
    """Counts over one optimizer update (all ranks, all micro-batches): the loss's denominators."""

    response_tokens: int
    sequences: int


@dataclass(frozen=True, slots=True)
class UpdatePlan:
    """One optimizer update as one rank runs it.

    microbatches:     this rank's micro-batches, each a tuple of whole groups (may be empty).
    num_microbatches: how many forward/backward passes every rank runs for this update (the
                      most any rank has: a rank with fewer runs an idle group at weight 0).
    totals:           the update's counts over all ranks (its loss denominators).
    """

    microbatches: tuple[tuple[TrainGroup, ...], ...]
    num_microbatches: int
    totals: StepTotals


# ---------------------------------------------------------------- inside a rank


@dataclass(frozen=True)
class PackedGroup:
    """One prompt and its G responses as one sequence of T = P + N tokens, N = sum(L_g).

    input_ids: [T] long, the prompt then each response in order.
    position_ids: [3, T] long, multimodal rotary positions (temporal, height, width).
    segment_ids: [T] long, 0 on the prompt and g + 1 on response g.
    response_lengths: [G] tokens in each response, every one at least 1.
    logit_rows: [N] long, the sequence row whose logits predict each response token: the last
        prompt row (P - 1) for the first token of every response, else the previous token's row.
    targets: [N] long, the response tokens themselves, in packed order.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segment_ids: torch.Tensor
    response_lengths: tuple[int, ...]
    logit_rows: torch.Tensor
    targets: torch.Tensor

    @property
    def prompt_length(self) -> int:
        """P: tokens before the first response."""
        return int(self.input_ids.shape[0]) - sum(self.response_lengths)

    @property
    def length(self) -> int:
        """T: tokens in the packed sequence."""
        return int(self.input_ids.shape[0])

    @property
    def num_responses(self) -> int:
        """G: responses in the group."""
        return len(self.response_lengths)

    def response_spans(self) -> list[tuple[int, int]]:
        """[start, end) of each response in the packed sequence, in order."""
        spans, start = [], self.prompt_length
        for length in self.response_lengths:
            spans.append((start, start + length))
            start += length
        return spans


@dataclass(frozen=True)
class PackedBatch:
    """B packed groups right-padded to a common length T (the longest group).

    input_ids: [B, T] long, padded with the pad token.
    position_ids: [3, B, T] long, 0 on padding.
    attention_mask: [B, 1, T, T] bool, True where a query row may attend to a key column; None
        when the batch was made without it (layouts that never build a T x T mask).
    padding_mask: [B, T] bool, True on real tokens.
    groups: the B groups, for unpacking the outputs.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    padding_mask: torch.Tensor
    groups: tuple[PackedGroup, ...]


@dataclass(frozen=True)
class ResponseLogprobs:
    """Per-token values of one group's G responses, right-padded to the longest (Lmax).

    logprobs: [G, Lmax] float32, log p(token) under the policy at the given temperature; 0 on
        padding.
    entropies: [G, Lmax] float32 entropy of the same next-token distribution (0 on padding), or
        None when not asked for.
    mask: [G, Lmax] bool, True on real response tokens.
    """

    logprobs: torch.Tensor
    entropies: torch.Tensor | None
    mask: torch.Tensor


# ---------------------------------------------------------------- out of a rank


@dataclass(frozen=True, slots=True)
class LossSums:
    """Loss terms summed over micro-batches; each a share of an update-wide mean (the loss is
    normalised by the update's totals), so shares add up over micro-batches and ranks. SFT
    leaves the policy-gradient terms at 0."""

    loss: float = 0.0
    policy_loss: float = 0.0
    kl: float = 0.0
    entropy: float = 0.0
    clip_fraction: float = 0.0

    def __add__(self, other: LossSums) -> LossSums:
        return LossSums(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def scaled(self, factor: float) -> LossSums:
        return LossSums(*(getattr(self, f.name) * factor for f in fields(self)))


def add_mismatch(a: MismatchSums | None, b: MismatchSums | None) -> MismatchSums | None:
    """The sum of two mismatch sums (None: nothing measured)."""
    if a is None or b is None:
        return a or b
    return MismatchSums(*(getattr(a, f.name) + getattr(b, f.name) for f in fields(a)))


@dataclass(frozen=True, slots=True)
class SkippedUpdate:
    """An update every rank skipped (vidrl.learner.guard): the `update`-th of `updates` in the
    step's `epoch`-th pass (from 1), the sample ids of this rank's groups whose loss was not
    finite, and the global gradient norm."""

    epoch: int
    update: int
    updates: int
    samples: tuple[str, ...]
    grad_norm: float


def describe_skips(ranks: Sequence[tuple[SkippedUpdate, ...]]) -> tuple[str, ...]:
    """One line per skipped update, from every rank's view of it: where in the step, whose loss
    was not finite (all ranks' samples), the gradient norm."""
    merged: dict[tuple[int, int], list[SkippedUpdate]] = {}
    for skips in ranks:
        for skip in skips:
            merged.setdefault((skip.epoch, skip.update), []).append(skip)
    lines = []
    for (epoch, update), views in sorted(merged.items()):
        samples = [s for view in views for s in view.samples]
        reasons = [f"loss not finite (samples {', '.join(samples)})"] if samples else []
        if not math.isfinite(views[0].grad_norm):
            reasons.append(f"gradient norm {views[0].grad_norm}")
        lines.append(f"update {update} of {views[0].updates} (pass {epoch}): {'; '.join(reasons)}")
    return tuple(lines)


@dataclass(frozen=True, slots=True)
class RankMetrics:
    """One rank's share of a learner step.

    terms: its shares of the step's loss terms (means over the step's updates).
    mismatch: raw sums of the rollout/learner log-prob mismatch over its tokens, or None.
    grad_norm, lr, updates: the same on every rank (grad_norm and lr: means / first of the step's
        applied updates; updates: how many were applied).
    tokens, microbatches: counts on this rank. step_seconds, peak_*_bytes: this rank's own.
    skipped: the updates every rank skipped because a loss or the gradient norm was not finite.
    """

    terms: LossSums
    mismatch: MismatchSums | None
    grad_norm: float
    lr: float
    updates: int
    tokens: int
    microbatches: int
    step_seconds: float
    peak_host_bytes: float | None
    peak_device_bytes: float | None
    skipped: tuple[SkippedUpdate, ...] = ()


@dataclass(frozen=True)
class LearnerStep:
    """A learner step's merged metrics (`merge_rank_metrics`), and one line per update that every
    rank skipped for a non-finite loss or gradient (what, where, which samples), from all ranks."""

    metrics: dict[str, float]
    skipped: tuple[str, ...] = ()


def merge_rank_metrics(ranks: Sequence[RankMetrics]) -> dict[str, float]:
    """The step's metrics from every rank's share: loss terms and counts add up, the step takes
    the slowest rank's time and the fullest rank's memory, the mismatch is a mean over all tokens."""
    terms = sum((r.terms for r in ranks), LossSums())
    mismatch = None
    for rank in ranks:
        mismatch = add_mismatch(mismatch, rank.mismatch)
    out = {f.name: getattr(terms, f.name) for f in fields(terms)}
    first = ranks[0]
    out |= {"grad_norm": first.grad_norm, "lr": first.lr, "updates": float(first.updates)}
    out["skipped_updates"] = float(len(first.skipped))  # every rank skips the same updates
    out["tokens"] = float(sum(r.tokens for r in ranks))
    out["microbatches"] = float(sum(r.microbatches for r in ranks))
    out["step_seconds"] = max(r.step_seconds for r in ranks)
    for name in ("peak_host_bytes", "peak_device_bytes"):
        values = [getattr(r, name) for r in ranks if getattr(r, name) is not None]
        if values:
            out[name] = max(values)
    if mismatch is not None and mismatch.tokens:
        for name in ("abs_log_ratio", "k3", "beyond"):
            out[f"mismatch/{name}"] = getattr(mismatch, name) / mismatch.tokens
    return out
