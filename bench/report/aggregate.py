"""Run records -> one tidy row per run (runs.parquet / runs.csv) and the per-cell summary.

Columns are prefixed by origin (benchopt style): `p_*` the run spec as written, `m_*` the
mitigation's parts, `t_*` the task, `prov_*` where and with what the run was made. A record file
that cannot be read becomes a row with outcome 'error' and error_type 'CorruptRecord' naming the
file: it is never dropped, and never aggregated as if it were a run.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import numpy as np
import pandas as pd

from ..errors import BenchError
from ..records import read_record

SPEC_KEYS = ("task", "length", "mitigation", "seed", "hidden", "batch", "optimizer", "lr", "budget",
             "eval_every", "heldout_size", "probe_size", "device", "threads")
MODIFIER_KEYS = ("clipnorm", "clipvalue", "tbptt", "radius")
DIAG_KEYS = ("decay_factor", "decay_slope", "reach_log10", "profile_zero_frac", "spectral_radius",
             "sigma_max", "gate_mean")
# Columns holding one list per run: numeric arrays in parquet, JSON text in the CSV.
LIST_COLUMNS = ("profile_init", "profile_end", "grad_trace", "curve_steps", "curve_train_loss",
                "curve_heldout_loss", "curve_heldout_wrong", "curve_wall_s")
# Gate blocks of a single-layer recurrence (PyTorch layout: W_ih, W_hh, b_ih, b_hh per block).
GATE_BLOCKS = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
SUMMARY_KEYS = ["p_task", "p_length", "m_name", "optimizer_used", "lr_used"]
Z95 = 1.959963984540054


# -- small helpers -------------------------------------------------------------------------
def _num(x) -> float:
    """A float, NaN for None / non-numbers (JSON stores NaN and inf as null)."""
    if x is None or isinstance(x, bool):
        return float("nan") if x is None else float(x)
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def _floats(xs) -> List[float]:
    return [_num(v) for v in (xs or [])]


def _get(d, *path):
    for k in path:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def wilson_interval(k, n, z: float = Z95):
    """Wilson score interval for k successes in n trials (NaN, NaN when n == 0)."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        den = 1 + z ** 2 / n
        centre = (p + z ** 2 / (2 * n)) / den
        half = z * np.sqrt(p * (1 - p) / n + z ** 2 / (4 * n ** 2)) / den
        lo, hi = np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)
        lo, hi = np.where(k <= 0, 0.0, lo), np.where(k >= n, 1.0, hi)  # exact ends, no rounding residue
    lo, hi = np.where(n > 0, lo, np.nan), np.where(n > 0, hi, np.nan)
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


def fit_log_profile(profile, t_loss) -> Dict[str, float]:
    """Least-squares fit of ln||dL/dh_t|| against d = t_loss - t (d >= 1; finite nonzero steps
    only, as in bench.diagnostics.fit_decay) and its R^2: how exponential the decay is."""
    out = {"slope": float("nan"), "r2": float("nan")}
    if profile is None or not isinstance(t_loss, (int, float, np.integer)) or not np.isfinite(t_loss):
        return out
    g = np.asarray(profile, dtype=float)[: int(t_loss)]
    d = int(t_loss) - np.arange(len(g))
    ok = np.isfinite(g) & (g > 0)
    if ok.sum() < 3:
        return out
    x, y = d[ok].astype(float), np.log(g[ok])
    xm, ym = x.mean(), y.mean()
    sxx = ((x - xm) ** 2).sum()
    if sxx == 0:
        return out
    slope = ((x - xm) * (y - ym)).sum() / sxx
    resid = y - (ym + slope * (x - xm))
    syy = ((y - ym) ** 2).sum()
    out["slope"] = float(slope)
    # A perfectly flat profile has nothing to explain: R^2 is 0, not undefined.
    out["r2"] = float(1 - (resid ** 2).sum() / syy) if syy > 1e-24 else 0.0
    return out


# -- task and mitigation facts for rows whose record lacks them (error records) -------------
def _task_facts(task: Optional[str], length) -> Dict:
    """seq_len, probe window etc. from the task registry; {} when the task cannot be built."""
    if not isinstance(task, str) or length is None or (isinstance(length, float) and math.isnan(length)):
        return {}
    try:
        from ..tasks import make_task

        t = make_task(task, int(length))
    except Exception:  # an unknown task/length is itself what the error row reports
        return {}
    return {"seq_len": t.seq_len, "length_meaning": t.length_meaning, "kind": t.kind, "readout": t.readout,
            "n_in": t.n_in, "n_out": t.n_out, "success_rule": t.success_rule,
            "success_max_wrong": t.success_max_wrong, "probe_window": t.probe_window()}


def min_dependency(task: Optional[str], length, seq_len) -> float:
    """The shortest distance (in steps) between an input the target needs and the step that reads
    the target, over all sequences the generator can make; NaN where not defined (digits).
    A gradient truncated at k < this can never credit the dependency (truncated BPTT)."""
    if not isinstance(task, str) or length is None or not np.isfinite(_num(length)):
        return float("nan")
    T = int(length)
    if task in ("adding", "multiplication"):
        return float(T - T // 2)  # first marker at most at T//2 - 1, read at T - 1
    if task in ("temporal_order", "temporal_order3"):
        return float(T - math.ceil(0.2 * T))  # first relevant symbol in [0.1L, 0.2L)
    if task == "copy":
        return float(T + 10)  # symbol i at step i, recalled at T + 10 + i
    return float("nan")


def _mitigation_facts(name: Optional[str]) -> Dict:
    """Canonical name and parts of a mitigation name, for records that lack the block."""
    if not isinstance(name, str):
        return {}
    try:
        from ..models.mitigations import parse_mitigation

        mit = parse_mitigation(name)
        return {"name": mit.name, **mit.describe(), "default_lr": mit.recipe.lr,
                "default_optimizer": mit.recipe.optimizer}
    except Exception:  # a bad name is what the error row reports; keep it as written
        recipe = name.split("+")[0]
        return {"name": name, "recipe": recipe}


def n_recurrent_params(family, hidden, n_in) -> float:
    """Parameters of the recurrence (input and recurrent weights, both biases): gates x
    (H*n_in + H*H + 2H). Structural: LSTM has 4 blocks, GRU 3, a plain RNN 1."""
    blocks = GATE_BLOCKS.get(family)
    if blocks is None or not np.isfinite(_num(hidden)) or not np.isfinite(_num(n_in)):
        return float("nan")
    H, n = int(hidden), int(n_in)
    return float(blocks * (H * n + H * H + 2 * H))


# -- one record -> one row -----------------------------------------------------------------
def record_to_row(rec: Dict, path: str) -> Dict:
    """Flatten one record (see docs/RECORD.md) into one row."""
    spec = rec.get("spec") or {}
    row: Dict = {f"p_{k}": spec.get(k) for k in SPEC_KEYS}
    row["record_path"] = str(path)
    row["record_version"] = rec.get("record_version")

    mit = rec.get("mitigation") or {}
    facts = _mitigation_facts(spec.get("mitigation")) if not mit else {}
    src = mit or facts
    row["m_name"] = src.get("name") or spec.get("mitigation")
    row["m_recipe"] = src.get("recipe")
    row["m_family"] = src.get("family")
    row["m_norm"] = src.get("norm")
    row["m_init"] = src.get("init")
    for k in MODIFIER_KEYS:
        row[f"m_{k}"] = _num(src.get(k))

    task = rec.get("task") or {}
    tf = _task_facts(spec.get("task"), spec.get("length"))
    row["t_seq_len"] = task.get("seq_len", tf.get("seq_len"))
    row["t_length_meaning"] = task.get("length_meaning", tf.get("length_meaning"))
    row["t_kind"] = task.get("kind", tf.get("kind"))
    row["t_readout"] = task.get("readout", tf.get("readout"))
    row["t_n_in"] = task.get("n_in", tf.get("n_in"))
    row["t_n_out"] = task.get("n_out", tf.get("n_out"))
    row["t_success_rule"] = task.get("success_rule", tf.get("success_rule"))
    row["t_success_max_wrong"] = task.get("success_max_wrong", tf.get("success_max_wrong"))
    # First step the diagnostic loss reads (docs/RECORD.md): 10 recall steps for copy, else the last.
    window = tf.get("probe_window", 10 if spec.get("task") == "copy" else 1)
    row["t_loss"] = (row["t_seq_len"] - window) if row["t_seq_len"] is not None else None
    row["t_min_dependency"] = min_dependency(spec.get("task"), spec.get("length"), row["t_seq_len"])

    outcome = rec.get("outcome")
    row["outcome"] = outcome
    row["solved"] = outcome == "solved"
    row["diverged"] = outcome == "diverged"
    err = rec.get("error") or {}
    row["error_type"] = err.get("type")
    row["error_message"] = err.get("message")
    row["error_traceback"] = err.get("traceback")

    row["optimizer_used"] = rec.get("optimizer") or spec.get("optimizer") or facts.get("default_optimizer")
    lr = rec.get("lr", spec.get("lr"))
    if lr is None:
        lr = (facts or _mitigation_facts(spec.get("mitigation"))).get("default_lr")
    row["lr_used"] = _num(lr)
    row["device_used"] = rec.get("device")
    row["steps"] = _num(rec.get("steps"))
    row["steps_to_solve"] = _num(rec.get("steps_to_solve"))
    row["diverged_at"] = _num(rec.get("diverged_at"))

    fin, base = rec.get("final") or {}, rec.get("baseline") or {}
    row["final_loss"] = _num(fin.get("heldout_loss"))
    row["final_wrong"] = _num(fin.get("heldout_wrong"))
    row["final_accuracy"] = _num(fin.get("heldout_accuracy"))
    row["final_train_loss"] = _num(fin.get("train_loss"))
    row["baseline_loss"] = _num(base.get("loss"))
    row["baseline_wrong"] = _num(base.get("wrong"))
    row["baseline_accuracy"] = _num(base.get("accuracy"))
    with np.errstate(divide="ignore", invalid="ignore"):
        row["loss_ratio"] = (row["final_loss"] / row["baseline_loss"]
                             if row["baseline_loss"] and np.isfinite(row["baseline_loss"]) else float("nan"))

    diag = rec.get("diagnostics") or {}
    for when in ("init", "end"):
        snap = diag.get(when) or {}
        for k in DIAG_KEYS:
            row[f"{k}_{when}"] = _num(snap.get(k))
        prof = snap.get("profile")
        row[f"profile_{when}"] = _floats(prof) if prof is not None else None
        fit = fit_log_profile(row[f"profile_{when}"], row["t_loss"])
        row[f"decay_r2_{when}"] = fit["r2"]

    gn = rec.get("grad_norm") or {}
    for k in ("median", "p99", "max", "mean"):
        row[f"grad_norm_{k}"] = _num(gn.get(k))
    row["frac_clipped"] = _num(gn.get("frac_clipped"))
    row["nonfinite_events"] = _num(gn.get("nonfinite_events"))
    row["grad_trace"] = _floats(gn.get("trace")) if gn else None

    curve = rec.get("curve")
    if curve:
        for k in ("step", "train_loss", "heldout_loss", "heldout_wrong", "wall_s"):
            row[f"curve_{k}s" if k == "step" else f"curve_{k}"] = [_num(c.get(k)) for c in curve]
    else:
        for k in ("curve_steps", "curve_train_loss", "curve_heldout_loss", "curve_heldout_wrong", "curve_wall_s"):
            row[k] = None

    tm = rec.get("timing") or {}
    row["ms_step"] = _num(_get(tm, "step_ms", "median"))
    row["ms_fwd"] = _num(_get(tm, "fwd_ms", "median"))
    row["ms_bwd"] = _num(_get(tm, "bwd_ms", "median"))
    row["ms_opt"] = _num(_get(tm, "opt_ms", "median"))
    row["ms_step_mean"] = _num(_get(tm, "step_ms", "mean"))
    row["train_s"] = _num(tm.get("train_s"))
    row["eval_s"] = _num(tm.get("eval_s"))
    row["diag_s"] = _num(tm.get("diagnostics_s"))
    row["wall_s"] = _num(tm.get("wall_s"))
    row["time_to_solve_s"] = _num(tm.get("time_to_solve_s"))
    # how many runs trained together in lockstep (bench.train.train_group; 1: alone; null: a record
    # from before seed groups)
    sg = tm.get("seed_group")
    row["seed_group"] = int(sg) if isinstance(sg, (int, float)) and not isinstance(sg, bool) else None
    # the record's own count (model.n_params_recurrent); the structural count for records without one
    measured = (rec.get("model") or {}).get("n_params_recurrent")
    row["n_params_rec"] = (float(measured) if measured is not None
                           else n_recurrent_params(row["m_family"], spec.get("hidden"), row["t_n_in"]))

    prov = rec.get("provenance") or {}
    ver = prov.get("versions") or {}
    row["prov_git"] = prov.get("git_commit")
    row["prov_torch"] = ver.get("torch")
    row["prov_python"] = ver.get("python")
    row["prov_numpy"] = ver.get("numpy")
    row["prov_bench"] = ver.get("bench")
    row["prov_cpu"] = prov.get("cpu_model")
    row["prov_device"] = prov.get("device_name")
    row["prov_backend"] = prov.get("recurrence_backend")  # what ran the time loops (native kernel / torch)
    row["prov_threads"] = prov.get("threads")
    row["prov_threads_requested"] = prov.get("threads_requested")
    row["prov_host"] = prov.get("hostname")
    row["prov_platform"] = prov.get("platform")
    row["prov_finished_utc"] = prov.get("finished_utc")
    row["prov_taken_back_utc"] = prov.get("taken_back_utc")  # set when a job took the run back (bench/resume.py)
    return row


# The pipeline's record layout (workflow/rules/common.smk): .../<task>/T<length>/<mitigation>/lr-<lr>/seed<seed>.json
_PATH_SPEC = re.compile(r"(?:^|/)(?P<task>[^/]+)/T(?P<length>\d+)/(?P<mitigation>[^/]+)/lr-(?P<lr>[^/]+)/"
                        r"seed(?P<seed>\d+)\.json$")


def spec_from_path(path: str) -> Dict:
    """Best-effort spec of an unreadable record from its path in the pipeline's layout, so the
    error row lands in its cell; {} for any other layout."""
    m = _PATH_SPEC.search(str(path).replace("\\", "/"))
    if not m:
        return {}
    lr = _num(m["lr"])
    return {"task": m["task"], "length": int(m["length"]), "mitigation": m["mitigation"], "seed": int(m["seed"]),
            "lr": lr if np.isfinite(lr) else None}


def corrupt_row(path: str, message: str) -> Dict:
    """The row of a record file that could not be read: outcome 'error', error_type
    'CorruptRecord', the message naming the file; where the path follows the pipeline's layout,
    the spec read from the path puts the row in its cell."""
    rec = {"spec": spec_from_path(path), "outcome": "error",
           "error": {"type": "CorruptRecord", "message": message, "traceback": None}}
    return record_to_row(rec, path)


# -- the table -----------------------------------------------------------------------------
INT_COLUMNS = ("p_length", "p_seed", "p_hidden", "p_batch", "p_budget", "p_eval_every", "p_heldout_size",
               "p_probe_size", "p_threads", "t_seq_len", "t_n_in", "t_n_out", "t_loss", "prov_threads",
               "prov_threads_requested", "record_version", "seed_group")
FLOAT_COLUMNS = ("p_lr",)
STR_COLUMNS = ("p_task", "p_mitigation", "p_optimizer", "p_device", "m_name", "m_recipe", "m_family", "m_norm",
               "m_init", "t_length_meaning", "t_kind", "t_readout", "t_success_rule", "outcome", "error_type",
               "error_message", "error_traceback", "optimizer_used", "device_used", "record_path", "prov_git",
               "prov_torch", "prov_python", "prov_numpy", "prov_bench", "prov_cpu", "prov_device", "prov_backend", "prov_host",
               "prov_platform", "prov_finished_utc", "prov_taken_back_utc")


def _column_order(cols: Iterable[str]) -> List[str]:
    order = ["p_", "m_", "t_", "outcome", "solved", "diverged", "steps", "steps_to_solve", "diverged_at", "error_",
             "optimizer_used", "lr_used", "lr_chosen", "device_used", "final_", "baseline_", "loss_ratio"]
    cols = list(cols)

    def key(c):
        for i, pre in enumerate(order):
            if c == pre or (pre.endswith("_") and c.startswith(pre)):
                return (i, 0)
        if c.startswith("prov_"):
            return (len(order) + 2, 0)
        if c in LIST_COLUMNS:
            return (len(order) + 3, 0)
        if c == "record_path":
            return (len(order) + 4, 0)
        return (len(order) + 1, 0)

    return sorted(cols, key=lambda c: (key(c), cols.index(c)))


def tidy(rows: List[Dict]) -> pd.DataFrame:
    """Rows -> a DataFrame with stable dtypes (nullable ints, strings, floats, list columns)."""
    df = pd.DataFrame(rows)
    template = record_to_row({"spec": {}, "outcome": "error"}, "")
    missing = [c for c in template if c not in df.columns]
    if missing:  # all at once: one column at a time fragments the frame (pandas PerformanceWarning)
        df = pd.concat([df, pd.DataFrame(None, index=df.index, columns=missing, dtype=object)], axis=1)
    for c in INT_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    for c in STR_COLUMNS:
        df[c] = df[c].astype("string")
    for c in ("solved", "diverged"):
        df[c] = df[c].fillna(False).astype(bool)
    for c in df.columns:
        if c in INT_COLUMNS or c in STR_COLUMNS or c in LIST_COLUMNS or c in ("solved", "diverged", "lr_chosen"):
            continue
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    for c in LIST_COLUMNS:
        df[c] = [list(v) if isinstance(v, (list, tuple, np.ndarray)) else None for v in df[c]]
    return df[_column_order(df.columns)]


def aggregate_records(paths: Iterable, warn=None) -> pd.DataFrame:
    """Read every record file into one row per run. An unreadable file becomes a CorruptRecord
    error row and a warning naming it (on stderr by default)."""
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    rows = []
    for p in paths:
        p = str(p)
        try:
            rec = read_record(p)
        except BenchError as e:
            warn(f"{e} (kept as an error row, error_type CorruptRecord)")
            rows.append(corrupt_row(p, str(e)))
            continue
        rows.append(record_to_row(rec, p))
    if not rows:
        warn("no record files given: the results table is empty")
    df = tidy(rows)
    return mark_lr_chosen(df)


# -- learning-rate choice ----------------------------------------------------------------------
def mark_lr_chosen(df: pd.DataFrame) -> pd.DataFrame:
    """Per (task, length, mitigation), mark the runs of the learning rate with the best held-out
    result: highest success rate, ties broken by the lowest median final held-out loss (a diverged
    run counts as infinite loss; error runs are left out of both). Selection on the held-out set
    is optimistic for the chosen lr. Rows without a task (corrupt files) are never chosen."""
    df = df.copy()
    df["lr_chosen"] = False
    if df.empty:
        return df
    ok = df["outcome"].isin(["solved", "unsolved", "diverged"]) & df["p_task"].notna()
    cells = lr_table(df[ok])
    key = SUMMARY_KEYS
    chosen = cells[cells["chosen"]][key]
    merged = df[key].reset_index().merge(chosen.assign(_c=True), on=key, how="left")
    flag = merged.set_index("index")["_c"].reindex(df.index)
    df["lr_chosen"] = flag.fillna(False).astype(bool).to_numpy() & df["p_task"].notna().to_numpy()
    # A cell whose every run errored has no best lr: keep its error rows visible as 'chosen'.
    err_only = ~df.groupby(["p_task", "p_length", "m_name"], dropna=False)["outcome"].transform(
        lambda s: s.isin(["solved", "unsolved", "diverged"]).any())
    df.loc[err_only & df["p_task"].notna(), "lr_chosen"] = True
    return df


def lr_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, length, mitigation, optimizer, lr) with its success rate and median final
    loss, `chosen` marking the best (optimizer, lr) of each (task, length, mitigation)."""
    key = SUMMARY_KEYS
    if df.empty:  # typed columns: an empty object column used as a mask would be read as column labels
        return pd.DataFrame({**{k: pd.Series(dtype=object) for k in key},
                             "n": pd.Series(dtype="int64"), "n_solved": pd.Series(dtype="int64"),
                             "success_rate": pd.Series(dtype=float), "median_final_loss": pd.Series(dtype=float),
                             "chosen": pd.Series(dtype=bool), "n_lrs": pd.Series(dtype="int64")})
    d = df.assign(_loss=np.where(df["outcome"] == "diverged", np.inf, df["final_loss"].fillna(np.inf)))
    g = d.groupby(key, dropna=False)
    t = g.agg(n=("solved", "size"), n_solved=("solved", "sum"), median_final_loss=("_loss", "median")).reset_index()
    t["success_rate"] = t["n_solved"] / t["n"]
    t = t.sort_values(["p_task", "p_length", "m_name", "success_rate", "median_final_loss", "optimizer_used",
                       "lr_used"], ascending=[True, True, True, False, True, True, True], kind="mergesort")
    t["chosen"] = ~t.duplicated(["p_task", "p_length", "m_name"], keep="first")
    t["n_lrs"] = t.groupby(["p_task", "p_length", "m_name"], dropna=False)["lr_used"].transform("size")
    return t.reset_index(drop=True)


# -- the summary table ---------------------------------------------------------------------------
def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, length, mitigation, optimizer, lr): counts by outcome, the success rate over runs
    that trained (errors excluded) with its 95% Wilson interval, medians of steps-to-solve (solved
    runs), final loss ratio, decay factor at init/end and ms per step; `lr_chosen` marks the lr the
    report uses. Unreadable record files form one row with empty keys."""
    cols = ["task", "length", "mitigation", "optimizer", "lr", "lr_chosen", "n", "n_solved", "n_unsolved", "n_diverged",
            "n_error", "success_rate", "success_lo", "success_hi", "median_steps_to_solve", "median_loss_ratio",
            "median_decay_init", "median_decay_end", "median_ms_step", "family", "recipe"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    d = df.copy()
    if "lr_chosen" not in d:
        d = mark_lr_chosen(d)
    for o in ("solved", "unsolved", "diverged", "error"):
        d[f"_is_{o}"] = (d["outcome"] == o).astype(int)
    d["_sts"] = d["steps_to_solve"].where(d["solved"])
    g = d.groupby(SUMMARY_KEYS, dropna=False, sort=True)
    s = g.agg(lr_chosen=("lr_chosen", "any"), n=("outcome", "size"), n_solved=("_is_solved", "sum"),
              n_unsolved=("_is_unsolved", "sum"), n_diverged=("_is_diverged", "sum"), n_error=("_is_error", "sum"),
              median_steps_to_solve=("_sts", "median"), median_loss_ratio=("loss_ratio", "median"),
              median_decay_init=("decay_factor_init", "median"), median_decay_end=("decay_factor_end", "median"),
              median_ms_step=("ms_step", "median"), family=("m_family", "first"), recipe=("m_recipe", "first"),
              ).reset_index()
    trained = s["n"] - s["n_error"]
    s["success_rate"] = np.where(trained > 0, s["n_solved"] / trained.where(trained > 0, 1), np.nan)
    s["success_lo"], s["success_hi"] = wilson_interval(s["n_solved"], trained)
    s = s.rename(columns={"p_task": "task", "p_length": "length", "m_name": "mitigation", "optimizer_used": "optimizer",
                          "lr_used": "lr"})
    return s[cols]


# -- files ---------------------------------------------------------------------------------------
def to_csv_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The CSV view: list columns as JSON text (NaN as null)."""
    out = df.copy()
    for c in LIST_COLUMNS:
        if c in out:
            out[c] = [None if v is None or (not isinstance(v, (list, tuple, np.ndarray)) and pd.isna(v))
                      else json.dumps([x if np.isfinite(x) else None for x in map(float, v)])
                      for v in out[c]]
    return out


def write_runs(df: pd.DataFrame, parquet: Optional[str] = None, csv: Optional[str] = None) -> None:
    for p in (parquet, csv):
        if p:
            Path(p).parent.mkdir(parents=True, exist_ok=True)
    if parquet:
        df.to_parquet(parquet, index=False)
    if csv:
        to_csv_frame(df).to_csv(csv, index=False)


def read_runs(path) -> pd.DataFrame:
    """runs.parquet -> DataFrame with list columns as Python lists of floats (or None)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = pd.read_parquet(path)
    for c in LIST_COLUMNS:
        if c in df:
            df[c] = [None if v is None else [float(x) if x is not None else float("nan") for x in v] for v in df[c]]
    if "lr_chosen" not in df:
        df = mark_lr_chosen(df)
    return df


def read_records_list(path) -> List[str]:
    """The --records-list file: one record path per line (blank lines and '#' comments skipped)."""
    lines = Path(path).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


# -- pipeline overhead: one row per training job ------------------------------------------------
OVERHEAD_TARGET = 0.10  # the target: pipeline overhead at most 10% of total job time
JOB_COLUMNS = ["job", "n_records", "n_timed", "job_wall_s", "run_wall_s", "overhead_s", "overhead_frac",
               "train_loop_s", "cpu_s", "max_rss_mb", "status", "benchmark"]
JOB_OK = "ok"
JOB_NO_BENCHMARK = "no benchmark file"
JOB_UNTIMED = "record without timing"
JOB_INCONSISTENT = "runs longer than the job"
JOB_TOOK_BACK = "runs taken back from an earlier process"


def read_benchmark(path) -> Dict[str, float]:
    """Snakemake's `benchmark:` file of one job (TSV, a header and one row per repeat): the job's
    wall seconds (`s`), CPU seconds (`cpu_time`) and peak RSS (`max_rss`, MB), means over the
    rows; {} when the file is missing or unreadable."""
    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError):
        return {}
    if len(lines) < 2:
        return {}
    head = lines[0].split("\t")
    rows = [dict(zip(head, ln.split("\t"))) for ln in lines[1:]]
    out = {}
    for key, col in (("job_wall_s", "s"), ("cpu_s", "cpu_time"), ("max_rss_mb", "max_rss")):
        vals = [_num(r.get(col)) for r in rows]
        vals = [v for v in vals if np.isfinite(v)]
        if vals:
            out[key] = float(np.mean(vals))
    return out if "job_wall_s" in out else {}


def jobs_table(jobs: Iterable[Dict], runs: pd.DataFrame) -> pd.DataFrame:
    """One row per training job: `jobs` holds {"job": name, "benchmark": TSV path, "records":
    [record paths]} (the pipeline writes results/aggregate/jobs.json); `runs` is the runs table,
    whose rows are matched to the jobs by record path.

    job_wall_s is the job's wall time as Snakemake measured it (shell, Python start, imports, every
    seed's run, writing the records, exit); run_wall_s the sum of its records' timing.wall_s (each
    run from its start to its end, inside the process); overhead_s = job_wall_s - run_wall_s. A job
    that took runs back from results/.resume (bench/resume.py) did not spend their run times: it
    does not count towards the overhead share.
    train_loop_s sums the records' timing.train_s (the training loops, with the evaluations and
    diagnostics snapshots inside them; without each run's data and model setup, its first
    snapshot and its final evaluation). status says whether the row can count towards the
    overhead share: 'ok', or why not."""
    key = lambda p: os.path.normpath(str(p))  # noqa: E731
    by_path, taken_back = {}, set()
    if not runs.empty:
        for path, wall, w in zip(runs["record_path"], runs["wall_s"], runs["train_s"]):
            by_path[key(path)] = (_num(wall), _num(w))
        if "prov_taken_back_utc" in runs:
            taken_back = {key(p) for p, t in zip(runs["record_path"], runs["prov_taken_back_utc"])
                          if isinstance(t, str) and t}
    rows = []
    for j in jobs:
        recs = [by_path.get(key(p), (float("nan"), float("nan"))) for p in j.get("records") or []]
        walls = [w for w, _ in recs if np.isfinite(w)]
        works = [w for _, w in recs if np.isfinite(w)]
        bench = read_benchmark(j["benchmark"]) if j.get("benchmark") else {}
        row = {"job": j.get("job"), "n_records": len(recs), "n_timed": len(walls),
               "job_wall_s": bench.get("job_wall_s", float("nan")),
               "run_wall_s": float(sum(walls)) if walls else float("nan"),
               "train_loop_s": float(sum(works)) if len(works) == len(recs) and recs else float("nan"),
               "cpu_s": bench.get("cpu_s", float("nan")), "max_rss_mb": bench.get("max_rss_mb", float("nan")),
               "benchmark": j.get("benchmark")}
        row["overhead_s"] = row["job_wall_s"] - row["run_wall_s"] if walls else float("nan")
        if not bench:
            row["status"] = JOB_NO_BENCHMARK
        elif len(walls) < len(recs) or not recs:
            row["status"] = JOB_UNTIMED  # an error, corrupt or missing record: its run time is unknown
        elif any(key(p) in taken_back for p in j.get("records") or []):
            row["status"] = JOB_TOOK_BACK
        elif row["overhead_s"] < 0:
            row["status"] = JOB_INCONSISTENT  # benchmark and records from different runs
        else:
            row["status"] = JOB_OK
        with np.errstate(divide="ignore", invalid="ignore"):
            row["overhead_frac"] = (row["overhead_s"] / row["job_wall_s"]
                                    if row["job_wall_s"] and np.isfinite(row["job_wall_s"]) else float("nan"))
        rows.append(row)
    return pd.DataFrame(rows, columns=JOB_COLUMNS)


def overhead_summary(jobs: Optional[pd.DataFrame], target: float = OVERHEAD_TARGET) -> Dict:
    """The pipeline's overhead share over the jobs with status 'ok':
    share = sum(job_wall_s - run_wall_s) / sum(job_wall_s); `met` is share <= target, None when
    no job can be counted. outside_loop_share is the stricter sum(job_wall_s - train_loop_s) /
    sum(job_wall_s): it also counts each run's setup, first snapshot and final evaluation."""
    out = {"target": target, "n_jobs": 0, "n_used": 0, "excluded": {}, "job_wall_s": float("nan"),
           "run_wall_s": float("nan"), "overhead_s": float("nan"), "share": float("nan"),
           "outside_loop_share": float("nan"),
           "median_overhead_s": float("nan"), "mean_job_wall_s": float("nan"), "met": None}
    if jobs is None or jobs.empty:
        return out
    out["n_jobs"] = len(jobs)
    ok = jobs[jobs["status"] == JOB_OK]
    out["excluded"] = {str(k): int(v) for k, v in jobs.loc[jobs["status"] != JOB_OK, "status"].value_counts().items()}
    out["n_used"] = len(ok)
    if ok.empty:
        return out
    wall, run = float(ok["job_wall_s"].sum()), float(ok["run_wall_s"].sum())
    out.update(job_wall_s=wall, run_wall_s=run, overhead_s=wall - run,
               share=(wall - run) / wall if wall > 0 else float("nan"),
               median_overhead_s=float(ok["overhead_s"].median()), mean_job_wall_s=wall / len(ok))
    if np.isfinite(ok["train_loop_s"]).all() and wall > 0:
        out["outside_loop_share"] = float((ok["job_wall_s"] - ok["train_loop_s"]).sum()) / wall
    if np.isfinite(out["share"]):
        out["met"] = bool(out["share"] <= target)
    return out


def read_jobs_list(path) -> List[Dict]:
    """The --jobs-list file: a JSON list of {"job", "benchmark", "records"}."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, list) or not all(isinstance(j, dict) and "records" in j for j in data):
        raise BenchError(f"{path}: expected a JSON list of {{job, benchmark, records}} objects")
    return data
