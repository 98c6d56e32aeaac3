"""A tiny random checkpoint folder of each model family, built offline, for tests, benchmarks
and the demo.

No model can be downloaded here, so every test that needs "a Qwen2.5-VL" builds one:
`build_tiny_model(out_dir)` writes, with `save_pretrained`, a folder that both transformers
(`Qwen2_5_VLForConditionalGeneration` / `AutoModelForImageTextToText`, `AutoProcessor`) and vLLM
(`vllm.LLM(model=out_dir)`) load with `HF_HUB_OFFLINE=1`. `family="qwen3_vl"` or `"qwen3_5"`
builds those families the same way: the config and processor come from the family's recipe
(vidrl.models.*: `tiny_config`, `tiny_processor`), the tokenizer is trained here under the
pre-tokenizer the family's tokenizer class imposes, and the family may redraw what its own
init draws otherwise (Qwen3.5: milder decay rates). What follows describes the default
(Qwen2.5-VL); the Qwen3 families' sizes are in their modules.

- the model: the real Qwen2.5-VL architecture at toy size (text 128 wide, 2 layers, 4 query and
  2 key/value heads; vision tower 2 blocks deep, one windowed and one full-attention block, patch
  14, spatial merge 2, temporal patch 2) with small random weights, deterministic by seed;
- a byte-level BPE tokenizer trained here on our own prompt/answer vocabulary, followed by all
  of Qwen2.5-VL's added tokens in Qwen's order, so that prompts look like Qwen prompts;
- a Qwen-style chat template (video parts render as `<|vision_start|><|video_pad|><|vision_end|>`)
  and the default Qwen2_5_VLProcessor with its image and video processors.

Where it departs from the released Qwen2.5-VL files:
- the vocabulary is 500 tokens instead of 151,665, so token ids differ; the config's token ids
  (bos/eos/pad, image/video pad, vision start/end) are taken from this tokenizer, never hard-coded;
- the embedding has exactly one row per token (Qwen pads it to 151,936), so a random model never
  samples an id the tokenizer cannot decode;
- digits are split one per token as in Qwen, but by a `Digits` + GPT-2 byte-level pre-tokenizer
  rather than Qwen's own regex: the two agree on the digits, spaces and punctuation of our
  answers, which is all the tests rely on;
- the saved tokenizer names its class (`TokenizersBackend`) explicitly: a folder whose config
  says qwen2_5_vl otherwise loads as `Qwen2Tokenizer`, which rebuilds its pre-tokenizer from
  Qwen's regex and so would not be the tokenizer trained here;
- the processors' pixel budgets are small by default (at most 224x224 per frame), so a test video
  costs tens of visual tokens, not thousands.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from pydantic import Field, model_validator
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers.trainers import BpeTrainer
from transformers import GenerationConfig, TokenizersBackend

from vidrl.configbase import StrictConfig
from vidrl.models import family_named

# Qwen2.5-VL's added tokens, in the order Qwen appends them after its byte-level vocabulary.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Added by Qwen too, but as ordinary (non-special) tokens: decoding keeps them.
PLAIN_ADDED_TOKENS: tuple[str, ...] = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
# Qwen2.5-VL's own initializer_range; small enough that a fresh model's logits are finite.
INIT_STD = 0.02
# Named on the tokenizer (`tokenizer.video_token`, ...) where the processor and vLLM look for them.
NAMED_TOKENS: dict[str, str] = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
}
# Written for this project in the shape of Qwen2.5-VL's template (see the file). It builds the
# output by string concatenation with `-` trimming, so whitespace does not depend on the jinja
# environment's trim settings.
CHAT_TEMPLATE = (Path(__file__).parent / "chat_template.jinja").read_text()


class TinyQwenShape(StrictConfig):
    """Sizes of the tiny model; the defaults are what the tests use (about 0.7M parameters)."""

    text_hidden_size: int = Field(128, ge=32)
    """Width of the language model (and of the vision tower's output)."""
    text_layers: int = Field(2, ge=1)
    """Decoder layers of the language model."""
    text_heads: int = Field(4, ge=1)
    """Query heads per decoder layer."""
    text_kv_heads: int = Field(2, ge=1)
    """Key/value heads per decoder layer (grouped-query attention, as in Qwen2.5)."""
    text_intermediate_size: int = Field(256, ge=8)
    """Hidden width of each decoder MLP."""
    vision_depth: int = Field(2, ge=2)
    """Vision blocks; the last is full attention, the others windowed, as in Qwen2.5-VL."""
    vision_hidden_size: int = Field(64, ge=16)
    """Width of the vision tower."""
    vision_heads: int = Field(2, ge=1)
    """Attention heads per vision block."""
    vision_intermediate_size: int = Field(128, ge=8)
    """Hidden width of each vision MLP."""
    max_positions: int = Field(8192, ge=256)
    """Longest sequence in tokens (prompt plus response) the config admits."""
    bpe_vocab_size: int = Field(512, ge=300, le=2000)
    """Byte-level BPE vocabulary (256 byte symbols plus learned merges), before added tokens."""
    min_pixels_per_frame: int = Field(56 * 56, ge=28 * 28)
    """Smallest frame/image area after resizing, in pixels (56x56: 2x2 merged 28x28 patches)."""
    max_pixels_per_frame: int = Field(224 * 224, ge=56 * 56)
    """Largest frame/image area after resizing, in pixels (224x224 = 64 merged visual tokens)."""
    tie_word_embeddings: bool = False
    """Share the input embedding with the output head (Qwen2.5-VL-3B does, 7B does not)."""
    vocab_size: int | None = Field(None, ge=1)
    """Rows of the embedding and output head; None: one per token. Qwen2.5-VL pads its 151,665
    tokens to 151,936 rows: a benchmark at the real vocabulary sets that (ids past the tokenizer
    are never produced by it)."""

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyQwenShape:
        if self.text_hidden_size % self.text_heads or self.text_heads % self.text_kv_heads:
            raise ValueError("text_hidden_size must divide by text_heads, and those by kv heads")
        if (self.text_hidden_size // self.text_heads) % 16:
            # Its rotary pairs split 1:3:3 over time, height and width: 16 keeps them whole.
            raise ValueError("the text head size must be a multiple of 16 (multimodal rotary)")
        if self.vision_hidden_size % self.vision_heads or (
            (self.vision_hidden_size // self.vision_heads) % 4
        ):
            raise ValueError("the vision head size must be a whole multiple of 4 (2-D rotary)")
        if self.max_pixels_per_frame < self.min_pixels_per_frame:
            raise ValueError("max_pixels_per_frame must be at least min_pixels_per_frame")
        return self


def tiny_corpus(extra: Sequence[str] = ()) -> list[str]:
    """Training text for the BPE: the words, tags and number formats our prompts and answers use.

    Deterministic (no sampling), so the tokenizer is the same on every build. `extra` adds lines,
    e.g. the questions of a synthetic dataset, to give their words merges of their own.
    """
    subjects = ["the person", "a man", "a woman", "the red square", "the blue circle"]
    subjects += ["the green triangle", "the yellow star", "the white ball", "the object"]
    actions = ["opens the door", "closes the door", "picks up a cup", "puts down the box"]
    actions += ["moves left", "moves right", "moves up", "moves down", "appears", "disappears"]
    actions += ["turns around", "sits down", "stands up", "holds a phone", "reads a book"]
    lines = [
        "A conversation between User and Assistant. The user asks a question about a video, and "
        "the Assistant answers it. The Assistant first thinks about the reasoning process and "
        "then gives the answer. The reasoning is enclosed within <think> </think> tags and the "
        "answer within <answer> </answer> tags. Answer in JSON.",
        "Give the start and end time of the event in seconds.",
        "Answer with the option's letter from the given choices directly. The answer is",
        "Track the object and give its box [x0, y0, x1, y1] in each of the 8 sampled frames.",
        "Which intervals of the video support the answer? <glue>[(1.5, 4.0), (7.0, 9.5)]</glue>",
    ]
    for subject, action in itertools.product(subjects, actions):
        lines.append(f"When does {subject} {action}? What does {subject} do? {subject} {action}.")
    for start_tenths in range(0, 600, 7):
        # Times with one decimal, as the references' answers write them.
        start, end = start_tenths / 10, (start_tenths + 35) / 10
        lines.append(f"<think>It happens from {start} to {end}.</think>")
        lines.append(f'<answer>{{"start_time": "{start}", "end_time": "{end}"}}</answer>')
    for letter, subject, action in zip("ABCDEFG", subjects, actions, strict=False):
        lines.append(f"({letter}) {subject} {action} <answer>{letter}</answer>")
        lines.append(f"The answer is ({letter}).")
    for x in range(0, 90, 9):
        box = [x / 100, (x + 5) / 100, (x + 10) / 100, (x + 15) / 100]
        lines.append(f"<answer>[{box}, {box}]</answer>")
    return lines + list(extra)


def build_tokenizer(
    corpus: Sequence[str], shape: TinyQwenShape, pre_tokenizer: Any = None
) -> TokenizersBackend:
    """Train a byte-level BPE on `corpus`, then append Qwen2.5-VL's added tokens after it.

    `pre_tokenizer`: the one the family's tokenizer class imposes on load (None: digits split one
    by one, then GPT-2's byte-level regex)."""
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizer or pre_tokenizers.Sequence(
        [
            # One token per digit, as Qwen does: numbers in answers are read digit by digit.
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=shape.bpe_vocab_size,
        min_frequency=2,
        # Every byte gets a symbol even if the corpus lacks it, so any text stays encodable.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    bpe.add_tokens([AddedToken(t, special=False, normalized=False) for t in PLAIN_ADDED_TOKENS])
    return TokenizersBackend(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=dict(NAMED_TOKENS),
        chat_template=CHAT_TEMPLATE,
        model_max_length=shape.max_positions,
    )


def build_tiny_model(
    out_dir: str | Path,
    seed: int = 0,
    *,
    init_std: float = INIT_STD,
    shape: TinyQwenShape | None = None,
    extra_corpus: Sequence[str] = (),
    family: str = "qwen2_5_vl",
) -> Path:
    """Write a tiny random model of `family` (weights, config, tokenizer, processor) to `out_dir`.

    The same arguments give byte-identical weights and tokenizer. `init_std` is the standard
    deviation of the normal initialisation: small enough that a fresh model's logits are finite
    and near uniform. The caller's torch RNG state is left as it was. Returns `out_dir`.
    """
    shape = shape or TinyQwenShape()
    out = Path(out_dir)
    model_family = family_named(family)
    recipe = model_family.tiny
    pre_tokenizer = recipe.pre_tokenizer() if recipe.pre_tokenizer is not None else None
    tokenizer = build_tokenizer(tiny_corpus(extra_corpus), shape, pre_tokenizer)
    token_ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = recipe.config(token_ids, len(tokenizer), shape, init_std)
    model_class = getattr(transformers, model_family.model_class)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config).to(torch.float32).eval()
        if recipe.reinit is not None:
            recipe.reinit(model)
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        # Stop on either end marker, as Qwen's instruct models do.
        eos_token_id=[config.text_config.eos_token_id, config.text_config.bos_token_id],
        pad_token_id=config.text_config.pad_token_id,
    )
    model.save_pretrained(out)
    recipe.processor(tokenizer, shape, CHAT_TEMPLATE).save_pretrained(out)
    return out
