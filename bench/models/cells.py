"""Recurrences: fused PyTorch modules (nn.RNN / nn.LSTM / nn.GRU) with a cell-loop twin that
shares their weights, and custom normalized cells (batch norm, layer norm).

Every recurrence maps x (B, T, n_in) to hidden states hs (B, T, H) and offers `loop`, a
per-step Python loop that can add a zero "probe" to each h_t (so one autograd.grad call gives
dL/dh_t for every t), detach the state every `tbptt` steps, and record gate activations.
The loop unbinds the sequence once: indexing xs[:, t] per step has an O(T^2) backward.
"""
from __future__ import annotations


from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import native
from .normseq import NormSeq, grad_for_kernel, native_kernel_for

FAMILIES = ("rnn_tanh", "rnn_relu", "lstm", "gru")
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}


class _InputProj(torch.autograd.Function):
    """x @ W^T (+ b): the input terms of every step in one product, with a backward that suits the
    tasks' few input features (n_in = 2 for adding, up to 10 here).

    On the CPU in float32 with the native kernel and at most `NATIVE_PROJ_MAX_IN` input features,
    forward and backward are one pass each over the (T*B, G) block (normlstm.cpp's proj_forward /
    proj_backward: the output written once with its bias; dW and db summed in one read of the
    gradient): ATen's product with K = 2 runs far below memory speed (T=1000, B=64, G=256: 15 ms
    each way, and the bias's add and sum another 7-10 ms). Otherwise (F.linear's backward computes
    g^T x, which with few input features ran at a fraction of the speed of the transposed form --
    84 ms against 15 ms at that size -- and grew faster than T) the weight gradient is (x^T g)^T."""

    @staticmethod
    def forward(ctx, x, W, b=None):
        k = native_kernel_for(x) if W.shape[1] <= NATIVE_PROJ_MAX_IN else None
        ctx.native = k is not None
        ctx.has_bias = b is not None
        if k is None:
            ctx.save_for_backward(x, W)
            return F.linear(x, W, b)
        xc = x.contiguous()
        ctx.save_for_backward(xc, W)
        out = x.new_empty(*x.shape[:-1], W.shape[0])
        k.proj_forward(xc.view(-1, W.shape[1]), W.t().contiguous(), b, out.view(-1, W.shape[0]))
        return out

    @staticmethod
    def backward(ctx, g):
        x, W = ctx.saved_tensors
        n_in, G = W.shape[1], W.shape[0]
        gx = torch.matmul(g, W) if ctx.needs_input_grad[0] else None
        gW = gb = None
        want_w, want_b = ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]
        if ctx.native and (want_w or want_b):
            dWt, db = W.new_empty(n_in, G), (W.new_empty(G) if ctx.has_bias else None)
            native.kernel().proj_backward(g.contiguous().view(-1, G), x.view(-1, n_in), dWt, db)
            gW, gb = (dWt.t().contiguous() if want_w else None), (db if want_b else None)
        else:
            if want_w:
                gW = torch.mm(x.reshape(-1, n_in).t(), g.reshape(-1, G)).t().contiguous()
            if want_b:
                gb = g.reshape(-1, G).sum(0)
        return gx, gW, gb


NATIVE_PROJ_MAX_IN = 16  # input features up to which _InputProj runs the native kernel's one-pass form


def _chunks(T: int, k: Optional[int]):
    """Truncation chunks aligned to the END of the sequence, so the chunk next to the loss has
    exactly k steps (the first chunk holds the remainder T mod k)."""
    if not k or k >= T:
        return [(0, T)]
    starts = [0] + [b for b in range(T % k or k, T, k)]
    return [(s, e) for s, e in zip(starts, starts[1:] + [T])]


def _over_chunks(xs, tbptt, no_grad_before, state, chunk):
    """Run `chunk(start, xs_chunk, state) -> (hs, state)` over the truncation chunks of the time-major
    input terms xs (T, B, G): each chunk from the previous one's final state detached (no gradient
    crosses a boundary), chunks that start before `no_grad_before` without autograd. Returns the
    hidden states batch-major (B, T, H)."""
    T = xs.shape[0]
    outs = []
    grad = torch.is_grad_enabled()
    for s, e in _chunks(T, tbptt):
        with torch.set_grad_enabled(grad and s >= no_grad_before):
            # the whole sequence unsliced: a slice's backward zero-fills and copies a (T, B, G) buffer
            hs, state = chunk(s, xs if (s, e) == (0, T) else xs[s:e], tuple(t.detach() for t in state))
        outs.append(hs)
    return (outs[0] if len(outs) == 1 else torch.cat(outs, 0)).transpose(0, 1)


def is_boundary(t: int, T: int, k: Optional[int]) -> bool:
    """Is the state detached before step t (truncation boundaries counted from the end)?"""
    return bool(k) and 0 < t < T and (T - t) % k == 0


def last_boundary(T: int, k: Optional[int]) -> int:
    """Start of the last truncation chunk (0 when nothing is truncated)."""
    return _chunks(T, k)[-1][0]


class Recurrence(nn.Module):
    family: str
    hidden: int

    def square_block(self) -> torch.Tensor:
        """The (H, H) recurrent matrix that drives the state: W_hh for a plain RNN, the
        candidate block (g for LSTM, n for GRU) for gated cells."""
        W = self.w_hh
        H = self.hidden
        if self.family in ("lstm", "gru"):
            return W[2 * H: 3 * H]
        return W

    # subclasses: w_hh property, forward(x, tbptt), loop(...)


def _step(family, xp, h, c, W_hh, b_hh, gates: Optional[list]):
    """One recurrence step; xp = W_ih x_t + b_ih (B, G*H)."""
    if family in ("rnn_tanh", "rnn_relu"):
        a = torch.addmm(xp, h, W_hh.t()) if b_hh is None else torch.addmm(xp + b_hh, h, W_hh.t())
        return (torch.tanh(a) if family == "rnn_tanh" else torch.relu(a)), c
    if family == "lstm":
        a = torch.addmm(xp if b_hh is None else xp + b_hh, h, W_hh.t())
        i, f, g, o = a.chunk(4, 1)
        f = torch.sigmoid(f)
        if gates is not None:
            gates.append(f.mean())
        c = f * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    # gru, PyTorch convention: h' = (1 - z) * n + z * h
    gh = F.linear(h, W_hh, b_hh)
    xr, xz, xn = xp.chunk(3, 1)
    hr, hz, hn = gh.chunk(3, 1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    if gates is not None:
        gates.append(z.mean())
    n = torch.tanh(xn + r * hn)
    return n + z * (h - n), c


NATIVE_FAMILIES = native.NATIVE_FAMILIES  # run by the native kernel on the CPU (float32)


class NativeSeq(torch.autograd.Function):
    """hs = NativeSeq.apply(family, xs, h0, W_hh, b_hh): the time loop of nn.RNN (tanh / ReLU) or
    nn.GRU, same algebra and parameters, in the native kernel (normlstm.cpp) with a hand-written
    backward. PyTorch's CPU build runs these two modules' training as one autograd node per
    operation and time step (only nn.LSTM's is fused, through oneDNN): a bare nn.GRU step cost
    1.3-2.1x the fused LSTM's, this one 0.92-0.96x; the plain RNN's 1.4-2x this one's (perf run G).
    With W_hh's and b_hh's gradients summed in the kernel and the GRU's smaller saved state (perf
    run N, Intel Xeon): GRU 0.62-0.77x the fused LSTM, nn.GRU 1.29-1.87x.

    xs (T, B, G): W_ih x_t + b_ih -- for the RNNs also + b_hh (the caller adds it; b_hh then gets
    no gradient here); returns hs (T, B, H)."""

    @staticmethod
    def forward(ctx, family, xs, h0, W, b_hh):
        k = native.kernel()
        T, B, G = xs.shape
        H = W.shape[1]
        xs = xs.contiguous()
        hbuf = xs.new_empty(T + 1, B, H)  # h_{-1} = h0, then h_0 .. h_{T-1}
        hbuf[0] = h0
        ctx.family = family
        if family == "gru":
            gn, act = xs.new_empty(T, B, H), xs.new_empty(T, B, G)  # n part of W_hh h + b_hh; r, z, n
            k.gru_forward(xs, hbuf, gn, act, W.t(), b_hh.contiguous())
            ctx.save_for_backward(hbuf, gn, act, W)
        else:
            k.plain_forward(xs, hbuf, W.t(), family == "rnn_relu")
            ctx.save_for_backward(hbuf, W)
        return hbuf[1:]

    @staticmethod
    def backward(ctx, dhs):
        k = native.kernel()
        T, B, H = dhs.shape
        *saved, W = ctx.saved_tensors  # unpacked once
        Wc = W.contiguous()
        need = ctx.needs_input_grad
        if ctx.family == "gru":
            hbuf, gn, act = saved
            dxs, dW, db = dhs.new_empty(act.shape), W.new_empty(W.shape), W.new_empty(W.shape[0])
            dh = k.gru_backward(*grad_for_kernel(dhs), dxs, dW, db, hbuf, gn, act, Wc)
            return None, dxs if need[1] else None, dh if need[2] else None, dW if need[3] else None, \
                db if need[4] else None
        (hbuf,) = saved
        dxs, dW = dhs.new_empty(T, B, H), W.new_empty(W.shape)
        dh = k.plain_backward(*grad_for_kernel(dhs), dxs, dW, hbuf, Wc, ctx.family == "rnn_relu")
        return None, dxs if need[1] else None, dh if need[2] else None, dW if need[3] else None, None


class FusedRecurrence(Recurrence):
    """nn.RNN / nn.LSTM / nn.GRU (one layer, batch_first), built on the meta device so that
    construction draws nothing from the global RNG; the recipe initialises it."""

    def __init__(self, family: str, n_in: int, hidden: int, device="cpu"):
        super().__init__()
        self.family, self.hidden = family, hidden
        if family == "lstm":
            mod = nn.LSTM(n_in, hidden, batch_first=True, device="meta")
        elif family == "gru":
            mod = nn.GRU(n_in, hidden, batch_first=True, device="meta")
        else:
            nl = "tanh" if family == "rnn_tanh" else "relu"
            mod = nn.RNN(n_in, hidden, nonlinearity=nl, batch_first=True, device="meta")
        self.rnn = mod.to_empty(device=device)
        self.rnn.flatten_parameters()
        if family in NATIVE_FAMILIES and torch.device(device).type == "cpu":
            native.kernel()  # built (once per machine) or loaded now, in setup, not in the first timed step

    @property
    def w_ih(self):
        return self.rnn.weight_ih_l0

    @property
    def w_hh(self):
        return self.rnn.weight_hh_l0

    @property
    def b_ih(self):
        return self.rnn.bias_ih_l0

    @property
    def b_hh(self):
        return self.rnn.bias_hh_l0

    def native(self, x) -> bool:
        """Whether forward(x) runs the native kernel (rnn_tanh, rnn_relu, gru; float32 on the CPU,
        the kernel built here, BENCH_NORMSEQ_NATIVE not 0) rather than nn.RNN / nn.GRU."""
        return self.family in NATIVE_FAMILIES and native_kernel_for(x) is not None

    def forward(self, x, tbptt: Optional[int] = None, no_grad_before: int = 0):
        """no_grad_before: steps before it run without autograd (their outputs get no
        gradient anyway when the loss reads only the last truncation chunk)."""
        B, T, _ = x.shape
        if self.native(x):
            return self._native_forward(x, tbptt, no_grad_before)
        if not tbptt or tbptt >= T:
            return self.rnn(x)[0]
        outs, state = [], None
        for s, e in _chunks(T, tbptt):
            if state is not None:  # truncate: no gradient crosses the chunk boundary
                state = tuple(t.detach() for t in state) if isinstance(state, tuple) else state.detach()
            with torch.set_grad_enabled(torch.is_grad_enabled() and s >= no_grad_before):
                o, state = self.rnn(x[:, s:e], state)
            outs.append(o)
        return torch.cat(outs, 1)

    def _native_forward(self, x, tbptt, no_grad_before):
        B = x.shape[0]
        gru = self.family == "gru"
        # time-major input terms, one matrix product for all steps (the RNNs fold b_hh in)
        xs = _InputProj.apply(x.transpose(0, 1), self.w_ih, self.b_ih if gru else self.b_ih + self.b_hh)

        def chunk(s, xc, state):
            hs = NativeSeq.apply(self.family, xc, state[0], self.w_hh, self.b_hh if gru else None)
            return hs, (hs[-1],)

        return _over_chunks(xs, tbptt, no_grad_before, (x.new_zeros(B, self.hidden),), chunk)

    def loop(self, x, tbptt=None, probes: Optional[List[torch.Tensor]] = None, gates: Optional[list] = None):
        """The cell-loop twin of `forward`, on the same weights."""
        B, T, _ = x.shape
        xs = F.linear(x, self.w_ih, self.b_ih).unbind(1)  # T x (B, G*H)
        h = x.new_zeros(B, self.hidden)
        c = x.new_zeros(B, self.hidden) if self.family == "lstm" else None
        hs = []
        for t in range(T):
            if is_boundary(t, T, tbptt):
                h = h.detach()
                c = c.detach() if c is not None else None
            h, c = _step(self.family, xs[t], h, c, self.w_hh, self.b_hh, gates)
            if probes is not None:
                h = h + probes[t]
            hs.append(h)
        return torch.stack(hs, 1)


class NormRecurrence(Recurrence):
    """Custom tanh-RNN or LSTM cell with recurrent batch norm (Cooijmans et al. 2016) or layer
    norm (Ba et al. 2016).

    bn: gates = BN(W_x x; g_x) + BN(W_h h; g_h) + b, statistics kept per time step (steps
        beyond `max_steps` reuse the last), gains initialised to 0.1; LSTM also normalises c
        (h = o * tanh(BN(c; g_c, b_c))).
    ln: LSTM: gates = LN(W_x x) + LN(W_h h) + b, h = o * tanh(LN(c)); RNN: h = tanh(LN(W_x x +
        W_h h) + b). Per-example statistics, no batch dependence.
    """

    def __init__(self, family: str, norm: str, n_in: int, hidden: int, max_steps: int, device="cpu"):
        super().__init__()
        assert family in ("rnn_tanh", "lstm") and norm in ("bn", "ln")
        self.family, self.norm, self.hidden, self.max_steps = family, norm, hidden, max_steps
        G = GATES[family] * hidden
        e = dict(device=device)
        self.w_ih = nn.Parameter(torch.empty(G, n_in, **e))
        self.w_hh = nn.Parameter(torch.empty(G, hidden, **e))
        self.bias = nn.Parameter(torch.zeros(G, **e))
        gain0 = 0.1 if norm == "bn" else 1.0
        if not (norm == "ln" and family == "rnn_tanh"):  # ln_rnn normalises the sum once
            self.gain_x = nn.Parameter(torch.full((G,), gain0, **e))
        self.gain_h = nn.Parameter(torch.full((G,), gain0, **e))
        if family == "lstm":
            self.gain_c = nn.Parameter(torch.full((hidden,), gain0, **e))
            self.bias_c = nn.Parameter(torch.zeros(hidden, **e))
        self.eps = 1e-5
        self.momentum = 0.1
        if torch.device(device).type == "cpu":
            native.kernel()  # built (once per machine) or loaded now, in setup, not in the first timed step
        self.update_stats = True  # False while the diagnostics probe in train mode
        if norm == "bn":
            for nm, d in (("x", G), ("h", G), ("c", hidden)):
                self.register_buffer(f"rm_{nm}", torch.zeros(max_steps, d, **e))
                self.register_buffer(f"rv_{nm}", torch.ones(max_steps, d, **e))

    # batch norm with per-time-step statistics ------------------------------------------
    def _stats(self, which, t=None):
        """Running (mean, var) to use/update: None in train mode while probing (frozen)."""
        if self.training and not self.update_stats:
            return None, None
        rm, rv = getattr(self, f"rm_{which}"), getattr(self, f"rv_{which}")
        if t is None:
            return rm.view(-1), rv.view(-1)
        i = min(t, self.max_steps - 1)
        return rm[i], rv[i]

    def _check_steps(self, T):
        """The input term's batch-norm statistics exist for max_steps steps only."""
        if T > self.max_steps:
            raise ValueError(f"sequence of {T} steps longer than max_steps={self.max_steps}")

    def _bn_seq(self, v, which, gain, bias):
        """v (B, T, D): each step normalised with its own statistics, in one fused call."""
        B, T, D = v.shape
        self._check_steps(T)
        rm, rv = self._stats(which)
        if rm is not None:
            rm, rv = rm[: T * D], rv[: T * D]
        out = F.batch_norm(v.reshape(B, T * D), rm, rv, gain.repeat(T), bias.repeat(T),
                           self.training, self.momentum, self.eps)
        return out.view(B, T, D)

    def _bn_step(self, v, t, which, gain, bias):
        rm, rv = self._stats(which, t)
        return F.batch_norm(v, rm, rv, gain, bias, self.training, self.momentum, self.eps)

    # -----------------------------------------------------------------------------------
    def _input_term(self, x, raw: bool = False):
        """The input term of every step, time-major (T, B, G): normalized W_x x + b; for ln_rnn
        (or raw=True: bn_lstm / ln_lstm / bn_rnn on the native kernel, which normalizes it per
        step) the raw W_x x. Layer norm works on the time-major layout directly; batch norm's per-step
        statistics need (B, T*G), then a view."""
        G = self.w_hh.shape[0]
        if raw:
            if self.norm == "bn":
                self._check_steps(x.shape[1])
            return _InputProj.apply(x.transpose(0, 1), self.w_ih)
        if self.norm == "bn":
            return self._bn_seq(_InputProj.apply(x, self.w_ih), "x", self.gain_x, self.bias).transpose(0, 1)
        xp = _InputProj.apply(x.transpose(0, 1), self.w_ih)
        if self.family == "lstm":
            return F.layer_norm(xp, (G,), self.gain_x, self.bias, self.eps)
        return xp

    def forward(self, x, tbptt=None, no_grad_before: int = 0):
        """The training path: one NormSeq call (hand-written backward) per truncation chunk;
        chunks that start before `no_grad_before` run without autograd."""
        B, H = x.shape[0], self.hidden
        frozen = self.training and not self.update_stats
        bn = self.norm == "bn"
        lstm = self.family == "lstm"
        # the kernel normalizes the input term itself (every cell with an input norm: not ln_rnn)
        fold = (lstm or bn) and native_kernel_for(x) is not None
        xs = self._input_term(x, raw=fold)  # (T, B, G)
        stats = {f"{r}_{w}": None if not bn or frozen else getattr(self, f"{r}_{w}") for r in ("rm", "rv")
                 for w in ("h", "c", "x")}
        cfg = dict(family=self.family, norm=self.norm, eps=self.eps, momentum=self.momentum,
                   training=self.training, max_steps=self.max_steps, **stats)
        gain_c_bias = (self.gain_c, self.bias_c) if lstm else (None, None)

        def chunk(s, xc, state):
            hs, c = NormSeq.apply(dict(cfg, t0=s), xc, *state, self.w_hh, self.gain_h,
                                  self.bias if not lstm or fold else None, *gain_c_bias, self.gain_x if fold else None)
            return hs, (hs[-1], c)

        return _over_chunks(xs, tbptt, no_grad_before, (x.new_zeros(B, H), x.new_zeros(B, H)), chunk)

    def loop(self, x, tbptt=None, probes=None, gates=None, no_grad_before: int = 0):
        B, T, _ = x.shape
        H, G = self.hidden, self.w_hh.shape[0]
        bn, lstm = self.norm == "bn", self.family == "lstm"
        xs = self._input_term(x).unbind(0)  # T x (B, G); unbind once: xs[:, t] per step has an O(T^2) backward
        h = x.new_zeros(B, H)
        c = x.new_zeros(B, H) if lstm else None
        W = self.w_hh.t()
        hs = []
        grad = torch.is_grad_enabled()
        for t in range(T):
            if is_boundary(t, T, tbptt):
                h = h.detach()
                c = c.detach() if c is not None else None
            if grad and no_grad_before:
                torch.set_grad_enabled(t >= no_grad_before)
            hp = torch.mm(h, W)  # (B, G)
            if bn:
                a = xs[t] + self._bn_step(hp, t, "h", self.gain_h, None)
            elif lstm:
                a = xs[t] + F.layer_norm(hp, (G,), self.gain_h, None, self.eps)
            else:
                a = F.layer_norm(xs[t] + hp, (G,), self.gain_h, self.bias, self.eps)
            if lstm:
                sg = torch.sigmoid(a)  # gate order i, f, g, o (as nn.LSTM)
                f = sg[:, H:2 * H]
                if gates is not None:
                    gates.append(f.mean())
                c = torch.addcmul(f * c, sg[:, :H], torch.tanh(a[:, 2 * H:3 * H]))
                if bn:
                    cn = self._bn_step(c, t, "c", self.gain_c, self.bias_c)
                else:
                    cn = F.layer_norm(c, (H,), self.gain_c, self.bias_c, self.eps)
                h = sg[:, 3 * H:] * torch.tanh(cn)
            else:
                h = torch.tanh(a)
            if probes is not None:
                h = h + probes[t]
            hs.append(h)
        torch.set_grad_enabled(grad)
        return torch.stack(hs, 1)


def spectral_stats(W: torch.Tensor) -> Tuple[float, float]:
    """(spectral radius, largest singular value) of a square matrix."""
    W = W.detach().double().cpu()
    rho = torch.linalg.eigvals(W).abs().max().item()
    sigma = torch.linalg.svdvals(W).max().item()
    return rho, sigma


