"""Chunked log-probs and entropies from hidden states (vidrl.learner.logprobs): hand-worked
numbers, equality with the textbook [N, V] path (values and gradients), and what is saved."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from vidrl.learner.logprobs import head_logprobs

LN3 = math.log(3.0)


def close(actual: torch.Tensor, expected: object, atol: float = 1e-4) -> None:
    torch.testing.assert_close(
        actual.detach(), torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0
    )


def identity_head(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states and a weight whose product is `logits` [N, V] (hidden = logits, W = I)."""
    return logits, torch.eye(logits.shape[1], dtype=logits.dtype)


def test_entropy_of_uniform_is_log_vocab() -> None:
    # Uniform over V = 7: H = ln 7 = 1.94591.
    hidden, weight = identity_head(torch.full((3, 7), 5.0))
    _, entropy = head_logprobs(hidden, weight, None, torch.zeros(3, dtype=torch.long), with_entropy=True)
    close(entropy, [1.94591] * 3)


def test_hand_worked_point() -> None:
    # logits [0, ln 3] -> p = [1/4, 3/4]; log p[1] = ln 0.75 = -0.28768, log p[0] = -1.38629;
    # H = 0.25 * 1.38629 + 0.75 * 0.28768 = 0.56233.
    hidden, weight = identity_head(torch.tensor([[0.0, LN3], [0.0, LN3]]))
    logp, entropy = head_logprobs(hidden, weight, None, torch.tensor([1, 0]), with_entropy=True)
    close(logp, [-0.28768, -1.38629])
    close(entropy, [0.56233, 0.56233])


def test_temperature_divides_the_logits() -> None:
    # logits [0, 2 ln 3] at T = 2 are [0, ln 3]: the same numbers as above.
    hidden, weight = identity_head(torch.tensor([[0.0, 2 * LN3]]))
    logp, entropy = head_logprobs(hidden, weight, None, torch.tensor([1]), temperature=2.0, with_entropy=True)
    close(logp, [-0.28768])
    close(entropy, [0.56233])


def test_large_and_infinite_logits_are_stable() -> None:
    # logits (through the bias) [1000, 1000, -inf]: p = [0.5, 0.5, 0]; log p[0] = -ln 2; H = ln 2.
    bias = torch.tensor([1000.0, 1000.0, -math.inf], requires_grad=True)
    hidden = torch.zeros(1, 2, requires_grad=True)
    weight = torch.zeros(3, 2, requires_grad=True)
    logp, entropy = head_logprobs(hidden, weight, bias, torch.tensor([0]), with_entropy=True)
    close(logp, [-0.69315])
    close(entropy, [0.69315])
    (logp + entropy).sum().backward()
    for tensor in (bias, hidden, weight):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all()


def textbook(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float,
):
    """The [N, V] path the learner used to take: logits, log_softmax, exp."""
    logits = hidden @ weight.T + (0 if bias is None else bias)
    log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)  # [N, V]
    return log_probs.gather(-1, targets[:, None])[:, 0], -(log_probs.exp() * log_probs).sum(-1)


@pytest.mark.parametrize(("chunk_tokens", "with_bias"), [(1, True), (7, False), (4096, True)])
def test_equals_the_textbook_path_with_gradients(chunk_tokens: int, with_bias: bool) -> None:
    """float32: values within 1e-5, gradients of hidden, weight and bias within 1e-5 (relative)."""
    gen = torch.Generator().manual_seed(0)
    count, width, vocab = 23, 16, 97
    hidden = torch.randn(count, width, generator=gen, requires_grad=True)
    weight = (0.5 * torch.randn(vocab, width, generator=gen)).requires_grad_()
    bias = torch.randn(vocab, generator=gen, requires_grad=True) if with_bias else None
    targets = torch.randint(0, vocab, (count,), generator=gen)
    w_lp, w_h = torch.randn(count, generator=gen), torch.randn(count, generator=gen)
    inputs = [t for t in (hidden, weight, bias) if t is not None]

    mine = head_logprobs(
        hidden, weight, bias, targets, temperature=0.7, chunk_tokens=chunk_tokens, with_entropy=True
    )
    ref = textbook(hidden, weight, bias, targets, 0.7)
    for a, b in zip(mine, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    grads_mine = torch.autograd.grad((mine[0] * w_lp + mine[1] * w_h).sum(), inputs)
    grads_ref = torch.autograd.grad((ref[0] * w_lp + ref[1] * w_h).sum(), inputs)
    for a, b in zip(grads_mine, grads_ref, strict=True):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


def test_gradcheck_in_float64() -> None:
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 6, (5,), generator=gen)

    def both(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        logp, entropy = head_logprobs(h, w, b, targets, chunk_tokens=2, with_entropy=True)
        return logp * 0.3 + entropy

    assert gradcheck(both, (hidden, weight, bias))
    assert gradcheck(
        lambda h, w, b: head_logprobs(h, w, b, targets, chunk_tokens=3)[0], (hidden, weight, bias)
    )


def test_nothing_of_size_n_by_v_is_kept_for_the_backward() -> None:
    """The autograd graph holds the hidden states, the weight and a few floats per token only."""
    count, width, vocab = 64, 8, 1000
    hidden = torch.randn(count, width, requires_grad=True)
    weight = torch.randn(vocab, width, requires_grad=True)
    saved: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        logp, entropy = head_logprobs(
            hidden, weight, None, torch.zeros(count, dtype=torch.long), chunk_tokens=16, with_entropy=True
        )
    assert saved and max(saved) == vocab * width  # the weight itself
    assert sum(saved) < count * width + vocab * width + 10 * count
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        textbook_saved_before = len(saved)
        textbook(hidden, weight, None, torch.zeros(count, dtype=torch.long), 1.0)
    assert max(saved[textbook_saved_before:]) >= count * vocab  # the negative control keeps [N, V]
    (logp.sum() + entropy.sum()).backward()


def test_bf16_inputs_give_float32_results_and_bf16_grads() -> None:
    hidden, weight = identity_head(torch.tensor([[0.0, LN3]], dtype=torch.bfloat16))
    hidden.requires_grad_()
    logp, _ = head_logprobs(hidden, weight, None, torch.tensor([1]))
    assert logp.dtype == torch.float32
    logp.sum().backward()
    assert hidden.grad is not None and hidden.grad.dtype == torch.bfloat16
    # d log p1 / dz = onehot(1) - p = [-0.25, 0.25]; ln 3 rounds to 1.1016 in bf16 (p1 = 0.7506).
    close(hidden.grad.float(), [[-0.25, 0.25]], atol=2e-3)


def test_bad_shapes_and_temperature_are_refused() -> None:
    with pytest.raises(ValueError, match="targets"):
        head_logprobs(torch.zeros(3, 2), torch.zeros(4, 2), None, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        head_logprobs(
            torch.zeros(3, 2), torch.zeros(4, 2), None, torch.zeros(3, dtype=torch.long), temperature=0.0
        )


def test_banned_tokens_leave_the_distribution() -> None:
    """The engine never samples the image/video pads: logits [0, ln 3, 5] with token 2 banned are
    the distribution [1/4, 3/4] (the numbers above), with gradients that stay finite."""
    hidden, weight = identity_head(torch.tensor([[0.0, LN3, 5.0], [0.0, LN3, 5.0]]))
    hidden.requires_grad_()
    logp, entropy = head_logprobs(
        hidden, weight, None, torch.tensor([1, 0]), with_entropy=True, banned_ids=torch.tensor([2])
    )
    close(logp, [-0.28768, -1.38629])
    close(entropy, [0.56233, 0.56233])
    (logp + entropy).sum().backward()
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()
    assert hidden.grad[:, 2].abs().max() == 0
