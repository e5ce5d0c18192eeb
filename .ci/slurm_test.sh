#!/usr/bin/env bash
# SLURM integration test: install and start a one-node SLURM cluster on this machine (root,
# Debian: slurm-wlm + munge, daemons started by hand), run tests/test_slurm.py (the smoke sweep
# through profiles/slurm, compared with a local run), then stop the daemons that THIS run
# started (a cluster that was already up stays up). Exits with pytest's code.
#   bash .ci/slurm_test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=.ci/slurm_cluster.sh
before=""
started=0
cleanup() {
    local rc=$? name to_stop=()
    trap - EXIT INT TERM
    if ((started)); then
        local ours
        ours=" $(bash "$cluster" ours 2>/dev/null | tr '\n' ' ') "
        for name in slurmd slurmctld munged; do  # stop order
            [[ $ours == *" $name "* && $before != *" $name "* ]] && to_stop+=("$name")
        done
        if ((${#to_stop[@]})); then
            bash "$cluster" stop "${to_stop[@]}" || true
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

t0=$SECONDS
echo "== slurm: install"
bash "$cluster" install
# The plugin is the package's `slurm` extra; install it where this environment lacks it.
if ! python -c "import snakemake_executor_plugin_slurm" 2>/dev/null; then
    echo "== slurm: pip install snakemake-executor-plugin-slurm"
    python -m pip install -q "snakemake-executor-plugin-slurm>=2.8,<3"
fi
echo "== slurm: start"
before=" $(bash "$cluster" ours | tr '\n' ' ') "
started=1
bash "$cluster" start
echo "== slurm: cluster ready after $((SECONDS - t0)) s; pytest tests/test_slurm.py"
rc=0
BENCH_SLURM_REQUIRED=1 python -m pytest -q tests/test_slurm.py -m slurm "$@" || rc=$?
echo "== slurm: done in $((SECONDS - t0)) s (pytest exit $rc)"
exit "$rc"
