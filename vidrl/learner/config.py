"""LearnerConfig: ranks, optimizer, schedule, micro-batching, precision, export, checkpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vidrl.configbase import StrictConfig
from vidrl.learner.loss_config import LossConfig


class LoraSettings(StrictConfig):
    """LoRA adapters on the language model; only they are trained and pushed to the engines."""

    rank: int = Field(16, ge=1)
    """r: the rank of each adapter (the engine is started with max_lora_rank = this)."""
    alpha: float = Field(32.0, gt=0)
    """lora_alpha: the update is scaled by alpha / rank."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the adapter's input while training."""
    target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    """Module names (last path component) that get an adapter."""
    train_vision: bool = False
    """Also put adapters into the vision tower (vLLM's LoRA applies to the language model only)."""


class HostMallocSettings(StrictConfig):
    """How a learner rank's C allocator (glibc malloc) gives freed host memory back to the system;
    the figures behind the defaults are in vidrl.learner.memory."""

    mmap_threshold_bytes: int | None = Field(4 << 20, ge=4096)
    """Host allocations of at least this size get a mapping of their own, unmapped when freed.
    None: glibc's adaptive threshold."""
    trim_threshold_bytes: int | None = Field(128 << 20, ge=4096)
    """Free memory at the top of the heap beyond this is handed back at once (below it, kept for
    the next micro-batch); None: the mmap threshold (glibc's own rule ties them)."""
    trim_every: Literal["never", "microbatch", "step"] = "never"
    """Hand every free page of the heap back (malloc_trim) after each micro-batch, each step, or never."""


class LearnerConfig(StrictConfig):
    num_ranks: int = Field(2, ge=1)
    """torch.distributed ranks (Ray actors) that shard the policy with FSDP2."""
    sequence_parallel_size: int = Field(1, ge=1)
    """Ranks that split each micro-batch's tokens (Ulysses; vidrl.learner.sequence_parallel): the
    ranks form num_ranks / this data-parallel groups of this many. Must divide num_ranks."""
    cpus_per_rank: float = Field(1.0, gt=0)
    """CPUs reserved for each rank's actor."""
    gpus_per_rank: float = Field(0.0, ge=0)
    """GPUs reserved for each rank's actor (0 on CPU machines)."""
    lr: float = Field(1e-6, gt=0)
    """Peak learning rate of AdamW."""
    weight_decay: float = Field(1e-2, ge=0)
    """AdamW decoupled weight decay."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW (beta1, beta2)."""
    adam_eps: float = Field(1e-8, gt=0)
    """AdamW epsilon."""
    warmup_steps: int = Field(0, ge=0)
    """Optimizer steps of linear warmup from 0 to lr."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """After warmup: keep lr, or decay it along a cosine to min_lr_ratio * lr at total_steps."""
    total_steps: int = Field(1000, ge=1)
    """Optimizer steps the cosine schedule spans."""
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    """Floor of the cosine schedule, as a fraction of lr."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm to this value (None: no clipping)."""
    max_tokens_per_microbatch: int = Field(8192, ge=16)
    """Token budget of one forward/backward; groups are packed into micro-batches under it."""
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype of forward/backward compute (FSDP2 mixed precision); master weights stay float32."""
    freeze_vision: bool = False
    """Full fine-tuning with the vision tower frozen (EasyR1's and verl's freeze_vision_tower): its
    embeddings are computed once per step and reused by every pass; it is not in the optimizer,
    and not pushed after the first push (vidrl.learner.frozen_vision)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    shared_prefix: bool = True
    """Pack each group as one sequence whose prompt (video included) is computed once."""
    prefix_attention: Literal["two_pass", "mask", "flex"] = "two_pass"
    """How a group's responses share its prompt: two passes without a T x T mask (flash-attn varlen
    or SDPA), the dense-mask SDPA reference, or FlexAttention (GPU only); see learner/attention.py."""
    logprob_chunk_tokens: int = Field(256, ge=1)
    """Response tokens scored per chunk of the vocabulary projection (memory: chunk x vocab floats)."""
    old_logprobs: Literal["rollout", "recompute"] = "rollout"
    """Old log-probs of the ratio: the rollout engine's, or the learner's own from a forward pass
    before the step's first update (needed by the rollout corrections in `loss`)."""
    updates_per_step: int = Field(1, ge=1)
    """Optimizer updates per step: the step's groups split into this many mini-batches of whole
    groups, one update each (verl ppo_mini_batch_size, TRL steps_per_generation)."""
    epochs: int = Field(1, ge=1)
    """Passes over the step's rollout, each making updates_per_step updates (ppo_epochs,
    TRL num_iterations)."""
    reference_offload: bool = False
    """Keep the frozen reference model's shards in host memory between uses (FSDP2 CPU offload)."""
    weight_bucket_bytes: int = Field(512 * 1024 * 1024, ge=1024)
    """Upper bound of one weight bucket published to the object store."""
    attention: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    """Attention kernel: auto = flash-attn 2 on GPUs where installed and compute is bf16, else SDPA."""
    step_timeout_seconds: float = Field(3600.0, gt=0)
    """A step whose ranks are not all done by then fails, naming the ranks still running."""
    sync_timeout_seconds: float = Field(1800.0, gt=0)
    """Likewise for building the ranks, exporting the weights, saving and loading a checkpoint."""
    process_group_timeout_seconds: float = Field(600.0, gt=0)
    """A collective the other ranks never join (one of them died) fails after this long."""
    host_malloc: HostMallocSettings = HostMallocSettings()
    """How freed host memory goes back to the system (vidrl.learner.memory)."""
    loss: LossConfig = LossConfig()
    """The GRPO objective: advantages, clipping, KL, entropy, aggregation."""
    lora: LoraSettings | None = None
    """LoRA instead of full fine-tuning (null): adapters only are trained, pushed and saved; the
    reference policy is the base model with the adapters switched off (no second copy)."""

    @property
    def data_parallel_size(self) -> int:
        """Groups of ranks that train on different micro-batches (num_ranks / sequence_parallel_size)."""
        return self.num_ranks // self.sequence_parallel_size

    @model_validator(mode="after")
    def _sequence_parallel_fits(self) -> LearnerConfig:
        size = self.sequence_parallel_size
        if self.num_ranks % size:
            raise ValueError(
                f"sequence_parallel_size {size} must divide num_ranks {self.num_ranks}: the ranks form "
                "num_ranks / sequence_parallel_size data-parallel groups of sequence_parallel_size each"
            )
        if size > 1 and self.shared_prefix and self.prefix_attention != "two_pass":
            raise ValueError(
                f"sequence parallelism shares a group's prompt through prefix_attention: two_pass, not "
                f"{self.prefix_attention!r} (a dense T x T mask or flex block mask is not split across ranks)"
            )
        return self

    @model_validator(mode="after")
    def _a_frozen_tower_is_not_trained(self) -> LearnerConfig:
        if self.freeze_vision and self.lora is not None and self.lora.train_vision:
            raise ValueError("learner.freeze_vision and learner.lora.train_vision contradict: choose one")
        return self

    @model_validator(mode="after")
    def _corrections_need_the_learners_old_policy(self) -> LearnerConfig:
        loss = self.loss
        if (
            loss.rollout_is != "none" or loss.rollout_rejection != "none"
        ) and self.old_logprobs != "recompute":
            raise ValueError(
                "loss.rollout_is / loss.rollout_rejection weigh pi_old / pi_rollout, so pi_old must be "
                "the learner's own: set old_logprobs: recompute"
            )
        return self
