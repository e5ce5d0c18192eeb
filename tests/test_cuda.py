"""The GPU path. Tests that need CUDA skip with a reason on a machine without one; the clear
error for `device: cuda` without CUDA is tested everywhere."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

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


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_gpu_index_is_a_device_name_and_without_cuda_a_clear_error(tmp_path, capsys):
    """cuda:N is accepted by the spec and the CLI; here (no CUDA) the run becomes an error record
    naming what is available; a malformed name stops the CLI with the valid choices."""
    from bench.cli import main

    assert RunSpec(mitigation="lstm", device="cuda:1", **SPEC).device == "cuda:1"
    for bad in ("cuda:x", "gpu", "cuda:", " cpu", 0):
        with pytest.raises(BenchError, match=r"unknown device .*; valid choices: auto, cpu, cuda, cuda:N, cuda:any$"):
            RunSpec(mitigation="lstm", device=bad, **SPEC)
    args = ["run", "--task", "adding", "--length", "10", "--mitigation", "lstm", "--hidden", "8", "--batch", "8",
            "--budget", "3", "--eval-every", "3", "--heldout-size", "16", "--out", str(tmp_path / "r.json")]
    rec = run_safely(RunSpec(mitigation="lstm", device="cuda:1", **SPEC))  # as run-cell and the pipeline
    assert rec["outcome"] == "error" and rec["spec"]["device"] == "cuda:1"
    assert "'cuda:1' requested but CUDA is not available here; valid choices: auto, cpu" in rec["error"]["message"]
    assert main([*args, "--device", "cuda:1"]) == 2  # a single run stops with the message
    assert "error: device 'cuda:1' requested but CUDA is not available here" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
    with pytest.raises(SystemExit) as e:
        main([*args, "--device", "cuda:x"])
    assert e.value.code == 2
    assert "argument --device: unknown device 'cuda:x'; valid choices: auto, cpu, cuda, cuda:N" in capsys.readouterr().err


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


# -- cuda:any: one GPU per process, spread over the machine's GPUs (no GPU needed: locks only) ------

def test_cuda_any_takes_a_gpu_no_one_else_holds_and_waits_when_all_are_held(tmp_path):
    names, folder, said = ["GPU-a", "GPU-b"], str(tmp_path / "locks"), []
    a, b = devices.try_claim(names, folder), devices.try_claim(names, folder)
    assert (a[0], b[0]) == (0, 1)
    assert devices.try_claim(names, folder) is None
    with pytest.raises(BenchError, match=r"all 2 GPU\(s\) stayed held by other processes for 0.05 s"):
        devices.claim(names, folder, poll_s=0.01, timeout_s=0.05, say=said.append)
    assert "waiting for one" in said[0] and "--resources gpu=N" in said[0]
    said.clear()
    threading.Timer(0.2, os.close, [b[1]]).start()  # the job holding GPU 1 ends
    got = devices.claim(names, folder, poll_s=0.02, timeout_s=10, say=said.append)
    assert got[0] == 1 and len(said) == 2 and "GPU 1 is free now" in said[1]
    for fd in (a[1], got[1]):
        os.close(fd)


def test_a_killed_process_frees_its_gpu_and_locks_name_the_gpu_not_the_index(tmp_path):
    folder = str(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from bench import devices; "
         f"print(devices.try_claim(['GPU-a', 'GPU-b'], {folder!r})[0], flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "0"  # the other process holds GPU-a
        mine = devices.try_claim(["GPU-a", "GPU-b"], folder)
        assert mine[0] == 1
        os.close(mine[1])
        # a process that sees the GPUs in the other order (CUDA_VISIBLE_DEVICES=1,0) still skips GPU-a
        mine = devices.try_claim(["GPU-b", "GPU-a"], folder)
        assert mine[0] == 0
        os.close(mine[1])
        assert devices.try_claim(["GPU-a"], folder) is None
    finally:
        holder.kill()
        holder.wait()
    freed = devices.try_claim(["GPU-a"], folder)  # kill -9 left no claim behind
    assert freed is not None and freed[0] == 0
    os.close(freed[1])


def test_cuda_any_resolves_once_per_process_to_the_claimed_gpu(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(devices, "_gpu_uuid", lambda i: f"GPU-fake{i}")
    monkeypatch.setattr(devices, "_claimed", None)
    monkeypatch.setenv("BENCH_GPU_LOCK_DIR", str(tmp_path))
    other = devices.try_claim(["GPU-fake0"], str(tmp_path))  # another job holds GPU 0
    try:
        assert devices.resolve_device("cuda:any") == torch.device("cuda:1")
        assert devices.resolve_device("cuda:any") == torch.device("cuda:1")  # kept for the process
        assert sorted(os.listdir(tmp_path)) == ["gpu-GPU-fake0.lock", "gpu-GPU-fake1.lock"]
        with pytest.raises(BenchError, match=r"BENCH_PERF_DEVICE='cuda:any' is not a device; valid choices: cpu, cuda, cuda:N$"):
            devices.resolve_device("cuda:any", label="BENCH_PERF_DEVICE=", allow_auto=False)
    finally:
        os.close(other[1])
        if devices._claimed is not None:
            os.close(devices._claimed[1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_any_without_cuda_is_a_clear_error_record():
    rec = run_safely(RunSpec(mitigation="gru", device="cuda:any", **SPEC))
    assert rec["outcome"] == "error"
    assert "'cuda:any' requested but CUDA is not available here; valid choices: auto, cpu" in rec["error"]["message"]
