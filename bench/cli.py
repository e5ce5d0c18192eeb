"""Command line: `python -m bench list|run|run-cell|native`. Bad input prints one clear line, exit 2."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from .errors import BenchError
from .records import write_json_atomic
from .spec import DEVICES, OPTIMIZERS, RunSpec


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


def _spec_args(p: argparse.ArgumentParser, cell: bool = False):
    p.add_argument("--task", required=True)
    p.add_argument("--length", type=int, required=True)
    p.add_argument("--mitigation", required=True)
    if cell:
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
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--threads", type=int, default=None)


def _spec(a, seed) -> RunSpec:
    return RunSpec(task=a.task, length=a.length, mitigation=a.mitigation, seed=seed, hidden=a.hidden,
                   batch=a.batch, optimizer=a.optimizer, lr=a.lr, budget=a.budget, eval_every=a.eval_every,
                   heldout_size=a.heldout_size, device=a.device, threads=a.threads)


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

    spec = _spec(a, a.seed)
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


def cmd_run_cell(a) -> int:
    """Train every seed of one (task, length, mitigation, lr) cell in one process; a run that
    raises is written as an 'error' record and the others go on."""
    from .train import error_record, run_safely

    if len(a.out) != len(a.seeds):
        raise BenchError(f"--out needs one path per seed: {len(a.seeds)} seeds, {len(a.out)} paths")
    for seed, out in zip(a.seeds, a.out):
        try:
            spec = _spec(a, seed)
        except BenchError as e:
            rec = error_record({"task": a.task, "length": a.length, "mitigation": a.mitigation, "seed": seed}, e)
        else:
            rec = run_safely(spec)
        write_json_atomic(out, rec)
        msg = rec["error"]["message"] if rec["outcome"] == "error" else f"{rec['steps']} steps"
        print(f"{a.mitigation} {a.task}@{a.length} seed {seed}: {rec['outcome']} ({msg})", file=sys.stderr)
    return 0


def cmd_native(a) -> int:
    """Build (once per machine) or load the normalized cells' native kernel and say which loops
    run; with --mitigations, only if one of them would use it on --device. A kernel that cannot be
    built is a warning (the cells fall back to slower loops), not an error: exit 0."""
    import torch

    from .devices import resolve_device
    from .models import native

    if a.mitigations is not None:
        device = resolve_device(a.device)
        if not any(native.needed(m, device) for m in a.mitigations):
            print("bench native: no normalized cell on the CPU in this sweep; nothing to build", file=sys.stderr)
            return 0
    if not native.enabled():
        print("bench native: BENCH_NORMSEQ_NATIVE=0: the normalized cells run their TorchScript/Python loops",
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
    pc = sub.add_parser("run-cell", help="train several seeds of one configuration")
    _spec_args(pc, cell=True)
    pc.add_argument("--out", nargs="+", required=True, help="one record path per seed")
    pn = sub.add_parser("native", help="build or load the normalized cells' native kernel (once per machine)")
    pn.add_argument("--mitigations", nargs="*", default=None,
                    help="build only if one of these would use it (the pipeline passes its sweep's)")
    pn.add_argument("--device", default="auto", choices=DEVICES, help="where those would train")
    return p


def _training_process_setup() -> None:
    """Keep freed memory in the process (glibc): a training step's large buffers are then reused
    instead of fresh pages from the OS every step (2x faster LSTM steps at T=1000 here; see
    perf/README.md). BENCH_MALLOC=default keeps glibc's adaptive default."""
    import os

    from .runtime import configure_malloc

    configure_malloc("default" if os.environ.get("BENCH_MALLOC") == "default" else "pinned")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd in ("run", "run-cell"):
        _training_process_setup()
    try:
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
