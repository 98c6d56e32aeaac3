"""Per-token log-probs (and entropies) of responses under a Qwen VL policy, in two layouts.

`response_logprobs_shared` runs one packed sequence per group (`vidrl.learner.prefix`): the
prompt and its video once, then all G responses, which share the prompt through the attention of
`vidrl.learner.attention` (two passes without a T x T mask by default; a dense 4D mask, or flex).
A family with recurrent layers shares the prompt through its cache instead
(`vidrl.learner.state_prefix`); `vidrl.learner.layouts` chooses between them once per run.
`response_logprobs_plain` runs the same groups the ordinary way, G sequences of prompt +
response, each with its own copy of the video through the vision encoder. Both return the same
records and are differentiable, so the shared layout can be checked against the plain one (it
must agree to rounding) and used in its place for policy, old and reference log-probs.

Both read log-probs and entropies through `vidrl.learner.logprobs`: the model's head scores the
response rows chunk by chunk, so no [N, V] tensor is made or kept, in either layout, for the
policy, the reference model and SFT alike.

Vision inputs (`pixel_values_videos`, `video_grid_thw`) come from the processor once per prompt
and are passed in by the caller (the model's forward derives DeepStack's inputs from them and
the ids); prompt positions come from `config_prompt_position_ids`, the family's rule for the
engine's prompt ids (vidrl.models).

Where it departs from the references:
- The positions follow vLLM's multimodal rotary rule for each family (vidrl.models.positions:
  text after a video continues from the largest position so far, plus one). transformers 5.19's
  Qwen2.5-VL `get_rope_index` continues text after a video from its spatial extent instead; the
  two agree whenever the temporal positions do not outrun the spatial ones (short or densely
  sampled clips). We follow vLLM so that learner log-probs match the rollout engine's.
- Only the rows from the first one that predicts a response token onwards reach the head (the
  model's `logits_to_keep`), and of those only the response rows are scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vidrl.learner.attention import SHARED_PREFIX_ATTENTION, Kernel, prefix_layout
from vidrl.learner.logprobs import DEFAULT_CHUNK_TOKENS, HeadRequest, scoring_head
from vidrl.learner.prefix import batch_groups, pad_token_id, response_mask, split_group, unpack_responses
from vidrl.learner.sequence_parallel import (
    SequenceGroup,
    gather_rows,
    padded_width,
    pixel_share,
    sliced_text_inputs,
    split_vision_tower,
)
from vidrl.learner.types import PackedBatch, PackedGroup, ResponseLogprobs, VisionInputs
from vidrl.models import family_of

# Attention implementations that read an explicit 4D mask from the model's forward.
MASKABLE_ATTENTION = ("sdpa", "eager", SHARED_PREFIX_ATTENTION)

PrefixAttention = Literal["mask", "two_pass", "flex"]
"""How the responses of a packed group share its prompt (see vidrl.learner.attention)."""


def config_prompt_position_ids(
    config: Any,
    input_ids: torch.Tensor,
    video_grid_thw: torch.Tensor | None = None,
    second_per_grid_ts: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Positions [3, P] of prompt ids [P] by the rule of `config`'s model family, as vLLM assigns
    them (vidrl.models: one helper per family, e.g. `vidrl.models.qwen3_vl.prompt_positions`)."""
    return family_of(config).prompt_positions(config, input_ids, video_grid_thw, second_per_grid_ts)


def attention_implementation(model: nn.Module) -> str:
    """The text model's attention implementation ("sdpa", "eager", "flash_attention_2", ...)."""
    config = model.config
    text_config = getattr(config, "text_config", config)
    # transformers keeps the resolved choice on this private attribute; there is no public getter.
    return str(text_config._attn_implementation)


def model_attention_mask(
    mask: torch.Tensor,
    implementation: str,
    dtype: torch.dtype,
) -> torch.Tensor:
    """A bool [B, 1, T, T] mask (True = attend) in the form the attention implementation reads.

    transformers passes a 4D mask through unchanged. SDPA (and the shared-prefix implementation,
    which is SDPA when given a mask) takes it as bool; eager attention adds it to the scores, so
    it needs 0 where allowed and a large negative number elsewhere.
    """
    if implementation in ("sdpa", SHARED_PREFIX_ATTENTION):
        return mask
    if implementation == "eager":
        additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return additive.masked_fill(~mask, torch.finfo(dtype).min)
    raise ValueError(
        f"the shared-prefix layout needs an attention implementation that reads a 4D mask "
        f"({', '.join(MASKABLE_ATTENTION)}), not {implementation!r}"
    )


def response_logprobs_shared(
    model: nn.Module,
    groups: Sequence[PackedGroup],
    vision: Sequence[VisionInputs | None],
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    attention: PrefixAttention = "mask",
    kernel: Kernel = "sdpa",
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    banned_ids: Sequence[int] = (),
    sequence_group: SequenceGroup | None = None,
) -> list[ResponseLogprobs]:
    """Log-probs of every group's responses, one packed sequence per group, B groups per forward.

    groups[b] holds a prompt and its G_b responses; vision[b] is that prompt's video (None for a
    text-only prompt). Returns one record per group, [G_b, Lmax_b]. Differentiable.
    attention: "mask" builds the dense [B, 1, T, T] mask (any maskable attention); "two_pass"
    and "flex" need the text model under `vidrl_shared_prefix` (`use_shared_prefix_attention`),
    with `kernel` "sdpa" or "flash" for two_pass. banned_ids: tokens the rollout never samples
    (the family's vision placeholders), left out of the distribution as the engine leaves them out.
    sequence_group: this rank's sequence-parallel group (two_pass only; every rank of the group
    gets the same records: vidrl.learner.sequence_parallel).
    """
    if sequence_group is not None and attention != "two_pass":
        raise ValueError(f"sequence parallelism runs the two_pass prefix attention, not {attention!r}")
    batch = batch_groups(groups, pad_token_id(model), with_mask=attention == "mask")
    parameter = next(model.parameters())
    implementation = attention_implementation(model)
    if attention == "mask":
        mask = model_attention_mask(
            batch.attention_mask.to(parameter.device), implementation, parameter.dtype
        )
        return _forward(model, batch, mask, vision, temperature, with_entropy, chunk_tokens, banned_ids)
    if implementation != SHARED_PREFIX_ATTENTION:
        raise ValueError(
            f"prefix attention {attention!r} needs the text model under {SHARED_PREFIX_ATTENTION!r}, "
            f"not {implementation!r} (vidrl.learner.model.choose_attention picks it for this layout)"
        )
    layout = prefix_layout(batch, "flex" if attention == "flex" else kernel, parameter.device)
    extra = {"prefix_layout": layout}
    return _forward(
        model, batch, None, vision, temperature, with_entropy, chunk_tokens, banned_ids, extra, sequence_group
    )


def response_logprobs_plain(
    model: nn.Module,
    groups: Sequence[PackedGroup],
    vision: Sequence[VisionInputs | None],
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    banned_ids: Sequence[int] = (),
    sequence_group: SequenceGroup | None = None,
) -> list[ResponseLogprobs]:
    """The same records as `response_logprobs_shared`, computed without sharing.

    Every group is split into G sequences of prompt + one response, each with its own copy of
    the video, batched with right padding and the model's own causal mask. To bound memory, call
    it on a few single-response groups at a time (`split_group`) and run backward in between.
    """
    sequences: list[PackedGroup] = []
    sequence_vision: list[VisionInputs | None] = []
    for group, video in zip(groups, vision, strict=True):
        singles = split_group(group)
        sequences.extend(singles)
        sequence_vision.extend([video] * len(singles))
    batch = batch_groups(sequences, pad_token_id(model), with_mask=False)
    # A 2D padding mask lets transformers build the causal mask itself (SDPA's is_causal fast
    # path when nothing is padded), as an unshared learner would run.
    padding = batch.padding_mask.long().to(next(model.parameters()).device)
    singles_out = _forward(
        model,
        batch,
        padding,
        sequence_vision,
        temperature,
        with_entropy,
        chunk_tokens,
        banned_ids,
        sequence_group=sequence_group,
    )
    return _regroup(singles_out, [group.num_responses for group in groups])


def _forward(
    model: nn.Module,
    batch: PackedBatch,
    attention_mask: torch.Tensor | None,
    vision: Sequence[VisionInputs | None],
    temperature: float,
    with_entropy: bool,
    chunk_tokens: int,
    banned_ids: Sequence[int] = (),
    extra: dict[str, Any] | None = None,
    sequence_group: SequenceGroup | None = None,
) -> list[ResponseLogprobs]:
    """Run the model on a padded batch; its head scores each group's response tokens (under
    sequence parallelism, each rank those in its slice, then every rank all of them)."""
    if len(vision) != len(batch.groups):
        raise ValueError(f"{len(batch.groups)} groups but {len(vision)} vision inputs")
    device = next(model.parameters()).device
    rows = torch.cat([torch.full_like(g.logit_rows, b) for b, g in enumerate(batch.groups)])
    columns = torch.cat([group.logit_rows for group in batch.groups])
    targets = torch.cat([group.targets for group in batch.groups])
    banned = torch.tensor(list(banned_ids), dtype=torch.long, device=device) if banned_ids else None
    if sequence_group is not None:
        return _forward_sequence_parallel(
            model,
            batch,
            vision,
            (rows, columns, targets),
            banned,
            temperature,
            with_entropy,
            chunk_tokens,
            extra or {},
            sequence_group,
        )
    width = batch.input_ids.shape[1]
    # Rows before the earliest prompt end never predict a response token: skip them.
    first_row = int(columns.min())
    request = HeadRequest(
        rows.to(device),
        (columns - first_row).to(device),
        targets.to(device),
        temperature,
        chunk_tokens,
        with_entropy,
        banned,
    )
    with scoring_head(model, request):
        outputs = model(
            input_ids=batch.input_ids.to(device),
            position_ids=batch.position_ids.to(device),
            attention_mask=attention_mask,
            **video_arguments(vision, device),
            logits_to_keep=width - first_row,
            use_cache=False,
            **(extra or {}),
        )
    scored = outputs.logits[0]  # [N, 2]: log-prob, entropy
    return _unpack(batch.groups, scored[:, 0], scored[:, 1] if with_entropy else None)


def _forward_sequence_parallel(
    model: nn.Module,
    batch: PackedBatch,
    vision: Sequence[VisionInputs | None],
    scored_tokens: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    banned: torch.Tensor | None,
    temperature: float,
    with_entropy: bool,
    chunk_tokens: int,
    extra: dict[str, Any],
    group: SequenceGroup,
) -> list[ResponseLogprobs]:
    """`_forward` with this rank holding 1/S of the (padded) width through the decoder and head."""
    device = next(model.parameters()).device
    rows, columns, targets = scored_tokens  # [N] each, packed order
    width = padded_width(batch.input_ids.shape[1], group.size)
    extend = width - batch.input_ids.shape[1]
    input_ids = F.pad(batch.input_ids, (0, extend), value=pad_token_id(model))
    position_ids = F.pad(batch.position_ids, (0, extend))  # [3, B, T]
    mine = group.slice_of(width)
    local = (columns >= mine.start) & (columns < mine.stop)
    request = HeadRequest(
        rows[local].to(device),
        (columns[local] - mine.start).to(device),
        targets[local].to(device),
        temperature,
        chunk_tokens,
        with_entropy,
        banned,
    )
    family = family_of(model.config)
    with (
        scoring_head(model, request),
        sliced_text_inputs(family.text_model(model), group),
        split_vision_tower(family.vision_tower(model), group, given_share=True),
    ):
        outputs = model(
            input_ids=input_ids.to(device),
            position_ids=position_ids.to(device),
            attention_mask=None,
            **video_arguments(vision, device, group),
            logits_to_keep=0,  # every column of this rank's slice
            use_cache=False,
            sequence_group=group,
            **extra,
        )
    gathered = gather_rows(outputs.logits[0], group)  # [N, 2], rank by rank
    owner = torch.div(columns, width // group.size, rounding_mode="floor")
    in_gathered_order = torch.sort(owner, stable=True).indices  # packed index of each gathered row
    scored = gathered[torch.argsort(in_gathered_order).to(gathered.device)]  # back to packed order
    return _unpack(batch.groups, scored[:, 0], scored[:, 1] if with_entropy else None)


def _unpack(
    groups: Sequence[PackedGroup], logprobs: torch.Tensor, entropies: torch.Tensor | None
) -> list[ResponseLogprobs]:
    """Split per-token values [N] (all groups, packed order) into one record per group."""
    sizes = [sum(group.response_lengths) for group in groups]
    logprob_parts = torch.split(logprobs, sizes)
    entropy_parts = torch.split(entropies, sizes) if entropies is not None else [None] * len(groups)
    return [
        ResponseLogprobs(
            logprobs=unpack_responses(part, group),
            entropies=unpack_responses(entropy, group) if entropy is not None else None,
            mask=response_mask(group, device=part.device),
        )
        for group, part, entropy in zip(groups, logprob_parts, entropy_parts, strict=True)
    ]


def _regroup(
    singles: Sequence[ResponseLogprobs],
    group_sizes: Sequence[int],
) -> list[ResponseLogprobs]:
    """Stack single-response records ([1, L]) back into groups ([G, Lmax])."""
    records, start = [], 0
    for size in group_sizes:
        part = singles[start : start + size]
        start += size
        records.append(
            ResponseLogprobs(
                logprobs=_stack_rows([r.logprobs[0] for r in part], 0.0),
                entropies=_stack_rows([r.entropies[0] for r in part], 0.0)
                if part[0].entropies is not None
                else None,
                mask=_stack_rows([r.mask[0] for r in part], False),
            )
        )
    return records


def _stack_rows(rows: Sequence[torch.Tensor], fill: float | bool) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(list(rows), batch_first=True, padding_value=fill)


def video_arguments(
    vision: Sequence[VisionInputs | None], device: torch.device, group: SequenceGroup | None = None
) -> dict[str, Any]:
    """The videos of a batch as the model's forward takes them, on `device`: pixels
    [sum of patches, D] and grids [videos, 3]; or, where a frozen tower already encoded them
    (learner.freeze_vision), its outputs as `mm_encoder_outputs` with the grids; nothing
    without video. With a sequence `group`, the pixels are this rank's share of the frames
    (`pixel_share`: the tower runs under `split_vision_tower(..., given_share=True)`)."""
    videos = [video for video in vision if video is not None]
    if not videos:
        return {}
    grids = torch.cat([torch.as_tensor(v.video_grid_thw).long() for v in videos])
    encoded = [v.encoded for v in videos if v.encoded is not None]
    if not encoded:
        pieces = [torch.as_tensor(v.pixel_values_videos) for v in videos]
        pixels = torch.cat(pieces) if group is None else pixel_share(pieces, grids, group)
        return {"pixel_values_videos": pixels.to(device), "video_grid_thw": grids.to(device)}
    grids = grids.to(device)
    if len(encoded) != len(videos):
        raise ValueError("a batch mixes encoded videos with videos to encode: encode every video of the step")
    layers = len(encoded[0].deepstack)
    outputs = SimpleNamespace(  # what the model's forward reads of its own tower's output
        pooler_output=tuple(e.embeds.to(device) for e in encoded),
        deepstack_features=[tuple(e.deepstack[k].to(device) for e in encoded) for k in range(layers)],
    )
    return {"video_grid_thw": grids, "mm_encoder_outputs": {"video": outputs}}
