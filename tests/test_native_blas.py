"""The native kernel's per-step matrix products: BLAS's sgemm called directly on raw pointers
(normlstm.cpp `gemm_rows`) must give the same bits as the at::mm_out / addmm_ path it replaced,
for every recurrence that runs on the kernel, forward and backward, with and without truncation."""
import pytest
import torch

from bench.models import build_model, native, parse_mitigation
from bench.models.cells import NativeSeq
from bench.models.normseq import NormSeq
from bench.seeding import generator
from bench.tasks import make_task

KERNEL_MITIGATIONS = ["rnn", "irnn", "gru", "bn_rnn", "ln_rnn", "bn_lstm", "ln_lstm", "gru+tbptt:7",
                      "rnn+tbptt:7", "ln_lstm+tbptt:7"]


@pytest.fixture
def kernel(monkeypatch):
    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "1")
    k = native.kernel()
    assert k is not None, "the native kernel did not build here (see the warning above for the builder's reason)"
    was = k.blas_direct()
    yield k
    k.blas_direct(was)


def _run(mitigation, hidden, B=5, T=23):
    """Output and every parameter's gradient of one forward / backward on fixed weights and data."""
    task = make_task("adding", T)
    mit = parse_mitigation(mitigation)
    model = build_model(mit, task.n_in, task.n_out, task.readout, hidden, task.seq_len,
                        generator("init", "blas-test", mitigation, hidden), torch.device("cpu"))
    model.train()
    x, _ = task.sample(B, generator("data", "blas-test"))
    out = model(x)
    out.pow(2).sum().backward()
    return [out.detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("mitigation", KERNEL_MITIGATIONS)
@pytest.mark.parametrize("hidden", [8, 37])
def test_direct_sgemm_gives_the_bits_of_aten_mm(kernel, monkeypatch, mitigation, hidden):
    if not kernel.blas_direct(True):
        pytest.skip("this torch build exports no sgemm_: the kernel uses at::mm_out only")
    calls = []
    for fn in (NativeSeq, NormSeq):
        real = fn.apply
        monkeypatch.setattr(fn, "apply", lambda *a, _r=real: (calls.append(1), _r(*a))[1])
    direct = _run(mitigation, hidden)
    assert calls, f"{mitigation} did not run on the native kernel"
    assert kernel.blas_direct(False) is False
    aten = _run(mitigation, hidden)
    assert len(direct) == len(aten) > 2
    for a, b in zip(direct, aten):
        assert torch.equal(a, b), (mitigation, (a - b).abs().max().item())
    assert all(torch.isfinite(a).all() for a in direct)
