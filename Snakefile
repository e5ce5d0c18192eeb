"""RNN gradient benchmark: train every (task, length, mitigation, lr) cell of the sweep in
config/config.yaml, gather the run records into one table, render the report.

    snakemake --cores 2                                   # the default sweep
    snakemake --cores 2 --configfile config/smoke.yaml    # a --configfile replaces config/config.yaml
    snakemake --cores 2 --config budget=50 seeds=[0,1]    # --config overrides single keys
    snakemake --report report/snakemake-report.zip

profiles/default/ is the workflow profile Snakemake picks up by itself.
"""
import shlex

from snakemake.utils import min_version

min_version("9.0")

# A --configfile stands alone: merged into config/config.yaml, it would keep that file's tasks.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/report.smk"


onstart:
    # The recurrences' native kernel (normalized cells, plain RNN, GRU) is built once per machine, here, before any job: about a
    # minute the first time, a second or two to find it afterwards; no training job's time includes it.
    shell(
        "python -m bench native --device {SWEEP.device} --mitigations "
        + " ".join(shlex.quote(m) for m in SWEEP.mitigations)
    )


rule all:
    # The records too: Snakemake (>= 7.7) does not remake a deleted file whose downstream outputs
    # exist, so a record deleted after the report was drawn would otherwise never be retrained.
    input:
        "report/report.html",
        all_records(),
    default_target: True
