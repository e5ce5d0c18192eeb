"""The training path of the normalized cells (bn_rnn, bn_lstm, ln_rnn, ln_lstm): the whole time
loop as one autograd.Function with a hand-written backward.

Why: a per-step Python loop under autograd records ~15 nodes per step; the slicing of the gate
block alone makes 4 full-size zero tensors per step in the backward, and each step's dW_hh is a
separate small matrix product. Here the forward runs without autograd and keeps what the
backward needs; the backward runs the time loop once with PyTorch's own fused kernels
(native_layer_norm_backward, native_batch_norm_backward, sigmoid/tanh_backward), and the weight
gradient dW_hh = sum_t dp_t^T h_{t-1} is one matrix product over all steps. tanh is taken as
2*sigmoid(2x) - 1 (several times cheaper than torch.tanh on CPU; equal to rounding).

On the CPU in float32 both families' time loops run in a native kernel (bench/models/normlstm.cpp,
built on first use by bench.models.native): one matrix product per step and the rest fused, the
same function as the loops below to rounding (tested), bit for bit run to run. Without it
(BENCH_NORMSEQ_NATIVE=0, no compiler, float64, other devices) the LSTM's two time loops are the
functions `_lstm_forward_loop` / `_lstm_backward_loop`, which on the CPU run compiled by TorchScript
(the same operations on the same buffers, so the same numbers bit for bit, tested; 4-17% faster
steps at hidden 64 than Python); with BENCH_NORMSEQ_JIT=0, a TorchScript that cannot compile (with a
warning), or on other devices (not measured on a GPU) Python runs the same functions. The RNN's
loops are then plain Python.

The cell-loop twin (NormRecurrence.loop, plain autograd) computes the same function: tests
check values, gradients and running statistics against it. Probes, gate recording and
truncation boundaries are the twin's business; here truncation is handled by the caller,
which runs one call per chunk from a detached state.
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ..runtime import env_choice

_LN_BWD = torch.ops.aten.native_layer_norm_backward.default
_BN_BWD = torch.ops.aten.native_batch_norm_backward.default
_SIGMOID_BWD = torch.ops.aten.sigmoid_backward.grad_input


class _Norm:
    """One normalization (per-step layer norm, or batch norm with per-step running statistics):
    fwd(v, t) -> (out, saved_a, saved_b); bwd(g, v, t, saved_a, saved_b, mask) -> grads."""

    def __init__(self, kind: str, D: int, weight, bias, eps: float, training: bool, momentum: float,
                 rm: Optional[torch.Tensor], rv: Optional[torch.Tensor], max_steps: int):
        self.kind, self.D, self.w, self.b, self.eps = kind, [D], weight, bias, eps
        self.training, self.momentum, self.last = training, momentum, max_steps - 1
        # per-step rows of the running statistics, made once (None: frozen, or layer norm)
        self.rm = rm.unbind(0) if rm is not None else None
        self.rv = rv.unbind(0) if rv is not None else None

    def fwd(self, v, t):
        if self.kind == "ln":
            return torch.native_layer_norm(v, self.D, self.w, self.b, self.eps)
        i = min(t, self.last)
        rm, rv = (self.rm[i], self.rv[i]) if self.rm is not None else (None, None)
        return torch.native_batch_norm(v, self.w, self.b, rm, rv, self.training, self.momentum, self.eps)

    def bwd(self, g, v, t, sa, sb, mask):
        if self.kind == "ln":
            return _LN_BWD(g, v, self.D, sa, sb, self.w, self.b, mask)
        i = min(t, self.last)
        rm, rv = (self.rm[i], self.rv[i]) if self.rm is not None else (None, None)
        return _BN_BWD(g, v, self.w, rm, rv, sa, sb, self.training, self.eps, mask)


class NormSeq(torch.autograd.Function):
    """hs, c_last = NormSeq.apply(cfg, xs, h0, c0, W_hh, gain_h, bias, gain_c, bias_c)

    xs (T, B, G): the (already normalized, biased) input term of every step -- for ln_rnn the raw
    projection W_x x_t, normalized together with W_h h inside the step; with gain_x (the native
    kernel: bn_lstm, ln_lstm, bn_rnn) the raw W_x x_t, normalized per step in the kernel with
    gain_x and bias. Returns hs (T, B, H) and
    the last cell state (LSTM; empty otherwise; no gradient flows through it: the caller detaches).
    cfg: dict(family, norm, eps, momentum, training, t0, max_steps, rm_h, rv_h, rm_c, rv_c);
    t0 is the time index of xs[0] (per-step batch-norm statistics when called per chunk).
    bias is used only by ln_rnn (inside its norm); gain_c / bias_c only by the LSTM.

    Elementwise work is the cost at these sizes, so the forward folds constants into weights: the
    LSTM's candidate block is pre-scaled by 2 (in xs and in the norm's gain) so one sigmoid over
    the whole gate block gives sigmoid(i, f, o) and sigmoid(2g) (tanh g = 2 sigmoid(2g) - 1), and
    the cell norm runs with gain and bias doubled so that sigmoid(its output) = sigmoid(2 c_n).
    The backward uses the undoubled weights with the saved statistics (the norms' backward
    depends on the weight only through d xhat = d out * weight)."""

    @staticmethod
    def forward(ctx, cfg, xs, h0, c0, W, gain_h, bias, gain_c, bias_c, gain_x=None):
        T, B, G = xs.shape
        H = W.shape[1]
        lstm, ln_rnn = cfg["family"] == "lstm", (cfg["family"] != "lstm" and cfg["norm"] == "ln")
        t0, norm = cfg["t0"], cfg["norm"]
        common = (cfg["eps"], cfg["training"], cfg["momentum"])
        stats_h = (cfg["rm_h"], cfg["rv_h"], cfg["max_steps"])
        new = xs.new_empty
        hbuf = new(T + 1, B, H)  # h_{-1} = h0, then h_0 .. h_{T-1}
        hbuf[0] = h0
        vin = new(T, B, G)  # input of the recurrent norm (W_h h, or x-term + W_h h)
        Wt = W.t()
        ctx.cfg, ctx.dims = cfg, (T, B, G, H, lstm, ln_rnn)
        ctx.native = native_kernel_for(xs)
        # gain_x: the native kernel normalizes the raw input term W_x x itself, per step, with the
        # cell's norm (bn_lstm, ln_lstm, bn_rnn; ln_rnn has no input norm)
        fold = gain_x is not None
        if fold and (ctx.native is None or ln_rnn):
            raise RuntimeError("NormSeq: gain_x (the input norm folded into the loop) needs the native kernel "
                               "and a cell with an input norm")
        if fold:
            xs = xs.contiguous()  # the raw input term, read by the kernel and by its backward
        ctx.fold = (xs, gain_x) if fold else (None, None)
        # the pre-activations the kernels read doubled: the LSTM's candidate block (sigmoid(2g)
        # gives tanh(g)), the whole of the RNN's (sigmoid(2 pre)); ln_rnn's after its norm
        if lstm:
            scale = torch.ones(G, dtype=xs.dtype, device=xs.device)
            scale[2 * H:3 * H] = 2
        else:
            scale = 2
        xnorm = (gain_x * scale, bias * scale, cfg["rm_x"], cfg["rv_x"]) if fold else (None,) * 4
        if not fold:  # contiguous (T, B, G) whatever came in
            xs = xs.contiguous() if ln_rnn else torch.mul(xs, scale, out=new(T, B, G))
        if lstm:
            act = new(T, B, G)  # sigmoid(i), sigmoid(f), sigmoid(2g), sigmoid(o)
            tg = new(T, B, H)  # tanh(g)
            cbuf = new(T + 1, B, H)
            cbuf[0] = c0
            tcn = new(T, B, H)  # tanh(c_n)
            args = (xs, hbuf, vin, act, tg, cbuf, tcn, Wt, norm == "ln", gain_h * scale, gain_c * 2, bias_c * 2,
                    *common, *_stats(cfg), t0, cfg["max_steps"] - 1)
            if ctx.native is not None:
                ctx.stats = ctx.native.forward(*args, *xnorm)
            else:
                ctx.stats = _lstm_loop("forward", xs.device)(*args)
            ctx.weights = (gain_h, gain_c, bias_c)  # the backward's norms: the undoubled weights
            ctx.scale4 = scale * scale  # d/da of sigmoid(2g) -> tanh'(g): factor 4 on the g block
            ctx.save_for_backward(hbuf, vin, W, act, tg, cbuf, tcn)
            c_last = cbuf[T]
        else:
            sig = new(T, B, H)  # sigmoid(2 pre)
            if ctx.native is not None:
                ctx.sa, ctx.sb, ctx.mx, ctx.sx = ctx.native.rnn_forward(
                    xs, hbuf, vin, sig, Wt, ln_rnn, gain_h * 2, bias * 2 if ln_rnn else None, *common,
                    *_stats(cfg)[:2], t0, cfg["max_steps"] - 1, *xnorm)
                ctx.gain_h = gain_h  # the backward's norm weight: undoubled
            else:
                _rnn_forward_loop(xs, hbuf, vin, sig, Wt, ln_rnn, t0, ctx,
                                  _Norm(norm, G, gain_h * 2, bias * 2 if ln_rnn else None, *common, *stats_h))
                # the backward's norm: the model's own (undoubled) weights, the same statistics
                ctx.nh = _Norm(norm, G, gain_h, bias if ln_rnn else None, *common, *stats_h)
            ctx.save_for_backward(hbuf, vin, W, sig)
            c_last = xs.new_empty(0)
        ctx.mark_non_differentiable(c_last)
        return hbuf[1:], c_last

    @staticmethod
    def backward(ctx, dhs, _dc_last):
        T, B, G, H, lstm, ln_rnn = ctx.dims
        cfg = ctx.cfg
        t0 = cfg["t0"]
        need = ctx.needs_input_grad
        new = dhs.new_empty
        dxs = new(T, B, G)
        if ctx.native is not None:
            # dW_hh summed in the kernel step by step (dv_t^T h_{t-1}), so dv is one step's block
            # (ln_rnn: dxs itself); one (T*B, G)^T (T*B, H) product afterwards cost 10-12% of a
            # bn_lstm step at hidden 64, T=100, and read a (T, B, G) buffer written for it alone
            dy, batch_major = grad_for_kernel(dhs)
            dv = dxs if ln_rnn else new(1, B, G)
            dW_hh = new(G, H)
        else:
            dhs = dhs.contiguous()
            dv = dxs if ln_rnn else new(T, B, G)  # ln_rnn: x-term and W_h h share the norm
            dW_hh = None
        if lstm:
            hbuf, vin, W, act, tg, cbuf, tcn = ctx.saved_tensors
            gain_h, gain_c, bias_c = ctx.weights
            if ctx.native is not None:
                dh, dc, dgain_h, dgain_c, dbias_c, dgain_x, dbias = ctx.native.backward(
                    dy, batch_major, dxs, dv, dW_hh, hbuf, vin, W, act, tg, cbuf, tcn, cfg["norm"] == "ln", gain_h,
                    gain_c, cfg["training"], *ctx.stats, *ctx.fold)
            else:
                dh, dc, dgain_h, dgain_c, dbias_c = _lstm_loop("backward", dhs.device)(
                    dhs, dxs, dv, hbuf, vin, W, act, tg, cbuf, tcn, ctx.scale4, cfg["norm"] == "ln", gain_h,
                    gain_c, bias_c, cfg["eps"], cfg["training"], *_stats(cfg), t0, cfg["max_steps"] - 1, *ctx.stats)
            if ctx.fold[1] is None:
                dgain_x = dbias = None
        elif ctx.native is not None:
            hbuf, vin, W, sig = ctx.saved_tensors
            dh, dgain_h, dbias, dgain_x, dbias_x = ctx.native.rnn_backward(
                dy, batch_major, dxs, dv, dW_hh, hbuf, vin, W, sig, ln_rnn, ctx.gain_h, cfg["training"], ctx.sa,
                ctx.sb, ctx.mx, ctx.sx, *ctx.fold)
            folded = ctx.fold[1] is not None
            # bias: ln_rnn's (inside its norm), or bn_rnn's folded input norm's
            dbias = dbias if ln_rnn else (dbias_x if folded else None)
            dgain_x = dgain_x if folded else None
        else:
            hbuf, vin, W, sig = ctx.saved_tensors
            nh, sa, sb = ctx.nh, ctx.sa, ctx.sb
            dhb, dxb, dvb, vb, sgb = dhs.unbind(0), dxs.unbind(0), dv.unbind(0), vin.unbind(0), sig.unbind(0)
            dgain_h = torch.zeros_like(nh.w)
            dbias = torch.zeros_like(nh.w) if ln_rnn else None
            dgain_x = None
            maskh = [True, True, ln_rnn]
            dh = None
            for t in range(T - 1, -1, -1):
                g_out = dhb[t] if dh is None else dhb[t] + dh
                # h = 2 sigmoid(2 pre) - 1: dh/dpre = 4 s (1 - s)
                gn = _SIGMOID_BWD(g_out, sgb[t], grad_input=new(B, G) if ln_rnn else dxb[t]).mul_(4)
                dvt, dg, db = nh.bwd(gn, vb[t], t0 + t, sa[t], sb[t], maskh)
                dgain_h += dg
                if ln_rnn:
                    dbias += db
                dvb[t].copy_(dvt)
                dh = torch.mm(dvt, W)
        if dW_hh is None:
            dW_hh = torch.mm(dv.view(T * B, G).t(), hbuf[:-1].reshape(T * B, H))
        dW = dW_hh if need[4] else None
        grads = [None, dxs if need[1] else None, dh if need[2] else None]
        if lstm:
            grads += [dc if need[3] else None, dW, dgain_h, dbias, dgain_c, dbias_c, dgain_x]
        else:
            grads += [None, dW, dgain_h, dbias, None, None, dgain_x]
        return tuple(grads)


def _rnn_forward_loop(xs, hbuf, vin, sig, Wt, ln_rnn, t0, ctx, nh):
    """The normalized RNNs' forward time loop in Python (when the native kernel is not used)."""
    T = xs.shape[0]
    # every per-step view is made once, outside the loop (indexing costs as much as a small op)
    hb, vb, sgb, xb = hbuf.unbind(0), vin.unbind(0), sig.unbind(0), xs.unbind(0)
    sa, sb = [None] * T, [None] * T
    h = hb[0]
    for t in range(T):
        v = vb[t]
        if ln_rnn:
            torch.addmm(xb[t], h, Wt, out=v)
        else:
            torch.mm(h, Wt, out=v)
        n, sa[t], sb[t] = nh.fwd(v, t0 + t)
        # h = tanh(pre) = 2 sigmoid(2 pre) - 1; n holds 2 * the norm's output
        sg = torch.sigmoid(n if ln_rnn else n.add_(xb[t]), out=sgb[t])
        h = torch.mul(sg, 2, out=hb[t + 1]).sub_(1)
    ctx.sa, ctx.sb = sa, sb


def native_kernel_for(xs):
    """The native kernel for these buffers (float32 on the CPU, when it is built here), or None."""
    if xs.device.type != "cpu" or xs.dtype != torch.float32:
        return None
    from . import native

    return native.kernel()


def grad_for_kernel(dhs):
    """(dy, batch_major): the gradient of a kernel's hidden states (T, B, H) as the native backward
    reads it. A batch-first model's readout hands it back as the transpose of a (B, T, H) tensor
    (for a loss on the last step: zeros but one step); the kernel then reads it as it lies
    (batch_major) instead of a (T, B, H) copy -- at T=1000, hidden 64, 16 MB written and read per step."""
    batch_major = not dhs.is_contiguous() and dhs.transpose(0, 1).is_contiguous()
    return (dhs.transpose(0, 1), True) if batch_major else (dhs.contiguous(), False)


def _stats(cfg):
    """The running statistics (rm_h, rv_h, rm_c, rv_c): (max_steps, D) buffers, or None."""
    return cfg["rm_h"], cfg["rv_h"], cfg["rm_c"], cfg["rv_c"]


# ---------------------------------------------------------------------------------------------
# The LSTM time loops (TorchScript-compatible Python)
# ---------------------------------------------------------------------------------------------
# Run by TorchScript's interpreter on the CPU (`_lstm_loop`): per operation it costs a fraction
# of a Python call, and at hidden 64 the ~13 forward and ~15 backward operations of a step are
# dominated by that per-call cost. Compiled on first use in a process (0.07 s here; the first
# call profiles, ~0.2 s). The values are the same either way, bit for bit (tested).
def _rows(rm: Optional[Tensor], rv: Optional[Tensor], i: int) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """Step i's rows of the running statistics (None, None when they are not kept)."""
    if rm is not None and rv is not None:
        return rm[i], rv[i]
    return None, None


def _lstm_forward_loop(xs: Tensor, hbuf: Tensor, vin: Tensor, act: Tensor, tg: Tensor, cbuf: Tensor,
                       tcn: Tensor, Wt: Tensor, ln: bool, wh: Tensor, wc: Tensor, bc: Tensor, eps: float,
                       training: bool, momentum: float, rm_h: Optional[Tensor], rv_h: Optional[Tensor],
                       rm_c: Optional[Tensor], rv_c: Optional[Tensor], t0: int, last: int
                       ) -> Tuple[List[Tensor], List[Tensor], List[Tensor], List[Tensor]]:
    T, G, H = xs.shape[0], xs.shape[2], tg.shape[2]
    xb, hb, vb, ab = xs.unbind(0), hbuf.unbind(0), vin.unbind(0), act.unbind(0)
    tgb, cbb, tcb = tg.unbind(0), cbuf.unbind(0), tcn.unbind(0)
    ai, af = act[:, :, 0:H].unbind(0), act[:, :, H:2 * H].unbind(0)
    ag, ao = act[:, :, 2 * H:3 * H].unbind(0), act[:, :, 3 * H:4 * H].unbind(0)
    sa: List[Tensor] = []
    sb: List[Tensor] = []
    ca: List[Tensor] = []
    cb: List[Tensor] = []
    h = hb[0]
    for t in range(T):
        v = vb[t]
        torch.mm(h, Wt, out=v)
        i = min(t0 + t, last)
        if ln:
            n, a1, b1 = torch.native_layer_norm(v, [G], wh, None, eps)
        else:
            rm, rv = _rows(rm_h, rv_h, i)
            n, a1, b1 = torch.native_batch_norm(v, wh, None, rm, rv, training, momentum, eps)
        sa.append(a1)
        sb.append(b1)
        torch.sigmoid(n.add_(xb[t]), out=ab[t])
        g = torch.mul(ag[t], 2, out=tgb[t]).sub_(1)
        c = torch.addcmul(af[t] * cbb[t], ai[t], g, out=cbb[t + 1])
        if ln:
            cn, a2, b2 = torch.native_layer_norm(c, [H], wc, bc, eps)
        else:
            rm, rv = _rows(rm_c, rv_c, i)
            cn, a2, b2 = torch.native_batch_norm(c, wc, bc, rm, rv, training, momentum, eps)
        ca.append(a2)
        cb.append(b2)
        tc = torch.sigmoid(cn, out=tcb[t]).mul_(2).sub_(1)
        h = torch.mul(ao[t], tc, out=hb[t + 1])
    return sa, sb, ca, cb


def _lstm_backward_loop(dhs: Tensor, dxs: Tensor, dv: Tensor, hbuf: Tensor, vin: Tensor, W: Tensor, act: Tensor,
                        tg: Tensor, cbuf: Tensor, tcn: Tensor, scale4: Tensor, ln: bool, wh: Tensor, wc: Tensor,
                        bc: Tensor, eps: float, training: bool, rm_h: Optional[Tensor], rv_h: Optional[Tensor],
                        rm_c: Optional[Tensor], rv_c: Optional[Tensor], t0: int, last: int, sa: List[Tensor],
                        sb: List[Tensor], ca: List[Tensor], cb: List[Tensor]
                        ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns dh (of h0), dc (of c0), dgain_h, dgain_c, dbias_c; fills dxs and dv."""
    T, B, G, H = dxs.shape[0], dxs.shape[1], dxs.shape[2], tg.shape[2]
    dhb, dxb, dvb, vb = dhs.unbind(0), dxs.unbind(0), dv.unbind(0), vin.unbind(0)
    ab, tgb, cbb, tcb = act.unbind(0), tg.unbind(0), cbuf.unbind(0), tcn.unbind(0)
    ai, af = act[:, :, 0:H].unbind(0), act[:, :, H:2 * H].unbind(0)
    ao = act[:, :, 3 * H:4 * H].unbind(0)
    di, df = dxs[:, :, 0:H].unbind(0), dxs[:, :, H:2 * H].unbind(0)
    dg_, do = dxs[:, :, 2 * H:3 * H].unbind(0), dxs[:, :, 3 * H:4 * H].unbind(0)
    dgain_h = torch.zeros_like(wh)
    dgain_c = torch.zeros_like(wc)
    dbias_c = torch.zeros_like(bc)
    dc = dhs.new_zeros(B, H)
    dcn = dhs.new_empty(B, H)
    dh = dhs.new_zeros(B, H)
    mask3 = [True, True, True]
    maskh = [True, True, False]
    for k in range(T):
        t = T - 1 - k
        i = min(t0 + t, last)
        g_out = dhb[t] if k == 0 else dhb[t] + dh
        tc = tcb[t]
        torch.mul(g_out, tc, out=do[t])
        torch.ops.aten.tanh_backward(g_out * ao[t], tc, grad_input=dcn)
        if ln:
            dcl, dgc, dbc = torch.ops.aten.native_layer_norm_backward(dcn, cbb[t + 1], [H], ca[t], cb[t], wc, bc, mask3)
        else:
            rm, rv = _rows(rm_c, rv_c, i)
            dcl, dgc, dbc = torch.ops.aten.native_batch_norm_backward(dcn, cbb[t + 1], wc, rm, rv, ca[t], cb[t],
                                                                      training, eps, mask3)
        dgain_c += dgc
        dbias_c += dbc
        dc = dcl.add_(dc)
        torch.mul(dc, tgb[t], out=di[t])
        torch.mul(dc, cbb[t], out=df[t])
        torch.mul(dc, ai[t], out=dg_[t])
        dc = dc * af[t]
        gn = torch.ops.aten.sigmoid_backward(dxb[t], ab[t], grad_input=dxb[t]).mul_(scale4)
        if ln:
            dvt, dg, db = torch.ops.aten.native_layer_norm_backward(gn, vb[t], [G], sa[t], sb[t], wh, None, maskh)
        else:
            rm, rv = _rows(rm_h, rv_h, i)
            dvt, dg, db = torch.ops.aten.native_batch_norm_backward(gn, vb[t], wh, rm, rv, sa[t], sb[t], training,
                                                                    eps, maskh)
        dgain_h += dg
        dvb[t].copy_(dvt)
        dh = torch.mm(dvt, W)
    return dh, dc, dgain_h, dgain_c, dbias_c


_JIT = {}


def _lstm_loop(which: str, device: torch.device):
    """The LSTM's `which` ("forward" / "backward") time loop: compiled by TorchScript on the CPU,
    else (other devices, BENCH_NORMSEQ_JIT=0, no TorchScript) the same function run by Python."""
    name = f"_lstm_{which}_loop"
    return (_scripted(name) if device.type == "cpu" else None) or globals()[name]


def _scripted(name: str):
    """The TorchScript function `name` (compiled once per process), or None when disabled
    (BENCH_NORMSEQ_JIT=0) or when TorchScript cannot compile it here (then the Python loops run)."""
    if name not in _JIT:
        fn = None
        if env_choice("BENCH_NORMSEQ_JIT", ("0", "1"), "1") == "1":
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # torch.jit.script's deprecation notice
                    fn = torch.jit.script(globals()[name])
            except Exception as e:  # noqa: BLE001 -- any failure: the Python loops, said once
                warnings.warn(f"bench.models.normseq: TorchScript unavailable ({type(e).__name__}: {e}); "
                              "the normalized LSTMs run their Python loops (slower, same results)")
        _JIT[name] = fn
    return _JIT[name]
