"""The records that cross the rollout's actor boundaries: prompts in, groups of responses out.

Every record is a frozen dataclass; arrays are numpy (read-only once they have been through
Ray's object store), so they travel zero-copy. Nothing heavy comes back from a worker: a
`RolloutGroup` holds token ids and log-probs, never frames. The frames stay where the caller
put them (a `Clip`, or an object-store reference to one, inside the `RolloutPrompt`), and each
group says which prompt it answers (`prompt_index`) and which of the clip's frames the engine
saw (`frame_positions`), so the learner rebuilds exactly the engine's input without decoding
the video again (see `vidrl.rollout.prompts.select_frames`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias

import numpy as np

from vidrl.data.video import Clip

if TYPE_CHECKING:
    from ray import ObjectRef

FinishReason = Literal["stop", "length", "abort"]
"""stop: an end-of-turn token or a stop string; length: hit max_response_tokens or the model
length (a truncated response); abort: the engine dropped the request."""

ClipSource: TypeAlias = "Clip | ObjectRef[Clip] | None"
"""A prompt's frames: a reference to the clip in Ray's object store (put once; the worker and
the learner read it zero-copy), the clip itself (copied into the store with each call that
carries it), or None for a text-only prompt."""


@dataclass(frozen=True, slots=True)
class Sampling:
    """How the responses of one `generate` call are sampled (`RolloutConfig.sampling` by
    default; an evaluation passes its own, e.g. greedy with one sample per prompt)."""

    samples_per_prompt: int
    temperature: float
    top_p: float
    max_response_tokens: int
    stop_strings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RolloutPrompt:
    """One prompt to sample a group of responses for.

    text: the prompt with the chat template applied and ONE video placeholder
          (`<|vision_start|><|video_pad|><|vision_end|>`) where the clip goes, ending
          with the assistant turn's header; no placeholder when `clip` is None.
    clip: the frames, uint8 [T, H, W, 3] with their timestamps, fps and frame indices.
    video_shape: (T, H, W) of the clip, so the pool can estimate the prompt's visual
          tokens without fetching a referenced clip; `build_rollout_prompt` fills it.
    """

    sample_id: str
    text: str
    clip: ClipSource = None
    video_shape: tuple[int, int, int] = (0, 0, 0)


@dataclass(frozen=True, slots=True)
class SeededPrompt:
    """A prompt as the pool hands it to a worker (pool-internal): its position in the call and
    the seed its group is sampled with (vidrl.rollout.seeds)."""

    index: int
    prompt: RolloutPrompt
    seed: int


@dataclass(frozen=True, slots=True)
class Response:
    """One sampled response.

    token_ids:       int32 [L], as sampled, including the final end-of-turn token when the
                     response stopped on one (the learner trains on it).
    logprobs:        float32 [L], log-prob of each sampled token under the distribution it
                     was sampled from: logits / temperature, image/video pad tokens removed
                     (vLLM's "processed_logprobs"); these are the learner's old log-probs.
    text:            the decoded response without special tokens; a stop string stays in it.
    finish_reason:   see FinishReason.
    weights_version: the version of the weights that sampled it.
    """

    token_ids: np.ndarray
    logprobs: np.ndarray
    text: str
    finish_reason: FinishReason
    weights_version: int

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


@dataclass(frozen=True, slots=True)
class RolloutGroup:
    """The `samples_per_prompt` (G) responses to one prompt.

    prompt_index:     position of the prompt in the list given to `RolloutPool.generate`.
    prompt_token_ids: int32 [P], the prompt as the engine saw it: chat template applied,
                      the video placeholder expanded to one `<|video_pad|>` per visual token.
    frame_positions:  int64 [T'], positions in the prompt's `clip.frames` that were used: all
                      of them, unless the prompt was too long and frames were dropped
                      (on_too_long="reduce_frames"); empty for a text-only prompt.
    responses:        G responses, in sampling order.
    """

    prompt_index: int
    sample_id: str
    prompt_token_ids: np.ndarray
    frame_positions: np.ndarray
    responses: tuple[Response, ...]
    weights_version: int


@dataclass(frozen=True, slots=True)
class SkippedPrompt:
    """A prompt that produced no group, and why (logged as well)."""

    prompt_index: int
    sample_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class WorkerFailure:
    """A rollout worker that died or whose engine raised; the pool restarted it."""

    worker_index: int
    cause: str


@dataclass(frozen=True, slots=True)
class RolloutMetrics:
    """What one `RolloutPool.generate` call did.

    prompts:            prompts that produced a group.
    skipped_prompts:    prompts too long even with frames reduced (or with on_too_long="skip").
    reduced_prompts:    prompts that were generated with fewer frames than their clip has.
    responses:          responses generated (prompts x samples_per_prompt).
    tokens_generated:   response tokens over all responses.
    prompt_tokens:      prompt tokens over all prompts, as the engine saw them.
    seconds:            wall time of the call, spreading and gathering included.
    slowest_worker_seconds: the longest a worker spent on its share (inside the worker);
                        seconds minus this is the pool's own overhead.
    tokens_per_second:  tokens_generated / seconds.
    truncated_fraction: fraction of responses that hit the token limit.
    worker_restarts:    workers restarted during the call.
    """

    prompts: int
    skipped_prompts: int
    reduced_prompts: int
    responses: int
    tokens_generated: int
    prompt_tokens: int
    seconds: float
    slowest_worker_seconds: float
    tokens_per_second: float
    truncated_fraction: float
    worker_restarts: int

    def as_dict(self, prefix: str = "rollout/") -> Mapping[str, float]:
        """Flat name -> value, for a metrics sink."""
        return {prefix + name: float(getattr(self, name)) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class UpdateMetrics:
    """What one `RolloutPool.update_weights` call did.

    seconds:                wall time of the call (the buckets were already in the store).
    slowest_worker_seconds: the longest a worker spent loading them and resetting its caches.
    worker_restarts:        workers restarted during the call.
    """

    version: int
    seconds: float
    slowest_worker_seconds: float
    worker_restarts: int

    def as_dict(self, prefix: str = "weights_update/") -> Mapping[str, float]:
        """Flat name -> value, for a metrics sink."""
        return {prefix + name: float(getattr(self, name)) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class RolloutBatch:
    """The result of one `RolloutPool.generate` call.

    groups:   one per generated prompt, in prompt order (`group.prompt_index` ascending).
    skipped:  one per prompt that produced no group, in prompt order.
    failures: workers that died during the call (each was restarted and its prompts retried).
    """

    groups: tuple[RolloutGroup, ...]
    skipped: tuple[SkippedPrompt, ...]
    failures: tuple[WorkerFailure, ...]
    metrics: RolloutMetrics
    weights_version: int


@dataclass(frozen=True, slots=True)
class WorkerOutput:
    """What one worker returns for its share of a `generate` call (pool-internal)."""

    groups: tuple[RolloutGroup, ...]
    skipped: tuple[SkippedPrompt, ...]
    reduced_prompts: int
    seconds: float
    weights_version: int


class WeightsVersionMismatch(RuntimeError):
    """Workers hold other weights than the last published ones, or differ among themselves:
    generating would mix policies silently."""

    def __init__(self, versions: Mapping[int, int], expected: int) -> None:
        self.versions = dict(versions)
        self.expected = expected
        listed = ", ".join(f"worker {i}: v{v}" for i, v in sorted(self.versions.items()))
        super().__init__(f"rollout weights disagree: expected v{expected}, got {listed}")

    def __reduce__(self) -> tuple[type[WeightsVersionMismatch], tuple[dict[int, int], int]]:
        return (WeightsVersionMismatch, (self.versions, self.expected))


class RolloutWorkerError(RuntimeError):
    """A worker failed, was restarted, and failed again on the same prompts."""

    def __init__(self, worker_index: int, cause: str) -> None:
        self.worker_index = worker_index
        self.cause = cause
        super().__init__(f"rollout worker {worker_index} failed: {cause}")

    def __reduce__(self) -> tuple[type[RolloutWorkerError], tuple[int, str]]:
        return (RolloutWorkerError, (self.worker_index, self.cause))
