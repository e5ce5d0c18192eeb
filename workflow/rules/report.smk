rule report:
    """The HTML report and its figures: a pure function of the runs table and the config."""
    input:
        runs="results/runs.parquet",
        config="results/config_used.yaml",
        jobs="results/jobs.csv",
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
    shell:
        "python -m bench.report render --runs {input.runs:q} --config {input.config:q} --jobs {input.jobs:q}"
        " --out {output.html:q} --figures-dir {params.figures_dir:q} > {log:q} 2>&1"
