"""Results aggregation and the self-contained HTML report.

    python -m bench.report aggregate --records-list FILE --runs-parquet results/runs.parquet \
        --runs-csv results/runs.csv --summary-csv results/summary.csv \
        [--jobs-list FILE --jobs-csv results/jobs.csv]
    python -m bench.report render --runs results/runs.parquet --config results/config_used.yaml \
        [--jobs results/jobs.csv] --out report/report.html --figures-dir results/figures

The report is a pure function of runs.parquet (plus the config for provenance and, when given,
the per-job timings in jobs.csv for the pipeline overhead).

The figure names and captions (bench.report.captions) load without the plotting stack; the
rest (pandas, scipy, matplotlib) loads on first use of a name, so that
`from bench.report import FIGURE_NAMES` in the Snakefile stays light.
"""
from importlib import import_module

from .captions import CAPTIONS, FIGURE_NAMES  # noqa: F401

_LAZY = {
    "aggregate_records": "aggregate", "lr_table": "aggregate", "mark_lr_chosen": "aggregate",
    "read_runs": "aggregate", "summarize": "aggregate", "wilson_interval": "aggregate", "write_runs": "aggregate",
    "jobs_table": "aggregate", "overhead_summary": "aggregate",
    "Claim": "claims", "evaluate_claims": "claims",
    "SECTION_IDS": "render", "render_report": "render",
}

__all__ = ["CAPTIONS", "FIGURE_NAMES", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
