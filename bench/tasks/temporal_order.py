"""Temporal order (Hochreiter & Schmidhuber 1997; Pascanu et al. 2013 code).

Six one-hot channels {A, B, c, d, e, f}. Every step holds a random distractor c..f, except at
one position inside each relevance window, which holds A or B. The class is the ordered
pattern of the relevant symbols: 4 classes with two windows ([0.1L, 0.2L), [0.5L, 0.6L)),
8 classes with three ([0.1,0.2), [0.3,0.4), [0.6,0.7) of L). Read at the last step; a sequence
is wrong when misclassified. Memoryless baseline: accuracy 1/4 (1/8).

Example (L=10, 2 windows): c e A d f f B c d e  -> (A, B) -> class 1
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import TASKS
from .base import Task, uniform_int


class _TemporalOrder(Task):
    kind = "classification"
    readout = "last"
    n_in = 6
    length_meaning = "total sequence length L"
    windows: tuple = ()
    success_rule = "fewer than 1% of 1,000 held-out sequences misclassified"

    def sample(self, n, gen):
        L = self.length
        seq = torch.randint(2, 6, (n, L), generator=gen)  # distractors c..f
        label = torch.zeros(n, dtype=torch.long)
        rows = torch.arange(n)
        for lo, hi in self.windows:
            pos = uniform_int(math.ceil(lo * L), math.ceil(hi * L), n, gen)
            bit = torch.randint(0, 2, (n,), generator=gen)  # 0 = A, 1 = B
            seq[rows, pos] = bit
            label = label * 2 + bit
        x = F.one_hot(seq, 6).float()  # (n, L, 6)
        return x, label


@TASKS.register("temporal_order", "temporal order: classify the order of A/B at two far-apart positions (4 classes)")
class TemporalOrder(_TemporalOrder):
    description = "order of two relevant symbols"
    windows = ((0.1, 0.2), (0.5, 0.6))
    n_out = 4
    min_length = 10


@TASKS.register("temporal_order3", "3-bit temporal order: three relevant symbols, 8 classes")
class TemporalOrder3(_TemporalOrder):
    description = "order of three relevant symbols"
    windows = ((0.1, 0.2), (0.3, 0.4), (0.6, 0.7))
    n_out = 8
    min_length = 10
