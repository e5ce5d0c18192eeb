"""The normalized cells' native kernel (bench/models/normlstm.cpp via bench.models.native): the
same function as the TorchScript / Python loops (to rounding) in every mode, the same numbers run to run,
and the ways it is switched off or falls back.

The kernel is built on first use (about a minute, once per machine); these tests need it to build
here (a C++ compiler and ninja, which the install brings), and fail -- with the builder's reason
in the warning -- where it does not."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from bench import provenance
from bench.models import native, normseq
from bench.models.cells import NormRecurrence


def _model(family, norm, H, T, dtype=torch.float32):
    """A model with fixed weights and running statistics, and the generator that made them."""
    g = torch.Generator().manual_seed(11)
    m = NormRecurrence(family, norm, 2, H, T).to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.5)
        for b in m.buffers():
            b.copy_(torch.rand(b.shape, generator=g, dtype=dtype) + 0.5)
    return m, g


def _run(norm, mode="train", tbptt=None, T=23, H=8, B=5, dtype=torch.float32, family="lstm"):
    """Outputs, gradients and buffers after one forward/backward from fixed weights and data."""
    m, g = _model(family, norm, H, T, dtype)
    m.train(mode != "eval")
    m.update_stats = mode != "frozen"
    x = torch.randn(B, T, 2, generator=g, requires_grad=True, dtype=dtype)
    hs = m(x, tbptt)
    (hs.sin() * torch.arange(T).view(1, T, 1)).sum().backward()
    names = ["hs", "x.grad"] + [f"{n}.grad" for n, _ in m.named_parameters()] + [n for n, _ in m.named_buffers()]
    return dict(zip(names, [hs.detach(), x.grad] + [p.grad for p in m.parameters()] + [b.clone() for b in m.buffers()]))


@pytest.fixture
def kernel():
    k = native.kernel()
    assert k is not None, "the native kernel did not build here (see the warning above for the builder's reason)"
    return k


@pytest.mark.parametrize("family", ["lstm", "rnn_tanh"])
@pytest.mark.parametrize("norm", ["ln", "bn"])
@pytest.mark.parametrize("mode", ["train", "eval", "frozen"])
@pytest.mark.parametrize("tbptt", [None, 6])
@pytest.mark.parametrize("H", [8, 13])  # 13: not a multiple of the 8-wide sums
def test_native_kernel_computes_what_the_torchscript_and_python_loops_compute(kernel, monkeypatch, family, norm,
                                                                               mode, tbptt, H):
    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "1")
    a = _run(norm, mode, tbptt, H=H, family=family)
    assert native.backend().startswith("native-")
    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "0")
    b = _run(norm, mode, tbptt, H=H, family=family)
    assert a.keys() == b.keys()
    for k in a:
        u, v = a[k], b[k]
        assert u is not None and v is not None, k
        scale = v.abs().max().item()
        torch.testing.assert_close(u, v, rtol=2e-4, atol=2e-5 * max(scale, 1e-3), msg=k)
    # not just equal by accident of a no-op: the running statistics moved in train mode only
    if norm == "bn":
        moved = not torch.equal(a["rm_h"], _fresh_buffers(family, norm, H)["rm_h"])
        assert moved == (mode == "train")


def _fresh_buffers(family, norm, H, T=23):
    return dict(_model(family, norm, H, T)[0].named_buffers())


@pytest.mark.parametrize("family", ["lstm", "rnn_tanh"])
@pytest.mark.parametrize("norm", ["ln", "bn"])
def test_native_kernel_gives_the_same_numbers_run_to_run(kernel, monkeypatch, family, norm):
    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "1")
    a, b = (_run(norm, T=40, H=16, B=9, family=family) for _ in range(2))
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("family", ["lstm", "rnn_tanh"])
@pytest.mark.parametrize("norm", ["ln", "bn"])
def test_native_gradients_match_finite_differences_of_the_native_forward(kernel, monkeypatch, family, norm):
    """The test above compares the kernel with the other loops; this one checks its backward
    against central differences of its own forward (float32, so loosely)."""
    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "1")
    g = torch.Generator().manual_seed(3)
    m = NormRecurrence(family, norm, 2, 4, 6)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    m.update_stats = False  # batch statistics, but no running-statistics update between the evaluations
    x = torch.randn(3, 6, 2, generator=g, requires_grad=True)
    w = torch.randn(3, 6, 4, generator=g)
    loss = (m(x) * w).sum()
    (gx,) = torch.autograd.grad(loss, x)
    eps = 1e-2
    for idx in [(0, 0, 0), (1, 3, 1), (2, 5, 0)]:
        xp, xm = x.detach().clone(), x.detach().clone()
        xp[idx] += eps
        xm[idx] -= eps
        with torch.no_grad():
            fd = ((m(xp) * w).sum() - (m(xm) * w).sum()) / (2 * eps)
        assert abs(fd.item() - gx[idx].item()) <= 2e-2 * max(1.0, abs(fd.item())), idx


def test_float64_and_other_devices_use_the_torchscript_loops(monkeypatch):
    """The kernel is float32-only: float64 models run the TorchScript loops, not a wrong kernel."""
    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "1")
    assert normseq.native_kernel_for(torch.zeros(2, 2, 8, dtype=torch.float64)) is None
    a = _run("bn", dtype=torch.float64)
    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "0")
    b = _run("bn", dtype=torch.float64)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_switched_off_it_is_never_built(monkeypatch):
    from torch.utils import cpp_extension

    def no_build(*a, **k):
        raise AssertionError("built although BENCH_NORMSEQ_NATIVE=0")

    monkeypatch.setattr(cpp_extension, "load", no_build)
    monkeypatch.setattr(native, "_STATE", {})
    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "0")
    assert native.kernel() is None
    _run("ln")
    assert native.backend() in ("torchscript", "python")


def test_a_failing_build_falls_back_to_the_torchscript_loops_with_a_warning(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "0")
    want = _run("ln")
    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "1")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_STATE", {})

    def broken(*a, **k):
        raise RuntimeError("Error building extension 'x'\ng++: not found")

    monkeypatch.setattr(cpp_extension, "load", broken)
    with pytest.warns(UserWarning, match=r"cannot be built here \(RuntimeError: g\+\+: not found\).*TorchScript"):
        assert native.kernel() is None
    got = _run("ln")
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert native.backend() in ("torchscript", "python")


def test_a_lock_left_by_a_killed_build_does_not_block_the_next(monkeypatch, tmp_path):
    """torch's builder waits while its `lock` file exists; a build killed mid-way leaves it. Builds
    are serialised by an OS lock here, so a `lock` seen inside it is stale and is removed."""
    from torch.utils import cpp_extension

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_STATE", {})
    seen = {}

    def fake_load(name, sources, extra_cflags, build_directory, verbose):
        from pathlib import Path

        seen["lock_present"] = (Path(build_directory) / "lock").exists()
        seen["flags"] = extra_cflags
        return "module"

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    # the directory the builder will use, with a stale lock inside
    name_dir = native.build_dir()
    assert name_dir.parent == tmp_path
    name_dir.mkdir(parents=True)
    (name_dir / "lock").write_text("")
    assert native.kernel() == "module"
    assert seen["lock_present"] is False
    assert not (name_dir / "lock").exists()
    assert "-O3" in seen["flags"]


@pytest.mark.parametrize("stamped", [False, True])
def test_a_library_from_an_unfinished_build_is_never_imported(monkeypatch, tmp_path, stamped):
    """A build killed while linking can leave a truncated library, and importing one kills the
    process (SIGBUS). Only a library with a matching completion stamp is imported; otherwise the
    folder's build products are removed (ninja would call them up to date) and it is rebuilt."""
    from torch.utils import cpp_extension

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_STATE", {})
    d = native.build_dir()
    so = d / f"{d.name}.so"
    seen = []

    def fake_load(**k):
        seen.append((so.exists(), (d / "normlstm.o").exists()))
        so.write_bytes(b"a finished library")
        return "rebuilt"

    def must_not_import(name, path):
        raise AssertionError("imported a library from an unfinished build")

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    monkeypatch.setattr(native, "_import_built", must_not_import)
    d.mkdir(parents=True)
    (d / "normlstm.o").write_bytes(b"truncated object")
    so.write_bytes(b"truncated")
    if stamped:  # a stamp of another library (size differs): still not this one
        (d / f"{d.name}.so.complete").write_text("123456 1")
    assert native.kernel() == "rebuilt"
    assert seen == [(False, False)]
    assert (d / f"{d.name}.so.complete").read_text() == native._stamp(so)  # this build finished


def test_a_library_that_does_not_import_is_rebuilt(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_STATE", {})
    d = native.build_dir()
    so = d / f"{d.name}.so"
    d.mkdir(parents=True)
    so.write_bytes(b"stamped but not a library")
    (d / f"{d.name}.so.complete").write_text(native._stamp(so))
    monkeypatch.setattr(native, "_import_built", lambda name, path: None)
    monkeypatch.setattr(cpp_extension, "load", lambda **k: "rebuilt" if not so.exists() else "stale")
    assert native.kernel() == "rebuilt"


def test_the_build_folder_is_keyed_by_source_flags_and_interpreter(monkeypatch, tmp_path):
    """Another source (an edited kernel) or other flags get another folder, so a stale library is
    never imported; the same source at another path (another checkout) gets the same folder."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    here = native.build_dir()
    assert f"_py{sys.version_info[0]}{sys.version_info[1]}_" in here.name
    copy = tmp_path / "elsewhere" / "normlstm.cpp"
    copy.parent.mkdir()
    copy.write_bytes(native._SRC.read_bytes())
    monkeypatch.setattr(native, "_SRC", copy)
    assert native.build_dir() == here
    copy.write_bytes(native._SRC.read_bytes() + b"\n// edited\n")
    assert native.build_dir() != here
    copy.write_bytes(native._SRC.read_bytes()[: -len(b"\n// edited\n")])
    assert native.build_dir() == here
    monkeypatch.setattr(native, "_flags", lambda: ("avx2", ["-O2"]))
    assert native.build_dir() != here


def test_a_built_kernel_loads_without_torchs_extension_loader(kernel):
    """Once built, a process imports the library directly: torch.utils.cpp_extension (0.25 s to
    import, plus ninja's up-to-date check) is not touched, and the kernel runs."""
    code = ("import sys, torch; from bench.models import native; k = native.kernel(); "
            "assert k is not None; assert 'torch.utils.cpp_extension' not in sys.modules, 'loader imported'; "
            "print(native.backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "BENCH_NORMSEQ_NATIVE": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("native-")


def test_provenance_names_what_ran_the_normalized_cells_loops(kernel):
    m = NormRecurrence("lstm", "bn", 2, 8, 5)
    assert provenance.provenance(torch.device("cpu"), 1, m)["normseq_backend"].startswith("native-")
    assert provenance.provenance(torch.device("cpu"), 1, torch.nn.LSTM(2, 8))["normseq_backend"] is None
    assert provenance.provenance(None, 1)["normseq_backend"] is None


def test_train_records_which_loops_ran(kernel):
    from bench.spec import RunSpec
    from bench.train import train

    rec = train(RunSpec(task="adding", length=12, mitigation="ln_rnn", seed=0, budget=3, eval_every=3,
                        hidden=8, batch=4, heldout_size=16, probe_size=4))
    assert rec["provenance"]["normseq_backend"].startswith("native-")
    rec = train(RunSpec(task="adding", length=12, mitigation="rnn", seed=0, budget=3, eval_every=3,
                        hidden=8, batch=4, heldout_size=16, probe_size=4))
    assert rec["provenance"]["normseq_backend"] is None


@pytest.mark.parametrize("native_on", ["1", "0"])
@pytest.mark.parametrize("family", ["lstm", "rnn_tanh"])
def test_bn_cells_longer_than_their_statistics_are_refused_on_either_path(monkeypatch, native_on, family):
    """bn_lstm's and bn_rnn's input-term batch norm keeps statistics for max_steps steps; the
    native kernel (which normalizes the input term itself) refuses longer sequences as the other
    path does."""
    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", native_on)
    m = NormRecurrence(family, "bn", 2, 8, 5)
    with pytest.raises(ValueError, match="sequence of 7 steps longer than max_steps=5"):
        m(torch.zeros(3, 7, 2))


def _tiny(mitigation):
    from bench.spec import RunSpec

    return RunSpec(task="adding", length=12, mitigation=mitigation, seed=0, budget=3, eval_every=3, hidden=8,
                   batch=4, heldout_size=16, probe_size=4, device="cpu")


def test_a_first_time_build_is_not_counted_in_the_runs_time(kernel, monkeypatch):
    """train() builds (or loads) the kernel before its clock starts: a slow first build must not
    show in wall_s or time_to_solve_s of the run that happened to trigger it."""
    import time

    from bench.train import train

    calls = []

    def slow_build():
        calls.append(time.perf_counter())
        if len(calls) == 1:
            time.sleep(3.0)  # a build
        return kernel

    monkeypatch.setattr(native, "kernel", slow_build)
    rec = train(_tiny("bn_lstm"))
    assert len(calls) >= 1
    assert rec["timing"]["wall_s"] < 3.0
    calls.clear()
    train(_tiny("lstm"))  # no normalized cell: nothing asked for
    assert calls == []


def test_cli_native_builds_only_for_sweeps_that_need_it(kernel, capsys):
    from bench.cli import main

    assert main(["native", "--mitigations", "lstm", "lstm_chrono+clipnorm:1", "--device", "cpu"]) == 0
    assert "nothing to build" in capsys.readouterr().err
    assert main(["native", "--mitigations", "lstm", "gru+clipnorm:1", "--device", "cpu"]) == 0
    assert "native kernel ready" in capsys.readouterr().err
    assert main(["native", "--mitigations", "lstm", "bn_rnn+tbptt:5", "--device", "cpu"]) == 0
    assert "native kernel ready" in capsys.readouterr().err
    assert main(["native"]) == 0
    assert "native kernel ready" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["native", "--device", "tpu"])
    assert e.value.code == 2
    assert "argument --device: unknown device 'tpu'; valid choices: auto, cpu, cuda, cuda:N" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:2", "cuda:any"])
def test_cli_native_for_a_gpu_that_is_not_here_builds_nothing_and_does_not_fail(device, monkeypatch, capsys):
    """The pipeline's onstart runs `bench native --device <config's device>` where Snakemake runs,
    which on a cluster is a login node without the GPU the jobs get: not an error there."""
    from bench.cli import main

    monkeypatch.setattr(native, "kernel", lambda: pytest.fail("built a kernel for a GPU sweep"))
    assert main(["native", "--mitigations", "ln_lstm", "--device", device]) == 0
    err = capsys.readouterr().err
    assert f"--device {device}: CUDA is not available here" in err and "nothing to build" in err


def test_cli_native_reports_a_kernel_that_cannot_be_built_without_failing(monkeypatch, capsys):
    from bench.cli import main

    monkeypatch.setattr(native, "kernel", lambda: None)
    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "1")
    assert main(["native", "--mitigations", "ln_lstm", "--device", "cpu"]) == 0
    assert "native kernel unavailable" in capsys.readouterr().err
