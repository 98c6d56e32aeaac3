"""Shared-prefix groups for models with recurrent layers: every response starts from its prompt's cache.

A packed `[prompt | response 1 | ... | response G]` sequence shares the prompt through attention
only (vidrl.learner.attention). In a hybrid model such as Qwen3.5, whose linear-attention layers
carry a recurrent state and a short convolution from token to token, the responses of a packed
sequence would run into each other. Here instead, for B groups and R = sum(G_b) responses:

    pass 1  the B prompts, left-padded to one length, in one forward with the model's own cache
            object: per linear layer its convolution state (last kernel-size inputs) and
            recurrent state, per attention layer its keys and values. The last prompt row scores
            the first token of each of the group's responses.
    pass 2  the R responses, right-padded, in one forward whose cache is the prompt cache with
            each row repeated for its group's responses (`index_select`, so the gradients of all
            G responses reach the one prompt computation). Rows 0..L-2 score tokens 1..L-1.

Both passes run on every rank whatever its groups (the FSDP2 collectives line up), and pass 2
always scores one extra row at weight 0 so that it is in the backward graph even when every
response has a single token. Left padding leaves the prompt's state exact: padded positions are
zeroed before each linear layer (their inputs, keys and values are 0, so the recurrence and the
convolution stay at their zero start) and masked as attention keys. Log-probs and gradients
equal the plain layout's to float32 rounding (tests/test_families.py: < 1e-5).

Where it departs from transformers: its linear-attention cache layer copies new states into
fixed buffers in place (for CUDA graphs), which would break the backward of a cache reused by a
second forward; `_StateLayer` keeps the tensors it is given instead. Activation checkpointing
drops the cache (transformers' GradientCheckpointingLayer sets past_key_values=None), so under it
such a model runs in the plain layout (vidrl.learner.layouts chooses it, with one log line).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer, LinearAttentionCacheLayerMixin, LinearAttentionLayer

from vidrl.learner.forward import video_arguments
from vidrl.learner.logprobs import DEFAULT_CHUNK_TOKENS, HeadRequest, scoring_head
from vidrl.learner.prefix import pad_token_id, response_mask, response_positions, unpack_responses
from vidrl.learner.types import PackedGroup, ResponseLogprobs, VisionInputs


def response_logprobs_from_prefix_state(
    model: nn.Module,
    groups: Sequence[PackedGroup],
    vision: Sequence[VisionInputs | None],
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    banned_ids: Sequence[int] = (),
) -> list[ResponseLogprobs]:
    """The records of `vidrl.learner.forward.response_logprobs_shared` for a model with recurrent
    layers: the prompts once, the responses from their prompt's cache (module docstring).
    Differentiable."""
    if len(vision) != len(groups):
        raise ValueError(f"{len(groups)} groups but {len(vision)} vision inputs")
    common = {"temperature": temperature, "with_entropy": with_entropy, "chunk_tokens": chunk_tokens}
    device = next(model.parameters()).device
    banned = torch.tensor(list(banned_ids), dtype=torch.long, device=device) if banned_ids else None
    cache, first = _prompt_pass(model, groups, vision, banned, **common)
    rest = _response_pass(model, groups, cache, banned, **common)
    return [
        _record(group, first_values, rest_values)
        for group, first_values, rest_values in zip(groups, first, rest, strict=True)
    ]


Scores = tuple[torch.Tensor, torch.Tensor | None]
"""Log-probs [n] and entropies [n] (or None) of some tokens."""


def _prompt_pass(
    model: nn.Module,
    groups: Sequence[PackedGroup],
    vision: Sequence[VisionInputs | None],
    banned: torch.Tensor | None,
    *,
    temperature: float,
    with_entropy: bool,
    chunk_tokens: int,
) -> tuple[Any, list[Scores]]:
    """Pass 1: the prompts, left-padded; returns their cache and, per group, the scores of its
    responses' first tokens."""
    device = next(model.parameters()).device
    lengths = [group.prompt_length for group in groups]
    width = max(lengths)
    input_ids = torch.full((len(groups), width), pad_token_id(model), dtype=torch.long)
    positions = torch.zeros((3, len(groups), width), dtype=torch.long)
    real = torch.zeros((len(groups), width), dtype=torch.bool)  # [B, Pmax]
    for row, (group, length) in enumerate(zip(groups, lengths, strict=True)):
        input_ids[row, width - length :] = group.input_ids[:length]
        positions[:, row, width - length :] = group.position_ids[:, :length]
        real[row, width - length :] = True
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    # A padded query row sees itself only: a row with no key makes SDPA's softmax NaN.
    attend = (causal & real[:, None, :]) | torch.eye(width, dtype=torch.bool)  # [B, Pmax, Pmax]
    masks = _layer_masks(model, attend[:, None], real, device)
    rows = torch.cat([torch.full((g.num_responses,), b) for b, g in enumerate(groups)])
    targets = torch.cat(
        [group.input_ids[start : start + 1] for group in groups for start, _ in group.response_spans()]
    )
    request = HeadRequest(
        rows.to(device),
        torch.zeros_like(rows).to(device),
        targets.to(device),
        temperature,
        chunk_tokens,
        with_entropy,
        banned,
    )
    cache = _empty_cache(model)
    with scoring_head(model, request):
        outputs = model(
            input_ids=input_ids.to(device),
            position_ids=positions.to(device),
            attention_mask=masks,
            **video_arguments(vision, device),
            past_key_values=cache,
            logits_to_keep=1,
            use_cache=False,
        )
    scored = outputs.logits[0]  # [R, 2]: log-prob, entropy
    return cache, _split_by_group(scored, with_entropy, [g.num_responses for g in groups])


def _response_pass(
    model: nn.Module,
    groups: Sequence[PackedGroup],
    prompt_cache: Any,
    banned: torch.Tensor | None,
    *,
    temperature: float,
    with_entropy: bool,
    chunk_tokens: int,
) -> list[Scores]:
    """Pass 2: every response from its prompt's cache; per group, the scores of tokens 1..L-1 of
    each response, in packed order."""
    device = next(model.parameters()).device
    responses = [
        (b, group.input_ids[s:e]) for b, group in enumerate(groups) for s, e in group.response_spans()
    ]
    count, width = len(responses), max(len(tokens) for _, tokens in responses)
    prompt_width = max(group.prompt_length for group in groups)
    input_ids = torch.full((count, width), pad_token_id(model), dtype=torch.long)
    positions = torch.zeros((3, count, width), dtype=torch.long)
    own = torch.ones(width, width, dtype=torch.bool).tril()  # causal within the response
    prefix = torch.zeros((count, width, prompt_width), dtype=torch.bool)  # [R, Lmax, Pmax]
    rows, columns, targets = [torch.zeros(1, dtype=torch.long)], [torch.zeros(1, dtype=torch.long)], []
    targets.append(torch.zeros(1, dtype=torch.long))  # the extra row at weight 0 (module docstring)
    for r, (b, tokens) in enumerate(responses):
        group = groups[b]
        length = len(tokens)
        input_ids[r, :length] = tokens
        positions[:, r, :length] = response_positions(group.position_ids[:, : group.prompt_length], length)
        prefix[r, :, prompt_width - group.prompt_length :] = True  # the real (left-padded) prompt keys
        rows.append(torch.full((length - 1,), r))
        columns.append(torch.arange(length - 1))
        targets.append(tokens[1:])
    attend = torch.cat([prefix, own.expand(count, -1, -1)], dim=2)  # [R, Lmax, Pmax + Lmax]
    masks = _layer_masks(model, attend[:, None], None, device)
    select = torch.tensor([b for b, _ in responses], device=device)
    request = HeadRequest(
        torch.cat(rows).to(device),
        torch.cat(columns).to(device),
        torch.cat(targets).long().to(device),
        temperature,
        chunk_tokens,
        with_entropy,
        banned,
    )
    with scoring_head(model, request):
        outputs = model(
            input_ids=input_ids.to(device),
            position_ids=positions.to(device),
            attention_mask=masks,
            past_key_values=_repeated_cache(prompt_cache, select),
            logits_to_keep=0,
            use_cache=False,
        )
    scored = outputs.logits[0]  # [1 + sum(L - 1), 2]
    anchor = scored[0] * 0.0  # keeps pass 2 in the backward graph on every rank
    scored = scored[1:] + anchor
    sizes = [sum(length - 1 for length in group.response_lengths) for group in groups]
    return [(part[:, 0], part[:, 1] if with_entropy else None) for part in torch.split(scored, sizes)]


def _record(group: PackedGroup, first: Scores, rest: Scores) -> ResponseLogprobs:
    """One group's record from its responses' first-token scores [G] and the others [sum(L - 1)]."""

    def packed(first_values: torch.Tensor, rest_values: torch.Tensor) -> torch.Tensor:
        pieces, cursor = [], 0
        for g, length in enumerate(group.response_lengths):
            pieces += [first_values[g : g + 1], rest_values[cursor : cursor + length - 1]]
            cursor += length - 1
        return torch.cat(pieces)  # [N], response by response

    logprobs = unpack_responses(packed(first[0], rest[0]), group)
    entropies = None
    if first[1] is not None and rest[1] is not None:
        entropies = unpack_responses(packed(first[1], rest[1]), group)
    return ResponseLogprobs(logprobs, entropies, response_mask(group, device=logprobs.device))


def _split_by_group(scored: torch.Tensor, with_entropy: bool, sizes: Sequence[int]) -> list[Scores]:
    return [(part[:, 0], part[:, 1] if with_entropy else None) for part in torch.split(scored, list(sizes))]


def _layer_masks(
    model: nn.Module, attend: torch.Tensor, real: torch.Tensor | None, device: torch.device
) -> dict[str, torch.Tensor | None]:
    """The text model's per-layer-type masks: the attention layers' bool [B, 1, Q, K] (True =
    attend, as SDPA and vidrl_shared_prefix read it) and the linear layers' [B, T] of 1 on real
    tokens, 0 on padding (None when nothing is padded)."""
    dtype = next(model.parameters()).dtype
    padding = None if real is None or bool(real.all()) else real.to(device=device, dtype=dtype)
    return {"full_attention": attend.to(device), "linear_attention": padding}


def _empty_cache(model: nn.Module) -> Cache:
    """The model's own cache layout (per layer type), with linear layers that keep their states."""
    text_config = model.config.get_text_config(decoder=True)  # type: ignore[operator]
    layers = [
        StateLayer() if kind == "linear_attention" else DynamicLayer() for kind in text_config.layer_types
    ]
    return Cache(layers=layers)


def _repeated_cache(cache: Cache, rows: torch.Tensor) -> Cache:
    """A new cache holding `cache`'s states at batch rows `rows` (differentiable: index_select)."""
    layers: list[Any] = []
    for layer in cache.layers:
        if isinstance(layer, LinearAttentionCacheLayerMixin):
            repeated = StateLayer()
            repeated.conv_kernel_size[0] = layer.conv_kernel_size[0]
            repeated.conv_states[0] = layer.conv_states[0].index_select(0, rows)
            repeated.recurrent_states[0] = layer.recurrent_states[0].index_select(0, rows)
            repeated.is_conv_states_initialized[0] = repeated.is_recurrent_states_initialized[0] = True
            repeated.has_previous_state[0] = True
            layers.append(repeated)
        else:
            keys = DynamicLayer()
            keys.update(layer.keys.index_select(0, rows), layer.values.index_select(0, rows))
            layers.append(keys)
    return Cache(layers=layers)


class StateLayer(LinearAttentionLayer):
    """A linear-attention cache layer that keeps the tensors it is given: transformers' own copies
    them into fixed buffers in place, which breaks the backward of a state read by a later pass."""

    def update_conv_state(
        self,
        conv_states: torch.Tensor,
        state_idx: int = 0,
        conv_kernel_size: int | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """The convolution's input with its left context; keeps the last kernel-size inputs."""
        if not self.has_previous_state[state_idx]:  # the prompt: zeros on the left, as the kernel pads
            self.conv_kernel_size[state_idx] = conv_kernel_size or conv_states.shape[-1]
            short = self.conv_kernel_size[state_idx] - conv_states.shape[-1]
            full = torch.nn.functional.pad(conv_states, (max(short, 0), 0))
            self.has_previous_state[state_idx] = True
        else:  # a response: its inputs after the prompt's last ones
            full = torch.cat([self.conv_states[state_idx], conv_states], dim=-1)
        self.conv_states[state_idx] = full[..., -self.conv_kernel_size[state_idx] :]
        self.is_conv_states_initialized[state_idx] = True
        return full

    def update_recurrent_state(
        self, recurrent_states: torch.Tensor, state_idx: int = 0, **kwargs: Any
    ) -> torch.Tensor:
        self.recurrent_states[state_idx] = recurrent_states
        self.is_recurrent_states_initialized[state_idx] = True
        return recurrent_states
