rule train:
    """Train the cells of one job in one process: every task, length and seed of one (mitigation,
    lr), or with job_grouping "cell" every seed of one (task, length, mitigation, lr). A run that
    raises becomes an 'error' record (bench run-cell), so a training failure never fails the job.

    params.settings holds exactly what shapes a record, so the params rerun trigger retrains a
    job when it changes and leaves the other jobs alone. The cells and seeds are read off the
    outputs (a derived param: adding a seed or a length reruns the jobs for their new outputs,
    removing one reruns nothing); device and threads only place the job, so they are resources.

    A job interrupted part-way (killed, lost node, time limit) is rerun whole by Snakemake, which
    deletes its outputs first; the runs it had finished are kept in RESUME_DIR and taken back
    instead of trained again, if the run, the code and the device are the same (bench/resume.py)."""
    output:
        train_outputs(),
    log:
        TRAIN_LOG,
    benchmark:
        TRAIN_BENCHMARK
    params:
        settings=train_flags,
        runs=runs_of_outputs,
    threads: SWEEP.threads
    resources:
        device=SWEEP.device,
    shell:
        "python -m bench run-cell {params.runs} --mitigation {wildcards.mitigation:q}"
        " {params.settings} --device {resources.device} --threads {threads}"
        " --resume-dir {RESUME_DIR:q} > {log:q} 2>&1"
