"""The CPU attention kernel used for training with dropout (cccad/models/attention.cpp): the same
as PyTorch's attention without dropout, and with dropout exactly softmax, then a mask of kept
entries scaled by 1 / (1 - p), with its gradients."""
import pytest
import torch
import torch.nn.functional as F

from cccad.models.attention import FusedAttention, attention

torch.set_num_threads(1)


def grads(out, inputs, seed=0):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad(out, inputs, g)


@pytest.mark.parametrize("causal, m, n, d", [(True, 40, 40, 8), (False, 7, 19, 16), (True, 23, 23, 12), (False, 5, 9, 32)])
def test_without_dropout_it_is_pytorchs_attention(causal, m, n, d):
    torch.manual_seed(0)
    q = torch.randn(3, m, 2, d).transpose(1, 2).requires_grad_()  # heads read in place, as from a projection
    k, v = (torch.randn(3, 2, n, d).requires_grad_() for _ in range(2))
    ours = FusedAttention.apply(q, k, v, causal, 0.0, d ** -0.5)
    theirs = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    assert torch.allclose(ours, theirs, atol=2e-6)
    for a, b in zip(grads(ours, (q, k, v)), grads(theirs, (q, k, v))):
        assert torch.allclose(a, b, atol=2e-6)


def weights(q, k, p, seed, causal=False):
    """The kernel's attention weights themselves: values = the identity (as many keys as head size)."""
    eye = torch.eye(k.shape[-1]).expand_as(k)
    torch.manual_seed(seed)
    return FusedAttention.apply(q, k, eye, causal, p, q.shape[-1] ** -0.5)


@pytest.mark.parametrize("causal", [False, True])
def test_dropout_drops_softmax_weights_at_rate_p_and_scales_the_rest(causal):
    torch.manual_seed(1)
    q, k = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    p = 0.25
    probs = torch.softmax((q @ k.transpose(-1, -2)) * 8 ** -0.5 + (torch.ones(8, 8).triu(1) * -1e9 if causal else 0), -1)
    w = weights(q, k, p, seed=5, causal=causal)
    kept = w != 0
    assert torch.allclose(w[kept], probs[kept] / (1 - p), atol=1e-6)  # kept: the softmax weight, scaled
    visible = probs > 1e-12
    dropped = (~kept & visible).sum() / visible.sum()
    assert 0.15 < dropped < 0.35, dropped
    assert torch.equal(weights(q, k, p, seed=5, causal=causal), w)  # the torch seed decides the mask
    assert not torch.equal(weights(q, k, p, seed=6, causal=causal), w)


def test_dropout_gradients_are_those_of_softmax_times_the_mask():
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 3, 8, 8, requires_grad=True) for _ in range(3))
    p = 0.3
    mask = weights(q.detach(), k.detach(), p, seed=7) != 0  # the mask this seed draws
    torch.manual_seed(7)
    ours = FusedAttention.apply(q, k, v, False, p, 8 ** -0.5)
    reference = (torch.softmax((q @ k.transpose(-1, -2)) * 8 ** -0.5, -1) * mask / (1 - p)) @ v
    assert torch.allclose(ours, reference, atol=2e-6)
    for a, b in zip(grads(ours, (q, k, v)), grads(reference, (q, k, v))):
        assert torch.allclose(a, b, atol=2e-5)


def test_dropout_is_used_in_training_only():
    q, k, v = (torch.randn(2, 2, 6, 8) for _ in range(3))
    evaluation = attention(q, k, v, True, 0.5, training=False)
    assert torch.allclose(evaluation, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert not torch.allclose(attention(q, k, v, True, 0.5, training=True), evaluation)
