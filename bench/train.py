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
    task = make_task(spec.task, spec.length)
    mit = parse_mitigation(spec.mitigation)
    check_for_task(mit, task.seq_len)
    threads_before = torch.get_num_threads()
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    # cuda:N: make it the current GPU for the run, so that the step clock's events, synchronize()
    # and pinned-memory copies all work on the device the model is on
    on_gpu = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    try:
        # full GC passes would re-walk the whole interpreter (runtime.frozen_gc); denormals flushed to
        # zero: vanishing gradients would otherwise make them, at ~100x the cost of a float on Intel
        # CPUs (runtime.flushed_denormals); the diagnostics run in the same arithmetic
        with frozen_gc(), on_gpu, flushed_denormals():
            return _train(spec, task, mit, device, progress, t_wall0, defer_host_checks)
    finally:
        torch.set_num_threads(threads_before)


class _StepClock:
    """Marks inside a training step -> per-phase durations. On the host: time.perf_counter. On
    CUDA: events recorded in the stream (no host synchronisation), read when the run ends."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: List[list] = []

    def mark(self, step_marks: list):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            step_marks.append(ev)
        else:
            step_marks.append(time.perf_counter())

    def phases(self) -> List[List[float]]:
        """Per step, the seconds between consecutive marks."""
        if self.cuda and self.marks:
            torch.cuda.synchronize()
            return [[a.elapsed_time(b) / 1e3 for a, b in zip(m, m[1:])] for m in self.marks]
        return [[b - a for a, b in zip(m, m[1:])] for m in self.marks]


def _train(spec, task, mit, device, progress, t_wall0, defer_host_checks: Optional[bool] = None) -> Dict:
    """defer_host_checks: read the loss and gradient norm on the host only where the host needs
    them (before a diagnostics snapshot, an evaluation, and at the end) instead of every step.
    Default: on CUDA, so that the time loop never waits for the GPU; the record is the same
    (a divergence found late is dated to its first non-finite step, and what ran after it --
    on parameters already non-finite -- is discarded)."""
    cuda = device.type == "cuda"
    defer = cuda if defer_host_checks is None else defer_host_checks

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    data = TaskData(task, spec.seed, spec.heldout_size, device)
    g_init = generator("init", task.name, task.length, mit.recipe.name, spec.hidden, spec.seed)
    model = build_model(mit, task.n_in, task.n_out, task.readout, spec.hidden, task.seq_len, g_init, device)
    model.train()
    opt_name = spec.optimizer or mit.recipe.optimizer
    lr = spec.lr if spec.lr is not None else mit.recipe.lr
    opt = make_optimizer(opt_name, model.parameters(), lr)
    params = [p for p in model.parameters()]
    clipnorm, clipvalue = mit.get("clipnorm"), mit.get("clipvalue")
    px, py = data.probe_batch(spec.probe_size)

    t_diag = 0.0
    snapshots = []

    def snap(step):
        nonlocal t_diag
        sync()
        t0 = time.perf_counter()
        try:
            snapshots.append(diagnostics.snapshot(model, task, px, py, step))
        finally:
            sync()
            t_diag += time.perf_counter() - t0

    when = set(profile_steps(spec.budget))
    snap(0)
    init_snap = snapshots[0]

    clock = _StepClock(device)
    gnorms, clipped, losses = [], 0, []
    curve, t_eval = [], 0.0
    outcome, solved_at, diverged_at, nonfinite = "unsolved", None, None, 0
    time_to_solve = None
    last_eval = None
    # steps whose loss / gradient norm / clip flag are still device tensors
    pending: List[tuple] = []

    def host_check() -> Optional[int]:
        """Move the pending steps' values to the host; the first non-finite step, or None.
        Values from that step on are dropped (the run ends there)."""
        nonlocal clipped
        if not pending:
            return None
        steps = [p[0] for p in pending]
        if len(pending) == 1:  # every step (host checks not deferred)
            _, lv, gv, fl = pending[0]
            vals, flags = [(float(lv), float(gv))], ([bool(fl)] if fl is not None else None)
        else:
            vals = torch.stack([torch.stack([p[1].float(), p[2].float()]) for p in pending]).tolist()
            flags = torch.stack([p[3] for p in pending]).tolist() if clipvalue is not None else None
        pending.clear()
        for i, (st, (lval, gval)) in enumerate(zip(steps, vals)):
            losses.append(lval)
            gnorms.append(gval)
            if not (math.isfinite(lval) and math.isfinite(gval)):
                return st
            clipped += (clipnorm is not None and gval > clipnorm) or bool(flags and flags[i])
        return None

    t_train0 = time.perf_counter()
    step = 0
    nan_step = None
    for step in range(1, spec.budget + 1):
        x, y = data.train_batch(spec.batch)
        m = []
        clock.marks.append(m)
        clock.mark(m)
        out = model(x)
        loss = task.loss(out, y)
        clock.mark(m)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clock.mark(m)
        gnorm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        flag = None
        if clipvalue is not None:  # does clipping by value change anything this step (device bool)
            flag = torch.stack([(p.grad.abs() > clipvalue).any() for p in params if p.grad is not None]).any()
        pending.append((step, loss.detach(), gnorm, flag))
        # drop this step's batch, output and loss (and with them its autograd graph) now: held
        # until the next step reassigns them, they stay alive through its forward and backward,
        # which cost GRU at T=1000 about 12% a step (measured against a loop that drops them)
        del x, y, out, loss
        if not defer:  # host sync every step: a divergence ends the run before the update
            nan_step = host_check()
            if nan_step is not None:
                outcome, diverged_at, nonfinite = "diverged", nan_step, nonfinite + 1
                break
        if clipnorm is not None:
            torch.nn.utils.clip_grads_with_norm_(params, clipnorm, gnorm)
        if clipvalue is not None:
            torch.nn.utils.clip_grad_value_(params, clipvalue)
        opt.step()
        clock.mark(m)
        host_needed = step in when or step % spec.eval_every == 0 or step == spec.budget
        if defer and host_needed:
            nan_step = host_check()
            if nan_step is not None:
                outcome, diverged_at, nonfinite = "diverged", nan_step, nonfinite + 1
                break
        if step in when:
            snap(step)
        if step % spec.eval_every == 0 or step == spec.budget:
            te = time.perf_counter()
            ev = evaluate(model, task, data)
            t_eval += time.perf_counter() - te
            k = min(len(losses), spec.eval_every)
            ev_row = {"step": step, "train_loss": sum(losses[-k:]) / k, "heldout_loss": ev["loss"],
                      "heldout_wrong": ev["wrong"], "heldout_accuracy": ev["accuracy"],
                      "wall_s": time.perf_counter() - t_wall0}
            curve.append(ev_row)
            last_eval = (step, ev)
            if progress:
                progress(step, ev_row)
            if ev["loss"] is None:
                outcome, diverged_at, nonfinite = "diverged", step, nonfinite + 1
                break
            if ev["wrong"] < task.success_max_wrong:
                outcome, solved_at = "solved", step
                time_to_solve = time.perf_counter() - t_wall0
                break
    if nan_step is not None:
        step = nan_step  # found late (deferred checks): the steps after it are not the run's
    # per-step phases (forward, backward, update); a step with a non-finite loss or gradient
    # norm gets no update
    phases = clock.phases()[:step]
    t_fwd = [p[0] for p in phases]
    t_bwd = [p[1] for p in phases]
    t_opt = [p[2] for p in phases[: step - 1 if nan_step is not None else step]]
    t_train = time.perf_counter() - t_train0
    steps_taken = step

    if last_eval is None or last_eval[0] != steps_taken:
        if outcome == "diverged":
            final = {"loss": None, "wrong": None, "accuracy": None}
        else:
            te = time.perf_counter()
            final = evaluate(model, task, data)
            t_eval += time.perf_counter() - te
    else:
        final = last_eval[1]
    if outcome != "diverged" and snapshots[-1]["step"] != steps_taken:
        snap(steps_taken)
    end_snap = snapshots[-1] if outcome != "diverged" else None

    base = data.baseline
    step_total = [a + b + c for a, b, c in zip(t_fwd, t_bwd, t_opt)]
    rec = {
        "record_version": RECORD_VERSION,
        "spec": spec.to_dict(),
        "mitigation": {"name": mit.name, **mit.describe()},
        "task": {**task.describe(), "heldout_size": int(data.heldout_x.shape[0])},
        "model": {"n_params": sum(p.numel() for p in model.parameters()),
                  "n_params_recurrent": sum(p.numel() for p in model.rec.parameters())},
        "optimizer": opt_name,
        "lr": lr,
        "device": str(device),
        "outcome": outcome,
        "error": None,
        "steps": steps_taken,
        "steps_to_solve": solved_at,
        "diverged_at": diverged_at,
        "final": {"heldout_loss": final["loss"], "heldout_wrong": final["wrong"],
                  "heldout_accuracy": final["accuracy"], "train_loss": losses[-1] if losses else None},
        "baseline": {"loss": base["loss"], "wrong": base["wrong"], "accuracy": 1 - base["wrong"]},
        "curve": curve,
        "grad_norm": {**_summary(gnorms), "trace": [float(f"{v:.4g}") for v in gnorms],
                      "frac_clipped": (clipped / len(t_opt)) if t_opt else 0.0, "nonfinite_events": nonfinite},
        "diagnostics": {
            "init": init_snap,
            "end": end_snap,
            "snapshots": snapshots,
        },
        "timing": {
            "fwd_ms": _ms(t_fwd), "bwd_ms": _ms(t_bwd), "opt_ms": _ms(t_opt), "step_ms": _ms(step_total),
            "train_s": t_train, "eval_s": t_eval, "diagnostics_s": t_diag,
            "wall_s": time.perf_counter() - t_wall0, "time_to_solve_s": time_to_solve,
        },
        "provenance": provenance(device, spec.threads, model),
    }
    return rec


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
