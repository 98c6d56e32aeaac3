"""Memory of the learner at a size where it shows, on CPU: loading, the log-prob path, export.

    .venv/bin/python bench/memory.py [--out memory.json] [--ranks 1 2]

A random Qwen2.5-VL of about 0.5B parameters with the real vocabulary (151,936 rows; the text
model is Qwen2-0.5B's shape, tied embeddings; the tiny vision tower), one GRPO step of one group
of 8 responses x 512 tokens on a video prompt of about 1,024 tokens, KL on (a reference model),
activation checkpointing on, float32 masters with bf16 compute where the CPU has bf16 hardware
(AMX or AVX-512 BF16; float32 otherwise: emulated bf16 is slower), weights exported for a bf16
engine.
Host memory is each process's peak resident set (VmHWM, reset between phases: vidrl.learner.memory).

1. The log-prob head alone, in this process: the textbook path (logits [N, V], a float32
   log_softmax, exp for the entropy, autograd keeping them) against vidrl.learner.logprobs
   (chunks of 256 tokens), forward and backward of log-prob + entropy over N = 4,096 tokens.
2. The learner (real LearnerGroup ranks in Ray, 1 and 2 of them): per rank, resident at start,
   peak after loading the policy, after the reference, after the optimizer state; the step's peak;
   the export's peak and bytes. Against the naive bounds of the code before meta-device loading:
   a full float32 model per rank for the policy and again for the reference.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_utils import host_malloc_settings

from vidrl.data.tiny import TinyQwenShape, build_tiny_model
from vidrl.learner.config import HostMallocSettings
from vidrl.learner.memory import PeakMemory

GB = 1e9
RESPONSES, RESPONSE_TOKENS, FRAMES = 8, 512, 30  # 30 frames of 224 x 224: 15 x 64 = 960 visual tokens
SHAPE = TinyQwenShape(
    text_hidden_size=896,
    text_layers=24,
    text_heads=14,
    text_kv_heads=2,
    text_intermediate_size=4864,
    vocab_size=151_936,
    tie_word_embeddings=True,
    max_positions=32_768,
)


# ---------------------------------------------------------------- 1. the head


def head_memory(tokens: int, width: int, vocab: int) -> dict[str, float]:
    """Peak extra host bytes of forward + backward of log-prob and entropy, both paths."""
    from vidrl.learner.logprobs import head_logprobs

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, width, generator=gen, requires_grad=True)
    weight = (0.02 * torch.randn(vocab, width, generator=gen)).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), generator=gen)

    def textbook() -> None:
        log_probs = torch.log_softmax((hidden @ weight.T).float(), dim=-1)  # [N, V]
        logp = log_probs.gather(-1, targets[:, None])[:, 0]
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        (logp.sum() + entropy.sum()).backward()

    def chunked() -> None:
        logp, entropy = head_logprobs(hidden, weight, None, targets, with_entropy=True)
        (logp.sum() + entropy.sum()).backward()

    out = {"one_float32_NxV_bytes": float(tokens * vocab * 4)}
    for name, run in (("textbook", textbook), ("chunked", chunked)):
        hidden.grad = weight.grad = None
        memory = PeakMemory()
        memory.reset()
        before = memory.host()
        run()
        out[f"{name}_extra_bytes"] = float(memory.host() - before)
    return out


# ---------------------------------------------------------------- 2. the learner


def video_group(model_dir: Path) -> Any:
    """One group: a real video prompt through the model's processor, 8 random 512-token responses."""
    from transformers import AutoProcessor

    from vidrl.learner.types import TrainGroup, VisionInputs

    processor = AutoProcessor.from_pretrained(model_dir)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (FRAMES, 224, 224, 3), dtype=np.uint8)
    messages = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "When does it happen?"}]}
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    out = processor(
        text=[text],
        videos=[frames],
        return_tensors="np",
        videos_kwargs={"do_sample_frames": False, "fps": 2.0},
    )
    vision = VisionInputs(
        pixel_values_videos=out["pixel_values_videos"].astype(np.float32),
        video_grid_thw=out["video_grid_thw"].astype(np.int64),
        second_per_grid_ts=np.asarray(out["second_per_grid_ts"], dtype=np.float64),
    )
    # Ordinary tokens only: a sampled video pad would be read as a visual token (the engine bans them).
    responses = tuple(rng.integers(10, 300, RESPONSE_TOKENS).astype(np.int64) for _ in range(RESPONSES))
    return TrainGroup(
        prompt_ids=out["input_ids"][0].astype(np.int64),
        responses=responses,
        advantages=rng.normal(size=RESPONSES).astype(np.float32),
        old_logprobs=tuple(np.full(RESPONSE_TOKENS, -5.0, dtype=np.float32) for _ in range(RESPONSES)),
        vision=vision,
    )


def fast_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (on AVX2-only CPUs bf16 matmuls were 5x slower
    than float32 here)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def learner_memory(
    model_dir: Path, group: Any, ranks: int, param_dtype: str, host_malloc: HostMallocSettings
) -> dict[str, Any]:
    import ray

    from vidrl.learner.config import LearnerConfig
    from vidrl.learner.group import LearnerGroup
    from vidrl.learner.loss_config import LossConfig

    cfg = LearnerConfig(
        num_ranks=ranks,
        cpus_per_rank=2 / ranks,
        param_dtype=param_dtype,
        gradient_checkpointing=True,
        max_tokens_per_microbatch=16_384,
        loss=LossConfig(kl_coef=1e-2),
        host_malloc=host_malloc,
    )
    learner = LearnerGroup(str(model_dir), cfg, seed=0, export_dtype="bfloat16")
    try:
        step = learner.train_step([group]).metrics
        refs = learner.export_weights(1)
        export_bytes = sum(bucket.nbytes for bucket in ray.get(refs))
        export_peak = max(rank.get("peak_host_bytes", 0.0) for rank in learner.peak_memory())
        del refs
        return {
            "ranks": ranks,
            "param_dtype": param_dtype,
            "build": learner.build_memory,
            "step_peak_host_bytes": step.get("peak_host_bytes", 0.0),
            "step_seconds": step["step_seconds"],
            "export_peak_host_bytes": export_peak,
            "export_bytes": float(export_bytes),
        }
    finally:
        learner.shutdown()


# ---------------------------------------------------------------- tables


def print_tables(
    head: dict[str, float], learners: list[dict[str, Any]], parameters: int, prompt: int
) -> None:
    if head:
        title = "Log-prob head, N = 4,096 tokens x V = 151,936 (extra peak host memory, forward + backward)"
        print(f"\n## {title}\n")
        textbook, chunked = head["textbook_extra_bytes"], head["chunked_extra_bytes"]
        print("| path | extra peak | vs textbook |\n| --- | ---: | ---: |")
        print(f"| textbook [N, V] float32 | {textbook / GB:.2f} GB | 1.00 |")
        print(f"| vidrl chunked (256 tokens) | {chunked / GB:.2f} GB | {chunked / textbook:.3f} |")
        print(f"\none float32 [N, V] tensor: {head['one_float32_NxV_bytes'] / GB:.2f} GB")
    model_bytes = parameters * 4
    print(
        f"\n## Learner: {parameters / 1e6:.0f}M parameters ({model_bytes / GB:.2f} GB float32), "
        f"prompt {prompt} tokens + {RESPONSES} x {RESPONSE_TOKENS}, KL on, "
        f"{learners[0]['param_dtype']} compute\n"
    )
    print(
        "| ranks | start | after policy | after reference | after optimizer | step peak | export peak "
        "| naive after load | export bytes (params x 2) |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in learners:
        top = max(row["build"], key=lambda r: r["optimizer_host_bytes"])
        naive = top["start_host_bytes"] + 2 * model_bytes  # full fp32 policy + reference per rank

        def phase(name: str, top: dict[str, float] = top) -> str:  # peak / kept (anonymous)
            return f"{top[f'{name}_host_bytes'] / GB:.2f} / {top.get(f'{name}_anon_bytes', 0.0) / GB:.2f}"

        print(
            f"| {row['ranks']} | {phase('start')} | {phase('policy')} | {phase('reference')} "
            f"| {phase('optimizer')} | {row['step_peak_host_bytes'] / GB:.2f} "
            f"| {row['export_peak_host_bytes'] / GB:.2f} | {naive / GB:.2f} "
            f"| {row['export_bytes'] / GB:.3f} ({parameters * 2 / GB:.3f}) |"
        )
    print(
        "\nGB per rank, the fullest rank; phases as peak / kept (peak resident set since the build "
        "began / anonymous memory resident at the phase's end, without the checkpoint's file pages)."
    )
    for row in learners:
        top = max(row["build"], key=lambda r: r["optimizer_host_bytes"])
        if "policy_anon_bytes" in top:
            policy = top["policy_anon_bytes"] - top["start_anon_bytes"]
            share = model_bytes / row["ranks"]
            print(
                f"{row['ranks']} rank(s): the policy keeps {policy / GB:.2f} GB = "
                f"{policy / share:.2f} x (model bytes / ranks = {share / GB:.2f} GB); target <= 1.25"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--param-dtype", choices=["float32", "bfloat16"], default="bfloat16" if fast_bf16() else "float32"
    )
    parser.add_argument(
        "--host-malloc",
        type=host_malloc_settings,
        default=HostMallocSettings(),
        help="e.g. mmap=131072,trim=step",
    )
    parser.add_argument("--skip-head", action="store_true", help="leave out the log-prob head's figures")
    args = parser.parse_args()
    torch.set_num_threads(2)
    head = {} if args.skip_head else head_memory(4096, SHAPE.text_hidden_size, SHAPE.vocab_size or 0)
    print(json.dumps({"head": head, "host_malloc": args.host_malloc.model_dump()}), flush=True)
    from vidrl.cluster.build import init_ray
    from vidrl.cluster.config import RunConfig

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model", seed=0, shape=SHAPE)
        group = video_group(model_dir)
        parameters = _parameters(model_dir)
        import ray

        init_ray(RunConfig())
        learners: list[dict[str, Any]] = []
        try:
            for ranks in args.ranks:  # each case is written as soon as it is measured
                learners.append(learner_memory(model_dir, group, ranks, args.param_dtype, args.host_malloc))
                print(json.dumps(learners[-1]), flush=True)
                if args.out:
                    report = {"head": head, "learners": learners, "parameters": parameters}
                    args.out.write_text(json.dumps(report, indent=2))
        finally:
            ray.shutdown()
    print_tables(head, learners, parameters, len(group.prompt_ids))


def _parameters(model_dir: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as handle:
        return sum(int(np.prod(handle.get_slice(k).get_shape())) for k in handle.keys())  # noqa: SIM118


if __name__ == "__main__":
    main()
