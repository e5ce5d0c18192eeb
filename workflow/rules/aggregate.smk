rule aggregate:
    """All records -> one long table (one row per run) and the per-cell summary."""
    input:
        all_records(),
    output:
        records="results/aggregate/records.txt",
        runs_parquet="results/runs.parquet",
        runs_csv="results/runs.csv",
        summary_csv=report("results/summary.csv", caption="../report/summary.rst", category="Tables"),
    log:
        "logs/aggregate/aggregate.log",
    run:
        # The paths go through a file: a full sweep's thousands would overflow one shell argument.
        with open(output.records, "w") as f:
            f.writelines(f"{path}\n" for path in input)
        shell(
            "python -m bench.report aggregate --records-list {output.records:q}"
            " --runs-parquet {output.runs_parquet:q} --runs-csv {output.runs_csv:q}"
            " --summary-csv {output.summary_csv:q} > {log:q} 2>&1"
        )


rule config_used:
    """The effective config (canonical mitigation names, defaults filled in), for the report.
    Any config change rewrites it (params trigger); nothing retrains because of it."""
    output:
        "results/config_used.yaml",
    log:
        "logs/config_used/config_used.log",
    params:
        config=SWEEP.to_config(),
    localrule: True
    run:
        bench.config.write_yaml(params.config, output[0], log=log[0])
