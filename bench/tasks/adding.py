"""Adding problem (Le et al. 2015; Arjovsky et al. 2016).

Two input channels of length T: channel 0 holds values U[0,1]; channel 1 is 0 except for one 1
in the first half [0, T/2) and one 1 in the second half [T/2, T). Target: the sum of the two
marked values, read at the last step. Loss MSE; a sequence is wrong when its squared error
exceeds 0.04 (Pascanu et al. 2013). Memoryless baseline: predict the mean, MSE = Var ~ 1/6.

Example (T=6):  values  .31 .82 .05 .47 .66 .12
                markers  0   1   0   0   1   0     -> target 0.82 + 0.66 = 1.48
"""
from __future__ import annotations

import torch

from . import TASKS
from .base import Task, uniform_int


class _TwoMarkerTask(Task):
    length_meaning = "total sequence length T (markers in each half)"
    n_in = 2
    n_out = 1
    min_length = 2
    success_rule = "fewer than 1% of 1,000 held-out sequences with squared error > 0.04"

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, n, gen):
        T = self.length
        values = torch.rand(n, T, generator=gen)  # (n, T)
        half = T // 2
        p0 = uniform_int(0, half, n, gen)
        p1 = uniform_int(half, T, n, gen)
        markers = torch.zeros(n, T)
        rows = torch.arange(n)
        markers[rows, p0] = 1.0
        markers[rows, p1] = 1.0
        x = torch.stack([values, markers], -1)  # (n, T, 2)
        y = self.combine(values[rows, p0], values[rows, p1])
        return x, y


@TASKS.register("adding", "adding problem: sum of two marked U[0,1] values, MSE, read at the last step")
class Adding(_TwoMarkerTask):
    description = "sum of the two marked values"

    def combine(self, a, b):
        return a + b


@TASKS.register("multiplication", "multiplication problem: product of two marked U[0,1] values")
class Multiplication(_TwoMarkerTask):
    description = "product of the two marked values"

    def combine(self, a, b):
        return a * b
