"""Ulysses sequence parallelism: the tokens of one micro-batch split across the S ranks of a group.

With `learner.sequence_parallel_size: S`, ranks r = d * S + s (d the data-parallel index, s the
rank's place in its sequence group) run the same micro-batches; each holds 1/S of every packed
sequence's tokens (a contiguous slice of the padded width, T = S x T_local) through the
decoder layers, the chunked head and the backward:

    vision tower                           each rank encodes a contiguous share of the frames
                                           (temporal patches) of the micro-batch's videos;
                                           `split_vision_tower` gathers the embeddings
    embeddings, whole sequence             every rank of the group (the model's own forward)
    decoder inputs -> this rank's slice    `sliced_text_inputs` (a pre-hook on the text model)
    attention, per layer                   q, k, v [B, H, T/S, D] --all-to-all--> [B, H/S, T, D],
                                           the layout's attention over the WHOLE sequence on H/S
                                           heads (causal, or the shared-prefix two passes),
                                           then back: [B, T, H/S, D] --all-to-all--> [B, T/S, H, D]
    head                                   each rank scores the response tokens in its slice;
                                           `gather_rows` puts every token back in order on every rank

so every rank of a group ends with the same per-token log-probs (and the same loss), while the
activations of the decoder, the largest part of a long video's memory, are 1/S per rank.

Gradients. Each rank's loss is the group's whole micro-batch loss; `gather_rows`'s backward sums
the S ranks' gradients of the gathered values, so the loss is scaled by 1/S on every rank (the
worker does it) and each token's gradient reaches its rank once. The embedding and vision tower
gradients flow only through a rank's own slice, so the S ranks' parameter gradients add up to
the micro-batch's gradient, which FSDP2's reduction over all ranks sums like any other.

Grouped-query attention: key/value heads are split by S too where they divide; otherwise each
rank's key/value heads are repeated up to the query heads first (correct, more traffic).
Families with recurrent layers (Qwen3.5's linear attention) are refused: their layers carry a
state along the sequence, which a split of the tokens would cut (`refuse_family`).
"""

from __future__ import annotations

import contextlib
import itertools
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class SequenceGroup:
    """This rank's sequence-parallel group: `size` ranks, this one at `index` among them."""

    group: Any  # torch.distributed ProcessGroup
    index: int
    size: int

    def slice_of(self, width: int) -> slice:
        """This rank's columns of a padded width that divides by `size`."""
        local = width // self.size
        return slice(self.index * local, (self.index + 1) * local)


def padded_width(width: int, size: int) -> int:
    """The smallest multiple of `size` that is at least `width` (the width every rank splits)."""
    return -(-width // size) * size


def new_sequence_groups(world_size: int, size: int, rank: int) -> SequenceGroup:
    """Make the world's sequence groups (consecutive ranks; every rank must call this, in the same
    order, as torch.distributed.new_group requires) and return this rank's."""
    if world_size % size:
        raise ValueError(f"sequence_parallel_size {size} does not divide the {world_size} learner ranks")
    mine = None
    for start in range(0, world_size, size):
        ranks = list(range(start, start + size))
        group = dist.new_group(ranks)
        if rank in ranks:
            mine = SequenceGroup(group, rank - start, size)
    assert mine is not None
    return mine


def refuse_family(family_name: str, prefix_sharing: str, size: int) -> None:
    """A clear error for a family sequence parallelism cannot split (recurrent layers)."""
    if size > 1 and prefix_sharing == "state":
        raise ValueError(
            f"learner.sequence_parallel_size {size}: the {family_name} family has recurrent "
            "(linear-attention) layers that carry a state along the sequence, which a split of the "
            "tokens across ranks would cut; set learner.sequence_parallel_size: 1 for this model"
        )


def refuse_heads(heads: int, size: int) -> None:
    """A clear error where the attention heads cannot be dealt out to the ranks."""
    if heads % size:
        raise ValueError(
            f"learner.sequence_parallel_size {size} must divide the model's {heads} attention heads: "
            "each rank of a sequence group attends with heads / sequence_parallel_size of them"
        )


# ---------------------------------------------------------------- collectives with gradients


class _AllToAll(torch.autograd.Function):
    """Split `x` along `scatter_dim` into S pieces, send piece j to rank j, and concatenate what
    arrives along `gather_dim`. Its gradient is the same exchange in the other direction."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any, scatter_dim: int, gather_dim: int) -> Tensor:
        ctx.group, ctx.dims = group, (scatter_dim, gather_dim)
        return _all_to_all(x, group, scatter_dim, gather_dim)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
        scatter_dim, gather_dim = ctx.dims
        return _all_to_all(grad, ctx.group, gather_dim, scatter_dim), None, None, None


def _all_to_all(x: Tensor, group: Any, scatter_dim: int, gather_dim: int) -> Tensor:
    size = dist.get_world_size(group)
    pieces = [p.contiguous() for p in torch.chunk(x, size, dim=scatter_dim)]
    received = [torch.empty_like(p) for p in pieces]
    dist.all_to_all(received, pieces, group=group)
    return torch.cat(received, dim=gather_dim)


def scatter_heads(x: Tensor, group: SequenceGroup) -> Tensor:
    """[B, heads, T/S, D] sequence-sharded -> [B, heads/S, T, D] head-sharded."""
    return _AllToAll.apply(x, group.group, 1, 2)


def gather_heads(x: Tensor, group: SequenceGroup) -> Tensor:
    """[B, T, heads/S, D] head-sharded -> [B, T/S, heads, D] sequence-sharded."""
    return _AllToAll.apply(x, group.group, 1, 2)


class _GatherRows(torch.autograd.Function):
    """Every rank's [n_r, ...] rows, concatenated in rank order on every rank. The gradient of
    a rank's rows is the sum of every rank's gradient of them (each rank's loss reads them all)."""

    @staticmethod
    def forward(ctx: Any, rows: Tensor, group: Any) -> Tensor:
        size = dist.get_world_size(group)
        counts = torch.tensor([rows.shape[0]], dtype=torch.long, device=rows.device)  # NCCL: on the device
        all_counts = [torch.zeros_like(counts) for _ in range(size)]
        dist.all_gather(all_counts, counts, group=group)
        sizes = [int(c) for c in all_counts]
        longest = max(sizes)
        padded = torch.zeros((longest, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
        padded[: rows.shape[0]] = rows
        pieces = [torch.empty_like(padded) for _ in range(size)]
        dist.all_gather(pieces, padded.contiguous(), group=group)
        ctx.group, ctx.sizes, ctx.index = group, sizes, dist.get_rank(group)
        return torch.cat([piece[:n] for piece, n in zip(pieces, sizes, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
        total = grad.contiguous().clone()
        dist.all_reduce(total, group=ctx.group)
        start = sum(ctx.sizes[: ctx.index])
        return total[start : start + ctx.sizes[ctx.index]], None


def gather_rows(rows: Tensor, group: SequenceGroup) -> Tensor:
    """[n_r, ...] on each rank -> [sum n_r, ...] on every rank, in rank order; differentiable."""
    return _GatherRows.apply(rows, group.group)


# ---------------------------------------------------------------- attention and inputs


def ulysses_attention(query: Tensor, key: Tensor, value: Tensor, group: SequenceGroup, attend: Any) -> Tensor:
    """Attention over the whole sequence from this rank's slice of it.

    query [B, H, T/S, D], key/value [B, Hkv, T/S, D] (rotary applied) -> [B, T/S, H, D].
    `attend(q, k, v)` takes the whole sequence on H/S heads ([B, H/S, T, D], k/v [B, Hkv', T, D])
    and returns [B, T, H/S, D].
    """
    heads, kv_heads = query.shape[1], key.shape[1]
    if heads % group.size:
        raise ValueError(f"{heads} attention heads do not split across {group.size} sequence ranks")
    if kv_heads % group.size:  # too few key/value heads to split: give each query head its own
        key = key.repeat_interleave(heads // kv_heads, dim=1)
        value = value.repeat_interleave(heads // kv_heads, dim=1)
    out = attend(scatter_heads(query, group), scatter_heads(key, group), scatter_heads(value, group))
    return gather_heads(out, group)


@contextlib.contextmanager
def sliced_text_inputs(text_model: nn.Module, group: SequenceGroup) -> Iterator[None]:
    """Within this block the text model (decoder layers) sees only this rank's columns of what
    the model's forward hands it: embeddings (vision merged in over the whole sequence),
    positions, and for DeepStack families the visual positions and their features. The 2D/4D
    attention mask is dropped: under sequence parallelism the attention reads its layout from
    the whole sequence (causal on right padding, or the shared-prefix layout)."""

    def keep_mine(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        embeds = kwargs["inputs_embeds"]  # [B, T, H]
        columns = group.slice_of(embeds.shape[1])
        kwargs["inputs_embeds"] = embeds[:, columns]
        kwargs["position_ids"] = kwargs["position_ids"][..., columns]  # [3 or 4, B, T]
        kwargs["attention_mask"] = None
        visual = kwargs.get("visual_pos_masks")
        if visual is not None:  # DeepStack: features of the visual tokens in this slice only
            flat = visual.reshape(visual.shape[0], visual.shape[1])  # [B, T]
            order = flat.nonzero()[:, 1]  # the column of each visual token, in feature order
            mine = (order >= columns.start) & (order < columns.stop)
            kwargs["visual_pos_masks"] = visual[:, columns]
            kwargs["deepstack_visual_embeds"] = [e[mine] for e in kwargs["deepstack_visual_embeds"]]
        return args, kwargs

    handle = text_model.register_forward_pre_hook(keep_mine, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def frame_shares(grid_thw: Tensor, size: int) -> list[tuple[Tensor, Tensor]] | None:
    """Each rank's share of a batch's videos: (pixel rows, grid [n, 3]) of a contiguous run of
    temporal patches, balanced by tokens; None when there are fewer temporal patches than ranks.

    grid_thw [V, 3] (t, h, w) in patches; the tower's pixel rows are video by video, t-major,
    h * w rows per temporal patch. The Qwen towers attend within a temporal patch (full and
    windowed attention alike) and give every patch the same positions, so a video split along
    t encodes to the same embeddings, in the same order, as the whole video.
    """
    units = [(v, t) for v, (frames, _, _) in enumerate(grid_thw.tolist()) for t in range(frames)]
    if len(units) < size:
        return None
    grids = grid_thw.tolist()
    rows_per = [h * w for _, h, w in grids]
    starts = [0]
    for (frames, _, _), rows in zip(grids, rows_per, strict=True):
        starts.append(starts[-1] + frames * rows)
    weights = torch.tensor([rows_per[v] for v, _ in units], dtype=torch.float64)
    ends = torch.cumsum(weights, 0)
    bounds = [0]
    for k in range(1, size):  # the unit boundary nearest k/size of the rows, one unit per rank at least
        target = ends[-1] * k / size
        after = int(torch.searchsorted(ends, target))  # the first unit whose end reaches the target
        cut = after + 1 if after == 0 or ends[after] - target <= target - ends[after - 1] else after
        bounds.append(min(max(cut, bounds[-1] + 1), len(units) - (size - k)))
    bounds.append(len(units))
    shares = []
    for first, last in itertools.pairwise(bounds):
        mine = units[first:last]
        rows = torch.cat([torch.arange(rows_per[v]) + starts[v] + t * rows_per[v] for v, t in mine])
        runs: dict[int, int] = {}
        for v, _ in mine:
            runs[v] = runs.get(v, 0) + 1
        grid = torch.tensor([[count, grids[v][1], grids[v][2]] for v, count in runs.items()])
        shares.append((rows, grid.to(grid_thw.dtype)))
    return shares


def pixel_share(pixels: list[Tensor], grid_thw: Tensor, group: SequenceGroup) -> Tensor:
    """This rank's rows of the videos' pixels [rows_v, D] (concatenated in order), copied alone:
    the whole batch's pixels (float32 patches, the largest input per frame) are never
    concatenated on a rank that encodes a share of them. All rows where the tower is not split."""
    shares = frame_shares(grid_thw, group.size)
    if shares is None:
        return torch.cat(pixels)
    rows = shares[group.index][0]
    first, last = int(rows[0]), int(rows[-1]) + 1  # a share is one contiguous run of rows
    pieces, offset = [], 0
    for video in pixels:
        start, stop = max(first - offset, 0), min(last - offset, video.shape[0])
        if start < stop:
            pieces.append(video[start:stop])
        offset += video.shape[0]
    return torch.cat(pieces)


@contextlib.contextmanager
def split_vision_tower(
    tower: nn.Module | None, group: SequenceGroup, given_share: bool = False
) -> Iterator[None]:
    """Within this block each rank of `group` runs the vision tower on its share of the frames
    (`frame_shares`) and every rank gets all the embeddings (and DeepStack features), gathered
    with gradients. Fewer temporal patches than ranks (a dummy pass, a one-frame image): every
    rank encodes all of them, as without sequence parallelism. `given_share`: the tower is handed
    this rank's rows already (`pixel_share`), not the whole batch's."""
    if tower is None:
        yield
        return
    original = type(tower).forward

    def forward(self: nn.Module, hidden_states: Tensor, grid_thw: Tensor, **kwargs: Any) -> Any:
        shares = frame_shares(grid_thw, group.size)
        if shares is None:
            return original(self, hidden_states, grid_thw=grid_thw, **kwargs)
        rows, grid = shares[group.index]
        mine = hidden_states if given_share else hidden_states[rows.to(hidden_states.device)]
        out = original(self, mine, grid_thw=grid.to(grid_thw.device), **kwargs)
        out.pooler_output = gather_rows(out.pooler_output, group)
        if getattr(out, "deepstack_features", None) is not None:
            out.deepstack_features = [gather_rows(f, group) for f in out.deepstack_features]
        out.last_hidden_state = None  # this rank's unmerged share: nothing downstream reads it
        return out

    tower.forward = types.MethodType(forward, tower)  # type: ignore[method-assign]
    try:
        yield
    finally:
        del tower.forward  # back to the class's forward
