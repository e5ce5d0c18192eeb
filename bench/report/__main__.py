"""`python -m bench.report aggregate|render` (see bench/report/__init__.py)."""
from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional

from ..errors import BenchError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.report", description="aggregate run records; render the report")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("aggregate", help="records -> runs.parquet, runs.csv, summary.csv")
    a.add_argument("--records-list", required=True, help="text file, one record path per line")
    a.add_argument("--runs-parquet", required=True)
    a.add_argument("--runs-csv", required=True)
    a.add_argument("--summary-csv", required=True)
    a.add_argument("--jobs-list", default=None,
                   help="JSON list of the training jobs: {job, benchmark (Snakemake's TSV), records}")
    a.add_argument("--jobs-csv", default=None, help="one row per training job: wall time, run time, overhead")
    r = sub.add_parser("render", help="runs.parquet -> one self-contained HTML report + figure PNGs")
    r.add_argument("--runs", required=True, help="runs.parquet written by `aggregate`")
    r.add_argument("--config", default=None, help="the config used (YAML), shown in the provenance section")
    r.add_argument("--jobs", default=None, help="jobs.csv written by `aggregate` (the pipeline overhead)")
    r.add_argument("--perf", default=None,
                   help="the perf suite's pytest-benchmark JSON (perf/README.md): the engine benchmark table")
    r.add_argument("--out", required=True, help="the HTML file to write")
    r.add_argument("--figures-dir", default=None, help="also write every figure as <dir>/<name>.png")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "aggregate":
            from .aggregate import aggregate_records, read_records_list, summarize, write_runs

            try:
                paths = read_records_list(args.records_list)
            except OSError as e:
                raise BenchError(f"cannot read the records list {args.records_list}: {e}") from None
            df = aggregate_records(paths)
            write_runs(df, args.runs_parquet, args.runs_csv)
            s = summarize(df)
            s.to_csv(args.summary_csv, index=False)
            n_err = int((df["outcome"] == "error").sum())
            print(f"aggregated {len(df)} records ({n_err} errors) -> {args.runs_parquet}, {args.runs_csv}, "
                  f"{args.summary_csv} ({len(s)} summary rows)", file=sys.stderr)
            if args.jobs_csv:
                from pathlib import Path

                from .aggregate import jobs_table, overhead_summary, read_jobs_list

                try:
                    jobs = read_jobs_list(args.jobs_list) if args.jobs_list else []
                except (OSError, ValueError) as e:
                    raise BenchError(f"cannot read the jobs list {args.jobs_list}: {e}") from None
                jt = jobs_table(jobs, df)
                Path(args.jobs_csv).parent.mkdir(parents=True, exist_ok=True)
                jt.to_csv(args.jobs_csv, index=False)
                o = overhead_summary(jt)
                print(f"{len(jt)} training jobs -> {args.jobs_csv}; overhead {o['overhead_s']:.1f} s of "
                      f"{o['job_wall_s']:.1f} s job time ({o['share']:.1%}) over {o['n_used']} jobs with timings",
                      file=sys.stderr)
            return 0
        from .aggregate import read_runs
        from .render import render_report

        t0 = time.perf_counter()
        try:
            df = read_runs(args.runs)
        except (OSError, ValueError) as e:
            raise BenchError(f"cannot read the results table {args.runs}: {e}") from None
        out = render_report(df, args.out, config=args.config, figures_dir=args.figures_dir, jobs=args.jobs,
                            perf=args.perf)
        print(f"report -> {out} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
        return 0
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
