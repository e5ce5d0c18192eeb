"""The native kernel's backward reads the gradient of the hidden states as it arrives: time-major
(T, B, H), or batch-major -- the transpose of a (B, T, H) tensor, which is what a batch-first
readout hands back (normseq.grad_for_kernel) -- without a copy. Both layouts must give the same
numbers, bit for bit, for every recurrence the kernel runs. (That the kernel's gradients, W_hh's summed
step by step among them, are nn.RNN's / nn.GRU's and the TorchScript loops' to rounding:
test_native_plain.py, test_normseq_native.py.)"""
from __future__ import annotations

import pytest
import torch

from bench.models import cells, native, normseq
from bench.models.cells import FusedRecurrence, NormRecurrence

KINDS = [("rnn_tanh", None), ("rnn_relu", None), ("gru", None), ("lstm", "bn"), ("lstm", "ln"),
         ("rnn_tanh", "bn"), ("rnn_tanh", "ln")]
_REAL = normseq.grad_for_kernel


@pytest.fixture
def kernel():
    k = native.kernel()
    assert k is not None, "the native kernel did not build here (see the warning above for the builder's reason)"
    return k


def _rec(family, norm, T, H=12):
    g = torch.Generator().manual_seed(5)
    r = FusedRecurrence(family, 3, H) if norm is None else NormRecurrence(family, norm, 3, H, T)
    with torch.no_grad():
        for p in r.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return r, g


def _grads(family, norm, batch_major_loss, monkeypatch, T=17, B=6):
    """Outputs and every gradient after a loss whose gradient reaches the kernel batch-major (a
    weight (B, T, H) like a batch-first readout's) or time-major (a (T, B, H) weight, transposed);
    and the layouts the kernel was handed."""
    seen = []

    def spy(dhs):
        out = _REAL(dhs)
        seen.append(out[1])
        return out

    monkeypatch.setattr(normseq, "grad_for_kernel", spy)
    monkeypatch.setattr(cells, "grad_for_kernel", spy)
    r, g = _rec(family, norm, T)
    x = torch.randn(B, T, 3, generator=g, requires_grad=True)
    w_tm = torch.randn(T, B, r.hidden, generator=g)
    hs = r(x)
    w = w_tm.transpose(0, 1).contiguous() if batch_major_loss else w_tm.transpose(0, 1)
    (hs * w).sum().backward()
    out = {"hs": hs.detach(), "x": x.grad, **{n: p.grad for n, p in r.named_parameters()}}
    return out, seen


@pytest.mark.parametrize("family,norm", KINDS, ids=[f"{f}-{n}" for f, n in KINDS])
def test_both_layouts_of_the_incoming_gradient_give_the_same_numbers(kernel, monkeypatch, family, norm):
    a, seen_a = _grads(family, norm, True, monkeypatch)
    b, seen_b = _grads(family, norm, False, monkeypatch)
    assert seen_a == [True] and seen_b == [False], (seen_a, seen_b)  # both paths really ran
    for k in a:
        assert a[k] is not None and torch.equal(a[k], b[k]), k
