"""The sweep config: every malformed config stops with a message that names the key, the problem
and the valid choices (bench/config.py directly, all cases); a subset also goes through
`snakemake -n`, which must exit non-zero with the message, no traceback and no job started."""
from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.config import DEFAULT_LR, ConfigError, coerce_numbers, format_lr, load_schema, validate
from bench.models import MITIGATIONS
from bench.spec import DEVICE_NAME, DEVICES, OPTIMIZERS
from bench.tasks import TASKS

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
DEL = object()  # marks a key to delete

BASE = {
    "tasks": {"adding": [5, 10], "copy": [2]},
    "mitigations": ["rnn", "lstm", "rnn+clipnorm:1"],
    "seeds": [0, 1],
    "hidden": 8,
    "batch": 16,
    "budget": 20,
    "eval_every": 10,
    "heldout_size": 100,
    "device": "cpu",
    "threads": 1,
    "lr": {"rnn": [0.01]},
    "optimizer": {"lstm": "rmsprop"},
}


def bad(id, fragments, **changes):
    """A case: BASE with top-level `changes` (DEL deletes), and the text the message must hold."""
    cfg = copy.deepcopy(BASE)
    for k, v in changes.items():
        if v is DEL:
            cfg.pop(k)
        else:
            cfg[k] = v
    return pytest.param(cfg, fragments, id=id)


BAD = [
    # top level: unknown, missing, wrong types
    bad("unknown-top-key", ["unknown key 'hiden'", "did you mean 'hidden'", "valid keys: batch, budget"], hiden=3),
    bad("unknown-top-key-2", ["unknown key 'epochs'", "valid keys:"], epochs=10),
    bad("reuse-runs-word", ["'reuse_runs'", "expected true or false", "'maybe'"], reuse_runs="maybe"),
    bad("seed-groups-word", ["'seed_groups'", "expected true or false", "'often'"], seed_groups="often"),
    bad("missing-tasks", ["missing required key 'tasks'"], tasks=DEL),
    bad("missing-mitigations", ["missing required key 'mitigations'"], mitigations=DEL),
    bad("missing-seeds", ["missing required key 'seeds'"], seeds=DEL),
    bad("tasks-list", ["'tasks'", "expected a mapping"], tasks=["adding", "copy"]),
    bad("tasks-empty", ["'tasks'", "must not be empty"], tasks={}),
    bad("mitigations-string", ["'mitigations'", "expected a list"], mitigations="rnn"),
    bad("mitigations-empty", ["'mitigations'", "must not be empty"], mitigations=[]),
    bad("mitigation-number", ["'mitigations[1]'", "expected text"], mitigations=["rnn", 5]),
    bad("mitigation-empty-string", ["'mitigations[1]'", "must not be empty"], mitigations=["rnn", ""]),
    bad("seeds-int", ["'seeds'", "expected a list"], seeds=0),
    bad("seeds-empty", ["'seeds'", "must not be empty"], seeds=[]),
    bad("seeds-duplicate", ["'seeds'", "duplicate entries 1"], seeds=[0, 1, 1]),
    bad("seeds-negative", ["'seeds[0]'", "must be >= 0, got -1"], seeds=[-1, 0]),
    bad("seeds-float", ["'seeds[1]'", "expected an integer, got 0.5"], seeds=[0, 0.5]),
    bad("seeds-text", ["'seeds[1]'", "expected an integer, got 'one'"], seeds=[0, "one"]),
    bad("hidden-text", ["'hidden'", "expected an integer, got 'big'"], hidden="big"),
    bad("hidden-bool", ["'hidden'", "expected an integer", "true/false"], hidden=True),
    bad("hidden-zero", ["'hidden'", "must be >= 1, got 0"], hidden=0),
    bad("hidden-absurd", ["'hidden'", "must be <= 8192"], hidden=10**6),
    bad("batch-negative", ["'batch'", "must be >= 1, got -4"], batch=-4),
    bad("batch-null", ["'batch'", "expected an integer", "null"], batch=None),
    bad("budget-zero", ["'budget'", "must be >= 1, got 0"], budget=0),
    bad("budget-float", ["'budget'", "expected an integer, got 20.5"], budget=20.5),
    bad("eval-every-zero", ["'eval_every'", "must be >= 1"], eval_every=0),
    bad("eval-every-over-budget", ["'eval_every'", "more than budget (20)"], eval_every=50),
    bad("heldout-zero", ["'heldout_size'", "must be >= 1"], heldout_size=0),
    bad("threads-zero", ["'threads'", "must be >= 1"], threads=0),
    bad("threads-list", ["'threads'", "expected an integer"], threads=[1]),
    # device
    bad("device-gpu", ["'device'", "'gpu' is not a valid choice", "valid choices: auto, cpu, cuda, cuda:N"],
        device="gpu"),
    bad("device-cuda-x", ["'device'", "'cuda:x' is not a valid choice", "valid choices: auto, cpu, cuda, cuda:N"],
        device="cuda:x"),
    bad("device-cuda0-spaced", ["'device'", "'cuda: 0' is not a valid choice"], device="cuda: 0"),
    bad("device-number", ["'device'", "expected text"], device=0),
    # tasks: names and lengths
    bad("task-unknown", ["'tasks'", "unknown task 'addin'", "did you mean 'adding'", "valid tasks: adding, copy"],
        tasks={"addin": [5]}),
    bad("task-unknown-2", ["unknown task 'mnist'", "valid tasks:"], tasks={"adding": [5], "mnist": [784]}),
    bad("lengths-not-list", ["'tasks.adding'", "expected a list"], tasks={"adding": 5}),
    bad("lengths-empty", ["'tasks.adding'", "must not be empty"], tasks={"adding": []}),
    bad("length-zero", ["'tasks.adding[0]'", "must be >= 1, got 0"], tasks={"adding": [0]}),
    bad("length-negative", ["'tasks.copy[1]'", "must be >= 1, got -5"], tasks={"copy": [2, -5]}),
    bad("length-text", ["'tasks.adding[0]'", "expected an integer, got 'long'"], tasks={"adding": ["long"]}),
    bad("length-float", ["'tasks.adding[0]'", "expected an integer, got 7.5"], tasks={"adding": [7.5]}),
    bad("length-duplicate", ["'tasks.adding'", "duplicate entries 5"], tasks={"adding": [5, 5]}),
    bad("length-below-task-min", ["'tasks.adding[0]'", "valid lengths are 2..100000", "total sequence length"],
        tasks={"adding": [1]}),
    bad("length-absurd", ["'tasks.copy[0]'", "length 1000000000 out of range", "delay T"],
        tasks={"copy": [10**9]}),
    bad("length-fixed-task", ["'tasks.digits[0]'", "valid lengths are 64..64", "fixed: 64 pixels"],
        tasks={"digits": [100]}),
    bad("length-temporal-order", ["'tasks.temporal_order[0]'", "valid lengths are 10..", "total sequence length L"],
        tasks={"temporal_order": [5]}),
    # mitigations: names, modifiers, compositions
    bad("mitigation-unknown", ["'mitigations[1]'", "unknown mitigation 'lstn'", "did you mean 'lstm'",
                               "valid choices: bn_lstm"], mitigations=["rnn", "lstn"]),
    bad("modifier-unknown", ["'mitigations[1]'", "unknown modifier 'clip'", "valid modifiers: clipnorm:<value>"],
        mitigations=["rnn", "rnn+clip:1"]),
    bad("modifier-no-value", ["'mitigations[1]'", "modifier 'clipnorm' needs a value"],
        mitigations=["rnn", "rnn+clipnorm"]),
    bad("modifier-bad-value", ["'mitigations[1]'", "clipnorm needs a number, got 'big'"],
        mitigations=["rnn", "rnn+clipnorm:big"]),
    bad("modifier-zero", ["'mitigations[1]'", "clipnorm must be > 0"], mitigations=["rnn", "rnn+clipnorm:0"]),
    bad("modifier-twice", ["'mitigations[1]'", "modifier 'clipnorm' given twice"],
        mitigations=["rnn", "rnn+clipnorm:1+clipnorm:2"]),
    bad("tbptt-not-int", ["'mitigations[1]'", "tbptt needs an integer, got '2.5'"], mitigations=["rnn", "rnn+tbptt:2.5"]),
    bad("radius-on-lstm", ["'mitigations[1]'", "impossible composition 'lstm+radius:2'", "radius applies to: bn_rnn"],
        mitigations=["rnn", "lstm+radius:2"]),
    bad("radius-on-gru", ["impossible composition 'gru+radius:0.9'", "'gru' is gated"], mitigations=["gru+radius:0.9"]),
    bad("tbptt-longer-than-sequence", ["'mitigations[1]'", "tbptt:5 would never truncate", "choose k < 5",
                                       "task 'adding' at length 5"], mitigations=["rnn", "rnn+tbptt:5"]),
    bad("tbptt-copy-seq-len", ["tbptt:40 would never truncate", "choose k < 22", "task 'copy' at length 2",
                               "the model reads T+20 steps"], mitigations=["rnn+tbptt:40"]),
    bad("mitigation-two-spellings", ["'mitigations'", "'rnn+clipnorm:1' and 'rnn+clipnorm:1.0' are the same",
                                     "keep one"], mitigations=["rnn", "rnn+clipnorm:1", "rnn+clipnorm:1.0"]),
    bad("mitigation-modifier-order", ["are the same mitigation ('rnn+clipnorm:1+tbptt:2')"],
        mitigations=["rnn+tbptt:2+clipnorm:1", "rnn+clipnorm:1+tbptt:2"]),
    bad("mitigation-duplicate", ["'mitigations'", "duplicate entries 'rnn'"], mitigations=["rnn", "rnn"]),
    # lr grid
    bad("lr-list", ["'lr'", "expected a mapping"], lr=[0.01]),
    bad("lr-unknown-key", ["'lr'", "'gru' is not one of the mitigations", "valid keys: rnn, lstm, rnn+clipnorm:1"],
        lr={"gru": [0.01]}),
    bad("lr-bad-mitigation-key", ["'lr'", "'foo' is not one of the mitigations"], lr={"foo": [0.01]}),
    bad("lr-two-spellings", ["'lr'", "are the same mitigation ('rnn+clipnorm:1')"],
        lr={"rnn+clipnorm:1": [0.1], "rnn+clipnorm:1.0": [0.01]}),
    bad("lr-scalar", ["'lr.rnn'", "expected a list"], lr={"rnn": 0.01}),
    bad("lr-empty", ["'lr.rnn'", "must not be empty"], lr={"rnn": []}),
    bad("lr-zero", ["'lr.rnn[0]'", "must be > 0, got 0"], lr={"rnn": [0]}),
    bad("lr-negative", ["'lr.rnn[1]'", "must be > 0, got -0.1"], lr={"rnn": [0.01, -0.1]}),
    bad("lr-absurd", ["'lr.rnn[0]'", "must be < 10, got 100"], lr={"rnn": [100]}),
    bad("lr-text", ["'lr.rnn[0]'", "expected a number, got 'fast'"], lr={"rnn": ["fast"]}),
    bad("lr-duplicate", ["'lr.rnn'", "duplicate entries 0.01"], lr={"rnn": [0.01, 0.01]}),
    # optimizer
    bad("optimizer-unknown", ["'optimizer.lstm'", "'adamw' is not a valid choice", "valid choices: adam, rmsprop, sgd"],
        optimizer={"lstm": "adamw"}),
    bad("optimizer-list", ["'optimizer.lstm'", "expected text"], optimizer={"lstm": ["adam"]}),
    bad("optimizer-key", ["'optimizer'", "'gru' is not one of the mitigations"], optimizer={"gru": "sgd"}),
    bad("optimizer-string", ["'optimizer'", "expected a mapping"], optimizer="sgd"),
    # `--config 'optimizer={rnn:adam}'`: no space after the colon, YAML reads one key and no value
    # (Snakemake's --config hands over '', a config file null); the message shows the spelling meant
    bad("optimizer-glued", ["'optimizer.rnn:adam'", "one key with no value", "{rnn: adam}"],
        optimizer={"rnn:adam": ""}),
    bad("optimizer-glued-null", ["'optimizer.rnn+clipnorm:1:sgd'", "{rnn+clipnorm:1: sgd}"],
        optimizer={"rnn+clipnorm:1:sgd": None}),
    bad("lr-glued", ["'lr.rnn:0.01'", "one key with no value", "{rnn: [0.01]}"], lr={"rnn:0.01": ""}),
    bad("lengths-glued", ["'tasks.adding:25'", "{adding: [25]}"], tasks={"adding:25": None}),
]


@pytest.mark.parametrize("cfg, fragments", BAD)
def test_bad_config_is_rejected_with_a_clear_message(cfg, fragments):
    with pytest.raises(ConfigError) as e:
        validate(cfg, SCHEMA)
    msg = str(e.value)
    assert msg.startswith("invalid config")
    for f in fragments:
        assert f in msg, f"{f!r} not in:\n{msg}"


def test_there_are_at_least_50_bad_configs():
    assert len(BAD) >= 50


def test_every_problem_is_reported_at_once():
    cfg = dict(BASE, hidden=0, device="gpu", colour="red")
    with pytest.raises(ConfigError) as e:
        validate(cfg, SCHEMA)
    assert len(e.value.problems) == 3
    cfg = dict(BASE, tasks={"adding": [1], "nope": [3]}, mitigations=["rnn", "lstm+radius:2"], optimizer={})
    with pytest.raises(ConfigError) as e:
        validate(cfg, SCHEMA)
    assert len(e.value.problems) == 3, e.value.problems


# -- contracts generated over the registries ---------------------------------------------------

@pytest.mark.parametrize("task", TASKS.names())
def test_each_task_rejects_a_length_below_its_range_and_names_it(task):
    cls = TASKS.get(task)
    if cls.min_length <= 1:
        pytest.skip("the schema already rejects lengths < 1")
    with pytest.raises(ConfigError) as e:
        validate(dict(BASE, tasks={task: [cls.min_length - 1]}), SCHEMA)
    assert f"valid lengths are {cls.min_length}..{cls.max_length} ({cls.length_meaning})" in str(e.value)


@pytest.mark.parametrize("task", TASKS.names())
def test_each_task_accepts_its_minimum_length(task):
    sweep = validate(dict(BASE, tasks={task: [max(TASKS.get(task).min_length, 3)]}, mitigations=["rnn"],
                          lr={}, optimizer={}), SCHEMA)
    assert list(sweep.tasks) == [task]


@pytest.mark.parametrize("recipe", MITIGATIONS.names())
def test_each_recipe_and_its_compositions(recipe):
    """Every recipe takes the clipping modifiers; radius only the single-matrix recurrences."""
    mits = [recipe, f"{recipe}+clipnorm:1", f"{recipe}+clipvalue:0.5", f"{recipe}+tbptt:3"]
    sweep = validate(dict(BASE, mitigations=mits, lr={}, optimizer={}), SCHEMA)
    assert sweep.mitigations == mits
    single = MITIGATIONS.get(recipe).family in ("rnn_tanh", "rnn_relu")
    if single:
        validate(dict(BASE, mitigations=[f"{recipe}+radius:0.9"], lr={}, optimizer={}), SCHEMA)
    else:
        with pytest.raises(ConfigError, match="impossible composition"):
            validate(dict(BASE, mitigations=[f"{recipe}+radius:0.9"], lr={}, optimizer={}), SCHEMA)


def test_schema_choices_match_the_engine():
    props = load_schema(SCHEMA)["properties"]
    assert tuple(props["device"]["x-choices"]) == DEVICES
    pattern = re.compile(props["device"]["pattern"])
    for name in ("auto", "cpu", "cuda", "cuda:0", "cuda:12", "cuda:any", "gpu", "cuda:", "cuda:x", "cuda:anyx",
                 "CPU", "cuda:0 ", ""):
        assert bool(pattern.search(name)) == bool(DEVICE_NAME.fullmatch(name)), name
    assert tuple(props["optimizer"]["additionalProperties"]["enum"]) == OPTIMIZERS


# -- good configs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["config.yaml", "smoke.yaml", "full.yaml"])
def test_shipped_configs_are_valid_and_round_trip(name):
    cfg = yaml.safe_load((REPO / "config" / name).read_text())
    sweep = validate(cfg, SCHEMA)
    assert validate(sweep.to_config(), SCHEMA) == sweep  # config_used.yaml expands to the same sweep
    assert len(list(sweep.cells())) >= len(sweep.mitigations)


def test_full_config_covers_every_task_and_recipe_and_five_seeds():
    sweep = validate(yaml.safe_load((REPO / "config" / "full.yaml").read_text()), SCHEMA)
    assert set(sweep.tasks) == set(TASKS.names())
    assert {m.split("+")[0] for m in sweep.mitigations} == set(MITIGATIONS.names())
    assert any("+" in m for m in sweep.mitigations)
    assert len(sweep.seeds) >= 5


def test_defaults_fill_in_and_names_become_canonical():
    cfg = {"tasks": {"adding": [10]}, "mitigations": ["rnn+tbptt:5+clipnorm:1.0", "gru"], "seeds": [3],
           "lr": {"rnn+clipnorm:1+tbptt:5": [0.001, 0.01]}, "optimizer": {"rnn+tbptt:5+clipnorm:1": "sgd"}}
    sweep = validate(cfg, SCHEMA)
    name = "rnn+clipnorm:1+tbptt:5"
    assert sweep.mitigations == [name, "gru"]
    assert (sweep.hidden, sweep.budget, sweep.device, sweep.threads) == (32, 600, "auto", 1)
    cells = [(c.mitigation, c.lr) for c in sweep.cells()]
    assert cells == [(name, "0.001"), (name, "0.01"), ("gru", DEFAULT_LR)]
    assert sweep.train_flags(name, "0.01").endswith("--lr 0.01 --optimizer sgd")
    assert "--lr" not in sweep.train_flags("gru", DEFAULT_LR)


def test_job_cost_ranks_the_default_sweeps_lstm_jobs_first_and_grows_with_the_work():
    """The train jobs' priority (dearest first): every LSTM job of the default sweep above every
    RNN / GRU job -- on 2 cores they took 1.6-1.9x a tanh RNN job's time; a job of one cell costs
    its share of its mitigation's job; the cost is proportional to seeds and budget and grows
    with the length."""
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    sweep = validate(cfg, SCHEMA)
    cost = {w["mitigation"]: sweep.job_cost(w) for w, _ in sweep.jobs()}
    lstm = {m for m in cost if "lstm" in m}
    assert len(lstm) == 4 and min(cost[m] for m in lstm) > max(c for m, c in cost.items() if m not in lstm)
    assert cost["gru"] > cost["rnn"] and cost["bn_rnn"] > cost["rnn"]
    per_cell = validate({**cfg, "job_grouping": "cell"}, SCHEMA)
    cells = [w for w, _ in per_cell.jobs() if w["mitigation"] == "lstm"]
    assert sum(per_cell.job_cost(w) for w in cells) == pytest.approx(cost["lstm"])
    by_len = {int(w["length"]): per_cell.job_cost(w) for w in cells if w["task"] == "adding"}
    assert by_len[25] < by_len[50] < by_len[100]
    double = validate({**cfg, "budget": 2 * cfg["budget"], "seeds": [0, 1, 2, 3, 4, 5]}, SCHEMA)
    assert double.job_cost({"mitigation": "rnn", "lr": DEFAULT_LR}) == pytest.approx(4 * cost["rnn"])
    from bench.models.mitigations import TIMESTEP_COST
    assert {(r.family, r.norm) for r in map(MITIGATIONS.get, MITIGATIONS.names())} <= set(TIMESTEP_COST)
    prio = {m: sweep.job_priority({"mitigation": m, "lr": DEFAULT_LR}) for m in cost}
    assert max(prio.values()) == 100 and sorted(prio, key=prio.get) == sorted(cost, key=cost.get)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:3", "cuda:any"])
def test_every_device_name_is_accepted(device):
    """Whether the device is here is checked when a run starts (a clear error record), not here:
    the config may be written on a login node for GPU nodes."""
    assert validate(dict(BASE, device=device), SCHEMA).device == device


def test_numbers_written_as_text_are_read_as_numbers():
    """`snakemake --config seeds=[0,1]` hands over '0', '1'; YAML 1.1 reads 1e-3 as text."""
    cfg = dict(BASE, seeds=["0", "1"], tasks={"adding": ["5"]}, lr={"rnn": ["1e-3"]}, hidden=8.0)
    schema = load_schema(SCHEMA)
    assert coerce_numbers(cfg, schema)["seeds"] == [0, 1]
    sweep = validate(cfg, SCHEMA)
    assert sweep.seeds == [0, 1] and sweep.tasks == {"adding": [5]} and sweep.hidden == 8
    assert sweep.lr == {"rnn": [0.001]} and sweep.lr_labels("rnn") == [format_lr(0.001)] == ["0.001"]


@pytest.mark.parametrize("key", ["reuse_runs", "seed_groups"])
@pytest.mark.parametrize("text,value", [("false", False), ("no", False), ("True", True), ("yes", True)])
def test_boolean_keys_written_as_text_are_read_as_booleans(key, text, value):
    """`--config reuse_runs=false` (Snakemake may hand the word over as text); default true."""
    assert getattr(validate(BASE, SCHEMA), key) is True
    sweep = validate(dict(BASE, **{key: text}), SCHEMA)
    assert getattr(sweep, key) is value and sweep.to_config()[key] is value


# -- through snakemake ------------------------------------------------------------------------

SNAKEMAKE_CASES = {  # id in BAD -> checked again through `snakemake -n`
    "unknown-top-key", "seeds-duplicate", "device-gpu", "task-unknown", "length-below-task-min",
    "mitigation-unknown", "radius-on-lstm", "tbptt-longer-than-sequence", "lr-unknown-key",
}


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory):
    d = tmp_path_factory.mktemp("wf")
    shutil.copy2(REPO / "Snakefile", d / "Snakefile")
    for sub in ("workflow", "config", "profiles"):
        shutil.copytree(REPO / sub, d / sub)
    return d


def _snakemake_n(wd: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", *args], cwd=wd,
                          capture_output=True, text=True, timeout=120)


def _assert_stopped_cleanly(wd: Path, p: subprocess.CompletedProcess, fragments):
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    for f in fragments:
        assert f in p.stderr, f"{f!r} not in stderr:\n{p.stderr}"
    assert "Traceback" not in out and 'File "' not in out, out
    assert "Building DAG" not in out and "Job stats" not in out, out
    assert not (wd / "results").exists() and not (wd / "logs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("cfg, fragments", [c for c in BAD if c.id in SNAKEMAKE_CASES],
                         ids=[c.id for c in BAD if c.id in SNAKEMAKE_CASES])
def test_snakemake_stops_on_a_bad_config_file(workflow_copy, cfg, fragments):
    path = workflow_copy / "config" / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = _snakemake_n(workflow_copy, "--configfile", "config/bad.yaml")
    _assert_stopped_cleanly(workflow_copy, p, fragments + ["config read from config/bad.yaml"])


@pytest.mark.slow
def test_snakemake_stops_on_a_bad_config_override(workflow_copy):
    p = _snakemake_n(workflow_copy, "--config", "seeds=[0,0]", "budget=-1")
    _assert_stopped_cleanly(workflow_copy, p, ["invalid config (2 problems)", "'seeds': duplicate entries 0",
                                               "'budget': must be >= 1, got -1",
                                               "config read from config/config.yaml and --config"])
