"""Process-wide settings of a training process."""
from __future__ import annotations

import gc
from contextlib import contextmanager

MALLOC_MODE = "default"  # set by configure_malloc (python -m bench run/run-cell; perf/conftest.py)


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
