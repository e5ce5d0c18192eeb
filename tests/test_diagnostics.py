"""Diagnostics: the per-time-step gradient profile against an independent autograd computation
(an explicit loop written here from the model's weights, h_t.retain_grad()), the decay fit on
synthetic profiles, truncation zeros, gate means and the frozen batch-norm statistics."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bench import diagnostics
from bench.models import MITIGATIONS, parse_mitigation
from bench.seeding import generator

RECIPES = MITIGATIONS.names()


# -- an independent reference: the documented equations, written out -------------------------------
def _ln(v, gain, bias, eps):
    mu = v.mean(-1, keepdim=True)
    var = v.var(-1, unbiased=False, keepdim=True)
    out = (v - mu) / torch.sqrt(var + eps) * gain
    return out if bias is None else out + bias


def _bn(v, gain, bias, eps):
    """Batch norm with this batch's statistics (training mode), per feature."""
    mu = v.mean(0, keepdim=True)
    var = v.var(0, unbiased=False, keepdim=True)
    out = (v - mu) / torch.sqrt(var + eps) * gain
    return out if bias is None else out + bias


def reference_states(model, x, tbptt=None):
    """h_0..h_{T-1} of model.rec from its parameters, each with retain_grad(); and the gate
    activations whose mean gate_mean reports (forget gate f for LSTM, update gate z for GRU)."""
    rec = model.rec
    fam, norm = rec.family, getattr(rec, "norm", None)
    B, T, _ = x.shape
    H = rec.hidden
    h = x.new_zeros(B, H)
    c = x.new_zeros(B, H)
    hs, gates = [], []
    W, U = rec.w_ih, rec.w_hh
    if norm is not None:
        eps = rec.eps
        nx = (lambda v: _ln(v, rec.gain_x, None, eps)) if norm == "ln" else (lambda v: _bn(v, rec.gain_x, None, eps))
        nh = (lambda v: _ln(v, rec.gain_h, None, eps)) if norm == "ln" else (lambda v: _bn(v, rec.gain_h, None, eps))
        nc = (lambda v: _ln(v, rec.gain_c, rec.bias_c, eps)) if norm == "ln" else (lambda v: _bn(v, rec.gain_c, rec.bias_c, eps))
    for t in range(T):
        if tbptt and 0 < t < T and (T - t) % tbptt == 0:  # boundaries counted from the end
            h, c = h.detach(), c.detach()
        xt = x[:, t]
        if norm is None:
            a_x = xt @ W.T + rec.b_ih
            a_h = h @ U.T + rec.b_hh
            if fam == "rnn_tanh":
                h = torch.tanh(a_x + a_h)
            elif fam == "rnn_relu":
                h = torch.relu(a_x + a_h)
            elif fam == "lstm":
                i, f, g, o = (a_x + a_h).chunk(4, 1)
                gates.append(torch.sigmoid(f))
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
            elif fam == "gru":
                xr, xz, xn = a_x.chunk(3, 1)
                hr, hz, hn = a_h.chunk(3, 1)
                r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
                gates.append(z)
                n = torch.tanh(xn + r * hn)
                h = (1 - z) * n + z * h
            else:
                pytest.fail(f"no reference equations for family {fam!r}")
        elif fam == "rnn_tanh" and norm == "ln":  # LN of the summed pre-activation
            h = torch.tanh(_ln(xt @ W.T + h @ U.T, rec.gain_h, rec.bias, rec.eps))
        elif fam == "rnn_tanh" and norm == "bn":
            h = torch.tanh(nx(xt @ W.T) + rec.bias + nh(h @ U.T))
        elif fam == "lstm" and norm in ("ln", "bn"):
            i, f, g, o = (nx(xt @ W.T) + rec.bias + nh(h @ U.T)).chunk(4, 1)
            gates.append(torch.sigmoid(f))
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(nc(c))
        else:
            pytest.fail(f"no reference equations for {fam!r} with norm {norm!r}")
        if h.requires_grad:
            h.retain_grad()
        hs.append(h)
    return hs, gates


def reference_profile(model, task, x, y, tbptt=None):
    hs, _ = reference_states(model, x, tbptt)
    head = model.head
    if task.readout == "last":
        out = head(hs[-1])
        loss = F.mse_loss(out.squeeze(-1), y) if task.kind == "regression" else F.cross_entropy(out, y)
    else:  # the steps where memory is needed: the last probe_window outputs
        w = task.probe_window()
        out = torch.stack([head(h) for h in hs[-w:]], 1)
        loss = F.cross_entropy(out.reshape(-1, task.n_out), y[:, -w:].reshape(-1))
    loss.backward()
    return [0.0 if h.grad is None else h.grad.norm().item() for h in hs]


CASES = [(r, "adding", 9) for r in RECIPES] + [
    ("lstm", "copy", 3), ("gru", "temporal_order", 12), ("bn_lstm", "copy", 2), ("ln_lstm", "temporal_order3", 10),
    ("irnn", "multiplication", 8), ("rnn+tbptt:3", "adding", 11), ("lstm+tbptt:4", "temporal_order", 14),
]


@pytest.mark.parametrize("mit,task_name,length", CASES)
def test_profile_equals_independent_autograd(mit, task_name, length, small_model):
    model, task = small_model(mit, task_name, length=length, hidden=6)
    model = model.double()
    x, y = task.sample(5, generator("profile", mit, task_name))
    x = x.double()
    if task.kind == "regression":
        y = y.double()
    model.eval()  # the profile uses training-mode statistics whatever the mode
    prof = diagnostics.gradient_profile(model, task, x, y)
    assert not model.training, "gradient_profile must restore the model's mode"
    model.train()
    model.zero_grad()
    ref = reference_profile(model, task, x, y, tbptt=parse_mitigation(mit).get("tbptt"))
    assert len(prof) == len(ref) == task.seq_len
    assert max(ref) > 0
    for t, (a, b) in enumerate(zip(prof, ref)):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-300), f"t={t}: profile {a} vs autograd {b}"


@pytest.mark.parametrize("recipe", [r for r in RECIPES if MITIGATIONS.get(r).family in ("lstm", "gru")])
def test_gate_mean_is_the_mean_gate(recipe, small_model):
    model, task = small_model(recipe, "temporal_order", length=12)
    x, _ = task.sample(6, generator("gates"))
    got = diagnostics.gate_mean(model, x)
    model.train()
    with torch.no_grad():
        _, gates = reference_states(model, x)
    assert got == pytest.approx(torch.stack(gates).mean().item(), rel=1e-5)


@pytest.mark.parametrize("recipe", [r for r in RECIPES if MITIGATIONS.get(r).family not in ("lstm", "gru")])
def test_gate_mean_is_none_without_gates(recipe, small_model):
    model, task = small_model(recipe, "adding")
    assert diagnostics.gate_mean(model, task.sample(3, generator("g"))[0]) is None


@pytest.mark.parametrize("recipe", [r for r in RECIPES if MITIGATIONS.get(r).norm == "bn"])
def test_profile_does_not_update_running_statistics(recipe, small_model):
    model, task = small_model(recipe, "adding", length=8)
    model.train()
    x, y = task.sample(8, generator("frozen"))
    model(x)  # move the running statistics away from their initial values
    before = {k: v.clone() for k, v in model.state_dict().items()}
    diagnostics.gradient_profile(model, task, x, y)
    diagnostics.gate_mean(model, x)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training


# -- truncation: exact zeros before the last boundary ---------------------------------------------------
@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("k,length", [(3, 11), (4, 12), (1, 6)])
def test_tbptt_profile_is_zero_before_the_last_boundary(recipe, k, length, small_model):
    model, task = small_model(f"{recipe}+tbptt:{k}", "adding", length=length)
    x, y = task.sample(8, generator("tbptt", recipe))
    prof = diagnostics.gradient_profile(model, task, x, y)
    last = task.seq_len - k  # the last chunk is [last, T): exactly k steps
    assert all(v == 0.0 for v in prof[:last]), prof
    assert all(v > 0.0 for v in prof[last:]), prof
    snap = diagnostics.fit_decay(prof, task.seq_len - 1)
    assert snap["profile_zero_frac"] == pytest.approx(last / (task.seq_len - 1))


# -- the decay fit ----------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [0.3, 0.9, 1.0, 1.05, 2.5])
@pytest.mark.parametrize("first", [2, 7, 40])
def test_fit_decay_recovers_a_geometric_rate(rate, first):
    C = 1e-3
    # profile[t] = C * rate^(first - t) before the loss; the loss steps themselves are ignored
    prof = [C * rate ** (first - t) for t in range(first)] + [123.0, 0.0, float("nan")]
    fit = diagnostics.fit_decay(prof, first)
    assert fit["decay_slope"] == pytest.approx(math.log(rate), abs=1e-9)
    assert fit["decay_factor"] == pytest.approx(rate, rel=1e-9)
    assert fit["reach_log10"] == pytest.approx((first - 1) * math.log10(rate), abs=1e-9)
    assert fit["profile_zero_frac"] == 0.0


def test_fit_decay_excludes_zero_and_nonfinite_steps():
    first, rate = 30, 0.8
    prof = [rate ** (first - t) for t in range(first)] + [1.0]
    for t in list(range(10)) + [15]:
        prof[t] = 0.0
    prof[20], prof[21] = float("nan"), float("inf")
    fit = diagnostics.fit_decay(prof, first)
    assert fit["decay_factor"] == pytest.approx(rate, rel=1e-9)
    assert fit["profile_zero_frac"] == pytest.approx(13 / first)
    assert fit["reach_log10"] is None  # profile[0] is 0: no reach to report


def test_fit_decay_needs_two_usable_steps():
    assert diagnostics.fit_decay([0.0, 0.0, 0.0, 1.0], 3)["decay_slope"] is None
    assert diagnostics.fit_decay([0.0, 0.5, 0.0, 1.0], 3)["decay_factor"] is None
    fit = diagnostics.fit_decay([0.25, 0.5, 1.0], 2)
    assert fit["decay_factor"] == pytest.approx(0.5)
    assert diagnostics.fit_decay([1.0], 0)["profile_zero_frac"] is None


def test_fit_decay_factor_saturates_instead_of_overflowing():
    fit = diagnostics.fit_decay([1e300, 1e-300, 1.0], 2)  # grows 1e600-fold per step back
    assert math.isfinite(fit["decay_factor"]) and fit["decay_factor"] > 1e300
    assert fit["reach_log10"] == pytest.approx(600)
    fit = diagnostics.fit_decay([1e-300, 1e300, 1.0], 2)  # vanishes 1e-600-fold per step back
    assert 0 < fit["decay_factor"] < 1e-300
    assert fit["reach_log10"] == pytest.approx(-600)


# -- snapshots on real models -----------------------------------------------------------------------
@pytest.mark.parametrize("mit,task_name", [("lstm", "copy"), ("rnn", "adding"), ("gru", "temporal_order")])
def test_snapshot_fits_the_steps_before_the_loss(mit, task_name, small_model):
    model, task = small_model(mit, task_name, length=10)
    x, y = task.sample(4, generator("snap"))
    snap = diagnostics.snapshot(model, task, x, y, step=7)
    assert snap["step"] == 7 and len(snap["profile"]) == task.seq_len
    fit = diagnostics.fit_decay(snap["profile"], task.seq_len - task.probe_window())
    for key in ("decay_slope", "decay_factor", "reach_log10", "profile_zero_frac"):
        assert snap[key] == fit[key]
    rho, sigma = model.spectral()
    assert snap["spectral_radius"] == rho and snap["sigma_max"] == sigma and rho <= sigma + 1e-9


def test_decay_factor_tracks_the_recurrent_gain(small_model):
    """IRNN scaled to radius r: on active units the backward Jacobian is r * I, so the fitted
    per-step factor is ~r (exploding); a tanh RNN at radius 0.5 vanishes."""
    model, task = small_model("irnn+radius:1.5", "adding", length=30, hidden=16)
    x, y = task.sample(16, generator("gain"))
    fit = diagnostics.snapshot(model, task, x, y, 0)
    assert 1.35 < fit["decay_factor"] < 1.65
    model, task = small_model("rnn+radius:0.5", "adding", length=30, hidden=16)
    fit = diagnostics.snapshot(model, task, x, y, 0)
    assert fit["decay_factor"] < 0.9 and fit["reach_log10"] < -3


def test_flushed_profile_is_zero_where_the_gradient_fell_below_the_normal_floats(small_model):
    """A tanh RNN at radius 0.3 loses ~half a decade per step: 150 steps back, the gradient is below
    float32's smallest normal (1.18e-38). In train()'s arithmetic (denormals flushed) the profile is
    exactly zero there -- the gradient training gets -- and the fit counts those steps as zeros; near
    the loss, where the floats are normal, the two arithmetics give the same profile."""
    from bench.runtime import denormals_flushed, flushed_denormals

    model, task = small_model("rnn+radius:0.3", "adding", length=150, hidden=16)
    x, y = task.sample(8, generator("denormal"))
    with flushed_denormals(False):
        ieee = diagnostics.snapshot(model, task, x, y, 0)
    with flushed_denormals():
        flushed = diagnostics.snapshot(model, task, x, y, 0)
        assert denormals_flushed()
    tiny = [t for t, g in enumerate(ieee["profile"]) if 0 < g < 1.18e-38]
    assert tiny, f"no denormal gradient in the IEEE profile: {ieee['profile'][:5]}"
    assert all(flushed["profile"][t] == 0.0 for t in tiny)
    assert flushed["profile_zero_frac"] > ieee["profile_zero_frac"]
    assert flushed["profile"][-1] == pytest.approx(ieee["profile"][-1], rel=1e-6)
