"""Qwen2.5-VL: multimodal rotary positions with time on the temporal axis, patch 14 (frames in
multiples of 28 px), a per-frame pixel budget, every text layer attention.

Facts from transformers 5.19 (`models/qwen2_5_vl`) and vLLM 0.32 (`qwen2_5_vl.py`): a video is one
run of `<|video_pad|>` tokens inside the template's `<|vision_start|>` / `<|vision_end|>`; its
temporal positions are floor(t * second_per_grid * tokens_per_second); text after it continues
from its largest position + 1 in vLLM (transformers 5.19 continues from its spatial extent, see
vidrl.models.positions). The vision tower returns the merged patch embeddings only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from vidrl.models.family import ModelFamily, TinyRecipe
from vidrl.models.positions import run_positions


def prompt_position_ids(
    input_ids: torch.Tensor,
    video_token_id: int,
    video_grid_thw: torch.Tensor | None = None,
    second_per_grid_ts: Sequence[float] | torch.Tensor | None = None,
    *,
    spatial_merge_size: int = 2,
    tokens_per_second: float = 2.0,
) -> torch.Tensor:
    """Multimodal rotary positions [3, P] of a prompt (ids [P]), as vLLM assigns them.

    Each run of video pad tokens is one video of `video_grid_thw` (in order); its tokens get
    (start + floor(t * second_per_grid * tokens_per_second), start + h, start + w) on the merged
    grid, and text continues from the largest position so far plus one. A text-only prompt gets
    0..P-1 in all three rows. Read the sizes from the model config
    (`vision_config.spatial_merge_size`, `vision_config.tokens_per_second`). Image tokens are
    not handled (our prompts carry videos only): they would be counted as text.
    """
    grids = [] if video_grid_thw is None else [tuple(g) for g in video_grid_thw.tolist()]
    seconds = [1.0] * len(grids)
    if second_per_grid_ts is not None:
        seconds = [float(s) for s in second_per_grid_ts]
    steps = [s * tokens_per_second for s in seconds]
    return run_positions(input_ids, video_token_id, grids, steps, spatial_merge_size)


def prompt_positions(
    config: Any,
    input_ids: torch.Tensor,
    video_grid_thw: torch.Tensor | None = None,
    second_per_grid_ts: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """`prompt_position_ids` with the token id and sizes read from a Qwen2.5-VL config."""
    vision = config.vision_config
    return prompt_position_ids(
        input_ids,
        config.video_token_id,
        video_grid_thw,
        second_per_grid_ts,
        spatial_merge_size=vision.spatial_merge_size,
        tokens_per_second=getattr(vision, "tokens_per_second", 2.0),
    )


def tiny_config(token_ids: Mapping[str, int], vocab_size: int, shape: Any, init_std: float) -> Any:
    """The tiny Qwen2.5-VL config (vidrl.data.tiny's shape), every token id from `token_ids`."""
    from transformers import Qwen2_5_VLConfig

    half_head = shape.text_hidden_size // shape.text_heads // 2
    # Multimodal rotary: the head's rotary pairs split time:height:width as 16:24:24 in Qwen.
    temporal_pairs = half_head // 4
    mrope_section = [temporal_pairs, *[(half_head - temporal_pairs) // 2] * 2]
    text = {
        "vocab_size": max(vocab_size, shape.vocab_size or 0),
        "hidden_size": shape.text_hidden_size,
        "intermediate_size": shape.text_intermediate_size,
        "num_hidden_layers": shape.text_layers,
        "num_attention_heads": shape.text_heads,
        "num_key_value_heads": shape.text_kv_heads,
        "max_position_embeddings": shape.max_positions,
        "max_window_layers": shape.text_layers,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1_000_000.0,
            "mrope_section": mrope_section,
        },
        "initializer_range": init_std,
        "bos_token_id": token_ids["<|endoftext|>"],
        "eos_token_id": token_ids["<|im_end|>"],
        "pad_token_id": token_ids["<|endoftext|>"],
    }
    vision = {
        "depth": shape.vision_depth,
        "hidden_size": shape.vision_hidden_size,
        "intermediate_size": shape.vision_intermediate_size,
        "num_heads": shape.vision_heads,
        "out_hidden_size": shape.text_hidden_size,
        "fullatt_block_indexes": [shape.vision_depth - 1],
        "tokens_per_second": 2,
        "initializer_range": init_std,
    }
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=token_ids["<|image_pad|>"],
        video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"],
        vision_end_token_id=token_ids["<|vision_end|>"],
        tie_word_embeddings=shape.tie_word_embeddings,
    )


def tiny_processor(tokenizer: Any, shape: Any, chat_template: str) -> Any:
    """The default Qwen2.5-VL processor around `tokenizer`, with the shape's pixel budget."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    size = {"shortest_edge": shape.min_pixels_per_frame, "longest_edge": shape.max_pixels_per_frame}
    # Patch 14, merge 2, temporal patch 2 are the processors' defaults and match the vision config.
    image_processor = Qwen2VLImageProcessor(size=size)
    # cap_pixels_per_frame=True bounds a whole video's pixels as qwen-vl-utils does (and silences
    # transformers' warning that this default is about to change).
    video_processor = Qwen2VLVideoProcessor(size=size, cap_pixels_per_frame=True)
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=chat_template,
    )


FAMILY = ModelFamily(
    name="qwen2_5_vl",
    model_class="Qwen2_5_VLForConditionalGeneration",
    sharding_units=("Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock"),
    prefix_sharing="attention",
    prompt_positions=prompt_positions,
    clip_pixel_budget=False,
    resize_factor=28,
    deepstack=False,
    recurrent_layers=False,
    end_of_turn="<|im_end|>",
    tiny=TinyRecipe(config=tiny_config, processor=tiny_processor),
)
