#!/usr/bin/env bash
# CI performance-regression check, quick mode (about 1 minute on 2 shared CPU cores, under 2 when
# loaded; a retry of regressed measurements adds at most about one more quick run).
# Runs the quick subset of perf/test_perf.py, then perf/check.py against perf/baseline.json:
# exits non-zero when a ratio regresses beyond the tolerance twice (one retry), or when a
# benchmark fails. The absolute targets are printed and written to perf/last_results.md.
# The glibc allocator is pinned by perf/conftest.py (BENCH_PERF_MALLOC, see perf/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${PERF_JSON:-perf/quick.json}"
export BENCH_PERF_QUICK=1
start=$SECONDS
python -m pytest perf -q -p no:cacheprovider \
  --benchmark-json="$out" --benchmark-timer=time.process_time \
  --benchmark-columns=median,iqr,rounds --benchmark-sort=name "$@"
rc=0
python perf/check.py "$out" || rc=$?
echo "perf.sh: quick mode took $((SECONDS - start)) s (exit $rc)"
exit $rc
