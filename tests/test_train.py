"""Training: short runs learn, clipping and truncation do what they claim, divergence is
recorded (not raised), runs are deterministic, failures become 'error' records, records
round-trip, and the command line reports bad input in one line."""
from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import bench.train
from bench.data import TaskData
from bench.errors import BenchError
from bench.models import MITIGATIONS
from bench.records import OUTCOMES, read_record, write_json_atomic
from bench.seeding import generator
from bench.spec import RunSpec
from bench.tasks import TASKS, make_task
from bench.train import evaluate, profile_steps, run_safely, train, train_group

RECIPES = MITIGATIONS.names()


def _strip(rec):
    rec = copy.deepcopy(rec)
    rec.pop("timing", None)
    rec.pop("provenance", None)
    for row in rec.get("curve", []):
        row.pop("wall_s", None)
    return rec


@pytest.fixture
def spy_build(monkeypatch):
    """Keeps a copy of the model train() builds, as initialised (before any step)."""
    built = []
    real = bench.train.build_model

    def build(*a, **k):
        model = real(*a, **k)
        built.append(copy.deepcopy(model))
        return model

    monkeypatch.setattr(bench.train, "build_model", build)
    return built


@pytest.fixture
def spy_optimizer(monkeypatch):
    """Records what the optimizer is handed at every step: (global grad norm, max |grad|)."""
    seen = []
    real = bench.train.make_optimizer

    def make(name, params, lr):
        opt = real(name, params, lr)

        def pre_step(o, args, kwargs):
            gs = [p.grad for grp in o.param_groups for p in grp["params"] if p.grad is not None]
            seen.append((float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in gs]))),
                         max(float(g.abs().max()) for g in gs)))

        opt.register_step_pre_hook(pre_step)
        return opt

    monkeypatch.setattr(bench.train, "make_optimizer", make)
    return seen


# -- short runs learn -------------------------------------------------------------------------------
@pytest.mark.parametrize("mit", RECIPES + ["lstm+clipnorm:1", "rnn+clipvalue:0.5", "rnn+radius:1.5"])
def test_short_run_lowers_heldout_loss(mit, spy_build):
    """Temporal order at L=10 (4 classes) is learnt by every recipe within ~100 steps at lr 0.01."""
    spec = RunSpec(task="temporal_order", length=10, mitigation=mit, hidden=16, batch=32, budget=120,
                   eval_every=20, heldout_size=256, probe_size=32, lr=0.01, device="cpu", threads=1)
    rec = train(spec)
    assert len(spy_build) == 1
    task = make_task("temporal_order", 10)
    initial = evaluate(spy_build[0], task, TaskData(task, spec.seed, spec.heldout_size))["loss"]
    final = rec["final"]["heldout_loss"]
    assert rec["outcome"] in ("solved", "unsolved")
    assert final < 0.75 * initial, f"held-out loss {initial:.4f} -> {final:.4f}"
    assert final < rec["baseline"]["loss"]  # better than the best memoryless predictor
    if rec["outcome"] == "solved":
        assert rec["steps_to_solve"] == rec["steps"] == rec["curve"][-1]["step"]
        assert rec["final"]["heldout_wrong"] < task.success_max_wrong
        assert rec["timing"]["time_to_solve_s"] is not None
    else:
        assert rec["steps"] == spec.budget and rec["steps_to_solve"] is None


# -- clipping ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", RECIPES)
def test_clipnorm_bounds_the_global_norm_the_optimizer_sees(recipe, spy_optimizer, tiny_spec):
    c = 1e-3
    rec = train(tiny_spec(mitigation=f"{recipe}+clipnorm:{c}", budget=5))
    pre = rec["grad_norm"]["trace"]
    assert len(spy_optimizer) == len(pre) == 5
    for before, (after, _) in zip(pre, spy_optimizer):
        if before > c:  # rescaled to c (clip_grad_norm_ divides by norm + 1e-6)
            assert c * (1 - 1e-3) <= after <= c * (1 + 1e-5)
        else:
            assert after == pytest.approx(before, rel=1e-3)
    assert rec["grad_norm"]["frac_clipped"] == pytest.approx(sum(b > c for b in pre) / len(pre))
    assert rec["grad_norm"]["frac_clipped"] > 0, "the threshold is meant to be exceeded"


@pytest.mark.parametrize("recipe", ["rnn", "lstm", "gru", "bn_lstm"])
def test_clipnorm_leaves_small_gradients_alone(recipe, spy_optimizer, tiny_spec):
    rec = train(tiny_spec(mitigation=f"{recipe}+clipnorm:1e6", budget=3))
    assert rec["grad_norm"]["frac_clipped"] == 0.0
    for before, (after, _) in zip(rec["grad_norm"]["trace"], spy_optimizer):
        assert after == pytest.approx(before, rel=1e-3)


@pytest.mark.parametrize("recipe", ["rnn", "irnn", "lstm", "gru", "ln_lstm"])
def test_clipvalue_bounds_every_element(recipe, spy_optimizer, tiny_spec):
    v = 1e-3
    rec = train(tiny_spec(mitigation=f"{recipe}+clipvalue:{v}", budget=4))
    assert len(spy_optimizer) == 4
    v32 = torch.tensor(v, dtype=torch.float32).item()  # v as the float32 gradients hold it
    for _, biggest in spy_optimizer:
        assert biggest <= v32
    assert any(biggest == v32 for _, biggest in spy_optimizer), "some element was clipped to exactly v"
    assert 0 < rec["grad_norm"]["frac_clipped"] <= 1


def test_frac_clipped_is_a_fraction_with_both_clips(tiny_spec):
    rec = train(tiny_spec(mitigation="rnn+clipnorm:0.001+clipvalue:0.0001", budget=4))
    assert 0 <= rec["grad_norm"]["frac_clipped"] <= 1


# -- truncation in the training forward ---------------------------------------------------------------
@pytest.mark.parametrize("recipe", RECIPES)
def test_tbptt_stops_gradients_at_the_last_boundary(recipe, small_model):
    """model(x) -- the fused forward used for training -- lets no gradient cross a boundary:
    dL/dx_t is exactly 0 before the last truncation boundary and nonzero inside the last chunk."""
    k = 3
    model, task = small_model(f"{recipe}+tbptt:{k}", "adding", length=11)
    model.train()
    x, y = task.sample(8, generator("tbptt-train", recipe))
    x.requires_grad_(True)
    task.loss(model(x), y).backward()
    g = x.grad.abs().sum((0, 2))  # per step
    last = task.seq_len - k  # the last chunk has exactly k steps
    assert torch.all(g[:last] == 0), g
    assert torch.all(g[last:] > 0), g
    # without truncation every step gets a gradient
    model, _ = small_model(recipe, "adding", length=11)
    x = x.detach().requires_grad_(True)
    task.loss(model(x), y).backward()
    assert (x.grad.abs().sum((0, 2))[:last] > 0).any()


def test_tbptt_run_records_the_cut(tiny_spec):
    rec = train(tiny_spec(mitigation="rnn+tbptt:3", length=11, budget=2))
    for snap in rec["diagnostics"]["snapshots"]:
        # T=11, k=3: the last chunk is [8, 11); 8 of the 10 steps before the loss get nothing
        assert snap["profile_zero_frac"] == pytest.approx(8 / 10)
        assert all(v == 0 for v in snap["profile"][:8]) and all(v > 0 for v in snap["profile"][8:])


# -- divergence -------------------------------------------------------------------------------------
def _explode_spec(mit, **kw):
    # SGD at lr 1 on a tanh RNN: each step multiplies the readout's error (curvature ~ hidden),
    # so the weights grow geometrically until the loss overflows (~step 15).
    base = dict(task="adding", length=20, mitigation=mit, hidden=16, batch=32, optimizer="sgd", lr=1.0,
                budget=60, eval_every=20, heldout_size=128, probe_size=16, device="cpu", threads=1)
    base.update(kw)
    return RunSpec(**base)


@pytest.mark.parametrize("mit", ["rnn", "rnn+radius:3"])
def test_exploding_run_is_recorded_as_diverged(mit, tmp_path):
    rec = train(_explode_spec(mit))
    assert rec["outcome"] == "diverged"
    at = rec["diverged_at"]
    assert isinstance(at, int) and 1 <= at < 60 and rec["steps"] == at
    assert rec["grad_norm"]["nonfinite_events"] >= 1
    assert rec["final"]["heldout_loss"] is None and rec["diagnostics"]["end"] is None
    assert rec["steps_to_solve"] is None
    path = tmp_path / "diverged.json"
    write_json_atomic(path, rec)
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    back = read_record(path)
    assert back["outcome"] == "diverged" and back["diverged_at"] == at


@pytest.mark.parametrize("mit", ["rnn+clipnorm:1", "rnn+radius:3+clipnorm:1"])
def test_clipping_prevents_that_divergence(mit):
    """With the global norm clipped at 1 an SGD step moves the weights by at most lr * 1, so the
    tanh RNN's (bounded-state) output stays finite over the budget."""
    rec = train(_explode_spec(mit))
    assert rec["outcome"] != "diverged" and rec["diverged_at"] is None
    assert rec["grad_norm"]["nonfinite_events"] == 0
    assert math.isfinite(rec["final"]["heldout_loss"])
    assert rec["grad_norm"]["frac_clipped"] > 0
    assert rec["steps"] == 60


# -- host checks deferred (the CUDA path: no host sync inside the time loop) -----------------------
@pytest.mark.parametrize("spec_kw", [
    dict(mitigation="rnn"),  # diverges mid-run, found late
    dict(mitigation="rnn+radius:3", lr=0.3),
    dict(mitigation="rnn+clipnorm:1"),
    dict(mitigation="rnn+clipvalue:0.5"),
    dict(mitigation="rnn+clipnorm:1+clipvalue:0.01", lr=0.1),
    dict(mitigation="lstm", optimizer=None, lr=None, budget=30, eval_every=10),
], ids=["diverges", "radius3-lr0.3", "clipnorm", "clipvalue", "clipnorm+clipvalue", "lstm"])
def test_deferred_host_checks_give_the_same_record(spec_kw):
    """Reading loss and gradient norm on the host only at snapshot/evaluation/end steps (the CUDA
    default) yields the record of checking every step: same outcome, divergence step, traces,
    clip fraction, curve and diagnostics. Only timings differ."""
    kw = dict(spec_kw)
    spec = _explode_spec(kw.pop("mitigation"), **kw)
    a = _strip(train(spec, defer_host_checks=False))
    b = _strip(train(spec, defer_host_checks=True))
    assert a == b


def test_deferred_checks_find_a_divergence_between_check_points():
    """radius 3 at SGD lr 0.3 diverges at step 23, between the check points (snapshots at 8, 15,
    30; evaluations every 40): the deferred run keeps stepping on non-finite weights until step
    30, then dates the divergence to its first non-finite step and drops the steps after it."""
    spec = _explode_spec("rnn+radius:3", lr=0.3, budget=60, eval_every=40)
    a = _strip(train(spec, defer_host_checks=False))
    b = _strip(train(spec, defer_host_checks=True))
    assert a["outcome"] == "diverged" and 15 < a["diverged_at"] < 30
    assert a == b and b["steps"] == b["diverged_at"] and len(b["grad_norm"]["trace"]) == b["steps"]


# -- determinism and the global RNG ---------------------------------------------------------------


@pytest.mark.parametrize("mit,task_name,length", [
    ("lstm+clipnorm:1", "copy", 3),
    ("rnn+tbptt:3", "adding", 9),
    ("gru", "temporal_order", 10),
    ("bn_lstm", "temporal_order", 10),
])
def test_same_spec_same_record(mit, task_name, length, tiny_spec):
    spec = tiny_spec(mitigation=mit, task=task_name, length=length, budget=6, eval_every=3)
    a = _strip(train(spec))
    torch.manual_seed(1234)  # whatever the global RNG holds
    torch.rand(7)
    b = _strip(train(spec))
    assert a == b
    other = _strip(train(tiny_spec(mitigation=mit, task=task_name, length=length, budget=6, eval_every=3, seed=1)))
    assert other["grad_norm"]["trace"] != a["grad_norm"]["trace"]


def test_train_leaves_global_rng_alone(tiny_spec):
    state = torch.random.get_rng_state()
    train(tiny_spec(budget=2))
    assert torch.equal(state, torch.random.get_rng_state())


# -- the record -------------------------------------------------------------------------------------
TOP_KEYS = {"record_version", "spec", "mitigation", "task", "model", "optimizer", "lr", "device", "outcome", "error",
            "steps", "steps_to_solve", "diverged_at", "final", "baseline", "curve", "grad_norm", "diagnostics",
            "timing", "provenance"}


def test_record_has_the_documented_fields(tiny_spec, tmp_path):
    spec = tiny_spec(mitigation="rnn+tbptt:2+clipnorm:1", budget=8, eval_every=3)
    rec = train(spec)
    assert set(rec) == TOP_KEYS
    assert rec["outcome"] in OUTCOMES and rec["error"] is None
    assert RunSpec.from_dict(rec["spec"]) == spec
    assert rec["mitigation"]["name"] == "rnn+clipnorm:1+tbptt:2" and rec["mitigation"]["tbptt"] == 2
    assert rec["task"]["name"] == "adding" and rec["task"]["seq_len"] == 5
    assert [r["step"] for r in rec["curve"]] == [3, 6, 8]
    assert len(rec["grad_norm"]["trace"]) == rec["steps"] == 8
    assert [s["step"] for s in rec["diagnostics"]["snapshots"]] == profile_steps(8) + [8]
    assert rec["baseline"]["accuracy"] == pytest.approx(1 - rec["baseline"]["wrong"])
    write_json_atomic(tmp_path / "r.json", rec)
    assert read_record(tmp_path / "r.json") == json.loads(json.dumps(rec))


def test_snapshot_steps_are_distinct(tiny_spec):
    rec = train(tiny_spec(budget=1, eval_every=1))
    steps = [s["step"] for s in rec["diagnostics"]["snapshots"]]
    assert steps == sorted(set(steps)), steps


# -- failures become records ------------------------------------------------------------------------
def test_run_safely_records_a_bad_spec(tiny_spec, tmp_path):
    rec = run_safely(tiny_spec(task="nope"))
    assert rec["outcome"] == "error"
    assert rec["error"]["type"] == "BenchError"
    assert "unknown task 'nope'" in rec["error"]["message"] and "adding" in rec["error"]["message"]
    assert "Traceback" in rec["error"]["traceback"]
    assert rec["spec"]["task"] == "nope"
    write_json_atomic(tmp_path / "e.json", rec)
    assert read_record(tmp_path / "e.json")["error"]["message"] == rec["error"]["message"]


def test_run_safely_records_an_unexpected_exception(tiny_spec, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("boom: out of memory")

    monkeypatch.setattr(bench.train, "TaskData", boom)
    rec = run_safely(tiny_spec())
    assert rec["outcome"] == "error"
    assert rec["error"] == {"type": "RuntimeError", "message": "boom: out of memory",
                            "traceback": rec["error"]["traceback"]}
    assert "boom" in rec["error"]["traceback"]


def test_run_safely_records_tbptt_longer_than_the_sequence(tiny_spec):
    rec = run_safely(tiny_spec(mitigation="rnn+tbptt:5", length=5))
    assert rec["outcome"] == "error" and "would never truncate" in rec["error"]["message"]


def test_train_raises_bench_error_for_a_bad_spec(tiny_spec):
    with pytest.raises(BenchError, match="unknown modifier"):
        train(tiny_spec(mitigation="rnn+dropout:0.5"))


# -- records on disk ----------------------------------------------------------------------------------
def _minimal(outcome="unsolved"):
    rec = {"spec": {"task": "adding"}, "outcome": outcome, "final": {"heldout_loss": float("nan")},
           "baseline": {"loss": 0.16}, "timing": {"wall_s": float("inf")}, "diagnostics": {},
           "grad_norm": {"trace": [1.0, float("-inf"), float("nan")]}, "provenance": {}}
    return rec


def test_write_read_round_trip_and_nan_as_null(tmp_path):
    path = tmp_path / "sub" / "rec.json"
    write_json_atomic(path, _minimal())
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    rec = read_record(path)
    assert rec["final"]["heldout_loss"] is None and rec["timing"]["wall_s"] is None
    assert rec["grad_norm"]["trace"] == [1.0, None, None]
    assert rec["baseline"]["loss"] == 0.16
    assert sorted(p.name for p in path.parent.iterdir()) == ["rec.json"], "no temporary files left"


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "rec.json"
    write_json_atomic(path, _minimal())
    old = path.read_text()
    with pytest.raises(TypeError):
        write_json_atomic(path, {"spec": {}, "outcome": "error", "bad": object()})
    assert path.read_text() == old
    assert [p.name for p in tmp_path.iterdir()] == ["rec.json"]


@pytest.mark.parametrize("content", [
    lambda full: full[: len(full) // 2],  # truncated
    lambda full: "not json at all",
    lambda full: "",
    lambda full: "[1, 2, 3]",
    lambda full: json.dumps({"outcome": "solved"}),  # no spec
    lambda full: json.dumps({"spec": {}, "outcome": "exploded"}),  # invalid outcome
    lambda full: json.dumps({k: v for k, v in json.loads(full).items() if k != "final"}),
    lambda full: json.dumps({k: v for k, v in json.loads(full).items() if k != "provenance"}),
], ids=["truncated", "not-json", "empty", "list", "no-spec", "bad-outcome", "no-final", "no-provenance"])
def test_read_record_rejects_corrupt_files(content, tmp_path):
    good = tmp_path / "good.json"
    write_json_atomic(good, _minimal())
    bad = tmp_path / "bad_record.json"
    bad.write_text(content(good.read_text()))
    with pytest.raises(BenchError) as e:
        read_record(bad)
    assert str(bad) in str(e.value)


def test_read_record_missing_file_names_it(tmp_path):
    path = tmp_path / "absent.json"
    with pytest.raises(BenchError) as e:
        read_record(path)
    assert str(path) in str(e.value)


def test_error_records_need_only_spec_and_outcome(tmp_path):
    path = tmp_path / "e.json"
    write_json_atomic(path, {"spec": {"task": "x"}, "outcome": "error", "error": {"message": "m"}})
    assert read_record(path)["error"]["message"] == "m"


# -- command line -----------------------------------------------------------------------------------
def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, timeout=timeout)


def test_cli_list_json_names_every_registered_component():
    from bench.models import MODIFIERS

    p = _cli("list", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert sorted(data["tasks"]) == TASKS.names()
    assert sorted(data["mitigations"]) == MITIGATIONS.names()
    assert sorted(data["modifiers"]) == MODIFIERS.names()
    for name, d in data["tasks"].items():
        assert d["min_length"] == TASKS.get(name).min_length and d["max_length"] == TASKS.get(name).max_length


def test_cli_run_with_a_bad_task_exits_2_in_one_line(tmp_path):
    out = tmp_path / "r.json"
    p = _cli("run", "--task", "nope", "--length", "5", "--mitigation", "rnn", "--out", str(out))
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr
    assert "nope" in lines[0] and "valid choices" in lines[0]
    for name in TASKS.names():
        assert name in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("args,fragment", [
    (["--task", "adding", "--length", "1", "--mitigation", "rnn"], "valid lengths are 2.."),
    (["--task", "adding", "--length", "0", "--mitigation", "rnn"], "length must be"),
    (["--task", "adding", "--length", "5", "--mitigation", "lstm+radius:2"], "impossible composition"),
    (["--task", "adding", "--length", "5", "--mitigation", "rnn+tbptt:9"], "would never truncate"),
    (["--task", "adding", "--length", "5", "--mitigation", "nope"], "valid choices"),
    (["--task", "adding", "--length", "5", "--mitigation", "rnn", "--hidden", "0"], "hidden must be"),
])
def test_cli_bad_input_is_one_line_exit_2(args, fragment, tmp_path, capsys):
    from bench.cli import main

    code = main(["run", *args, "--out", str(tmp_path / "r.json"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and fragment in err and err.startswith("error: ")


def test_cli_tiny_run_writes_a_readable_record(tmp_path):
    out = tmp_path / "deep" / "run.json"
    p = _cli("run", "--task", "adding", "--length", "5", "--mitigation", "lstm+clipnorm:1", "--hidden", "8",
             "--batch", "8", "--budget", "3", "--eval-every", "3", "--heldout-size", "32", "--device", "cpu",
             "--threads", "1", "--out", str(out))
    assert p.returncode == 0, p.stderr
    rec = read_record(out)
    assert rec["spec"]["mitigation"] == "lstm+clipnorm:1" and rec["steps"] == 3
    assert rec["outcome"] in ("solved", "unsolved")
    assert str(out) in p.stderr


@pytest.mark.parametrize("groups", ["yes", "no"])
def test_cli_run_cell_trains_several_cells_in_one_process_as_separate_runs_would(tmp_path, groups):
    """The pipeline's grouped job: --cells and --out-pattern give the same records, bit for bit
    (timings and provenance aside), as one `run` per (cell, seed) -- with a cell's seeds trained
    together (--seed-groups yes, the default) or one after the other."""
    from bench.cli import main

    small = ["--mitigation", "gru", "--hidden", "8", "--batch", "8", "--budget", "4", "--eval-every", "2",
             "--heldout-size", "16", "--device", "cpu", "--threads", "1"]
    pattern = str(tmp_path / "grouped" / "{task}-{length}" / "s{seed}.json")
    assert main(["run-cell", "--cells", "adding@6", "temporal_order@12", "--seeds", "0", "3",
                 "--out-pattern", pattern, "--seed-groups", groups, *small]) == 0
    for task, length in (("adding", 6), ("temporal_order", 12)):
        for seed in (0, 3):
            alone = tmp_path / "alone" / f"{task}-{length}-{seed}.json"
            assert main(["run", "--task", task, "--length", str(length), "--seed", str(seed), "--out", str(alone),
                         *small]) == 0
            got, want = (read_record(q) for q in (pattern.format(task=task, length=length, seed=seed), alone))
            assert got["timing"]["seed_group"] == (2 if groups == "yes" else 1)
            for r in (got, want):
                r.pop("timing"), r.pop("provenance")
                for row in r["curve"]:
                    row.pop("wall_s", None)
            assert got == want, (task, length, seed)
            assert got["spec"]["task"] == task and got["spec"]["length"] == length and got["spec"]["seed"] == seed


@pytest.mark.parametrize("args,fragment", [
    (["--cells", "adding6", "--out", "a"], "'adding6' is not TASK@LENGTH"),
    (["--cells", "adding@6", "adding@6", "--out", "a", "b"], "given twice"),
    (["--cells", "adding@6", "--task", "adding", "--out", "a"], "not both"),
    (["--out", "a"], "needs --task and --length, or --cells"),
    (["--cells", "adding@6", "copy@5", "--out", "a"], "2 cell(s) x 1 seed(s) = 2, got 1 paths"),
    (["--cells", "adding@6"], "needs --out (one path per run) or --out-pattern"),
    (["--cells", "adding@6", "copy@6", "--out-pattern", "r-{length}.json"], "gives two runs the same path"),
    (["--cells", "adding@6", "--out-pattern", "r-{cell}.json"], "only {task}, {length} and {seed}"),
])
def test_cli_run_cell_bad_cells_or_paths_is_one_line_exit_2(args, fragment, tmp_path, capsys, monkeypatch):
    from bench.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["run-cell", "--mitigation", "rnn", "--seeds", "0", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and fragment in err and err.startswith("error: "), err
    assert not list(tmp_path.iterdir())  # nothing written


def test_frozen_gc_freezes_inside_and_restores():
    import gc

    from bench.runtime import frozen_gc

    assert gc.get_freeze_count() == 0
    with frozen_gc():
        inside = gc.get_freeze_count()
        gc.collect()  # collects fine while frozen
    assert inside > 1000  # the interpreter's objects (torch, pytest) were moved out of full passes
    assert gc.get_freeze_count() == 0


def test_frozen_gc_leaves_an_outer_freeze_alone():
    import gc

    from bench.runtime import frozen_gc

    gc.freeze()
    try:
        before = gc.get_freeze_count()
        with frozen_gc():
            assert gc.get_freeze_count() == before
        assert gc.get_freeze_count() == before
    finally:
        gc.unfreeze()


def test_train_runs_with_a_frozen_gc_and_restores_it(tiny_spec):
    import gc

    seen = []
    train(tiny_spec(), progress=lambda step, info: seen.append(gc.get_freeze_count()))
    assert seen and min(seen) > 1000
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize("mit", ["gru", "ln_lstm", "rnn+tbptt:2"])
def test_a_step_does_not_keep_the_previous_steps_graph_alive(mit, tiny_spec, monkeypatch):
    """Every forward with gradients (training steps and the diagnostics' own) starts with the
    outputs of the earlier ones -- and so their autograd graphs -- freed. Holding the last step's
    output and loss until the next step reassigned them cost GRU at T=1000 ~12% a step."""
    import weakref

    outputs, alive_at_start = [], []
    real = bench.train.build_model

    def build(*a, **k):
        model = real(*a, **k)

        def pre(mod, args):
            if torch.is_grad_enabled():
                alive_at_start.append(sum(r() is not None for r in outputs))

        def post(mod, args, out):
            if torch.is_grad_enabled() and isinstance(out, torch.Tensor) and out.grad_fn is not None:
                outputs.append(weakref.ref(out))

        model.register_forward_pre_hook(pre)
        model.register_forward_hook(post)
        return model

    monkeypatch.setattr(bench.train, "build_model", build)
    rec = train(tiny_spec(mitigation=mit, budget=6, eval_every=3, length=8))
    assert rec["outcome"] != "error" and rec["steps"] == 6
    assert len(outputs) >= 6 and len(alive_at_start) == len(outputs)
    assert alive_at_start == [0] * len(alive_at_start)


# -- resuming a job that was interrupted (run-cell --resume-dir) ------------------------------------
RESUME_SMALL = ["--mitigation", "gru", "--hidden", "8", "--batch", "8", "--budget", "4", "--eval-every", "2",
                "--heldout-size", "16", "--device", "cpu", "--threads", "1",
                "--cells", "adding@6", "temporal_order@12", "--seeds", "0", "1"]


class _Killed(BaseException):
    """Stands for the process being interrupted (like KeyboardInterrupt, which pytest keeps for
    itself): not an Exception, so run_safely does not turn it into an error record."""


def _spy_runs(monkeypatch, stop_after=None):
    """Wrap run_safely and train_group (the module's own, not an earlier spy): returns the list of
    specs they train; with stop_after=n, the (n+1)-th run_safely call raises _Killed instead."""
    trained = []

    def run(spec):
        if len(trained) == stop_after:
            raise _Killed
        trained.append(spec)
        return run_safely(spec)

    def group(specs, **kw):
        trained.extend(specs)
        return train_group(specs, **kw)

    monkeypatch.setattr(bench.train, "run_safely", run)
    monkeypatch.setattr(bench.train, "train_group", group)
    return trained


def _without_taken_back(data: bytes) -> dict:
    rec = json.loads(data)
    rec["provenance"].pop("taken_back_utc", None)
    return rec


def test_cli_run_cell_resumes_the_runs_an_interrupted_job_finished(tmp_path, monkeypatch):
    from bench.cli import main

    ref = str(tmp_path / "ref" / "{task}-{length}-s{seed}.json")
    assert main(["run-cell", *RESUME_SMALL, "--out-pattern", ref]) == 0
    out, cache = str(tmp_path / "out" / "{task}-{length}-s{seed}.json"), tmp_path / "resume"
    args = ["run-cell", *RESUME_SMALL, "--out-pattern", out, "--resume-dir", str(cache), "--seed-groups", "no"]
    runs = [dict(task=t, length=L, seed=s) for t, L in (("adding", 6), ("temporal_order", 12)) for s in (0, 1)]
    paths = [out.format(**r) for r in runs]

    _spy_runs(monkeypatch, stop_after=2)
    with pytest.raises(_Killed):
        main(args)
    assert len(list(cache.glob("*.json"))) == 2
    done = {p: open(p, "rb").read() for p in paths[:2]}
    for p in paths[:2]:  # Snakemake deletes an incomplete job's outputs before running it again
        os.unlink(p)

    trained = _spy_runs(monkeypatch)
    assert main(args) == 0
    assert [(s.task, s.seed) for s in trained] == [("temporal_order", 0), ("temporal_order", 1)]
    for p in paths[:2]:  # the very records the interrupted process wrote, timings included, and when taken back
        taken = json.loads(open(p, "rb").read())
        assert taken["provenance"]["taken_back_utc"] >= taken["provenance"]["finished_utc"]
        assert _without_taken_back(open(p, "rb").read()) == json.loads(done[p])
    for p in paths[2:]:
        assert "taken_back_utc" not in read_record(p)["provenance"]
    for r in runs:
        assert _strip(read_record(out.format(**r))) == _strip(read_record(ref.format(**r))), r
    assert len(list(cache.glob("*.json"))) == 4  # the finished job keeps every run for the next time


def test_cli_run_cell_resumes_a_job_interrupted_inside_a_seed_group(tmp_path, monkeypatch):
    """Seed groups (the default): a cell's seeds train together and each record is written as its
    run ends. Killed inside the second cell's group, the job keeps the first cell's records; run
    again, it takes those back and trains the second cell's seeds, as a group, to the records of an
    uninterrupted job."""
    from bench.cli import main

    ref = str(tmp_path / "ref" / "{task}-{length}-s{seed}.json")
    assert main(["run-cell", *RESUME_SMALL, "--out-pattern", ref, "--seed-groups", "no"]) == 0
    out, cache = str(tmp_path / "out" / "{task}-{length}-s{seed}.json"), tmp_path / "resume"
    args = ["run-cell", *RESUME_SMALL, "--out-pattern", out, "--resume-dir", str(cache)]
    real = bench.train._Run.update

    def update(self):
        if self.spec.task == "temporal_order" and self.spec.seed == 1 and self.step == 3:
            raise _Killed
        return real(self)

    with monkeypatch.context() as m:
        m.setattr(bench.train._Run, "update", update)
        with pytest.raises(_Killed):
            main(args)
    assert len(list(cache.glob("*.json"))) == 2
    for s in (0, 1):
        assert read_record(out.format(task="adding", length=6, seed=s))["timing"]["seed_group"] == 2
        assert not os.path.exists(out.format(task="temporal_order", length=12, seed=s))
    trained = _spy_runs(monkeypatch)
    assert main(args) == 0
    assert [(s.task, s.seed) for s in trained] == [("temporal_order", 0), ("temporal_order", 1)]
    for t, L in (("adding", 6), ("temporal_order", 12)):
        for s in (0, 1):
            assert _strip(read_record(out.format(task=t, length=L, seed=s))) == \
                _strip(read_record(ref.format(task=t, length=L, seed=s)))


def test_cli_run_cell_of_a_grown_sweep_trains_only_the_new_runs(tmp_path, monkeypatch, capsys):
    """A new seed and a new length are new outputs of the job: Snakemake deletes its old outputs
    and runs it again; the runs it had finished come back, only the new ones train, and the
    records equal a fresh job's."""
    from bench.cli import main

    out, cache = str(tmp_path / "out" / "{task}-{length}-s{seed}.json"), tmp_path / "resume"
    small = ["--cells", "adding@6", "--seeds", "0"]
    base = RESUME_SMALL[:RESUME_SMALL.index("--cells")]
    assert main(["run-cell", *base, *small, "--out-pattern", out, "--resume-dir", str(cache)]) == 0
    os.unlink(out.format(task="adding", length=6, seed=0))
    grown = ["--cells", "adding@6", "adding@8", "--seeds", "0", "1"]
    trained = _spy_runs(monkeypatch)
    capsys.readouterr()
    assert main(["run-cell", *base, *grown, "--out-pattern", out, "--resume-dir", str(cache)]) == 0
    assert [(s.length, s.seed) for s in trained] == [(6, 1), (8, 0), (8, 1)]
    assert "1 of 4 run(s) taken from" in capsys.readouterr().err
    ref = str(tmp_path / "ref" / "{task}-{length}-s{seed}.json")
    assert main(["run-cell", *base, *grown, "--out-pattern", ref]) == 0
    for L, s in ((6, 0), (6, 1), (8, 0), (8, 1)):
        assert _strip(read_record(out.format(task="adding", length=L, seed=s))) == \
            _strip(read_record(ref.format(task="adding", length=L, seed=s)))


def test_cli_run_cell_reuse_no_trains_again_and_refreshes_the_kept_runs(tmp_path, monkeypatch):
    from bench.cli import main

    out, cache = str(tmp_path / "out" / "{task}-{length}-s{seed}.json"), tmp_path / "resume"
    args = ["run-cell", *RESUME_SMALL, "--out-pattern", out, "--resume-dir", str(cache)]
    assert main(args) == 0
    first = {f.name: json.loads(f.read_text())["record"]["provenance"]["finished_utc"] for f in cache.glob("*.json")}
    trained = _spy_runs(monkeypatch)
    assert main([*args, "--reuse", "no"]) == 0
    assert len(trained) == 4
    for f in cache.glob("*.json"):  # the kept records are now the new runs'
        entry = json.loads(f.read_text())
        assert json.loads(open(entry["out"], "rb").read()) == entry["record"]
    assert set(first) == {f.name for f in cache.glob("*.json")}


@pytest.mark.parametrize("change", ["code", "run", "garbage", "machine"])
def test_cli_run_cell_retrains_a_cached_run_when_the_code_or_the_run_changed(change, tmp_path, monkeypatch):
    import bench.provenance
    import bench.resume
    from bench.cli import main

    out, cache = str(tmp_path / "out" / "{task}-{length}-s{seed}.json"), tmp_path / "resume"
    args = ["run-cell", *RESUME_SMALL, "--out-pattern", out, "--resume-dir", str(cache), "--seed-groups", "no"]
    _spy_runs(monkeypatch, stop_after=1)
    with pytest.raises(_Killed):
        main(args)
    (entry,) = cache.glob("*.json")
    if change == "code":
        monkeypatch.setattr(bench.resume, "_FINGERPRINT", "another version of the engine")
    elif change == "run":
        args[args.index("--budget") + 1] = "5"
    elif change == "machine":  # the same code and device on another kind of CPU: its timings stay there
        monkeypatch.setattr(bench.resume, "machine_name", lambda device: "another CPU")
    else:
        entry.write_text("{not json")
    trained = _spy_runs(monkeypatch)
    assert main(args) == 0
    assert len(trained) == 4
    assert all(read_record(out.format(task=t, length=L, seed=s))["steps"] == (5 if change == "run" else 4)
               for t, L in (("adding", 6), ("temporal_order", 12)) for s in (0, 1))
    kept = [json.loads(f.read_text()) for f in cache.glob("*.json")]
    assert len(kept) == 4 and all(e["code"] == bench.resume.code_fingerprint() for e in kept)


def test_resume_cache_drops_an_entry_this_code_cannot_use(tmp_path, tiny_spec, monkeypatch):
    import bench.resume
    from bench.resume import ResumeCache

    cache = ResumeCache(str(tmp_path / "r"))
    spec = tiny_spec()
    cache.put("results/a.json", train(spec))
    (entry,) = (tmp_path / "r").glob("*.json")
    assert cache.get("results/a.json", tiny_spec(seed=1)) is None and entry.exists()  # another run: kept
    monkeypatch.setattr(bench.resume, "_FINGERPRINT", "another version of the engine")
    assert cache.get("results/a.json", spec) is None and not entry.exists()


def test_resume_cache_keeps_no_error_record_and_only_for_the_same_path(tmp_path, tiny_spec):
    from bench.resume import ResumeCache

    cache = ResumeCache(str(tmp_path / "r"))
    spec = tiny_spec()
    rec = train(spec)
    cache.put("results/a.json", {**rec, "outcome": "error"})
    assert not (tmp_path / "r").exists()
    cache.put("results/a.json", rec)
    assert cache.get("results/b.json", spec) is None
    got = cache.get("results/./a.json", spec)
    assert got is not None and "taken_back_utc" in got["provenance"]
    assert _strip(got) == _strip(json.loads(json.dumps(rec)))
    assert cache.get("results/a.json", tiny_spec(seed=1)) is None
    assert cache.resumed == 1


def test_resume_cache_that_cannot_be_written_is_a_warning_not_a_failed_job(tmp_path, tiny_spec, capsys):
    from bench.resume import ResumeCache

    (tmp_path / "blocker").write_text("a file where the folder should be")
    cache = ResumeCache(str(tmp_path / "blocker" / "resume"))
    rec = train(tiny_spec())
    cache.put("results/a.json", rec)  # no exception
    err = capsys.readouterr().err
    assert "warning: could not keep results/a.json" in err and "will train again" in err
    assert cache.get("results/a.json", tiny_spec()) is None


# -- denormals: flushed while training, kept by the diagnostics ------------------------------------
def test_flushed_denormals_sets_and_restores_the_threads_mode():
    from bench.runtime import denormals_flushed, flushed_denormals

    tiny = torch.tensor([1e-39])
    start = denormals_flushed()
    with flushed_denormals() as ok:
        assert ok and denormals_flushed()
        assert (tiny * 1.0).item() == 0.0  # FTZ/DAZ: a denormal operand counts as zero
        with flushed_denormals(False) as kept:
            assert kept and not denormals_flushed()
            assert (tiny * 1.0).item() == pytest.approx(1e-39, rel=1e-3)
        assert denormals_flushed()
    assert denormals_flushed() == start


def test_train_flushes_denormals_in_its_steps_and_its_diagnostics(monkeypatch):
    from bench import diagnostics, runtime

    modes = {"snapshot": [], "step": []}
    real_snapshot, real_batch = diagnostics.snapshot, TaskData.train_batch
    monkeypatch.setattr(diagnostics, "snapshot",
                        lambda *a, **k: modes["snapshot"].append(runtime.denormals_flushed()) or real_snapshot(*a, **k))
    monkeypatch.setattr(TaskData, "train_batch",
                        lambda self, *a, **k: modes["step"].append(runtime.denormals_flushed()) or real_batch(self, *a, **k))
    spec = RunSpec(task="adding", length=12, mitigation="lstm", hidden=8, batch=8, budget=6, eval_every=3,
                   heldout_size=32, probe_size=8)
    for outer in (False, True):  # the caller's mode is restored either way
        modes["snapshot"].clear(), modes["step"].clear()
        with runtime.flushed_denormals(outer):
            rec = train(spec)
            assert runtime.denormals_flushed() == outer
        assert modes["step"] == [True] * 6, modes
        assert len(modes["snapshot"]) >= 2 and all(modes["snapshot"]), modes
        assert rec["provenance"]["denormals"] == "flushed"
