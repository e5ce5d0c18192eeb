"""Where and with what a record was made."""
from __future__ import annotations

import datetime
import functools
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

from . import runtime
from .models import native


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    env = os.environ.get("BENCH_GIT_COMMIT")
    if env:
        return env
    here = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() if out.returncode == 0 else "unknown"
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        if commit != "unknown" and dirty.returncode == 0 and dirty.stdout.strip():
            commit += "-dirty"
        return commit
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.lru_cache(maxsize=1)
def versions() -> dict:
    import numpy
    import torch

    from . import __version__

    return {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": numpy.__version__,
            "bench": __version__}


def machine_name(device) -> str:
    """What a record's `device_name` says of the hardware `device` (a torch.device) is: the GPU's
    name on CUDA, else the CPU model."""
    if device is not None and getattr(device, "type", None) == "cuda":
        import torch

        return torch.cuda.get_device_name(device) or cpu_model()
    return cpu_model()


def provenance(device, threads, model=None) -> dict:
    import torch

    return {
        "versions": versions(),
        "device_name": machine_name(device),
        "cpu_model": cpu_model(),
        "threads": torch.get_num_threads(),
        "threads_requested": threads,
        "git_commit": git_commit(),
        "malloc": runtime.MALLOC_MODE,
        "denormals": runtime.denormal_mode(),  # in training (runtime.flushed_denormals)
        "normseq_backend": native.backend(device) if model is not None and native.uses_norm_cells(model) else None,
        "recurrence_backend": native.recurrence_backend(model, device) if model is not None else None,
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
