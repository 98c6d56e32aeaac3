"""The vidrl side of bench/e2e.py: the shared reward, the model and prompt helpers, and vidrl's
GRPO step assembled from its pieces (`VidrlSteps`) for text-only prompts.

The comparison drives the pieces directly because the driver's data stage decodes videos
(text-only prompts do not go through `vidrl.cluster`); there is no metrics sink, checkpoint or
progress bar in this loop.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidrl.data.sample import Sample
from vidrl.data.tiny import tiny_corpus

# ---------------------------------------------------------------- the shared reward and model


def digit_score(text: str) -> float:
    """The fraction of a response's characters that are digits: a rule that costs nothing."""
    return sum(c.isdigit() for c in text) / max(len(text), 1)


def digit_fraction(response: str, sample: Sample) -> float:
    """vidrl's per-sample reward contract around `digit_score` (the reward actors load it)."""
    del sample
    return digit_score(response)


def never_stop(model_dir: Path) -> None:
    """Make `<|video_pad|>` the model's only end-of-sequence token. Both samplers ban that token
    (vidrl's engine always; TRL through suppress_tokens), so every response runs to the length
    limit and both systems generate and train on the same number of tokens. vidrl cannot be told
    to ignore EOS, so the model folder says it instead."""
    tokenizer_file = model_dir / "tokenizer_config.json"
    tokenizer = json.loads(tokenizer_file.read_text())
    tokenizer["eos_token"] = "<|video_pad|>"
    tokenizer_file.write_text(json.dumps(tokenizer, indent=2))
    from transformers import AutoTokenizer

    pad_id = AutoTokenizer.from_pretrained(model_dir).convert_tokens_to_ids("<|video_pad|>")
    generation_file = model_dir / "generation_config.json"
    generation = json.loads(generation_file.read_text())
    generation["eos_token_id"] = [pad_id]
    generation_file.write_text(json.dumps(generation, indent=2))


def make_prompts(model_dir: Path, count: int, user_tokens: int) -> list[str]:
    """`count` distinct chat-templated prompts whose user turn is about `user_tokens` tokens
    (one question when small; sentences of the tiny model's corpus when large)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lines = [line for line in tiny_corpus() if line.startswith("When does")]
    rng = np.random.default_rng(0)
    texts = []
    for index in range(count):
        order = rng.permutation(len(lines))
        words = f"Question {index}: {lines[order[0]]}"
        for i in order[1:]:
            if len(tokenizer(words)["input_ids"]) >= user_tokens:
                break
            words += " " + lines[i]
        messages = [{"role": "user", "content": words}]
        texts.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return texts


# ---------------------------------------------------------------- vidrl's step, from its pieces


@dataclass(frozen=True, slots=True)
class VidrlLayout:
    """Where vidrl's actors run and how the learner splits a step."""

    learner_ranks: int
    """FSDP2 ranks (one torch thread each)."""
    rollout_cpus: float
    """CPUs of the one rollout worker (its vLLM engine's threads)."""
    microbatch_tokens: int
    """The learner's token budget per forward/backward (shared-prefix layout)."""
    lora_rank: int | None = None
    """Train a LoRA adapter of this rank instead of the whole model (pushes carry the adapter)."""


class VidrlSteps:
    """The GRPO step of vidrl.cluster.driver.grpo_step over text-only prompts: rollout -> reward
    pool -> group advantages -> learner update -> weight push, each phase timed."""

    def __init__(self, model_dir: Path, texts: list[str], recipe: Any, layout: VidrlLayout) -> None:
        from vidrl.learner.config import LearnerConfig
        from vidrl.learner.group import LearnerGroup
        from vidrl.learner.loss_config import LossConfig
        from vidrl.rewards.config import RewardComponentConfig, RewardsConfig
        from vidrl.rewards.pool import RewardPool
        from vidrl.rollout.config import RolloutConfig
        from vidrl.rollout.pool import RolloutPool
        from vidrl.rollout.types import RolloutPrompt

        self.prompts = [RolloutPrompt(f"p{i}", text) for i, text in enumerate(texts)]
        self.samples = [Sample(f"p{i}", "mcq", "", text, 1.0) for i, text in enumerate(texts)]
        self.rollout = RolloutPool(
            RolloutConfig(
                cpus_per_worker=layout.rollout_cpus,
                samples_per_prompt=recipe.samples,
                max_response_tokens=recipe.response_tokens,
                max_model_len=4096,
                dtype=recipe.dtype,
                kv_cache_bytes=512 << 20,
                lora_rank=layout.lora_rank,
            ),
            str(model_dir),
        )
        reward = RewardComponentConfig(name="digits", fn=f"{__file__}:digit_fraction", per_sample=True)
        self.rewards = RewardPool(RewardsConfig(preset=None, components=(reward,)), 1, 0.01)
        # TRL's objective: k3 KL, clip 0.2 / 0.28 without dual clip, no entropy bonus, group
        # advantages with TRL's epsilon, token-mean over the step.
        self.loss = LossConfig(kl_coef=recipe.kl_coef, dual_clip=None, entropy_coef=0.0, advantage_eps=1e-4)
        learner = LearnerConfig(
            num_ranks=layout.learner_ranks,
            cpus_per_rank=0.5,
            lr=recipe.lr,
            param_dtype=recipe.dtype,
            max_tokens_per_microbatch=layout.microbatch_tokens,
            loss=self.loss,
            lora=None
            if layout.lora_rank is None
            else {"rank": layout.lora_rank, "alpha": 2.0 * layout.lora_rank},
        )
        self.learner = LearnerGroup(str(model_dir), learner)
        self.version = 0

    def step(self) -> dict[str, float]:
        import ray

        from vidrl.learner.grpo import group_advantages
        from vidrl.learner.types import TrainGroup
        from vidrl.rewards.types import RewardInput

        clock = {"started": time.perf_counter()}
        batch = self.rollout.generate(self.prompts, step=self.version)
        clock["rollout"] = time.perf_counter()
        inputs = [
            RewardInput(self.samples[g.prompt_index], r.text) for g in batch.groups for r in g.responses
        ]
        scores = self.rewards.score(inputs).scores
        clock["reward"] = time.perf_counter()
        totals = torch.tensor([s.total if s is not None else 0.0 for s in scores])
        advantages = group_advantages(totals.view(len(batch.groups), -1), "grpo", self.loss.advantage_eps)
        groups = [
            TrainGroup(
                prompt_ids=g.prompt_token_ids.astype(np.int64),
                responses=tuple(r.token_ids.astype(np.int64) for r in g.responses),
                advantages=advantages[i].float().numpy(),
                old_logprobs=tuple(r.logprobs for r in g.responses),
            )
            for i, g in enumerate(batch.groups)
        ]
        self.learner.train_step(groups)
        clock["learn"] = time.perf_counter()
        self.version += 1
        refs = self.learner.export_weights(self.version)
        self.push_bytes = float(sum(ray.get(ref).nbytes for ref in refs))
        self.rollout.update_weights(self.version, refs)
        clock["sync"] = time.perf_counter()
        phases = ("rollout", "reward", "learn", "sync")
        times = dict(zip(phases, np.diff([clock[k] for k in ("started", *phases)]), strict=True))
        lengths = [len(r.token_ids) for g in batch.groups for r in g.responses]
        prompt_tokens = statistics.fmean(len(g.prompt_token_ids) for g in batch.groups)
        return {
            "seconds": clock["sync"] - clock["started"],
            **{f"{k}_seconds": float(v) for k, v in times.items()},
            "mean_length": statistics.fmean(lengths),
            "prompt_tokens": prompt_tokens,
            "push_bytes": self.push_bytes,
        }

    def shutdown(self) -> None:
        for part in (self.rollout, self.rewards, self.learner):
            part.shutdown()
