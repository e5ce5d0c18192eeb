rule report:
    """The HTML report and its figures: a pure function of the runs table and the config (and,
    when the config names one, the perf suite's results: perf_results)."""
    input:
        runs="results/runs.parquet",
        config="results/config_used.yaml",
        jobs="results/jobs.csv",
        perf=[SWEEP.perf_results] if SWEEP.perf_results else [],
        code=REPORT_CODE,
    output:
        html=report("report/report.html", caption="../report/report_html.rst", category="Report"),
        figures=[
            report(f"results/figures/{name}.png", caption=figure_caption(name), category="Figures",
                   labels={"figure": name})
            for name in FIGURE_NAMES
        ],
    log:
        "logs/report/report.log",
    params:
        figures_dir=lambda wildcards, output: os.path.dirname(output.figures[0]),
        captions=CAPTIONS,  # read by the figure captions of `snakemake --report`
        perf=lambda wildcards, input: f"--perf {shlex.quote(input.perf[0])}" if input.perf else "",
    shell:
        "python -m bench.report render --runs {input.runs:q} --config {input.config:q} --jobs {input.jobs:q}"
        " {params.perf} --out {output.html:q} --figures-dir {params.figures_dir:q} > {log:q} 2>&1"
