"""bench.train.train_group: the seeds of one configuration trained together, in lockstep (issue 4,
target 5). Each record must be the one train() gives for its spec (timings and provenance aside),
bit for bit on the CPU, whatever the other runs of the group do."""
from __future__ import annotations

import dataclasses

import pytest

import bench.train
from bench.errors import BenchError
from bench.spec import RunSpec
from bench.train import train, train_group
from test_train import _strip  # noqa: E402  (tests/ is on sys.path under pytest)


def _specs(mitigation, seeds=(0, 1, 2), **kw):
    base = dict(task="adding", length=12, mitigation=mitigation, hidden=12, batch=16, budget=40, eval_every=10,
                heldout_size=128, probe_size=16, device="cpu", threads=1)
    base.update(kw)
    return [RunSpec(seed=s, **base) for s in seeds]


@pytest.mark.parametrize("mitigation,kw", [
    ("rnn", {}),
    ("lstm+clipnorm:1", {}),
    ("gru", {}),
    ("bn_rnn", {}),  # batch statistics and running statistics per model
    ("ln_lstm+tbptt:4", {}),
    ("rnn+clipvalue:0.05", {}),
    ("lstm", dict(task="copy", length=3)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_group_records_are_the_separate_runs_records(mitigation, kw):
    specs = _specs(mitigation, **kw)
    alone = [train(sp) for sp in specs]
    group = train_group(specs)
    assert [r["spec"]["seed"] for r in group] == [0, 1, 2]
    assert len({r["final"]["train_loss"] for r in alone}) == 3  # three different runs
    for a, g in zip(alone, group):
        assert _strip(g) == _strip(a)
        assert g["timing"]["seed_group"] == 3 and a["timing"]["seed_group"] == 1
        assert g["provenance"]["recurrence_backend"] == a["provenance"]["recurrence_backend"]


def test_a_run_that_ends_early_leaves_the_group_and_the_others_go_on():
    """GRU on adding@10 (hidden 16): seed 1 solves at step 180, seeds 0 and 2 at 200. Each record
    as alone; on_done reports each run as it ends, in that order."""
    specs = _specs("gru", length=10, hidden=16, batch=64, budget=300, eval_every=20, heldout_size=200,
                   probe_size=64, threads=None)
    ended = []
    group = train_group(specs, on_done=lambda i, rec: ended.append((i, rec["steps"])))
    alone = [train(sp) for sp in specs]
    assert [(r["outcome"], r["steps"]) for r in alone] == [("solved", 200), ("solved", 180), ("solved", 200)]
    assert [_strip(r) for r in group] == [_strip(r) for r in alone]
    assert ended[0] == (1, 180) and sorted(ended) == [(0, 200), (1, 180), (2, 200)]


def test_a_diverging_run_leaves_the_group_as_it_would_alone():
    """SGD at lr 1 blows the tanh RNN up (~step 15); with clipping by norm it would not. Mixed
    groups are not allowed (one configuration), so: the diverging seeds end at their own steps."""
    specs = _specs("rnn", length=20, hidden=16, batch=32, optimizer="sgd", lr=1.0, budget=60, eval_every=20)
    group = train_group(specs)
    alone = [train(sp) for sp in specs]
    assert all(r["outcome"] == "diverged" for r in alone)
    assert [_strip(r) for r in group] == [_strip(r) for r in alone]


def test_a_run_that_raises_becomes_an_error_record_and_the_others_go_on(monkeypatch):
    specs = _specs("lstm")
    alone = [train(sp) for sp in specs]
    real = bench.train._Run.forward_backward

    def boom(self):
        if self.spec.seed == 1 and self.step == 7:
            raise RuntimeError("seed 1 broke at step 7")
        return real(self)

    monkeypatch.setattr(bench.train._Run, "forward_backward", boom)
    ended = []
    group = train_group(specs, on_done=lambda i, rec: ended.append(i))
    assert group[1]["outcome"] == "error" and "seed 1 broke at step 7" in group[1]["error"]["message"]
    assert group[1]["spec"] == specs[1].to_dict()
    assert _strip(group[0]) == _strip(alone[0]) and _strip(group[2]) == _strip(alone[2])
    assert ended[0] == 1 and sorted(ended) == [0, 1, 2]


def test_a_bad_spec_becomes_error_records():
    """A mitigation the task cannot take (tbptt longer than the sequence) fails each run's set-up:
    one error record per seed, naming the problem, as run_safely gives."""
    specs = _specs("rnn+tbptt:50", length=12)
    group = train_group(specs)
    assert [r["outcome"] for r in group] == ["error"] * 3
    assert group[0]["error"]["message"] == bench.train.run_safely(specs[0])["error"]["message"]


def test_each_run_times_its_own_work():
    """The group's runs take turns; each record's wall time counts its own work, not its
    group-mates': together they add up to no more than the group's time."""
    import time

    specs = _specs("rnn", budget=30)
    t0 = time.perf_counter()
    group = train_group(specs)
    elapsed = time.perf_counter() - t0
    walls = [r["timing"]["wall_s"] for r in group]
    assert all(0 < w for w in walls) and sum(walls) <= elapsed
    for r in group:
        t = r["timing"]
        assert t["train_s"] <= t["wall_s"] and t["step_ms"]["median"] > 0
        # the step phases are the run's own too: all its steps' phases fit in its training time
        assert t["step_ms"]["mean"] * 1e-3 * r["steps"] <= t["train_s"]
        assert r["curve"][-1]["wall_s"] <= t["wall_s"]


@pytest.mark.parametrize("change,named", [
    (dict(hidden=8), "hidden"), (dict(mitigation="gru"), "mitigation"), (dict(length=13, lr=0.1), "length, lr")])
def test_specs_of_different_configurations_are_refused(change, named):
    specs = _specs("rnn")
    specs[2] = dataclasses.replace(specs[2], **change)
    with pytest.raises(BenchError, match=f"also differ in {named}$"):
        train_group(specs)


def test_a_seed_given_twice_or_no_spec_is_refused():
    with pytest.raises(BenchError, match=r"seed given twice in \[0, 1, 0\]"):
        train_group(_specs("rnn", seeds=(0, 1, 0)))
    with pytest.raises(BenchError, match="at least one run spec"):
        train_group([])


def test_progress_names_the_run():
    seen = []
    train_group(_specs("rnn", seeds=(3, 5), budget=20), progress=lambda i, step, row: seen.append((i, step)))
    assert sorted(seen) == [(0, 10), (0, 20), (1, 10), (1, 20)]
