#!/usr/bin/env bash
# The pipeline's overhead and its --cores scaling on a sweep, in scratch copies of this checkout:
#   bash .ci/sweep_overhead.sh                                    # the default sweep, --cores 2 then 1
#   CORES="2" bash .ci/sweep_overhead.sh --configfile config/smoke.yaml
# For each --cores N: the Snakemake wall time, the sum of the training jobs' wall times
# (benchmarks/), and the overhead share the aggregate step computed (results/jobs.csv); with
# --cores 1 also the wall time outside the training jobs.
# The default sweep takes 10-20 min per run on 2 cores: run it on an otherwise idle machine.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d "${TMPDIR:-/tmp}/sweep_overhead.XXXXXX")
for n in ${CORES:-2 1}; do
    wd="$scratch/cores$n"
    mkdir -p "$wd"
    cp "$repo/Snakefile" "$wd/" && cp -r "$repo/workflow" "$repo/config" "$repo/profiles" "$wd/"
    start=$(date +%s.%N)
    (cd "$wd" && PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" python -m snakemake --cores "$n" "$@" \
        > "$wd/snakemake.out" 2>&1) || { tail -30 "$wd/snakemake.out"; exit 1; }
    end=$(date +%s.%N)
    python - "$wd" "$n" "$start" "$end" <<'EOF'
import sys
import pandas as pd
from bench.report.aggregate import overhead_summary
wd, n, t0, t1 = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
jobs = pd.read_csv(f"{wd}/results/jobs.csv")
o = overhead_summary(jobs)
print(f"--cores {n}: snakemake wall {t1 - t0:.1f} s; {len(jobs)} training jobs, sum of job wall "
      f"{o['job_wall_s']:.1f} s, runs {o['run_wall_s']:.1f} s, overhead {o['overhead_s']:.1f} s = {o['share']:.1%} "
      f"of job time (target {o['target']:.0%}: {'met' if o['met'] else 'not met' if o['met'] is False else 'n/a'}); "
      f"median {o['median_overhead_s']:.2f} s per job; jobs left out: {o['excluded'] or 'none'}")
if n == "1":  # one job at a time: what the wall time holds besides the training jobs
    print(f"--cores 1: outside the training jobs (Snakemake start and scheduling, aggregate, report): "
          f"{t1 - t0 - jobs['job_wall_s'].sum():.1f} s")
EOF
done
echo "outputs under $scratch"
