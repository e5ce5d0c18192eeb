#!/usr/bin/env python
"""Check a pytest-benchmark JSON of perf/test_perf.py against the committed baseline of ratios.

    python perf/check.py RESULT.json                  # compare with perf/baseline.json (retry once)
    python perf/check.py RESULT.json --save-baseline  # write RESULT's ratios into the baseline
    python perf/check.py --compare A.json B.json      # B (e.g. a new commit) against A, no retry

Ratios measured on a GPU (BENCH_PERF_DEVICE=cuda) are checked against perf/baseline-cuda.json,
those on the CPU against the baseline of their kind of CPU (perf/baseline.json: AMD EPYC;
perf/baseline-<kind>.json, e.g. perf/baseline-intel-xeon.json; a kind without one is checked
against perf/baseline.json, with a note); a result is never compared with another device's.
A --baseline that does not exist is an error (exit 2), unless --save-baseline creates it.

Every tracked value is a ratio of two medians measured in the same run (bench.perf.ratios): a
step against the interleaved bare nn.LSTM reference of the same size, T=1000 against T=100, the
train() loop against the bare loop, a diagnostics snapshot against a bare step. Larger = slower.
A ratio regresses when it exceeds baseline * (1 + tolerance). Each regressed measurement is
re-run once (its pytest node, same clock) and only fails if it regresses again. Exit status: 0
ok, 1 regression, 2 usage error. The issue's absolute targets are printed and written to
perf/last_results.md as PASS/MISS; they do not change the exit status unless --fail-on-miss.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.perf import collect, cpu_brand, ratios, recorded_quick, targets  # noqa: E402

BASELINE = ROOT / "perf" / "baseline.json"
BASELINE_CUDA = ROOT / "perf" / "baseline-cuda.json"
REPORT = ROOT / "perf" / "last_results.md"
DEFAULT_TOL = 0.25
BASELINE_ABOUT = ("Ratios of medians measured within one run (see perf/README.md); perf/check.py fails when a ratio "
                  "exceeds baseline * (1 + tolerance) twice in a row. 'measured' is the latest run written into it; "
                  "'history' lists every save, oldest first, and how its ratios entered (perf/README.md, 'Measured "
                  "on this machine', has the runs).")


def load(path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"perf/check.py: cannot read benchmark JSON {path}: {e}")


def verdict(value: float, base, tol: float) -> str:
    if base is None:
        return "new"
    if value > base * (1 + tol):
        return "REGRESSED"
    if value < base / (1 + tol):
        return "improved"
    return "ok"


def table(rows, headers) -> str:
    cols = [headers] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cols) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (x + 2) for x in w) + "|"] + [line(r) for r in cols[1:]])


def compare_rows(cur: dict, base: dict, tol: float, retried=()):
    rows, bad = [], []
    for key in sorted(cur):
        v, b = cur[key]["value"], base.get(key)
        vd = verdict(v, b, tol)
        if vd == "REGRESSED":
            bad.append(key)
        change = "" if b is None else f"{(v / b - 1) * 100:+.0f}%"
        rows.append([key, f"{cur[key]['median_s'] * 1e3:.2f}", f"{cur[key]['ref_s'] * 1e3:.2f}", f"{v:.3f}",
                     "-" if b is None else f"{b:.3f}", change, vd + (" (after retry)" if key in retried else "")])
    return rows, bad


HEAD = ["ratio", "median ms", "ref ms", "ratio now", "baseline", "change", "verdict"]


def rerun(nodes, timer: str, quick=None, device=None) -> dict:
    """Run the given pytest nodes again (same clock and environment; in quick mode or not, and on
    the device, as the result was measured, when it says) and return their JSON."""
    env = dict(os.environ)
    if quick is not None:
        env["BENCH_PERF_QUICK"] = "1" if quick else "0"
    if device:
        env["BENCH_PERF_DEVICE"] = device
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "retry.json"
        cmd = [sys.executable, "-m", "pytest", *nodes, "-q", "-p", "no:cacheprovider",
               f"--benchmark-json={out}", f"--benchmark-timer=time.{timer}"]
        print("retrying:", " ".join(cmd), flush=True)
        r = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0 or not out.exists():
            print(r.stdout[-4000:])
            print("retry run failed: counting the regressions as confirmed")
            return {"benchmarks": []}
        return load(out)


def merge(data: dict, new: dict) -> dict:
    """`data` with the benchmarks of `new` replacing those of the same node."""
    repl = {b["fullname"]: b for b in new.get("benchmarks", [])}
    out = dict(data)
    out["benchmarks"] = [repl.pop(b["fullname"], b) for b in data["benchmarks"]] + list(repl.values())
    return out


def targets_md(data: dict):
    rows = targets(data)
    t = table([[r["target"], r["size"], r["name"], "-" if r["value"] is None else f"{r['value']:.3f}",
                f"{'<' if r.get('strict') else '<='} {r['limit']:g}",
                r["verdict"], r["note"]] for r in rows],
              ["target", "size", "mitigation", "value", "limit", "verdict", "how"])
    n_miss = sum(r["verdict"] == "MISS" for r in rows)
    return t, rows, n_miss


def summary_md(data: dict) -> str:
    """Step medians (ms) and ratio to the interleaved bare nn.LSTM reference, one column per size."""
    from bench.perf import collect, median

    cells, sizes = {}, []
    for b in collect(data).values():
        e = b["extra_info"]
        if e["kind"] not in ("step", "cellloop", "reference"):
            continue
        size = (e["hidden"], e["T"])
        if size not in sizes:
            sizes.append(size)
        med = b["stats"]["median"] * 1e3
        if e["kind"] == "reference":
            cells[(e["name"] + " (alone)", size)] = f"{med:.1f}"
        else:
            cells[(e["name"], size)] = f"{med:.1f} ({b['stats']['median'] / median(e['ref_times']):.2f})"
            ref = cells.setdefault(("ref:nn.LSTM (interleaved)", size), [])
            ref.extend(e["ref_times"])
    sizes.sort(key=lambda s: (s[1], s[0]))
    for k, v in list(cells.items()):
        if isinstance(v, list):
            cells[k] = f"{median(v) * 1e3:.1f}"
    names = list(dict.fromkeys(k[0] for k in cells))
    names.sort(key=lambda n: (not n.startswith("ref:"), n))
    rows = [[n] + [cells.get((n, s), "-") for s in sizes] for n in names]
    return table(rows, ["step"] + [f"h{h} T{T}: ms (x LSTM)" for h, T in sizes])


def extra_of(data: dict, key: str, default=None):
    """The first benchmark's non-empty extra_info[key] (they all run in one session), else default."""
    for b in data.get("benchmarks", []):
        v = (b.get("extra_info") or {}).get(key)
        if v:
            return v
    return default


def malloc_of(data: dict) -> str:
    return extra_of(data, "malloc", "default")


def device_of(data: dict) -> str:
    """"cpu" or "cuda" (the device type the benchmarks ran on; results without it are CPU's)."""
    return extra_of(data, "device", "cpu").split(":")[0]


def cpu_kind(brand: str) -> str:
    """The kind of CPU a baseline holds for: vendor and line ("AMD EPYC", "Intel Xeon", "Apple M2").
    Ratios differ between kinds (their kernels favour different code: rnn+tbptt:20 at h64 T=100
    measured 0.36x the fused LSTM on an Intel Xeon, 0.26x on AMD EPYC), much less within one."""
    b = re.sub(r"\((R|TM|tm|r)\)", "", brand or "")
    m = re.search(r"\b(AMD)\s+(EPYC|Ryzen|Threadripper|Opteron)", b) or \
        re.search(r"\b(Intel)\b.*?\b(Xeon|Core|Atom|Celeron|Pentium)", b) or re.search(r"\b(Apple)\s+(M\d+)", b)
    if m:
        return f"{m.group(1)} {m.group(2)}"
    words = b.split()
    return " ".join(words[:2]) if words else "unknown CPU"


def read_baseline(path: Path, quiet: bool = False) -> Optional[dict]:
    """A baseline file's content, or None -- after saying on stderr why it cannot be used (missing or
    not JSON, not an object, "ratios" not an object of numbers), unless quiet."""
    try:
        b = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        why = f"cannot read the baseline {path}: {e}"
        b = None
    else:
        ratios_ = b.get("ratios") if isinstance(b, dict) else None
        if isinstance(ratios_, dict) and all(isinstance(v, (int, float)) for v in ratios_.values()):
            return b
        why = (f"{path} is not a baseline of perf/check.py (a JSON object whose \"ratios\" maps each ratio's key "
               "to a number)")
    if not quiet:
        print(f"perf/check.py: {why}", file=sys.stderr)
    return None


def _default_baseline() -> dict:
    """perf/baseline.json, or {} where there is none or it is not a baseline (then reported where
    it is checked against)."""
    return read_baseline(BASELINE, quiet=True) or {}


def cpu_baseline_path(kind: str, default: dict) -> Path:
    """Where the baseline of a CPU kind lives: perf/baseline.json (`default`, as read) if it is that
    kind's (or there is none yet), else perf/baseline-<kind>.json."""
    default_cpu = (default.get("measured") or {}).get("cpu")
    if default_cpu is None or cpu_kind(default_cpu) == kind:
        return BASELINE
    return BASELINE.with_name(f"baseline-{re.sub(r'[^a-z0-9]+', '-', kind.lower()).strip('-')}.json")


def default_tolerance(dev: str, default: dict) -> float:
    """For a baseline that states none (a new one): a CPU baseline takes perf/baseline.json's
    (`default`; the same noisy kind of machine, another CPU), anything else DEFAULT_TOL."""
    return float(default.get("tolerance", DEFAULT_TOL)) if dev == "cpu" else DEFAULT_TOL


def timer_of(data: dict) -> str:
    for b in data.get("benchmarks", []):
        return b.get("options", {}).get("timer", "perf_counter")
    return "perf_counter"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("result", nargs="?", help="pytest-benchmark JSON (--benchmark-json) of perf/test_perf.py")
    ap.add_argument("--baseline", default=None,
                    help="baseline of ratios (default: this kind of CPU's, perf/baseline.json or "
                         "perf/baseline-<kind>.json; for GPU results perf/baseline-cuda.json)")
    ap.add_argument("--tolerance", type=float, default=None,
                    help=f"allowed relative growth of a ratio (default: the baseline's, else {DEFAULT_TOL})")
    ap.add_argument("--no-retry", action="store_true", help="fail at once, do not re-run regressed measurements")
    ap.add_argument("--save-baseline", action="store_true",
                    help="write the result's ratios into the baseline (merged with its other keys) and exit")
    ap.add_argument("--replace", action="store_true", help="with --save-baseline: drop the keys not in the result")
    ap.add_argument("--keep-larger", action="store_true",
                    help="with --save-baseline: keep, per ratio, the larger of the baseline's and the result's (a "
                         "baseline that holds on several machines, whose CPUs favour different kernels; every save "
                         "is listed under history)")
    ap.add_argument("--keys-matching", metavar="REGEX", default=None,
                    help="with --save-baseline: write only the result's ratios whose key matches REGEX (Python re, "
                         "searched), replacing their values; the other keys keep theirs (re-baseline the mitigations "
                         "an intended change sped up or slowed down, keep the rest)")
    ap.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="compare B against A (two commits)")
    ap.add_argument("--report", default=str(REPORT), help="where to write the markdown results (default perf/last_results.md)")
    ap.add_argument("--summary", action="store_true", help="print the table of step medians and exit")
    ap.add_argument("--fail-on-miss", action="store_true", help="also exit 1 when an absolute target is missed")
    a = ap.parse_args(argv)
    if a.tolerance is not None and not (math.isfinite(a.tolerance) and a.tolerance >= 0):
        print(f"perf/check.py: --tolerance must be a finite number >= 0 (the allowed relative growth of a ratio: "
              f"0.35 = 35%), got {a.tolerance}", file=sys.stderr)
        return 2

    if a.compare:
        A, B = load(a.compare[0]), load(a.compare[1])
        tol = a.tolerance if a.tolerance is not None else DEFAULT_TOL
        ra, rb = ratios(A), ratios(B)
        if device_of(A) != device_of(B):
            print(f"perf/check.py: A was measured on {device_of(A)}, B on {device_of(B)}: ratios of different "
                  "devices are not comparable", file=sys.stderr)
            return 2
        ka, kb = cpu_kind(cpu_brand(A)), cpu_kind(cpu_brand(B))
        if ka != kb:
            print(f"WARNING: A was measured on {ka}, B on {kb}: ratios differ between "
                  "kinds of CPU (see cpu_kind); compare two commits on one machine")
        if malloc_of(A) != malloc_of(B):
            print(f"WARNING: A was measured with malloc={malloc_of(A)}, B with malloc={malloc_of(B)}: "
                  "T=1000 ratios are not comparable (see README)")
        rows, bad = compare_rows(rb, {k: v["value"] for k, v in ra.items()}, tol)
        print(f"B = {a.compare[1]} (commit {B.get('commit_info', {}).get('id', '?')[:10]}) against "
              f"A = {a.compare[0]} (commit {A.get('commit_info', {}).get('id', '?')[:10]}), tolerance {tol:.0%}")
        print(table(rows, ["ratio", "B median ms", "B ref ms", "B", "A", "change", "verdict"]))
        print(f"\n{len(bad)} regressed: {', '.join(bad)}" if bad else "\nno regression")
        return 1 if bad else 0

    if not a.result:
        ap.print_usage()
        print("perf/check.py: give a result JSON, or --compare A.json B.json", file=sys.stderr)
        return 2
    data = load(a.result)
    if a.summary:
        print(summary_md(data))
        return 0
    cur = ratios(data)
    if not collect(data):
        print(f"perf/check.py: {a.result} holds no benchmark of perf/test_perf.py", file=sys.stderr)
        return 2
    dev = device_of(data)
    brand = cpu_brand(data)
    kind = cpu_kind(brand)
    default = _default_baseline()
    if a.baseline:
        bpath = Path(a.baseline)
        if not bpath.exists() and not a.save_baseline:
            known = sorted(str(p.relative_to(ROOT)) for p in BASELINE.parent.glob("baseline*.json"))
            print(f"perf/check.py: no baseline at {bpath} (baselines here: {', '.join(known) or 'none'}); "
                  "leave out --baseline to check against this kind of CPU's, or create this one with: "
                  f"python perf/check.py {a.result} --save-baseline --baseline {bpath}", file=sys.stderr)
            return 2
    else:  # CPU results: the baseline of this kind of CPU (perf/baseline.json or perf/baseline-<kind>.json)
        bpath = cpu_baseline_path(kind, default) if dev == "cpu" else BASELINE_CUDA
        if dev == "cpu" and not bpath.exists() and not a.save_baseline:
            print(f"NOTE: no baseline for {kind} CPUs yet ({bpath.relative_to(ROOT)}): checking against "
                  f"{BASELINE.relative_to(ROOT)}, measured on another kind of CPU, whose ratios can differ by more "
                  f"than the tolerance; save this kind's with: python perf/check.py {a.result} --save-baseline")
            bpath = BASELINE
    if bpath == BASELINE and default:
        baseline = default
    else:
        baseline = read_baseline(bpath) if bpath.exists() else {"ratios": {}}
        if baseline is None:
            return 2
    bdev = (baseline.get("measured") or {}).get("device", "cpu" if baseline.get("ratios") else dev)
    if bdev != dev:
        print(f"perf/check.py: {a.result} was measured on {dev}, the baseline {bpath} on {bdev}; "
              f"compare like with like (GPU results: {BASELINE_CUDA.relative_to(ROOT)})", file=sys.stderr)
        return 2
    tol = a.tolerance if a.tolerance is not None else baseline.get("tolerance", default_tolerance(dev, default))

    if a.save_baseline:
        if a.replace and a.keep_larger:
            print("perf/check.py: --replace and --keep-larger exclude each other", file=sys.stderr)
            return 2
        if a.keys_matching is not None:
            if a.replace or a.keep_larger:
                print("perf/check.py: --keys-matching excludes --replace and --keep-larger", file=sys.stderr)
                return 2
            try:
                pat = re.compile(a.keys_matching)
            except re.error as e:
                print(f"perf/check.py: --keys-matching {a.keys_matching!r} is not a regular expression: {e}",
                      file=sys.stderr)
                return 2
            cur = {k: v for k, v in cur.items() if pat.search(k)}
            if not cur:
                print(f"perf/check.py: no ratio of {a.result} matches --keys-matching {a.keys_matching!r}; "
                      "baseline unchanged", file=sys.stderr)
                return 2
        old = dict(baseline.get("ratios", {}))
        new = {} if a.replace else dict(old)
        for k, v in cur.items():
            new[k] = round(max(v["value"], old[k]) if a.keep_larger and k in old else v["value"], 4)
        measured = {"date": datetime.date.today().isoformat(),
                    "commit": data.get("commit_info", {}).get("id"),
                    "timer": timer_of(data),
                    "malloc": malloc_of(data),
                    "device": dev,
                    "device_name": extra_of(data, "device_name"),
                    "cpu": kind if brand else None,
                    "cpu_brand": brand or None,
                    "quick": recorded_quick(data),
                    "note": "2 shared CPU cores, noisy; torch.set_num_threads(1)" if dev == "cpu"
                            else "GPU; torch.set_num_threads(1) on the host"}
        if a.keys_matching is not None:
            how = f"--keys-matching {a.keys_matching!r}: {len(cur)} ratios replaced, the other {len(new) - len(cur)} kept"
        elif a.keep_larger:
            raised = sum(1 for k, v in cur.items() if k in old and v["value"] > old[k])
            how = f"--keep-larger: {raised} of {len(cur)} ratios raised, the rest kept"
        else:
            how = f"{'--replace' if a.replace else 'saved'}: {len(cur)} ratios written" + (
                "" if a.replace or not old else f", {len(new) - len(cur)} other keys kept")
        # one entry per save, oldest first: what was measured where, and how it entered the baseline
        history = list(baseline.get("history") or []) if (old and not a.replace) else []
        history.append({"date": measured["date"], "commit": (measured["commit"] or "?")[:10],
                        "cpu": measured["cpu"], "quick": measured["quick"], "how": how})
        baseline = {
            "about": BASELINE_ABOUT,
            "tolerance": tol,
            "measured": measured,
            "history": history,
            "ratios": dict(sorted(new.items())),
        }
        bpath.write_text(json.dumps(baseline, indent=1) + "\n")
        print(f"wrote {len(cur)} ratios to {bpath} ({len(new)} in all)")
        return 0

    bm = baseline.get("measured", {}).get("malloc", "default")
    if baseline.get("ratios") and malloc_of(data) != bm:
        print(f"perf/check.py: {a.result} was measured with malloc={malloc_of(data)} but the baseline with "
              f"malloc={bm}; their ratios are not comparable. Run with BENCH_PERF_MALLOC={bm.split()[0]}, "
              "or give another --baseline.", file=sys.stderr)
        return 2
    base = baseline.get("ratios", {})
    if not base:
        print(f"perf/check.py: no baseline at {bpath} yet: every ratio is new, nothing can regress; save one with "
              f"python perf/check.py {a.result} --save-baseline{'' if a.baseline is None else ' --baseline ' + str(bpath)}")
    rows, bad = compare_rows(cur, base, tol)
    retried = ()
    if bad and not a.no_retry:
        print(table(rows, HEAD))
        nodes = sorted({n for k in bad for n in cur[k]["nodes"]})
        print(f"\n{len(bad)} ratio(s) beyond {tol:.0%}: {', '.join(bad)}; re-running {len(nodes)} measurement(s) once")
        data = merge(data, rerun(nodes, timer_of(data), recorded_quick(data), extra_of(data, "device")))
        cur2 = ratios(data)
        for k in bad:  # a retry that did not produce the key keeps the first value
            cur[k] = cur2.get(k, cur[k])
        retried = tuple(bad)
        rows, bad = compare_rows(cur, base, tol, retried)

    missing = sorted(set(base) - set(cur))
    bcpu = (baseline.get("measured") or {}).get("cpu")
    print(f"\nregression check: {len(cur)} ratios against {bpath.name} (tolerance {tol:.0%}, clock {timer_of(data)}, "
          f"malloc {malloc_of(data)}, device {dev}" + (f", CPU {kind}, baseline's {cpu_kind(bcpu)}" if dev == "cpu" and bcpu else "") + ")")
    print(table(rows, HEAD))
    if missing:
        print(f"({len(missing)} baseline ratios not measured in this run, e.g. full-mode sizes: not checked)")

    tmd, trows, n_miss = targets_md(data)
    print(f"\nabsolute targets (reported; {n_miss} MISS of {len(trows)}):")
    print(tmd)
    commit = data.get("commit_info", {})
    md = [f"# Performance results ({data.get('datetime', '')})", "",
          f"commit {commit.get('id', '?')}{' (dirty)' if commit.get('dirty') else ''}, clock `{timer_of(data)}`, "
          f"malloc `{malloc_of(data)}`, device `{dev}`, "
          f"result `{a.result}`, machine shared and noisy.", "",
          "## Absolute targets", "", tmd, "",
          "## Step medians (ms) and ratio to the interleaved bare nn.LSTM step", "", summary_md(data), "",
          f"## Ratios against the baseline (tolerance {tol:.0%})", "", table(rows, HEAD), ""]
    Path(a.report).write_text("\n".join(md))
    print(f"\nwrote {a.report}")
    if bad:
        print(f"\nFAIL: {len(bad)} ratio(s) regressed beyond {tol:.0%} of the baseline"
              f"{'' if a.no_retry else ' after one retry'}: {', '.join(bad)}")
        return 1
    if a.fail_on_miss and n_miss:
        print(f"\nFAIL (--fail-on-miss): {n_miss} absolute target(s) missed")
        return 1
    print("\nOK: no ratio regressed beyond the tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
