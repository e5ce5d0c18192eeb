"""The pipeline-overhead table (results/jobs.csv) and the report's sentence, from hand-made
benchmark files and records (no training): job wall time from Snakemake's benchmark TSV, run
time from the records, overhead share = sum(job wall - run wall) / sum(job wall)."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from bench.records import write_json_atomic
from bench.report import jobs_table, overhead_summary, render_report
from bench.report.__main__ import main as report_main
from bench.report.aggregate import (JOB_INCONSISTENT, JOB_NO_BENCHMARK, JOB_OK, JOB_TOOK_BACK, JOB_UNTIMED,
                                    aggregate_records,
                                    read_benchmark)
from bench.report.render import overhead_sentences

HEAD = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def bench_tsv(path, *seconds, cpu=1.5, rss=300.0):
    """A Snakemake benchmark file: one row per repeat."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEAD + "".join(f"{s}\t0:00:{int(s):02d}\t{rss}\t900\t250\t260\t0\t0\t95\t{cpu}\n"
                                   for s in seconds))
    return str(path)


def runs(**walls):
    """A runs table: record path -> wall_s, with the training loop (train_s) 80% of it; None =
    an error record (no timing)."""
    rows = []
    for path, w in walls.items():
        t = (lambda f: float("nan") if w is None else w * f)
        rows.append({"record_path": path, "wall_s": t(1.0), "train_s": t(0.8), "eval_s": t(0.1), "diag_s": t(0.05)})
    return pd.DataFrame(rows)


def test_read_benchmark_mean_over_repeats_and_missing(tmp_path):
    p = bench_tsv(tmp_path / "a.tsv", 10.0, 12.0, cpu=3.0, rss=100.0)
    b = read_benchmark(p)
    assert b == {"job_wall_s": 11.0, "cpu_s": 3.0, "max_rss_mb": 100.0}
    assert read_benchmark(tmp_path / "missing.tsv") == {}
    (tmp_path / "empty.tsv").write_text(HEAD)
    assert read_benchmark(tmp_path / "empty.tsv") == {}
    (tmp_path / "bad.tsv").write_text("x\ty\n1\t2\n")  # no `s` column
    assert read_benchmark(tmp_path / "bad.tsv") == {}


def test_jobs_table_rows_and_statuses(tmp_path):
    jobs = [
        {"job": "ok1", "benchmark": bench_tsv(tmp_path / "ok1.tsv", 10.0), "records": ["r/a0.json", "r/a1.json"]},
        {"job": "ok2", "benchmark": bench_tsv(tmp_path / "ok2.tsv", 20.0), "records": ["r/b0.json", "./r/b1.json"]},
        {"job": "nobench", "benchmark": str(tmp_path / "none.tsv"), "records": ["r/c0.json"]},
        {"job": "err", "benchmark": bench_tsv(tmp_path / "err.tsv", 3.0), "records": ["r/d0.json", "r/d1.json"]},
        {"job": "gone", "benchmark": bench_tsv(tmp_path / "gone.tsv", 3.0), "records": ["r/e0.json", "r/missing.json"]},
        {"job": "stale", "benchmark": bench_tsv(tmp_path / "stale.tsv", 5.0), "records": ["r/f0.json"]},
    ]
    df = runs(**{"r/a0.json": 4.0, "r/a1.json": 5.0, "r/b0.json": 7.0, "r/b1.json": 7.0, "r/c0.json": 1.0,
                 "r/d0.json": 1.0, "r/d1.json": None, "r/e0.json": 1.0, "r/f0.json": 6.0})
    t = jobs_table(jobs, df).set_index("job")
    assert list(t.index) == [j["job"] for j in jobs]
    assert t.loc["ok1", "job_wall_s"] == 10.0 and t.loc["ok1", "run_wall_s"] == 9.0
    assert t.loc["ok1", "overhead_s"] == pytest.approx(1.0) and t.loc["ok1", "overhead_frac"] == pytest.approx(0.1)
    assert t.loc["ok1", "train_loop_s"] == pytest.approx(9.0 * 0.8)
    assert t.loc["ok2", "run_wall_s"] == 14.0  # './r/b1.json' matched to 'r/b1.json'
    assert t.loc["ok2", "overhead_s"] == pytest.approx(6.0) and t.loc["ok2", "cpu_s"] == 1.5
    assert dict(t["status"]) == {"ok1": JOB_OK, "ok2": JOB_OK, "nobench": JOB_NO_BENCHMARK, "err": JOB_UNTIMED,
                                 "gone": JOB_UNTIMED, "stale": JOB_INCONSISTENT}
    assert math.isnan(t.loc["nobench", "job_wall_s"]) and t.loc["nobench", "run_wall_s"] == 1.0
    assert t.loc["err", "n_records"] == 2 and t.loc["err", "n_timed"] == 1

    o = overhead_summary(t.reset_index())
    assert o["n_jobs"] == 6 and o["n_used"] == 2
    assert o["excluded"] == {JOB_NO_BENCHMARK: 1, JOB_UNTIMED: 2, JOB_INCONSISTENT: 1}
    assert o["job_wall_s"] == 30.0 and o["run_wall_s"] == 23.0
    assert o["share"] == pytest.approx(7 / 30)  # (1 + 6) / (10 + 20), not the mean of 0.1 and 0.3
    assert o["median_overhead_s"] == pytest.approx(3.5) and o["mean_job_wall_s"] == 15.0
    assert o["outside_loop_share"] == pytest.approx((30 - 23 * 0.8) / 30)
    assert o["met"] is False


@pytest.mark.parametrize("job_wall,run_wall,met", [(100.0, 95.0, True), (100.0, 90.0, True), (100.0, 89.0, False),
                                                    (10.0, 2.0, False)])
def test_verdict_follows_the_share(tmp_path, job_wall, run_wall, met):
    jobs = [{"job": "j", "benchmark": bench_tsv(tmp_path / "j.tsv", job_wall), "records": ["x.json"]}]
    o = overhead_summary(jobs_table(jobs, runs(**{"x.json": run_wall})))
    assert o["share"] == pytest.approx((job_wall - run_wall) / job_wall)
    assert o["met"] is met
    text = " ".join(overhead_sentences(o))
    assert f"{o['share']:.1%}" in text
    assert ("target at most 10%: met" in text) is met and ("not met" in text) is (not met)


def test_no_timings_no_verdict(tmp_path):
    o = overhead_summary(None)
    assert o["met"] is None and math.isnan(o["share"])
    assert "cannot be computed" in overhead_sentences(o, "no job timings were given")[0]
    jobs = [{"job": "j", "benchmark": str(tmp_path / "missing.tsv"), "records": ["x.json"]}]
    o = overhead_summary(jobs_table(jobs, runs(**{"x.json": 3.0})))
    assert o["met"] is None and o["n_used"] == 0 and o["excluded"] == {JOB_NO_BENCHMARK: 1}
    s = " ".join(overhead_sentences(o))
    assert "cannot be computed" in s and "benchmark file" in s and "target at most" not in s


def _record(seed, wall):
    from test_report import record  # tests/ is on sys.path (no __init__.py: rootdir-relative imports)

    rec = record(seed=seed, length=10)
    rec["timing"]["wall_s"] = wall
    return rec


def test_aggregate_and_render_end_to_end(tmp_path):
    """`bench.report aggregate --jobs-list` writes jobs.csv; the report's timing section states
    the share and the verdict; without benchmark files it still renders and says so."""
    paths = []
    for s, wall in enumerate((3.0, 4.0)):
        p = tmp_path / "results" / "runs" / f"seed{s}.json"
        write_json_atomic(p, _record(s, wall))
        paths.append(str(p))
    (tmp_path / "records.txt").write_text("\n".join(paths) + "\n")
    bench = bench_tsv(tmp_path / "benchmarks" / "cell.tsv", 9.0)
    (tmp_path / "jobs.json").write_text(json.dumps([{"job": "cell", "benchmark": bench, "records": paths}]))
    out = {k: str(tmp_path / "results" / k) for k in ("runs.parquet", "runs.csv", "summary.csv", "jobs.csv")}
    rc = report_main(["aggregate", "--records-list", str(tmp_path / "records.txt"), "--runs-parquet",
                      out["runs.parquet"], "--runs-csv", out["runs.csv"], "--summary-csv", out["summary.csv"],
                      "--jobs-list", str(tmp_path / "jobs.json"), "--jobs-csv", out["jobs.csv"]])
    assert rc == 0
    jt = pd.read_csv(out["jobs.csv"])
    assert len(jt) == 1 and jt.loc[0, "overhead_s"] == pytest.approx(2.0) and jt.loc[0, "status"] == JOB_OK
    html = tmp_path / "report.html"
    assert report_main(["render", "--runs", out["runs.parquet"], "--jobs", out["jobs.csv"], "--out", str(html)]) == 0
    text = html.read_text()
    assert 'id="pipeline-overhead"' in text
    assert "2.0 s of 9.0 s of job time" in text and "22.2%" in text and "target at most 10%: not met" in text
    loops = sum(_record(s, 0)["timing"]["train_s"] for s in range(2))  # the records' training loops
    assert f"{(9.0 - loops) / 9.0:.1%} of job time" in text

    # records copied from elsewhere: no benchmark file -> the report renders and says why there is no share
    (tmp_path / "benchmarks" / "cell.tsv").unlink()
    df = aggregate_records(paths)
    jt = jobs_table(json.loads((tmp_path / "jobs.json").read_text()), df)
    text = render_report(df, tmp_path / "r2.html", jobs=jt).read_text()
    assert "cannot be computed" in text and "no benchmark file" in text and "target at most" not in text
    text = render_report(df, tmp_path / "r3.html", jobs=None).read_text()
    assert "no job timings were given" in text
    text = render_report(df, tmp_path / "r4.html", jobs=tmp_path / "nope.csv").read_text()
    assert "could not be read" in text


def test_a_job_that_took_runs_back_is_left_out_of_the_share(tmp_path):
    """A job that took a run back from results/.resume did not spend that run's time: counting it
    would understate the overhead (here 2 s of 10 s would read as 2 - 7 < 0 or, with a shorter
    taken-back run, as a share too small), so it is excluded and named."""
    jobs = [{"job": "fresh", "benchmark": bench_tsv(tmp_path / "a.tsv", 10.0), "records": ["r/a0.json", "r/a1.json"]},
            {"job": "grown", "benchmark": bench_tsv(tmp_path / "b.tsv", 4.0), "records": ["r/b0.json", "r/b1.json"]}]
    df = runs(**{"r/a0.json": 4.0, "r/a1.json": 5.0, "r/b0.json": 1.0, "r/b1.json": 2.5})
    df["prov_taken_back_utc"] = [None, None, "2026-12-02T16:00:00+00:00", None]
    t = jobs_table(jobs, df).set_index("job")
    assert dict(t["status"]) == {"fresh": JOB_OK, "grown": JOB_TOOK_BACK}
    o = overhead_summary(t.reset_index())
    assert o["n_used"] == 1 and o["excluded"] == {JOB_TOOK_BACK: 1} and o["share"] == pytest.approx(0.1)
    assert f"1 {JOB_TOOK_BACK}" in " ".join(overhead_sentences(o))

    t.loc["fresh", "status"] = JOB_TOOK_BACK  # every job of the sweep took runs back: no share, and why
    text = " ".join(overhead_sentences(overhead_summary(t.reset_index())))
    assert "cannot be computed from this sweep" in text and "reuse_runs=false" in text
