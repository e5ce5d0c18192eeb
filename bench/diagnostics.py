"""Gradient diagnostics: the per-time-step profile ||dL/dh_t|| via zero probes on the
cell-loop twin, its fitted per-step decay rate, gate means, and spectral statistics."""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Dict, List, Optional

import torch

from .models.cells import NormRecurrence
from .models.seqmodel import SeqModel
from .tasks import Task


@contextmanager
def frozen_stats(model: SeqModel):
    """Train-mode forward (batch statistics, as training sees them) without updating the
    running statistics of batch-normalized cells."""
    rec = model.rec
    was_training = model.training
    model.train()
    old = getattr(rec, "update_stats", None)
    if isinstance(rec, NormRecurrence):
        rec.update_stats = False
    try:
        yield
    finally:
        if isinstance(rec, NormRecurrence):
            rec.update_stats = old
        model.train(was_training)


def probe_loss(task: Task, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss whose gradient the profile measures: the task loss at the positions where
    memory is needed (the last step; the 10 recall steps for copy)."""
    w = task.probe_window()
    if task.readout == "all":
        return task.loss(out[:, -w:], y[:, -w:])
    return task.loss(out, y)


def gradient_profile(model: SeqModel, task: Task, x, y, gates: Optional[list] = None) -> List[float]:
    """||dL/dh_t|| (Frobenius over batch and units) for t = 0..T-1 on the batch (x, y).
    With `gates`, the same forward pass also appends each step's mean gate (see gate_profile)."""
    B, T, _ = x.shape
    H = model.rec.hidden
    probes = torch.zeros(T, B, H, device=x.device, dtype=x.dtype, requires_grad=True)
    with frozen_stats(model), torch.enable_grad():
        out = model.forward_loop(x, probes=probes.unbind(0), gates=gates)
        loss = probe_loss(task, out, y)
        (g,) = torch.autograd.grad(loss, probes, allow_unused=True)
    if g is None:
        return [0.0] * T
    return g.reshape(T, -1).double().norm(dim=1).cpu().tolist()


def fit_decay(profile: List[float], first_loss_step: int) -> Dict[str, Optional[float]]:
    """Least-squares slope of ln||dL/dh_t|| against the distance d = first_loss_step - t
    (d >= 1), over steps whose gradient is finite and nonzero. Per-step factor exp(slope):
    < 1 vanishing, > 1 exploding. `reach_log10` = log10(||g_0|| / ||g_{first_loss_step-1}||)."""
    d, v = [], []
    zero = 0
    for t in range(first_loss_step):
        g = profile[t]
        if g > 0 and math.isfinite(g):
            d.append(first_loss_step - t)
            v.append(math.log(g))
        else:
            zero += 1
    n = first_loss_step
    res = {"decay_slope": None, "decay_factor": None, "reach_log10": None,
           "profile_zero_frac": (zero / n) if n else None}
    if len(d) >= 2:
        md, mv = sum(d) / len(d), sum(v) / len(v)
        sxx = sum((a - md) ** 2 for a in d)
        slope = sum((a - md) * (b - mv) for a, b in zip(d, v)) / sxx
        res["decay_slope"] = slope
        res["decay_factor"] = math.exp(max(min(slope, 700.0), -700.0))
    g0, gl = profile[0], profile[first_loss_step - 1] if first_loss_step >= 1 else None
    if gl and gl > 0 and math.isfinite(gl) and math.isfinite(g0):
        res["reach_log10"] = (math.log10(g0) - math.log10(gl)) if g0 > 0 else None  # no under/overflow of g0/gl
    return res


def gate_profile(model: SeqModel, x) -> Optional[List[float]]:
    """Per-step mean forget gate (LSTM) or update gate z (GRU: the fraction of h kept) on x;
    None for cells without such a gate."""
    if model.rec.family not in ("lstm", "gru"):
        return None
    gates: list = []
    with frozen_stats(model), torch.no_grad():
        model.forward_loop(x, gates=gates)
    return torch.stack(gates).double().cpu().tolist()


def gate_mean(model: SeqModel, x) -> Optional[float]:
    """Mean of gate_profile over steps."""
    prof = gate_profile(model, x)
    return None if prof is None else sum(prof) / len(prof)


def snapshot(model: SeqModel, task: Task, x, y, step: int) -> Dict:
    """All diagnostics at one point of training, in the caller's arithmetic: inside train() with
    denormals flushed to zero (bench.runtime.flushed_denormals), so a profile shows the gradients
    training gets -- exactly zero where they fell below float32's smallest normal, 1.18e-38 (counted
    in profile_zero_frac and left out of the decay fit, as zeros always were)."""
    gated = model.rec.family in ("lstm", "gru")
    gate_steps: list = []
    prof = gradient_profile(model, task, x, y, gates=gate_steps if gated else None)  # one pass for both
    gates = torch.stack(gate_steps).detach().double().cpu().tolist() if gated else None
    first = task.seq_len - task.probe_window()
    rho, sigma = model.spectral()
    return {"step": step, "profile": prof, **fit_decay(prof, first),
            "spectral_radius": rho, "sigma_max": sigma,
            "gate_mean": None if gates is None else sum(gates) / len(gates), "gate_profile": gates}
