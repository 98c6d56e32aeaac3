"""How a group's G responses share its prompt in the learner: the one switch from layout to code.

    plain         G sequences of prompt + response (each with its own copy of the video)
    two_pass      one packed sequence; attention in two passes, no T x T mask (vidrl.learner.attention)
    mask          one packed sequence; SDPA with a dense [B, 1, T, T] prefix-sharing mask
    flex          one packed sequence; FlexAttention with a block mask (GPU only in practice)
    prompt_state  the prompts once, every response from its prompt's cache (families with
                  recurrent layers, whose responses cannot share one packed sequence)

`choose_layout` picks one when a rank builds, from the config and the model's family, and says
why where the config's choice cannot hold; `LAYOUTS` maps it to the function every pass (policy,
old, reference, SFT) calls. All of them return the same records, equal to rounding. The text
model's attention implementation each layout needs is chosen from it (vidrl.learner.model).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Literal

from vidrl.learner.attention import Kernel
from vidrl.learner.config import LearnerConfig
from vidrl.learner.forward import response_logprobs_plain, response_logprobs_shared
from vidrl.learner.state_prefix import response_logprobs_from_prefix_state
from vidrl.learner.types import ResponseLogprobs
from vidrl.models.family import ModelFamily

log = logging.getLogger(__name__)

Layout = Literal["plain", "two_pass", "mask", "flex", "prompt_state"]

LayoutFn = Callable[..., list[ResponseLogprobs]]
"""(model, packed groups, vision inputs, *, temperature, with_entropy, chunk_tokens, banned_ids)
-> one record per group, differentiable."""

CHECKPOINTING_DROPS_THE_CACHE = (
    "activation checkpointing drops the model's cache, so the responses of a group cannot start from "
    "its prompt's state: this model's groups run in the plain layout (G copies of the prompt)"
)


def choose_layout(cfg: LearnerConfig, family: ModelFamily) -> Layout:
    """The layout of every pass of this run: `shared_prefix` and `prefix_attention` from the
    config, the prompt's state for a family with recurrent layers (attention alone cannot
    share a prompt there), plain where that state cannot be kept (activation checkpointing)."""
    if not cfg.shared_prefix:
        return "plain"
    if family.prefix_sharing == "state":
        if cfg.gradient_checkpointing:
            log.warning(CHECKPOINTING_DROPS_THE_CACHE)
            return "plain"
        return "prompt_state"
    return cfg.prefix_attention


LAYOUTS: dict[Layout, Callable[[Kernel], LayoutFn]] = {
    "plain": lambda kernel: response_logprobs_plain,
    "two_pass": lambda kernel: functools.partial(
        response_logprobs_shared, attention="two_pass", kernel=kernel
    ),
    "mask": lambda kernel: functools.partial(response_logprobs_shared, attention="mask"),
    "flex": lambda kernel: functools.partial(response_logprobs_shared, attention="flex"),
    "prompt_state": lambda kernel: response_logprobs_from_prefix_state,
}
"""Layout -> the function of that layout, given two_pass's kernel ("sdpa" or "flash": vidrl.learner.model)."""
