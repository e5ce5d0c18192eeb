"""RunSpec: the one frozen object that flows from the config to the result row."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from .errors import BenchError

OPTIMIZERS = ("adam", "rmsprop", "sgd")
DEVICES = ("auto", "cpu", "cuda")


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
        if self.device not in DEVICES:
            raise BenchError(f"unknown device {self.device!r}; valid choices: {', '.join(DEVICES)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise BenchError(f"unknown run-spec key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}")
        return cls(**d)
