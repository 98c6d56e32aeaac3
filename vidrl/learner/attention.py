"""Shared-prefix attention for the text model: a group's G responses read one copy of its prompt.

A packed group is `[prompt (P) | response 1 (L1) | ... | response G (LG)]` (vidrl.learner.prefix):
prompt queries attend causally within the prompt; a response's queries attend to the whole
prompt and, causally, to their own response. Three ways to compute that (LearnerConfig
`prefix_attention`):

    mask      the model's own SDPA with a dense [B, 1, T, T] boolean mask. The reference the
              others are tested against; on GPUs SDPA cannot use its flash kernel with such a
              mask and does the full T^2 work.
    two_pass  no T x T mask anywhere. Pass 1: the prefix's causal self-attention. Pass 2: every
              response's queries against [prefix keys/values; its own], causal with bottom-right
              alignment (query i of a response of L tokens sees the P prefix keys and its own
              keys 0..i). With flash-attn (GPU, bf16/fp16) each pass is one varlen call over the
              whole batch, with separate cu_seqlens for queries and keys; elsewhere SDPA runs
              once per group for the prefix (is_causal) and once per group for all its
              responses, padded to the longest, under a [G, 1, Lmax, P + Lmax] mask.
    flex      FlexAttention with a block mask from the segment ids: GPU only in practice (on
              CPU torch 2.13 has no flex backward and its forward is ~10x slower than SDPA).

The text model runs with attention implementation `vidrl_shared_prefix` (registered here with
transformers' AttentionInterface). It reads the layout from the `prefix_layout` keyword that
`vidrl.learner.forward` passes to the model's forward (transformers hands forward keywords down
to every attention call); without one it is plain SDPA, so one model serves both layouts. The
vision tower keeps its own implementation (flash_attention_2 or sdpa; see model.py).

Where it departs from PrefixGrouper (verl): the same two passes, but the prefix's K/V are
concatenated per response only in the SDPA fallback; the varlen path builds one packed K/V
tensor per pass, and the vision tower runs once per group upstream of all this.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidrl.learner.prefix import PackedBatch
from vidrl.learner.sequence_parallel import SequenceGroup, ulysses_attention

SHARED_PREFIX_ATTENTION = "vidrl_shared_prefix"
"""The attention implementation name the text model runs under in the shared-prefix layouts."""

Kernel = Literal["sdpa", "flash", "flex", "sdpa_varlen"]
"""sdpa / flash: two_pass with SDPA per group or flash-attn's varlen kernel; flex: FlexAttention;
sdpa_varlen: the varlen path with an SDPA stand-in for flash-attn (how CPU tests check it)."""
VarlenKernel = Callable[..., Tensor]
"""flash_attn_varlen_func's signature: (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
max_seqlen_k, dropout_p, softmax_scale, causal) -> out [total_q, H, D]."""


@dataclass(frozen=True)
class PrefixLayout:
    """Where the prompt and each response lie in every row of a packed batch (built once per
    forward, read by every attention layer).

    prompt_lengths[b]: P of row b. spans[b]: [start, end) of each response of row b.
    kernel: which implementation runs pass 1 and 2 (see the module doc). block_mask: flex only.
    """

    prompt_lengths: tuple[int, ...]
    spans: tuple[tuple[tuple[int, int], ...], ...]
    kernel: Kernel
    block_mask: Any = None


def prefix_layout(batch: PackedBatch, kernel: Kernel, device: torch.device) -> PrefixLayout:
    """The layout of a packed batch; for flex, its block mask (built on `device`)."""
    prompts = tuple(group.prompt_length for group in batch.groups)
    spans = tuple(tuple(group.response_spans()) for group in batch.groups)
    block_mask = _flex_block_mask(batch, device) if kernel == "flex" else None
    return PrefixLayout(prompts, spans, kernel, block_mask)


def register_shared_prefix_attention() -> None:
    """Make `vidrl_shared_prefix` an attention implementation transformers can dispatch to."""
    from transformers import AttentionInterface

    AttentionInterface.register(SHARED_PREFIX_ATTENTION, shared_prefix_attention)


def shared_prefix_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    prefix_layout: PrefixLayout | None = None,
    sequence_group: SequenceGroup | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """transformers' attention-function contract: query [B, H, T, D], key/value [B, Hkv, T, D]
    (rotary applied) -> ([B, T, H, D], None). No layout: plain SDPA on the given mask.

    With a `sequence_group` (sequence parallelism) the inputs are this rank's slice of the tokens:
    attention runs over the whole sequence on a share of the heads (vidrl.learner.sequence_parallel),
    in the prefix layout, or causal where there is none (right-padded rows, the plain layout)."""
    if sequence_group is not None:

        def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            if prefix_layout is not None:
                return shared_prefix_attention(module, q, k, v, None, scaling, dropout, prefix_layout)[0]
            if dropout:
                raise ValueError("sequence-parallel attention does not implement attention dropout")
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=True)
            return out.transpose(1, 2)

        return ulysses_attention(query, key, value, sequence_group, attend), None
    if prefix_layout is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    if dropout:
        raise ValueError("shared-prefix attention does not implement attention dropout")
    if prefix_layout.kernel == "flex":
        return _flex(query, key, value, prefix_layout, scaling), None
    if prefix_layout.kernel == "flash":
        from flash_attn import flash_attn_varlen_func

        return two_pass_varlen(query, key, value, prefix_layout, scaling, flash_attn_varlen_func), None
    if prefix_layout.kernel == "sdpa_varlen":
        return two_pass_varlen(query, key, value, prefix_layout, scaling, sdpa_varlen_reference), None
    return two_pass_sdpa(query, key, value, prefix_layout, scaling), None


# ---------------------------------------------------------------- two passes, SDPA


def two_pass_sdpa(
    query: Tensor, key: Tensor, value: Tensor, layout: PrefixLayout, scaling: float | None
) -> Tensor:
    """Per row: the prefix (is_causal), then all its responses in one padded call. -> [B, T, H, D]."""
    rows = []
    for b, (prompt, spans) in enumerate(zip(layout.prompt_lengths, layout.spans, strict=True)):
        q, k, v = query[b], key[b], value[b]  # [H, T, D], [Hkv, T, D]
        prefix = F.scaled_dot_product_attention(
            q[None, :, :prompt],
            k[None, :, :prompt],
            v[None, :, :prompt],
            is_causal=True,
            scale=scaling,
            enable_gqa=True,
        )[0].transpose(0, 1)  # [P, H, D]
        pieces = [prefix, *_responses_sdpa(q, k, v, prompt, spans, scaling)]
        rows.append(_pad_rows(pieces, query.shape[2]))
    return torch.stack(rows)


def _responses_sdpa(
    q: Tensor, k: Tensor, v: Tensor, prompt: int, spans: Sequence[tuple[int, int]], scaling: float | None
) -> list[Tensor]:
    """Each response's output [L_g, H, D]: its queries against [prefix; own keys], one SDPA call."""
    lengths = [end - start for start, end in spans]
    longest = max(lengths)
    q_r = _stack_padded([q[:, s:e] for s, e in spans], longest)  # [G, H, Lmax, D]
    own_k = _stack_padded([k[:, s:e] for s, e in spans], longest)  # [G, Hkv, Lmax, D]
    own_v = _stack_padded([v[:, s:e] for s, e in spans], longest)
    groups = len(spans)
    k_r = torch.cat([k[None, :, :prompt].expand(groups, -1, -1, -1), own_k], dim=2)  # [G, Hkv, P + Lmax, D]
    v_r = torch.cat([v[None, :, :prompt].expand(groups, -1, -1, -1), own_v], dim=2)
    mask = response_block_mask(prompt, lengths, device=q.device)  # [G, 1, Lmax, P + Lmax]
    out = F.scaled_dot_product_attention(q_r, k_r, v_r, attn_mask=mask, scale=scaling, enable_gqa=True)
    return [out[g, :, :length].transpose(0, 1) for g, length in enumerate(lengths)]


def response_block_mask(prompt: int, lengths: Sequence[int], device: torch.device | None = None) -> Tensor:
    """Bool [G, 1, Lmax, P + Lmax]: query i of response g sees the P prefix keys and its own keys
    j <= i (j < L_g). Padded query rows (i >= L_g) see the prefix only: never an empty row."""
    longest = max(lengths)
    rows = torch.arange(longest, device=device)
    own = rows[None, :] <= rows[:, None]  # [Lmax, Lmax], j <= i
    real = rows[None, :] < torch.tensor(lengths, device=device)[:, None]  # [G, Lmax], j < L_g
    own = own[None] & real[:, None, :]  # [G, Lmax, Lmax]
    prefix = torch.ones(len(lengths), longest, prompt, dtype=torch.bool, device=device)
    return torch.cat([prefix, own], dim=2)[:, None]


def _stack_padded(pieces: Sequence[Tensor], length: int) -> Tensor:
    """[heads, L_g, D] pieces -> [G, heads, length, D], zero-padded on the token axis."""
    return torch.stack([F.pad(p, (0, 0, 0, length - p.shape[1])) for p in pieces])


def _pad_rows(pieces: Sequence[Tensor], width: int) -> Tensor:
    """Token-major pieces [n, H, D] in sequence order -> [width, H, D], zeros after the last."""
    row = torch.cat(list(pieces))
    return F.pad(row, (0, 0, 0, 0, 0, width - row.shape[0]))


# ---------------------------------------------------------------- two passes, varlen (flash-attn)


def two_pass_varlen(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    layout: PrefixLayout,
    scaling: float | None,
    kernel: VarlenKernel,
) -> Tensor:
    """Both passes as one varlen call each over the whole batch. -> [B, T, H, D].

    Pass 1 packs every row's prefix; pass 2 packs every response's queries with, as its keys,
    its row's prefix followed by its own tokens (cu_seqlens_k != cu_seqlens_q, causal aligned
    bottom-right, which is flash-attn's rule for causal with seqlen_q != seqlen_k).
    """
    t_q, t_k = query.transpose(1, 2), key.transpose(1, 2)  # [B, T, H, D], [B, T, Hkv, D]
    t_v = value.transpose(1, 2)
    prompts = layout.prompt_lengths
    prefix = [slice(0, p) for p in prompts]
    out_prefix = _varlen(
        kernel,
        t_q,
        t_k,
        t_v,
        [(b, [s]) for b, s in enumerate(prefix)],
        [(b, [s]) for b, s in enumerate(prefix)],
        scaling,
    )
    queries = [(b, [slice(s, e)]) for b, spans in enumerate(layout.spans) for s, e in spans]
    keys = [
        (b, [slice(0, prompts[b]), slice(s, e)]) for b, spans in enumerate(layout.spans) for s, e in spans
    ]
    out_responses = _varlen(kernel, t_q, t_k, t_v, queries, keys, scaling)
    rows, cursor_p, cursor_r = [], 0, 0
    for b, spans in enumerate(layout.spans):
        pieces = [out_prefix[cursor_p : cursor_p + prompts[b]]]
        cursor_p += prompts[b]
        for s, e in spans:
            pieces.append(out_responses[cursor_r : cursor_r + e - s])
            cursor_r += e - s
        rows.append(_pad_rows(pieces, query.shape[2]))
    return torch.stack(rows)


Segments = list[tuple[int, list[slice]]]
"""One sequence of a varlen call per entry: (batch row, token slices of that row, concatenated)."""


def _varlen(
    kernel: VarlenKernel,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    queries: Segments,
    keys: Segments,
    scaling: float | None,
) -> Tensor:
    """One varlen call: sequence i has queries `queries[i]` and keys/values `keys[i]`. -> [sum Lq, H, D]."""

    def pack(t: Tensor, segments: Segments) -> tuple[Tensor, Tensor, int]:
        parts = [t[b, s] for b, slices in segments for s in slices]
        lengths = [sum(s.stop - s.start for s in slices) for _, slices in segments]
        cu = torch.tensor([0, *lengths], device=t.device).cumsum(0).to(torch.int32)
        return torch.cat(parts), cu, max(lengths)

    packed_q, cu_q, max_q = pack(q, queries)
    packed_k, cu_k, max_k = pack(k, keys)
    packed_v, _, _ = pack(v, keys)
    return kernel(
        packed_q,
        packed_k,
        packed_v,
        cu_q,
        cu_k,
        max_q,
        max_k,
        dropout_p=0.0,
        softmax_scale=scaling,
        causal=True,
    )


def sdpa_varlen_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
) -> Tensor:
    """flash_attn_varlen_func's semantics (bottom-right causal) with SDPA, one sequence at a
    time: the stand-in that lets CPU tests check the varlen wiring."""
    del max_seqlen_q, max_seqlen_k, dropout_p
    outs = []
    for i in range(len(cu_seqlens_q) - 1):
        qs = q[cu_seqlens_q[i] : cu_seqlens_q[i + 1]].transpose(0, 1)  # [H, Lq, D]
        ks = k[cu_seqlens_k[i] : cu_seqlens_k[i + 1]].transpose(0, 1)
        vs = v[cu_seqlens_k[i] : cu_seqlens_k[i + 1]].transpose(0, 1)
        mask = None
        if causal:
            lq, lk = qs.shape[1], ks.shape[1]
            mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
        out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=softmax_scale, enable_gqa=True)
        outs.append(out.transpose(0, 1))
    return torch.cat(outs)


# ---------------------------------------------------------------- flex


def _flex_block_mask(batch: PackedBatch, device: torch.device) -> Any:
    from torch.nn.attention.flex_attention import create_block_mask

    width = batch.input_ids.shape[1]
    segments = torch.full((len(batch.groups), width), -1, dtype=torch.long, device=device)
    for row, group in enumerate(batch.groups):
        segments[row, : group.length] = group.segment_ids

    def visible(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        del h
        seg_q, seg_kv = segments[b, q], segments[b, kv]
        return (kv <= q) & ((seg_kv == 0) | (seg_kv == seg_q))

    return create_block_mask(visible, len(batch.groups), None, width, width, device=device)


@functools.cache
def _compiled_flex() -> Callable[..., Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


def _flex(query: Tensor, key: Tensor, value: Tensor, layout: PrefixLayout, scaling: float | None) -> Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    options = {"block_mask": layout.block_mask, "scale": scaling, "enable_gqa": True}
    if query.is_cuda:  # flex is a compiled kernel; uncompiled it materialises the scores
        out = _compiled_flex()(query, key, value, **options)
    else:
        with warnings.catch_warnings():  # eager on CPU (tests): slow, and says so at every call
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile")
            out = flex_attention(query, key, value, **options)
    return out.transpose(1, 2)
