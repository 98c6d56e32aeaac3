"""What a model family answers, so that the learner, the rollout and the tiny-model builder never
test the model type themselves.

A `ModelFamily` is a frozen record of facts and pure functions, one per family module
(qwen2_5_vl.py, qwen3_vl.py, qwen3_5.py), looked up by the checkpoint config's `model_type`
(`vidrl.models.family_of`): nothing in a run config names the family.

    placeholder_token_ids(config)   vision placeholders (pads, start/end): never sampled, never scored
    prompt_positions(config, ...)   multimodal rotary positions [3, P] of the ENGINE's prompt ids,
                                    by vLLM's rule for that family
    sharding_units                  module classes FSDP2 shards one by one
    prefix_sharing                  how a group's responses share its prompt: "attention" (a packed
                                    sequence with a prefix-sharing mask) or "state" (the prompt's
                                    cache: recurrent and convolution state plus attention K/V)
    video_size(...)                 the video processor's `size` for a clip (per-frame or per-clip bounds)
    resize_factor                   frames are resized to multiples of it (patch x spatial merge)
    end_of_turn                     the chat template's end-of-turn token
    text_model(m) / vision_tower(m) where the language model and the vision tower sit in a model
    engine_vision_tower(m)          where the vision tower sits in vLLM's model of the family
    dummy_vision_pass(m)            the tower on its smallest input, for a rank without video
    tiny                            how `vidrl tiny-model --family NAME` builds one

The vision tower's extra outputs (DeepStack features) need no entry: the model's own forward
consumes them, and the dummy vision pass sums every tensor the tower returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

PrefixSharing = Literal["attention", "state"]
"""attention: the G responses read the prompt through a prefix-sharing attention layout (every
layer is attention). state: the prompt runs once and each response starts from its cache
(recurrent layers would otherwise run from one response into the next)."""

PositionRule = Callable[
    [Any, torch.Tensor, "torch.Tensor | None", "Sequence[float] | torch.Tensor | None"], torch.Tensor
]
"""(model config, prompt ids [P], video_grid_thw [V, 3] or None, seconds per temporal patch [V]
or None) -> positions [3, P] long."""

PLACEHOLDER_ATTRIBUTES = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
"""The config attributes naming the vision placeholder tokens of every Qwen VL family."""


@dataclass(frozen=True)
class TinyRecipe:
    """How the tiny random model of a family is built (vidrl.data.tiny drives it).

    config(token_ids, vocab_size, shape, init_std): the model config, every token id read from
        `token_ids` (token text -> id of the tokenizer built for it).
    processor(tokenizer, shape, chat_template): the family's processor around that tokenizer.
    pre_tokenizer(): the pre-tokenizer the family's tokenizer class imposes on load (None: vidrl's
        own, digits split one per token, saved with the tokenizer class it was built as).
    reinit(model): redraws what the family's tiny model needs drawn otherwise than by the
        model's own init, from torch's (seeded) RNG (None: nothing).
    """

    config: Callable[[Mapping[str, int], int, Any, float], Any]
    processor: Callable[[Any, Any, str], Any]
    pre_tokenizer: Callable[[], Any] | None = None
    reinit: Callable[[Any], None] | None = None


@dataclass(frozen=True)
class ModelFamily:
    """One model family: see the module docstring for what each field answers."""

    name: str
    """The checkpoint config's `model_type`, and `vidrl tiny-model --family NAME`."""
    model_class: str
    """transformers' class of the checkpoint (what AutoModelForImageTextToText builds)."""
    sharding_units: tuple[str, ...]
    """Class names of the modules FSDP2 shards one by one (decoder layers, vision blocks)."""
    prefix_sharing: PrefixSharing
    """How a group's responses share its prompt in the learner (see PrefixSharing)."""
    prompt_positions: PositionRule
    """Multimodal rotary positions of a prompt's token ids, as vLLM assigns them."""
    clip_pixel_budget: bool
    """True when the video processor's `size` bounds a whole clip (T x H x W, Qwen3-VL's video
    processor), False when it bounds each frame (Qwen2-VL's)."""
    resize_factor: int
    """Frames are resized to multiples of this many pixels (patch size x spatial merge)."""
    deepstack: bool
    """The vision tower returns DeepStack features injected into early language layers."""
    recurrent_layers: bool
    """Some text layers carry a recurrent state (vLLM runs the model as a hybrid: its prefix cache
    of such a model needs chunked prefill)."""
    end_of_turn: str
    """The chat template's end-of-turn token: a response ends with it (the SFT targets too)."""
    tiny: TinyRecipe
    """How the tiny random model is built."""

    def placeholder_token_ids(self, config: Any) -> tuple[int, ...]:
        """Ids of the family's vision placeholders (image/video pads, vision start/end), read
        from `config`: the rollout bans them from sampling and the learner from its distribution."""
        ids = (getattr(config, name, None) for name in PLACEHOLDER_ATTRIBUTES)
        return tuple(sorted({int(i) for i in ids if i is not None}))

    def text_model(self, model: nn.Module) -> nn.Module:
        """The language model inside a checkpoint's model (what runs after the vision tower)."""
        return model.model.language_model  # type: ignore[union-attr,return-value]

    def vision_tower(self, model: nn.Module) -> nn.Module | None:
        """The vision tower inside a checkpoint's model (None: a text-only model)."""
        return getattr(getattr(model, "model", model), "visual", None)

    def engine_vision_tower(self, engine_model: nn.Module) -> nn.Module | None:
        """The vision tower inside vLLM's model of this family (every Qwen VL family: `visual`)."""
        return getattr(engine_model, "visual", None)

    def dummy_vision_pass(self, model: nn.Module) -> torch.Tensor:
        """Run the vision tower on its smallest input (one temporal patch of merge x merge
        patches) and return a zero that depends on every tensor it returns (the merged patches
        and, for DeepStack, its inner blocks' features), so that a rank with no video still
        joins the tower's collectives with a gradient for each of its parameters."""
        tower = self.vision_tower(model)
        if tower is None:
            return torch.zeros(())
        cfg: Any = tower.config
        patch_dim = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size * cfg.patch_size
        merge = cfg.spatial_merge_size
        device = tower.patch_embed.proj.weight.device
        grid = torch.tensor([[1, merge, merge]], device=device)
        pixels = torch.zeros(merge * merge, patch_dim, device=device)
        out = tower(pixels, grid_thw=grid)
        return sum((t.float().sum() for t in _tensors(out)), torch.zeros((), device=device)) * 0.0

    def video_size(
        self, min_pixels_per_frame: int | None, max_pixels_per_frame: int | None, num_frames: int
    ) -> dict[str, int] | None:
        """The video processor's `size` that bounds each of `num_frames` frames to
        [min, max] pixels (None: the processor's own, when the bounds are not set)."""
        if min_pixels_per_frame is None or max_pixels_per_frame is None:
            return None
        frames = num_frames if self.clip_pixel_budget else 1
        return {"shortest_edge": min_pixels_per_frame * frames, "longest_edge": max_pixels_per_frame * frames}


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a model output, tuple or list, nested (a tower's ModelOutput holds
    `pooler_output` and, in Qwen3-VL, `deepstack_features`: a list of tensors)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, Mapping):  # transformers' ModelOutput is an ordered dict
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _tensors(item)
