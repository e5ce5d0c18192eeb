"""The smoke sweep through SLURM (profiles/slurm, snakemake-executor-plugin-slurm) gives the same
runs as a local run with the same seeds, and its jobs really went through SLURM.

Needs a SLURM cluster whose nodes see this file system and this Python environment:
`bash .ci/slurm_test.sh` starts a one-node cluster on this machine (root, Debian), runs this file
and stops the cluster again. Without `sinfo` on PATH, or with no node up, the test is skipped
(it fails instead when BENCH_SLURM_REQUIRED is set, as .ci/slurm_test.sh does).
On CPU with fixed threads (config/smoke.yaml: device cpu, threads 1) training is deterministic, so
every run record must match the local one exactly, apart from timings and provenance."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMOKE = "config/smoke.yaml"
TIMEOUT_S = 900  # the SLURM run takes 2.5-4 minutes on 2 shared cores

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

READY_STATES = {"idle", "mixed", "allocated", "completing"}
# Parts of a record that depend on when and where it ran, not on what was computed.
VOLATILE_TOP = {"timing", "provenance"}
VOLATILE_ANY = {"wall_s"}  # curve rows
KEY_RESULTS = ("outcome", "steps", "steps_to_solve", "diverged_at", "final")


def slurm_unavailable() -> str | None:
    """Why the SLURM test cannot run here, or None."""
    for tool in ("sinfo", "scontrol", "sbatch", "squeue"):
        if shutil.which(tool) is None:
            return (f"no SLURM here: `{tool}` is not on PATH "
                    "(bash .ci/slurm_test.sh installs and starts a local one-node cluster)")
    try:  # scontrol ping answers at once; sinfo retries for ~10 s when no slurmctld is up
        p = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
        if p.returncode != 0 or "is UP" not in p.stdout:
            first = (p.stdout + p.stderr).strip().splitlines()[:1] or [f"exit {p.returncode}"]
            return f"SLURM cluster not up (scontrol ping: {first[0]})"
        p = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"SLURM cluster not reachable: {e}"
    if p.returncode != 0:
        return f"SLURM cluster not up: sinfo says {p.stderr.strip() or p.returncode!r}"
    states = {s.rstrip("*~#%$@+^-!") for s in p.stdout.split()}
    if not states & READY_STATES:
        return f"no SLURM node ready (node states: {sorted(states) or 'none'})"
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')"
    return None


@pytest.fixture(scope="module")
def cluster():
    reason = slurm_unavailable()
    if reason and os.environ.get("BENCH_SLURM_REQUIRED"):  # set by .ci/slurm_test.sh
        pytest.fail(reason)
    if reason:
        pytest.skip(reason)


def copy_workflow(dst: Path) -> Path:
    dst.mkdir(parents=True)
    shutil.copy2(REPO / "Snakefile", dst / "Snakefile")
    for sub in ("workflow", "config", "profiles"):
        shutil.copytree(REPO / sub, dst / sub, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def start_snakemake(wd: Path, args: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("SNAKEMAKE_PROFILE", None)  # only the profiles named here
    out = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "snakemake", *args], cwd=wd, env=env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen, log: Path, deadline: float) -> str:
    """Wait for `proc` until `deadline`; on time-out interrupt it (Snakemake then scancels its
    SLURM jobs) and fail. Returns the log text."""
    try:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        pytest.fail(f"snakemake timed out after {TIMEOUT_S}s:\n{log.read_text()[-6000:]}")
    text = log.read_text()
    assert proc.returncode == 0, f"snakemake exited {proc.returncode}:\n{text[-8000:]}"
    return text


def run_records(wd: Path) -> dict[str, dict]:
    base = wd / "results" / "runs"
    return {str(p.relative_to(base)): json.loads(p.read_text()) for p in sorted(base.rglob("*.json"))}


def stable(value):
    """A record without what depends on the time and place of the run."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VOLATILE_ANY}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def differences(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}.{k}: only in {'local' if k in a else 'slurm'}")
            else:
                out += differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: local {a!r} != slurm {b!r}"]


def test_smoke_sweep_through_slurm_matches_local(cluster, tmp_path):
    local_wd = copy_workflow(tmp_path / "local")
    slurm_wd = copy_workflow(tmp_path / "slurm")
    deadline = time.monotonic() + TIMEOUT_S

    # The local reference trains the same cells (profiles/default, picked up by itself; one job
    # per mitigation); it runs beside the SLURM run, which mostly waits on job start-up and status
    # polls. The SLURM run takes one job per cell (job_grouping: cell, as docs/SLURM.md advises for
    # clusters), so the records must also not depend on how runs are grouped into jobs.
    local = start_snakemake(local_wd, ["--cores", "2", "--configfile", SMOKE, "--until", "train"],
                            tmp_path / "local.log")
    slurm = start_snakemake(slurm_wd, [
        "--workflow-profile", "profiles/slurm", "--configfile", SMOKE, "--config", "job_grouping=cell",
        "--slurm-init-seconds-before-status-checks", "5",  # short jobs: poll early
        "--slurm-keep-successful-logs",                    # the logs are the evidence below
    ], tmp_path / "slurm.log")
    try:
        slurm_out = finish(slurm, tmp_path / "slurm.log", deadline)
        finish(local, tmp_path / "local.log", deadline)
    finally:
        for proc in (local, slurm):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    # --- the jobs went through SLURM
    assert "Using workflow specific profile profiles/slurm" in slurm_out
    run_id = re.search(r"SLURM run ID: (\S+)", slurm_out)
    assert run_id, slurm_out[-4000:]
    submitted = dict(re.findall(r"submitted with SLURM jobid (\d+) \(log: (.+?)\)", slurm_out))
    train_logs = {j: Path(p) for j, p in submitted.items() if "/rule_train/" in p}
    cells = {str(Path(r).parent) for r in run_records(slurm_wd)}
    assert len(train_logs) == len(cells) > 0, f"{len(train_logs)} train jobs for {len(cells)} cells"
    assert any("/rule_aggregate/" in p for p in submitted.values())
    assert any("/rule_report/" in p for p in submitted.values())
    for jobid, log in train_logs.items():
        assert log.is_file() and log.name == f"{jobid}.log", log
        assert log.is_relative_to(slurm_wd / ".snakemake" / "slurm_logs"), log
        text = log.read_text()
        assert "rule train:" in text and "Finished jobid" in text, text[-3000:]
    q = subprocess.run(["squeue", "--states=all", "--noheader", "--format=%i|%T", "--name",
                        run_id.group(1)], capture_output=True, text=True, timeout=60)
    assert q.returncode == 0, q.stderr
    seen = dict(line.split("|") for line in q.stdout.split())
    # squeue keeps finished jobs for MinJobAge seconds only: check those it still lists
    assert seen, f"squeue does not know SLURM run {run_id.group(1)}"
    assert set(seen) <= set(submitted), (seen, submitted)
    assert set(seen.values()) == {"COMPLETED"}, seen

    # --- the whole smoke sweep ran there
    assert (slurm_wd / "report" / "report.html").is_file()
    assert (slurm_wd / "results" / "runs.parquet").is_file()

    # --- and gave the local results
    local_records, slurm_records = run_records(local_wd), run_records(slurm_wd)
    assert local_records and set(slurm_records) == set(local_records)
    problems = []
    for name, ref in local_records.items():
        rec = slurm_records[name]
        if rec["outcome"] == "error":
            problems.append(f"{name}: training raised: {rec.get('error')}")
            continue
        for key in KEY_RESULTS:
            if rec.get(key) != ref.get(key):
                problems.append(f"{name}: {key}: local {ref.get(key)!r} != slurm {rec.get(key)!r}")
        skip = VOLATILE_TOP | set(KEY_RESULTS)
        rest = differences(stable({k: v for k, v in ref.items() if k not in skip}),
                           stable({k: v for k, v in rec.items() if k not in skip}))
        problems += [f"{name}: {d}" for d in rest[:5]]
    assert not problems, "\n".join(problems[:40])
