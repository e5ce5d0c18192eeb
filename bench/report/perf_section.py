"""The report's engine-benchmark table: the perf suite's results (a pytest-benchmark JSON written
by `python -m pytest perf --benchmark-json=...`, see perf/README.md) turned into the issue's
targets and the tracked step ratios, when the sweep's config names one (`perf_results`) or
`render --perf` is given. Nothing here trains or times anything."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pandas as pd

SIZES = ["h64-T100", "h128-T100", "h64-T1000", "h128-T1000"]
# the suite's bare PyTorch loops (bench.perf.CELL_LOOPS), timed like the mitigations: references
BARE = {"lstmcell": "bare nn.LSTMCell loop", "rnncell": "bare nn.RNNCell loop", "nn_rnn": "bare nn.RNN loop",
        "nn_gru": "bare nn.GRU loop"}
HOW = ("run the suite (`python -m pytest perf --benchmark-json=perf/full.json "
       "--benchmark-timer=time.process_time`, about 10 minutes on 2 cores; perf/README.md) and set "
       "`perf_results: perf/full.json` in the config (or `python -m bench.report render --perf FILE`)")


def load_perf(path) -> Tuple[Optional[dict], List[dict], str]:
    """`path` (a pytest-benchmark JSON or None) -> (the JSON, its benchmarks of this suite, "") or
    (None, [], why there is none)."""
    if path is None:
        return None, [], f"no engine benchmark results were given: {HOW}"
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        return None, [], f"the engine benchmark results {path} could not be read ({type(e).__name__}: {e})"
    from ..perf import collect

    bs = list(collect(data).values()) if isinstance(data, dict) and isinstance(data.get("benchmarks"), list) else []
    if not bs:
        return None, [], (f"{path} holds no benchmarks of this suite (a pytest-benchmark JSON written by "
                          f"`python -m pytest perf --benchmark-json=FILE` is expected)")
    return data, bs, ""


def perf_source(data: dict, bs: List[dict], path) -> str:
    """Where the results come from: file, size of the run, date, commit, CPU, device, clock."""
    e0 = bs[0]["extra_info"]
    timer = (bs[0].get("options") or {}).get("timer", "?")
    from ..perf import cpu_brand, recorded_quick

    cpu = cpu_brand(data) or "an unnamed CPU"
    commit = ((data.get("commit_info") or {}).get("id") or "")[:7] or "an unknown commit"
    quick = recorded_quick(data)
    if quick is None:  # results from before the mode was recorded: quick mode measures no hidden-128 size
        quick = not any(b["extra_info"].get("hidden") == 128 for b in bs)
    return (f"From {path}: {len(bs)} benchmarks of the perf suite ({'quick' if quick else 'full'} mode), run "
            f"{str(data.get('datetime', '?'))[:16].replace('T', ' ')} UTC at commit {commit} on {cpu} "
            f"(device {e0.get('device', 'cpu')}, clock {timer}). Ratios are taken within that run against an "
            f"interleaved bare nn.LSTM training step of the same size (medians), so they hold across machines "
            f"better than the absolute times; the sweep's own timings above are not part of them.")


def targets_table(data: dict) -> pd.DataFrame:
    """One row per target of the perf issue: how many checks, their verdicts, the range measured."""
    from ..perf import TARGET_WHAT, targets

    rows = targets(data)
    out: List[Dict] = []
    for t in dict.fromkeys(r["target"] for r in rows):
        rs = [r for r in rows if r["target"] == t]
        vals = [r["value"] for r in rs if r["value"] is not None]
        verdicts = pd.Series([r["verdict"] for r in rs]).value_counts()
        lim = rs[0]["limit"]
        out.append({"target": t, "what": TARGET_WHAT.get(t.split(" S=")[0], ""), "checks": len(rs),
                    "verdicts": ", ".join(f"{n} {v}" for v, n in verdicts.items()),
                    "lowest": f"{min(vals):.3f}" if vals else None, "highest": f"{max(vals):.3f}" if vals else None,
                    "limit": f"{'<' if rs[0]['strict'] else '<='} {lim:g}",
                    "misses": ", ".join(f"{r['name']} {r['size']} ({r['value']:.3f})" for r in rs
                                        if r["verdict"] == "MISS") or "--"})
    return pd.DataFrame(out)


def ratio_table(data: dict) -> pd.DataFrame:
    """Mitigation x size: step / reference step, and the T=1000 / T=100 scaling per hidden size."""
    from ..perf import ratios

    r = ratios(data)
    names = list(dict.fromkeys(k.split("/", 2)[2] for k in r if k.startswith(("step/", "scaling/"))))
    hiddens = sorted({int(k.split("/")[1][1:]) for k in r if k.startswith("scaling/")})
    rows = []
    for m in names:
        row = {"mitigation": BARE.get(m, m)}
        for s in SIZES:
            row[f"step {s}"] = r.get(f"step/{s}/{m}", {}).get("value")
        for h in hiddens:  # the ratio and its scaling exponent log(ratio) / log(10)
            v = r.get(f"scaling/h{h}/{m}", {}).get("value")
            row[f"T=1000/T=100 h{h} (exponent)"] = f"{v:.2f} ({math.log10(v):.2f})" if v else None
        rows.append(row)
    df = pd.DataFrame(rows)
    return df.dropna(axis=1, how="all") if not df.empty else df


def perf_context(path) -> Dict:
    data, bs, why = load_perf(path)
    if data is None:
        return {"perf_sentences": [f"Engine benchmarks: {why}."], "perf_targets": None, "perf_ratios": None}
    return {"perf_sentences": [perf_source(data, bs, path)], "perf_targets": targets_table(data),
            "perf_ratios": ratio_table(data)}
