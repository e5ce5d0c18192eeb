"""Results aggregation and the self-contained HTML report.

    python -m bench.report aggregate --records-list FILE --runs-parquet results/runs.parquet \
        --runs-csv results/runs.csv --summary-csv results/summary.csv
    python -m bench.report render --runs results/runs.parquet --config results/config_used.yaml \
        --out report/report.html --figures-dir results/figures

The report is a pure function of runs.parquet (plus the config for provenance).
"""
from .aggregate import (aggregate_records, lr_table, mark_lr_chosen, read_runs, summarize,  # noqa: F401
                        wilson_interval, write_runs)
from .claims import Claim, evaluate_claims  # noqa: F401
from .figures import CAPTIONS, FIGURE_NAMES  # noqa: F401
from .render import SECTION_IDS, render_report  # noqa: F401
