"""Copy memory (Arjovsky et al. 2016), delay T.

Alphabet of 10: symbols 0..7 are data, 8 is blank, 9 the delimiter. Input length T+20: 10
random data symbols, T-1 blanks, the delimiter, 10 blanks. Target: T+10 blanks, then the 10 data
symbols. Cross-entropy over all T+20 steps; a sequence is wrong when any of the 10 recalled
symbols is wrong. Memoryless baseline: 10 ln 8 / (T+20).

Example (T=3):  input   3 1 4 1 5 9 2 6 5 3 | 8 8 | 9 | 8 8 8 8 8 8 8 8 8 8
                target  8 8 8 8 8 8 8 8 8 8 | 8 8 | 8 | 3 1 4 1 5 9 2 6 5 3   (digits < 8 only)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import TASKS
from .base import Task

N_DATA, BLANK, DELIM, N_SYMBOLS, N_COPY = 8, 8, 9, 10, 10


@TASKS.register("copy", "copy memory: recall 10 symbols after a delay of T blanks (Arjovsky 2016)")
class Copy(Task):
    description = "recall 10 symbols after a delay"
    length_meaning = "delay T (the model reads T+20 steps)"
    kind = "classification"
    readout = "all"
    n_in = N_SYMBOLS
    n_out = 9  # data symbols and blank
    min_length = 1
    success_rule = "fewer than 1% of 1,000 held-out sequences with any of the 10 symbols wrong"

    @property
    def seq_len(self):
        return self.length + 2 * N_COPY

    def sample(self, n, gen):
        T = self.length
        data = torch.randint(0, N_DATA, (n, N_COPY), generator=gen)
        seq = torch.full((n, T + 2 * N_COPY), BLANK, dtype=torch.long)
        seq[:, :N_COPY] = data
        seq[:, N_COPY + T - 1] = DELIM
        y = torch.full((n, T + 2 * N_COPY), BLANK, dtype=torch.long)
        y[:, -N_COPY:] = data
        x = F.one_hot(seq, N_SYMBOLS).float()  # (n, T+20, 10)
        return x, y

    def probe_window(self):
        return N_COPY

    def wrong(self, out, y):
        pred = out[:, -N_COPY:].argmax(-1)
        return (pred != y[:, -N_COPY:]).any(1)
