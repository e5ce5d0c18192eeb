"""The input projection's native one-pass form (cells._InputProj on the CPU in float32 with few input
features) and the layer-normalized LSTM's input norm folded into the kernel."""
import pytest
import torch
import torch.nn.functional as F

from bench.models import cells, native
from bench.models.cells import NormRecurrence, _InputProj


@pytest.fixture
def kernel(monkeypatch):
    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "1")
    k = native.kernel()
    assert k is not None, "the native kernel did not build here (see the warning above for the builder's reason)"
    return k


def _proj(x, W, b, g):
    """Output and gradients (x, W, b) of _InputProj for upstream gradient g."""
    x = x.detach().clone().requires_grad_()
    W = W.detach().clone().requires_grad_()
    b = None if b is None else b.detach().clone().requires_grad_()
    y = _InputProj.apply(x.transpose(0, 1), W, b)  # time-major, as the recurrences call it
    y.backward(g)
    return y.detach(), x.grad, W.grad, None if b is None else b.grad


def _data(K, G=48, B=7, T=29, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, K, generator=gen)
    W = torch.randn(G, K, generator=gen)
    b = torch.randn(G, generator=gen) if bias else None
    g = torch.randn(T, B, G, generator=gen)
    return x, W, b, g


@pytest.mark.parametrize("K", [1, 2, 10, cells.NATIVE_PROJ_MAX_IN])
@pytest.mark.parametrize("bias", [True, False])
def test_native_projection_equals_linear_in_float64(kernel, K, bias):
    x, W, b, g = _data(K, bias=bias)  # T*B = 203 rows: three full blocks of 64 and a remainder
    y, gx, gW, gb = _proj(x, W, b, g)
    xd, Wd = x.double().requires_grad_(), W.double().requires_grad_()
    bd = None if b is None else b.double().requires_grad_()
    yd = F.linear(xd.transpose(0, 1), Wd, bd)
    yd.backward(g.double())
    for got, want in [(y, yd), (gx, xd.grad), (gW, Wd.grad)] + ([(gb, bd.grad)] if bias else []):
        assert got.dtype == torch.float32 and got.shape == want.shape
        torch.testing.assert_close(got.double(), want.detach(), rtol=0, atol=2e-6 * want.abs().max().item())
    assert (gb is None) == (not bias)


def test_native_projection_is_used_and_is_the_same_run_to_run(kernel, monkeypatch):
    calls = []
    for name in ("proj_forward", "proj_backward"):
        real = getattr(kernel, name)
        monkeypatch.setattr(kernel, name, lambda *a, _r=real, _n=name: (calls.append(_n), _r(*a))[1])
    x, W, b, g = _data(2, G=256, B=64, T=50)
    a = _proj(x, W, b, g)
    assert calls == ["proj_forward", "proj_backward"]
    for u, v in zip(a, _proj(x, W, b, g)):
        assert torch.equal(u, v)


def test_wide_inputs_float64_and_switched_off_take_the_matrix_product(monkeypatch):
    """More than NATIVE_PROJ_MAX_IN input features, float64, or BENCH_NORMSEQ_NATIVE=0: ATen's
    product (same values to rounding), and the kernel is not called."""
    monkeypatch.setattr(cells, "native_kernel_for", lambda xs: pytest.fail("kernel asked for"), raising=True)
    x, W, b, g = _data(cells.NATIVE_PROJ_MAX_IN + 1)
    y, gx, gW, gb = _proj(x, W, b, g)
    torch.testing.assert_close(y, F.linear(x.transpose(0, 1), W, b))
    torch.testing.assert_close(gb, g.sum((0, 1)), rtol=1e-5, atol=1e-5)
    monkeypatch.undo()
    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "0")
    x, W, b, g = _data(2)
    y0, _, gW0, gb0 = _proj(x, W, b, g)
    torch.testing.assert_close(gW0, torch.mm(x.transpose(0, 1).reshape(-1, 2).t(), g.reshape(-1, 48)).t())
    torch.testing.assert_close(gb0, g.sum((0, 1)), rtol=1e-5, atol=1e-5)
    x64, W64, b64, g64 = (t.double() for t in (x, W, b, g))
    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "1")
    y64, _, _, _ = _proj(x64, W64, b64, g64)
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64, F.linear(x64.transpose(0, 1), W64, b64))


def _init(m):
    """Fixed weights (the module's constructor leaves initialization to the mitigations)."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return m


def test_ln_lstm_normalizes_its_input_term_inside_the_kernel(kernel, monkeypatch):
    """On the kernel, ln_lstm's input layer norm runs per step inside the time loop: no (T, B, G)
    layer norm outside (the test of the kernel against the TorchScript loops checks the values)."""
    m = _init(NormRecurrence("lstm", "ln", 2, 8, 20))
    x = torch.randn(3, 20, 2, generator=torch.Generator().manual_seed(1))

    def refuse(*a, **k):
        raise AssertionError("F.layer_norm called outside the kernel")

    monkeypatch.setattr(cells.F, "layer_norm", refuse)
    hs = m(x)
    hs.sum().backward()
    assert m.gain_x.grad is not None and m.gain_x.grad.abs().sum() > 0
    assert m.bias.grad is not None and m.bias.grad.abs().sum() > 0
    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "0")  # without the kernel, the layer norm outside
    with pytest.raises(AssertionError, match="outside the kernel"):
        m(x)


@pytest.mark.parametrize("family", ["rnn_tanh", "lstm"])
def test_bn_cells_normalize_their_input_term_inside_the_kernel(kernel, monkeypatch, family):
    """bn_rnn and bn_lstm: no (B, T*G) batch norm outside the kernel, forward or backward; the
    running statistics of the input term move, in the kernel (the comparison with the TorchScript /
    Python loops in tests/test_normseq_native.py checks the values)."""
    m = _init(NormRecurrence(family, "bn", 2, 8, 20))
    x = torch.randn(3, 20, 2, generator=torch.Generator().manual_seed(1))
    rm_x = m.rm_x.clone()

    def refuse(*a, **k):
        raise AssertionError("F.batch_norm called outside the kernel")

    monkeypatch.setattr(cells.F, "batch_norm", refuse)
    m(x).sum().backward()
    assert m.gain_x.grad is not None and m.gain_x.grad.abs().sum() > 0
    assert m.bias.grad is not None and m.bias.grad.abs().sum() > 0
    assert not torch.equal(m.rm_x, rm_x)
    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "0")  # without the kernel, the batch norm outside
    with pytest.raises(AssertionError, match="outside the kernel"):
        m(x)


def test_ln_lstm_longer_than_max_steps_runs_on_the_kernel(kernel):
    """Layer norm keeps no per-step statistics: unlike bn_lstm, any length runs (folded or not)."""
    m = _init(NormRecurrence("lstm", "ln", 2, 4, 5))
    hs = m(torch.randn(2, 9, 2, generator=torch.Generator().manual_seed(2)))
    assert hs.shape == (2, 9, 4) and torch.isfinite(hs).all()
