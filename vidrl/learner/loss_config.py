"""LossConfig: the knobs of the GRPO objective computed by `vidrl.learner.grpo`.

Defaults follow Temporal-R1's EasyR1 recipe (clip 0.2 low / 0.28 high, dual clip 3.0, k3
KL as a loss with coefficient 1e-2, entropy bonus 1e-3, token-level aggregation). The
advantage epsilon is 1e-6 as in verl/EasyR1; VideoChat-R1 uses 1e-4.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vidrl.configbase import StrictConfig

AdvantageEstimator = Literal["grpo", "drgrpo"]
"""grpo: (r - mean) / (std + eps) within a group; drgrpo: r - mean (Dr.GRPO, no std)."""

KLEstimator = Literal["k1", "k2", "k3"]
"""k1: logp - ref; k2: (logp - ref)^2 / 2; k3 (verl's low_var_kl): e^(ref-logp) - (ref-logp) - 1."""

LossAggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
"""How per-token losses become one scalar (see `vidrl.learner.grpo.aggregate`)."""

ImportanceLevel = Literal["token", "sequence", "sequence_token"]
"""Where the PPO ratio is taken: per token, per sequence (GSPO), or GSPO-token."""

CorrectionLevel = Literal["none", "token", "sequence"]
"""Where a rollout/learner correction is computed: off, per token, per sequence."""


class LossConfig(StrictConfig):
    """The GRPO objective: advantages, clipped surrogate, KL to reference, entropy, aggregation."""

    advantage_estimator: AdvantageEstimator = "grpo"
    """grpo: group-normalised by the (unbiased) std; drgrpo: only mean-centred."""
    advantage_eps: float = Field(1e-6, ge=0.0, allow_inf_nan=False)
    """Added to the group std before dividing (grpo only); VideoChat-R1 uses 1e-4."""
    clip_low: float = Field(0.2, ge=0.0, lt=1.0, allow_inf_nan=False)
    """The ratio is clipped below at 1 - clip_low."""
    clip_high: float = Field(0.28, ge=0.0, allow_inf_nan=False)
    """The ratio is clipped above at 1 + clip_high (DAPO's clip-higher when > clip_low)."""
    dual_clip: float | None = Field(3.0, gt=1.0, allow_inf_nan=False)
    """Negative-advantage tokens lose at most dual_clip * |A| (null: no dual clip)."""
    kl_estimator: KLEstimator = "k3"
    """Per-token estimator of KL(policy || reference) used as a loss term."""
    kl_coef: float = Field(1e-2, ge=0.0, allow_inf_nan=False)
    """Weight of the KL term in the loss (0: no reference model needed)."""
    kl_clamp: float = Field(10.0, gt=0.0, allow_inf_nan=False)
    """k3 is clamped to [-kl_clamp, kl_clamp] per token, as verl's low_var_kl (10)."""
    entropy_coef: float = Field(1e-3, ge=0.0, allow_inf_nan=False)
    """Weight of the entropy bonus (subtracted from the loss; 0: entropy is only reported)."""
    loss_agg: LossAggregation = "token-mean"
    """token-mean (DAPO), seq-mean-token-mean (GRPO paper) or seq-mean-token-sum-norm (Dr.GRPO)."""
    max_response_tokens_norm: int | None = Field(None, ge=1)
    """The constant token count seq-mean-token-sum-norm divides each sequence's sum by."""
    importance_sampling_level: ImportanceLevel = "token"
    """token (PPO/GRPO), sequence (GSPO: exp of the mean log-ratio) or sequence_token (GSPO-token)."""
    sequence_clip_low: float = Field(3e-4, ge=0.0, lt=1.0, allow_inf_nan=False)
    """Lower clip of the sequence-level ratio (GSPO's 3e-4; the token clips do not apply there)."""
    sequence_clip_high: float = Field(4e-4, ge=0.0, allow_inf_nan=False)
    """Upper clip of the sequence-level ratio (GSPO's 4e-4)."""
    rollout_is: CorrectionLevel = "none"
    """Truncated importance sampling: weight each token's loss by min(pi_old / pi_rollout, cap),
    per token or per sequence (verl's rollout_is, TRL's vllm_importance_sampling_correction)."""
    rollout_is_cap: float = Field(2.0, gt=1.0, allow_inf_nan=False)
    """The truncation C of the rollout weights (also the bound of the mismatch metric)."""
    rollout_rejection: CorrectionLevel = "none"
    """Mask out tokens (or whole sequences, by the geometric mean) whose pi_old / pi_rollout leaves
    [rollout_rejection_low, rollout_rejection_high] (masked importance sampling)."""
    rollout_rejection_low: float = Field(0.5, gt=0.0, lt=1.0, allow_inf_nan=False)
    """Lower end of the kept band of the rollout ratio."""
    rollout_rejection_high: float = Field(2.0, gt=1.0, allow_inf_nan=False)
    """Upper end of the kept band of the rollout ratio."""
    overlong_filter: bool = False
    """DAPO's overlong filtering: responses cut by the token limit are left out of the loss."""

    @model_validator(mode="after")
    def _norm_given(self) -> LossConfig:
        if self.loss_agg == "seq-mean-token-sum-norm" and self.max_response_tokens_norm is None:
            raise ValueError(
                "loss_agg seq-mean-token-sum-norm needs max_response_tokens_norm "
                "(Dr.GRPO uses the generation budget, e.g. the rollout's max response tokens)"
            )
        return self
