rule train:
    """Train the cells of one job in one process: every task, length and seed of one (mitigation,
    lr), or with job_grouping "cell" every seed of one (task, length, mitigation, lr). A run that
    raises becomes an 'error' record (bench run-cell), so a training failure never fails the job.

    params.settings holds exactly what shapes a record, so the params rerun trigger retrains a
    job when it changes and leaves the other jobs alone. The cells and seeds are read off the
    outputs (a derived param: adding a seed or a length reruns the jobs for their new outputs,
    removing one reruns nothing); device and threads only place the job, so they are resources.

    Snakemake deletes a job's outputs before it runs it again: after an interruption (killed, lost
    node, time limit), or when the sweep grew (a new length or seed is a new output of every
    mitigation's job). Every finished run is kept in RESUME_DIR and taken back instead of trained
    again, if the run, the code, the device and the kind of machine are the same (bench/resume.py);
    reuse_runs: false trains them again. Like device, reuse only decides how the job runs, not what
    its records hold: a resource, not a param (no rerun when it changes); so does seed_groups (a
    cell's seeds in lockstep, bench.train.train_group: the same records, timings aside). Its
    priority is the job's rough cost (bench.config.Sweep.job_cost): the dearest jobs start first."""
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
    priority: train_priority
    resources:
        device=SWEEP.device,
        reuse="yes" if SWEEP.reuse_runs else "no",
        seed_groups="yes" if SWEEP.seed_groups else "no",
    shell:
        "python -m bench run-cell {params.runs} --mitigation {wildcards.mitigation:q}"
        " {params.settings} --device {resources.device} --threads {threads}"
        " --resume-dir {RESUME_DIR:q} --reuse {resources.reuse} --seed-groups {resources.seed_groups}"
        " > {log:q} 2>&1"
