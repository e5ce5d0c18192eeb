"""The normalized LSTMs' time loops in TorchScript (bench.models.normseq): the same numbers as the
Python loops, bit for bit, in every mode; the switch and the fallback. (With the native kernel
switched off: it replaces both on the CPU when it is built, see test_normseq_native.py.)"""
from __future__ import annotations

import pytest
import torch

from bench.models import normseq
from bench.models.cells import NormRecurrence


@pytest.fixture
def loops(monkeypatch):
    """run(jit) -> outputs, gradients and buffers of one forward/backward, with the scripted
    loops (jit=True) or the Python loops (jit=False), from the same weights and data."""

    def run(norm, jit, mode="train", tbptt=None, T=23, H=8, B=5):
        monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "0")  # the native kernel: tests/test_normseq_native.py
        monkeypatch.setenv("BENCH_NORMSEQ_JIT", "1" if jit else "0")
        monkeypatch.setattr(normseq, "_JIT", {})
        g = torch.Generator().manual_seed(7)
        m = NormRecurrence("lstm", norm, 2, H, T)
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            for b in m.buffers():
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
        m.train(mode != "eval")
        m.update_stats = mode != "frozen"
        x = torch.randn(B, T, 2, generator=g, requires_grad=True)
        hs = m(x, tbptt)
        (hs.sin() * torch.arange(T).view(1, T, 1)).sum().backward()
        used = normseq._JIT.get("_lstm_forward_loop") is not None
        return used, [hs.detach(), x.grad] + [p.grad for p in m.parameters()] + [b.clone() for b in m.buffers()]

    return run


@pytest.mark.parametrize("norm", ["ln", "bn"])
@pytest.mark.parametrize("mode", ["train", "eval", "frozen"])
@pytest.mark.parametrize("tbptt", [None, 6])
def test_scripted_loops_give_the_python_loops_numbers_bit_for_bit(loops, norm, mode, tbptt):
    used_jit, a = loops(norm, True, mode, tbptt)
    used_py, b = loops(norm, False, mode, tbptt)
    assert used_jit and not used_py
    assert len(a) == len(b)
    for i, (u, v) in enumerate(zip(a, b)):
        assert u is not None and v is not None, i
        assert torch.equal(u, v), (i, (u - v).abs().max())


def test_a_failing_compilation_falls_back_to_the_python_loops_with_a_warning(monkeypatch, loops):
    def broken(fn):
        raise RuntimeError("no TorchScript here")

    _, want = loops("ln", False)
    monkeypatch.setattr(torch.jit, "script", broken)
    monkeypatch.setattr(normseq, "_JIT", {})
    monkeypatch.setenv("BENCH_NORMSEQ_JIT", "1")
    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "0")
    with pytest.warns(UserWarning, match="TorchScript unavailable.*no TorchScript here.*same results"):
        assert normseq._scripted("_lstm_forward_loop") is None
    g = torch.Generator().manual_seed(7)
    m = NormRecurrence("lstm", "ln", 2, 8, 23)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    x = torch.randn(5, 23, 2, generator=g, requires_grad=True)
    hs = m(x)
    assert torch.equal(hs.detach(), want[0])
