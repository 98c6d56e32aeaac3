"""The tiny Qwen2.5-VL folder: it loads offline in transformers and in vLLM, and both agree.

The vLLM test runs this file as a script in a child process (the `__main__` block at the end):
vLLM's in-process engine (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) binds threads, seeds the global
RNGs and sets up a process group, none of which should leak into the pytest process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from vidrl.data.tiny import (
    PLAIN_ADDED_TOKENS,
    SPECIAL_TOKENS,
    TinyQwenShape,
    build_tiny_model,
    build_tokenizer,
    tiny_corpus,
)

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",
}
QUESTION = "When does the red square move left?"
# 4 frames at 2 fps (2 s of video); each frame 56x56 = 4x4 patches of 14 px.
VIDEO_METADATA = {
    "fps": 2.0,
    "duration": 2.0,
    "total_num_frames": 4,
    "frames_indices": [0, 1, 2, 3],
    "do_sample_frames": False,
}
VIDEO_SIZE = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
NEW_TOKENS = 6
Batch = dict[str, torch.Tensor]


def make_video() -> np.ndarray:
    """The clip every test feeds the model: [T=4, H=56, W=56, 3] uint8, fixed by seed."""
    return np.random.default_rng(0).integers(0, 256, size=(4, 56, 56, 3), dtype=np.uint8)


def chat(video: bool) -> list[dict[str, Any]]:
    content: list[dict[str, str]] = [{"type": "video"}] if video else []
    return [{"role": "user", "content": [*content, {"type": "text", "text": QUESTION}]}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="module")
def processor(model_dir: Path) -> Any:
    return AutoProcessor.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def model(model_dir: Path) -> Any:
    return AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()


def video_inputs(processor: Any) -> Batch:
    prompt = processor.apply_chat_template(chat(video=True), add_generation_prompt=True)
    metadata = {k: v for k, v in VIDEO_METADATA.items() if k != "do_sample_frames"}
    return processor(
        text=[prompt],
        videos=[make_video()],
        video_metadata=[metadata],
        size=VIDEO_SIZE,
        return_tensors="pt",
    )


def test_config_token_ids_come_from_the_tokenizer(model_dir: Path) -> None:
    config = AutoConfig.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    first = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    # The added tokens follow the BPE vocabulary in Qwen's order, so each id is `first` plus the
    # token's place in SPECIAL_TOKENS: im_start +1, im_end +2, vision_start +9, vision_end +10,
    # image_pad +12, video_pad +13; then the 8 plain added tokens: len = first + 14 + 8.
    special_ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert special_ids == list(range(first, first + 14))
    assert len(tokenizer) == first + 14 + 8 == first + len(SPECIAL_TOKENS + PLAIN_ADDED_TOKENS)
    assert 400 <= len(tokenizer) <= 1000
    assert config.text_config.vocab_size == len(tokenizer)
    assert config.vision_start_token_id == first + 9
    assert config.vision_end_token_id == first + 10
    assert config.image_token_id == first + 12
    assert config.video_token_id == first + 13
    assert config.text_config.bos_token_id == config.text_config.pad_token_id == first
    assert config.text_config.eos_token_id == first + 2 == tokenizer.eos_token_id
    assert tokenizer.pad_token_id == first


def test_shape_matches_the_brief(model_dir: Path) -> None:
    config = AutoConfig.from_pretrained(model_dir)
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_hidden_layers) == (128, 2)
    assert (text.num_attention_heads, text.num_key_value_heads) == (4, 2)
    # head size 128 / 4 = 32 -> 16 rotary pairs, split time:height:width as 4:6:6.
    assert text.rope_parameters["mrope_section"] == [4, 6, 6]
    assert (vision.depth, vision.patch_size, vision.spatial_merge_size) == (2, 14, 2)
    assert vision.temporal_patch_size == 2
    assert vision.out_hidden_size == text.hidden_size


def test_reloaded_tokenizer_is_the_one_built(model_dir: Path) -> None:
    reloaded = AutoTokenizer.from_pretrained(model_dir)
    built = build_tokenizer(tiny_corpus(), TinyQwenShape())
    # A folder whose config says qwen2_5_vl would otherwise load as Qwen2Tokenizer.
    assert type(reloaded).__name__ == "TokenizersBackend"
    assert reloaded.encode("12.5") == built.encode("12.5")
    # One token per digit, as in Qwen: "1", "2", ".", "5".
    assert reloaded.convert_ids_to_tokens(reloaded.encode("12.5")) == ["1", "2", ".", "5"]
    answer = '<think>go</think> <answer>{"start_time": "12.5", "end_time": "30.0"}</answer>'
    assert reloaded.encode(answer) == built.encode(answer)
    assert reloaded.decode(reloaded.encode(answer)) == answer
    assert reloaded.get_vocab() == built.get_vocab()


def test_special_tokens_stay_whole_and_decode_skips_them(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = "<|vision_start|><|video_pad|><|vision_end|>hi<|im_end|>"
    ids = tokenizer.encode(text)
    placeholder = ["<|vision_start|>", "<|video_pad|>", "<|vision_end|>"]
    assert ids[:3] == tokenizer.convert_tokens_to_ids(placeholder)
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids, skip_special_tokens=True) == "hi"


def test_chat_template_renders_video_as_qwen_does(processor: Any) -> None:
    prompt = processor.apply_chat_template(chat(video=True), add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>"
        f"{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    )
    with_system = [{"role": "system", "content": "Think first."}, *chat(video=False)]
    assert processor.apply_chat_template(with_system) == (
        f"<|im_start|>system\nThink first.<|im_end|>\n<|im_start|>user\n{QUESTION}<|im_end|>\n"
    )


def test_forward_on_a_video_gives_finite_logits(processor: Any, model: Any) -> None:
    batch = video_inputs(processor)
    video_id = model.config.video_token_id
    # 56x56 frames stay 56x56 (a multiple of 28 within the pixel budget): 4x4 patches; 4 frames /
    # temporal patch 2 = 2 -> grid (2, 4, 4) = 32 patches of 3*2*14*14 = 1176 values; merging 2x2
    # patches leaves 32 / 4 = 8 video tokens in the prompt.
    assert batch["video_grid_thw"].tolist() == [[2, 4, 4]]
    assert tuple(batch["pixel_values_videos"].shape) == (32, 1176)
    is_video = batch["input_ids"] == video_id
    assert int(is_video.sum()) == 8
    # transformers 5 needs mm_token_type_ids (0 text, 2 video); the processor provides it.
    assert torch.equal(batch["mm_token_type_ids"], is_video.long() * 2)
    with torch.no_grad():
        logits = model(**batch).logits
    vocab = model.config.text_config.vocab_size
    assert tuple(logits.shape) == (1, batch["input_ids"].shape[1], vocab)
    assert torch.isfinite(logits).all()


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: Path) -> None:
    first = build_tiny_model(tmp_path / "a", seed=3)
    again = build_tiny_model(tmp_path / "b", seed=3)
    other = build_tiny_model(tmp_path / "c", seed=4)
    weights = [(d / "model.safetensors").read_bytes() for d in (first, again, other)]
    assert weights[0] == weights[1]
    assert weights[0] != weights[2]
    assert (first / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()


def test_init_std_sets_the_weight_scale(tmp_path: Path) -> None:
    rng_before = torch.random.get_rng_state()
    folder = build_tiny_model(tmp_path / "wide", seed=0, init_std=0.05)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's RNG is untouched
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    embedding = model.get_input_embeddings().weight.detach()
    # ~500 x 128 = 64,000 draws from N(0, 0.05): the sample std itself spreads by about
    # 0.05 / sqrt(2 * 64,000) = 0.00014, i.e. 0.3%, so 2% is a wide margin.
    assert float(embedding.std()) == pytest.approx(0.05, rel=0.02)


def qwen_positions(model: Any, inputs: Batch) -> torch.Tensor:
    """Multimodal rotary positions [3, 1, L] by Qwen2.5-VL's own rule, which vLLM follows.

    Text after a video continues from the video's largest position + 1. transformers 5.19's
    `get_rope_index` continues it from the video's start + max(h, w) / merge instead, ignoring
    the time axis, so that text reuses positions of the video's later frames.
    """
    keys = ("input_ids", "attention_mask", "mm_token_type_ids", "video_grid_thw")
    positions, _ = model.model.get_rope_index(
        **{k: inputs[k] for k in keys if k in inputs},
        second_per_grid_ts=inputs.get("second_per_grid_ts"),
    )
    is_video = inputs["input_ids"][0] == model.config.video_token_id
    if is_video.any():
        after = int(is_video.nonzero().max()) + 1
        shift = positions[:, 0, is_video].max() + 1 - positions[0, 0, after]
        positions[:, 0, after:] += shift
    return positions


def test_text_after_a_video_follows_the_video(processor: Any, model: Any) -> None:
    batch = video_inputs(processor)
    is_video = batch["input_ids"][0] == model.config.video_token_id
    first, after = int(is_video.nonzero().min()), int(is_video.nonzero().max()) + 1
    ours = qwen_positions(model, batch)[:, 0]
    start = int(ours[0, first])
    # Merged grid (2, 2, 2); time step = tokens_per_second 2 x 1.0 s per grid = 2, so the video's
    # time positions are start + {0, 2} and its rows/columns start + {0, 1}: the largest is
    # start + 2, and the text after it starts at start + 3.
    assert sorted(set(ours[0, is_video].tolist())) == [start, start + 2]
    assert sorted(set(ours[1, is_video].tolist())) == [start, start + 1]
    assert ours[:, after].tolist() == [start + 3] * 3
    # transformers 5.19 puts that text at start + max(2, 2) = start + 2, on the video's second
    # time step. When this fails transformers has changed: qwen_positions may no longer be needed.
    theirs, _ = model.model.get_rope_index(
        batch["input_ids"],
        mm_token_type_ids=batch["mm_token_type_ids"],
        video_grid_thw=batch["video_grid_thw"],
        second_per_grid_ts=batch["second_per_grid_ts"],
        attention_mask=batch["attention_mask"],
    )
    assert theirs[:, 0, after].tolist() == [start + 2] * 3


def token_logprobs(model: Any, batch: Batch, new_ids: list[int]) -> list[float]:
    """Log-probabilities transformers gives `new_ids` when they follow the prompt in `batch`."""
    prompt_len = batch["input_ids"].shape[1]
    extra = torch.tensor([new_ids])
    inputs = dict(batch)
    inputs["input_ids"] = torch.cat([batch["input_ids"], extra], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if "mm_token_type_ids" in batch:
        inputs["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"], 0 * extra], dim=1)
    inputs["position_ids"] = qwen_positions(model, inputs)
    with torch.no_grad():
        logprobs = model(**inputs).logits.log_softmax(-1)  # [1, L + N, V]
    # The token at position p is predicted by the logits at position p - 1.
    positions = torch.arange(prompt_len - 1, prompt_len - 1 + len(new_ids))
    return logprobs[0, positions, torch.tensor(new_ids)].tolist()


@pytest.mark.vllm
def test_vllm_generates_what_transformers_scores(
    model_dir: Path, processor: Any, model: Any, tmp_path: Path
) -> None:
    prompts = {
        name: processor.apply_chat_template(chat(video=name == "video"), add_generation_prompt=True)
        for name in ("text", "video")
    }
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"model": str(model_dir), "prompts": prompts}))
    # The child runs this file as a script, so it needs the repository on its import path.
    repo_root = str(Path(__file__).resolve().parents[1])
    python_path = os.pathsep.join(p for p in (repo_root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": python_path}
    proc = subprocess.run(
        [sys.executable, __file__, str(request)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])

    text_batch = processor(text=[prompts["text"]], return_tensors="pt")
    for name, batch in (("text", text_batch), ("video", video_inputs(processor))):
        got = results[name]
        assert len(got["token_ids"]) == NEW_TOKENS
        # vLLM expanded the video placeholder to the same 8 tokens as the HF processor.
        assert got["prompt_token_ids"] == batch["input_ids"][0].tolist()
        expected = token_logprobs(model, batch, got["token_ids"])
        # Same fp32 weights, pixels and positions, different kernels: seen to agree to 5e-7.
        assert got["logprobs"] == pytest.approx(expected, abs=1e-4)


def run_vllm(request_path: str) -> dict[str, Any]:
    """Child-process side of the vLLM test: greedy tokens and their logprobs for each prompt."""
    from vllm import LLM, SamplingParams

    request = json.loads(Path(request_path).read_text())
    llm = LLM(
        model=request["model"],
        dtype="float32",
        max_model_len=1024,
        seed=0,
        enforce_eager=True,  # torch.compile would add about a minute of start-up on 2 cores
        limit_mm_per_prompt={"image": 0, "video": 1},
        mm_processor_kwargs={"size": VIDEO_SIZE},
    )
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, logprobs=0)
    inputs = [
        {"prompt": request["prompts"]["text"]},
        {
            "prompt": request["prompts"]["video"],
            "multi_modal_data": {"video": (make_video(), VIDEO_METADATA)},
        },
    ]
    results = {}
    for name, output in zip(("text", "video"), llm.generate(inputs, params), strict=True):
        completion = output.outputs[0]
        results[name] = {
            "prompt_token_ids": list(output.prompt_token_ids),
            "token_ids": list(completion.token_ids),
            "logprobs": [
                step[token].logprob
                for step, token in zip(completion.logprobs, completion.token_ids, strict=True)
            ],
        }
    return results


if __name__ == "__main__":
    print(json.dumps(run_vllm(sys.argv[1])))
