"""Process-wide settings of a training process."""
from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from typing import Sequence

MALLOC_MODE = "default"  # set by configure_malloc (python -m bench run/run-cell; perf/conftest.py)


def env_choice(name: str, choices: Sequence[str], default: str) -> str:
    """The value of the environment switch `name` (unset or empty: `default`), one of `choices`.
    Any other value is a BenchError naming the variable, its value and the valid choices: a switch
    set to something it does not know (BENCH_NORMSEQ_NATIVE=off, BENCH_MALLOC=glibc) is never
    quietly read as one of them."""
    from .errors import BenchError

    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if value not in choices:
        raise BenchError(f"environment variable {name}={value!r} is not a valid setting; valid choices: "
                         f"{', '.join(choices)} (unset: {default})")
    return value


def configure_malloc(mode: str) -> str:
    """glibc's malloc adapts its mmap/trim thresholds to the history of the process, and large
    per-step buffers (nn.LSTM at T=1000: ~300 MB of fresh pages per step) are then either reused
    or mmapped and page-faulted anew each step: the same step measured 145, 228 or 300 ms
    depending on which benchmarks ran before it. "pinned" fixes the regime (no mmap, never trim:
    freed memory is reused, no page faults) so that ratios are reproducible; "default" leaves
    glibc as the engine gets it. Returns the mode in effect."""
    global MALLOC_MODE
    if mode not in ("pinned", "default"):
        raise ValueError(f"malloc mode must be 'pinned' or 'default', got {mode!r}")
    if mode == "pinned":
        import ctypes
        import ctypes.util

        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
            ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
        except (OSError, AttributeError):
            ok = False
        if not ok:
            mode = "default (mallopt unavailable)"
    MALLOC_MODE = mode
    return mode


def denormals_flushed() -> bool:
    """Whether this thread's CPU flushes denormal floats to zero (probed: 1e-39 * 1 is 0 under
    FTZ/DAZ, 1e-39 in IEEE arithmetic; PyTorch has no getter)."""
    import torch

    return (torch.tensor([1e-39], dtype=torch.float32) * 1.0).item() == 0.0


def denormal_mode() -> str:
    """"flushed" or "kept": this thread's mode, as records and the perf suite's header name it."""
    return "flushed" if denormals_flushed() else "kept"


@contextmanager
def flushed_denormals(on: bool = True):
    """Run a block with this thread's denormal floats (|x| < 1.18e-38 in float32) flushed to zero
    (on=True: FTZ/DAZ, torch.set_flush_denormal) or kept (on=False: IEEE arithmetic), and restore the
    thread's previous mode afterwards. Yields whether the requested mode is in effect (False where the
    CPU cannot flush).

    Why training flushes: on Intel CPUs every arithmetic operation on a denormal takes a microcode
    assist, ~100x an ordinary one, and vanishing gradients are exactly what makes them: at T=1000 a
    backward pass through nn.LSTM at hidden 64 took 1.1-1.4 s a step instead of 0.13 s (the suite's GRU 0.39 s
    instead of 0.12 s; the T=100 step is unaffected) on an Intel Xeon, where AMD EPYC pays almost
    nothing for them (perf/README.md, "Denormals"). Values below 1.18e-38 are zero for training's
    purposes (any optimizer update they could make is below Adam's epsilon alone, 1e-8), and the
    gradient diagnostics, which run inside train(), then measure the gradients training gets: zero
    there. (Kept, they cost the snapshots as much on Intel -- an LSTM's at h128 T=1000 3.1 s, 9.3
    bare steps -- and carry a few bits of precision at most.)

    The mode is per thread, and a new thread starts with its creator's: at threads=1 (the default)
    all of a run's arithmetic is on this thread; with threads > 1 torch's worker threads keep the
    mode they were started in (inside a first run: flushed), whatever a later block sets here."""
    import torch

    before = denormals_flushed()
    if before == on:
        yield on
        return
    ok = torch.set_flush_denormal(on)
    try:
        yield ok if on else not denormals_flushed()
    finally:
        torch.set_flush_denormal(before)


@contextmanager
def frozen_gc():
    """Run a block with the objects alive at its start moved to the cyclic garbage collector's
    permanent generation (gc.freeze), and move them back at its end (gc.unfreeze).

    A full collection walks every tracked object of the interpreter: after importing torch and
    pandas about 200,000, 80 ms a pass on this machine. A training step creates thousands of
    short-lived tensors (the normalized cells: ~20,000 per step at T=1000); those alive across a
    young-generation pass count towards the next full pass, so full passes come every few steps
    and cost more than the step's own work grows (bn_lstm at T=1000: steps of 365 ms took 450 ms
    or more). Frozen, a full pass walks only the objects made since. Objects created inside the
    block are collected as before; nothing is disabled. If something froze objects already
    (gc.get_freeze_count() > 0), it manages the collector and this does nothing."""
    if gc.get_freeze_count() or not gc.isenabled():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
