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
    r = sub.add_parser("render", help="runs.parquet -> one self-contained HTML report + figure PNGs")
    r.add_argument("--runs", required=True, help="runs.parquet written by `aggregate`")
    r.add_argument("--config", default=None, help="the config used (YAML), shown in the provenance section")
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
            return 0
        from .aggregate import read_runs
        from .render import render_report

        t0 = time.perf_counter()
        try:
            df = read_runs(args.runs)
        except (OSError, ValueError) as e:
            raise BenchError(f"cannot read the results table {args.runs}: {e}") from None
        out = render_report(df, args.out, config=args.config, figures_dir=args.figures_dir)
        print(f"report -> {out} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
        return 0
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
