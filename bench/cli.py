"""Command line: `python -m bench list|run|run-cell|native`. Bad input prints one clear line, exit 2."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from .errors import BenchError
from .records import write_json_atomic
from .spec import DEVICES, OPTIMIZERS, RunSpec, check_device_name


def _registries():
    from .models import MITIGATIONS, MODIFIERS
    from .tasks import TASKS

    return TASKS, MITIGATIONS, MODIFIERS


def cmd_list(args) -> int:
    TASKS, MITIGATIONS, MODIFIERS = _registries()
    data = {
        "tasks": {n: {"description": TASKS.describe(n), "length_meaning": c.length_meaning,
                      "min_length": c.min_length, "max_length": c.max_length, "success_rule": c.success_rule}
                  for n, c in TASKS},
        "mitigations": {n: {"description": r.description, "family": r.family, "norm": r.norm,
                            "optimizer": r.optimizer, "lr": r.lr, "reference": r.reference}
                        for n, r in MITIGATIONS},
        "modifiers": {n: {"description": m.description, "type": m.kind.__name__} for n, m in MODIFIERS},
        "composition": "<recipe>[+<modifier>:<value>]..., e.g. lstm+clipnorm:1 or rnn+tbptt:20",
    }
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for section in ("tasks", "mitigations", "modifiers"):
        print(f"{section}:")
        for n, d in data[section].items():
            print(f"  {n:<16} {d['description']}")
    print(f"composition: {data['composition']}")
    return 0


def _device_arg(name: str) -> str:
    try:
        return check_device_name(name)
    except BenchError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _spec_args(p: argparse.ArgumentParser, cell: bool = False):
    p.add_argument("--task", required=not cell)
    p.add_argument("--length", type=int, required=not cell)
    p.add_argument("--mitigation", required=True)
    if cell:
        p.add_argument("--cells", nargs="+", default=None, metavar="TASK@LENGTH",
                       help="several cells in one process, e.g. adding@25 adding@50 copy@5 (instead of --task, --length)")
        p.add_argument("--seeds", type=int, nargs="+", required=True)
    else:
        p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--budget", type=int, default=1000, help="training steps at most")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--heldout-size", type=int, default=1000)
    p.add_argument("--device", type=_device_arg, default="auto", metavar="{" + ",".join(DEVICES) + "}")
    p.add_argument("--threads", type=int, default=None)


def _spec(a, task, length, seed) -> RunSpec:
    return RunSpec(task=task, length=length, mitigation=a.mitigation, seed=seed, hidden=a.hidden, batch=a.batch,
                   optimizer=a.optimizer, lr=a.lr, budget=a.budget, eval_every=a.eval_every,
                   heldout_size=a.heldout_size, device=a.device, threads=a.threads)


def _cells(a) -> List[tuple]:
    """run-cell's (task, length) pairs: --cells TASK@LENGTH ..., or --task and --length."""
    if a.cells is None:
        if a.task is None or a.length is None:
            raise BenchError("run-cell needs --task and --length, or --cells TASK@LENGTH ...")
        return [(a.task, a.length)]
    if a.task is not None or a.length is not None:
        raise BenchError("run-cell takes --cells or --task/--length, not both")
    out = []
    for c in a.cells:
        task, at, length = c.rpartition("@")
        if not at or not task or not length.isdigit():
            raise BenchError(f"--cells: {c!r} is not TASK@LENGTH (e.g. adding@50)")
        if (task, int(length)) in out:
            raise BenchError(f"--cells: {c!r} is given twice")
        out.append((task, int(length)))
    return out


def _progress_bar(spec: RunSpec):
    if not sys.stderr.isatty():
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=spec.budget, desc=f"{spec.mitigation} {spec.task}@{spec.length} s{spec.seed}",
               unit="step", leave=True)

    def cb(step, row):
        bar.n = step
        bar.set_postfix(loss=f"{row['heldout_loss']:.4g}" if row["heldout_loss"] is not None else "nan",
                        wrong=f"{row['heldout_wrong']:.3f}")
        bar.refresh()

    return cb, bar


def cmd_run(a) -> int:
    from .train import train

    spec = _spec(a, a.task, a.length, a.seed)
    cb, bar = _progress_bar(spec)
    try:
        rec = train(spec, cb)
    finally:
        if bar is not None:
            bar.close()
    write_json_atomic(a.out, rec)
    print(f"{spec.mitigation} on {spec.task}@{spec.length} seed {spec.seed}: {rec['outcome']} after "
          f"{rec['steps']} steps (held-out loss {rec['final']['heldout_loss']}, baseline "
          f"{rec['baseline']['loss']:.4g}) -> {a.out}", file=sys.stderr)
    return 0


def _out_paths(a, cells) -> List[str]:
    """One record path per (cell, seed), cell-major: --out as given, or --out-pattern filled in."""
    if (a.out is None) == (a.out_pattern is None):
        raise BenchError("run-cell needs --out (one path per run) or --out-pattern, one of them")
    n = len(cells) * len(a.seeds)
    if a.out is not None:
        if len(a.out) != n:
            raise BenchError(f"--out needs one path per (cell, seed), cell-major: {len(cells)} cell(s) x "
                             f"{len(a.seeds)} seed(s) = {n}, got {len(a.out)} paths")
        return a.out
    try:
        paths = [a.out_pattern.format(task=t, length=L, seed=s) for t, L in cells for s in a.seeds]
    except (KeyError, IndexError, ValueError) as e:
        raise BenchError(f"--out-pattern {a.out_pattern!r}: only {{task}}, {{length}} and {{seed}} can be "
                         f"filled in ({type(e).__name__}: {e})") from None
    if len(set(paths)) != len(paths):
        raise BenchError(f"--out-pattern {a.out_pattern!r} gives two runs the same path: it needs "
                         "{task}, {length} and {seed} where the runs differ")
    return paths


def cmd_run_cell(a) -> int:
    """Train every seed of one or more (task, length) cells of one (mitigation, lr) in one process
    (one process start for them all); a run that raises is written as an 'error' record and the
    others go on. --out: one path per (cell, seed), cell-major. With --resume-dir, a run finished
    earlier by the same code on the same kind of machine is taken back instead of trained
    (bench/resume.py), unless --reuse no. The seeds of a cell that are trained train together, in
    lockstep (bench.train.train_group: the same records, timings aside), unless --seed-groups no;
    each record is written as soon as its run ends."""
    from . import train
    from .resume import ResumeCache

    cells = _cells(a)
    outs = _out_paths(a, cells)
    cache = ResumeCache(a.resume_dir) if a.resume_dir else None
    reuse = cache is not None and a.reuse == "yes"
    paths = iter(outs)

    def write(out, rec, resumed):
        """A run's record to its path (and the resume cache) as soon as the run ends."""
        write_json_atomic(out, rec)
        if cache and not resumed:
            cache.put(out, rec)
        sp = rec["spec"]
        msg = rec["error"]["message"] if rec["outcome"] == "error" else f"{rec['steps']} steps"
        how = ", taken back: trained by an earlier process" if resumed else ""
        print(f"{a.mitigation} {sp['task']}@{sp['length']} seed {sp['seed']}: {rec['outcome']} ({msg}{how})",
              file=sys.stderr, flush=True)

    for task, length in cells:
        todo = []  # (out, spec) of the cell's seeds to train
        for seed in a.seeds:
            out = next(paths)
            try:
                spec = _spec(a, task, length, seed)
            except BenchError as e:
                write(out, train.error_record({"task": task, "length": length, "mitigation": a.mitigation,
                                               "seed": seed}, e), False)
                continue
            rec = cache.get(out, spec) if reuse else None
            if rec is not None:
                write(out, rec, True)
            elif a.seed_groups == "yes":
                todo.append((out, spec))
            else:
                write(out, train.run_safely(spec), False)
        if todo:  # the cell's seeds together, in lockstep (train_group)
            train.train_group([spec for _, spec in todo], on_done=lambda i, rec: write(todo[i][0], rec, False))
    if cache and cache.resumed:
        print(f"{cache.resumed} of {len(outs)} run(s) taken from {a.resume_dir} (finished earlier by the same code "
              f"on the same kind of machine; trained {len(outs) - cache.resumed})", file=sys.stderr)
    return 0


def cmd_native(a) -> int:
    """Build (once per machine) or load the recurrences' native kernel and say which loops
    run; with --mitigations, only if one of them would use it on --device. A kernel that cannot be
    built is a warning (the cells fall back to slower loops), not an error: exit 0."""
    import torch

    from .devices import resolve_device
    from .models import native

    if a.mitigations is not None:
        if a.device.startswith("cuda"):  # the kernel is for CPU training (and cuda:any must not claim a GPU here)
            msg = "the kernel is for CPU training: nothing to build"
            if not torch.cuda.is_available():
                msg = f"CUDA is not available here; {msg} (runs started here on that device become error records)"
            print(f"bench native: --device {a.device}: {msg}", file=sys.stderr)
            return 0
        device = resolve_device(a.device)  # auto or cpu
        if not any(native.needed(m, device) for m in a.mitigations):
            print("bench native: no mitigation of this sweep runs the native kernel (normalized cells, plain RNN, "
                  "GRU on the CPU); nothing to build", file=sys.stderr)
            return 0
    if not native.enabled():
        print("bench native: BENCH_NORMSEQ_NATIVE=0: the normalized cells run their TorchScript/Python loops, "
              "the plain RNN and GRU nn.RNN / nn.GRU",
              file=sys.stderr)
        return 0
    ok = native.kernel() is not None
    where = native.build_dir()
    print(f"bench native: {'native kernel ready' if ok else 'native kernel unavailable (see the warning)'} "
          f"in {where}; torch {torch.__version__}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    pl = sub.add_parser("list", help="registered tasks, mitigations and modifiers")
    pl.add_argument("--json", action="store_true")
    pr = sub.add_parser("run", help="train one run and write its JSON record")
    _spec_args(pr)
    pr.add_argument("--out", required=True, help="path of the JSON record")
    pc = sub.add_parser("run-cell", help="train several seeds of one or more cells of one mitigation")
    _spec_args(pc, cell=True)
    pc.add_argument("--out", nargs="+", default=None, help="one record path per (cell, seed), cell-major")
    pc.add_argument("--out-pattern", default=None,
                    help="record paths as a pattern, e.g. 'runs/{task}/T{length}/seed{seed}.json' (instead of --out)")
    pc.add_argument("--resume-dir", default=None,
                    help="keep each finished run's record here too, and take it back instead of training when "
                         "a job runs it again (after an interruption, or a sweep that grew; same run, code, device "
                         "and kind of machine; see bench/resume.py)")
    pc.add_argument("--reuse", choices=("yes", "no"), default="yes",
                    help="with --resume-dir: 'no' trains every run again (and refreshes the kept records)")
    pc.add_argument("--seed-groups", choices=("yes", "no"), default="yes",
                    help="'yes': a cell's seeds train together in lockstep (bench.train.train_group; the same "
                         "records, timings aside); 'no': one after the other")
    pn = sub.add_parser("native", help="build or load the recurrences' native kernel (once per machine)")
    pn.add_argument("--mitigations", nargs="*", default=None,
                    help="build only if one of these would use it (the pipeline passes its sweep's)")
    pn.add_argument("--device", type=_device_arg, default="auto", metavar="{" + ",".join(DEVICES) + "}",
                    help="where those would train")
    return p


def _training_process_setup() -> None:
    """Keep freed memory in the process (glibc): a training step's large buffers are then reused
    instead of fresh pages from the OS every step (2x faster LSTM steps at T=1000 here; see
    perf/README.md). BENCH_MALLOC=default keeps glibc's adaptive default."""
    from .runtime import configure_malloc, env_choice

    configure_malloc(env_choice("BENCH_MALLOC", ("pinned", "default"), "pinned"))


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd in ("run", "run-cell"):
            _training_process_setup()
        if args.cmd == "list":
            return cmd_list(args)
        if args.cmd == "run":
            return cmd_run(args)
        if args.cmd == "native":
            return cmd_native(args)
        return cmd_run_cell(args)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
