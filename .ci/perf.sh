#!/usr/bin/env bash
# CI performance-regression check, quick mode (about 1 minute on 2 shared CPU cores, under 2 when
# loaded; a retry of regressed measurements adds at most about one more quick run).
# Runs the quick subset of perf/test_perf.py, then perf/check.py against the baseline of this kind of CPU
# (perf/baseline.json: AMD EPYC; perf/baseline-<kind>.json, e.g. perf/baseline-intel-xeon.json):
# exits non-zero when a ratio regresses beyond the tolerance twice (one retry), or when a
# benchmark fails. The absolute targets are printed and written to perf/last_results.md.
# The glibc allocator is pinned by perf/conftest.py (BENCH_PERF_MALLOC, see perf/README.md).
# BENCH_PERF_DEVICE=cuda bash .ci/perf.sh: the same check on a GPU, against perf/baseline-cuda.json.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${PERF_JSON:-perf/quick.json}"
export BENCH_PERF_QUICK=1
start=$SECONDS
# CPU time on the CPU (robust on shared cores); wall time on a GPU (BENCH_PERF_DEVICE=cuda), where
# the host's CPU time does not see the device's work.
case "${BENCH_PERF_DEVICE:-cpu}" in
  cuda*) timer=time.perf_counter ;;
  *) timer=time.process_time ;;
esac
python -m pytest perf -q -p no:cacheprovider \
  --benchmark-json="$out" --benchmark-timer="$timer" \
  --benchmark-columns=median,iqr,rounds --benchmark-sort=name "$@"
rc=0
python perf/check.py "$out" || rc=$?
echo "perf.sh: quick mode took $((SECONDS - start)) s (exit $rc)"
exit $rc
