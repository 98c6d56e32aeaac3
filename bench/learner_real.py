"""Section (c) of bench/learner.py: the learner at real size (Qwen2.5-VL-3B shapes, random weights,
bf16, activation checkpointing, 2048 visual tokens + 1024 response tokens per sample): tokens/s,
peak memory and MFU on a CUDA GPU, one rank without Ray, for each layout side by side (`plain`;
shared prefix with the dense 4D `mask`, the `two_pass` attention, `flex`); skipped on CPU. Run
through `bench/learner.py`.
"""

from __future__ import annotations

import argparse
import gc
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from bench_utils import Row, measure, print_table
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from vidrl.learner.config import LearnerConfig
from vidrl.learner.loss_config import LossConfig
from vidrl.learner.types import TrainGroup, VisionInputs

# fmt: off
# Dense bf16 tensor-core peaks (no sparsity) from NVIDIA's data sheets, by a substring of
# torch.cuda.get_device_name(); the first match wins, so the more specific names come first.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12),
    ("H800", 989e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L4", 121e12),
)
# Qwen2.5-VL-3B-Instruct's config.json. Its vision section sets only the widths and leaves the
# rest to the defaults of its transformers version, written out here: transformers 5's defaults
# are the 7B's (hidden 3584, tokens_per_second 4).
QWEN25_VL_3B_TEXT = {
    "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008,
    "num_hidden_layers": 36, "num_attention_heads": 16, "num_key_value_heads": 2,
    "max_position_embeddings": 128000, "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    "bos_token_id": 151643, "eos_token_id": 151645, "pad_token_id": 151643,
}
QWEN25_VL_3B_VISION = {
    "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
    "out_hidden_size": 2048, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
    "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
}
QWEN25_VL_3B_TOKENS = {
    "image_token_id": 151655, "video_token_id": 151656,
    "vision_start_token_id": 151652, "vision_end_token_id": 151653,
}
# fmt: on


def real_batch(config: Qwen2_5_VLConfig, args: argparse.Namespace) -> list[TrainGroup]:
    """Prompts of a 16-frame 448x448 video (a [8, 32, 32] patch grid = 2,048 merged tokens)
    between short random texts, each with G random responses of --real-response-tokens."""
    rng = np.random.default_rng(0)
    grid = np.array([[8, 32, 32]], dtype=np.int64)
    vision_cfg = config.vision_config
    patch_dim = 3 * vision_cfg.temporal_patch_size * vision_cfg.patch_size**2
    patches = int(grid.prod())
    groups = []
    for _ in range(args.real_prompts):
        text = rng.integers(1000, 100_000, 40).tolist()  # ordinary vocabulary, no special ids
        video = [config.video_token_id] * (patches // vision_cfg.spatial_merge_size**2)
        prompt = [*text[:20], config.vision_start_token_id, *video, config.vision_end_token_id]
        responses = rng.integers(1000, 100_000, (args.samples, args.real_response_tokens))
        vision = VisionInputs(
            pixel_values_videos=rng.standard_normal((patches, patch_dim), np.float32),
            video_grid_thw=grid,
            second_per_grid_ts=np.array([1.0]),
        )
        advantages = rng.standard_normal(args.samples).astype(np.float32)
        prompt_ids = np.asarray(prompt + text[20:], dtype=np.int64)
        groups.append(TrainGroup(prompt_ids, tuple(responses), advantages, vision=vision))
    return groups


def real_row(
    model_dir: Path,
    groups: Sequence[TrainGroup],
    args: argparse.Namespace,
    layout: str,
) -> Row:
    """The learner's rank in this process (world size 1), timed, then its memory freed."""
    import torch.distributed as dist

    cfg = LearnerConfig(
        num_ranks=1,
        gpus_per_rank=1.0 if torch.cuda.is_available() else 0.0,
        param_dtype="bfloat16",
        gradient_checkpointing=True,
        max_tokens_per_microbatch=args.real_microbatch_tokens,
        shared_prefix=layout != "plain",
        prefix_attention="two_pass" if layout == "plain" else layout,
        loss=LossConfig(kl_coef=args.kl_coef),
    )
    row = Row("LearnerWorker", "1", layout)
    try:
        time_worker(model_dir, groups, cfg, args, row)
    except torch.OutOfMemoryError:
        row.layout += " (out of memory)"
    finally:
        # The worker went with time_worker's frame: free what it held before the next layout.
        if dist.is_initialized():
            dist.destroy_process_group()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return row


def time_worker(
    model_dir: Path,
    groups: Sequence[TrainGroup],
    cfg: LearnerConfig,
    args: argparse.Namespace,
    row: Row,
) -> None:
    """Build a rank, plan the step as LearnerGroup does for one rank, and time its steps."""
    from vidrl.learner.batch import update_plans
    from vidrl.learner.process_group import Rendezvous
    from vidrl.learner.types import merge_rank_metrics
    from vidrl.learner.worker import LearnerWorker

    worker = LearnerWorker(0, 1, str(model_dir), cfg, seed=0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # A group of one in this process: it meets itself through a file (vidrl.learner.process_group).
    store = str(Path(tempfile.mkdtemp(prefix="vidrl-bench-")) / "store")
    worker.init_process_group(Rendezvous("127.0.0.1", port, store))
    worker.build()
    (plan,) = update_plans(groups, cfg, cfg.max_tokens_per_microbatch)  # one update on one rank

    def step() -> dict[str, float]:
        return merge_rank_metrics([worker.train_step([plan], 1, "grpo")])

    run = (row, step)
    measure([run], args.real_warmup)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    measure([run], args.real_steps)
    if torch.cuda.is_available():
        row.metrics[-1]["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30


def section_real(args: argparse.Namespace, folder: Path) -> None:
    config = Qwen2_5_VLConfig(
        text_config=QWEN25_VL_3B_TEXT,
        vision_config=QWEN25_VL_3B_VISION,
        tie_word_embeddings=True,
        **QWEN25_VL_3B_TOKENS,
    )
    with torch.device("meta"):  # sizes only, no memory
        parameters = sum(p.numel() for p in Qwen2_5_VLForConditionalGeneration(config).parameters())
    print(
        f"\n### (c) Real size: Qwen2.5-VL-3B shapes ({parameters / 1e9:.2f}B parameters), random "
        f"weights, bf16 compute, gradient checkpointing, {args.real_prompts} prompts x "
        f"{args.samples} samples of 2,048 visual + {args.real_response_tokens} response tokens, "
        f"kl_coef {args.kl_coef}\n"
    )
    if not torch.cuda.is_available():
        print("skipped: no CUDA GPU")
        return
    with torch.device("cuda"):
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(folder / "qwen25vl-3b")  # the learner loads a folder, as in training
    del model
    torch.cuda.empty_cache()
    groups = real_batch(config, args)
    rows = [real_row(folder / "qwen25vl-3b", groups, args, layout) for layout in args.real_layouts]
    print_real_table(rows, parameters, sum(g.cost(shared_prefix=False) for g in groups), args)


def print_real_table(
    rows: Sequence[Row], parameters: int, plain_tokens: int, args: argparse.Namespace
) -> None:
    name = torch.cuda.get_device_name()
    peak = next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None)
    print(f"{name}; MFU = 6 x parameters x tokens run/s / {peak or float('nan'):.3g} FLOP/s\n")
    table = []
    for row in rows:
        if len(row.metrics) <= args.real_warmup:
            table.append([row.layout, *["-"] * 6])
            continue
        seconds, tokens = row.mean("step_seconds", args.real_warmup), row.metrics[-1]["tokens"]
        mfu = f"{6 * parameters * tokens / seconds / peak:.1%}" if peak else "n/a"
        cells = [row.layout, f"{tokens:,.0f}", f"{seconds:.2f}", f"{tokens / seconds:,.0f}"]
        cells += [f"{plain_tokens / seconds:,.0f}", f"{row.metrics[-1]['peak_gib']:.1f}", mfu]
        table.append(cells)
    header = ["layout", "tokens run", "step s", "tokens run/s", "batch tokens/s", "peak GiB", "MFU"]
    print_table(header, table, text_columns=1)
