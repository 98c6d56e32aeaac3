"""`vidrl ...`: parse arguments, call library functions, print what was done.

Heavy packages (torch, transformers, vllm, ray) are imported inside the command that
needs them, so `vidrl score` and `vidrl metrics` start in well under a second.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("vidrl")

TINY_FAMILIES = ("qwen2_5_vl", "qwen3_vl", "qwen3_5")
"""`vidrl tiny-model --family` choices (vidrl.models.FAMILIES, spelled out so that argument
parsing imports neither torch nor transformers); the first is the default."""


def cmd_score(args: argparse.Namespace) -> int:
    from vidrl.rewards.score import main_score

    bad = main_score(args.file, args.preset, sys.stdout)
    if bad:
        log.warning("%d row(s) of %s could not be scored; see their 'error' field", bad, args.file)
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from vidrl.evaluation.report import main_metrics

    bad = main_metrics(args.file, args.parse, sys.stdout)
    if bad:
        log.warning("%d row(s) of %s were unusable; see 'errors' in the output", bad, args.file)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from vidrl.data.synth import synthesize

    result = synthesize(Path(args.out_dir), num_videos=args.num_videos, seed=args.seed)
    print(json.dumps(result.summary(), indent=2))
    return 0


def cmd_tiny_model(args: argparse.Namespace) -> int:
    if args.pretrain:
        return _pretrained_tiny_model(args)
    from vidrl.data.tiny import build_tiny_model

    path = build_tiny_model(Path(args.out_dir), seed=args.seed, family=args.family)
    print(f"tiny {args.family} written to {path}")
    return 0


def _pretrained_tiny_model(args: argparse.Namespace) -> int:
    from vidrl.cluster.pretrain import PretrainConfig, held_out_data, pretrain_tiny_model

    if args.family != TINY_FAMILIES[0]:
        raise SystemExit(f"--pretrain builds {TINY_FAMILIES[0]} only, not {args.family}")
    out = Path(args.out_dir)
    cfg = PretrainConfig(seed=args.seed, steps=args.steps)
    report = pretrain_tiny_model(out, cfg, held_out_data(out / "held_out_data", cfg))
    print(json.dumps(report, indent=2))
    print(f"pretrained tiny {args.family} written to {out}; its report: {out / 'perception_report.json'}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from vidrl.cluster.config import load_run_config
    from vidrl.data.readers import load_samples
    from vidrl.data.skips import SkipLog

    cfg = load_run_config(args.config, args.overrides)
    path = args.path or cfg.data.train_path
    if path is None:
        raise SystemExit("vidrl data: no data path (give one, or set data.train_path in the config)")
    skips = SkipLog(cfg.data.max_skipped_fraction)
    samples = load_samples(path, cfg.data, skips)
    per_task: dict[str, int] = {}
    for sample in samples:
        per_task[sample.task] = per_task.get(sample.task, 0) + 1
    summary = {
        "path": str(path),
        "samples": len(samples),
        "per_task": per_task,
        "skipped": skips.skipped,
        "first_skip_reasons": skips.reasons,
    }
    print(json.dumps(summary, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from vidrl.cluster.config import load_run_config
    from vidrl.cluster.job import train

    cfg = load_run_config(args.config, args.overrides)
    summary = train(cfg, resume_anyway=args.resume_anyway)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from vidrl.cluster.build import ray_session
    from vidrl.cluster.config import load_run_config
    from vidrl.cluster.sft import run_sft

    cfg = load_run_config(args.config, args.overrides)
    if cfg.trainer.sft_steps == 0:
        raise SystemExit("vidrl sft: trainer.sft_steps is 0; set it, e.g. trainer.sft_steps=50")
    with ray_session(cfg):
        path = run_sft(cfg, cfg.run_dir / "sft")
    print(f"SFT model written to {path}")
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from vidrl.cluster.config import load_run_config
    from vidrl.cluster.select_job import run_select

    cfg = load_run_config(args.config, args.overrides)
    out = Path(args.out) if args.out else cfg.run_dir / "selection"
    written = run_select(cfg, out, model_path=args.model)
    print(written.summary.read_text(encoding="utf-8"), end="")
    print(f"table: {written.stats}\nselected: {written.selected}\nhistogram: {written.histogram}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from vidrl.cluster.plots import plot_run

    for path in plot_run(args.run_dir):
        print(path)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vidrl.learner.lora import ADAPTER_CONFIG, export_merged

    source = Path(args.source)
    if not (source / ADAPTER_CONFIG).exists():
        found = sorted(source.glob("checkpoints/step_*/adapter"))
        if not found:
            print(f"vidrl export: {source} is neither an adapter folder nor a LoRA run with checkpoints")
            return 2
        source = found[-1]
    out = export_merged(source, Path(args.merge), args.base)
    print(f"merged {source} into {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from vidrl.evaluation.compare import compare_runs

    if args.compare:
        try:
            print(compare_runs(args.compare))
        except ValueError as err:  # a file that is not an evaluation summary
            raise SystemExit(f"vidrl eval: {err}") from None
        return 0
    from vidrl.cluster.config import load_run_config
    from vidrl.cluster.eval_job import VARIANTS, model_names, run_eval
    from vidrl.evaluation.compare import format_table

    if args.config is None:
        raise SystemExit("vidrl eval: give a run config (or --compare RUN_A RUN_B ...)")
    cfg = load_run_config(args.config, args.overrides)
    specs = args.model or ([cfg.model_path] if cfg.model_path else [])
    if not specs:
        raise SystemExit("vidrl eval: no model (give --model PATH or set model_path in the config)")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    if variants and not set(variants) <= set(VARIANTS):
        raise SystemExit(f"vidrl eval: --variants takes {', '.join(VARIANTS)}, got {args.variants}")
    try:
        models = model_names(specs)
    except ValueError as err:
        raise SystemExit(f"vidrl eval: {err}") from None
    out = Path(args.out) if args.out else cfg.run_dir / "eval"
    summaries = run_eval(cfg, models, out, args.data, variants, args.parser)
    print(format_table(summaries))
    print(f"predictions and summary.json under {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vidrl.demo import run_demo

    run_demo(Path(args.out), seed=args.seed, train=not args.no_train)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parse_choices = ["tags", "lmms", "free"]
    parse_help = (
        "prediction parser: tags (the <answer> format training scores), lmms (lmms-eval's "
        "charades_sta, exactly: for published tables), free (vidrl's free-text reader)"
    )
    parser = argparse.ArgumentParser(prog="vidrl", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("score", help="score responses in a JSONL file with a reward preset")
    p.add_argument("file", help="JSONL rows: task, response and the task's ground truth")
    p.add_argument("--preset", default=None, help="temporal_r1 | videochat_r1 | vidrl (default)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("metrics", help="mIoU, R1@0.3/0.5/0.7 and accuracy of predictions")
    p.add_argument("file", help="JSONL rows: prediction plus timestamps+duration or answer")
    p.add_argument("--parse", choices=parse_choices, default="tags", help=parse_help)
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("synth", help="write the synthetic video dataset (deterministic by seed)")
    p.add_argument("out_dir")
    p.add_argument("--num-videos", type=int, default=48, help="videos to synthesize")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("tiny-model", help="build a tiny random model of a family, with its tokenizer")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--family",
        choices=TINY_FAMILIES,
        default=TINY_FAMILIES[0],
        help="model family (the config's model_type); the run reads it from the checkpoint",
    )
    p.add_argument(
        "--pretrain",
        action="store_true",
        help="teach it to read its frames (perception questions on synthetic scenes; about 25 "
        "minutes on 2 cores) and measure that on held-out videos (perception_report.json)",
    )
    p.add_argument("--steps", type=int, default=3000, help="pretraining steps (with --pretrain)")
    p.set_defaults(func=cmd_tiny_model)

    p = sub.add_parser("data", help="read a dataset as training would; print counts and skips")
    p.add_argument("config", nargs="?", default=None, help="run config YAML (default: defaults)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.train_path=x.yaml")
    p.add_argument("--path", default=None, help="data file to read instead of data.train_path")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="GRPO training (resumes a run directory with checkpoints)")
    p.add_argument("config", help="run config YAML")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. learner.lr=1e-6")
    p.add_argument(
        "--resume-anyway",
        action="store_true",
        help="resume a run directory whose checkpoints were trained with another config, with the new "
        "values (recorded in its history.jsonl); without it such a start is refused",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sft", help="supervised fine-tuning on reference answers (trainer.sft_steps)")
    p.add_argument("config", help="run config YAML")
    p.add_argument("overrides", nargs="*", help="dotted overrides")
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("select", help="repeated inference, then keep the samples whose rewards vary")
    p.add_argument("config", help="run config YAML (selection.* sets K and the policy)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. selection.repeats=16")
    p.add_argument(
        "--model", default=None, help="model or LoRA adapter folder to sample from (default: model_path)"
    )
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/selection)")
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("export", help="merge a LoRA run's adapter into its base: a Hugging Face model folder")
    p.add_argument("source", help="a run directory (its latest checkpoint's adapter) or an adapter folder")
    p.add_argument("--merge", required=True, metavar="OUT", help="folder to write the merged model to")
    p.add_argument("--base", default=None, help="base model folder (default: the adapter config's)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("plot", help="PNGs of reward, length, KL/clip and phase times of a run")
    p.add_argument("run_dir", help="a run directory (holds metrics.jsonl)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("eval", help="greedy evaluation of a checkpoint; or --compare evaluations")
    p.add_argument("config", nargs="?", default=None, help="run config YAML (prompt, video, rollout)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, right after CONFIG")
    p.add_argument(
        "--model",
        action="append",
        metavar="[NAME=]PATH",
        help="Hugging Face model folder or LoRA adapter folder (default: model_path); repeat to "
        "evaluate several with one pool",
    )
    p.add_argument("--data", default=None, help="evaluation data (default: data.eval_path)")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/eval)")
    p.add_argument("--variants", default=None, help="think,no_think (default: the config's)")
    p.add_argument("--parser", choices=parse_choices, default="tags", help=parse_help)
    p.add_argument("--compare", nargs="+", default=None, metavar="RUN", help="eval folders to tabulate")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="the embedded default job on synthetic data and a tiny model")
    p.add_argument("--out", default="runs/demo", help="folder for everything the demo writes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-train", action="store_true", help="stop after data, model and reward scoring")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from vidrl.data.skips import DataError
    from vidrl.overrides import ConfigError

    try:
        return int(args.func(args))
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"vidrl {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
