"""The perf suite's measuring helpers (bench.perf) that are not benchmarks themselves."""
from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import perf, runtime
from bench.errors import BenchError


def test_settle_does_nothing_without_the_pinned_allocator(monkeypatch):
    monkeypatch.setattr(runtime, "MALLOC_MODE", "default")
    calls = []
    assert perf.settle([lambda: calls.append(1)]) == 0
    assert calls == []


def test_settle_stops_at_the_first_cycle_without_page_faults(monkeypatch):
    monkeypatch.setattr(runtime, "MALLOC_MODE", "pinned")
    calls = []
    assert perf.settle([lambda: calls.append(1), lambda: calls.append(2)], max_rounds=5) == 1
    assert calls == [1, 2]


def test_settle_gives_up_after_max_rounds_while_memory_keeps_growing(monkeypatch):
    monkeypatch.setattr(runtime, "MALLOC_MODE", "pinned")
    kept = []

    def grow():  # fresh pages every call: 16 MiB mapped from the OS (not from the heap, which earlier
        # tests may have left with free pages to reuse), kept and touched
        b = mmap.mmap(-1, 16 << 20)
        for i in range(0, len(b), 4096):
            b[i] = 1
        kept.append(b)

    assert perf.settle([grow], max_rounds=3) == 3
    assert len(kept) == 3


# -- the device the suite runs on (BENCH_PERF_DEVICE) ---------------------------------------------
ROOT = Path(__file__).resolve().parent.parent


def test_configure_device_names_the_valid_choices(monkeypatch):
    monkeypatch.setattr(perf, "DEVICE", "cpu")
    assert perf.configure_device(None) == "cpu" and perf.configure_device(" cpu ") == "cpu"
    for bad in ("gpu", "cuda0", "cuda:x", "mps"):
        with pytest.raises(BenchError, match="valid choices: cpu, cuda, cuda:N"):
            perf.configure_device(bad)
    assert perf.DEVICE == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_configure_device_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(perf, "DEVICE", "cpu")
    with pytest.raises(BenchError, match="CUDA is not available here; valid choices: cpu"):
        perf.configure_device("cuda:0")
    assert perf.DEVICE == "cpu"


def test_perf_suite_refuses_an_unknown_device_before_running_anything():
    r = subprocess.run([sys.executable, "-m", "pytest", "perf", "-q", "--collect-only", "-p", "no:cacheprovider"],
                       cwd=ROOT, env={**os.environ, "BENCH_PERF_DEVICE": "tpu"},
                       capture_output=True, text=True)
    assert r.returncode == 4, r.stdout + r.stderr  # pytest's usage error
    assert "BENCH_PERF_DEVICE='tpu' is not a device; valid choices" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("var,value,choices", [("BENCH_PERF_MALLOC", "glibc", "pinned, default"),
                                               ("BENCH_PERF_QUICK", "yes", "0, 1")])
def test_perf_suite_refuses_an_unknown_switch_value_before_running_anything(var, value, choices):
    r = subprocess.run([sys.executable, "-m", "pytest", "perf", "-q", "--collect-only", "-p", "no:cacheprovider"],
                       cwd=ROOT, env={**os.environ, var: value}, capture_output=True, text=True)
    assert r.returncode == 4, r.stdout + r.stderr  # pytest's usage error
    assert f"{var}={value!r} is not a valid setting; valid choices: {choices}" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("name", ["rnn+clipnorm:1", "lstm+clipvalue:0.5", "ln_lstm", "gru+tbptt:5"])
def test_engine_step_with_deferred_host_checks_computes_the_same_step(name):
    """The CUDA form of EngineStep (loss and gradient norm left on the device, one sync at the end
    of the step) trains exactly as the per-step-checked form; here both on the CPU."""
    a = perf.EngineStep(name, 20, 8, batch=8, heldout_size=32, device="cpu", defer_host_checks=False)
    b = perf.EngineStep(name, 20, 8, batch=8, heldout_size=32, device="cpu", defer_host_checks=True)
    for _ in range(4):
        a()
        b()
    assert all(isinstance(v, torch.Tensor) for v in b.losses + b.gnorms)
    assert a.losses == [float(v) for v in b.losses]
    assert a.gnorms == [float(v) for v in b.gnorms]
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    perf.mirror_check(name, device="cpu", defer_host_checks=True)


def test_bare_round_waits_for_the_device_only_at_the_end():
    bare = perf.BareStep("gru", 10, 8, batch=4, device="cpu")
    seen = []
    orig = perf._sync
    try:
        perf._sync = lambda dev: seen.append(bare.sync_each)
        perf.bare_round(bare, 3)
        bare()
    finally:
        perf._sync = orig
    assert seen == [False, True]  # one sync after the 3 loop steps; a plain call syncs itself
    assert bare.sync_each is True


# -- perf/check.py ----------------------------------------------------------------------------------
def _bench_json(step_s: float, device: str = "cpu", ref_s: float = 0.010, **info):
    def b(name, med, **extra):
        return {"name": f"test_step[{name}]", "fullname": f"perf/test_perf.py::test_step[{name}]",
                "stats": {"median": med}, "options": {"timer": "process_time"},
                "extra_info": {"kind": "step", "name": name, "hidden": 64, "T": 100, "batch": 64,
                               "malloc": "pinned", "device": device, "ref_times": [ref_s] * 3, **info, **extra}}
    return {"benchmarks": [b("bn_lstm", step_s), b("lstm", ref_s)], "commit_info": {"id": "x" * 40}}


def _check(tmp_path, *args):
    return subprocess.run([sys.executable, str(ROOT / "perf" / "check.py"), *map(str, args),
                           "--report", str(tmp_path / "out.md")], capture_output=True, text=True, cwd=ROOT)


def test_check_fails_on_a_regressed_ratio_and_passes_within_tolerance(tmp_path):
    base, slow, same = tmp_path / "base.json", tmp_path / "slow.json", tmp_path / "same.json"
    (tmp_path / "a.json").write_text(json.dumps(_bench_json(0.020)))
    slow.write_text(json.dumps(_bench_json(0.030)))   # bn_lstm 2.0x -> 3.0x the reference: +50%
    same.write_text(json.dumps(_bench_json(0.022)))   # +10%, inside the default 25%
    r = _check(tmp_path, tmp_path / "a.json", "--save-baseline", "--baseline", base)
    assert r.returncode == 0, r.stderr
    saved = json.loads(base.read_text())
    assert saved["ratios"]["step/h64-T100/bn_lstm"] == 2.0 and saved["measured"]["device"] == "cpu"
    r = _check(tmp_path, slow, "--baseline", base, "--no-retry")
    assert r.returncode == 1 and "REGRESSED" in r.stdout and "step/h64-T100/bn_lstm" in r.stdout
    r = _check(tmp_path, same, "--baseline", base, "--no-retry")
    assert r.returncode == 0 and "OK: no ratio regressed" in r.stdout


def test_save_baseline_keep_larger_keeps_the_larger_ratio_of_each_key(tmp_path):
    """A baseline that holds on two machines of one kind: per ratio the larger of the two runs;
    every save is listed under 'history', oldest first, with how its ratios entered."""
    base = tmp_path / "base.json"
    (tmp_path / "a.json").write_text(json.dumps(_bench_json(0.020)))   # 2.0
    (tmp_path / "b.json").write_text(json.dumps(_bench_json(0.030)))   # 3.0 on the other machine
    (tmp_path / "c.json").write_text(json.dumps(_bench_json(0.015)))   # 1.5
    assert _check(tmp_path, tmp_path / "a.json", "--save-baseline", "--baseline", base).returncode == 0
    first = json.loads(base.read_text())["measured"]
    assert _check(tmp_path, tmp_path / "b.json", "--save-baseline", "--keep-larger", "--baseline", base).returncode == 0
    saved = json.loads(base.read_text())
    assert saved["ratios"]["step/h64-T100/bn_lstm"] == 3.0 and saved["measured"]["date"] == first["date"]
    assert "before" not in saved["measured"] and saved["about"] == json.loads(base.read_text())["about"]
    assert [h["how"] for h in saved["history"]] == ["saved: 2 ratios written",
                                                    "--keep-larger: 1 of 2 ratios raised, the rest kept"]  # bn_lstm raised, lstm (the reference) not
    assert _check(tmp_path, tmp_path / "c.json", "--save-baseline", "--keep-larger", "--baseline", base).returncode == 0
    assert json.loads(base.read_text())["ratios"]["step/h64-T100/bn_lstm"] == 3.0  # not lowered
    assert _check(tmp_path, tmp_path / "c.json", "--save-baseline", "--baseline", base).returncode == 0
    assert json.loads(base.read_text())["ratios"]["step/h64-T100/bn_lstm"] == 1.5  # a plain save replaces
    assert len(json.loads(base.read_text())["history"]) == 4
    assert _check(tmp_path, tmp_path / "c.json", "--save-baseline", "--replace", "--baseline", base).returncode == 0
    assert [h["how"] for h in json.loads(base.read_text())["history"]] == ["--replace: 2 ratios written"]
    r = _check(tmp_path, tmp_path / "c.json", "--save-baseline", "--keep-larger", "--replace", "--baseline", base)
    assert r.returncode == 2 and "exclude each other" in r.stderr


def test_save_baseline_keys_matching_replaces_only_those_keys(tmp_path):
    base = tmp_path / "base.json"
    (tmp_path / "a.json").write_text(json.dumps(_bench_json(0.020)))   # bn_lstm 2.0, lstm 1.0
    b = _bench_json(0.015)
    b["benchmarks"][1]["stats"]["median"] = 0.012  # lstm 1.2
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert _check(tmp_path, tmp_path / "a.json", "--save-baseline", "--baseline", base).returncode == 0
    first = json.loads(base.read_text())["measured"]
    r = _check(tmp_path, tmp_path / "b.json", "--save-baseline", "--keys-matching", "/bn_", "--baseline", base)
    assert r.returncode == 0, r.stderr
    saved = json.loads(base.read_text())
    assert saved["ratios"] == {"step/h64-T100/bn_lstm": 1.5, "step/h64-T100/lstm": 1.0}  # lstm kept, not 1.2
    assert saved["history"][-1]["how"] == "--keys-matching '/bn_': 1 ratios replaced, the other 1 kept"
    assert len(saved["history"]) == 2 and saved["history"][0]["commit"] == (first["commit"] or "?")[:10]
    r = _check(tmp_path, tmp_path / "b.json", "--save-baseline", "--keys-matching", "/gru", "--baseline", base)
    assert r.returncode == 2 and "no ratio of" in r.stderr and "baseline unchanged" in r.stderr
    r = _check(tmp_path, tmp_path / "b.json", "--save-baseline", "--keys-matching", "(", "--baseline", base)
    assert r.returncode == 2 and "is not a regular expression" in r.stderr and "Traceback" not in r.stderr
    r = _check(tmp_path, tmp_path / "b.json", "--save-baseline", "--keys-matching", "x", "--keep-larger", "--baseline", base)
    assert r.returncode == 2 and "excludes --replace and --keep-larger" in r.stderr
    assert json.loads(base.read_text()) == saved


def test_check_never_compares_one_device_with_another(tmp_path):
    base = tmp_path / "base.json"
    (tmp_path / "cpu.json").write_text(json.dumps(_bench_json(0.020)))
    (tmp_path / "gpu.json").write_text(json.dumps(_bench_json(0.020, device="cuda:0")))
    assert _check(tmp_path, tmp_path / "cpu.json", "--save-baseline", "--baseline", base).returncode == 0
    r = _check(tmp_path, tmp_path / "gpu.json", "--baseline", base)
    assert r.returncode == 2 and "measured on cuda, the baseline" in r.stderr and "on cpu" in r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "perf" / "check.py"), "--compare", tmp_path / "cpu.json",
                        tmp_path / "gpu.json"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "not comparable" in r.stderr


def _check_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("perf_check", ROOT / "perf" / "check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("recorded", [True, False, None])
def test_check_retries_and_saves_in_the_mode_the_result_was_measured_in(tmp_path, monkeypatch, recorded):
    """A regressed node is re-run in the result's own mode (quick or full, as its benchmarks
    recorded it), whatever BENCH_PERF_QUICK says in check.py's environment; a saved baseline
    records that mode too (None: a result from before the mode was recorded)."""
    check = _check_module()
    data = _bench_json(0.020, quick=recorded) if recorded is not None else _bench_json(0.020)
    assert check.recorded_quick(data) is recorded
    seen = {}

    def fake_run(cmd, env=None, **kw):
        seen["env"] = env
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="")

    with monkeypatch.context() as m:  # the subprocess module is the one _check below uses too
        m.setattr(check.subprocess, "run", fake_run)
        m.setenv("BENCH_PERF_QUICK", "1" if recorded is False else "0")  # the other mode
        check.rerun(["perf/test_perf.py::test_step[x]"], "process_time", check.recorded_quick(data))
    want = {True: "1", False: "0", None: "1" if recorded is False else "0"}[recorded]
    assert seen["env"]["BENCH_PERF_QUICK"] == want
    (tmp_path / "a.json").write_text(json.dumps(data))
    base = tmp_path / "base.json"
    assert _check(tmp_path, tmp_path / "a.json", "--save-baseline", "--baseline", base).returncode == 0
    saved = json.loads(base.read_text())
    assert saved["measured"]["quick"] is recorded and saved["history"][-1]["quick"] is recorded


@pytest.mark.parametrize("recorded", ["cuda:1", "cpu", None])
def test_check_retries_on_the_device_the_result_was_measured_on(monkeypatch, recorded):
    """A regressed node is re-run on the device its benchmarks recorded, whatever BENCH_PERF_DEVICE
    says in check.py's environment (a result from before the device was recorded: the environment's)."""
    check = _check_module()
    data = _bench_json(0.020)
    for b in data["benchmarks"]:
        b["extra_info"].pop("device", None)
        if recorded is not None:
            b["extra_info"]["device"] = recorded
    seen = {}

    def fake_run(cmd, env=None, **kw):
        seen["env"] = env
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="")

    with monkeypatch.context() as m:
        m.setattr(check.subprocess, "run", fake_run)
        m.setenv("BENCH_PERF_DEVICE", "cuda:0")
        check.rerun(["perf/test_perf.py::test_step[x]"], "process_time", None, check.extra_of(data, "device"))
    assert seen["env"]["BENCH_PERF_DEVICE"] == (recorded or "cuda:0")


def test_every_benchmark_records_how_the_suite_ran(monkeypatch):
    monkeypatch.setenv("BENCH_PERF_QUICK", "1")
    assert perf.run_info() == {"malloc": runtime.MALLOC_MODE, "quick": True, "device": "cpu", "device_name": "cpu"}
    monkeypatch.setenv("BENCH_PERF_QUICK", "0")
    assert perf.run_info()["quick"] is False
    monkeypatch.setenv("BENCH_PERF_QUICK", "yes")
    with pytest.raises(BenchError, match="BENCH_PERF_QUICK"):
        perf.run_info()


@pytest.mark.parametrize("brand,kind", [
    ("AMD EPYC 9R14 96-Core Processor", "AMD EPYC"), ("AMD EPYC", "AMD EPYC"),
    ("Intel(R) Xeon(R) Processor", "Intel Xeon"), ("Intel(R) Xeon(R) Platinum 8488C", "Intel Xeon"),
    ("Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz", "Intel Core"), ("Apple M2 Pro", "Apple M2"),
    ("ARMv8 Neoverse-N1", "ARMv8 Neoverse-N1"), ("", "unknown CPU")])
def test_cpu_kind_names_vendor_and_line(brand, kind):
    assert _check_module().cpu_kind(brand) == kind


def test_check_keeps_one_baseline_per_kind_of_cpu(tmp_path, monkeypatch, capsys):
    """Without --baseline, CPU results are checked against their kind of CPU's baseline: perf/baseline.json
    (here AMD EPYC's) or perf/baseline-<kind>.json; --save-baseline on another kind writes that kind's file
    and leaves the first alone; a kind without a baseline is checked against perf/baseline.json, with a note."""
    check = _check_module()
    monkeypatch.setattr(check, "BASELINE", tmp_path / "baseline.json")
    monkeypatch.setattr(check, "ROOT", tmp_path)

    def result(name, step_s, brand):
        d = _bench_json(step_s)
        d["machine_info"] = {"cpu": {"brand_raw": brand}}
        (tmp_path / name).write_text(json.dumps(d))
        return str(tmp_path / name)

    def run(*args):
        rc = check.main([*args, "--no-retry", "--report", str(tmp_path / "out.md")])
        return rc, capsys.readouterr().out

    amd = result("amd.json", 0.020, "AMD EPYC 7B13 64-Core Processor")          # bn_lstm 2.0x the reference
    intel = result("intel.json", 0.030, "Intel(R) Xeon(R) Processor")           # 3.0x: +50% on AMD's baseline
    assert run(amd, "--save-baseline")[0] == 0
    base = json.loads((tmp_path / "baseline.json").read_text())
    (tmp_path / "baseline.json").write_text(json.dumps({**base, "tolerance": 0.4}))
    amd_base = json.loads((tmp_path / "baseline.json").read_text())
    assert amd_base["measured"]["cpu"] == "AMD EPYC" and amd_base["measured"]["cpu_brand"].startswith("AMD EPYC 7B13")
    rc, out = run(intel)  # no Intel baseline yet: AMD's, with a note, and the +50% fails
    assert rc == 1 and "no baseline for Intel Xeon CPUs yet" in out and "REGRESSED" in out
    assert run(intel, "--save-baseline")[0] == 0
    assert json.loads((tmp_path / "baseline.json").read_text()) == amd_base  # untouched
    intel_base = json.loads((tmp_path / "baseline-intel-xeon.json").read_text())
    assert intel_base["measured"]["cpu"] == "Intel Xeon" and intel_base["ratios"]["step/h64-T100/bn_lstm"] == 3.0
    assert intel_base["tolerance"] == amd_base["tolerance"] == 0.4  # a new kind's baseline takes baseline.json's
    rc, out = run(intel)
    assert rc == 0 and "against baseline-intel-xeon.json" in out and "no baseline for" not in out
    rc, out = run(result("intel2.json", 0.045, "Intel(R) Xeon(R) Platinum 8488C"))  # +50% on Intel's own
    assert rc == 1 and "against baseline-intel-xeon.json" in out and "REGRESSED" in out
    rc, out = run(amd)
    assert rc == 0 and "against baseline.json" in out


def test_check_without_a_baseline_for_the_device_says_so(tmp_path, monkeypatch, capsys):
    """No --baseline and none yet for the device (GPU results, perf/baseline-cuda.json): every ratio is
    new, said with the command that saves one."""
    check = _check_module()
    monkeypatch.setattr(check, "BASELINE_CUDA", tmp_path / "baseline-cuda.json")
    (tmp_path / "gpu.json").write_text(json.dumps(_bench_json(0.020, device="cuda")))
    rc = check.main([str(tmp_path / "gpu.json"), "--no-retry", "--report", str(tmp_path / "out.md")])
    out = capsys.readouterr().out
    assert rc == 0 and "no baseline at" in out and "--save-baseline" in out


def test_check_refuses_a_named_baseline_that_is_not_there_or_not_a_baseline(tmp_path):
    """--baseline naming a missing file (a typo would otherwise pass every check: all ratios "new") or a
    file that is not a baseline: exit 2 with the reason; --save-baseline still creates a new one."""
    (tmp_path / "a.json").write_text(json.dumps(_bench_json(0.020)))
    r = _check(tmp_path, tmp_path / "a.json", "--baseline", tmp_path / "typo.json")
    assert r.returncode == 2 and "no baseline at" in r.stderr and "perf/baseline.json" in r.stderr
    assert "--save-baseline --baseline" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "junk.json").write_text("not json")
    r = _check(tmp_path, tmp_path / "a.json", "--baseline", tmp_path / "junk.json")
    assert r.returncode == 2 and "cannot read the baseline" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "list.json").write_text(json.dumps({"ratios": [2.0]}))
    r = _check(tmp_path, tmp_path / "a.json", "--baseline", tmp_path / "list.json")
    assert r.returncode == 2 and "is not a baseline" in r.stderr
    r = _check(tmp_path, tmp_path / "a.json", "--baseline", tmp_path / "new.json", "--save-baseline")
    assert r.returncode == 0 and json.loads((tmp_path / "new.json").read_text())["ratios"]


@pytest.mark.parametrize("tol", ["-0.1", "nan", "inf"])
def test_check_refuses_a_tolerance_that_is_not_a_growth(tmp_path, tol):
    (tmp_path / "a.json").write_text(json.dumps(_bench_json(0.020)))
    for args in ([tmp_path / "a.json"], ["--compare", tmp_path / "a.json", tmp_path / "a.json"]):
        r = _check(tmp_path, *args, f"--tolerance={tol}")
        assert r.returncode == 2 and "--tolerance must be a finite number >= 0" in r.stderr, r.stdout + r.stderr


# -- target 5's bound (stacking seeds: not implemented, its best case measured) ----------------------
def test_stack_bound_steps_time_one_big_batch_against_s_separate_runs(monkeypatch):
    made = []
    real = perf.EngineStep

    def spy(*a, **k):
        made.append(real(*a, **k))
        return made[-1]

    monkeypatch.setattr(perf, "EngineStep", spy)
    stacked, separate, per_model, _ = perf.stack_bound_steps("ln_lstm", 6, 8, S=3, batch=4)
    runs = made[1:4]
    assert stacked is made[0] and stacked.batch == 12
    assert [r.batch for r in runs] == [4, 4, 4] and len({float(r.params[0].detach().sum()) for r in runs}) == 3  # 3 seeds
    stacked()
    separate()
    separate()
    assert len(stacked.losses) == 1 and [len(r.losses) for r in runs] == [2, 2, 2]
    # the per-model part: each run's own batch draw, forward and backward, no update, no gradient left behind
    before = [[p.detach().clone() for p in r.params] for r in runs]
    streams = [r.data.gen.get_state() for r in runs]
    calls = []
    for r in runs:
        monkeypatch.setattr(r.model, "forward", lambda x, f=r.model.forward: calls.append(x.shape) or f(x))
    per_model()
    assert calls == [(4, 6, runs[0].task.n_in)] * 3
    assert all(not torch.equal(s, r.data.gen.get_state()) for s, r in zip(streams, runs))  # each seed drew its batch
    assert all(p.grad is None for r in runs for p in r.params)
    assert all(torch.equal(a, p) for r, ps in zip(runs, before) for a, p in zip(ps, r.params))
    assert [len(r.losses) for r in runs] == [2, 2, 2]


@pytest.mark.parametrize("name", ["rnn", "ln_lstm", "lstm+clipnorm:1"])
def test_lockstep_steps_each_run_as_its_separate_steps_do(monkeypatch, name):
    """Target 5's lockstep: the S runs' steps phase by phase give each run the same losses,
    gradient norms and weights as its steps one after the other, bit for bit."""
    made = []
    real = perf.EngineStep
    monkeypatch.setattr(perf, "EngineStep", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    _, separate, _, _ = perf.stack_bound_steps(name, 6, 8, S=3, batch=4)
    _, _, _, lockstep = perf.stack_bound_steps(name, 6, 8, S=3, batch=4)
    runs_a, runs_b = made[1:4], made[5:8]  # each call: the batch-12 step, then the 3 runs
    assert [r.batch for r in runs_a + runs_b] == [4] * 6
    for _ in range(3):
        separate()
        lockstep()
    assert len({r.losses[0] for r in runs_a}) == 3  # three seeds, three different runs
    for ra, rb in zip(runs_a, runs_b):
        assert ra.losses == rb.losses and ra.gnorms == rb.gnorms and len(ra.losses) == 3
        assert all(torch.equal(p, q) for p, q in zip(ra.params, rb.params))


def _stack_json(stacked_s, separate_s, per_model_s=None, lockstep_s=None):
    extra = {"kind": "stack_bound", "name": "ln_lstm", "hidden": 64, "T": 100, "batch": 64, "S": 5,
             "malloc": "pinned", "device": "cpu", "separate_times": [separate_s] * 3}
    if per_model_s is not None:
        extra["per_model_times"] = [per_model_s] * 3
    if lockstep_s is not None:
        extra["lockstep_times"] = [lockstep_s] * 3
    return {"benchmarks": [{
        "name": "test_stack_bound[h64-T100-ln_lstm]", "fullname": "perf/test_perf.py::test_stack_bound[h64-T100-ln_lstm]",
        "stats": {"median": stacked_s}, "options": {"timer": "process_time"}, "extra_info": extra}]}


@pytest.mark.parametrize("stacked_s,verdict", [(0.08, "could save"), (0.10, "no gain"), (0.12, "no gain")])
def test_stack_bound_is_reported_as_a_measurement_not_a_target(stacked_s, verdict):
    rows = [r for r in perf.targets(_stack_json(stacked_s, 0.10)) if r["target"].startswith("T5")]
    assert len(rows) == 1
    assert rows[0]["target"] == "T5 bound S=5" and rows[0]["value"] == pytest.approx(stacked_s / 0.10)
    assert rows[0]["verdict"] == verdict and "not implemented" in rows[0]["note"]
    assert not any(k.startswith(("stack", "step/")) for k in perf.ratios(_stack_json(stacked_s, 0.10)))


@pytest.mark.parametrize("per_model_s,ceiling", [(0.08, (0.08 + 0.02 / 5) / 0.10), (0.10, 1.0), (0.12, 1.0)])
def test_stack_ceiling_shares_only_what_is_outside_the_per_model_work(per_model_s, ceiling):
    rows = {r["target"]: r for r in perf.targets(_stack_json(0.09, 0.10, per_model_s))}
    assert rows["T5 bound S=5"]["value"] == pytest.approx(0.9)
    c = rows["T5 ceiling S=5"]
    assert c["value"] == pytest.approx(ceiling) and "not implemented" in c["note"] and "per-model" in c["note"]
    assert c["verdict"] == ("could save" if ceiling < 1 else "no gain")


@pytest.mark.parametrize("lockstep_s,verdict", [(0.095, "could save"), (0.10, "no gain"), (0.104, "no gain")])
def test_stack_lockstep_is_reported_against_the_separate_steps(lockstep_s, verdict):
    rows = {r["target"]: r for r in perf.targets(_stack_json(0.09, 0.10, 0.08, lockstep_s))}
    r = rows["T5 lockstep S=5"]
    assert r["value"] == pytest.approx(lockstep_s / 0.10) and r["verdict"] == verdict
    assert "as train_group steps" in r["note"]
    assert "T5 lockstep S=5" not in {r["target"] for r in perf.targets(_stack_json(0.09, 0.10, 0.08))}


def test_check_reports_the_stack_bound_and_does_not_count_it_as_a_miss(tmp_path):
    data = _bench_json(0.012)  # bn_lstm 1.2x the fused LSTM: T2 passes
    data["benchmarks"] += _stack_json(0.12, 0.10)["benchmarks"]
    (tmp_path / "s.json").write_text(json.dumps(data))
    (tmp_path / "empty.json").write_text(json.dumps({"ratios": {}}))  # no ratio to regress against
    r = _check(tmp_path, tmp_path / "s.json", "--baseline", tmp_path / "empty.json", "--fail-on-miss")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 MISS of" in r.stdout
    line = next(ln for ln in (tmp_path / "out.md").read_text().splitlines() if "T5 bound" in ln)
    assert "no gain" in line and "< 1" in line and "1.200" in line


# -- target 1 with the native kernel ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gru+clipnorm:1", "rnn", "lstm"])
def test_matched_bare_loop_runs_the_engines_own_recurrence_and_the_same_numbers(name):
    """Target 1's bare loop is the harness's cost alone: it runs the engine's recurrence (the native
    kernel for the plain RNN and the GRU on the CPU), from the same weights, on the same batches."""
    eng = perf.EngineStep(name, 12, 8, batch=4, heldout_size=16, device="cpu")
    bare = perf.matched_bare_step(eng)
    assert bare.rec is not None and type(bare.rec) is type(eng.model.rec)
    x = torch.zeros(2, 3, eng.task.n_in)
    assert bare.rec.native(x) == eng.model.rec.native(x) == (name != "lstm")
    assert [p.data_ptr() for p in bare.rnn.parameters()] == [p.data_ptr() for p in bare.rec.parameters()]
    for _ in range(2):
        eng()
        bare()
    for p, q in zip(eng.model.rec.parameters(), bare.rec.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)  # trained alike


def test_nn_loops_time_pytorchs_own_modules():
    assert isinstance(perf.BareStep("nn_gru", 10, 8, batch=4, device="cpu").rnn, torch.nn.GRU)
    r = perf.BareStep("nn_rnn", 10, 8, batch=4, device="cpu")
    assert isinstance(r.rnn, torch.nn.RNN) and r.rnn.nonlinearity == "tanh" and r.rec is None
    r()


def test_target_1_against_pytorchs_module_is_the_engine_step_over_the_nn_loop_step():
    def b(name, med, ref):
        return {"name": f"test_step[{name}]", "fullname": f"perf/test_perf.py::test_step[{name}]",
                "stats": {"median": med}, "options": {"timer": "process_time"},
                "extra_info": {"kind": "cellloop" if name.startswith("nn_") else "step", "name": name, "hidden": 64,
                               "T": 100, "batch": 64, "malloc": "pinned", "device": "cpu", "ref_times": [ref] * 3}}
    data = {"benchmarks": [b("gru", 0.010, 0.010), b("nn_gru", 0.030, 0.012), b("rnn+clipnorm:1", 0.005, 0.010),
                           b("nn_rnn", 0.008, 0.010), b("irnn", 0.005, 0.010)]}
    rows = {r["name"]: r for r in perf.targets(data) if r["target"] == "T1 vs nn.*"}
    assert set(rows) == {"gru", "rnn+clipnorm:1"}  # irnn (ReLU) has no nn_* loop of its kind
    assert rows["gru"]["value"] == pytest.approx((0.010 / 0.010) / (0.030 / 0.012)) and rows["gru"]["verdict"] == "PASS"
    assert rows["rnn+clipnorm:1"]["value"] == pytest.approx(0.5 / 0.8)
    assert not any(r["name"].startswith("nn_") for r in perf.targets(data) if r["target"].startswith("T2"))
