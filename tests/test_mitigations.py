"""Mitigations: parsing and its errors, the recipe initializations, and a forward/backward pass of
every mitigation on every task, with the cell-loop twin checked against the fused module.

Generated over bench.models.MITIGATIONS / MODIFIERS and bench.tasks.TASKS, plus a few
compositions."""
from __future__ import annotations

import math

import pytest
import torch

from bench.errors import BenchError
from bench.models import MITIGATIONS, MODIFIERS, build_model, parse_mitigation
from bench.models.cells import GATES, FusedRecurrence
from bench.models.mitigations import check_for_task
from bench.seeding import generator
from bench.tasks import TASKS, make_task

RECIPES = MITIGATIONS.names()
COMPOSITIONS = ["lstm+clipnorm:1", "rnn+tbptt:3", "rnn+radius:1.5", "rnn+clipvalue:0.5", "bn_lstm+tbptt:3",
                "ln_rnn+tbptt:3"]
ALL_MITS = RECIPES + COMPOSITIONS
SINGLE = [r for r in RECIPES if MITIGATIONS.get(r).family in ("rnn_tanh", "rnn_relu")]
GATED = [r for r in RECIPES if r not in SINGLE]
HIDDEN = 8


def _grid():
    for m in ALL_MITS:
        for t in TASKS.names():
            yield pytest.param(m, t, id=f"{m}-{t}")


GRID = list(_grid())


# -- forward / backward of every mitigation on every task --------------------------------------------
@pytest.mark.parametrize("mit,task_name", GRID)
def test_forward_backward_gives_finite_grads(mit, task_name, small_model):
    model, task = small_model(mit, task_name)
    model.train()
    x, y = task.sample(4, generator("fb", task_name))
    out = model(x)
    expect = (4, task.n_out) if task.readout == "last" else (4, task.seq_len, task.n_out)
    assert out.shape == expect and torch.isfinite(out).all()
    loss = task.loss(out, y)
    assert torch.isfinite(loss)
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    for name, g in grads.items():
        assert torch.isfinite(g).all(), f"{name} has a non-finite gradient"
    assert model.head.weight.grad.abs().sum() > 0
    assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith("rec.")), "no gradient reaches the recurrence"


@pytest.mark.parametrize("mit", ALL_MITS)
def test_every_parameter_gets_a_gradient(mit, small_model):
    model, task = small_model(mit, "adding")
    x, y = task.sample(4, generator("every-param"))
    task.loss(model(x), y).backward()
    unused = [name for name, p in model.named_parameters() if p.grad is None]
    assert not unused, f"parameters that never get a gradient: {unused}"


@pytest.mark.parametrize("mit,task_name", GRID)
def test_cell_loop_twin_matches_the_model(mit, task_name, small_model):
    """forward_loop (the per-step twin used by the diagnostics) computes what model(x) computes --
    for fused recurrences, what nn.RNN / nn.LSTM / nn.GRU compute -- and feeds the same weights."""
    model, task = small_model(mit, task_name)
    x, y = task.sample(5, generator("twin", task_name))
    for mode in (True, False):
        model.train(mode)
        a = model(x)
        task.loss(a, y).backward()
        ga = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        b = model.forward_loop(x)
        task.loss(b, y).backward()
        gb = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        # float32 rounding accumulates over the steps, and the two paths sum in different orders (BLAS
        # kernels differ between CPUs): tolerances relative to the tensor's scale. Measured worst cases
        # on an Intel Xeon: outputs 2.9e-6 of max|out| (bn_lstm, adding); gradients 1.7e-3 of max|grad|
        # (bn_lstm, digits, training mode: batch statistics of 5 sequences amplify rounding), 1e-4 for
        # every other case. The exact comparison is the double-precision one below (1e-8 relative).
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 + 1e-5 * a.abs().max().item()), (a - b).abs().max()
        for u, v in zip(ga, gb):
            assert (u is None) == (v is None)
            assert u is None or torch.allclose(u, v, rtol=1e-4, atol=1e-6 + 5e-3 * u.abs().max().item()), (u - v).abs().max()
    # in double precision the two agree to rounding, values and gradients, in both modes
    model = model.double()
    xd = x.double()
    for mode in (True, False):
        model.train(mode)
        a = model(xd)
        task.loss(a, y).backward()
        ga = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        b = model.forward_loop(xd)
        task.loss(b, y).backward()
        gb = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), (a - b).abs().max()
        for (name, _), u, v in zip(model.named_parameters(), ga, gb):
            assert torch.allclose(u, v, rtol=1e-8, atol=1e-11), (name, (u - v).abs().max())


@pytest.mark.parametrize("mit", ["bn_rnn", "bn_lstm", "bn_lstm+tbptt:3"])
def test_training_path_updates_batch_norm_statistics_like_the_twin(mit, small_model):
    """The hand-written training path (NormSeq) and the autograd cell loop update the per-step
    running statistics identically; frozen (diagnostics) mode updates none."""
    model, task = small_model(mit, "adding")
    x, _ = task.sample(6, generator("stats", mit))
    rec = model.rec
    start = {k: v.clone() for k, v in rec.named_buffers()}
    model.train()
    model(x)
    fast = {k: v.clone() for k, v in rec.named_buffers()}
    for k, v in rec.named_buffers():
        v.copy_(start[k])
    model.forward_loop(x)
    for k, v in rec.named_buffers():
        if rec.family == "lstm" or not k.endswith("_c"):  # the RNN has no cell state to normalise
            assert not torch.equal(v, start[k]), f"{k} not updated"
        assert torch.allclose(fast[k], v, rtol=1e-5, atol=1e-6), (k, (fast[k] - v).abs().max())
    for k, v in rec.named_buffers():
        v.copy_(start[k])
    rec.update_stats = False
    model(x)
    for k, v in rec.named_buffers():
        assert torch.equal(v, start[k]), f"{k} changed while frozen"


# -- initializations ------------------------------------------------------------------------------
def _build(mit, n_in=3, n_out=2, hidden=16, seq_len=50, seed=0):
    return build_model(parse_mitigation(mit), n_in, n_out, "last", hidden, seq_len, generator("init-test", mit, seed))


def _sum_bias(rec):
    return rec.b_ih + rec.b_hh if isinstance(rec, FusedRecurrence) else rec.bias


@pytest.mark.parametrize("layout", ["batch_major", "time_major_view"])
def test_input_projection_gradient_matches_linear(layout):
    """_InputProj (the normalized cells' input term, x W^T with the weight gradient computed as
    (x^T g)^T for speed) gives F.linear's values and gradients; gradcheck in float64."""
    from bench.models.cells import _InputProj

    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 7, 2, generator=g, dtype=torch.float64)
    if layout == "time_major_view":
        x = x.transpose(0, 1)  # the layer-norm cells pass a non-contiguous view
    W = torch.randn(12, 2, generator=g, dtype=torch.float64, requires_grad=True)
    xg = x.clone().requires_grad_(True)
    up = torch.randn(*x.shape[:2], 12, generator=g, dtype=torch.float64)
    out = _InputProj.apply(xg, W)
    ref = torch.nn.functional.linear(xg, W)
    assert torch.equal(out, ref)
    gx, gW = torch.autograd.grad((out * up).sum(), (xg, W))
    rx, rW = torch.autograd.grad((ref * up).sum(), (xg, W))
    assert gW.shape == W.shape and gW.is_contiguous()
    assert torch.allclose(gW, rW, rtol=1e-12, atol=1e-12)
    assert torch.allclose(gx, rx, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(_InputProj.apply, (xg, W))


@pytest.mark.parametrize("recipe", [r for r in RECIPES if MITIGATIONS.get(r).init == "lstm_forget1"])
def test_lstm_forget_bias_sum_is_one(recipe):
    rec = _build(recipe).rec
    H = rec.hidden
    b = _sum_bias(rec).detach()
    assert torch.equal(b[H:2 * H], torch.ones(H)), "effective forget bias (b_ih + b_hh) must be 1, not 2"


@pytest.mark.parametrize("recipe", [r for r in RECIPES if MITIGATIONS.get(r).init == "lstm_chrono"])
@pytest.mark.parametrize("seq_len", [3, 20, 500])
def test_chrono_init(recipe, seq_len):
    rec = _build(recipe, hidden=64, seq_len=seq_len).rec
    H = rec.hidden
    b = _sum_bias(rec).detach().double()
    bi, bf = b[:H], b[H:2 * H]
    top = math.log(seq_len - 1)
    assert bf.min() >= 0 and bf.max() <= top + 1e-6
    assert torch.allclose(bi, -bf, atol=1e-7)
    if seq_len > 3:  # b_f = log u, u ~ U[1, T-1): spread over the range, not a constant
        assert bf.max() > 0.5 * top and bf.std() > 0.1 * top


@pytest.mark.parametrize("recipe", [r for r in RECIPES if MITIGATIONS.get(r).init == "identity"])
def test_irnn_init(recipe):
    rec = _build(recipe).rec
    assert torch.equal(rec.w_hh.detach(), torch.eye(rec.hidden))
    assert torch.equal(rec.b_ih.detach(), torch.zeros_like(rec.b_ih))
    assert torch.equal(rec.b_hh.detach(), torch.zeros_like(rec.b_hh))
    w = rec.w_ih.detach()
    assert 0 < w.abs().max() < 0.01  # small input weights, N(0, 0.001)


@pytest.mark.parametrize("recipe", [r for r in RECIPES if MITIGATIONS.get(r).init == "orthogonal"])
def test_orthogonal_init(recipe):
    W = _build(recipe, hidden=32).rec.w_hh.detach().double()
    assert torch.allclose(W @ W.T, torch.eye(32, dtype=torch.float64), atol=1e-5)
    assert not torch.allclose(W, torch.eye(32, dtype=torch.float64))


@pytest.mark.parametrize("recipe", [r for r in RECIPES if MITIGATIONS.get(r).init == "bn_identity"])
def test_bn_identity_init(recipe):
    rec = _build(recipe).rec
    H = rec.hidden
    W = rec.w_hh.detach()
    for b in range(W.shape[0] // H):
        assert torch.equal(W[b * H:(b + 1) * H], torch.eye(H))
    assert torch.allclose(rec.gain_x.detach(), torch.full_like(rec.gain_x, 0.1))
    assert torch.allclose(rec.gain_h.detach(), torch.full_like(rec.gain_h, 0.1))


@pytest.mark.parametrize("recipe", SINGLE)
@pytest.mark.parametrize("rho", [0.5, 1.5, 3.0])
def test_radius_sets_the_spectral_radius(recipe, rho):
    model = _build(f"{recipe}+radius:{rho}", hidden=16)
    W = model.rec.w_hh.detach().double()
    assert torch.linalg.eigvals(W).abs().max().item() == pytest.approx(rho, rel=1e-5)
    assert model.spectral()[0] == pytest.approx(rho, rel=1e-5)


@pytest.mark.parametrize("mit", ALL_MITS)
def test_same_seed_same_parameters(mit):
    a, b, c = _build(mit, seed=0), _build(mit, seed=0), _build(mit, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differ, f"same seed, different initial values: {differ}"
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("mit", ["rnn", "lstm", "ln_lstm"])
def test_build_model_leaves_global_rng_alone(mit):
    state = torch.random.get_rng_state()
    _build(mit)
    assert torch.equal(state, torch.random.get_rng_state())


# -- parsing --------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_parses(recipe):
    m = parse_mitigation(recipe)
    assert m.recipe is MITIGATIONS.get(recipe) and m.modifiers == () and m.name == recipe
    d = m.describe()
    assert d["recipe"] == recipe and all(d[k] is None for k in MODIFIERS.names())


def _example(mod: str):
    return 3 if MODIFIERS.get(mod).kind is int else 0.5


@pytest.mark.parametrize("mod", MODIFIERS.names())
def test_every_modifier_composes_with_a_plain_rnn(mod):
    v = _example(mod)
    m = parse_mitigation(f"rnn+{mod}:{v}")
    assert m.get(mod) == v and type(m.get(mod)) is MODIFIERS.get(mod).kind
    assert m.describe()[mod] == v
    assert m.name == f"rnn+{mod}:{v}"


@pytest.mark.parametrize("written,canonical", [
    ("rnn+tbptt:20+clipnorm:1", "rnn+clipnorm:1+tbptt:20"),
    ("lstm+clipvalue:0.50+clipnorm:1.0", "lstm+clipnorm:1+clipvalue:0.5"),
    ("  irnn+radius:1.5 ", "irnn+radius:1.5"),
    ("rnn+clipnorm:1e-5", "rnn+clipnorm:1e-05"),
    ("gru+tbptt:7", "gru+tbptt:7"),
])
def test_canonical_names(written, canonical):
    m = parse_mitigation(written)
    assert m.name == canonical
    assert parse_mitigation(canonical) == m


@pytest.mark.parametrize("name", ALL_MITS + ["rnn+radius:0.95+tbptt:5+clipvalue:1+clipnorm:2.5"])
def test_canonical_name_round_trips(name):
    m = parse_mitigation(name)
    assert parse_mitigation(m.name) == m and parse_mitigation(m.name).name == m.name


def _raises(name, *fragments):
    with pytest.raises(BenchError) as e:
        parse_mitigation(name)
    msg = str(e.value)
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    return msg


@pytest.mark.parametrize("bad", ["nope", "LSTM", "rnn_", "lstm-clipnorm:1"])
def test_unknown_recipe_lists_valid_recipes(bad):
    _raises(bad, "unknown mitigation", "valid choices", *RECIPES)


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_empty_or_non_string(bad):
    _raises(bad, "non-empty string")


@pytest.mark.parametrize("bad", ["rnn+clip:1", "rnn+", "rnn+Clipnorm:1", "lstm+clipnorm:1+foo:2"])
def test_unknown_modifier_lists_valid_modifiers(bad):
    _raises(bad, "unknown modifier", *MODIFIERS.names())


@pytest.mark.parametrize("mod", MODIFIERS.names())
@pytest.mark.parametrize("form", ["{m}", "{m}:"])
def test_missing_value(mod, form):
    _raises("rnn+" + form.format(m=mod), f"{mod!r} needs a value")


@pytest.mark.parametrize("mod", MODIFIERS.names())
@pytest.mark.parametrize("raw", ["abc", "1x", "--1"])
def test_wrong_type(mod, raw):
    kind = "an integer" if MODIFIERS.get(mod).kind is int else "a number"
    _raises(f"rnn+{mod}:{raw}", f"{mod} needs {kind}", repr(raw))


@pytest.mark.parametrize("raw", ["2.5", "1e3", "05"])
def test_int_modifier_rejects_non_integers(raw):
    ints = [m for m in MODIFIERS.names() if MODIFIERS.get(m).kind is int]
    assert ints
    for mod in ints:
        _raises(f"rnn+{mod}:{raw}", "needs an integer")


@pytest.mark.parametrize("mod", MODIFIERS.names())
@pytest.mark.parametrize("raw", ["0", "-1", "-0.5", "nan", "inf"])
def test_nonpositive_or_nonfinite_value(mod, raw):
    if MODIFIERS.get(mod).kind is int and raw in ("-0.5", "nan", "inf"):
        _raises(f"rnn+{mod}:{raw}", "needs an integer")
    else:
        _raises(f"rnn+{mod}:{raw}", f"{mod} must be")


@pytest.mark.parametrize("mod", MODIFIERS.names())
def test_duplicate_modifier(mod):
    v = _example(mod)
    _raises(f"rnn+{mod}:{v}+{mod}:{v}", f"{mod!r} given twice")


@pytest.mark.parametrize("recipe", GATED)
def test_radius_on_a_gated_recipe(recipe):
    msg = _raises(f"{recipe}+radius:1", "impossible composition", recipe, "gated")
    applies = msg.split("applies to:")[1]
    assert sorted(s.strip() for s in applies.split(",")) == sorted(SINGLE)


@pytest.mark.parametrize("task_name", TASKS.names())
def test_tbptt_must_truncate(task_name, short_length):
    task = make_task(task_name, short_length(task_name))
    T = task.seq_len
    check_for_task(parse_mitigation(f"rnn+tbptt:{T - 1}"), T)  # fine
    check_for_task(parse_mitigation("rnn"), T)
    for k in (T, T + 1, 10 * T):
        with pytest.raises(BenchError) as e:
            check_for_task(parse_mitigation(f"lstm+tbptt:{k}"), T)
        assert f"tbptt:{k}" in str(e.value) and f"k < {T}" in str(e.value)
