"""Device names -> torch devices: the one place that checks a device name and whether it is here,
for training (RunSpec.device, `--device`, the config's `device`) and for the perf suite
(BENCH_PERF_DEVICE). A bad name or a device that is not here raises BenchError naming the valid
choices.

"cuda:any" spreads training processes over the GPUs of one machine: the first time a process
resolves it, the process claims a GPU that no other process holds (an exclusive flock on a file
named after the GPU's UUID, in a machine-local folder: $BENCH_GPU_LOCK_DIR, default
<tmp>/bench-gpu-locks-<uid>) and keeps it until it exits; the kernel drops the lock when the
process ends however it ends, so a killed job never leaves a GPU claimed. The UUID, not the
index, names the lock, so processes that see the GPUs under different CUDA_VISIBLE_DEVICES still
agree. When every GPU is held, the process waits for one to be freed."""
from __future__ import annotations

import fcntl
import os
import re
import sys
import tempfile
import time
from typing import Callable, List, Optional, Tuple

import torch

from .errors import BenchError
from .spec import DEVICE_NAME

_claimed: Optional[Tuple[int, int]] = None  # (index, fd of the held lock) of this process's cuda:any


def lock_dir() -> str:
    return os.environ.get("BENCH_GPU_LOCK_DIR") or os.path.join(tempfile.gettempdir(), f"bench-gpu-locks-{os.getuid()}")


def _gpu_uuid(i: int) -> str:
    try:
        uid = str(torch.cuda.get_device_properties(i).uuid)
    except Exception:  # noqa: BLE001 -- a build without the attribute: the index still names it on this machine
        uid = f"index{i}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", uid)


def try_claim(names: List[str], folder: str) -> Optional[Tuple[int, int]]:
    """Take the first of `names` (one lock name per GPU, in index order) that no process holds:
    (its index, the fd that holds the lock) or None when every one is held."""
    os.makedirs(folder, exist_ok=True)
    for i, name in enumerate(names):
        fd = os.open(os.path.join(folder, f"gpu-{name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}\n".encode())  # who holds it, for a person looking
        return i, fd
    return None


def claim(names: List[str], folder: str, poll_s: float = 1.0, timeout_s: Optional[float] = None,
          say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> Tuple[int, int]:
    """try_claim until a GPU is free (`timeout_s`: then BenchError; None: wait as long as it takes)."""
    t0, told = time.monotonic(), False
    while True:
        got = try_claim(names, folder)
        if got is not None:
            if told:
                say(f"cuda:any: GPU {got[0]} is free now, after {time.monotonic() - t0:.0f} s")
            return got
        if timeout_s is not None and time.monotonic() - t0 >= timeout_s:
            raise BenchError(f"cuda:any: all {len(names)} GPU(s) stayed held by other processes for "
                             f"{timeout_s:g} s (locks in {folder})")
        if not told:
            say(f"cuda:any: all {len(names)} GPU(s) are held by other jobs (locks in {folder}); waiting for one "
                f"(run fewer jobs at once than there are GPUs: --resources gpu=N)")
            told = True
        time.sleep(poll_s)


def claimed_gpu() -> int:
    """This process's GPU for cuda:any (claimed on the first call, held until the process exits)."""
    global _claimed
    if _claimed is None:
        _claimed = claim([_gpu_uuid(i) for i in range(torch.cuda.device_count())], lock_dir())
    return _claimed[0]


def resolve_device(name: str, label: str = "device ", allow_auto: bool = True) -> torch.device:
    """"auto" (if allow_auto: cuda when there is one, else cpu), "cpu", "cuda", "cuda:N" or, for
    training (allow_auto), "cuda:any" (a GPU no other process holds, see above).
    `label` starts error messages before the quoted name ("device ", "BENCH_PERF_DEVICE=")."""
    name = name.strip()
    auto = ["auto"] if allow_auto else []
    m = DEVICE_NAME.fullmatch(name)  # the device names' one grammar (bench.spec)
    if not m or (not allow_auto and (name == "auto" or m.group(1) == "any")):
        raise BenchError(f"{label}{name!r} is not a device; valid choices: "
                         f"{', '.join(auto + ['cpu', 'cuda', 'cuda:N'] + (['cuda:any'] if allow_auto else []))}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise BenchError(f"{label}{name!r} requested but CUDA is not available here; "
                         f"valid choices: {', '.join(auto + ['cpu'])}")
    if m.group(1) == "any":
        return torch.device("cuda", claimed_gpu())
    n = torch.cuda.device_count()
    if m.group(1) is not None and int(m.group(1)) >= n:
        raise BenchError(f"{label}{name!r}: this machine has {n} CUDA device(s); valid choices: "
                         f"{', '.join(auto + ['cpu', 'cuda'] + [f'cuda:{i}' for i in range(n)])}")
    return torch.device(name)
