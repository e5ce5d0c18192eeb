"""The GPU path. Tests that need CUDA skip with a reason on a machine without one; the clear
error for `device: cuda` without CUDA is tested everywhere."""
from __future__ import annotations

import pytest
import torch

from bench import devices, perf
from bench.errors import BenchError
from bench.spec import RunSpec
from bench.train import resolve_device, run_safely, train

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
SPEC = dict(task="adding", length=10, seed=0, hidden=16, batch=16, budget=30, eval_every=10,
            heldout_size=100, probe_size=8)


def test_auto_picks_what_is_there():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error_record():
    with pytest.raises(BenchError, match="CUDA is not available"):
        resolve_device("cuda")
    rec = run_safely(RunSpec(mitigation="lstm", device="cuda", **SPEC))
    assert rec["outcome"] == "error" and "valid choices" in rec["error"]["message"]


def test_device_names_are_checked_in_one_place(monkeypatch):
    """bench.devices.resolve_device checks names for training and for the perf suite alike; what
    is here is faked (no GPU needed): names, a missing GPU, and a device index past the last GPU."""
    assert resolve_device is devices.resolve_device
    assert devices.resolve_device(" cpu ").type == "cpu"
    for bad in ("gpu", "cuda0", "cuda:x", "mps", ""):
        with pytest.raises(BenchError, match=r"is not a device; valid choices: auto, cpu, cuda, cuda:N"):
            devices.resolve_device(bad)
    with pytest.raises(BenchError, match=r"BENCH_PERF_DEVICE='auto' is not a device; valid choices: cpu, cuda, cuda:N"):
        perf.configure_device("auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve_device("auto").type == "cpu"
    with pytest.raises(BenchError, match=r"'cuda:0' requested but CUDA is not available here; valid choices: auto, cpu$"):
        devices.resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.resolve_device("auto") == torch.device("cuda")
    assert devices.resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(BenchError, match=r"this machine has 2 CUDA device\(s\); valid choices: cpu, cuda, cuda:0, cuda:1$"):
        devices.resolve_device("cuda:2", label="BENCH_PERF_DEVICE=", allow_auto=False)
    monkeypatch.setattr(perf, "DEVICE", "cpu")
    with pytest.raises(BenchError, match=r"BENCH_PERF_DEVICE='cuda:5': this machine has 2"):
        perf.configure_device("cuda:5")
    assert perf.DEVICE == "cpu" and perf.configure_device("cuda:1") == "cuda:1"


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("mitigation", ["rnn", "lstm", "gru", "ln_lstm", "bn_rnn", "lstm+tbptt:3+clipnorm:1"])
def test_training_on_cuda_records_the_gpu(mitigation):
    rec = train(RunSpec(mitigation=mitigation, device="cuda", **SPEC))
    assert rec["device"].startswith("cuda")
    assert rec["outcome"] in ("solved", "unsolved", "diverged")
    assert rec["provenance"]["device_name"] == torch.cuda.get_device_name(0)
    cpu = train(RunSpec(mitigation=mitigation, device="cpu", **SPEC))
    # same seed: the same data and init, so the first losses stay close (GPU kernels round differently)
    assert rec["curve"][0]["train_loss"] == pytest.approx(cpu["curve"][0]["train_loss"], rel=0.1)


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("mitigation", ["rnn+clipnorm:1", "lstm+clipvalue:0.5", "ln_lstm"])
def test_cuda_loop_without_host_sync_gives_the_per_step_checked_record(mitigation):
    """On CUDA the loss and gradient norm reach the host only at check points (no sync per
    step); the record equals the one checked every step, timings aside."""
    spec = RunSpec(mitigation=mitigation, device="cuda", **SPEC)
    a, b = train(spec, defer_host_checks=True), train(spec, defer_host_checks=False)
    for k in ("outcome", "steps", "diverged_at", "steps_to_solve"):
        assert a[k] == b[k], k
    # some CUDA kernels are not bit-reproducible run to run: the values agree to rounding
    assert a["grad_norm"]["trace"] == pytest.approx(b["grad_norm"]["trace"], rel=1e-3)
    assert a["grad_norm"]["frac_clipped"] == pytest.approx(b["grad_norm"]["frac_clipped"], abs=0.1)
    assert [r["step"] for r in a["curve"]] == [r["step"] for r in b["curve"]]
    assert train(spec)["timing"]["step_ms"]["median"] > 0  # CUDA-event timings are read back
