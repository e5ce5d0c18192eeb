rule train:
    """Train every seed of one (task, length, mitigation, lr) cell in one process. A run that
    raises becomes an 'error' record (bench run-cell), so a training failure never fails the job.

    params.settings holds exactly what shapes a record, so the params rerun trigger retrains a
    cell when it changes and leaves the other cells alone. The seeds are read off the outputs
    (a derived param: adding a seed reruns the cells for their new output, removing one reruns
    nothing); device and threads only place the job, so they are resources."""
    output:
        expand(RUN_RECORD, seed=SWEEP.seeds, allow_missing=True),
    log:
        f"logs/train/{CELL}.log",
    benchmark:
        TRAIN_BENCHMARK
    params:
        settings=train_flags,
        seeds=seeds_of_outputs,
    threads: SWEEP.threads
    resources:
        device=SWEEP.device,
    shell:
        "python -m bench run-cell --task {wildcards.task} --length {wildcards.length}"
        " --mitigation {wildcards.mitigation:q} --seeds {params.seeds} --out {output:q}"
        " {params.settings} --device {resources.device} --threads {threads} > {log:q} 2>&1"
