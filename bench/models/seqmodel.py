"""The sequence model (recurrence + linear readout) and the recipe initializations, all drawn
from a local torch.Generator."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .cells import FusedRecurrence, NormRecurrence, Recurrence, last_boundary, spectral_stats
from .mitigations import Mitigation


class SeqModel(nn.Module):
    def __init__(self, rec: Recurrence, n_out: int, readout: str, tbptt=None):
        super().__init__()
        self.rec = rec
        # built on the meta device: construction draws nothing from the global RNG
        self.head = nn.Linear(rec.hidden, n_out, device="meta").to_empty(device=_dev(rec))
        self.readout = readout
        self.tbptt = tbptt

    def read(self, hs):
        """hs (B, T, H) -> outputs: (B, n_out) for readout 'last', (B, T, n_out) for 'all'."""
        return self.head(hs[:, -1]) if self.readout == "last" else self.head(hs)

    def forward(self, x):
        # with truncation and a loss on the last step only, steps before the last chunk get
        # no gradient: run them without building the autograd graph (truncated BPTT's saving)
        cut = last_boundary(x.shape[1], self.tbptt) if self.readout == "last" else 0
        return self.read(self.rec(x, self.tbptt, cut))

    def forward_loop(self, x, probes=None, gates=None):
        """Cell-loop twin of forward (same weights), with probes on every h_t."""
        return self.read(self.rec.loop(x, self.tbptt, probes, gates))

    def spectral(self):
        return spectral_stats(self.rec.square_block())


def _dev(m: nn.Module):
    return next(m.parameters()).device


def _orthogonal_blocks(W, g):
    """Orthogonal (H, H) blocks stacked along dim 0."""
    H = W.shape[1]
    with torch.no_grad():
        for b in range(W.shape[0] // H):
            a = torch.randn(H, H, generator=g, dtype=torch.float64)
            q, r = torch.linalg.qr(a)
            q = q * torch.sign(torch.diagonal(r))
            W[b * H:(b + 1) * H].copy_(q.to(W.device, W.dtype))


def _identity_blocks(W):
    H = W.shape[1]
    with torch.no_grad():
        W.zero_()
        for b in range(W.shape[0] // H):
            W[b * H:(b + 1) * H].copy_(torch.eye(H, dtype=W.dtype, device=W.device))


def init_model(model: SeqModel, init: str, g: torch.Generator, seq_len: int) -> None:
    """Initialise every parameter from `g` (CPU generator; copied to the model's device)."""
    rec = model.rec
    H = rec.hidden
    k = 1.0 / math.sqrt(H)
    # PyTorch's own default: U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias
    for p in rec.parameters():
        if p.dim() == 1 and isinstance(rec, NormRecurrence):
            continue  # gains and biases of normalized cells keep their constructor values
        _uniform_cpu(p, k, g)
    for p in model.head.parameters():
        _uniform_cpu(p, k, g)
    W_hh = rec.w_hh
    if init == "orthogonal":
        _orthogonal_blocks(W_hh, g)
    elif init == "identity":  # IRNN
        _identity_blocks(W_hh)
        _normal_cpu(rec.w_ih, 0.001, g)
        with torch.no_grad():
            rec.b_ih.zero_()
            rec.b_hh.zero_()
    elif init == "bn_identity":
        _identity_blocks(W_hh)
        _orthogonal_like_input(rec.w_ih, g)
    elif init in ("lstm_forget1", "lstm_chrono"):
        b = rec.bias if isinstance(rec, NormRecurrence) else rec.b_ih
        with torch.no_grad():
            if isinstance(rec, FusedRecurrence):
                rec.b_ih.zero_()
                rec.b_hh.zero_()
            if init == "lstm_forget1":
                b[H:2 * H] = 1.0  # forget slice; the other bias vector is 0, so the sum is 1
            else:
                t_max = max(seq_len - 1, 1)
                u = torch.rand(H, generator=g, dtype=torch.float64) * (t_max - 1) + 1
                bf = torch.log(u).to(b.dtype)
                b[H:2 * H] = bf.to(b.device)
                b[0:H] = -bf.to(b.device)
    elif init != "default":
        raise ValueError(f"unknown init {init!r}")


def _uniform_cpu(p, bound, g):
    with torch.no_grad():
        v = torch.rand(p.shape, generator=g, dtype=torch.float32).mul_(2 * bound).sub_(bound)
        p.copy_(v.to(p.device, p.dtype))


def _normal_cpu(p, std, g):
    with torch.no_grad():
        p.copy_((torch.randn(p.shape, generator=g) * std).to(p.device, p.dtype))


def _orthogonal_like_input(W, g):
    """Semi-orthogonal input weights (Cooijmans et al. initialise W_x orthogonally)."""
    rows, cols = W.shape
    with torch.no_grad():
        a = torch.randn(max(rows, cols), min(rows, cols), generator=g, dtype=torch.float64)
        q, r = torch.linalg.qr(a)  # q: orthonormal columns
        q = q * torch.sign(torch.diagonal(r))
        W.copy_((q if rows >= cols else q.t()).to(W.device, W.dtype))


def build_model(mit: Mitigation, n_in: int, n_out: int, readout: str, hidden: int, seq_len: int,
                g: torch.Generator, device="cpu") -> SeqModel:
    r = mit.recipe
    if r.norm is None:
        rec = FusedRecurrence(r.family, n_in, hidden, device=device)
    else:
        rec = NormRecurrence(r.family, r.norm, n_in, hidden, max_steps=seq_len, device=device)
    model = SeqModel(rec, n_out, readout, tbptt=mit.get("tbptt"))
    init_model(model, r.init, g, seq_len)
    rho = mit.get("radius")
    if rho is not None:
        cur, _ = spectral_stats(rec.w_hh)
        with torch.no_grad():
            rec.w_hh.mul_(rho / max(cur, 1e-12))
    if isinstance(rec, FusedRecurrence):
        rec.rnn.flatten_parameters()
    return model


