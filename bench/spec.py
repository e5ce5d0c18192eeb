"""RunSpec: the one frozen object that flows from the config to the result row."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Optional

from .errors import BenchError

OPTIMIZERS = ("adam", "rmsprop", "sgd")
# cuda:N: the GPU of index N (cuda: the current one); cuda:any: a GPU no other process holds
# (bench.devices: spreads a sweep's jobs over a machine's GPUs)
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "cuda:any")
DEVICE_NAME = re.compile(r"auto|cpu|cuda(?::(\d+|any))?")  # group 1: the index, or "any"


def check_device_name(name) -> str:
    """`name` if it is a device name (whether that device is here is checked when training starts,
    by bench.devices.resolve_device); otherwise BenchError naming the valid choices."""
    if not isinstance(name, str) or not DEVICE_NAME.fullmatch(name):
        raise BenchError(f"unknown device {name!r}; valid choices: {', '.join(DEVICES)}")
    return name


@dataclass(frozen=True)
class RunSpec:
    task: str
    length: int
    mitigation: str
    seed: int = 0
    hidden: int = 64
    batch: int = 64
    optimizer: Optional[str] = None  # None: the recipe's default
    lr: Optional[float] = None  # None: the recipe's default
    budget: int = 1000  # training steps at most
    eval_every: int = 50
    heldout_size: int = 1000
    probe_size: int = 64
    device: str = "auto"
    threads: Optional[int] = None  # CPU threads (torch.set_num_threads); None: leave as is

    def __post_init__(self):
        def pos_int(name, lo=1):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise BenchError(f"{name} must be an integer >= {lo}, got {v!r}")

        for n in ("length", "hidden", "batch", "budget", "eval_every", "heldout_size", "probe_size"):
            pos_int(n)
        pos_int("seed", 0)
        if self.threads is not None:
            pos_int("threads")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise BenchError(f"unknown optimizer {self.optimizer!r}; valid choices: {', '.join(OPTIMIZERS)}")
        if self.lr is not None and (isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < 10):
            raise BenchError(f"lr must be a number in (0, 10), got {self.lr!r}")
        check_device_name(self.device)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise BenchError(f"unknown run-spec key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}")
        return cls(**d)
