"""The GPU path. Tests that need CUDA skip with a reason on a machine without one; the clear
error for `device: cuda` without CUDA is tested everywhere."""
from __future__ import annotations

import pytest
import torch

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
