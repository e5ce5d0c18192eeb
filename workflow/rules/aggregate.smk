rule aggregate:
    """All records -> one long table (one row per run) and the per-cell summary; and one row per
    training job (results/jobs.csv): its wall time from Snakemake's benchmark file against the
    run times in its records, i.e. the pipeline's overhead. The benchmark files are read where
    they exist, not required: records without them (copied from elsewhere) never retrain."""
    input:
        records=all_records(),
        code=REPORT_CODE,
    output:
        records="results/aggregate/records.txt",
        jobs_list="results/aggregate/jobs.json",
        runs_parquet="results/runs.parquet",
        runs_csv="results/runs.csv",
        summary_csv=report("results/summary.csv", caption="../report/summary.rst", category="Tables"),
        jobs_csv="results/jobs.csv",
    log:
        "logs/aggregate/aggregate.log",
    run:
        # The paths go through files: a full sweep's thousands would overflow one shell argument.
        with open(output.records, "w") as f:
            f.writelines(f"{path}\n" for path in input.records)
        with open(output.jobs_list, "w") as f:
            json.dump(train_jobs(), f, indent=1)
        shell(
            "python -m bench.report aggregate --records-list {output.records:q}"
            " --runs-parquet {output.runs_parquet:q} --runs-csv {output.runs_csv:q}"
            " --summary-csv {output.summary_csv:q} --jobs-list {output.jobs_list:q}"
            " --jobs-csv {output.jobs_csv:q} > {log:q} 2>&1"
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
