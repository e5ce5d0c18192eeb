"""Library code for the performance benchmarks in perf/ (see perf/README.md).

Nothing here is used by training (the allocator setting is bench.runtime's); it builds *steps* to time:

- `EngineStep`: one training step of a mitigation exactly as `bench.train.train`'s loop does it
  (training batch with the held-out disjointness check, forward, loss, backward, global gradient
  norm and its host sync, clipping, optimizer step, per-step bookkeeping), on the model, data
  stream and optimizer the engine builds. `mirror_check` verifies against `train()` that it still
  computes the same losses and gradient norms.
- `BareStep`: a hand-written training loop step around a plain nn.RNN / nn.LSTM / nn.GRU (or a
  plain nn.LSTMCell / nn.RNNCell loop) + nn.Linear head, same task generator, same optimizer: the
  independent reference the ratios are taken against. Matched to an EngineStep (`like`), it runs
  the engine's own recurrence (on the CPU the native kernel for the plain RNN and the GRU), so that
  target 1's ratio is the harness's cost alone.
- `harness_round`: one timed `train()` call split into its parts (setup, training loop, the
  diagnostics snapshots inside and outside the loop, evaluation).
- `ratios` / `targets`: turn a pytest-benchmark JSON into the tracked ratios and the table of the
  issue's absolute targets (used by perf/check.py).

Every step runs on `DEVICE` (cpu by default; `configure_device`, from BENCH_PERF_DEVICE in
perf/conftest.py). On CUDA a timed step ends with a device synchronisation, so that the clock
(wall time, `--benchmark-timer=time.perf_counter`) sees the work done, not just launched; inside
it EngineStep keeps train()'s CUDA loop (loss and gradient norm stay on the device, no host sync).
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from contextlib import contextmanager
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import runtime
from .runtime import configure_malloc  # noqa: F401  (perf/conftest.py calls it from here)

TASK = "adding"
BATCH = 64
SIZES_FULL = [(64, 100), (128, 100), (64, 1000), (128, 1000)]

# Mitigations whose recurrence PyTorch's fused modules express (target 1): one nn.LSTM call, and one
# nn.RNN / nn.GRU call off the CPU; on the CPU the plain RNN and the GRU run the suite's native kernel.
FUSED = ["rnn", "rnn_orth", "irnn", "lstm", "lstm_chrono", "gru",
         "rnn+clipnorm:1", "irnn+clipnorm:1", "lstm+clipnorm:1", "lstm+clipvalue:1", "gru+clipnorm:1",
         "rnn+radius:0.95"]
# Mitigations with a Python cell loop (bn_*, ln_*) or a chunked recurrence (tbptt) (target 2).
CUSTOM = ["bn_rnn", "bn_lstm", "ln_rnn", "ln_lstm", "rnn+tbptt:20", "lstm+tbptt:20", "bn_lstm+clipnorm:1"]
ALL = FUSED + CUSTOM
# Bare loops timed as steps of their own: plain nn.LSTMCell / nn.RNNCell loops (target 2's floor),
# and nn.RNN (tanh) / nn.GRU themselves, which the suite's native kernel replaces on the CPU
# (target 1 against PyTorch's module).
CELL_LOOPS = ["lstmcell", "rnncell", "nn_rnn", "nn_gru"]
NN_KIND = {"nn_rnn": "rnn_tanh", "nn_gru": "gru"}  # BareStep kind of the nn_* loops
NN_OF_FAMILY = {v: k for k, v in NN_KIND.items()}

# Targets of the issue (absolute; reported, not the regression check).
T1_MAX = 1.05   # engine step / bare loop step, fused mitigations
T2_MAX = 1.5    # custom-cell step / fused nn.LSTM step
T3_MAX = 11.0   # step(T=1000) / step(T=100)
T4_MAX = 0.10   # diagnostics share of a default run's wall time
# What each row name of `targets` measures (T5's names end in " S=<S>")
TARGET_WHAT = {
    "T1 loop": "train()'s loop step / a bare hand-written loop's step around the same module (fused-expressible mitigations)",
    "T1 run@1000": "a default run projected (setup, 5 diagnostics snapshots, 1000 steps) / 1000 bare-loop steps",
    "T1 vs nn.*": "the suite's step / a bare loop around PyTorch's nn.RNN / nn.GRU (the suite runs its own kernel there)",
    "T2 vs LSTM": "custom-cell step (batch / layer norm, truncated BPTT) / the fused nn.LSTM step",
    "T2 vs cell loop": "custom-cell step / a plain nn.LSTMCell or nn.RNNCell loop's step",
    "T3 T=1000/T=100": "step at T=1000 / step at T=100 (linear in length: 10)",
    "T3 in train()": "train()'s loop step at T=1000 / at T=100",
    "T4 diag share": "gradient diagnostics' share of a default run's time",
    "T5 bound": "S seeds on stacked weights (not implemented), best case: one model on the S x batch / S separate steps",
    "T5 ceiling": "S seeds on stacked per-model weights (not implemented), best case / S separate steps",
    "T5 lockstep": "S seeds' steps in lockstep on per-model weights (as train_group runs them) / S separate steps",
    "T5 seed group": "S seeds' whole short runs by bench.train.train_group / by S train() calls",
}
DEFAULT_BUDGET = 1000  # RunSpec defaults, used to project whole-run figures
DEFAULT_EVAL_EVERY = 50


DEVICE = "cpu"  # where the steps run: configure_device (perf/conftest.py, BENCH_PERF_DEVICE)


def configure_device(name: Optional[str]) -> str:
    """Set DEVICE from `name` ("cpu", "cuda" or "cuda:N"; empty/None = cpu). A name that is not
    a device, or CUDA that is not here, raises BenchError naming the valid choices
    (bench.devices.resolve_device, the check training uses too)."""
    from .devices import resolve_device

    global DEVICE
    name = (name or "cpu").strip()
    resolve_device(name, label="BENCH_PERF_DEVICE=", allow_auto=False)
    DEVICE = name
    return DEVICE


def device_info(device: Optional[str] = None) -> Dict[str, str]:
    """What a benchmark records about where it ran: {"device": ..., "device_name": ...}."""
    dev = torch.device(device or DEVICE)
    if dev.type == "cuda":
        return {"device": str(dev), "device_name": torch.cuda.get_device_name(dev)}
    return {"device": "cpu", "device_name": "cpu"}


def quick_mode() -> bool:
    """Whether the suite runs its quick subset (BENCH_PERF_QUICK=1, .ci/perf.sh) rather than full mode
    (0, the default); another value is a BenchError naming the choices."""
    return runtime.env_choice("BENCH_PERF_QUICK", ("0", "1"), "0") == "1"


def run_info(device: Optional[str] = None) -> Dict:
    """What every benchmark records about how the suite ran: the allocator mode, quick or full
    mode (perf/check.py re-runs a regressed node in the mode it was measured in) and the device."""
    return {"malloc": runtime.MALLOC_MODE, "quick": quick_mode(), **device_info(device)}


def recorded_quick(data: dict) -> Optional[bool]:
    """Whether a pytest-benchmark JSON of the suite ran in quick mode, as its benchmarks recorded it
    (run_info), or None for results from before that was recorded."""
    for b in data.get("benchmarks", []):
        e = b.get("extra_info") or {}
        if "quick" in e:
            return bool(e["quick"])
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def __getattr__(name):
    # the allocator mode lives in bench.runtime (training processes set it too)
    if name == "MALLOC_MODE":
        return runtime.MALLOC_MODE
    raise AttributeError(name)


def family_of(mitigation: str) -> str:
    from .models import parse_mitigation

    return parse_mitigation(mitigation).recipe.family


def is_fused(mitigation: str) -> bool:
    from .models import parse_mitigation

    m = parse_mitigation(mitigation)
    return m.recipe.norm is None and m.get("tbptt") is None


def node_id(hidden: int, T: int, name: str) -> str:
    """The pytest parameter id of one size/mitigation (':' is written '=')."""
    return f"h{hidden}-T{T}-{name.replace(':', '=')}"


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------
class EngineStep:
    """One training step of `mitigation` as `bench.train.train` runs it (see module doc)."""

    def __init__(self, mitigation: str, T: int, hidden: int, batch: int = BATCH, seed: int = 0,
                 task: str = TASK, heldout_size: int = 1000, device: Optional[str] = None,
                 defer_host_checks: Optional[bool] = None):
        """defer_host_checks: as train()'s (default: on CUDA only): keep each step's loss and
        gradient norm on the device (`losses` / `gnorms` then hold tensors) instead of reading
        them on the host every step."""
        from .data import TaskData
        from .models import build_model, parse_mitigation
        from .models.mitigations import check_for_task
        from .seeding import generator
        from .tasks import make_task
        from .train import make_optimizer

        self.task = make_task(task, T)
        self.mit = parse_mitigation(mitigation)
        check_for_task(self.mit, self.task.seq_len)
        self.device = torch.device(device or DEVICE)
        self.defer = self.device.type == "cuda" if defer_host_checks is None else defer_host_checks
        self.data = TaskData(self.task, seed, heldout_size, self.device)
        g = generator("init", self.task.name, self.task.length, self.mit.recipe.name, hidden, seed)
        self.model = build_model(self.mit, self.task.n_in, self.task.n_out, self.task.readout, hidden,
                                 self.task.seq_len, g, self.device)
        self.model.train()
        r = self.mit.recipe
        self.opt = make_optimizer(r.optimizer, self.model.parameters(), r.lr)
        self.params = list(self.model.parameters())
        self.clipnorm, self.clipvalue = self.mit.get("clipnorm"), self.mit.get("clipvalue")
        self.batch = batch
        self.losses: List[float] = []
        self.gnorms: List[float] = []
        self._marks: List[List[float]] = []  # train()'s per-step clock, mirrored for its cost (not read)

    def __call__(self) -> float:
        return self.update(*self.forward_backward(*self.draw()))

    # the step's three phases, for target 5's lockstep measurement (stack_bound_steps)
    def draw(self):
        """The step's batch."""
        return self.data.train_batch(self.batch)

    def forward_backward(self, x, y):
        """Forward, loss and backward on the batch (x, y) -> (loss, the step's clock marks)."""
        m = [time.perf_counter()]
        self._marks.append(m)
        out = self.model(x)
        loss = self.task.loss(out, y)
        m.append(time.perf_counter())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        m.append(time.perf_counter())
        return loss, m

    def update(self, loss, m) -> float:
        """Gradient norm, host check, clipping and the optimizer's step, after forward_backward."""
        params = self.params
        gnorm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        flag = None  # as train(): does clipping by value change anything this step (device bool)
        if self.clipvalue is not None:
            flag = torch.stack([(p.grad.abs() > self.clipvalue).any() for p in params if p.grad is not None]).any()
        if self.defer:  # train()'s CUDA loop: values and the clip flag stay on the device
            lval, gval = loss.detach(), gnorm
        else:  # train()'s host check of every step
            lval, gval = float(loss.detach()), float(gnorm)
            if not (math.isfinite(lval) and math.isfinite(gval)):  # train() would stop the run here
                self.losses.append(lval)
                self.gnorms.append(gval)
                return lval
            if flag is not None:
                bool(flag)
        if self.clipnorm is not None:
            torch.nn.utils.clip_grads_with_norm_(params, self.clipnorm, gnorm)
        if self.clipvalue is not None:
            torch.nn.utils.clip_grad_value_(params, self.clipvalue)
        self.opt.step()
        _sync(self.device)  # on CUDA: the step's work done before the clock stops
        m.append(time.perf_counter())
        self.losses.append(lval)
        self.gnorms.append(gval)
        return 0.0 if self.defer else lval


class BareStep:
    """A hand-written training step: plain PyTorch module + nn.Linear head on the last hidden
    state, MSE, the task's own generator, zero_grad/backward/[clip]/step. Nothing else.

    kind: rnn_tanh | rnn_relu | lstm | gru (fused nn.RNN/LSTM/GRU; nn_rnn / nn_gru name the first
    and the last) or lstmcell | rnncell (a Python loop over nn.LSTMCell / nn.RNNCell, feeding
    x[:, t] each step).
    `like`: an EngineStep whose recurrence (copied: its weights and its implementation, the native
    kernel where the engine runs it) the loop runs, so that both loops run the same numbers the
    same way; otherwise PyTorch's default init under torch.manual_seed(seed)."""

    def __init__(self, kind: str, T: int, hidden: int, batch: int = BATCH, seed: int = 0,
                 optimizer: str = "adam", lr: float = 1e-3, clipnorm: Optional[float] = None,
                 clipvalue: Optional[float] = None, task: str = TASK, like: Optional[EngineStep] = None,
                 device: Optional[str] = None):
        from .seeding import generator
        from .tasks import make_task

        self.task = make_task(task, T)
        assert self.task.readout == "last" and self.task.kind == "regression"
        n_in = self.task.n_in
        kind = NN_KIND.get(kind, kind)
        self.kind = kind
        self.rec = None  # the engine's recurrence (matched loops)
        torch.manual_seed(seed)
        if like is not None:
            self.rec = copy.deepcopy(like.model.rec)
            self.rnn = self.rec.rnn
            self.head = copy.deepcopy(like.model.head)
        else:
            if kind == "lstm":
                self.rnn = nn.LSTM(n_in, hidden, batch_first=True)
            elif kind == "gru":
                self.rnn = nn.GRU(n_in, hidden, batch_first=True)
            elif kind in ("rnn_tanh", "rnn_relu"):
                self.rnn = nn.RNN(n_in, hidden, nonlinearity=kind[4:], batch_first=True)
            elif kind == "lstmcell":
                self.rnn = nn.LSTMCell(n_in, hidden)
            elif kind == "rnncell":
                self.rnn = nn.RNNCell(n_in, hidden)
            else:
                raise ValueError(kind)
            self.head = nn.Linear(hidden, 1)
        self.hidden = hidden
        self.device = torch.device(device or (like.device if like is not None else DEVICE))
        (self.rec if self.rec is not None else self.rnn).to(self.device)
        self.head.to(self.device)
        self.params = list(self.rnn.parameters()) + list(self.head.parameters())
        opt = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD}[optimizer]
        self.opt = opt(self.params, lr=lr)  # torch.optim's own, as a hand-written loop would
        self.sync_each = True  # __call__ waits for the device (bare_round: only at the end)
        self.clipnorm, self.clipvalue = clipnorm, clipvalue
        self.gen = generator("train", self.task.name, self.task.length, seed)
        self.batch = batch

    def _last_hidden(self, x):
        if self.kind == "lstmcell":
            h = c = x.new_zeros(x.shape[0], self.hidden)
            for t in range(x.shape[1]):
                h, c = self.rnn(x[:, t], (h, c))
            return h
        if self.kind == "rnncell":
            h = x.new_zeros(x.shape[0], self.hidden)
            for t in range(x.shape[1]):
                h = self.rnn(x[:, t], h)
            return h
        if self.rec is not None:
            return self.rec(x)[:, -1]
        return self.rnn(x)[0][:, -1]

    def __call__(self) -> float:
        x, y = self.task.sample(self.batch, self.gen)
        if self.device.type == "cuda":  # as the engine's TaskData: page-locked, asynchronous copy
            x, y = x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        loss = F.mse_loss(self.head(self._last_hidden(x)).squeeze(-1), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clipnorm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clipnorm)
        if self.clipvalue is not None:
            torch.nn.utils.clip_grad_value_(self.params, self.clipvalue)
        self.opt.step()
        if self.sync_each:
            _sync(self.device)
        return 0.0


STACK_S = 5  # target 5's S: seeds per configuration
STACK_CASES = ["bn_lstm", "ln_lstm", "bn_rnn", "ln_rnn", "lstm", "gru", "rnn"]  # where stacking could pay


def stack_bound_steps(mitigation: str, T: int, hidden: int, S: int = STACK_S, batch: int = BATCH):
    """Target 5's bounds (S models on stacked weights are *not* implemented; the seeds of one
    configuration train together in lockstep instead, bench.train.train_group): (stacked, separate,
    per_model, lockstep).

    - `stacked()`: one step of `mitigation` at batch S x `batch`; `separate()`: one step at batch
      `batch` of each of S runs (seeds 0..S-1), one after the other. S models on stacked weights
      compute no less than one model on S x the batch (per-model weights turn each matrix product
      into a batched one), so stacked / separate is the most that training S seeds together could
      save on this machine (the *bound*); at or near 1 it cannot pay.
    - `per_model()`: the part of those S steps that stays per model however the seeds are
      stacked -- each run's batch, drawn from its own seed's stream (S generators cannot be
      drawn from in one call), and its model's forward and backward (its recurrence, kernel and
      input projection included, and its head) -- so that a step's remainder (loss, gradient
      norm, optimizer, bookkeeping) = separate - per_model, and S seeds stacked on per-model
      weights take at least per_model + remainder / S (the *ceiling*: every shared part assumed
      free after the first model).
    - `lockstep()`: the S runs' steps as a seed group in one process would run them, on per-model
      weights: the S batches drawn, then each model's forward and backward, then each run's
      gradient norm, host check and update -- the same operations as `separate()` (each run's
      results unchanged, bit for bit), with each phase's small operations run S times back to back
      rather than once after a model's whole backward (when the code and data they need are no
      longer in the CPU's caches). lockstep / separate is what such a trainer would save."""
    stacked = EngineStep(mitigation, T, hidden, batch=S * batch)
    runs = [EngineStep(mitigation, T, hidden, batch=batch, seed=s) for s in range(S)]

    def separate():
        for r in runs:
            r()

    def per_model():
        for r in runs:
            r.model(r.data.train_batch(batch)[0]).sum().backward()
            for p in r.params:
                p.grad = None
        _sync(runs[0].device)

    def lockstep():
        batches = [r.draw() for r in runs]
        done = [r.forward_backward(x, y) for r, (x, y) in zip(runs, batches)]
        del batches
        for r, (loss, m) in zip(runs, done):
            r.update(loss, m)

    return stacked, separate, per_model, lockstep


def reference_step(T: int, hidden: int, batch: int = BATCH, device: Optional[str] = None) -> BareStep:
    """The same-run reference of every ratio: a bare fused nn.LSTM step (default init, Adam 1e-3)."""
    return BareStep("lstm", T, hidden, batch, device=device)


def matched_bare_step(eng: EngineStep) -> BareStep:
    """The bare loop that target 1 compares `eng` with: the same nn module (weights copied),
    data stream, optimizer, learning rate and clipping, without the harness."""
    r = eng.mit.recipe
    return BareStep(r.family, eng.task.length, eng.model.rec.hidden, eng.batch, optimizer=r.optimizer,
                    lr=r.lr, clipnorm=eng.clipnorm, clipvalue=eng.clipvalue, like=eng)


# ---------------------------------------------------------------------------------------------
# train() split into its parts
# ---------------------------------------------------------------------------------------------
class _Clock:
    """Stand-in for the `time` module inside bench.train whose perf_counter is `timer`."""

    def __init__(self, timer):
        self.perf_counter = timer

    def __getattr__(self, name):
        return getattr(time, name)


@contextmanager
def engine_clock(timer: Callable[[], float] = time.perf_counter):
    """Make train()'s own timings (record `timing`: train_s, eval_s, diagnostics_s, step_ms) use
    `timer`, e.g. time.process_time (CPU time, robust on shared cores); a no-op for perf_counter."""
    from . import train as tr

    if timer is time.perf_counter:
        yield
        return
    old = tr.time
    tr.time = _Clock(timer)
    try:
        yield
    finally:
        tr.time = old


@contextmanager
def timed_snapshots(calls: list, timer: Callable[[], float] = time.perf_counter):
    """Record (step, seconds) of every diagnostics snapshot train() takes (wraps
    bench.diagnostics.snapshot(model, task, x, y, step), which train() calls through the module)."""
    from . import diagnostics

    orig = diagnostics.snapshot

    def wrapper(*a, **k):
        step = k["step"] if "step" in k else (a[4] if len(a) > 4 else None)
        t0 = timer()
        try:
            return orig(*a, **k)
        finally:
            calls.append((step, timer() - t0))

    diagnostics.snapshot = wrapper
    try:
        yield
    finally:
        diagnostics.snapshot = orig


def harness_spec(mitigation: str, T: int, hidden: int, steps: int, batch: int = BATCH, **kw):
    from .spec import RunSpec

    base = dict(task=TASK, length=T, mitigation=mitigation, hidden=hidden, batch=batch, budget=steps,
                eval_every=steps + 1, device=DEVICE, threads=1)  # one evaluation (at the last step)
    base.update(kw)
    return RunSpec(**base)


def harness_round(spec, timer: Callable[[], float] = time.perf_counter) -> Dict[str, float]:
    """One train(spec) call, timed from outside and split with the record's own timings (all in
    `timer`'s clock):

    wall       the whole call: setup, 5 snapshots, training loop, final evaluation, record
    loop_step  (train_s - snapshots taken inside the loop - eval_s) / steps: the per-step cost of
               train()'s training loop: batch drawing with the held-out disjointness check,
               forward, loss, backward, gradient norm + host sync, clipping, optimizer step,
               per-step timing and logging
    setup      wall - train_s - the snapshots outside the loop (task, held-out set, model,
               optimizer, record assembly, provenance)
    diag       all snapshots (record timing.diagnostics_s); snap_each = their median
    eval       record timing.eval_s (one evaluation of the held-out set)
    """
    from .train import train

    calls: List[tuple] = []
    t0 = timer()
    with engine_clock(timer), timed_snapshots(calls, timer):
        rec = train(spec)
    wall = timer() - t0
    if rec["outcome"] == "diverged" or rec["steps"] != spec.budget:
        raise RuntimeError(f"harness run of {spec.mitigation} stopped at step {rec['steps']} ({rec['outcome']})")
    tm = rec["timing"]
    if len(calls) < 2:
        raise RuntimeError("train() no longer calls bench.diagnostics.snapshot: update bench/perf.py")
    steps = rec["steps"]
    # step 0 is taken before the loop, the end (step == steps) after it, the others inside it
    inside = sum(s for st, s in calls if st not in (0, steps))
    outside = sum(s for st, s in calls if st in (0, steps))
    return {"wall": wall, "loop_step": (tm["train_s"] - inside - tm["eval_s"]) / steps,
            "setup": wall - tm["train_s"] - outside, "diag": tm["diagnostics_s"], "diag_calls": len(calls),
            "snap_each": statistics.median(s for _, s in calls), "eval": tm["eval_s"], "steps": steps,
            "record_step_ms": tm["step_ms"]["median"]}


def seed_group_runs(mitigation: str, T: int, hidden: int, steps: int, S: int = STACK_S, batch: int = BATCH):
    """Target 5 as the engine does it: (together, separate) -- S short runs of one configuration
    (seeds 0..S-1, the harness's settings: `steps` steps, one evaluation) trained by one
    bench.train.train_group call, and by S train() calls one after the other. Whole runs: set-up,
    snapshots, evaluation and records included. Each raises if a run did not train all its steps."""
    from .train import train, train_group

    specs = [harness_spec(mitigation, T, hidden, steps, batch=batch, seed=s) for s in range(S)]

    def check(recs):
        bad = [(r["spec"]["seed"], r["outcome"], r.get("steps")) for r in recs
               if r["outcome"] in ("error", "diverged") or r["steps"] != steps]
        if bad:
            raise RuntimeError(f"seed-group benchmark of {mitigation}: runs that did not train {steps} steps: {bad}")

    def together():
        check(train_group(specs))

    def separate():
        check([train(sp) for sp in specs])

    return together, separate


def bare_round(bare: "BareStep", steps: int, timer: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per step of `steps` bare-loop steps (on CUDA one synchronisation, at the end, as
    train()'s loop has no host sync per step either)."""
    t0 = timer()
    bare.sync_each = False
    try:
        for _ in range(steps):
            bare()
        _sync(bare.device)
    finally:
        bare.sync_each = True
    return (timer() - t0) / steps


def mirror_check(mitigation: str, T: int = 30, hidden: int = 16, steps: int = 3, device: Optional[str] = None,
                 defer_host_checks: Optional[bool] = None) -> None:
    """Raise if EngineStep no longer reproduces train()'s losses and gradient norms (on `device`,
    default DEVICE; with the host checks deferred as on CUDA if `defer_host_checks`)."""
    from .train import train

    dev = device or DEVICE
    # the global RNG is seeded for both: bn_*/ln_* models keep nn.Linear's default head bias,
    # drawn from the global RNG (init_model skips every 1-d parameter of a NormRecurrence model)
    torch.manual_seed(1234)
    rec = train(harness_spec(mitigation, T, hidden, steps, batch=16, heldout_size=64, probe_size=8, device=dev),
                defer_host_checks=defer_host_checks)
    torch.manual_seed(1234)
    eng = EngineStep(mitigation, T, hidden, batch=16, heldout_size=64, device=dev, defer_host_checks=defer_host_checks)
    for _ in range(steps):
        eng()
    if eng.defer:  # the device values, read once at the end (as train() reads them)
        eng.losses, eng.gnorms = [float(v) for v in eng.losses], [float(v) for v in eng.gnorms]
    got, want = eng.gnorms, rec["grad_norm"]["trace"]
    ok = all(math.isclose(a, b, rel_tol=2e-3, abs_tol=1e-6) for a, b in zip(got, want)) and len(want) == steps
    ok = ok and math.isclose(eng.losses[-1], rec["final"]["train_loss"], rel_tol=1e-4, abs_tol=1e-7)
    if not ok:
        raise AssertionError(f"bench.perf.EngineStep diverges from bench.train.train for {mitigation}: "
                             f"grad norms {got} vs {want}, last loss {eng.losses[-1]} vs "
                             f"{rec['final']['train_loss']}; update EngineStep to the engine's step")


# ---------------------------------------------------------------------------------------------
# Timing helpers
# ---------------------------------------------------------------------------------------------
def settle(fns: List[Callable[[], object]], max_rounds: int = 4) -> int:
    """Call every fn in turn until one whole cycle takes no new pages from the OS (no minor page
    faults: the allocator reuses what earlier steps freed), at most `max_rounds` cycles; returns
    the number of cycles run. With the pinned allocator a process reaches that state after a few
    steps of each size, but until then a step (often the interleaved reference, whose buffers have
    other sizes than the benchmarked step's) page-faults its buffers: the nn.LSTM reference at h64
    T=1000 measured 218-452 ms in the first rounds after a bn_lstm step and 130 ms after, which
    skewed the median of the ratio by 1.6x. Without the pinned allocator faults never stop:
    returns 0 without calling anything (the regime `BENCH_PERF_MALLOC=default` measures)."""
    if not str(runtime.MALLOC_MODE).startswith("pinned"):
        return 0
    import resource

    for n in range(1, max_rounds + 1):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for fn in fns:
            fn()
        if resource.getrusage(resource.RUSAGE_SELF).ru_minflt == before:
            return n
    return max_rounds


class Interleaved:
    """A pedantic `setup` that times one call of each of `fns` ({name: fn}) before every round,
    so a benchmark's references are measured interleaved with it (same load), not minutes apart."""

    def __init__(self, fns: Dict[str, Callable[[], object]], warmup: int,
                 timer: Callable[[], float] = time.perf_counter):
        self.fns, self.warmup, self.timer = fns, warmup, timer
        self.times: Dict[str, List[float]] = {k: [] for k in fns}

    def __call__(self):
        for k, fn in self.fns.items():
            t0 = self.timer()
            fn()
            self.times[k].append(self.timer() - t0)

    def measured(self, name: str) -> List[float]:
        return self.times[name][self.warmup:]


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------------------------------------
# From a pytest-benchmark JSON to ratios and targets
# ---------------------------------------------------------------------------------------------
def _size(b):
    e = b["extra_info"]
    return f"h{e['hidden']}-T{e['T']}"


def cpu_brand(bench_json: dict) -> str:
    """The CPU's brand string as pytest-benchmark records it (machine_info.cpu.brand_raw), or ""."""
    return ((bench_json.get("machine_info") or {}).get("cpu") or {}).get("brand_raw") or ""


def collect(bench_json: dict) -> Dict[str, dict]:
    """{name: benchmark} for this suite's benchmarks (extra_info['kind'] set)."""
    out = {}
    for b in bench_json.get("benchmarks", []):
        e = b.get("extra_info") or {}
        if "kind" in e:
            out[b["name"]] = b
    return out


def ratios(bench_json: dict) -> Dict[str, dict]:
    """The tracked ratios: {key: {"value", "nodes" (test node ids to re-run), "what"}}.

    step/<size>/<m>      median step(m) / median interleaved reference (bare nn.LSTM, same size)
    scaling/h<H>/<m>     median step(m, T=1000) / median step(m, T=100) (both normalised by
                         their reference: T=1000's reference/T=100's reference multiplies it back)
    harness/<size>/<m>   median train() loop step / median matched bare-loop step (fused)
    snapshot/<size>/<m>  median diagnostics snapshot / median matched bare-loop step
    """
    bs = collect(bench_json)
    out: Dict[str, dict] = {}
    for b in bs.values():
        e = b["extra_info"]
        size = _size(b)
        if e["kind"] in ("step", "cellloop"):
            ref = median(e["ref_times"])
            r = b["stats"]["median"] / ref
            out[f"step/{size}/{e['name']}"] = {"value": r, "nodes": [b["fullname"]],
                                               "median_s": b["stats"]["median"], "ref_s": ref}
        elif e["kind"] == "harness":
            bare = median(e["bare_step"])
            out[f"harness/{size}/{e['name']}"] = {"value": median(e["loop_step"]) / bare, "nodes": [b["fullname"]],
                                                  "median_s": median(e["loop_step"]), "ref_s": bare}
            out[f"snapshot/{size}/{e['name']}"] = {"value": median(e["snap_each"]) / bare, "nodes": [b["fullname"]],
                                                   "median_s": median(e["snap_each"]), "ref_s": bare}
    for b in bs.values():
        e = b["extra_info"]
        if e.get("short_times"):
            out[f"scaling/h{e['hidden']}/{e['name']}"] = {
                "value": b["stats"]["median"] / median(e["short_times"]), "nodes": [b["fullname"]],
                "median_s": b["stats"]["median"], "ref_s": median(e["short_times"])}
    return out


def targets(bench_json: dict) -> List[dict]:
    """Rows {target, size, name, value, limit, verdict, note} for the issue's absolute targets."""
    bs = collect(bench_json)
    rows = []

    def row(target, size, name, value, limit, note="", strict=False, info=False):
        ok = value is not None and (value < limit if strict else value <= limit)
        if info:  # a measurement, not a target: "could save" (below the limit) or "no gain"
            verdict = "n/a" if value is None else ("could save" if ok else "no gain")
        else:
            verdict = "n/a" if value is None else ("PASS" if ok else "MISS")
        rows.append({"target": target, "size": size, "name": name, "value": value, "limit": limit,
                     "strict": strict, "verdict": verdict, "note": note})

    steps = {}
    for b in bs.values():
        e = b["extra_info"]
        if e["kind"] in ("step", "cellloop"):
            steps[(e["hidden"], e["T"], e["name"])] = b["stats"]["median"] / median(e["ref_times"])
    # T1: harness loop and whole run (projected to the default budget, evaluation excluded)
    for b in sorted(bs.values(), key=lambda b: (b["extra_info"]["T"], b["extra_info"]["hidden"], b["name"])):
        e = b["extra_info"]
        if e["kind"] != "harness":
            continue
        size, bare = _size(b), median(e["bare_step"])
        row("T1 loop", size, e["name"], median(e["loop_step"]) / bare, T1_MAX,
            f"train() loop {median(e['loop_step']) * 1e3:.1f} ms/step vs bare {bare * 1e3:.1f} ms")
        n = DEFAULT_BUDGET
        run = median(e["setup"]) + median(e["snap_each"]) * 5 + n * median(e["loop_step"])
        row("T1 run@1000", size, e["name"], run / (n * bare), T1_MAX,
            f"projected: setup {median(e['setup']) * 1e3:.0f} ms + 5 snapshots x {median(e['snap_each']) * 1e3:.0f} ms "
            f"+ {n} loop steps, eval excluded")
    # T1 against PyTorch's own module where the engine runs the native kernel instead (CPU): the
    # engine's step / the bare nn.RNN or nn.GRU loop's step (both / the interleaved reference)
    for (H, T, name), r in sorted(steps.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
        if name in CELL_LOOPS or not is_fused(name):
            continue
        nn_loop = NN_OF_FAMILY.get(family_of(name))
        if (H, T, nn_loop) in steps:
            row("T1 vs nn.*", f"h{H}-T{T}", name, r / steps[(H, T, nn_loop)], T1_MAX,
                f"step / bare nn.{'GRU' if nn_loop == 'nn_gru' else 'RNN'} loop step (both / reference)")
    # T2: custom cells vs fused nn.LSTM (<= 1.5x) and vs a plain cell loop (faster)
    for (H, T, name), r in sorted(steps.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
        if name in CELL_LOOPS or is_fused(name):
            continue
        size = f"h{H}-T{T}"
        row("T2 vs LSTM", size, name, r, T2_MAX, "step / bare nn.LSTM step")
        loop = "lstmcell" if family_of(name) == "lstm" else "rnncell"
        if (H, T, loop) in steps:
            row("T2 vs cell loop", size, name, r / steps[(H, T, loop)], 1.0,
                f"step / plain nn.{'LSTMCell' if loop == 'lstmcell' else 'RNNCell'} loop step (both / reference)",
                strict=True)
    # T3: linear in T (the T=1000 step against the same mitigation's T=100 step, interleaved)
    for b in sorted(bs.values(), key=lambda b: (b["extra_info"]["hidden"], b["name"])):
        e = b["extra_info"]
        if not e.get("short_times") or e["name"] in NN_KIND:  # nn_*: PyTorch's modules, not the suite's
            continue
        short = median(e["short_times"])
        row("T3 T=1000/T=100", f"h{e['hidden']}", e["name"], b["stats"]["median"] / short, T3_MAX,
            f"{short * 1e3:.1f} ms -> {b['stats']['median'] * 1e3:.0f} ms (T={e['short_T']} interleaved)")
    # T3 also inside train(): loop step at T=1000 / at T=100 from the harness runs (other rounds)
    loops = {(b["extra_info"]["hidden"], b["extra_info"]["T"], b["extra_info"]["name"]): median(b["extra_info"]["loop_step"])
             for b in bs.values() if b["extra_info"]["kind"] == "harness"}
    for (H, T, name), v in sorted(loops.items()):
        if T == 1000 and (H, 100, name) in loops:
            row("T3 in train()", f"h{H}", name, v / loops[(H, 100, name)], T3_MAX,
                f"train() loop {loops[(H, 100, name)] * 1e3:.1f} ms -> {v * 1e3:.0f} ms (harness runs, not interleaved)")
    # T5: S seeds together -- what stacked weights (not implemented) could save at most, what the
    # lockstep of bench.train.train_group saves per step, and over whole short runs
    for b in sorted(bs.values(), key=lambda b: b["name"]):
        e = b["extra_info"]
        if e["kind"] == "stack_bound":
            S, sep = e["S"], median(e["separate_times"])
            row(f"T5 bound S={S}", _size(b), e["name"], b["stats"]["median"] / sep, 1.0,
                f"stacked weights, not implemented, best case: 1 step at batch {S}x{e['batch']} "
                f"{b['stats']['median'] * 1e3:.1f} ms vs {S} separate steps {sep * 1e3:.1f} ms", strict=True, info=True)
            if e.get("per_model_times"):
                per = min(median(e["per_model_times"]), sep)
                row(f"T5 ceiling S={S}", _size(b), e["name"], (per + (sep - per) / S) / sep, 1.0,
                    f"per-model weights, not implemented: {S} batch draws and model forward+backward "
                    f"{per * 1e3:.1f} ms of {S} steps {sep * 1e3:.1f} ms; the rest ({(sep - per) / S * 1e3:.1f} ms a step) shared",
                    strict=True, info=True)
            if e.get("lockstep_times"):
                lock = median(e["lockstep_times"])
                row(f"T5 lockstep S={S}", _size(b), e["name"], lock / sep, 1.0,
                    f"as train_group steps: {S} runs' steps phase by phase (all batches, each model's "
                    f"forward+backward, each update) {lock * 1e3:.1f} ms vs one after the other {sep * 1e3:.1f} ms",
                    strict=True, info=True)
        if e["kind"] == "seed_group":
            S, sep, grp = e["S"], median(e["separate_times"]), b["stats"]["median"]
            row(f"T5 seed group S={S}", _size(b), e["name"], grp / sep, 1.0,
                f"{S} runs of {e['steps']} steps (set-up, snapshots, evaluation included): train_group "
                f"{grp:.2f} s vs {S} train() calls {sep:.2f} s", strict=True)
    # T4: diagnostics share of a default run (measured), and projected from the harness runs
    for b in bs.values():
        e = b["extra_info"]
        if e["kind"] == "default_run":
            row("T4 diag share", _size(b), e["name"], e["diagnostics_s"] / e["wall_s"], T4_MAX,
                f"measured default run: {e['steps']} steps ({e['outcome']}), diagnostics {e['diagnostics_s']:.2f} s "
                f"of {e['wall_s']:.1f} s")
    for b in bs.values():
        e = b["extra_info"]
        if e["kind"] != "harness":
            continue
        n, ev = DEFAULT_BUDGET, DEFAULT_BUDGET // DEFAULT_EVAL_EVERY
        diag = 5 * median(e["snap_each"])
        total = median(e["setup"]) + diag + n * median(e["loop_step"]) + ev * median(e["eval"])
        row("T4 diag share", _size(b), e["name"], diag / total, T4_MAX,
            f"projected to budget {n}, eval every {DEFAULT_EVAL_EVERY}: 5 x {median(e['snap_each']) * 1e3:.0f} ms "
            f"of {total:.0f} s")
    return rows
