"""The Snakemake pipeline end to end on config/smoke.yaml, in a copy of the workflow: one record
and one table row per run, the report with every section and figure, no work redone on a
second invocation, and only the changed mitigation's job retrained after a config edit; the same
records whether a job trains one mitigation's cells (the default) or one cell."""
from __future__ import annotations

import re
import shutil
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bench.config import validate
from bench.records import read_record

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
RUN_RECORD = "results/runs/{task}/T{length}/{mitigation}/lr-{lr}/seed{seed}.json"

pytestmark = pytest.mark.slow


def copy_workflow(dst: Path) -> Path:
    shutil.copy2(REPO / "Snakefile", dst / "Snakefile")
    for sub in ("workflow", "config", "profiles"):
        shutil.copytree(REPO / sub, dst / sub)
    return dst


def snakemake(wd: Path, *args, timeout=300) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd=wd,
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    return p


def expected_records(config_path: Path):
    sweep = validate(yaml.safe_load(config_path.read_text()), SCHEMA)
    return sweep, {RUN_RECORD.format(task=c.task, length=c.length, mitigation=c.mitigation, lr=c.lr, seed=s)
                   for c in sweep.cells() for s in sweep.seeds}


def job_counts(output: str) -> dict:
    """The 'Job stats' table Snakemake prints: rule -> jobs."""
    table = output.split("Job stats:")[1].split("\n\n")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def mtimes(wd: Path, pattern: str) -> dict:
    return {str(p.relative_to(wd)): p.stat().st_mtime_ns for p in wd.glob(pattern)}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke sweep, run once; the tests below go on from its state in this order."""
    wd = copy_workflow(tmp_path_factory.mktemp("pipeline"))
    t0 = time.perf_counter()
    p = snakemake(wd, "--configfile", "config/smoke.yaml")
    return wd, p, time.perf_counter() - t0


def test_smoke_runs_end_to_end(smoke):
    from bench.report import FIGURE_NAMES, SECTION_IDS

    wd, p, seconds = smoke
    out = p.stdout + p.stderr
    assert "Using workflow specific profile profiles/default" in out  # picked up by itself
    assert "bench native: native kernel ready" in out  # onstart: rnn on the CPU runs the kernel
    sweep, expected = expected_records(wd / "config" / "smoke.yaml")
    assert job_counts(out)["train"] == len(list(sweep.jobs())) == 3  # one per (mitigation, lr)
    assert set(map(str, (q.relative_to(wd) for q in wd.glob("results/runs/**/*.json")))) == expected
    for path in expected:
        rec = read_record(wd / path)
        assert rec["outcome"] != "error", rec.get("error")

    df = pd.read_parquet(wd / "results" / "runs.parquet")
    assert len(df) == len(expected)
    assert set(df["record_path"].map(lambda s: str(Path(s)))) == expected
    assert set(df["p_mitigation"]) == set(sweep.mitigations)
    assert set(df["lr_used"][df["p_mitigation"] == "rnn"]) == {0.01}  # the lr grid reached the run
    assert set(df["optimizer_used"][df["p_mitigation"] == "lstm"]) == {"rmsprop"}
    for name in ("runs.csv", "summary.csv", "aggregate/records.txt"):
        assert (wd / "results" / name).stat().st_size > 0

    used = yaml.safe_load((wd / "results" / "config_used.yaml").read_text())
    assert validate(used, SCHEMA) == sweep

    html = (wd / "report" / "report.html").read_text()
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in html, sid
    for name in FIGURE_NAMES:
        assert (wd / "results" / "figures" / f"{name}.png").stat().st_size > 0, name
    for w, cells in sweep.jobs():
        job = f"{w['mitigation']}/lr-{w['lr']}"
        assert len(cells) == 2  # both tasks' lengths in one process
        assert (wd / "logs" / "train" / f"{job}.log").exists()
        assert (wd / "benchmarks" / "train" / f"{job}.tsv").exists()
    jobs = pd.read_csv(wd / "results" / "jobs.csv")
    assert len(jobs) == 3 and set(jobs["n_records"]) == {2 * 2} and set(jobs["status"]) == {"ok"}
    print(f"smoke sweep: {seconds:.0f} s")


def test_second_invocation_does_nothing(smoke):
    wd = smoke[0]
    before = mtimes(wd, "results/**/*.*") | mtimes(wd, "report/*")
    p = snakemake(wd, "--configfile", "config/smoke.yaml")
    assert "Nothing to be done" in p.stdout + p.stderr
    assert mtimes(wd, "results/**/*.*") | mtimes(wd, "report/*") == before


def test_a_changed_report_code_re_renders_without_training(tmp_path):
    """The report's sources are inputs of aggregate and report: an edited one (a pulled update)
    re-renders from the records; nothing trains. Run on a copy of the bench package (PYTHONPATH), so
    the edit never touches the checkout; Snakemake compares contents, a mere touch re-renders nothing."""
    (tmp_path / "wd").mkdir()
    wd = copy_workflow(tmp_path / "wd")
    shutil.copytree(REPO / "bench", tmp_path / "pkg" / "bench", ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "pkg"))
    args = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "config/smoke.yaml",
            "--config", "mitigations=[rnn,lstm]", "seeds=[0]"]

    def run(*extra):
        p = subprocess.run(args + list(extra), cwd=wd, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
        return p.stdout + p.stderr

    run()
    records = mtimes(wd, "results/runs/**/*.json")
    assert records
    src = tmp_path / "pkg" / "bench" / "report" / "render.py"
    src.touch()
    assert "Nothing to be done" in run("-n")  # same contents
    src.write_text(src.read_text() + "\n# an edit\n")
    counts = job_counts(run("-n"))
    assert counts.get("aggregate") == 1 and counts.get("report") == 1 and "train" not in counts, counts
    run()
    assert mtimes(wd, "results/runs/**/*.json") == records  # not retrained
    assert "Nothing to be done" in run("-n")


def test_snakemake_report_collects_the_figures(smoke):
    from bench.report import FIGURE_NAMES

    wd = smoke[0]
    snakemake(wd, "--configfile", "config/smoke.yaml", "--report", "report/snakemake-report.zip")
    import zipfile

    names = zipfile.ZipFile(wd / "report" / "snakemake-report.zip").namelist()
    for fig in FIGURE_NAMES:
        assert any(n.endswith(f"/{fig}.png") for n in names), fig
    assert any(n.endswith("/summary.csv") for n in names)


def test_changing_one_mitigation_retrains_only_its_job(smoke):
    wd = smoke[0]
    cfg = yaml.safe_load((wd / "config" / "smoke.yaml").read_text())
    cfg["mitigations"] = ["rnn", "lstm", "rnn+clipvalue:0.5"]  # was rnn+clipnorm:1
    (wd / "config" / "edited.yaml").write_text(yaml.safe_dump(cfg))
    kept = {k: v for k, v in mtimes(wd, "results/runs/**/*.json").items() if "clipnorm" not in k}
    assert kept
    # target the table only (the report is not needed); --configfile takes every word after it
    p = snakemake(wd, "results/runs.parquet", "--configfile", "config/edited.yaml")
    assert job_counts(p.stdout + p.stderr)["train"] == 1  # the new mitigation's job
    now = mtimes(wd, "results/runs/**/*.json")
    assert {k: now[k] for k in kept} == kept  # untouched cells: not retrained
    sweep, expected = expected_records(wd / "config" / "edited.yaml")
    assert {k for k in expected if "clipvalue" in k} <= set(now)
    df = pd.read_parquet(wd / "results" / "runs.parquet")
    assert set(df["p_mitigation"]) == {"rnn", "lstm", "rnn+clipvalue:0.5"} and len(df) == len(expected)


def test_placement_settings_do_not_retrain_but_training_settings_do(smoke):
    """device and threads only place a job and dropping a seed or a task only drops its records; budget
    shapes every record (the params trigger) and a new seed is a missing output in every job."""
    wd = smoke[0]
    args = ("-n", "--configfile", "config/edited.yaml")
    p = snakemake(wd, *args, "--config", "threads=2", "device=auto", "seeds=[1]")
    assert "train" not in job_counts(p.stdout + p.stderr)
    cfg = yaml.safe_load((wd / "config" / "edited.yaml").read_text())
    cfg["tasks"] = {"adding": cfg["tasks"]["adding"]}  # the copy task's cells dropped
    (wd / "config" / "fewer.yaml").write_text(yaml.safe_dump(cfg))
    p = snakemake(wd, "-n", "--configfile", "config/fewer.yaml")
    assert "train" not in job_counts(p.stdout + p.stderr)
    p = snakemake(wd, *args, "--config", "budget=30")
    assert job_counts(p.stdout + p.stderr)["train"] == 3
    p = snakemake(wd, *args, "--config", "seeds=[0,1,2]")
    assert job_counts(p.stdout + p.stderr)["train"] == 3
    p = snakemake(wd, *args, "--config", "job_grouping=cell", "budget=30")
    assert job_counts(p.stdout + p.stderr)["train"] == 6


def test_the_native_kernel_is_ready_before_the_first_job(smoke):
    """A sweep with a normalized cell on the CPU: Snakemake's onstart builds or finds the kernel,
    so no training job builds it (its log would say so) and the record names the native loops."""
    wd = smoke[0]
    cfg = yaml.safe_load((wd / "config" / "smoke.yaml").read_text())
    cfg.update(mitigations=["ln_rnn"], lr={}, optimizer={}, budget=10, tasks={"adding": [5]})
    (wd / "config" / "norm.yaml").write_text(yaml.safe_dump(cfg))
    p = snakemake(wd, "results/runs.parquet", "--configfile", "config/norm.yaml")
    out = p.stdout + p.stderr
    assert "bench native: native kernel ready" in out
    assert out.index("bench native:") < out.index("rule train")
    logs = list(wd.glob("logs/train/**/ln_rnn/**/*.log"))
    assert logs and not any("building the recurrences' native kernel" in q.read_text() for q in logs)
    recs = list(wd.glob("results/runs/**/ln_rnn/**/*.json"))
    assert recs and all(json.loads(r.read_text())["provenance"]["normseq_backend"].startswith("native-")
                        for r in recs)


def test_dry_run_of_the_default_sweep(tmp_path):
    wd = copy_workflow(tmp_path)
    p = snakemake(wd, "-n")
    sweep, _ = expected_records(wd / "config" / "config.yaml")
    counts = job_counts(p.stdout + p.stderr)
    assert counts["train"] == len(list(sweep.jobs())) == len(sweep.mitigations) == 13
    assert counts["aggregate"] == counts["report"] == counts["config_used"] == 1
    assert not (wd / "results").exists()


def test_config_overrides_reach_the_jobs(tmp_path):
    wd = copy_workflow(tmp_path)
    p = snakemake(wd, "-n", "--configfile", "config/smoke.yaml", "--config", "budget=50", "seeds=[3,4,5]",
                  "lr={lstm: [0.002, 0.02]}", "mitigations=[rnn,lstm]")
    out = p.stdout + p.stderr
    assert job_counts(out)["train"] == 3  # rnn at 0.01 + lstm at 2 rates, both tasks in each
    cmds = [line for line in out.splitlines() if "bench run-cell" in line]
    assert cmds and all("--budget 50" in c and "--cells adding@5 copy@2 --seeds 3 4 5 " in c for c in cmds)
    assert sum("--mitigation lstm " in c and "--lr 0.02 --optimizer rmsprop" in c for c in cmds) == 1


def test_gpu_profile_and_full_config(tmp_path):
    wd = copy_workflow(tmp_path)
    p = snakemake(wd, "-n", "--configfile", "config/full.yaml", "--profile", "profiles/gpu")
    out = p.stdout + p.stderr
    sweep, _ = expected_records(wd / "config" / "full.yaml")
    assert job_counts(out)["train"] == len(list(sweep.jobs())) == sum(len(sweep.lr_labels(m)) for m in sweep.mitigations)
    train_resources = re.findall(r"rule train:\n(?:    .*\n)*?    resources: (.*)", out)
    assert train_resources and all("gpu=1" in r for r in train_resources)


def test_the_dearest_training_jobs_start_first(tmp_path):
    """The train rule's priority (bench.config.Sweep.job_cost): on one core the jobs run in
    decreasing order of their rough cost -- the LSTMs before the GRU before the tanh RNN --
    whatever the config's order, so that no long job starts last."""
    wd = copy_workflow(tmp_path)
    mits = ["rnn", "gru", "ln_lstm", "bn_rnn", "lstm"]
    p = snakemake(wd, "--configfile", "config/smoke.yaml", "--cores", "1", "--config", f"mitigations=[{','.join(mits)}]",
                  "lr={}", "optimizer={}")
    started = re.findall(r"rule train:\n(?:    .*\n)*?    wildcards: mitigation=([^,]+),", p.stdout + p.stderr)
    sweep = validate({**yaml.safe_load((wd / "config" / "smoke.yaml").read_text()), "mitigations": mits,
                      "lr": {}, "optimizer": {}}, SCHEMA)
    cost = {w["mitigation"]: sweep.job_cost(w) for w, _ in sweep.jobs()}
    assert sorted(started) == sorted(mits)
    assert [cost[m] for m in started] == sorted(cost.values(), reverse=True)
    assert started.index("gru") > max(started.index("lstm"), started.index("ln_lstm"))
    assert started[-1] == "rnn"


def test_one_job_per_cell_gives_the_same_records(smoke, tmp_path):
    """job_grouping: cell -- one job per (task, length, mitigation, lr) -- trains the same runs to
    the same records, bit for bit (timings and provenance aside), as the default grouping."""
    ref = smoke[0]
    wd = copy_workflow(tmp_path)
    p = snakemake(wd, "results/runs.parquet", "--configfile", "config/smoke.yaml", "--config", "job_grouping=cell")
    sweep, expected = expected_records(wd / "config" / "smoke.yaml")
    assert job_counts(p.stdout + p.stderr)["train"] == len(list(sweep.cells())) == 6
    for c in sweep.cells():
        assert (wd / "logs" / "train" / c.task / f"T{c.length}" / c.mitigation / f"lr-{c.lr}.log").exists()

    def strip(path):
        rec = json.loads(path.read_text())
        rec.pop("timing"), rec.pop("provenance")
        for row in rec["curve"]:
            row.pop("wall_s", None)
        return rec

    for path in expected:
        assert strip(wd / path) == strip(ref / path), path
    jobs = pd.read_csv(wd / "results" / "jobs.csv")
    assert len(jobs) == 6 and set(jobs["n_records"]) == {2}

    # a record deleted after the tables exist is retrained by the default target (its job only)
    victim = sorted(expected)[0]
    want = strip(wd / victim)
    (wd / victim).unlink()
    cell_dir = str(Path(victim).parent)  # its job also retrains the cell's other seeds
    others = {k: v for k, v in mtimes(wd, "results/runs/**/*.json").items() if not k.startswith(cell_dir)}
    assert others
    p = snakemake(wd, "--configfile", "config/smoke.yaml", "--config", "job_grouping=cell")
    counts = job_counts(p.stdout + p.stderr)
    assert counts["train"] == 1 and counts["aggregate"] == 1, counts
    assert strip(wd / victim) == want
    assert {k: v for k, v in mtimes(wd, "results/runs/**/*.json").items() if k in others} == others
    assert (wd / "report" / "report.html").exists()


def test_a_grown_sweep_trains_only_its_new_runs(smoke):
    """A new seed is a new output of every job: Snakemake runs each job again (deleting its
    outputs), and each takes its finished runs back from results/.resume instead of training them;
    the report's overhead share leaves those jobs out. reuse_runs: false trains them all again."""
    wd = smoke[0]
    cfg = yaml.safe_load((wd / "config" / "edited.yaml").read_text())
    cfg["seeds"] = [0, 1, 2]
    (wd / "config" / "grown.yaml").write_text(yaml.safe_dump(cfg))
    sweep, expected = expected_records(wd / "config" / "grown.yaml")
    old = {k: json.loads((wd / k).read_text()) for k in expected if not k.endswith("seed2.json")}
    assert len(old) == 12 and all("taken_back_utc" not in r["provenance"] for r in old.values())

    p = snakemake(wd, "results/runs.parquet", "--configfile", "config/grown.yaml")
    assert job_counts(p.stdout + p.stderr)["train"] == 3
    for wc, _ in sweep.jobs():
        log = (wd / "logs" / "train" / wc["mitigation"] / f"lr-{wc['lr']}.log").read_text()
        assert "4 of 6 run(s) taken from results/.resume" in log, log
    for k in expected:
        rec = json.loads((wd / k).read_text())
        if k in old:  # the same record, with the time it was taken back
            assert rec["provenance"].pop("taken_back_utc") and rec == old[k], k
        else:
            assert "taken_back_utc" not in rec["provenance"], k
    jobs = pd.read_csv(wd / "results" / "jobs.csv")
    assert list(jobs["status"]) == ["runs taken back from an earlier process"] * 3

    p = snakemake(wd, "results/runs.parquet", "--forcerun", "train", "--configfile", "config/grown.yaml",
                  "--config", "reuse_runs=false")
    assert job_counts(p.stdout + p.stderr)["train"] == 3
    for k in expected:
        assert "taken_back_utc" not in json.loads((wd / k).read_text())["provenance"], k
    assert set(pd.read_csv(wd / "results" / "jobs.csv")["status"]) == {"ok"}
