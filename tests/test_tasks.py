"""Tasks: shapes, determinism, held-out disjointness, baselines against the generator's own
statistics, documented definitions, and the errors for bad names and lengths.

Every test is generated over bench.tasks.TASKS, so a new task gets them all (the baseline test
asks for the new task's analytic expectation)."""
from __future__ import annotations

import math

import pytest
import torch

from bench.data import TaskData
from bench.errors import BenchError
from bench.seeding import generator
from bench.tasks import TASKS, make_task

ALL = TASKS.names()
CONTENT_TASKS = [n for n in ALL if not TASKS.get(n).split_based]
SPLIT_TASKS = [n for n in ALL if TASKS.get(n).split_based]


def _rows(x: torch.Tensor) -> set:
    """Exact content of each sequence, as bytes."""
    return {r.contiguous().numpy().tobytes() for r in x}


# -- shapes, dtypes, determinism -----------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("which", ["sample", "heldout"])
def test_shapes_and_dtypes(name, which, short_length):
    for length in sorted({TASKS.get(name).min_length, short_length(name)}):
        task = make_task(name, length)
        n = 7
        x, y = task.sample(n, generator("t", 1)) if which == "sample" else task.heldout(n)
        assert x.shape == (n, task.seq_len, task.n_in) and x.dtype == torch.float32
        assert torch.isfinite(x).all()
        if task.kind == "regression":
            assert y.shape == (n,) and y.dtype == torch.float32
            assert torch.isfinite(y).all()
        else:
            assert y.dtype == torch.int64
            assert y.shape == ((n,) if task.readout == "last" else (n, task.seq_len))
            assert 0 <= int(y.min()) and int(y.max()) < task.n_out
        # the loss and the success rule accept outputs of the readout's shape
        out_shape = (n, task.n_out) if task.readout == "last" else (n, task.seq_len, task.n_out)
        out = torch.zeros(out_shape)
        assert torch.isfinite(task.loss(out, y))
        wrong = task.wrong(out, y)
        assert wrong.shape == (n,) and wrong.dtype == torch.bool


@pytest.mark.parametrize("name", ALL)
def test_sample_is_deterministic_per_seed(name, short_length):
    task = make_task(name, short_length(name))
    x1, y1 = task.sample(32, generator("det", 1))
    x2, y2 = task.sample(32, generator("det", 1))
    x3, y3 = task.sample(32, generator("det", 2))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)


@pytest.mark.parametrize("name", ALL)
def test_generators_never_touch_the_global_rng(name, short_length):
    task = make_task(name, short_length(name))
    state = torch.random.get_rng_state()
    task.sample(16, generator("g"))
    task.heldout(16)
    TaskData(task, seed=0, heldout_size=16).train_batch(8)
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize("name", ALL)
def test_heldout_is_fixed(name, short_length):
    task = make_task(name, short_length(name))
    x1, y1 = task.heldout(50)
    torch.manual_seed(123)  # the global RNG must not matter
    x2, y2 = make_task(name, short_length(name)).heldout(50)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    d0, d1 = TaskData(task, 0, 50), TaskData(task, 1, 50)
    assert torch.equal(d0.heldout_x, d1.heldout_x), "the held-out set must not depend on the run's seed"


@pytest.mark.parametrize("name", ALL)
def test_training_stream_is_seeded(name, short_length):
    task = make_task(name, short_length(name))
    a, b, c = TaskData(task, 0, 20), TaskData(task, 0, 20), TaskData(task, 1, 20)
    xa, _ = a.train_batch(16)
    xb, _ = b.train_batch(16)
    xc, _ = c.train_batch(16)
    assert torch.equal(xa, xb)
    assert not torch.equal(xa, xc)


@pytest.mark.parametrize("name", ALL)
def test_task_name_is_its_registry_name(name, short_length):
    task = make_task(name, short_length(name))
    assert task.name == name and task.describe()["name"] == name


def test_heldout_sets_differ_between_tasks():
    """Tasks with the same input format must not share held-out (or training) seeds."""
    by_format = {}
    for name in CONTENT_TASKS:
        task = make_task(name, max(TASKS.get(name).min_length, 10))
        by_format.setdefault((task.n_in, task.seq_len), []).append(task)
    pairs = [(a, b) for group in by_format.values() for i, a in enumerate(group) for b in group[i + 1:]]
    assert pairs, "expected at least two tasks with the same input format (e.g. adding, multiplication)"
    for a, b in pairs:
        assert not torch.equal(a.heldout(20)[0], b.heldout(20)[0]), (a.name, b.name)


# -- held-out disjoint from training ---------------------------------------------------------------
@pytest.mark.parametrize("name", CONTENT_TASKS)
def test_training_batches_never_contain_heldout_sequences(name):
    # the shortest length has the fewest distinct sequences: the most chances to clash
    task = make_task(name, TASKS.get(name).min_length)
    data = TaskData(task, seed=0, heldout_size=2000)
    keys, held = data.heldout_keys, _rows(data.heldout_x)
    for _ in range(30):
        x, _ = data.train_batch(128)
        assert not set(task.content_keys(x).tolist()) & keys
        assert not _rows(x) & held


def test_disjointness_is_exercised_on_temporal_order():
    """At L=10 temporal order has ~2.6e5 distinct sequences, so raw draws do hit the held-out
    set (expected ~19 in 3,840 draws against 1,300): the check above is not vacuous."""
    task = make_task("temporal_order", 10)
    held = _rows(task.heldout(1300)[0])
    raw = task.sample(3840, generator("raw-draws"))[0]
    assert _rows(raw) & held


@pytest.mark.parametrize("name", CONTENT_TASKS)
def test_content_keys_equal_the_float64_formula(name, short_length):
    """The keys are computed in the batch's own dtype; they must equal round(x * 2^16) taken in
    float64 (the definition), so that the training stream stays what it was."""
    task = make_task(name, short_length(name))
    x = task.sample(50, generator("keys-check"))[0]
    q = torch.round(x.reshape(50, -1).double() * 65536).long()
    got = task.content_keys(x)  # draws the key weights on first use
    ref = (q * task._key_weights).sum(1)
    assert got.dtype == torch.int64 and torch.equal(got, ref)
    assert torch.equal(task.content_keys(x.double()), ref)


def test_heldout_lookup_equals_isin():
    """TaskData's binary search over the sorted held-out keys answers as torch.isin does: keys
    below the smallest, above the largest, between two, equal to the first and the last, repeated."""
    task = make_task("temporal_order", 10)
    data = TaskData(task, seed=0, heldout_size=300)
    held = data._key_tensor
    assert torch.equal(held, torch.sort(held).values)
    g = generator("lookup-check")
    probe = torch.cat([held[:1], held[-1:], held[5:40:3], held[7:8].repeat(3),
                       torch.randint(-(2**62), 2**62, (200,), generator=g), held[:1] - 1, held[-1:] + 1])
    want = torch.isin(probe, held)
    assert want.any() and not want.all()
    assert torch.equal(data._in_heldout(probe), want)


@pytest.mark.parametrize("name", CONTENT_TASKS)
def test_train_batch_redraws_heldout_duplicates(name, monkeypatch, short_length):
    task = make_task(name, short_length(name))
    data = TaskData(task, seed=0, heldout_size=64)
    real, calls = task.sample, []

    def sample(n, gen):  # first draw: half the batch are copies of held-out sequences
        x, y = real(n, gen)
        if not calls:
            x[: n // 2], y[: n // 2] = data.heldout_x[: n // 2], data.heldout_y[: n // 2]
        calls.append(n)
        return x, y

    monkeypatch.setattr(task, "sample", sample)
    x, _ = data.train_batch(16)
    assert len(calls) >= 2 and calls[1] == 8
    assert not _rows(x) & _rows(data.heldout_x)


@pytest.mark.parametrize("name", CONTENT_TASKS)
def test_train_batch_gives_up_clearly(name, monkeypatch, short_length):
    task = make_task(name, short_length(name))
    data = TaskData(task, seed=0, heldout_size=8)
    monkeypatch.setattr(task, "sample", lambda n, gen: (data.heldout_x[:n].clone(), data.heldout_y[:n].clone()))
    with pytest.raises(BenchError, match="disjoint from the held-out set"):
        data.train_batch(4)


def _digit_index():
    from sklearn.datasets import load_digits

    d = load_digits()
    return {row.tobytes(): i for i, row in enumerate((d.data / 16.0).astype("float32"))}, len(d.data)


@pytest.mark.parametrize("name", SPLIT_TASKS)
def test_digits_split_is_a_disjoint_partition(name):
    from bench.tasks.digits import _load

    index, n_all = _digit_index()
    assert len(index) == n_all, "every image is distinct, so content identifies its index"
    xt, _, xh, _ = _load()
    train_idx = {index[r.numpy().tobytes()] for r in xt}
    held_idx = {index[r.numpy().tobytes()] for r in xh}
    assert len(train_idx) == xt.shape[0] and len(held_idx) == xh.shape[0]
    assert not train_idx & held_idx
    assert train_idx | held_idx == set(range(n_all))
    task = make_task(name, 64)
    x, _ = task.sample(500, generator("digits-train"))
    assert _rows(x) <= _rows(task._seq(xt))
    assert not _rows(x) & _rows(task.heldout(10_000)[0])
    assert task.heldout(10_000)[0].shape[0] == xh.shape[0]


def _column_permutation(a: torch.Tensor, b: torch.Tensor):
    """perm with b[:, j] == a[:, perm[j]] for every j (identical columns are interchangeable)."""
    perm, used = [], set()
    for j in range(b.shape[1]):
        match = [i for i in range(a.shape[1]) if i not in used and torch.equal(a[:, i], b[:, j])]
        assert match, f"column {j} of the permuted images is no column of the plain ones"
        perm.append(match[0])
        used.add(match[0])
    return perm


def test_pdigits_is_digits_with_one_fixed_pixel_permutation():
    d, p = make_task("digits", 64), make_task("pdigits", 64)
    dh, ph = d.heldout(600)[0].squeeze(-1), p.heldout(600)[0].squeeze(-1)
    perm = _column_permutation(dh, ph)
    assert sorted(perm) == list(range(64))
    assert not torch.equal(dh, ph)
    xd, yd = d.sample(64, generator("pd", 3))
    xp, yp = p.sample(64, generator("pd", 3))
    assert torch.equal(yd, yp)
    assert torch.equal(xd.squeeze(-1)[:, perm], xp.squeeze(-1))


# -- the generators do what their docstrings say ---------------------------------------------------
def _check_two_marker(task, x, y, combine):
    T = task.length
    values, markers = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert set(markers.unique().tolist()) <= {0.0, 1.0}
    assert (markers[:, : T // 2].sum(1) == 1).all() and (markers[:, T // 2:].sum(1) == 1).all()
    marked = values[markers.bool()].reshape(-1, 2)
    assert torch.allclose(y, combine(marked[:, 0], marked[:, 1]))


def _check_copy(task, x, y):
    T, sym = task.length, x.argmax(-1)
    assert torch.equal(x.sum(-1), torch.ones_like(x.sum(-1)))  # one-hot
    assert (sym[:, :10] < 8).all()
    assert (sym[:, 10:] >= 8).all() and (sym[:, 10:] == 9).sum(1).eq(1).all()
    assert (sym[:, T + 9] == 9).all()
    assert torch.equal(y[:, -10:], sym[:, :10]) and (y[:, :-10] == 8).all()


def _check_temporal_order(task, x, y):
    L, sym = task.length, x.argmax(-1)
    rel = sym < 2  # A or B
    assert (rel.sum(1) == len(task.windows)).all()
    label = torch.zeros_like(y)
    for lo, hi in task.windows:
        win = torch.zeros(L, dtype=torch.bool)
        win[[t for t in range(L) if lo * L <= t < hi * L]] = True
        assert (rel[:, win].sum(1) == 1).all(), f"one relevant symbol in window [{lo}L, {hi}L)"
        label = label * 2 + sym[:, win].min(1).values  # the A(0)/B(1) inside the window
    assert torch.equal(label, y)


DEFINITIONS = {
    "adding": lambda t, x, y: _check_two_marker(t, x, y, torch.add),
    "multiplication": lambda t, x, y: _check_two_marker(t, x, y, torch.mul),
    "copy": _check_copy,
    "temporal_order": _check_temporal_order,
    "temporal_order3": _check_temporal_order,
}


@pytest.mark.parametrize("name", [n for n in ALL if n in DEFINITIONS])
@pytest.mark.parametrize("length", ["min", 10, 37])
def test_generator_matches_its_definition(name, length):
    task = make_task(name, TASKS.get(name).min_length if length == "min" else length)
    x, y = task.sample(200, generator("definition"))
    DEFINITIONS[name](task, x, y)


# -- baselines against the generator's statistics ----------------------------------------------------
def _triangular_cdf(s):  # U1 + U2, U ~ U[0,1]
    s = min(max(s, 0.0), 2.0)
    return s * s / 2 if s <= 1 else 1 - (2 - s) ** 2 / 2


def _product_cdf(z):  # U1 * U2: P(Z <= z) = z - z ln z
    z = min(max(z, 0.0), 1.0)
    return z - z * math.log(z) if z > 0 else 0.0


# regression: (variance, cdf) of the target; classification: K equiprobable classes at m of the P
# read positions (P = 1 for readout "last"), `slack` for a data set's not quite uniform classes.
BASELINES = {
    "adding": dict(var=1 / 6, cdf=_triangular_cdf),  # Var(U1+U2) = 2/12
    "multiplication": dict(var=7 / 144, cdf=_product_cdf),  # E[Z^2] - E[Z]^2 = 1/9 - 1/16
    "copy": dict(K=8, m=10, P=lambda t: t.seq_len),  # 10 ln 8 / (T+20)
    "temporal_order": dict(K=4, m=1),  # ln 4, accuracy 1/4
    "temporal_order3": dict(K=8, m=1),  # ln 8, accuracy 1/8
    "digits": dict(K=10, m=1, slack=1e-3),  # ~180 images per class
    "pdigits": dict(K=10, m=1, slack=1e-3),
}


@pytest.mark.parametrize("name", ALL)
def test_baseline_matches_generator_statistics(name, short_length):
    if name not in BASELINES:
        pytest.fail(f"task {name!r}: add its analytic memoryless baseline to BASELINES")
    exp = BASELINES[name]
    task = make_task(name, short_length(name))
    _, y = task.heldout(20_000)  # digits: its 597 held-out images
    n = y.shape[0]
    base = task.baseline(y)
    if task.kind == "regression":
        # baseline loss = sample variance; 5 standard errors, SE^2 = (mu4 - var^2) / n
        d = y.double() - y.double().mean()
        se = math.sqrt(((d ** 4).mean() - (d ** 2).mean() ** 2).item() / n)
        assert abs(base["loss"] - exp["var"]) <= 5 * se + exp["var"] / n
        # wrong: P(|Y - c| > tol) at the fitted constant c, binomial 5 SE
        c, tol = float(y.double().mean()), 0.04 ** 0.5
        p = exp["cdf"](c - tol) + 1 - exp["cdf"](c + tol)
        assert abs(base["wrong"] - p) <= 5 * math.sqrt(p * (1 - p) / n)
    else:
        K, m = exp["K"], exp["m"]
        P = exp["P"](task) if "P" in exp else 1
        # plug-in entropy of K equiprobable classes is ln K - chi2_{K-1}/(2n) per position: allow
        # the chi-square mean + 5 sd summed over the m read positions, averaged over P
        tol = (m * (K - 1) + 5 * math.sqrt(2 * m * (K - 1))) / (2 * n * P) + exp.get("slack", 0)
        assert abs(base["loss"] - m * math.log(K) / P) <= tol
        acc = 1 - base["wrong"]
        hi = 1 / K + 5 * math.sqrt((1 / K) * (1 - 1 / K) / n) + exp.get("slack", 0)
        assert acc <= hi  # the mode of one position is right ~1/K of the time; all m: ~(1/K)^m
        if m == 1:
            assert acc >= 1 / K - 1e-12  # the mode's frequency is at least the mean's


@pytest.mark.parametrize("name", ALL)
def test_taskdata_baseline_is_the_heldout_baseline(name, short_length):
    task = make_task(name, short_length(name))
    data = TaskData(task, seed=3, heldout_size=300)
    assert data.baseline == task.baseline(task.heldout(300)[1])


# -- errors ----------------------------------------------------------------------------------------
def _bad_lengths(cls):
    bad = [0, -1, -100, cls.min_length - 1, cls.max_length + 1, 2.5, float(cls.min_length), "10", None, True]
    return [b for b in bad if not (isinstance(b, int) and not isinstance(b, bool) and cls.min_length <= b <= cls.max_length)]


@pytest.mark.parametrize("name", ALL)
def test_bad_lengths_name_the_valid_range(name):
    cls = TASKS.get(name)
    for length in _bad_lengths(cls):
        with pytest.raises(BenchError) as e:
            make_task(name, length)
        msg = str(e.value)
        assert f"{cls.min_length}..{cls.max_length}" in msg, msg
        assert name in msg
    # the bounds themselves are valid
    assert make_task(name, cls.min_length).length == cls.min_length
    assert make_task(name, cls.max_length).length == cls.max_length


@pytest.mark.parametrize("name", SPLIT_TASKS)
@pytest.mark.parametrize("length", [63, 65, 784])
def test_digits_tasks_take_only_64(name, length):
    with pytest.raises(BenchError, match=r"64\.\.64"):
        make_task(name, length)


@pytest.mark.parametrize("bad", ["nope", "", "Adding", "adding "])
def test_unknown_task_lists_valid_names(bad):
    with pytest.raises(BenchError) as e:
        make_task(bad, 10)
    msg = str(e.value)
    assert repr(bad) in msg and "valid choices" in msg
    for name in ALL:
        assert name in msg
