"""Training stream and fixed held-out set of one task, kept disjoint."""
from __future__ import annotations

import torch

from .errors import BenchError
from .seeding import generator
from .tasks import Task


class TaskData:
    """Held-out set: fixed per (task, length), the same for every mitigation and seed.
    Training stream: seeded per (task, length, seed), so every mitigation with the same seed
    sees the same batches; a training sequence identical to a held-out one is redrawn."""

    def __init__(self, task: Task, seed: int, heldout_size: int, device="cpu"):
        self.task = task
        self.device = torch.device(device)
        xh, yh = task.heldout(heldout_size)
        # (n,) int64, sorted: each training batch's keys are looked up by binary search (torch.isin
        # would sort and deduplicate both sets again every step)
        self._key_tensor = None if task.split_based else torch.sort(task.content_keys(xh)).values
        self.heldout_x, self.heldout_y = xh.to(self.device), yh.to(self.device)
        self.baseline = task.baseline(yh)
        self.gen = generator("train", task.name, task.length, seed)

    @property
    def heldout_keys(self):
        """The held-out content keys as a set (None for split-based tasks)."""
        return None if self._key_tensor is None else set(self._key_tensor.tolist())

    def _in_heldout(self, keys: torch.Tensor) -> torch.Tensor:
        """Which of `keys` are held-out keys (bool, like torch.isin(keys, held-out keys))."""
        at = torch.searchsorted(self._key_tensor, keys).clamp_(max=self._key_tensor.numel() - 1)
        return self._key_tensor[at] == keys

    def train_batch(self, n: int):
        x, y = self.task.sample(n, self.gen)
        if self._key_tensor is not None:
            for _ in range(100):
                clash = self._in_heldout(self.task.content_keys(x))
                if not clash.any():
                    break
                x2, y2 = self.task.sample(int(clash.sum()), self.gen)
                x[clash], y[clash] = x2, y2
            else:
                raise BenchError(f"task {self.task.name!r} at length {self.task.length}: cannot draw "
                                 "training sequences disjoint from the held-out set (too few distinct sequences)")
        if self.device.type == "cuda":  # page-locked: the copy runs asynchronously, no host wait
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def probe_batch(self, n: int):
        return self.heldout_x[:n], self.heldout_y[:n]
