"""Shared-prefix groups: pack a prompt and its G responses into one sequence.

In GRPO every prompt gets G responses, and in video RL the prompt (a thousand or more visual
tokens) dwarfs each response (about a hundred). The plain layout runs G copies of
prompt + response; the shared-prefix layout runs one sequence per group,

    [prompt (P) | response 1 (L1) | response 2 (L2) | ... | response G (LG)],

with an attention mask under which prompt tokens attend causally within the prompt and each
response token attends to the whole prompt and, causally, to its own response only. Every
response's position ids continue from the end of the prompt, so each response sees exactly the
context it would see alone: the log-probs equal the plain layout's, the vision encoder runs once
per group, and the gradients of all G responses reach the shared prompt through one copy. A group
then costs P + sum(L) tokens instead of G * P + sum(L).

This module is pure tensor bookkeeping (no model): packing, the masks, batching with right
padding, and the rows of the logits that predict each response token (the records are in
vidrl.learner.types). `vidrl.learner.forward` runs the model on what it builds.

Where it departs from the references:
- verl's PrefixGrouper reaches the same result by splitting attention into a prefix
  self-attention and a suffix attention over the concatenated prefix keys; we instead keep the
  model's own attention and give it a 4D mask, so any model that accepts a 4D mask works
  unchanged (SDPA or eager attention; flash-attn's variable-length kernel cannot express the
  mask, see `vidrl.learner.forward`).
- Response positions start at max(prompt positions) + 1 in all three rotary dimensions, the rule
  of Qwen's reference code and vLLM. transformers 5.x's `get_rope_index` instead continues text
  after a video from the video's spatial extent, which is smaller than its temporal extent for
  long videos; the caller decides which prompt positions to pass in, and both layouts here use
  the same continuation, so they agree with each other whatever it chooses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vidrl.learner.types import PackedBatch, PackedGroup

PROMPT_SEGMENT = 0
"""Segment id of prompt tokens; response g (0-based) has segment g + 1."""


def pad_token_id(model: nn.Module) -> int:
    """The pad id from the text config (any id works: padding is masked and never read)."""
    config = getattr(model.config, "text_config", model.config)
    pad = getattr(config, "pad_token_id", None)
    return int(pad) if pad is not None else 0


def response_positions(prompt_position_ids: torch.Tensor, length: int) -> torch.Tensor:
    """Positions [3, length] of a response after a prompt with positions [3, P].

    Text tokens carry the same value in all three rotary dimensions, counting from one past the
    largest prompt position (a visual token's temporal position may be the largest).
    """
    start = int(prompt_position_ids.max()) + 1 if prompt_position_ids.numel() else 0
    steps = torch.arange(start, start + length, dtype=torch.long)
    return steps.unsqueeze(0).expand(3, length)


def pack_group(
    prompt_ids: torch.Tensor, prompt_position_ids: torch.Tensor, responses: Sequence[Sequence[int]]
) -> PackedGroup:
    """Pack a prompt (ids [P], positions [3, P]) and G non-empty responses into one sequence."""
    prompt_length = int(prompt_ids.shape[0])
    if prompt_length == 0:
        raise ValueError("the prompt must hold at least one token: it predicts each first token")
    if tuple(prompt_position_ids.shape) != (3, prompt_length):
        shape = list(prompt_position_ids.shape)
        raise ValueError(f"prompt positions must be [3, {prompt_length}], got {shape}")
    if not responses or any(len(response) == 0 for response in responses):
        raise ValueError("a group needs at least one response, and every response a token")
    ids, positions, segments, rows = [prompt_ids.long()], [prompt_position_ids.long()], [], []
    segments.append(torch.full((prompt_length,), PROMPT_SEGMENT, dtype=torch.long))
    start = prompt_length
    for index, response in enumerate(responses):
        length = len(response)
        ids.append(torch.as_tensor(response, dtype=torch.long))
        positions.append(response_positions(prompt_position_ids, length))
        segments.append(torch.full((length,), index + 1, dtype=torch.long))
        # Token 0 is predicted by the last prompt row; token j > 0 by its own predecessor.
        rows.append(torch.tensor([prompt_length - 1], dtype=torch.long))
        rows.append(torch.arange(start, start + length - 1, dtype=torch.long))
        start += length
    input_ids = torch.cat(ids)
    return PackedGroup(
        input_ids=input_ids,
        position_ids=torch.cat(positions, dim=1),
        segment_ids=torch.cat(segments),
        response_lengths=tuple(len(response) for response in responses),
        logit_rows=torch.cat(rows),
        targets=input_ids[prompt_length:].clone(),
    )


def split_group(group: PackedGroup) -> list[PackedGroup]:
    """The plain layout of a group: G sequences of prompt + one response each."""
    prompt_length = group.prompt_length
    prompt_ids = group.input_ids[:prompt_length]
    prompt_positions = group.position_ids[:, :prompt_length]
    return [
        pack_group(prompt_ids, prompt_positions, [group.input_ids[start:end].tolist()])
        for start, end in group.response_spans()
    ]


def prefix_attention_mask(group: PackedGroup) -> torch.Tensor:
    """Bool [T, T]: True where query row q may attend to key column k.

    k <= q, and k is on the prompt or on q's own response. A prompt query therefore sees the
    prompt causally, and a response query the whole prompt (it comes first) and its own earlier
    tokens; with one response this is the ordinary causal mask.
    """
    length = group.length
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    query_segment = group.segment_ids.unsqueeze(1)  # [T, 1]
    key_segment = group.segment_ids.unsqueeze(0)  # [1, T]
    same_or_prompt = (key_segment == PROMPT_SEGMENT) | (key_segment == query_segment)
    return causal & same_or_prompt


def batch_groups(groups: Sequence[PackedGroup], pad_token_id: int, with_mask: bool = True) -> PackedBatch:
    """Right-pad B groups to the longest and stack them, with a [B, 1, T, T] mask unless
    `with_mask` is false.

    Padding columns are masked for every real row. Padding rows attend to themselves only: a row
    with no key at all makes SDPA's softmax 0/0 = NaN, which would poison the gradients even
    though those rows' outputs are never read.
    """
    if not groups:
        raise ValueError("batch_groups needs at least one group")
    width = max(group.length for group in groups)
    batch = len(groups)
    input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((3, batch, width), dtype=torch.long)
    padding_mask = torch.zeros((batch, width), dtype=torch.bool)
    attention_mask = torch.eye(width, dtype=torch.bool).repeat(batch, 1, 1, 1) if with_mask else None
    for row, group in enumerate(groups):
        length = group.length
        input_ids[row, :length] = group.input_ids
        position_ids[:, row, :length] = group.position_ids
        padding_mask[row, :length] = True
        if attention_mask is not None:  # [B, 1, T, T]
            attention_mask[row, 0, :length, :length] = prefix_attention_mask(group)
    return PackedBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=attention_mask,
        padding_mask=padding_mask,
        groups=tuple(groups),
    )


def unpack_responses(values: torch.Tensor, group: PackedGroup, fill: float = 0.0) -> torch.Tensor:
    """Per-token values [N] in packed order -> [G, Lmax], right-filled with `fill`.

    Differentiable: each response's values are copied into its row with `pad_sequence`.
    """
    pieces = torch.split(values, list(group.response_lengths))
    return torch.nn.utils.rnn.pad_sequence(list(pieces), batch_first=True, padding_value=fill)


def response_mask(group: PackedGroup, device: torch.device | None = None) -> torch.Tensor:
    """Bool [G, Lmax]: True on real response tokens of the unpacked layout."""
    lengths = torch.tensor(group.response_lengths, device=device)
    columns = torch.arange(max(group.response_lengths), device=device)
    return columns.unsqueeze(0) < lengths.unsqueeze(1)
