"""The TRL side of bench/e2e.py: TRL's GRPOTrainer set up as vidrl's step is, and a clock per step.

TRL is a benchmark-only dependency (requirements/bench.txt); it is imported inside the functions
here, so that loading this module costs nothing when TRL is absent. Settings that make TRL do the
work vidrl does (each named where it is set): fp32 on the CPU, no gradient checkpointing, no vLLM;
the same prompts (already chat-templated text, tokenised by TRL as it is), samples per prompt,
response length (every completion is forced to the full length), sampling temperature, learning
rate, weight decay, gradient clipping, KL coefficient (TRL's k3 estimator, as vidrl's), clip range
0.2 / 0.28, token-mean loss ("dapo"), group-normalised advantages, one update per generation.

TRL's micro-batch (`Recipe.trl_microbatch` completions per forward/backward, the rest by gradient
accumulation) is chosen per shape as TRL's fastest setting on this CPU (docs/cpu-stack.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Recipe:
    """What both systems are asked to do in one step, and how long to measure."""

    prompts: int
    """Prompts per step."""
    samples: int
    """Responses per prompt (G)."""
    response_tokens: int
    """Tokens of every response (generation never stops earlier)."""
    lr: float
    """AdamW learning rate."""
    kl_coef: float
    """Weight of the k3 KL term to the initial model (0: no reference model)."""
    trl_microbatch: int
    """Completions per forward/backward in TRL; gradient accumulation covers the rest."""
    warmup: int
    """Steps left out of the means (first-call allocations, caches)."""
    steps: int
    """Measured steps."""
    dtype: str = "float32"
    """Compute dtype of both systems: "float32", or "bfloat16" (float32 master weights, bf16
    compute: TRL's `bf16=True` autocast, vidrl's `learner.param_dtype` and a bf16 engine)."""


@dataclass
class StepRecord:
    """One TRL step: its wall seconds (from step begin to step end) and TRL's logged metrics."""

    seconds: float
    logs: dict[str, float]


def make_step_clock(records: list[StepRecord], after_step: Callable[[], None]) -> Any:
    """A TrainerCallback that times each optimizer step (generation included) and then calls
    `after_step`, outside the timed span: bench/e2e.py runs one vidrl step there, so that the
    two systems take their steps in turn and see the same load on the shared machine."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.started = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            records.append(StepRecord(time.perf_counter() - self.started, {}))

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            # Logged right after the step it describes (logging_steps=1), before the next one.
            if records and logs and "completions/mean_length" in logs:
                records[-1].logs = {k: float(v) for k, v in logs.items() if isinstance(v, int | float)}
                after_step()

    return StepClock()


def run_trl(
    model_dir: Path,
    texts: Sequence[str],
    recipe: Recipe,
    reward: Callable[[str], float],
    after_step: Callable[[], None],
    output_dir: Path,
    records: list[StepRecord],
) -> None:
    """Train with TRL's GRPOTrainer for warmup + steps steps on `texts` (one step = all of them,
    `recipe.samples` completions each), appending one record per step to `records` as it goes."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoTokenizer, PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    # The saved tokenizer class, not the one the config's model type would pick (cpu-stack.md).
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"  # TRL generates from left-padded prompt batches
    model = AutoModelForImageTextToText.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="sdpa"
    )
    banned = [tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>")]
    completions = recipe.prompts * recipe.samples
    config = GRPOConfig(
        output_dir=str(output_dir),
        max_steps=recipe.warmup + recipe.steps,
        num_generations=recipe.samples,
        per_device_train_batch_size=recipe.trl_microbatch,
        gradient_accumulation_steps=completions // recipe.trl_microbatch,
        max_completion_length=recipe.response_tokens,
        # Every completion runs to the full length, as vidrl's do (its model never meets its
        # end-of-turn token); the pad tokens are banned as vidrl's engine bans them.
        generation_kwargs={"min_new_tokens": recipe.response_tokens, "suppress_tokens": banned},
        temperature=1.0,
        learning_rate=recipe.lr,
        lr_scheduler_type="constant",
        weight_decay=1e-2,
        max_grad_norm=1.0,
        beta=recipe.kl_coef,
        epsilon=0.2,
        epsilon_high=0.28,
        loss_type="dapo",  # token-mean over the whole step: vidrl's loss_agg "token-mean"
        scale_rewards="group",
        num_iterations=1,
        bf16=recipe.dtype == "bfloat16",
        gradient_checkpointing=False,
        use_cpu=True,
        use_vllm=False,
        shuffle_dataset=False,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    # Enough rows for every step; TRL's sampler repeats each prompt `samples` times itself.
    dataset = Dataset.from_dict({"prompt": list(texts) * (recipe.warmup + recipe.steps)})

    def trl_reward(completions: list[str], **kwargs: Any) -> list[float]:
        return [reward(text) for text in completions]

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=trl_reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[make_step_clock(records, after_step)],
    )
    trainer.remove_callback(PrinterCallback)  # one printed dict per step otherwise
    trainer.train()
