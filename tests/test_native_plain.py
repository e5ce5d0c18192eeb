"""The plain tanh / ReLU RNN and the GRU on the native kernel (bench/models/normlstm.cpp, via
cells.NativeSeq): the same function as nn.RNN / nn.GRU (to rounding: outputs and every gradient,
with and without truncation), the same numbers run to run, nn.* where the kernel does not apply,
and the record saying which ran."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.models import native
from bench.models.cells import FusedRecurrence, last_boundary

FAMILIES = ["rnn_tanh", "rnn_relu", "gru"]


@pytest.fixture
def kernel():
    k = native.kernel()
    assert k is not None, "the native kernel did not build here (see the warning above for the builder's reason)"
    return k


def _run(family, tbptt=None, T=23, H=8, B=5, scale=0.25, no_grad_before=0, dtype=torch.float32, seed=3):
    """Outputs and gradients (input and every parameter) after one forward/backward. scale 0.25:
    contracting dynamics (a chaotic RNN would amplify the rounding differences of two exact
    implementations)."""
    g = torch.Generator().manual_seed(seed)
    r = FusedRecurrence(family, 3, H).to(dtype)
    with torch.no_grad():
        for p in r.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * scale)
    x = torch.randn(B, T, 3, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(B, T, H, generator=g, dtype=dtype)
    hs = r(x, tbptt, no_grad_before)
    (hs * w).sum().backward()
    out = {"hs": hs.detach(), "x.grad": x.grad}
    out.update({f"{n}.grad": p.grad for n, p in r.named_parameters()})
    return out, r.native(x)


def _close(a, b, name):
    """Equal to float32 rounding: the sums over time and batch run in another order."""
    scale = b.abs().max().item()
    assert scale > 0, name
    assert (a - b).abs().max().item() <= 2e-6 * scale, f"{name}: {(a - b).abs().max().item()} of {scale}"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tbptt", [None, 6])
@pytest.mark.parametrize("H", [8, 13])
def test_native_kernel_computes_what_nn_rnn_and_nn_gru_compute(kernel, monkeypatch, family, tbptt, H):
    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "1")
    got, ran_native = _run(family, tbptt, H=H)
    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "0")
    want, ran_nn = _run(family, tbptt, H=H)
    assert ran_native and not ran_nn
    assert got.keys() == want.keys()
    for k in want:
        assert want[k] is not None and got[k] is not None, k
        _close(got[k], want[k], k)
    # the gradient really crosses steps: with truncation the first chunk's input gets none from the last
    if tbptt:
        T = got["hs"].shape[1]
        assert got["x.grad"][:, : last_boundary(T, tbptt)].abs().sum() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_steps_before_no_grad_before_run_without_autograd_and_match_nn(kernel, monkeypatch, family):
    T, k = 23, 6
    cut = last_boundary(T, k)
    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "1")
    got, _ = _run(family, k, T=T, no_grad_before=cut)
    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "0")
    want, _ = _run(family, k, T=T, no_grad_before=cut)
    assert torch.count_nonzero(got["x.grad"][:, :cut]) == 0
    for key in want:
        _close(got[key], want[key], key)


@pytest.mark.parametrize("family", FAMILIES)
def test_native_kernel_is_the_same_run_to_run_bit_for_bit(kernel, family):
    a, _ = _run(family, T=40, H=16, B=7)
    b, _ = _run(family, T=40, H=16, B=7)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_relu_rnn_that_explodes_gives_non_finite_values_as_nn_rnn_does(kernel, monkeypatch):
    """Exploding runs (large W_rec) must overflow, not crash or be clamped."""
    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "1")
    got, _ = _run("rnn_relu", T=60, H=8, scale=8.0)
    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "0")
    want, _ = _run("rnn_relu", T=60, H=8, scale=8.0)
    fin_got = torch.isfinite(got["hs"]).all(dim=(0, 2)).sum().item()
    fin_want = torch.isfinite(want["hs"]).all(dim=(0, 2)).sum().item()
    assert fin_want < 60 and abs(fin_got - fin_want) <= 1
    assert not torch.isfinite(got["rnn.weight_hh_l0.grad"]).all()


def test_float64_and_lstm_stay_on_torch(kernel):
    x64 = torch.zeros(2, 5, 3, dtype=torch.float64)
    assert not FusedRecurrence("gru", 3, 4).to(torch.float64).native(x64)
    assert not FusedRecurrence("lstm", 3, 4).native(torch.zeros(2, 5, 3))
    assert FusedRecurrence("gru", 3, 4).native(torch.zeros(2, 5, 3))
    assert native.needed("gru+clipnorm:1", torch.device("cpu"))
    assert native.needed("irnn", torch.device("cpu")) and native.needed("rnn+tbptt:5", torch.device("cpu"))
    assert not native.needed("lstm", torch.device("cpu"))
    assert not native.needed("gru", torch.device("cuda"))


def test_records_say_which_ran_the_time_loops(kernel, monkeypatch):
    from bench.spec import RunSpec
    from bench.train import train

    spec = RunSpec(task="adding", mitigation="gru", length=10, seed=0, hidden=8, batch=4, budget=3,
                   eval_every=3, heldout_size=16, probe_size=4, device="cpu")
    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "1")
    a = train(spec)
    assert a["provenance"]["recurrence_backend"].startswith("native-")
    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "0")
    b = train(spec)
    assert b["provenance"]["recurrence_backend"] == "torch"
    # the same model either way: the losses agree to rounding
    assert a["final"]["train_loss"] == pytest.approx(b["final"]["train_loss"], rel=1e-4)
    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "1")
    assert train(dataclasses.replace(spec, mitigation="lstm"))["provenance"]["recurrence_backend"] == "torch"
