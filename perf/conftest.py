"""Fixtures of the performance suite (run explicitly: python -m pytest perf ...; see README.md)."""
from __future__ import annotations

import os

import pytest
import torch

from bench import perf, runtime

# Denormals flushed to zero for the whole session, as train() runs its steps (bench.runtime.flushed_denormals):
# the bare loops and references then run in the engine's arithmetic, and EngineStep mirrors train()'s loop.
# Set before torch's thread pool starts, so that its threads inherit it too.
torch.set_flush_denormal(True)


def pytest_configure(config):
    """The suite's switches, checked before anything runs (a value outside the choices is pytest's
    usage error, naming them): BENCH_PERF_MALLOC (pinned | default), BENCH_PERF_QUICK (0 | 1),
    BENCH_PERF_DEVICE (cpu | cuda | cuda:N; default cpu): where every step of the suite runs.
    On CUDA the clock must be wall time: CPU time (time.process_time) does not see the GPU work."""
    from bench.errors import BenchError

    try:
        # reproducible allocator regime for the whole session (bench.runtime.configure_malloc);
        # BENCH_PERF_MALLOC=default measures glibc's adaptive default instead
        perf.configure_malloc(runtime.env_choice("BENCH_PERF_MALLOC", ("pinned", "default"), "pinned"))
        perf.quick_mode()  # read by test_perf.py at import; checked here, before collection
        dev = perf.configure_device(os.environ.get("BENCH_PERF_DEVICE", "cpu"))
    except BenchError as e:
        raise pytest.UsageError(str(e)) from None
    timer = str(config.getoption("benchmark_timer", None) or "")
    if dev != "cpu" and "process_time" in timer:
        raise pytest.UsageError(f"BENCH_PERF_DEVICE={dev}: --benchmark-timer=time.process_time counts only host "
                                "CPU time, not the GPU's work; use --benchmark-timer=time.perf_counter")


def pytest_collection_finish(session):
    """Freeze the objects alive after collection (torch, pandas, pytest: ~200,000) out of the
    cyclic GC's full passes for the whole session, as train() does for a run
    (bench.runtime.frozen_gc): every benchmarked step, the bare references included, then sees
    the collector a training run sees."""
    import gc

    gc.freeze()


def pytest_report_header(config):
    info = perf.device_info()
    return (f"bench perf: device={info['device']} ({info['device_name']}), malloc={perf.MALLOC_MODE}, "
            f"denormals={runtime.denormal_mode()}, quick={perf.quick_mode()}")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Timings on a shared 2-core machine: always one intra-op thread."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def timer(request):
    """The clock pytest-benchmark uses (--benchmark-timer), so that the interleaved references
    and train()'s internal split are measured with the same clock as the benchmark itself."""
    from pytest_benchmark.utils import load_timer

    return load_timer(request.config.getoption("benchmark_timer")).target
