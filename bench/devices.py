"""Device names -> torch devices: the one place that checks a device name and whether it is here,
for training (RunSpec.device, `--device`, the config's `device`) and for the perf suite
(BENCH_PERF_DEVICE). A bad name or a device that is not here raises BenchError naming the valid
choices."""
from __future__ import annotations

import re

import torch

from .errors import BenchError


def resolve_device(name: str, label: str = "device ", allow_auto: bool = True) -> torch.device:
    """"auto" (if allow_auto: cuda when there is one, else cpu), "cpu", "cuda" or "cuda:N".
    `label` starts error messages before the quoted name ("device ", "BENCH_PERF_DEVICE=")."""
    name = name.strip()
    auto = ["auto"] if allow_auto else []
    if name == "auto" and allow_auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if not m:
        raise BenchError(f"{label}{name!r} is not a device; valid choices: {', '.join(auto + ['cpu', 'cuda', 'cuda:N'])}")
    if not torch.cuda.is_available():
        raise BenchError(f"{label}{name!r} requested but CUDA is not available here; "
                         f"valid choices: {', '.join(auto + ['cpu'])}")
    n = torch.cuda.device_count()
    if m.group(1) is not None and int(m.group(1)) >= n:
        raise BenchError(f"{label}{name!r}: this machine has {n} CUDA device(s); valid choices: "
                         f"{', '.join(auto + ['cpu', 'cuda'] + [f'cuda:{i}' for i in range(n)])}")
    return torch.device(name)
