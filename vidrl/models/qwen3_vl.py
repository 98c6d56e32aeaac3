"""Qwen3-VL: time written as text, interleaved multimodal rotary, DeepStack, patch 16.

Facts from transformers 5.19 (`models/qwen3_vl`) and vLLM 0.32 (`qwen3_vl.py`), each checked
by a test here where the stack allows (tests/test_families.py, tests/test_models_family.py):

- Video tokens: the processor writes `<t.t seconds>` before each temporal patch (2 frames) and
  wraps that patch's pads in its own `<|vision_start|>` ... `<|vision_end|>`; the template's own
  pair stays outside (transformers >= 5.10 and vLLM 0.32 both expand the bare `<|video_pad|>`;
  vLLM issue 46817 is the older processors, which replaced the whole wrapper). The seconds are
  frames_indices / fps averaged over the patch's frames: without the video metadata transformers
  silently assumes 24 fps and writes other tokens, vLLM refuses the request.
- Positions: each temporal patch is a grid (1, h, w) of merged patches, so the temporal index of
  every video token is the start of its run and the text after it continues at max + 1 (vLLM's
  `_get_mrope_input_positions`; transformers' `get_rope_index` agrees here). `second_per_grid_ts`
  plays no part.
- DeepStack: the vision tower also returns features of some of its blocks
  (`deepstack_visual_indexes`), added to the hidden states of the video tokens after the first
  text layers; the model's forward does it from the input ids, so the learner passes the usual
  `pixel_values_videos` / `video_grid_thw`, and the dummy vision pass must touch those features.
- The video processor's `size` bounds the whole clip (t x h x w pixels), frames resized to
  multiples of 32 (patch 16 x merge 2).
- vLLM 0.32 normalises the pixels of Qwen3-VL videos on the device (`mm_device_do_normalize`,
  on by default for this model) with the mean/std of the checkpoint's IMAGE processor config; the
  released checkpoints use 0.5/0.5 for both processors, and so does the tiny one (with CLIP's
  defaults for images, vLLM's video features differed from transformers' by 0.2).
- The output head is called as `self.lm_head(hidden_states[:, slice])` and forward keywords reach
  every text attention call (and the vision tower's, which ignores them), as in Qwen2.5-VL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from vidrl.models.family import ModelFamily, TinyRecipe
from vidrl.models.positions import run_positions

PATCH_SIZE = 16
SPATIAL_MERGE = 2
TEMPORAL_PATCH = 2
TINY_MAX_FRAMES = 32
"""Frames the tiny processor's default per-clip pixel budget makes room for."""


def temporal_patch_grids(video_grid_thw: torch.Tensor | None) -> list[tuple[int, int, int]]:
    """Each video's grid (t, h, w) as t grids (1, h, w): one run of pads per temporal patch."""
    if video_grid_thw is None:
        return []
    return [(1, h, w) for t, h, w in video_grid_thw.tolist() for _ in range(t)]


def prompt_positions(
    config: Any,
    input_ids: torch.Tensor,
    video_grid_thw: torch.Tensor | None = None,
    second_per_grid_ts: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Positions [3, P] of the engine's prompt ids under a Qwen3-VL / Qwen3.5 config: every run
    of video pads is one temporal patch of grid (1, h, w); time is in the text, so
    `second_per_grid_ts` is not read."""
    del second_per_grid_ts
    grids = temporal_patch_grids(video_grid_thw)
    merge = config.vision_config.spatial_merge_size
    return run_positions(input_ids, config.video_token_id, grids, [0.0] * len(grids), merge)


def tiny_vision(shape: Any, init_std: float, deepstack_levels: int) -> dict[str, Any]:
    """The tiny vision tower of Qwen3-VL and Qwen3.5 (patch 16, a 16 x 16 learned position grid)."""
    vision = {
        "depth": shape.vision_depth,
        "hidden_size": shape.vision_hidden_size,
        "intermediate_size": shape.vision_intermediate_size,
        "num_heads": shape.vision_heads,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": SPATIAL_MERGE,
        "temporal_patch_size": TEMPORAL_PATCH,
        "out_hidden_size": shape.text_hidden_size,
        # Resampled bilinearly to each frame's grid; it must be a perfect square.
        "num_position_embeddings": 256,
        "initializer_range": init_std,
    }
    if deepstack_levels:
        vision["deepstack_visual_indexes"] = list(range(deepstack_levels))
    return vision


def tiny_config(token_ids: Mapping[str, int], vocab_size: int, shape: Any, init_std: float) -> Any:
    """The tiny Qwen3-VL config: text 128 wide, head 32 (rotary pairs split 6:5:5, interleaved),
    DeepStack features from every vision block into as many first text layers."""
    from transformers import Qwen3VLConfig

    head_dim = shape.text_hidden_size // shape.text_heads
    half = head_dim // 2
    spatial = (half - half // 3) // 2
    text = {
        "vocab_size": max(vocab_size, shape.vocab_size or 0),
        "hidden_size": shape.text_hidden_size,
        "intermediate_size": shape.text_intermediate_size,
        "num_hidden_layers": shape.text_layers,
        "num_attention_heads": shape.text_heads,
        "num_key_value_heads": shape.text_kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": shape.max_positions,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": [half - 2 * spatial, spatial, spatial],
            "mrope_interleaved": True,
        },
        "initializer_range": init_std,
        "bos_token_id": token_ids["<|endoftext|>"],
        "eos_token_id": token_ids["<|im_end|>"],
        "pad_token_id": token_ids["<|endoftext|>"],
    }
    levels = min(shape.vision_depth, shape.text_layers)
    return Qwen3VLConfig(
        text_config=text,
        vision_config=tiny_vision(shape, init_std, levels),
        image_token_id=token_ids["<|image_pad|>"],
        video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"],
        vision_end_token_id=token_ids["<|vision_end|>"],
        tie_word_embeddings=shape.tie_word_embeddings,
    )


def tiny_processor(tokenizer: Any, shape: Any, chat_template: str) -> Any:
    """Qwen3VLProcessor around `tokenizer`: Qwen2-VL's image processor and Qwen3-VL's video
    processor at patch 16, the video budget per clip (room for TINY_MAX_FRAMES frames)."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    image_size = {"shortest_edge": shape.min_pixels_per_frame, "longest_edge": shape.max_pixels_per_frame}
    video_size = {
        "shortest_edge": shape.min_pixels_per_frame * TEMPORAL_PATCH,
        "longest_edge": shape.max_pixels_per_frame * TINY_MAX_FRAMES,
    }
    common = {"patch_size": PATCH_SIZE, "merge_size": SPATIAL_MERGE, "temporal_patch_size": TEMPORAL_PATCH}
    # Qwen3-VL normalises images and videos alike (mean 0.5, std 0.5); vLLM 0.32 normalises video
    # pixels on the device with the IMAGE processor's mean/std (mm_device_do_normalize), so the
    # two must agree or vLLM's video features silently differ from transformers'.
    image_processor = Qwen2VLImageProcessor(
        size=image_size, image_mean=[0.5] * 3, image_std=[0.5] * 3, **common
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        # cap_pixels_per_frame=False: the size given is the clip's budget as is (and it silences
        # transformers' warning that this default is about to change).
        video_processor=Qwen3VLVideoProcessor(size=video_size, cap_pixels_per_frame=False, **common),
        chat_template=chat_template,
    )


FAMILY = ModelFamily(
    name="qwen3_vl",
    model_class="Qwen3VLForConditionalGeneration",
    sharding_units=("Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock"),
    prefix_sharing="attention",
    prompt_positions=prompt_positions,
    clip_pixel_budget=True,
    resize_factor=PATCH_SIZE * SPATIAL_MERGE,
    deepstack=True,
    recurrent_layers=False,
    end_of_turn="<|im_end|>",
    tiny=TinyRecipe(config=tiny_config, processor=tiny_processor),
)
