"""The task contract: a seeded generator of (inputs, targets), its loss, its success rule and
its memoryless baseline computed from the generator's own targets."""
from __future__ import annotations

import numbers
from typing import Tuple

import torch
import torch.nn.functional as F

from ..errors import BenchError
from ..seeding import generator

# A sequence is "wrong" for a regression task when its squared error exceeds this
# (Pascanu et al. 2013: solved when < 1% of fresh sequences have squared error > 0.04).
SQUARED_ERROR_TOLERANCE = 0.04


class Task:
    """One long-dependency task at one `length`.

    Subclasses set the class attributes and implement `sample`. Outputs are read from the
    model's hidden states at `readout` positions: "last" (one prediction per sequence) or
    "all" (one per time step).
    """

    name: str = ""
    description: str = ""
    length_meaning: str = "total sequence length T"
    kind: str = "regression"  # or "classification"
    readout: str = "last"  # or "all"
    n_in: int = 1
    n_out: int = 1
    min_length: int = 2
    max_length: int = 100_000
    success_max_wrong: float = 0.01  # solved when the held-out wrong fraction is below this
    success_rule: str = "fewer than 1% of held-out sequences wrong"
    split_based: bool = False  # True: held-out is a fixed split of a data set (no key check)

    def __init__(self, length: int):
        if isinstance(length, bool) or not isinstance(length, numbers.Integral):
            raise BenchError(
                f"task {self.name!r}: length must be an integer in {self.min_length}..{self.max_length} "
                f"({self.length_meaning}), got {length!r}"
            )
        length = int(length)
        if not self.min_length <= length <= self.max_length:
            raise BenchError(
                f"task {self.name!r}: length {length} out of range; valid lengths are "
                f"{self.min_length}..{self.max_length} ({self.length_meaning})"
            )
        self.length = length

    # -- to implement -------------------------------------------------------------------
    @property
    def seq_len(self) -> int:
        """Number of time steps the model reads."""
        return self.length

    def sample(self, n: int, gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return x (n, seq_len, n_in) float32 and y: (n,) float32 for regression, (n,) or
        (n, seq_len) int64 for classification. Uses only `gen`."""
        raise NotImplementedError

    def heldout(self, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The fixed held-out set: the same for every run, mitigation and seed."""
        return self.sample(n, generator("heldout", self.name, self.length))

    def probe_window(self) -> int:
        """How many final output steps carry the loss where memory is needed (diagnostics)."""
        return 1

    # -- shared -------------------------------------------------------------------------
    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean loss. `out` is (n, n_out) for readout "last", (n, seq_len, n_out) for "all"."""
        if self.kind == "regression":
            return F.mse_loss(out.squeeze(-1), y)
        return F.cross_entropy(out.reshape(-1, self.n_out), y.reshape(-1))

    def wrong(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Boolean (n,): is each sequence wrong under the success rule."""
        if self.kind == "regression":
            return (out.squeeze(-1) - y).pow(2) > SQUARED_ERROR_TOLERANCE
        pred = out.argmax(-1)
        bad = pred != y
        return bad.reshape(bad.shape[0], -1).any(1)

    def baseline(self, y: torch.Tensor) -> dict:
        """Loss and wrong fraction of the best memoryless predictor (one that sees no input
        but knows the position), fitted to the targets `y` drawn from this generator."""
        if self.kind == "regression":
            c = y.mean()
            out = c.expand(y.shape[0]).unsqueeze(-1)
            return {"loss": float(self.loss(out, y)), "wrong": float(self.wrong(out, y).float().mean())}
        yy = y.reshape(y.shape[0], -1)  # (n, P)
        counts = F.one_hot(yy, self.n_out).sum(0).double()  # (P, n_out)
        p = counts / counts.sum(-1, keepdim=True)
        ent = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)  # (P,)
        mode = p.argmax(-1)  # (P,)
        wrong = (yy != mode).any(1).float().mean()
        return {"loss": float(ent.mean()), "wrong": float(wrong)}

    def content_keys(self, x: torch.Tensor) -> torch.Tensor:
        """An exact int64 hash per sequence (identical content -> identical key), used to keep
        training batches disjoint from the held-out set."""
        n = x.shape[0]
        # x * 2^16 is exact in x's own dtype (a power-of-two scale), so rounding it there gives the
        # same integers as in float64, without a float64 copy of the batch
        q = (x.reshape(n, -1) * 65536).round_().long()  # (n, L*C)
        if not hasattr(self, "_key_weights") or self._key_weights.shape[0] != q.shape[1]:
            g = generator("key-weights", self.name, self.length)
            w = torch.randint(-(2**62), 2**62, (q.shape[1],), generator=g, dtype=torch.long)
            self._key_weights = w | 1
        return q.mul_(self._key_weights.to(q.device)).sum(1)  # int64 wrap-around is exact

    def describe(self) -> dict:
        return {
            "name": self.name,
            "length": self.length,
            "length_meaning": self.length_meaning,
            "seq_len": self.seq_len,
            "kind": self.kind,
            "readout": self.readout,
            "n_in": self.n_in,
            "n_out": self.n_out,
            "success_rule": self.success_rule,
            "success_max_wrong": self.success_max_wrong,
        }


def uniform_int(lo, hi, n, gen) -> torch.Tensor:
    """n integers uniform in [lo, hi) (lo, hi: ints or (n,) tensors)."""
    lo_t = torch.as_tensor(lo)
    hi_t = torch.as_tensor(hi)
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    return (lo_t + torch.floor(u * (hi_t - lo_t).double()).long()).long()

