"""End to end, the update goes the right way: GRPO on a fixed reward raises that reward.

The reward is the fraction of digit tokens in a response. Responses are sampled with
transformers on the driver (the rollout engine is tested on its own), the learner is a real
FSDP2 rank in Ray, and the new weights come back through the object store as buckets each
step, exactly as they reach the rollout workers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vidrl.learner.config import LearnerConfig
from vidrl.learner.grpo import group_advantages
from vidrl.learner.loss_config import LossConfig
from vidrl.learner.types import TrainGroup
from vidrl.models import family_of

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ray = pytest.importorskip("ray")

PROMPTS = ("Count to five.", "Give a number.", "When does it start?", "Say something.")
SAMPLES_PER_PROMPT = 8
RESPONSE_TOKENS = 10
STEPS = 20


def digit_fraction(ids: list[int], digit_ids: set[int]) -> float:
    return sum(i in digit_ids for i in ids) / max(len(ids), 1)


def sample_groups(
    model: torch.nn.Module, tokenizer: object, digit_ids: set[int], generator: torch.Generator
) -> tuple[list[TrainGroup], float]:
    groups, rewards_seen = [], []
    for prompt in PROMPTS:
        text = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        prompt_ids = torch.tensor([tokenizer(text)["input_ids"]])  # type: ignore[operator]
        with torch.no_grad():
            out = model.generate(
                prompt_ids.repeat(SAMPLES_PER_PROMPT, 1),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                max_new_tokens=RESPONSE_TOKENS,
                min_new_tokens=RESPONSE_TOKENS,
                pad_token_id=0,
                # The engine never samples the vision placeholders and the learner scores them -inf:
                # sampled here they would make the loss non-finite, and the learner skip the update.
                suppress_tokens=list(family_of(model.config).placeholder_token_ids(model.config)),
            )
        responses = [row[prompt_ids.shape[1] :].tolist() for row in out]
        rewards = torch.tensor([[digit_fraction(r, digit_ids) for r in responses]])
        rewards_seen.append(float(rewards.mean()))
        advantages = group_advantages(rewards, "grpo", 1e-6)[0]
        groups.append(
            TrainGroup(
                prompt_ids=prompt_ids[0].numpy(),
                responses=tuple(np.asarray(r, dtype=np.int64) for r in responses),
                advantages=advantages.numpy().astype(np.float32),
            )
        )
    return groups, float(np.mean(rewards_seen))


def test_grpo_raises_a_fixed_reward(tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from vidrl.data.tiny import build_tiny_model
    from vidrl.learner.group import LearnerGroup
    from vidrl.weights import unpack_bucket

    model_dir = build_tiny_model(tmp_path / "model", seed=0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    digit_ids = {tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)}
    policy = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    torch.manual_seed(0)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        cfg = LearnerConfig(
            num_ranks=1, lr=3e-3, old_logprobs="recompute", loss=LossConfig(kl_coef=0.0, entropy_coef=0.0)
        )
        learner = LearnerGroup(str(model_dir), cfg, seed=0)
        curve = []
        for version in range(1, STEPS + 1):
            groups, mean_reward = sample_groups(policy, tokenizer, digit_ids, torch.Generator())
            curve.append(mean_reward)
            learner.train_step(groups)
            weights = {n: t for b in ray.get(learner.export_weights(version)) for n, t in unpack_bucket(b)}
            policy.load_state_dict(weights, strict=False)
        learner.shutdown()
    finally:
        ray.shutdown()
    first, last = np.mean(curve[:3]), np.mean(curve[-3:])
    assert last > first + 0.2, f"digit reward did not rise: {np.round(curve, 2).tolist()}"
