"""Sequential digits: scikit-learn's 8x8 handwritten digits (1,797 images, shipped offline),
read one pixel per step (64 steps), plain or with one fixed pixel permutation (the 8x8
analogue of sequential / permuted MNIST). 10 classes read at the last step.

A fixed split holds out 597 images (the same for every run); training samples the other 1,200
with replacement. Solved when held-out accuracy reaches 90% (test-accuracy rule, as for MNIST).
"""
from __future__ import annotations

import functools

import torch

from . import TASKS
from .base import Task
from ..errors import BenchError  # noqa: F401
from ..seeding import generator

N_HELDOUT = 597


@functools.lru_cache(maxsize=1)
def _load():
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is a dependency
        raise BenchError("the digits tasks need scikit-learn (pip install scikit-learn)") from e
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0  # (1797, 64) in [0, 1]
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(x.shape[0], generator=generator("digits-split"))
    held, train = perm[:N_HELDOUT], perm[N_HELDOUT:]
    return x[train], y[train], x[held], y[held]


class _Digits(Task):
    kind = "classification"
    readout = "last"
    n_in = 1
    n_out = 10
    min_length = 64
    max_length = 64
    length_meaning = "fixed: 64 pixels, one per step"
    success_max_wrong = 0.10
    success_rule = "held-out accuracy >= 90% on 597 held-out images"
    split_based = True
    permuted = False

    def _perm(self):
        if not self.permuted:
            return None
        return torch.randperm(64, generator=generator("digits-permutation"))

    def _seq(self, x):
        perm = self._perm()
        if perm is not None:
            x = x[:, perm]
        return x.unsqueeze(-1)  # (n, 64, 1)

    def sample(self, n, gen):
        xt, yt, _, _ = _load()
        idx = torch.randint(0, xt.shape[0], (n,), generator=gen)
        return self._seq(xt[idx]), yt[idx]

    def heldout(self, n):
        _, _, xh, yh = _load()
        if n > xh.shape[0]:
            n = xh.shape[0]
        return self._seq(xh[:n]), yh[:n]


@TASKS.register("digits", "sequential 8x8 digits (scikit-learn), one pixel per step, 10 classes")
class Digits(_Digits):
    description = "sequential digits"


@TASKS.register("pdigits", "permuted sequential 8x8 digits: one fixed pixel permutation")
class PermutedDigits(_Digits):
    description = "permuted sequential digits"
    permuted = True



