"""Train one RunSpec and return its result record (see docs/RECORD.md)."""
from __future__ import annotations

import contextlib
import math
import statistics
import time
import traceback
from typing import Callable, Dict, List, Optional

import torch

from . import diagnostics
from .data import TaskData
from .devices import resolve_device
from .errors import BenchError
from .models import build_model, native, parse_mitigation
from .models.mitigations import check_for_task
from .provenance import provenance
from .runtime import flushed_denormals, frozen_gc
from .seeding import generator
from .spec import RunSpec
from .tasks import make_task

RECORD_VERSION = 1
EVAL_CHUNK = 250


def make_optimizer(name: str, params, lr: float):
    """Adam / RMSprop / SGD at `lr`, torch's defaults otherwise. On the CPU, bench.optim's twins
    (bit for bit torch.optim's CPU path, without its ~1.3 s import of torch._dynamo per
    process); on other devices torch.optim itself."""
    from .optim import make_optimizer as make

    return make(name, params, lr)


def profile_steps(budget: int) -> List[int]:
    """Steps at which the gradient profile is taken (besides the end): init and 1/8, 1/4, 1/2."""
    return sorted({0} | {max(1, round(budget * f)) for f in (0.125, 0.25, 0.5)})


@torch.no_grad()
def evaluate(model, task, data: TaskData) -> Dict[str, float]:
    was = model.training
    model.eval()
    x, y = data.heldout_x, data.heldout_y
    loss_sum, wrong_sum = 0.0, 0.0
    n = x.shape[0]
    for s in range(0, n, EVAL_CHUNK):
        out = model(x[s:s + EVAL_CHUNK])
        m = out.shape[0]
        loss_sum += float(task.loss(out, y[s:s + EVAL_CHUNK])) * m
        wrong_sum += float(task.wrong(out, y[s:s + EVAL_CHUNK]).float().sum())
    model.train(was)
    loss = loss_sum / n
    return {"loss": loss if math.isfinite(loss) else None, "wrong": wrong_sum / n, "accuracy": 1 - wrong_sum / n}


def _summary(xs: List[float]) -> Dict[str, Optional[float]]:
    fin = sorted(v for v in xs if math.isfinite(v))
    if not fin:
        return {"median": None, "p99": None, "max": None, "mean": None}
    return {"median": statistics.median(fin), "p99": fin[min(len(fin) - 1, math.ceil(0.99 * len(fin)) - 1)],
            "max": fin[-1], "mean": sum(fin) / len(fin)}


def _ms(xs: List[float]) -> Dict[str, Optional[float]]:
    if not xs:
        return {"median": None, "mean": None}
    return {"median": statistics.median(xs) * 1e3, "mean": sum(xs) / len(xs) * 1e3}


def train(spec: RunSpec, progress: Optional[Callable[[int, Dict], None]] = None,
          defer_host_checks: Optional[bool] = None) -> Dict:
    """Train one run; never raises for divergence (outcome 'diverged'). Bad specs raise
    BenchError; use `run_safely` to turn any exception into an 'error' record.
    defer_host_checks: see _train (default: on CUDA only)."""
    # before the run's clock: a cuda:any wait for a free GPU and a first-time kernel build are not its time
    device = resolve_device(spec.device)
    native.prepare(spec.mitigation, device)
    t_wall0 = time.perf_counter()
    task, mit = _task_and_mitigation(spec)
    with _running(spec, device):
        return _train(spec, task, mit, device, progress, t_wall0, defer_host_checks)


def _task_and_mitigation(spec: RunSpec):
    """The spec's task and parsed mitigation; BenchError if the mitigation cannot run on it."""
    task = make_task(spec.task, spec.length)
    mit = parse_mitigation(spec.mitigation)
    check_for_task(mit, task.seq_len)
    return task, mit


@contextlib.contextmanager
def _running(spec: RunSpec, device: torch.device):
    """The process state training runs in (restored after): the spec's CPU threads; on cuda:N that
    GPU as the current one, so that the step clock's events, synchronize() and pinned-memory copies
    all work on the device the model is on; no full GC passes (they would re-walk the whole
    interpreter, runtime.frozen_gc); denormals flushed to zero (vanishing gradients would otherwise
    make them, at ~100x the cost of a float on Intel CPUs, runtime.flushed_denormals; the
    diagnostics run in the same arithmetic)."""
    threads_before = torch.get_num_threads()
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    on_gpu = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    try:
        with frozen_gc(), on_gpu, flushed_denormals():
            yield
    finally:
        torch.set_num_threads(threads_before)


def train_group(specs: List[RunSpec], on_done: Optional[Callable[[int, Dict], None]] = None,
                progress: Optional[Callable[[int, int, Dict], None]] = None) -> List[Dict]:
    """Train the seeds of one configuration together in one process, in lockstep (target 5): at
    every step all runs draw their batches, then each runs its forward and backward, then each its
    update, on its own weights. Each run's record is the one train() gives for its spec -- the same
    operations on the same data in the same order, so the same numbers, bit for bit on the CPU --
    except its timing: the step phases are the run's own, measured as they ran in the group, and
    wall_s, train_s and time_to_solve_s count the run's own work only (not its group-mates');
    timing.seed_group says how many runs trained together. A run that ends (solved, diverged,
    budget spent) leaves the group; one that raises becomes an 'error' record (as run_safely) and
    the others go on. Records come back in the order of `specs`; on_done(i, record) as each run
    ends (so a caller can write it at once); progress(i, step, curve row) at each evaluation.

    The specs must differ in their seed only (BenchError otherwise, naming the fields)."""
    specs = list(specs)
    if not specs:
        raise BenchError("train_group needs at least one run spec")
    ref = {k: v for k, v in specs[0].to_dict().items() if k != "seed"}
    for sp in specs[1:]:
        diff = sorted(k for k, v in sp.to_dict().items() if k != "seed" and ref[k] != v)
        if diff:
            raise BenchError(f"train_group trains the seeds of one configuration: these specs also differ in "
                             f"{', '.join(diff)}")
    seeds = [sp.seed for sp in specs]
    if len(set(seeds)) != len(seeds):
        raise BenchError(f"train_group: seed given twice in {seeds}")
    records: List[Optional[Dict]] = [None] * len(specs)

    def done(i, rec):
        records[i] = rec
        if on_done:
            on_done(i, rec)

    spec0 = specs[0]
    try:
        device = resolve_device(spec0.device)
        native.prepare(spec0.mitigation, device)
    except Exception as exc:
        for i, sp in enumerate(specs):
            done(i, error_record(sp.to_dict(), exc))
        return records
    runs: Dict[int, _Run] = {}
    clocks = [_OwnTime() for _ in specs]

    def own(i, fn):
        """fn() as run i's own work; an exception ends run i with an error record."""
        clocks[i].enter()
        try:
            return fn()
        except Exception as exc:  # recorded, never lost: the group goes on
            runs.pop(i, None)
            done(i, error_record(specs[i].to_dict(), exc))
        finally:
            clocks[i].leave()

    def setup(i, sp):
        task, mit = _task_and_mitigation(sp)
        cb = (lambda step, row: progress(i, step, row)) if progress else None
        runs[i] = _Run(sp, task, mit, device, cb, 0.0, now=clocks[i], group=len(specs))

    def finish(i):
        done(i, runs.pop(i).record())

    with _running(spec0, device):
        for i, sp in enumerate(specs):
            own(i, lambda: setup(i, sp))
        while runs:
            for phase in ("draw", "forward_backward", "update"):
                for i in list(runs):
                    own(i, getattr(runs[i], phase))
            for i in [i for i, r in runs.items() if r.ended]:
                own(i, lambda: finish(i))
    return records


class _StepClock:
    """Marks inside a training step -> per-phase durations. On the host: time.perf_counter. On
    CUDA: events recorded in the stream (no host synchronisation), read when the run ends."""

    def __init__(self, device: torch.device, gap: bool = False):
        """gap: every step has a mark where its update starts (after its backward's, in a seed
        group: the other runs' forward and backward ran in between), and the time between those
        two marks is not the step's."""
        self.cuda = device.type == "cuda"
        self.gap = gap
        self.marks: List[list] = []

    def mark(self, step_marks: list):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            step_marks.append(ev)
        else:
            step_marks.append(time.perf_counter())

    def phases(self) -> List[List[float]]:
        """Per step, the seconds between consecutive marks (without the gap, see __init__)."""
        if self.cuda and self.marks:
            torch.cuda.synchronize()
            out = [[a.elapsed_time(b) / 1e3 for a, b in zip(m, m[1:])] for m in self.marks]
        else:
            out = [[b - a for a, b in zip(m, m[1:])] for m in self.marks]
        return [d[:2] + d[3:] for d in out] if self.gap else out


def _train(spec, task, mit, device, progress, t_wall0, defer_host_checks: Optional[bool] = None) -> Dict:
    """One run, step after step (see _Run)."""
    run = _Run(spec, task, mit, device, progress, t_wall0, defer_host_checks)
    while not run.ended:
        run.draw()
        run.forward_backward()
        run.update()
    return run.record()


class _OwnTime:
    """A run's own clock in a seed group (train_group): the seconds spent in its own work -- the
    segments between enter() and leave() -- not in its group-mates'."""

    def __init__(self):
        self.spent, self.since = 0.0, None

    def enter(self):
        self.since = time.perf_counter()

    def leave(self):
        self.spent += time.perf_counter() - self.since
        self.since = None

    def __call__(self) -> float:
        return self.spent + (time.perf_counter() - self.since if self.since is not None else 0.0)


class _Run:
    """One run's state and its training step in three phases -- draw(), forward_backward(),
    update() -- so that train() runs them one after the other and train_group() runs the phases
    of several runs in lockstep; record() once `ended`.

    defer_host_checks: read the loss and gradient norm on the host only where the host needs
    them (before a diagnostics snapshot, an evaluation, and at the end) instead of every step.
    Default: on CUDA, so that the time loop never waits for the GPU; the record is the same
    (a divergence found late is dated to its first non-finite step, and what ran after it --
    on parameters already non-finite -- is discarded).
    now: the run's clock for its wall time (time.perf_counter; in a seed group its _OwnTime);
    group: how many runs train together (timing.seed_group); above 1 the run's phases do not
    follow each other directly (a seed group's lockstep)."""

    def __init__(self, spec, task, mit, device, progress, t_wall0, defer_host_checks: Optional[bool] = None,
                 now: Callable[[], float] = time.perf_counter, group: int = 1):
        self.spec, self.task, self.mit, self.device, self.progress = spec, task, mit, device, progress
        self.t_wall0, self.now = t_wall0, now
        self.cuda = device.type == "cuda"
        self.defer = self.cuda if defer_host_checks is None else defer_host_checks
        self.data = TaskData(task, spec.seed, spec.heldout_size, device)
        g_init = generator("init", task.name, task.length, mit.recipe.name, spec.hidden, spec.seed)
        self.model = build_model(mit, task.n_in, task.n_out, task.readout, spec.hidden, task.seq_len, g_init, device)
        self.model.train()
        self.opt_name = spec.optimizer or mit.recipe.optimizer
        self.lr = spec.lr if spec.lr is not None else mit.recipe.lr
        self.opt = make_optimizer(self.opt_name, self.model.parameters(), self.lr)
        self.params = [p for p in self.model.parameters()]
        self.clipnorm, self.clipvalue = mit.get("clipnorm"), mit.get("clipvalue")
        self.px, self.py = self.data.probe_batch(spec.probe_size)

        self.t_diag = 0.0
        self.snapshots = []
        self.when = set(profile_steps(spec.budget))
        self.snap(0)
        self.init_snap = self.snapshots[0]

        self.group = group
        self.lockstep = group > 1
        self.clock = _StepClock(device, gap=self.lockstep)
        self.gnorms, self.clipped, self.losses = [], 0, []
        self.curve, self.t_eval = [], 0.0
        self.outcome, self.solved_at, self.diverged_at, self.nonfinite = "unsolved", None, None, 0
        self.time_to_solve = None
        self.last_eval = None
        # steps whose loss / gradient norm / clip flag are still device tensors
        self.pending: List[tuple] = []
        self.step = 0
        self.nan_step = None
        self.ended = spec.budget < 1
        self.t_train0 = self.now()

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def snap(self, step):
        self.sync()
        t0 = time.perf_counter()
        try:
            self.snapshots.append(diagnostics.snapshot(self.model, self.task, self.px, self.py, step))
        finally:
            self.sync()
            self.t_diag += time.perf_counter() - t0

    def host_check(self) -> Optional[int]:
        """Move the pending steps' values to the host; the first non-finite step, or None.
        Values from that step on are dropped (the run ends there)."""
        pending = self.pending
        if not pending:
            return None
        steps = [p[0] for p in pending]
        if len(pending) == 1:  # every step (host checks not deferred)
            _, lv, gv, fl = pending[0]
            vals, flags = [(float(lv), float(gv))], ([bool(fl)] if fl is not None else None)
        else:
            vals = torch.stack([torch.stack([p[1].float(), p[2].float()]) for p in pending]).tolist()
            flags = torch.stack([p[3] for p in pending]).tolist() if self.clipvalue is not None else None
        pending.clear()
        for i, (st, (lval, gval)) in enumerate(zip(steps, vals)):
            self.losses.append(lval)
            self.gnorms.append(gval)
            if not (math.isfinite(lval) and math.isfinite(gval)):
                return st
            self.clipped += (self.clipnorm is not None and gval > self.clipnorm) or bool(flags and flags[i])
        return None

    def _diverged(self, step: int) -> None:
        self.outcome, self.diverged_at, self.nonfinite = "diverged", step, self.nonfinite + 1
        self.ended = True

    def draw(self) -> None:
        """Step phase 1: the next step's training batch."""
        self.step += 1
        self.batch = self.data.train_batch(self.spec.batch)

    def forward_backward(self) -> None:
        """Step phase 2: forward, loss and backward on the batch."""
        x, y = self.batch
        self.batch = None
        m = []
        clock = self.clock
        clock.marks.append(m)
        clock.mark(m)
        out = self.model(x)
        loss = self.task.loss(out, y)
        clock.mark(m)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        clock.mark(m)
        self.loss, self.marks = loss, m

    def update(self) -> None:
        """Step phase 3: gradient norm, host check, clipping, the optimizer's step; then the
        step's snapshot, evaluation and the run's end (solved, diverged, budget spent)."""
        step, spec, params, clipvalue, clipnorm = self.step, self.spec, self.params, self.clipvalue, self.clipnorm
        loss, m = self.loss, self.marks
        if self.lockstep:  # the update's own start: the other runs' forward and backward are not its time
            self.clock.mark(m)
        gnorm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        flag = None
        if clipvalue is not None:  # does clipping by value change anything this step (device bool)
            flag = torch.stack([(p.grad.abs() > clipvalue).any() for p in params if p.grad is not None]).any()
        self.pending.append((step, loss.detach(), gnorm, flag))
        # drop this step's loss (and with it its autograd graph) now, as its batch and output: held
        # until the next step reassigns them, they stay alive through its forward and backward,
        # which cost GRU at T=1000 about 12% a step (measured against a loop that drops them)
        self.loss = loss = None
        if not self.defer:  # host sync every step: a divergence ends the run before the update
            self.nan_step = self.host_check()
            if self.nan_step is not None:
                return self._diverged(self.nan_step)
        if clipnorm is not None:
            torch.nn.utils.clip_grads_with_norm_(params, clipnorm, gnorm)
        if clipvalue is not None:
            torch.nn.utils.clip_grad_value_(params, clipvalue)
        self.opt.step()
        self.clock.mark(m)
        host_needed = step in self.when or step % spec.eval_every == 0 or step == spec.budget
        if self.defer and host_needed:
            self.nan_step = self.host_check()
            if self.nan_step is not None:
                return self._diverged(self.nan_step)
        if step in self.when:
            self.snap(step)
        if step % spec.eval_every == 0 or step == spec.budget:
            te = time.perf_counter()
            ev = evaluate(self.model, self.task, self.data)
            self.t_eval += time.perf_counter() - te
            k = min(len(self.losses), spec.eval_every)
            ev_row = {"step": step, "train_loss": sum(self.losses[-k:]) / k, "heldout_loss": ev["loss"],
                      "heldout_wrong": ev["wrong"], "heldout_accuracy": ev["accuracy"],
                      "wall_s": self.now() - self.t_wall0}
            self.curve.append(ev_row)
            self.last_eval = (step, ev)
            if self.progress:
                self.progress(step, ev_row)
            if ev["loss"] is None:
                return self._diverged(step)
            if ev["wrong"] < self.task.success_max_wrong:
                self.outcome, self.solved_at = "solved", step
                self.time_to_solve = self.now() - self.t_wall0
                self.ended = True
                return
        if step == spec.budget:
            self.ended = True

    def record(self) -> Dict:
        """The run's record, once it ended."""
        spec, task, mit, data, model, device = self.spec, self.task, self.mit, self.data, self.model, self.device
        step, outcome, snapshots = self.step, self.outcome, self.snapshots
        if self.nan_step is not None:
            step = self.nan_step  # found late (deferred checks): the steps after it are not the run's
        # per-step phases (forward, backward, update); a step with a non-finite loss or gradient
        # norm gets no update
        phases = self.clock.phases()[:step]
        t_fwd = [p[0] for p in phases]
        t_bwd = [p[1] for p in phases]
        t_opt = [p[2] for p in phases[: step - 1 if self.nan_step is not None else step]]
        t_train = self.now() - self.t_train0
        steps_taken = step

        last_eval = self.last_eval
        if last_eval is None or last_eval[0] != steps_taken:
            if outcome == "diverged":
                final = {"loss": None, "wrong": None, "accuracy": None}
            else:
                te = time.perf_counter()
                final = evaluate(model, task, data)
                self.t_eval += time.perf_counter() - te
        else:
            final = last_eval[1]
        if outcome != "diverged" and snapshots[-1]["step"] != steps_taken:
            self.snap(steps_taken)
        end_snap = snapshots[-1] if outcome != "diverged" else None

        base = data.baseline
        losses, gnorms = self.losses, self.gnorms
        step_total = [a + b + c for a, b, c in zip(t_fwd, t_bwd, t_opt)]
        return {
            "record_version": RECORD_VERSION,
            "spec": spec.to_dict(),
            "mitigation": {"name": mit.name, **mit.describe()},
            "task": {**task.describe(), "heldout_size": int(data.heldout_x.shape[0])},
            "model": {"n_params": sum(p.numel() for p in model.parameters()),
                      "n_params_recurrent": sum(p.numel() for p in model.rec.parameters())},
            "optimizer": self.opt_name,
            "lr": self.lr,
            "device": str(device),
            "outcome": outcome,
            "error": None,
            "steps": steps_taken,
            "steps_to_solve": self.solved_at,
            "diverged_at": self.diverged_at,
            "final": {"heldout_loss": final["loss"], "heldout_wrong": final["wrong"],
                      "heldout_accuracy": final["accuracy"], "train_loss": losses[-1] if losses else None},
            "baseline": {"loss": base["loss"], "wrong": base["wrong"], "accuracy": 1 - base["wrong"]},
            "curve": self.curve,
            "grad_norm": {**_summary(gnorms), "trace": [float(f"{v:.4g}") for v in gnorms],
                          "frac_clipped": (self.clipped / len(t_opt)) if t_opt else 0.0,
                          "nonfinite_events": self.nonfinite},
            "diagnostics": {
                "init": self.init_snap,
                "end": end_snap,
                "snapshots": snapshots,
            },
            "timing": {
                "fwd_ms": _ms(t_fwd), "bwd_ms": _ms(t_bwd), "opt_ms": _ms(t_opt), "step_ms": _ms(step_total),
                "train_s": t_train, "eval_s": self.t_eval, "diagnostics_s": self.t_diag,
                "wall_s": self.now() - self.t_wall0, "time_to_solve_s": self.time_to_solve,
                "seed_group": self.group,
            },
            "provenance": provenance(device, spec.threads, model),
        }


def error_record(spec_dict: Dict, exc: BaseException) -> Dict:
    """The record of a run that raised: outcome 'error', message and traceback kept."""
    return {
        "record_version": RECORD_VERSION,
        "spec": spec_dict,
        "outcome": "error",
        "error": {"type": type(exc).__name__, "message": str(exc),
                  "traceback": "".join(traceback.format_exception(exc))},
        "provenance": provenance(None, spec_dict.get("threads")),
    }


def run_safely(spec: RunSpec, progress=None) -> Dict:
    try:
        return train(spec, progress)
    except Exception as exc:  # recorded, never lost: the sweep goes on
        return error_record(spec.to_dict(), exc)
