"""End-to-end GRPO throughput: vidrl against TRL's GRPOTrainer, and how vidrl's step time grows.

    .venv/bin/pip install --no-deps -r requirements/bench.txt   # TRL, once
    .venv/bin/python bench/e2e.py [--out e2e.json] [--skip-scaling] ...

Prints markdown tables (and writes them as JSON to --out):

1. Comparison, text-only (TRL takes no video), two shapes: (a) the tiny demo model, 4 short prompts
   x 8 samples x 32 tokens, where fixed costs dominate; (b) the shape of real video RL: prompts of
   about 1,000 tokens standing in for visual tokens, 8 samples of 128 tokens, a ~19M-parameter
   model of the same architecture. vidrl runs its own pieces, as its driver wires them
   (`VidrlSteps` in bench/e2e_vidrl.py): the rollout pool (one vLLM engine in a Ray actor), the
   reward pool, advantages, the FSDP2 learner group, the weight push. TRL runs GRPOTrainer
   (bench/e2e_trl.py). Same model folder, same prompt tokens, samples, response length (forced:
   see `never_stop`), temperature, learning rate, weight decay, clipping, KL coefficient,
   token-mean loss, the same compute dtype (`--dtype`: fp32 by default, or bf16 compute over
   fp32 master weights on both sides), no gradient checkpointing, TRL without vLLM, and the same
   digit-counting reward, which costs nothing. The two take their steps in turn (one vidrl step
   runs after each TRL step, outside TRL's clock), so both see the same load on the shared cores.
2. Scaling of vidrl's step with samples per prompt (4, 8, 16) and frames per video (4, 8, 16), on
   the real video pipeline: `vidrl.cluster.job.train` with examples/synthetic.yaml (no SFT warm
   start, max_staleness 0) on freshly synthesized videos and the tiny model; time/step read from
   metrics.jsonl, the first step left out.

Where this departs from a full vidrl run: see bench/e2e_vidrl.py. Both systems use each core
once: TRL's process runs 2 torch threads; vidrl's engine and learner ranks take turns.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from e2e_vidrl import VidrlLayout, VidrlSteps, digit_score, make_prompts, never_stop

from vidrl.cluster.build import ray_session
from vidrl.cluster.config import load_run_config
from vidrl.data.tiny import TinyQwenShape, build_tiny_model

BENCH_DIR = Path(__file__).resolve().parent
EXAMPLE = BENCH_DIR.parent / "examples" / "synthetic.yaml"
# ~19M parameters (bench/prefix.py's model): text 512 wide, 6 layers; the tiny vision tower.
MODEL_B = TinyQwenShape(
    text_hidden_size=512, text_layers=6, text_heads=8, text_kv_heads=2, text_intermediate_size=1536
)


# ---------------------------------------------------------------- 1. the comparison


@dataclass(frozen=True, slots=True)
class Shape:
    """One comparison: the model, the prompts and both systems' settings."""

    name: str
    model: TinyQwenShape
    user_tokens: int
    """Tokens of each prompt's user turn (the chat template adds ~30)."""
    recipe: Any  # e2e_trl.Recipe
    layouts: dict[str, VidrlLayout]
    """vidrl's variants, each stepped after every TRL step (the same load on the cores)."""
    trl_microbatches: dict[str, int]
    """TRL's settings: name -> completions per forward/backward (the rest by accumulation)."""


def shapes(args: argparse.Namespace) -> list[Shape]:
    from e2e_trl import Recipe

    common = {"lr": args.lr, "kl_coef": args.kl_coef, "samples": 8, "warmup": args.warmup}
    common["dtype"] = args.dtype
    full = VidrlLayout(learner_ranks=2, rollout_cpus=2, microbatch_tokens=4096)
    return [
        Shape(
            "a",
            TinyQwenShape(),
            12,
            Recipe(prompts=4, response_tokens=32, trl_microbatch=32, steps=args.steps_a, **common),
            {"vidrl": VidrlLayout(learner_ranks=2, rollout_cpus=2, microbatch_tokens=8192)},
            # TRL's fastest setting at this size: all 32 completions in one forward/backward.
            {"default": 32},
        ),
        Shape(
            "b",
            MODEL_B,
            1000,
            Recipe(prompts=4, response_tokens=128, trl_microbatch=32, steps=args.steps_b, **common),
            {"vidrl": full, "vidrl LoRA r=16": VidrlLayout(2, 2, 4096, lora_rank=16)},
            # TRL's default (all 32 completions in one pass) and its best here: micro-batches of
            # 4 completions with 8 accumulation steps (38 s against 72 s, docs/cpu-stack.md).
            {"default": 32, "best": 4},
        ),
    ]


def compare(shape: Shape, setting: str, folder: Path) -> dict[str, Any]:
    """TRL at one setting against every vidrl variant on one shape, each vidrl variant stepping
    after each TRL step; per-step records of each."""
    from dataclasses import replace

    from e2e_trl import run_trl

    model_dir = build_tiny_model(folder / f"model_{shape.name}", seed=0, shape=shape.model)
    never_stop(model_dir)
    texts = make_prompts(model_dir, shape.recipe.prompts, shape.user_tokens)
    recipe = replace(shape.recipe, trl_microbatch=shape.trl_microbatches[setting])
    variants = {name: VidrlSteps(model_dir, texts, recipe, layout) for name, layout in shape.layouts.items()}
    vidrl_steps: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    loads: list[float] = []

    def vidrl_step() -> None:
        for name, steps in variants.items():
            vidrl_steps[name].append(steps.step())
        loads.append(os.getloadavg()[0])
        times = ", ".join(f"{n} {s[-1]['seconds']:.2f} s" for n, s in vidrl_steps.items())
        line = f"shape {shape.name} ({setting}) step {len(loads)}: TRL {trl_steps[-1].seconds:.2f} s, {times}"
        print(f"{line}, load {loads[-1]:.1f}", flush=True)

    trl_steps: list[Any] = []
    try:
        run_trl(model_dir, texts, recipe, digit_score, vidrl_step, folder / f"trl_{setting}", trl_steps)
    finally:
        for steps in variants.values():
            steps.shutdown()
    prompt_tokens = statistics.fmean(len(ids) for ids in tokenizer_ids(model_dir, texts))
    return {
        "shape": shape,
        "setting": setting,
        "recipe": recipe,
        "parameters": count_parameters(model_dir),
        "prompt_tokens": prompt_tokens,
        "trl": trl_steps,
        "vidrl": vidrl_steps,
        "loads": loads,
    }


def tokenizer_ids(model_dir: Path, texts: list[str]) -> list[list[int]]:
    """The prompts' token ids as TRL sees them (vidrl's engine reports its own)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)(texts)["input_ids"]


def count_parameters(model_dir: Path) -> int:
    from safetensors.numpy import load_file

    return sum(array.size for array in load_file(model_dir / "model.safetensors").values())


def comparison_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row for TRL and one per vidrl variant: medians over the measured steps (a busy
    neighbour on the shared cores inflates single steps several-fold; the median keeps the
    typical step)."""
    shape, recipe = result["shape"], result["recipe"]
    skip = recipe.warmup
    completions = recipe.prompts * recipe.samples
    trl_seconds = statistics.median(r.seconds for r in result["trl"][skip:])
    trl_length = statistics.fmean(r.logs.get("completions/mean_length", 0.0) for r in result["trl"])
    common = {
        "shape": shape.name,
        "parameters": result["parameters"],
        "completions_per_step": completions,
        "dtype": recipe.dtype,
        "load_average": statistics.fmean(result["loads"][skip:]),
    }
    micro = recipe.trl_microbatch
    rows = [
        common
        | {
            "system": f"TRL GRPOTrainer ({result['setting']}: {micro} x {completions // micro})",
            "prompt_tokens": result["prompt_tokens"],
            "response_tokens": trl_length,
            "step_seconds": trl_seconds,
            "all_step_seconds": [r.seconds for r in result["trl"]],
            "completions_per_second": completions / trl_seconds,
            "speedup": 1.0,
        }
    ]
    for name, steps in result["vidrl"].items():
        seconds = statistics.median(m["seconds"] for m in steps[skip:])
        phases = {
            k: statistics.median(m[k] for m in steps[skip:])
            for k in ("rollout_seconds", "reward_seconds", "learn_seconds", "sync_seconds", "push_bytes")
        }
        rows.append(
            common
            | {
                "system": name,
                "prompt_tokens": statistics.fmean(m["prompt_tokens"] for m in steps),
                "response_tokens": statistics.fmean(m["mean_length"] for m in steps),
                "step_seconds": seconds,
                "all_step_seconds": [m["seconds"] for m in steps],
                "completions_per_second": completions / seconds,
                "speedup": trl_seconds / seconds,
                **phases,
            }
        )
    return rows


# ---------------------------------------------------------------- 2. scaling of vidrl's step


SCALING = ((4, 8), (8, 8), (16, 8), (8, 4), (8, 16))
"""(samples per prompt, frames per video) of each run; (8, 8) is the reference."""


def scaling(folder: Path, steps: int) -> list[dict[str, Any]]:
    """The demo's configuration (no warm start, synchronous) at each point of SCALING; medians of
    the measured steps' phase times."""
    from vidrl.cluster.config import load_run_config
    from vidrl.cluster.job import train
    from vidrl.data.synth import synthesize

    data = synthesize(folder / "data", num_videos=16, seed=0)
    model = build_tiny_model(folder / "scaling_model")
    rows = []
    for samples, frames in SCALING:
        cfg = load_run_config(
            EXAMPLE,
            [
                f"model_path={model}",
                f"data.train_path={data.train_yaml}",
                "data.eval_path=null",
                f"output_dir={folder / 'runs'}",
                f"run_name=g{samples}_f{frames}",
                f"rollout.samples_per_prompt={samples}",
                f"video.max_frames={frames}",
                f"trainer.steps={steps + 1}",
                "trainer.sft_steps=0",
                "trainer.max_staleness=0",
                "trainer.progress_bar=false",
                "trainer.tensorboard=false",
                "trainer.checkpoint_every_steps=0",
            ],
        )
        train(cfg)
        lines = (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
        measured = [json.loads(line) for line in lines][1:]  # the first step pays for warm-up
        row: dict[str, Any] = {"samples_per_prompt": samples, "frames_per_video": frames}
        for key in ("time/step", "time/rollout", "time/reward", "time/learn", "time/sync"):
            row[key.removeprefix("time/") + "_seconds"] = statistics.median(m.get(key, 0.0) for m in measured)
        row["prompt_tokens"] = statistics.fmean(
            m["rollout/prompt_tokens"] / max(m["rollout/prompts"], 1) for m in measured
        )
        row["load_average"] = os.getloadavg()[0]
        rows.append(row)
    reference = next(r["step_seconds"] for r in rows if r["samples_per_prompt"] == r["frames_per_video"] == 8)
    for row in rows:
        row["vs_reference"] = row["step_seconds"] / reference
    return rows


# ---------------------------------------------------------------- tables and main


def markdown(header: list[str], rows: list[list[str]], text_columns: int) -> str:
    rule = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    return "\n".join("| " + " | ".join(cells) + " |" for cells in (header, rule, *rows))


def comparison_table(rows: list[dict[str, Any]]) -> str:
    header = ["shape", "system", "params", "prompt tok", "response tok", "completions/step"]
    header += ["step s", "completions/s", "vs TRL", "load avg"]
    cells = [
        [
            r["shape"],
            r["system"],
            f"{r['parameters'] / 1e6:.1f}M",
            f"{r['prompt_tokens']:.0f}",
            f"{r['response_tokens']:.0f}",
            str(r["completions_per_step"]),
            f"{r['step_seconds']:.3f}",
            f"{r['completions_per_second']:.1f}",
            f"{r['speedup']:.2f}x",
            f"{r['load_average']:.1f}",
        ]
        for r in rows
    ]
    return markdown(header, cells, text_columns=2)


def phase_table(rows: list[dict[str, Any]]) -> str:
    header = ["shape", "variant", "rollout s", "reward s", "learn s", "weight push s", "push MB", "step s"]
    phases = ("rollout_seconds", "reward_seconds", "learn_seconds", "sync_seconds")
    cells = [
        [
            r["shape"],
            r["system"],
            *(f"{r[k]:.3f}" for k in phases),
            f"{r['push_bytes'] / 1e6:.2f}",
            f"{r['step_seconds']:.3f}",
        ]
        for r in rows
        if not r["system"].startswith("TRL")
    ]
    return markdown(header, cells, text_columns=2)


def scaling_table(rows: list[dict[str, Any]]) -> str:
    header = ["samples/prompt", "frames/video", "prompt tok", "step s", "rollout s", "learn s"]
    header += ["weight push s", "vs G=8, 8 frames", "load avg"]
    cells = [
        [
            str(r["samples_per_prompt"]),
            str(r["frames_per_video"]),
            f"{r['prompt_tokens']:.0f}",
            *(f"{r[k]:.2f}" for k in ("step_seconds", "rollout_seconds", "learn_seconds", "sync_seconds")),
            f"{r['vs_reference']:.2f}x",
            f"{r['load_average']:.1f}",
        ]
        for r in rows
    ]
    return markdown(header, cells, text_columns=0)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--out", type=Path, default=None, help="write the tables' rows as JSON here")
    add("--shapes", default="a,b", help="comparison shapes to run (a, b), e.g. a")
    add("--warmup", type=int, default=1, help="comparison steps left out of the means")
    add("--steps-a", type=int, default=8, help="measured steps of shape (a)")
    add("--steps-b", type=int, default=3, help="measured steps of shape (b)")
    add("--scaling-steps", type=int, default=3, help="measured steps per scaling run")
    add("--lr", type=float, default=1e-6, help="learning rate of both systems")
    add("--kl-coef", type=float, default=1e-2, help="KL coefficient of both systems")
    add("--skip-scaling", action="store_true", help="leave out the scaling runs")
    add(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="compute dtype of both systems in the comparison (bfloat16: float32 masters, bf16 compute; "
        "worth it only on a CPU with bf16 hardware, e.g. AMX)",
    )
    add(
        "--trl-settings",
        default="default,best",
        help="TRL settings to run (shape a has only default); TRL's default one-pass step at shape b "
        "held 11 GB beside vidrl's two variants here, more than a 23 GB machine has with them",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        wanted = args.shapes.split(",")
        results = []
        if wanted != [""]:
            # vidrl's local cluster (loopback only); its logical CPUs are bookkeeping here: the
            # engine, the ranks and TRL take turns on the cores.
            with ray_session(load_run_config(None, ["cluster.local_num_cpus=8"])):
                results = [
                    compare(s, setting, folder)
                    for s in shapes(args)
                    if s.name in wanted
                    for setting in s.trl_microbatches
                    if setting in args.trl_settings.split(",")
                ]
        rows = [row for result in results for row in comparison_rows(result)]
        report["comparison"] = rows
        report["settings"] = [asdict(r["recipe"]) | {"shape": r["shape"].name} for r in results]
        if rows:
            print("\n### End to end, text-only: vidrl against TRL's GRPOTrainer\n")
            print(comparison_table(rows))
            print("\n### vidrl's step by phase (medians of the measured steps)\n")
            print(phase_table(rows))
        if not args.skip_scaling:
            report["scaling"] = scaling(folder, args.scaling_steps)
            print("\n### vidrl's step time against samples per prompt and frames per video\n")
            print(scaling_table(report["scaling"]))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
