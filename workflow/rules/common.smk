"""Shared by the rules: the validated sweep (`SWEEP`), path patterns, wildcard constraints and
input functions. The config is validated here, once, before any job is scheduled."""
import json
import os
import re
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

import bench.config

SCHEMA = "../schemas/config.schema.yaml"  # relative to this file, as snakemake.utils.validate wants


def _stop(error):
    """End Snakemake with the message alone: sys.exit prints it without a traceback, before any
    job (or its output folder) exists."""
    sources = [os.path.relpath(f) for f in workflow.overwrite_configfiles or workflow.configfiles]
    sys.exit(f"{error}\n(config read from {', '.join(sources) or 'no config file'}"
             f"{' and --config' if workflow.config_settings.config else ''}; "
             f"tasks, mitigations and modifiers: `python -m bench list`)")


def _load_sweep():
    """Validate `config` and expand it into the sweep.

    `snakemake --config seeds=[0,1]` hands nested numbers over as text, so numbers are read
    first. snakemake.utils.validate is the schema gate (and fills in the schema defaults); when
    it fails, bench.config says every problem in words, since Snakemake's message dumps the
    schema. The registry checks (names, lengths, compositions) follow."""
    schema_path = workflow.source_path(SCHEMA)
    config.update(bench.config.coerce_numbers(config, bench.config.load_schema(schema_path)))
    try:
        validate(config, SCHEMA)
    except WorkflowError as e:
        _stop(bench.config.ConfigError(bench.config.schema_problems(config, schema_path) or [str(e)]))
    try:
        return bench.config.expand(bench.config.with_defaults(config, schema_path))
    except bench.config.ConfigError as e:
        _stop(e)


SWEEP = _load_sweep()

from bench.report.captions import CAPTIONS, FIGURE_NAMES  # names and captions only: no plotting stack

# The report's own code (and its template): inputs of the aggregate and report rules, so that a
# changed report (a pulled update, a local edit) re-renders from the records on the next run --
# seconds, no training. The engine's code is deliberately not an input of the training jobs (an
# edit would retrain the whole sweep): `snakemake --forcerun train` trains again on purpose, and
# results/.resume then gives back only runs trained by the same engine code.
REPORT_CODE = sorted(
    os.path.join(root, name)
    for root, _, names in os.walk(os.path.join(os.path.dirname(os.path.abspath(bench.config.__file__)), "report"))
    for name in names if name.endswith((".py", ".j2"))
)

# One record per run. One training job writes the records of every cell it trains: all tasks,
# lengths and seeds of one (mitigation, lr) with job_grouping "mitigation" (the default), all seeds
# of one (task, length, mitigation, lr) with "cell".
RUN_RECORD = "results/runs/{task}/T{length}/{mitigation}/lr-{lr}/seed{seed}.json"
# every finished run, taken back by a job that runs again (interrupted, or the sweep grew; bench/resume.py)
RESUME_DIR = "results/.resume"
JOB = "{task}/T{length}/{mitigation}/lr-{lr}" if SWEEP.job_grouping == "cell" else "{mitigation}/lr-{lr}"
TRAIN_BENCHMARK = f"benchmarks/train/{JOB}.tsv"  # Snakemake's timing of each training job
TRAIN_LOG = f"logs/train/{JOB}.log"

# Mitigation names hold '+', ':' and '.': the wildcards match exactly the configured names.
wildcard_constraints:
    task="|".join(map(re.escape, SWEEP.tasks)),
    length=r"\d+",
    mitigation="|".join(map(re.escape, SWEEP.mitigations)),
    lr="|".join(sorted({re.escape(lr) for m in SWEEP.mitigations for lr in SWEEP.lr_labels(m)})),
    seed=r"\d+",


def all_records():
    return [RUN_RECORD.format(task=c.task, length=c.length, mitigation=c.mitigation, lr=c.lr, seed=s)
            for c in SWEEP.cells() for s in SWEEP.seeds]


def train_outputs():
    """The train rule's outputs, cell-major with the seeds inside; the job's own wildcards stay
    open ({mitigation}, {lr}, and with job_grouping "cell" also {task}, {length})."""
    if SWEEP.job_grouping == "cell":
        return expand(RUN_RECORD, seed=SWEEP.seeds, allow_missing=True)
    return [RUN_RECORD.format(task=t, length=length, mitigation="{mitigation}", lr="{lr}", seed=s)
            for t, length in SWEEP.task_lengths() for s in SWEEP.seeds]


def train_jobs():
    """One entry per training job: its name, its benchmark file and its records (the aggregate
    step's jobs table, for the pipeline overhead)."""
    jobs = []
    for w, cells in SWEEP.jobs():
        jobs.append({"job": JOB.format(**w), "benchmark": TRAIN_BENCHMARK.format(**w),
                     "records": [RUN_RECORD.format(task=c.task, length=c.length, mitigation=c.mitigation,
                                                   lr=c.lr, seed=s) for c in cells for s in SWEEP.seeds]})
    return jobs


def train_priority(wildcards):
    """The job's rough cost (0-100): Snakemake starts the dearest training jobs first (bench.config.Sweep.job_cost)."""
    return SWEEP.job_priority(dict(wildcards))


def train_flags(wildcards):
    return SWEEP.train_flags(wildcards.mitigation, wildcards.lr)


def runs_of_outputs(wildcards, output):
    """`--cells TASK@LENGTH ... --seeds ... --out-pattern P`, read off the outputs (cell-major,
    seeds inside): a derived param, so adding a seed or a length reruns the jobs for their new
    outputs and removing one reruns nothing. The pattern keeps the command line short (a job of a
    large sweep has thousands of outputs; one shell argument holds at most 128 KiB)."""
    cells, seeds = [], []
    for f in output:
        m = re.fullmatch(r"results/runs/([^/]+)/T(\d+)/.*/seed(\d+)\.json", f)
        cells += [f"{m.group(1)}@{m.group(2)}"] if f"{m.group(1)}@{m.group(2)}" not in cells else []
        seeds += [m.group(3)] if m.group(3) not in seeds else []
    pattern = RUN_RECORD.replace("{mitigation}", wildcards.mitigation).replace("{lr}", wildcards.lr)
    expected = [pattern.format(task=c.split("@")[0], length=c.split("@")[1], seed=s) for c in cells for s in seeds]
    if list(output) != expected:  # the rule's outputs are cell-major over every seed (train_outputs)
        raise WorkflowError(f"train outputs are not cell-major over the seeds: {list(output)[:4]} ...")
    return f"--cells {' '.join(cells)} --seeds {' '.join(seeds)} --out-pattern {shlex.quote(pattern)}"


def figure_caption(name):
    """The caption file of figure `name` (relative to rules/): workflow/report/<name>.rst, which
    shows bench.report's caption text, or the generic one for a figure without such a file."""
    own = os.path.join(workflow.basedir, "workflow", "report", f"{name}.rst")
    return f"../report/{name}.rst" if os.path.exists(own) else "../report/figure.rst"


def _clear_stale_lock():
    """A run killed with SIGKILL (or a lost machine) leaves .snakemake/locks behind, and the next
    run would stop with LockException. On this host, when no other Snakemake process works in
    this directory, such a lock is stale: remove it, so rerunning the same command resumes.
    Only the main process does this (never a cluster job, which runs beside its main process)."""
    locks = os.path.join(".snakemake", "locks")
    if not workflow.is_main_process or not os.path.isdir("/proc") or not os.path.isdir(locks) or not os.listdir(locks):
        return
    here = os.path.realpath(os.getcwd())
    mine = {os.getpid(), os.getppid()}
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) in mine:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            cwd = os.path.realpath(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if b"snakemake" in cmd and cwd == here:
            return  # another Snakemake works here: its lock is real
    import shutil

    shutil.rmtree(locks, ignore_errors=True)
    print("Removed a stale lock left by a killed run (no other Snakemake process works here).", file=sys.stderr)


_clear_stale_lock()
