"""LoRA (vidrl.learner.lora): adapters injected into the language model only, written in PEFT's
format, merged exactly; served by vLLM after a push with transformers + PEFT's greedy output; a
LoRA GRPO run on 2 FSDP2 ranks that completes and resumes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from vidrl.data.tiny import build_tiny_model
from vidrl.learner.config import LoraSettings
from vidrl.learner.lora import (
    ADAPTER_CONFIG,
    export_merged,
    inject_adapters,
    is_adapter,
    peft_tensors,
    write_adapter,
)

SETTINGS = LoraSettings(rank=4, alpha=8.0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("lora") / "base", seed=0)


@pytest.fixture(scope="module")
def adapter_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter as a LoRA run writes it, with B drawn at random (a fresh adapter is 0)."""
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    inject_adapters(model, SETTINGS)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if is_adapter(name):
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    tensors = dict(peft_tensors((n, p.detach()) for n, p in model.named_parameters()))
    return write_adapter(tmp_path_factory.mktemp("lora") / "adapter", tensors, SETTINGS, str(model_dir))


def logits(model: Any, processor: Any) -> torch.Tensor:
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "When does the man sit down?"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    with torch.no_grad():
        return model(**processor(text=[text], return_tensors="pt")).logits


def test_adapters_go_on_the_language_model_only(model_dir: Path) -> None:
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    inject_adapters(model, SETTINGS)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(is_adapter(n) for n in trainable)
    assert all(".language_model." in n for n in trainable)  # the vision tower has gate/up/down_proj too
    assert {n.split(".")[-4] for n in trainable} == set(SETTINGS.target_modules)  # x.lora_A.default.weight


def test_peft_loads_the_adapter_and_the_merged_export_gives_its_logits(
    model_dir: Path, adapter_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel

    processor = AutoProcessor.from_pretrained(model_dir)
    base = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    plain = logits(base, processor)
    with_adapter = logits(PeftModel.from_pretrained(base, adapter_dir), processor)
    assert (with_adapter - plain).abs().max() > 1e-2  # the adapter changes the model
    assert json.loads((adapter_dir / ADAPTER_CONFIG).read_text())["base_model_name_or_path"] == str(model_dir)
    merged_dir = export_merged(adapter_dir, tmp_path / "merged")
    merged = AutoModelForImageTextToText.from_pretrained(merged_dir, dtype=torch.float32)
    # W + s B A against W x + s B (A x): float32 sums in another order (1.8e-5 on an AMX CPU, under
    # 1e-5 on an AVX2 one); a wrong merge is off by the adapter's own effect, over 1e-2 (above).
    torch.testing.assert_close(
        logits(merged, AutoProcessor.from_pretrained(merged_dir)), with_adapter, atol=5e-5, rtol=0
    )


# ---------------------------------------------------------------- with vLLM and Ray

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.vllm
@pytest.mark.ray
def test_greedy_after_an_adapter_push_equals_transformers_with_peft(
    cluster: None, model_dir: Path, adapter_dir: Path
) -> None:
    from peft import PeftModel

    from vidrl.cluster.models import model_ref, weight_refs
    from vidrl.rollout.config import RolloutConfig
    from vidrl.rollout.pool import RolloutPool
    from vidrl.rollout.types import RolloutPrompt, Sampling

    processor = AutoProcessor.from_pretrained(model_dir)
    questions = ["When does the man sit down?", "What does the red square do?"]
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": q}]}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for q in questions
    ]
    greedy = Sampling(samples_per_prompt=1, temperature=0.0, top_p=1.0, max_response_tokens=8)
    cfg = RolloutConfig(
        num_workers=1,
        cpus_per_worker=1,
        dtype="float32",
        max_model_len=256,
        max_response_tokens=8,
        kv_cache_bytes=16 << 20,
        lora_rank=4,
    )
    prompts = [RolloutPrompt(f"q{i}", t) for i, t in enumerate(texts)]

    def hf_greedy(model: Any) -> list[list[int]]:
        out = []
        for text in texts:
            ids = processor(text=[text], return_tensors="pt")["input_ids"]
            pads = [[model.config.image_token_id], [model.config.video_token_id]]
            with torch.no_grad():
                tokens = model.generate(ids, max_new_tokens=8, do_sample=False, bad_words_ids=pads)
            out.append(tokens[0, ids.shape[1] :].tolist())
        return out

    base = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    expected_base = hf_greedy(base)
    expected_adapter = hf_greedy(PeftModel.from_pretrained(base, adapter_dir).eval())
    assert expected_adapter != expected_base
    pool = RolloutPool(cfg, str(model_dir))
    try:
        first = [g.responses[0].token_ids.tolist() for g in pool.generate(prompts, 0, sampling=greedy).groups]
        refs = weight_refs(model_ref(str(adapter_dir)), version=1)
        pool.update_weights(1, refs)
        after = [g.responses[0].token_ids.tolist() for g in pool.generate(prompts, 0, sampling=greedy).groups]
    finally:
        pool.shutdown()
    assert first == expected_base
    assert after == expected_adapter


@pytest.mark.vllm
@pytest.mark.ray
@pytest.mark.slow
def test_a_lora_grpo_run_on_two_ranks_completes_and_resumes(
    cluster: None, model_dir: Path, tmp_path: Path
) -> None:
    from vidrl.cluster.config import load_run_config
    from vidrl.cluster.job import train
    from vidrl.data.synth import synthesize

    data = synthesize(tmp_path / "data", num_videos=4, seed=2)
    digits = f"{Path(__file__).parent / 'rewards_for_tests.py'}:digit_share"

    def config(steps: int) -> Any:
        return load_run_config(
            Path(__file__).parents[1] / "examples" / "synthetic.yaml",
            [
                f"model_path={model_dir}",
                f"data.train_path={data.train_yaml}",
                "data.eval_path=null",
                f"output_dir={tmp_path / 'runs'}",
                "run_name=lora",
                f"trainer.steps={steps}",
                "trainer.sft_steps=0",
                "trainer.prompts_per_step=2",
                "trainer.checkpoint_every_steps=2",
                "trainer.max_staleness=0",
                "trainer.progress_bar=false",
                "trainer.tensorboard=false",
                "rollout.samples_per_prompt=2",
                "rollout.max_response_tokens=8",
                "learner.num_ranks=2",
                "learner.lora={rank: 4, alpha: 8.0}",
                "learner.loss.kl_coef=0.01",  # the reference: the same ranks with the adapters off
                "rewards.preset=null",
                f"rewards.components=[{{name: digits, fn: '{digits}', per_sample: true}}]",
            ],
        )

    first = train(config(2))
    resumed = train(config(3))
    run_dir = Path(first["run_dir"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert resumed["start_step"] == 2 and [r["step"] for r in rows] == [0, 1, 2]
    assert all(torch.isfinite(torch.tensor(r["learner/loss"])) for r in rows if "learner/loss" in r)
    adapter = run_dir / "checkpoints" / "step_000003" / "adapter"
    assert (adapter / ADAPTER_CONFIG).exists() and not (adapter.parent / "hf").exists()
    from peft import PeftModel

    base = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    PeftModel.from_pretrained(base, adapter)  # PEFT loads what the run wrote
