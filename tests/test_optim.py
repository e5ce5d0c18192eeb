"""bench.optim against torch.optim: the same parameters, bit for bit, after every step; and a
training run that no longer imports torch._dynamo."""
from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

import bench.optim as bo
from bench.models import MITIGATIONS
from bench.train import make_optimizer

TORCH = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD}
OURS = {"adam": bo.Adam, "rmsprop": bo.RMSprop, "sgd": bo.SGD}
LRS = (1e-3, 0.01, 0.3)


class LSTMNet(nn.Module):
    """nn.LSTM + Linear (weights of several shapes: 4H x n_in, 4H x H, 4H biases, n_out x H)."""

    def __init__(self, n_in, hidden, n_out, unused=False):
        super().__init__()
        self.rnn = nn.LSTM(n_in, hidden, batch_first=True)
        self.out = nn.Linear(hidden, n_out)
        # a parameter that never gets a gradient: both optimizers must skip it
        self.unused = nn.Parameter(torch.randn(5)) if unused else None

    def forward(self, x):
        return self.out(self.rnn(x)[0][:, -1])


def _models():
    torch.manual_seed(0)
    yield "lstm-h16", LSTMNet(3, 16, 2)
    torch.manual_seed(1)
    yield "lstm-h7-unused", LSTMNet(5, 7, 3, unused=True)
    torch.manual_seed(2)
    yield "gru+mlp", nn.Sequential(nn.GRU(4, 9, batch_first=True), _Last(), nn.Linear(9, 33), nn.Tanh(),
                                   nn.Linear(33, 1))


class _Last(nn.Module):
    def forward(self, out):
        return out[0][:, -1]


def _n_in(model):
    return next(m for m in model.modules() if isinstance(m, nn.RNNBase)).input_size


def _train_both(model, name, lr, steps=30, clip=None, grad_scale=1.0):
    """Train two copies, one with torch.optim, one with bench.optim, on the same batches;
    assert torch.equal on every parameter (and the optimizer state) after every step."""
    a, b = model, copy.deepcopy(model)
    oa, ob = TORCH[name](a.parameters(), lr=lr), OURS[name](b.parameters(), lr=lr)
    g = torch.Generator().manual_seed(123)
    n_in = _n_in(a)
    for step in range(1, steps + 1):
        x = torch.randn(8, 6, n_in, generator=g) * grad_scale
        y = torch.randn(8, 1, generator=g)
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad(set_to_none=True)
            loss = ((m(x) - y) ** 2).mean()
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(m.parameters(), clip)
            o.step()
        for (na, pa), pb in zip(a.named_parameters(), b.parameters()):
            assert torch.equal(pa, pb), f"{name} lr={lr}: parameter {na} differs after step {step}"
    for pa, pb in zip(a.parameters(), b.parameters()):
        sa, sb = oa.state.get(pa, {}), ob.state.get(pb, {})
        assert set(sa) == set(sb)
        for k in sa:
            if k == "step":
                assert float(sa[k]) == sb[k] == steps
            else:
                assert torch.equal(sa[k], sb[k]), k
    return a, b


@pytest.mark.parametrize("name", sorted(TORCH))
@pytest.mark.parametrize("lr", LRS)
def test_bit_for_bit_against_torch_optim(name, lr):
    for label, model in _models():
        before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        a, _ = _train_both(model, name, lr)
        moved = [not torch.equal(p0, p) for p0, p in zip(before, a.parameters())]
        assert sum(moved) >= 3, f"{label}: the test did not move the parameters"  # it tested something


@pytest.mark.parametrize("name", sorted(TORCH))
def test_bit_for_bit_with_clipping_and_large_gradients(name):
    torch.manual_seed(5)
    _train_both(LSTMNet(3, 12, 2), name, 0.05, steps=30, clip=0.5, grad_scale=30.0)


@pytest.mark.parametrize("recipe", MITIGATIONS.names())
def test_bit_for_bit_on_every_recipe_model(recipe, small_model):
    """The bench's own models (norm layers, custom cells) through the train loop's optimizer."""
    model, task = small_model(recipe, "adding")
    for name in sorted(TORCH):
        a, b = copy.deepcopy(model), copy.deepcopy(model)
        oa, ob = TORCH[name](a.parameters(), lr=0.01), make_optimizer(name, b.parameters(), 0.01)
        assert isinstance(ob, OURS[name])
        g = torch.Generator().manual_seed(7)
        for step in range(10):
            x, y = task.sample(16, g)
            for m, o in ((a, oa), (b, ob)):
                o.zero_grad(set_to_none=True)
                task.loss(m(x), y).backward()
                o.step()
            for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
                assert torch.equal(pa, pb), f"{recipe} {name}: {n} differs after step {step + 1}"


def test_the_comparison_can_fail():
    """A changed update rule is caught: the assertion in _train_both is not vacuous."""

    class OffByEps(bo.Adam):
        def __init__(self, params, lr):
            super().__init__(params, lr=lr, eps=1.1e-8)

    torch.manual_seed(0)
    model = LSTMNet(3, 16, 2)
    saved = OURS["adam"]
    OURS["adam"] = OffByEps
    try:
        with pytest.raises(AssertionError, match="differs after step"):
            _train_both(model, "adam", 1e-3, steps=5)
    finally:
        OURS["adam"] = saved


@pytest.mark.parametrize("name", ["adam", "rmsprop"])
def test_the_flat_step_is_taken_and_falls_back_like_torch(name):
    """Adam and RMSprop update every parameter at once when all have a gradient (state[p] are views
    of the flat state), stay bit for bit torch.optim when a step lacks one parameter's gradient
    (torch skips it and keeps its step count: from then on the per-parameter path), and read the
    parameters anew at every step (a change made between steps is kept, as in torch.optim)."""
    torch.manual_seed(3)
    a = LSTMNet(3, 6, 2)
    b = copy.deepcopy(a)
    oa, ob = TORCH[name](a.parameters(), lr=0.05), OURS[name](b.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(9)
    flat_steps = []
    for step in range(1, 13):
        x, y = torch.randn(4, 5, 3, generator=g), torch.randn(4, 2, generator=g)
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad(set_to_none=True)
            ((m(x) - y) ** 2).mean().backward()
            if step == 4:  # the head's bias has no gradient this step
                m.out.bias.grad = None
            if step == 6:  # a change between steps (as a rescaling hook would make)
                with torch.no_grad():
                    m.rnn.weight_hh_l0.mul_(0.5)
            o.step()
        flat_steps.append(ob._flat is not None and ob._flat.step == step)
        for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
            assert torch.equal(pa, pb), f"{name}: {n} differs after step {step}"
    assert flat_steps[:3] == [True] * 3 and not any(flat_steps[3:])  # flat until the step without a gradient
    key = bo.Adam.STATE_KEYS[0] if name == "adam" else bo.RMSprop.STATE_KEYS[0]
    w = b.rnn.weight_ih_l0
    assert ob.state[w][key]._base is ob._flat.state[key]  # a view into the flat state
    assert ob.state[b.out.bias]["step"] == 11 and ob.state[w]["step"] == 12
    for pa, pb in zip(a.parameters(), b.parameters()):
        for k, v in oa.state[pa].items():
            assert float(v) == ob.state[pb][k] if k == "step" else torch.equal(v, ob.state[pb][k]), k


def test_sgd_has_no_flat_path():
    p = nn.Parameter(torch.ones(3))
    opt = bo.SGD([p], lr=0.5)
    p.grad = torch.ones(3)
    opt.step()
    assert opt._flat is None and torch.equal(p.detach(), torch.full((3,), 0.5))


def test_hooks_zero_grad_and_fallback():
    p = nn.Parameter(torch.ones(3))
    opt = bo.SGD([p], lr=0.5)
    seen = []
    h = opt.register_step_pre_hook(lambda o, args, kwargs: seen.append(("pre", o is opt)))
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append(("post", o is opt)))
    p.grad = torch.full((3,), 2.0)
    opt.step()
    assert torch.equal(p.detach(), torch.zeros(3)) and seen == [("pre", True), ("post", True)]
    h.remove()
    opt.step()
    assert seen[-1] == ("post", True) and len(seen) == 3
    opt.zero_grad(set_to_none=False)
    assert torch.equal(p.grad, torch.zeros(3))
    opt.zero_grad()
    assert p.grad is None
    assert bo.plain_cpu_params([p]) and not bo.plain_cpu_params([p.detach().to(torch.int64)])
    with pytest.raises(ValueError):
        make_optimizer("adagrad", [p], 0.1)
    with pytest.raises(ValueError, match="empty"):
        bo.Adam([], lr=0.1)


def test_a_training_run_does_not_import_torch_dynamo(tmp_path):
    """`python -m bench run` (every optimizer, clipping by norm and value) leaves torch._dynamo
    unimported: the ~1.3 s it costs every training process is gone."""
    runs = [("rnn", "adam"), ("lstm+clipnorm:1", "rmsprop"), ("gru+clipvalue:0.5", "sgd"), ("ln_lstm", "adam")]
    code = textwrap.dedent(f"""
        import sys
        from bench.cli import main
        for i, (mit, opt) in enumerate({runs!r}):
            rc = main(["run", "--task", "adding", "--length", "5", "--mitigation", mit, "--optimizer", opt,
                       "--hidden", "8", "--batch", "8", "--budget", "3", "--eval-every", "3",
                       "--heldout-size", "32", "--device", "cpu", "--threads", "1",
                       "--out", {str(tmp_path)!r} + f"/r{{i}}.json"])
            assert rc == 0, rc
        print("DYNAMO", "torch._dynamo" in sys.modules)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "DYNAMO False" in p.stdout, p.stdout + p.stderr[-2000:]
    assert len(list(tmp_path.glob("r*.json"))) == len(runs)
