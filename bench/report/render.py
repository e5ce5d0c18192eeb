"""runs.parquet (+ the config used, + jobs.csv) -> one self-contained HTML report and one PNG per figure.

The report is a pure function of the results table: nothing is trained or read besides the
table, for provenance the config file and, for the pipeline overhead, the per-job timings
(jobs.csv; without it the report says the overhead cannot be computed). Figures are embedded as base64 PNG; the page has no
external CSS, scripts or fonts.
"""
from __future__ import annotations

import base64
import datetime
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape

from . import claims as C
from .aggregate import JOB_OK, JOB_TOOK_BACK, lr_table, mark_lr_chosen, overhead_summary, summarize
from .figures import CAPTIONS, FIGURE_NAMES, make_figures, mitigation_order

SECTION_IDS = ("summary", "success", "time-to-solve", "gradient-flow", "gradient-norms", "timings", "claims",
               "provenance")
TEMPLATES = Path(__file__).parent / "templates"


# -- formatting ------------------------------------------------------------------------------
def _fmt(v, digits=3):
    if v is None or (isinstance(v, float) and not np.isfinite(v)) or v is pd.NA:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else ""
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}" if abs(int(v)) >= 10000 else str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if v == int(v) and abs(v) < 1e6:
            return str(int(v))
        return f"{v:.{digits}g}"
    try:
        if pd.isna(v):
            return "–"
    except (TypeError, ValueError):
        pass
    return str(v)


def html_table(df: Optional[pd.DataFrame], digits: int = 3, cls: str = "tbl", max_rows: int = 400) -> str:
    """A DataFrame as an escaped HTML table with compact number formatting."""
    if df is None or df.empty:
        return '<p class="muted">(no rows)</p>'
    d = df.head(max_rows).copy()
    d = d.astype(object).apply(lambda col: col.map(lambda v: _fmt(v, digits)))
    out = d.to_html(index=False, escape=True, classes=cls, border=0)
    if len(df) > max_rows:
        out += f'<p class="muted">… {len(df) - max_rows} more rows in results/summary.csv</p>'
    return out


# -- tables -------------------------------------------------------------------------------------
def _n(k: int, word: str, plural: str = None) -> str:
    return f"{k} {word if k == 1 else (plural or word + 's')}"


def _rate(s, n):
    return f"{int(s)}/{int(n)}" if n else "–"


def success_table(summary: pd.DataFrame) -> pd.DataFrame:
    s = summary[summary["lr_chosen"] & summary["task"].notna()].copy()
    if s.empty:
        return s
    s["trained"] = s["n"] - s["n_error"]
    s["success [95% Wilson]"] = [f"{r:.2f} [{lo:.2f}, {hi:.2f}]" if np.isfinite(r) else "–"
                                 for r, lo, hi in zip(s["success_rate"], s["success_lo"], s["success_hi"])]
    s["_o"] = [mitigation_order(s["mitigation"]).index(m) for m in s["mitigation"]]
    s = s.sort_values(["task", "length", "_o"])
    return s[["task", "length", "mitigation", "optimizer", "lr", "n", "n_solved", "n_unsolved", "n_diverged", "n_error",
              "success [95% Wilson]", "median_steps_to_solve", "median_loss_ratio", "median_decay_init",
              "median_decay_end", "median_ms_step"]].rename(columns={
                  "n_solved": "solved", "n_unsolved": "unsolved", "n_diverged": "diverged", "n_error": "error",
                  "median_steps_to_solve": "median steps to solve", "median_loss_ratio": "median loss / baseline",
                  "median_decay_init": "decay factor init", "median_decay_end": "decay factor end",
                  "median_ms_step": "ms/step"})


def headline_table(D: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Mitigation x task: success at the longest length, the longest length solved (majority of
    seeds), and cost at the longest length."""
    s = summary[summary["lr_chosen"] & summary["task"].notna() & ((summary["n"] - summary["n_error"]) > 0)]
    if s.empty:
        return pd.DataFrame()
    rows = []
    for m in mitigation_order(s["mitigation"]):
        row = {"mitigation": m}
        ms = []
        for t in sorted(s["task"].unique()):
            st = s[s["task"] == t]
            L = st["length"].max()
            cell = st[(st["mitigation"] == m) & (st["length"] == L)]
            solved = st[(st["mitigation"] == m) & (st["success_rate"] >= C.MAJORITY)]
            row[f"{t} @ {L}"] = (_rate(cell["n_solved"].iloc[0], cell["n"].iloc[0] - cell["n_error"].iloc[0])
                                 if len(cell) else "–")
            row[f"{t}: longest solved"] = int(solved["length"].max()) if len(solved) else "none"
            if len(cell):
                ms.append(cell["median_ms_step"].iloc[0])
        dm = D[D["m_name"] == m]
        row["ms/step (median at longest lengths)"] = float(np.nanmedian(ms)) if ms and np.isfinite(ms).any() else np.nan
        row["decay factor init (median)"] = dm["decay_factor_init"].median()
        row["decay factor end (median)"] = dm["decay_factor_end"].median()
        rows.append(row)
    return pd.DataFrame(rows)


def _closest(st: pd.DataFrame) -> str:
    """For a task no mitigation solved: which came closest at its shortest length, by the median
    held-out loss over the baseline (a model that learnt nothing scores about 1); '' if unknown."""
    L = st["length"].min()
    at = st[st["length"] == L].dropna(subset=["median_loss_ratio"]).nsmallest(3, "median_loss_ratio")
    if at.empty:
        return ""
    parts = ", ".join(f"{m} {r:.2f}" for m, r in zip(at["mitigation"], at["median_loss_ratio"]))
    return f" Closest at length {int(L)}, by median held-out loss / baseline (1 = learnt nothing): {parts}."


def summary_sentences(D: pd.DataFrame, summary: pd.DataFrame, counts: Dict, claims) -> List[str]:
    """The answer in a few sentences, computed from the table."""
    out = []
    if D.empty:
        return ["No run trained in this sweep: there is nothing to compare (see the errors below)."]
    lengths = ", ".join(f"{t} {sorted(int(x) for x in D[D['p_task'] == t]['p_length'].unique())}"
                        for t in sorted(D["p_task"].unique()))
    out.append(f"{_n(counts['runs'], 'run')}: {counts['solved']} solved, {counts['unsolved']} unsolved, "
               f"{counts['diverged']} diverged, {_n(counts['error'], 'error')} ({_n(counts['corrupt'], 'unreadable record file')}), "
               f"over {_n(D['m_name'].nunique(), 'mitigation')} and the lengths {lengths}.")
    s = summary[summary["lr_chosen"] & summary["task"].notna() & ((summary["n"] - summary["n_error"]) > 0)]
    for t in sorted(s["task"].unique()):
        st = s[s["task"] == t]
        L = int(st["length"].max())
        at = st[st["length"] == L]
        win = at[at["success_rate"] >= C.MAJORITY]
        lose = at[at["success_rate"] < C.MAJORITY]
        budget = D[D["p_task"] == t]["p_budget"].max()
        if len(win):
            names = ", ".join(f"{m} ({_rate(a, n - e)})" for m, a, n, e in
                              zip(win["mitigation"], win["n_solved"], win["n"], win["n_error"]))
            fastest = win.sort_values("median_ms_step").iloc[0]
            fewest = win.sort_values("median_steps_to_solve").iloc[0]
            out.append(f"{t} at length {L}: solved in most seeds by {names}; not by "
                       f"{_n(len(lose), 'other mitigation')}. Cheapest per step among them: {fastest['mitigation']} "
                       f"({fastest['median_ms_step']:.3g} ms); fewest steps: {fewest['mitigation']} (median "
                       f"{fewest['median_steps_to_solve']:.0f} steps).")
        else:
            any_solved = st[st["success_rate"] >= C.MAJORITY]
            if len(any_solved):
                best = any_solved.sort_values("length").iloc[-1]
                out.append(f"{t} at length {L}: no mitigation solved it in most seeds within {budget:.0f} steps; "
                           f"the longest length solved was {int(best['length'])} (by "
                           f"{', '.join(any_solved[any_solved['length'] == best['length']]['mitigation'])}).")
            else:
                out.append(f"{t}: no mitigation solved it at any length within {budget:.0f} steps, so this sweep "
                           f"cannot rank the mitigations on it (a larger budget, hidden size or shorter lengths "
                           f"might).{_closest(st)}")
    L = D[D["p_length"] == D.groupby("p_task")["p_length"].transform("max")]
    fac = L.groupby("m_name")["decay_factor_init"].median().dropna()
    if len(fac):
        parts = ", ".join(f"{m} {fac[m]:.2f}" for m in mitigation_order(fac.index))
        out.append(f"Why: the median per-step gradient factor at init at the longest lengths (1 = no vanishing) is "
                   f"{parts}; over 100 steps a factor f scales the gradient by f^100.")
    tally = {v: sum(c.verdict == v for c in claims) for v in (C.SUPPORTED, C.CONTRADICTED, C.INCONCLUSIVE)}
    out.append(f"Claims: {tally[C.SUPPORTED]} supported, {tally[C.CONTRADICTED]} contradicted, "
               f"{tally[C.INCONCLUSIVE]} inconclusive (section Claims).")
    return out


def errors_table(df: pd.DataFrame) -> pd.DataFrame:
    e = df[df["outcome"] == "error"]
    if e.empty:
        return e
    msg = [(str(m)[:400] + ("…" if len(str(m)) > 400 else "")) if isinstance(m, str) else m for m in e["error_message"]]
    return pd.DataFrame({"task": e["p_task"], "length": e["p_length"], "mitigation": e["p_mitigation"],
                         "seed": e["p_seed"], "error": e["error_type"], "message": msg, "record": e["record_path"]})


def lr_choice_table(df: pd.DataFrame) -> pd.DataFrame:
    t = lr_table(C.trained(df))
    t = t[t["n_lrs"] > 1]
    if t.empty:
        return t
    t = t.assign(success=[_rate(s, n) for s, n in zip(t["n_solved"], t["n"])])
    return t[["p_task", "p_length", "m_name", "optimizer_used", "lr_used", "n", "success", "median_final_loss",
              "chosen"]].rename(
        columns={"p_task": "task", "p_length": "length", "m_name": "mitigation", "optimizer_used": "optimizer",
                 "lr_used": "lr",
                 "median_final_loss": "median final held-out loss (diverged = inf)"})


def gradient_flow_table(D: pd.DataFrame) -> pd.DataFrame:
    L = D[D["p_length"] == D.groupby("p_task")["p_length"].transform("max")]
    if L.empty:
        return L
    g = L.groupby(["p_task", "p_length", "m_name"]).agg(
        runs=("outcome", "size"), factor_init=("decay_factor_init", "median"), R2_init=("decay_r2_init", "median"),
        reach_log10_init=("reach_log10_init", "median"), factor_end=("decay_factor_end", "median"),
        reach_log10_end=("reach_log10_end", "median"), zero_frac_end=("profile_zero_frac_end", "median"),
    ).reset_index()
    g["_o"] = [mitigation_order(g["m_name"]).index(m) for m in g["m_name"]]
    g = g.sort_values(["p_task", "_o"]).drop(columns="_o")
    return g.rename(columns={"p_task": "task", "p_length": "length", "m_name": "mitigation",
                             "factor_init": "decay factor init", "R2_init": "R² init",
                             "reach_log10_init": "reach log10 init", "factor_end": "decay factor end",
                             "reach_log10_end": "reach log10 end", "zero_frac_end": "zero-gradient frac end"})


def grad_norm_table(D: pd.DataFrame, df_all: pd.DataFrame) -> pd.DataFrame:
    if D.empty:
        return D
    T = C.trained(df_all)
    g = D.groupby("m_name").agg(
        runs=("outcome", "size"), gn_median=("grad_norm_median", "median"), gn_p99=("grad_norm_p99", "median"),
        gn_max=("grad_norm_max", "max"), frac_clipped=("frac_clipped", "median"), diverged=("diverged", "sum"),
        nonfinite=("nonfinite_events", "sum"), rho_init=("spectral_radius_init", "median"),
        rho_end=("spectral_radius_end", "median"), sigma_init=("sigma_max_init", "median"),
        gate_init=("gate_mean_init", "median"), gate_end=("gate_mean_end", "median")).reset_index()
    allruns = T.groupby("m_name").agg(runs_all=("outcome", "size"), diverged_all=("diverged", "sum"))
    g = g.join(allruns, on="m_name")
    g["diverged (all lrs)"] = [_rate(d, n) for d, n in zip(g["diverged_all"], g["runs_all"])]
    g = g.drop(columns=["diverged_all", "runs_all"])
    g = g.set_index("m_name").loc[mitigation_order(g["m_name"])].reset_index()
    return g.rename(columns={"m_name": "mitigation", "gn_median": "grad norm median", "gn_p99": "p99 (median)",
                             "gn_max": "max", "frac_clipped": "frac steps clipped", "diverged": "diverged (chosen lr)",
                             "nonfinite": "non-finite events", "rho_init": "spectral radius init",
                             "rho_end": "spectral radius end", "sigma_init": "σ_max init", "gate_init": "gate mean init",
                             "gate_end": "gate mean end"})


def timing_table(D: pd.DataFrame) -> pd.DataFrame:
    """Per (task, mitigation): fitted exponent of ms/step vs seq_len (log-log least squares over the
    lengths' medians), ms/step at the longest length (and how many runs it is the median of), its
    ratio to lstm's there, the fwd/bwd/opt split and the median time to solve."""
    d = D[np.isfinite(D["ms_step"])]
    if d.empty:
        return d
    rows = []
    for t in sorted(d["p_task"].unique()):
        dt = d[d["p_task"] == t]
        L = dt["p_length"].max()
        lstm_ms = dt[(dt["m_name"] == "lstm") & (dt["p_length"] == L)]["ms_step"].median()
        for m in mitigation_order(dt["m_name"]):
            dm = dt[dt["m_name"] == m]
            g = dm.groupby("t_seq_len")["ms_step"].median()
            slope = np.nan
            if len(g) >= 2:
                slope = float(np.polyfit(np.log(g.index.astype(float)), np.log(g.to_numpy(float)), 1)[0])
            at = dm[dm["p_length"] == L]
            ms = at["ms_step"].median()
            rows.append({"task": t, "mitigation": m, "lengths": len(g), "scaling exponent": slope,
                         "longest length": int(L), "ms/step": ms, "fwd ms": at["ms_fwd"].median(),
                         "bwd ms": at["ms_bwd"].median(), "opt ms": at["ms_opt"].median(),
                         "ratio to lstm": ms / lstm_ms if np.isfinite(lstm_ms) and lstm_ms > 0 else np.nan,
                         "runs": len(at),
                         "median time to solve (s)": at["time_to_solve_s"].median(),
                         "median wall per run (s)": at["wall_s"].median()})
    return pd.DataFrame(rows)


def load_jobs(jobs) -> Tuple[Optional[pd.DataFrame], str]:
    """`jobs` (a jobs.csv path, a DataFrame or None) -> (table or None, why there is none)."""
    if jobs is None:
        return None, "no job timings were given (results/jobs.csv, which the pipeline's aggregate step writes " \
                     "from Snakemake's benchmark files)"
    if isinstance(jobs, pd.DataFrame):
        return jobs, ""
    try:
        return pd.read_csv(jobs), ""
    except (OSError, ValueError) as e:
        return None, f"the job timings {jobs} could not be read ({type(e).__name__}: {e})"


def seed_group_sentence(df: pd.DataFrame) -> str:
    """How the seeds of a cell were timed: in seed groups (timing.seed_group > 1) or alone; "" when
    the records do not say (from before seed groups)."""
    sg = pd.to_numeric(df.get("seed_group", pd.Series(dtype=float)), errors="coerce").dropna()
    if sg.empty:
        return ""
    grouped = int((sg > 1).sum())
    if not grouped:
        return "Every run trained alone, one seed after the other (seed_groups: false)."
    return (f"{grouped} of {len(sg)} runs trained in seed groups (seed_groups: true, the default): the seeds of a "
            f"task and length together, in lockstep, each on its own weights (up to {int(sg.max())} at once). "
            "Their numbers are those of runs trained alone, bit for bit; each run's timings here are its own "
            "work, measured as it ran in the group.")


def overhead_sentences(o: Dict, why_none: str = "") -> List[str]:
    """The pipeline-overhead paragraph, computed from overhead_summary(); the verdict is
    share <= target ('met') or not, and says so when nothing can be counted."""
    pct = f"{o['target']:.0%}"
    if o["n_jobs"] == 0:
        return [f"The pipeline overhead cannot be computed: {why_none or 'the jobs table has no rows'}."]
    left = ", ".join(f"{n} {status}" for status, n in sorted(o["excluded"].items()))
    if o["n_used"] == 0 and set(o["excluded"]) == {JOB_TOOK_BACK}:
        return [f"The pipeline overhead cannot be computed from this sweep: each of its "
                f"{_n(o['n_jobs'], 'training job')} last ran to add runs (a new length or seed, or after an "
                f"interruption) and took its other runs back from results/.resume, so their run times were not "
                f"spent in it. A sweep trained from scratch, or rerun with --forcerun train --config "
                f"reuse_runs=false, measures it."]
    if o["n_used"] == 0:
        return [f"The pipeline overhead cannot be computed: none of the {_n(o['n_jobs'], 'training job')} has "
                f"both a Snakemake benchmark file and a run time in every record ({left}). Records copied from "
                f"elsewhere (or a benchmarks/ folder removed) carry no job timings."]
    verdict = "met" if o["met"] else "not met"
    out = [f"Pipeline overhead (shell and Python start, imports, writing the records, process exit: the time a "
           f"training job spends outside its runs): {o['overhead_s']:.1f} s of {o['job_wall_s']:.1f} s of job time "
           f"over {_n(o['n_used'], 'training job')}, a share of {o['share']:.1%} "
           f"(target at most {pct}: {verdict}). Per job: median {o['median_overhead_s']:.2f} s of overhead, mean "
           f"job {o['mean_job_wall_s']:.1f} s."]
    if np.isfinite(o["outside_loop_share"]):
        out.append(f"Stricter, everything outside the runs' training loops (adds each run's held-out data and "
                   f"model setup, imports on first use, first diagnostics snapshot and final evaluation): "
                   f"{o['outside_loop_share']:.1%} of job time.")
    if left:
        out.append(f"Left out of the share: {left} (of {_n(o['n_jobs'], 'job')}).")
    out.append("Job time is Snakemake's benchmark of each training job; Snakemake's own start and its "
               "scheduling between jobs are not in it.")
    return out


def overhead_table(jobs: Optional[pd.DataFrame], n: int = 10) -> pd.DataFrame:
    """The `n` counted jobs with the largest overhead share."""
    if jobs is None or jobs.empty:
        return pd.DataFrame()
    ok = jobs[jobs["status"] == JOB_OK].sort_values("overhead_frac", ascending=False).head(n)
    return ok[["job", "n_records", "job_wall_s", "run_wall_s", "overhead_s", "overhead_frac"]].rename(columns={
        "n_records": "runs", "job_wall_s": "job wall (s)", "run_wall_s": "runs' wall (s)", "overhead_s": "overhead (s)",
        "overhead_frac": "overhead share"})


def provenance_info(df: pd.DataFrame, config_text: Optional[str], config_path: Optional[str]) -> Dict:
    def counts(col):
        if col not in df:
            return []
        v = df[col].dropna().astype(str).value_counts()
        return [(k, int(n)) for k, n in v.items()]

    wall = float(np.nansum(df["wall_s"])) if "wall_s" in df else 0.0
    spec_vals = {}
    for c, label in (("p_hidden", "hidden units"), ("p_batch", "batch size"), ("p_budget", "budget (steps)"),
                     ("p_eval_every", "evaluation every (steps)"), ("p_heldout_size", "held-out sequences"),
                     ("optimizer_used", "optimizer"), ("p_device", "device requested"), ("device_used", "device used")):
        if c in df:
            spec_vals[label] = ", ".join(f"{k} ({n} runs)" for k, n in counts(c)) or "–"
    fin = df["prov_finished_utc"].dropna().astype(str) if "prov_finished_utc" in df else pd.Series([], dtype=str)
    return {
        "config_text": config_text, "config_path": config_path,
        "runs": len(df), "wall_h": wall / 3600, "wall_s": wall,
        "git": counts("prov_git"), "torch": counts("prov_torch"), "python": counts("prov_python"),
        "numpy": counts("prov_numpy"), "bench": counts("prov_bench"), "cpu": counts("prov_cpu"),
        "device": counts("prov_device"), "threads": counts("prov_threads"), "host": counts("prov_host"),
        "platform": counts("prov_platform"), "spec_vals": spec_vals,
        "first": fin.min() if len(fin) else "–", "last": fin.max() if len(fin) else "–",
    }


# -- the page ---------------------------------------------------------------------------------
def build_context(df: pd.DataFrame, config_text: Optional[str] = None, config_path: Optional[str] = None,
                  jobs=None, perf=None) -> Dict:
    """`jobs`: the jobs table (DataFrame), a jobs.csv path, or None (the overhead paragraph then
    says the job timings are missing). `perf`: a perf-suite JSON path or None (the engine
    benchmark paragraph then says how to get one)."""
    jobs_df, why_none = load_jobs(jobs)
    overhead = overhead_summary(jobs_df)
    if "lr_chosen" not in df:
        df = mark_lr_chosen(df)
    summary = summarize(df)
    D = C.chosen(df)
    claims = C.evaluate_claims(df)
    figs = make_figures(D, summary)
    counts = {o: int((df["outcome"] == o).sum()) for o in ("solved", "unsolved", "diverged", "error")}
    counts["runs"] = len(df)
    counts["corrupt"] = int((df["error_type"] == "CorruptRecord").sum())
    multi_hidden = D["p_hidden"].nunique() > 1 if not D.empty else False
    for c in claims:
        c.evidence_html = html_table(c.evidence)
    return {
        "title": "RNN vanishing/exploding-gradient mitigations: benchmark report",
        "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "section_ids": SECTION_IDS,
        "sentences": summary_sentences(D, summary, counts, claims),
        "counts": counts,
        "headline": html_table(headline_table(D, summary)),
        "errors": html_table(errors_table(df)),
        "n_errors": counts["error"],
        "corrupt": df[df["error_type"] == "CorruptRecord"][["record_path", "error_message"]].values.tolist(),
        "lr_table": html_table(lr_choice_table(df)),
        "has_lr_grid": not lr_choice_table(df).empty,
        "success_table": html_table(success_table(summary)),
        "gradient_table": html_table(gradient_flow_table(D)),
        "gradnorm_table": html_table(grad_norm_table(D, df)),
        "timing_table": html_table(timing_table(D)),
        "seed_groups": seed_group_sentence(df),
        "overhead": overhead,
        "overhead_sentences": overhead_sentences(overhead, why_none),
        "overhead_table": html_table(overhead_table(jobs_df)) if overhead["n_used"] else "",
        **_perf_html(perf),
        "claims": claims,
        "thresholds": [(k, v[0], v[1]) for k, v in C.THRESHOLDS.items()],
        "figs": {k: {"b64": base64.b64encode(v["png"]).decode("ascii"), "caption": v["caption"],
                     "has_data": v["has_data"]} for k, v in figs.items()},
        "fig_png": {k: v["png"] for k, v in figs.items()},
        "prov": provenance_info(df, config_text, config_path),
        "multi_hidden": multi_hidden,
        "majority_pct": int(round(C.MAJORITY * 100)),
    }


def _perf_html(perf) -> Dict:
    from .perf_section import perf_context

    c = perf_context(perf)
    return {"perf_sentences": c["perf_sentences"],
            "perf_targets": html_table(c["perf_targets"]) if c["perf_targets"] is not None else "",
            "perf_ratios": html_table(c["perf_ratios"]) if c["perf_ratios"] is not None else ""}


def render_html(ctx: Dict) -> str:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html", "j2"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = _fmt
    return env.get_template("report.html.j2").render(**ctx)


def render_report(df: pd.DataFrame, out_html, config=None, figures_dir=None, jobs=None, perf=None) -> Path:
    """Write the self-contained report to `out_html` and, if `figures_dir` is given, every figure
    as <figures_dir>/<name>.png (all of FIGURE_NAMES, placeholders included). `config` is the path
    of the config used (YAML, shown verbatim in the provenance section) or None; `jobs` the
    per-job timings (jobs.csv path or DataFrame) for the pipeline overhead, or None; `perf` a
    perf-suite JSON (pytest-benchmark) for the engine benchmark table, or None."""
    config_text, config_path = None, None
    if config is not None:
        config_path = str(config)
        try:
            config_text = Path(config).read_text()
        except OSError as e:
            config_text = f"(could not read {config}: {e})"
    ctx = build_context(df, config_text, config_path, jobs=jobs, perf=perf)
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    out_html.write_text(render_html(ctx), encoding="utf-8")
    if figures_dir is not None:
        fd = Path(figures_dir)
        fd.mkdir(parents=True, exist_ok=True)
        for name in FIGURE_NAMES:
            (fd / f"{name}.png").write_bytes(ctx["fig_png"][name])
    return out_html


__all__ = ["render_report", "build_context", "SECTION_IDS", "CAPTIONS"]
