"""The issue's eleven claims, each judged from the results table with a stated test.

Every verdict is 'supported', 'contradicted' or 'inconclusive', with the reason and the numbers
(p-value or interval). Thresholds are the module constants below; the report prints them.
Analyses use the runs of the chosen learning rate per (task, length, mitigation) (`lr_chosen`),
except claims 5 and 11, which are about divergence and use every run (pairs matched on lr).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
from scipy import stats

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
NOT_MEASURED = "not measured in this sweep"

# -- verdict thresholds (printed in the report) ---------------------------------------------------
ALPHA = 0.05  # one-sided significance level of the exact (Fisher's, stratified) and sign tests
MIN_RUNS = 3  # fewer runs than this in an arm: inconclusive
N_BOOT = 2000  # bootstrap resamples
BOOT_SEED = 20240611  # numpy Generator seed (plus the claim number): reproducible intervals
R2_MIN = 0.8  # claim 1: median R^2 of the log-linear fit for "exponential"
DECAY_RATE_RATIO = 0.5  # claim 3: LSTM per-step decay rate at most this fraction of the RNN's
FORGET_GATE_MIN = 0.8  # claim 3: median trained forget-gate mean at least this ("near 1")
EXPLODE_FACTOR_RUN = 1.05  # claim 11: a single run's per-step factor above this is exploding
SPIKE_RATIO = 100.0  # claim 11: grad-norm max / median at least this is a spike
LSTM_LIKE_MARGIN = 0.2  # claim 6: IRNN success rate within this of the LSTM's (and not significantly lower)
MAJORITY = 0.5  # success rate at which a mitigation "solves" a cell in the summary sentences

THRESHOLDS = {
    "ALPHA": (ALPHA, "one-sided significance level (exact tests stratified by cell, sign test)"),
    "MIN_RUNS": (MIN_RUNS, "fewest runs per compared arm; fewer gives 'inconclusive'"),
    "N_BOOT": (N_BOOT, "bootstrap resamples for 95% percentile intervals"),
    "BOOT_SEED": (BOOT_SEED, "seed of numpy.random.default_rng (+ claim number)"),
    "R2_MIN": (R2_MIN, "claim 1: median R² of ln‖∂L/∂h_t‖ vs distance needed to call the decay exponential"),
    "DECAY_RATE_RATIO": (DECAY_RATE_RATIO, "claim 3: LSTM decay rate −ln(factor) at most this × the tanh RNN's"),
    "FORGET_GATE_MIN": (FORGET_GATE_MIN, "claim 3: median forget-gate mean after training at least this"),
    "EXPLODE_FACTOR_RUN": (EXPLODE_FACTOR_RUN, "claim 11: a run's per-step factor above this counts as exploding"),
    "SPIKE_RATIO": (SPIKE_RATIO, "claim 11: grad-norm max/median at least this counts as a spike"),
    "LSTM_LIKE_MARGIN": (LSTM_LIKE_MARGIN, "claim 6: IRNN success rate at least LSTM's minus this"),
    "MAJORITY": (MAJORITY, "success rate at which a mitigation counts as solving a cell (summary text)"),
}


@dataclass
class Claim:
    number: int
    title: str
    test: str
    verdict: str = INCONCLUSIVE
    reason: str = NOT_MEASURED
    evidence: Optional[pd.DataFrame] = None
    figures: List[str] = field(default_factory=list)

    def as_dict(self) -> Dict:
        return {"number": self.number, "title": self.title, "test": self.test, "verdict": self.verdict,
                "reason": self.reason}


# -- statistics ------------------------------------------------------------------------------------
def _rng(n: int) -> np.random.Generator:
    return np.random.default_rng(BOOT_SEED + n)


def _finite(x) -> np.ndarray:
    a = np.asarray(pd.to_numeric(pd.Series(x), errors="coerce"), dtype=float)
    return a[np.isfinite(a)]


def boot_median(x, rng) -> Tuple[float, float, float]:
    """Median and its bootstrap 95% percentile interval."""
    a = _finite(x)
    if a.size == 0:
        return (np.nan, np.nan, np.nan)
    idx = rng.integers(0, a.size, (N_BOOT, a.size))
    meds = np.median(a[idx], axis=1)
    return float(np.median(a)), float(np.quantile(meds, 0.025)), float(np.quantile(meds, 0.975))


def boot_median_diff(a, b, rng) -> Tuple[float, float, float]:
    """median(a) - median(b) with a bootstrap 95% interval (groups resampled independently)."""
    a, b = _finite(a), _finite(b)
    if a.size == 0 or b.size == 0:
        return (np.nan, np.nan, np.nan)
    ma = np.median(a[rng.integers(0, a.size, (N_BOOT, a.size))], axis=1)
    mb = np.median(b[rng.integers(0, b.size, (N_BOOT, b.size))], axis=1)
    d = ma - mb
    return float(np.median(a) - np.median(b)), float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))


CELL = ("p_task", "p_length")  # the strata of the exact tests: one (task, length) cell each


def exact_greater(strata) -> float:
    """One-sided exact p-value that arm 1's success rate exceeds arm 2's, stratified: `strata` is a
    list of (s1, n1, s2, n2), one per cell. Given each cell's margins, arm 1's successes in it are
    hypergeometric under the null (one rate per cell for both arms); p = P(their sum >= the
    observed sum), from the exact convolution of those laws -- the exact conditional test of a
    common odds ratio of 1. One cell: Fisher's exact test. Cells differ in difficulty (a length
    nobody solves, one everybody solves), so arms are compared within each cell, never on counts
    pooled across cells, where those would dilute or, Simpson-like, reverse the difference. Cells
    with an empty arm carry no information and are left out; none left: nan."""
    dist, observed, used = np.ones(1), 0, 0
    for s1, n1, s2, n2 in strata:
        s1, n1, s2, n2 = int(s1), int(n1), int(s2), int(n2)
        if n1 == 0 or n2 == 0:
            continue
        k = s1 + s2
        lo, hi = max(0, k - n2), min(n1, k)
        law = np.zeros(hi + 1)
        law[lo:] = stats.hypergeom.pmf(np.arange(lo, hi + 1), n1 + n2, k, n1)
        dist, observed, used = np.convolve(dist, law), observed + s1, used + 1
    if not used:
        return float("nan")
    return float(min(1.0, dist[observed:].sum()))  # one-sided: the observed sum and every larger one


def significant(p: float) -> bool:
    """p strictly below ALPHA. A p equal to ALPHA up to floating-point rounding is not: 3 seeds
    against 3 in one cell give exactly 1/20, computed here as 0.05000000000000001 (another scipy
    could round it below 0.05), and a verdict must not hinge on the last bit."""
    return bool(np.isfinite(p) and p < ALPHA * (1 - 1e-9))


def exact_both(st) -> Tuple[float, float]:
    """exact_greater of `st` both ways: (arm 1 better, arm 2 better)."""
    return exact_greater(st), exact_greater([(s2, n2, s1, n1) for s1, n1, s2, n2 in st])


def strata(a: pd.DataFrame, b: pd.DataFrame, col_a: str = "solved", col_b: str = "solved",
           by=CELL) -> List[Tuple[int, int, int, int]]:
    """(successes, runs) of arm a and of arm b per cell (`by`) measured for both."""
    ga = a.groupby(list(by))[col_a].agg(["sum", "count"]).add_suffix("_a")
    gb = b.groupby(list(by))[col_b].agg(["sum", "count"]).add_suffix("_b")
    both = ga.join(gb, how="inner")
    return [(r.sum_a, r.count_a, r.sum_b, r.count_b) for r in both.itertuples()]


def fp(p: float) -> str:
    return "p = n/a" if not np.isfinite(p) else (f"p = {p:.3g}" if p >= 1e-4 else "p < 1e-4")


def fci(m, lo, hi, digits: int = 3) -> str:
    return f"{m:.{digits}g} [95% CI {lo:.{digits}g}, {hi:.{digits}g}]"


def frac(s: int, n: int) -> str:
    return f"{int(s)}/{int(n)}"


# -- subsets -------------------------------------------------------------------------------------
def trained(df: pd.DataFrame) -> pd.DataFrame:
    """Runs that trained (no errors, no unreadable files)."""
    return df[df["outcome"].isin(["solved", "unsolved", "diverged"]) & df["p_task"].notna()]


def chosen(df: pd.DataFrame) -> pd.DataFrame:
    t = trained(df)
    return t[t["lr_chosen"]] if "lr_chosen" in t else t


def strip_modifiers(name: str, mods) -> str:
    parts = str(name).split("+")
    return "+".join([parts[0]] + [p for p in parts[1:] if p.split(":")[0] not in mods])


def common_cells(a: pd.DataFrame, b: pd.DataFrame, longest: bool = False) -> List[Tuple[str, int]]:
    """(task, length) cells measured for both; with longest=True only the longest per task."""
    ca = set(zip(a["p_task"], a["p_length"]))
    cb = set(zip(b["p_task"], b["p_length"]))
    cells = sorted(ca & cb, key=lambda c: (str(c[0]), int(c[1])))
    if longest:
        best: Dict[str, int] = {}
        for t, L in cells:
            best[t] = max(best.get(t, L), L)
        cells = sorted(best.items())
    return cells


def in_cells(d: pd.DataFrame, cells) -> pd.DataFrame:
    keys = set(cells)
    return d[[(t, L) in keys for t, L in zip(d["p_task"], d["p_length"])]]


def _success_table(groups: Dict[str, pd.DataFrame], cells) -> pd.DataFrame:
    rows = []
    for t, L in cells:
        row = {"task": t, "length": int(L)}
        for label, d in groups.items():
            dd = d[(d["p_task"] == t) & (d["p_length"] == L)]
            row[f"{label} solved"] = frac(dd["solved"].sum(), len(dd))
        rows.append(row)
    return pd.DataFrame(rows)


def _nothing_solved(C: pd.DataFrame, cells) -> bool:
    return not in_cells(C, cells)["solved"].any()


# -- the claims ----------------------------------------------------------------------------------
def claim_1(df) -> Claim:
    c = Claim(1, "tanh RNN gradients vanish exponentially with the distance between the loss and the time step",
              f"Per run, ln‖∂L/∂h_t‖ at init is fitted linearly against the distance d = t_loss − t; the "
              f"per-step factor is exp(slope). Bootstrap 95% interval of the median factor over 'rnn' runs "
              f"(all tasks and lengths); supported if its upper end < 1 and the median R² ≥ {R2_MIN}; "
              f"contradicted if its lower end ≥ 1.", figures=["gradient_profile", "decay_vs_length"])
    r = chosen(df)
    r = r[(r["m_name"] == "rnn") & np.isfinite(r["decay_factor_init"])]
    if r.empty:
        return c
    c.evidence = (r.groupby(["p_task", "p_length"]).agg(
        runs=("decay_factor_init", "size"), median_factor=("decay_factor_init", "median"),
        median_R2=("decay_r2_init", "median"), median_reach_log10=("reach_log10_init", "median"))
        .reset_index().rename(columns={"p_task": "task", "p_length": "length"}))
    if len(r) < MIN_RUNS:
        c.reason = f"fewer than {MIN_RUNS} runs ({len(r)})"
        return c
    m, lo, hi = boot_median(r["decay_factor_init"], _rng(1))
    r2 = float(np.nanmedian(r["decay_r2_init"])) if r["decay_r2_init"].notna().any() else np.nan
    nums = f"median per-step factor {fci(m, lo, hi)} over {len(r)} runs; median R² = {r2:.2f}"
    if hi < 1 and np.isfinite(r2) and r2 >= R2_MIN:
        c.verdict, c.reason = SUPPORTED, f"{nums}: geometric decay, ln-profile linear in distance"
    elif lo >= 1:
        c.verdict, c.reason = CONTRADICTED, f"{nums}: the gradient does not shrink with distance"
    elif hi < 1:
        c.reason = f"{nums}: it shrinks, but the log-linear fit is poor (R² < {R2_MIN}): not clearly exponential"
    else:
        c.reason = f"{nums}: the interval includes 1"
    return c


def claim_2(df) -> Claim:
    c = Claim(2, "With a recurrent matrix 'W_rec < 1' gradients vanish; '> 1' they explode",
              "tanh RNN runs with the radius:r modifier (spectral radius r at init). Bootstrap 95% interval of "
              "the median per-step factor at init, per side of 1. Supported if r < 1 runs vanish (upper end < 1) "
              "and r > 1 runs explode (lower end > 1, or at least half of them diverge); contradicted if r < 1 runs "
              "do not vanish or r > 1 runs still vanish. Pascanu et al. 2013: radius < 1 is sufficient for "
              "vanishing, > 1 only necessary for exploding (tanh saturation can still make gradients vanish).",
              figures=["radius_decay"])
    r = chosen(df)
    r = r[(r["m_family"] == "rnn_tanh") & np.isfinite(r["m_radius"])]
    if r.empty:
        return c
    c.evidence = (r.groupby(["m_radius"]).agg(
        runs=("outcome", "size"), median_factor_init=("decay_factor_init", "median"),
        median_spectral_radius_init=("spectral_radius_init", "median"), diverged=("diverged", "sum"),
        solved=("solved", "sum")).reset_index().rename(columns={"m_radius": "radius"}))
    below, above = r[r["m_radius"] < 1], r[r["m_radius"] > 1]
    if len(below) < MIN_RUNS or len(above) < MIN_RUNS:
        c.reason = (NOT_MEASURED + " (needs radius < 1 and radius > 1 runs)" if below.empty or above.empty
                    else f"fewer than {MIN_RUNS} runs on a side of 1 ({len(below)} below, {len(above)} above)")
        return c
    rng = _rng(2)
    mb, lb, hb = boot_median(below["decay_factor_init"], rng)
    ma, la, ha = boot_median(above["decay_factor_init"], rng)
    div_frac = above["diverged"].mean()
    nums = (f"radius < 1: median factor {fci(mb, lb, hb)} ({len(below)} runs); radius > 1: {fci(ma, la, ha)} "
            f"({len(above)} runs, {int(above['diverged'].sum())} diverged)")
    vanish_below = hb < 1
    explode_above = (la > 1) or div_frac >= 0.5
    if vanish_below and explode_above:
        c.verdict, c.reason = SUPPORTED, nums
    elif np.isfinite(lb) and lb >= 1:
        c.verdict, c.reason = CONTRADICTED, f"{nums}: radius < 1 runs do not vanish"
    elif ha < 1 and above["diverged"].sum() == 0:
        c.verdict = CONTRADICTED
        c.reason = (f"{nums}: radius > 1 runs still vanish — tanh saturation; > 1 is only necessary for "
                    f"exploding (Pascanu et al. 2013)")
    else:
        c.reason = f"{nums}: intervals include 1"
    return c


def claim_3(df) -> Claim:
    c = Claim(3, "LSTM's additive cell state keeps gradients alive (much smaller per-step decay than the tanh RNN; "
                 "forget gate near 1)",
              f"'lstm' vs 'rnn' on (task, length) cells measured for both. Decay rate = −ln(per-step factor), from "
              f"the profile at init (the architecture's effect, before what each model learned confounds it; the "
              f"end-of-training values are shown too). Bootstrap 95% interval of median rate(rnn) − median "
              f"rate(lstm); supported if its lower end > 0, the LSTM's median rate ≤ {DECAY_RATE_RATIO} × the RNN's, "
              f"and the LSTM's median forget-gate mean after training ≥ {FORGET_GATE_MIN} (a mean over all steps "
              f"and units: a proxy for 'where memory is needed'); contradicted if the upper end < 0.",
              figures=["gradient_profile", "decay_vs_length", "gate_means"])
    C = chosen(df)
    lstm, rnn = C[C["m_name"] == "lstm"], C[C["m_name"] == "rnn"]
    cells = common_cells(lstm, rnn)
    if not cells:
        return c
    lstm, rnn = in_cells(lstm, cells), in_cells(rnn, cells)
    rows = []
    for (t, L) in cells:
        a = lstm[(lstm["p_task"] == t) & (lstm["p_length"] == L)]
        b = rnn[(rnn["p_task"] == t) & (rnn["p_length"] == L)]
        rows.append({"task": t, "length": int(L), "rnn factor init": b["decay_factor_init"].median(),
                     "lstm factor init": a["decay_factor_init"].median(),
                     "rnn factor end": b["decay_factor_end"].median(), "lstm factor end": a["decay_factor_end"].median(),
                     "lstm forget gate init": a["gate_mean_init"].median(),
                     "lstm forget gate end": a["gate_mean_end"].median()})
    c.evidence = pd.DataFrame(rows)
    ra, rb = -lstm["decay_slope_init"], -rnn["decay_slope_init"]
    na, nb = len(_finite(ra)), len(_finite(rb))
    if na < MIN_RUNS or nb < MIN_RUNS:
        c.reason = f"fewer than {MIN_RUNS} runs with gradient profiles (lstm {na}, rnn {nb})"
        return c
    d, lo, hi = boot_median_diff(rb, ra, _rng(3))
    med_a, med_b = float(np.median(_finite(ra))), float(np.median(_finite(rb)))
    end_a, end_b = _finite(-lstm["decay_slope_end"]), _finite(-rnn["decay_slope_end"])
    end = (f"; after training: rnn {np.median(end_b):.3g}, lstm {np.median(end_a):.3g}"
           if end_a.size and end_b.size else "")
    gate = float(np.nanmedian(lstm["gate_mean_end"])) if lstm["gate_mean_end"].notna().any() else np.nan
    nums = (f"decay rate per step at init: rnn {med_b:.3g}, lstm {med_a:.3g}, difference {fci(d, lo, hi)}{end}; "
            f"lstm forget-gate mean after training {gate:.3g}")
    ratio_ok = med_a <= DECAY_RATE_RATIO * med_b if med_b > 0 else False
    if lo > 0 and ratio_ok and np.isfinite(gate) and gate >= FORGET_GATE_MIN:
        c.verdict, c.reason = SUPPORTED, nums
    elif hi < 0:
        c.verdict, c.reason = CONTRADICTED, f"{nums}: the LSTM's gradient decays faster"
    elif lo > 0 and ratio_ok:
        c.reason = f"{nums}: gradients decay much less, but the forget-gate mean is below {FORGET_GATE_MIN}"
    elif lo > 0:
        c.reason = f"{nums}: less decay, but not {DECAY_RATE_RATIO}× less"
    else:
        c.reason = f"{nums}: the interval includes 0"
    return c


def claim_4(df) -> Claim:
    c = Claim(4, "LSTM and GRU solve long-dependency tasks that a tanh RNN cannot",
              f"Success counts at the longest length per task measured for both the arm and 'rnn'; exact test "
              f"stratified by task (Fisher's exact test within each, combined exactly), one-sided (arm > rnn), "
              f"α = {ALPHA}, for 'lstm' and 'gru' separately. "
              f"Supported if every measured arm is significant; contradicted if the RNN is significantly better.",
              figures=["success_vs_length", "success_heatmap"])
    C = chosen(df)
    rnn = C[C["m_name"] == "rnn"]
    results, tables, cells_all = [], [], []
    for arm in ("lstm", "gru"):
        a = C[C["m_name"] == arm]
        cells = common_cells(a, rnn, longest=True)
        if not cells:
            continue
        cells_all += cells
        aa, rr = in_cells(a, cells), in_cells(rnn, cells)
        sa, na, sr, nr = int(aa["solved"].sum()), len(aa), int(rr["solved"].sum()), len(rr)
        results.append((arm, sa, na, sr, nr, *exact_both(strata(aa, rr))))
        t = _success_table({arm: a, "rnn": rnn}, cells)
        t.insert(2, "arm", arm)
        tables.append(t.rename(columns={f"{arm} solved": "arm solved"}))
    if not results:
        return c
    c.evidence = pd.concat(tables, ignore_index=True)
    if any(na < MIN_RUNS or nr < MIN_RUNS for _, _, na, _, nr, _, _ in results):
        c.reason = f"fewer than {MIN_RUNS} runs in an arm at the longest length"
        return c
    nums = "; ".join(f"{arm} {frac(sa, na)} vs rnn {frac(sr, nr)}, {fp(p)}" for arm, sa, na, sr, nr, p, _ in results)
    missing = [a for a in ("lstm", "gru") if a not in [r[0] for r in results]]
    note = f" ({', '.join(missing)} {NOT_MEASURED})" if missing else ""
    if _nothing_solved(C, set(cells_all)):
        c.reason = f"budget too small: no mitigation solved the task at the longest length ({nums})"
    elif all(significant(p) for *_, p, _ in results):
        c.verdict, c.reason = SUPPORTED, nums + note
    elif any(significant(prev) for *_, prev in results):
        c.verdict, c.reason = CONTRADICTED, f"{nums}: the tanh RNN does significantly better"
    elif all(sa == 0 for _, sa, *_ in results):
        c.reason = f"{nums}: the gated models do not solve the longest length either (budget or lengths)"
    elif all(sr / nr >= MAJORITY for _, _, _, sr, nr, _, _ in results):
        c.reason = f"{nums}: the tanh RNN solves the longest length too: lengths too short to separate them"
    else:
        c.reason = f"{nums}: not significant at α = {ALPHA}" + note
    return c


def claim_5(df) -> Claim:
    c = Claim(5, "Gradient clipping prevents divergence from exploding gradients",
              f"Every run with clipnorm or clipvalue is paired with its recipe without clipping at the same task, "
              f"length, optimizer and learning rate (all lrs). Exact test on divergence counts stratified by (task, "
              f"length, optimizer, lr, recipe) (Fisher's within each, combined exactly), one-sided (unclipped "
              f"diverges more), α = {ALPHA}. Inconclusive when nothing diverged unclipped.",
              figures=["grad_norms"])
    T = trained(df)
    clip = T[T["m_clipnorm"].notna() | T["m_clipvalue"].notna()].copy()
    if clip.empty:
        return c
    clip["_base"] = [strip_modifiers(n, ("clipnorm", "clipvalue")) for n in clip["m_name"]]
    key = ["p_task", "p_length", "optimizer_used", "lr_used"]
    pairs = clip[key + ["_base", "m_name"]].drop_duplicates()
    rows, d_cl, d_un = [], [], []
    for _, p in pairs.iterrows():
        m = np.ones(len(T), bool)
        for k in key:
            m &= (T[k] == p[k]).fillna(False).to_numpy()
        base = T[m & (T["m_name"] == p["_base"]).to_numpy()]
        cl = T[m & (T["m_name"] == p["m_name"]).to_numpy()]
        if base.empty or cl.empty:
            continue
        d_cl.append(cl)
        d_un.append(base)
        rows.append({"task": p["p_task"], "length": int(p["p_length"]), "optimizer": p["optimizer_used"],
                     "lr": p["lr_used"],
                     "clipped": p["m_name"], "diverged clipped": frac(cl["diverged"].sum(), len(cl)),
                     "unclipped": p["_base"], "diverged unclipped": frac(base["diverged"].sum(), len(base)),
                     "frac steps clipped": cl["frac_clipped"].median()})
    if not rows:
        c.reason = NOT_MEASURED + " (no clipped run has an unclipped counterpart)"
        return c
    c.evidence = pd.DataFrame(rows)
    cl = pd.concat(d_cl).drop_duplicates("record_path")
    un = pd.concat(d_un).drop_duplicates("record_path")
    d1, n1, d0, n0 = int(cl["diverged"].sum()), len(cl), int(un["diverged"].sum()), len(un)
    # one stratum per unclipped recipe and setting: all its clipped variants against it, each run once
    cl = cl.assign(_recipe=[strip_modifiers(n, ("clipnorm", "clipvalue")) for n in cl["m_name"]])
    un = un.assign(_recipe=un["m_name"])
    p = exact_greater(strata(un, cl, "diverged", "diverged", by=("p_task", "p_length", "optimizer_used", "lr_used",
                                                                 "_recipe")))
    nums = f"diverged: unclipped {frac(d0, n0)}, clipped {frac(d1, n1)}; {fp(p)}"
    if n0 < MIN_RUNS or n1 < MIN_RUNS:
        c.reason = f"fewer than {MIN_RUNS} runs ({nums})"
    elif d0 == 0:
        c.reason = f"nothing diverged without clipping ({nums}): no exploding gradients to prevent"
    elif significant(p):
        c.verdict, c.reason = SUPPORTED, nums
    elif d1 / n1 >= d0 / n0:
        c.verdict, c.reason = CONTRADICTED, f"{nums}: clipped runs diverge as often"
    else:
        c.reason = f"{nums}: fewer divergences with clipping, not significant at α = {ALPHA}"
    return c


def claim_6(df) -> Claim:
    c = Claim(6, "ReLU with identity init (IRNN) reaches LSTM-like results on the adding problem",
              f"IRNN runs (recipe irnn, with or without clipping) vs 'lstm' on adding, at the lengths "
              f"measured for both. Supported if the IRNN's success rate ≥ the LSTM's − {LSTM_LIKE_MARGIN} and "
              f"the exact test stratified by length (Fisher's within each, combined exactly; one-sided, LSTM > "
              f"IRNN) is not significant at α = {ALPHA}; contradicted if it is.",
              figures=["success_heatmap", "time_to_solve"])
    C = chosen(df)
    C = C[C["p_task"] == "adding"]
    irnn = C[(C["m_recipe"] == "irnn") & C["m_tbptt"].isna() & C["m_radius"].isna()]
    lstm = C[C["m_name"] == "lstm"]
    cells = common_cells(irnn, lstm)
    if not cells:
        return c
    irnn, lstm = in_cells(irnn, cells), in_cells(lstm, cells)
    t = _success_table({"irnn": irnn, "lstm": lstm}, cells)
    t["irnn median steps to solve"] = [irnn[(irnn["p_length"] == L)]["steps_to_solve"].median() for L in t["length"]]
    t["lstm median steps to solve"] = [lstm[(lstm["p_length"] == L)]["steps_to_solve"].median() for L in t["length"]]
    c.evidence = t
    si, ni, sl, nl = int(irnn["solved"].sum()), len(irnn), int(lstm["solved"].sum()), len(lstm)
    p = exact_greater(strata(lstm, irnn))
    nums = f"irnn {frac(si, ni)} vs lstm {frac(sl, nl)} solved; {fp(p)} (LSTM better)"
    if ni < MIN_RUNS or nl < MIN_RUNS:
        c.reason = f"fewer than {MIN_RUNS} runs ({nums})"
    elif sl == 0:
        c.reason = f"budget too small: the LSTM did not solve adding at the lengths measured ({nums})"
    elif significant(p):
        c.verdict, c.reason = CONTRADICTED, nums
    elif si / ni >= sl / nl - LSTM_LIKE_MARGIN:
        c.verdict, c.reason = SUPPORTED, nums
    else:
        c.reason = f"{nums}: lower rate, not significant"
    return c


def claim_7(df) -> Claim:
    c = Claim(7, "Orthogonal initialization lets a tanh RNN learn longer dependencies",
              f"'rnn_orth' vs 'rnn' success counts in the (task, length) cells measured for both; exact test "
              f"stratified by cell (Fisher's within each, combined exactly), one-sided, α = {ALPHA}. Supported "
              f"if rnn_orth is significantly better, "
              f"contradicted if rnn is.", figures=["success_vs_length", "decay_vs_length"])
    C = chosen(df)
    o, r = C[C["m_name"] == "rnn_orth"], C[C["m_name"] == "rnn"]
    cells = common_cells(o, r)
    if not cells:
        return c
    o, r = in_cells(o, cells), in_cells(r, cells)
    t = _success_table({"rnn_orth": o, "rnn": r}, cells)
    t["rnn_orth factor init"] = [o[(o["p_task"] == a) & (o["p_length"] == b)]["decay_factor_init"].median()
                                 for a, b in cells]
    t["rnn factor init"] = [r[(r["p_task"] == a) & (r["p_length"] == b)]["decay_factor_init"].median() for a, b in cells]
    c.evidence = t
    so, no, sr, nr = int(o["solved"].sum()), len(o), int(r["solved"].sum()), len(r)
    p, prev = exact_both(strata(o, r))
    nums = f"rnn_orth {frac(so, no)} vs rnn {frac(sr, nr)} solved; {fp(p)}"
    if no < MIN_RUNS or nr < MIN_RUNS:
        c.reason = f"fewer than {MIN_RUNS} runs ({nums})"
    elif _nothing_solved(C, cells):
        c.reason = f"budget too small: no mitigation solved these cells ({nums})"
    elif significant(p):
        c.verdict, c.reason = SUPPORTED, nums
    elif significant(prev):
        c.verdict, c.reason = CONTRADICTED, f"{nums}: the default-init RNN does significantly better"
    elif so == 0 and sr == 0:
        c.reason = f"{nums}: neither solves any cell measured"
    else:
        c.reason = f"{nums}: not significant at α = {ALPHA}"
    return c


NORM_PAIRS = (("bn_rnn", "rnn"), ("ln_rnn", "rnn"), ("bn_lstm", "lstm"), ("ln_lstm", "lstm"))


def claim_8(df) -> Claim:
    c = Claim(8, "Batch normalization and layer normalization help against vanishing gradients",
              f"Each normalized recipe vs its un-normalized counterpart on cells measured for both: bootstrap 95% "
              f"interval of the difference of median decay rates (−ln factor, at init; plain − normalized), and "
              f"an exact test on success counts stratified by cell (Fisher's within each, combined exactly; "
              f"one-sided, α = {ALPHA}). A pair helps if the interval is "
              f"above 0 or success is significantly higher; hurts on the reverse. Supported if every measured pair "
              f"helps, contradicted if every measured pair hurts.", figures=["decay_vs_length", "success_heatmap"])
    C = chosen(df)
    rows, verdicts = [], []
    rng = _rng(8)
    for norm, base in NORM_PAIRS:
        a, b = C[C["m_name"] == norm], C[C["m_name"] == base]
        cells = common_cells(a, b)
        if not cells:
            continue
        a, b = in_cells(a, cells), in_cells(b, cells)
        ra, rb = -a["decay_slope_init"], -b["decay_slope_init"]
        d, lo, hi = boot_median_diff(rb, ra, rng)
        sa, na, sb, nb = int(a["solved"].sum()), len(a), int(b["solved"].sum()), len(b)
        p, prev = exact_both(strata(a, b))
        if na < MIN_RUNS or nb < MIN_RUNS:
            v = "too few runs"
        else:
            helps = (np.isfinite(lo) and lo > 0) or significant(p)
            hurts = (np.isfinite(hi) and hi < 0) or significant(prev)
            v = "mixed" if helps and hurts else "helps" if helps else "hurts" if hurts else "no clear effect"
        verdicts.append((norm, base, v))
        rows.append({"normalized": norm, "plain": base, "cells": len(cells),
                     "decay rate plain": float(np.median(_finite(rb))) if len(_finite(rb)) else np.nan,
                     "decay rate normalized": float(np.median(_finite(ra))) if len(_finite(ra)) else np.nan,
                     "factor end plain": b["decay_factor_end"].median(),
                     "factor end normalized": a["decay_factor_end"].median(),
                     "rate difference [95% CI]": fci(d, lo, hi) if np.isfinite(d) else "n/a",
                     "solved normalized": frac(sa, na), "solved plain": frac(sb, nb),
                     "exact p (normalized better)": p, "pair": v})
    if not rows:
        return c
    c.evidence = pd.DataFrame(rows)
    measured = [v for v in verdicts if v[2] != "too few runs"]
    summary = "; ".join(f"{n} vs {b}: {v}" for n, b, v in verdicts)
    if not measured:
        c.reason = f"fewer than {MIN_RUNS} runs in every pair ({summary})"
    elif all(v == "helps" for *_, v in measured):
        c.verdict, c.reason = SUPPORTED, summary
    elif all(v == "hurts" for *_, v in measured):
        c.verdict, c.reason = CONTRADICTED, summary
    else:
        c.reason = f"mixed or no clear effect ({summary})"
    return c


def claim_9(df) -> Claim:
    c = Claim(9, "Truncated BPTT is cheaper per step but cannot learn dependencies longer than its truncation",
              f"Runs with tbptt:k vs the same recipe without it, same cells. Cost: bootstrap 95% interval of the "
              f"median log(step time ratio), paired by (task, length, seed); cheaper if the upper end < 0, judged "
              f"on tasks with the loss on the last step only. Learning: in cells whose shortest dependency "
              f"exceeds k, contradicted if any truncated run solved; supported if none did and the untruncated "
              f"model did significantly better (exact test stratified by cell, one-sided, α = {ALPHA}). How "
              f"truncation runs here: one update per sequence, the state detached every k steps counted from "
              f"the end. With the loss on "
              f"the last step only (readout 'last', e.g. adding) the steps before the last chunk run without "
              f"autograd and the backward covers k steps: the saving the claim is about. With a loss on every "
              f"step (readout 'all', e.g. copy) every step is still backpropagated once, each gradient path at "
              f"most k steps long -- the same backward work as untruncated -- so those pairs are shown, not "
              f"judged.", figures=["step_time"])
    C = chosen(df)
    tb = C[C["m_tbptt"].notna()].copy()
    if tb.empty:
        return c
    tb["_base"] = [strip_modifiers(n, ("tbptt",)) for n in tb["m_name"]]
    key = ["p_task", "p_length", "p_seed"]
    full = C[C["m_name"].isin(set(tb["_base"]))]
    pairs = tb.merge(full, left_on=key + ["_base"], right_on=key + ["m_name"], suffixes=("", "_full"))
    if pairs.empty:
        c.reason = NOT_MEASURED + " (no truncated run has an untruncated counterpart)"
        return c
    last = (pairs["t_readout"] == "last").to_numpy(bool) if "t_readout" in pairs else np.ones(len(pairs), bool)
    lr = np.log(pairs["ms_step"] / pairs["ms_step_full"])
    judged, shown = lr[last], lr[~last]
    m, lo, hi = boot_median(judged, _rng(9)) if len(judged) else (np.nan, np.nan, np.nan)
    long = pairs[pairs["t_min_dependency"] > pairs["m_tbptt"]]
    st, nt = int(long["solved"].sum()), len(long)
    sf, nf = int(long["solved_full"].sum()), len(long)
    p = exact_greater(strata(long, long, "solved_full", "solved"))
    rows = []
    for (t, L, name, base), g in pairs.groupby(["p_task", "p_length", "m_name", "_base"]):
        rows.append({"task": t, "length": int(L), "truncated": name, "untruncated": base,
                     "shortest dependency": g["t_min_dependency"].iloc[0], "k": g["m_tbptt"].iloc[0],
                     "solved truncated": frac(g["solved"].sum(), len(g)),
                     "solved untruncated": frac(g["solved_full"].sum(), len(g)),
                     "ms/step truncated": g["ms_step"].median(), "ms/step untruncated": g["ms_step_full"].median()})
    c.evidence = pd.DataFrame(rows)
    cost = (f"loss on the last step: step time ratio truncated/untruncated {np.exp(m):.3g} [95% CI "
            f"{np.exp(lo):.3g}, {np.exp(hi):.3g}] over {len(judged)} pairs" if np.isfinite(m) else
            "no pair with the loss on the last step only (truncation saves no backward work when every step "
            "has a loss)" if not len(judged) else "no step times")
    other = ""
    if len(shown) and np.isfinite(shown).any():
        m2, lo2, hi2 = boot_median(shown, _rng(9))
        other = (f"; with a loss on every step (shown, not judged) {np.exp(m2):.3g} [95% CI {np.exp(lo2):.3g}, "
                 f"{np.exp(hi2):.3g}] over {len(shown)} pairs")
    learn = f"dependency > k: truncated {frac(st, nt)}, untruncated {frac(sf, nf)} solved, {fp(p)}"
    enough = len(judged) >= MIN_RUNS
    cheaper, dearer = enough and np.isfinite(hi) and hi < 0, enough and np.isfinite(lo) and lo > 0
    if len(pairs) < MIN_RUNS:
        c.reason = f"fewer than {MIN_RUNS} paired runs ({cost})"
        return c
    if nt == 0:
        learn_v, learn = INCONCLUSIVE, "no cell with a dependency longer than k"
    elif st > 0:
        learn_v = CONTRADICTED
        learn += ": a truncated run learned a dependency longer than k"
    elif sf == 0:
        learn_v, learn = INCONCLUSIVE, learn + ": the untruncated model fails too (budget too small)"
    elif significant(p):
        learn_v = SUPPORTED
    else:
        learn_v, learn = INCONCLUSIVE, learn + f": not significant at α = {ALPHA}"
    cost_v = SUPPORTED if cheaper else CONTRADICTED if dearer else INCONCLUSIVE
    verdict_words = ("cheaper" if cheaper else "dearer" if dearer else "no clear difference" if enough
                     else f"fewer than {MIN_RUNS} such pairs")
    reason = (f"cost {cost_v}: {cost}{f' ({verdict_words})' if len(judged) else ''}{other}; "
              f"learning {learn_v}: {learn}")
    if cost_v == SUPPORTED and learn_v == SUPPORTED:
        c.verdict = SUPPORTED
    elif CONTRADICTED in (cost_v, learn_v):
        c.verdict = CONTRADICTED
    c.reason = reason
    return c


def claim_10(df) -> Claim:
    c = Claim(10, "GRU is simpler and faster than LSTM",
              "Parameter count of the recurrence (structural: 3 gate blocks vs 4). Step time: log(ms per step GRU / "
              "LSTM) paired by (task, length, seed), bootstrap 95% interval of the median; sign test (binomial, "
              "two-sided) on the pairs. Supported if the upper end < 0, contradicted if the lower end > 0. "
              "Measured on this machine; CPU kernels differ from GPU ones, and the step time measures the "
              "implementation that ran (named in the result, from the records' recurrence_backend).",
              figures=["step_time"])
    C = chosen(df)
    g, l = C[C["m_name"] == "gru"], C[C["m_name"] == "lstm"]
    key = ["p_task", "p_length", "p_seed"]
    pairs = g.merge(l, on=key, suffixes=("_gru", "_lstm"))
    pairs = pairs[np.isfinite(pairs["ms_step_gru"]) & np.isfinite(pairs["ms_step_lstm"])]
    if pairs.empty:
        return c
    ratio = np.log(pairs["ms_step_gru"] / pairs["ms_step_lstm"])
    c.evidence = (pairs.assign(ratio=np.exp(ratio)).groupby(["p_task", "p_length"]).agg(
        pairs=("ratio", "size"), gru_ms=("ms_step_gru", "median"), lstm_ms=("ms_step_lstm", "median"),
        median_ratio=("ratio", "median"), params_gru=("n_params_rec_gru", "first"),
        params_lstm=("n_params_rec_lstm", "first")).reset_index()
        .rename(columns={"p_task": "task", "p_length": "length"}))
    if len(pairs) < MIN_RUNS:
        c.reason = f"fewer than {MIN_RUNS} paired runs"
        return c
    m, lo, hi = boot_median(ratio, _rng(10))
    k = int((ratio < 0).sum())
    p = float(stats.binomtest(k, len(ratio), 0.5).pvalue)
    prm = float(np.nanmedian(pairs["n_params_rec_gru"] / pairs["n_params_rec_lstm"]))
    nums = (f"parameter ratio GRU/LSTM {prm:.3g}; step time ratio {np.exp(m):.3g} [95% CI {np.exp(lo):.3g}, "
            f"{np.exp(hi):.3g}]; GRU faster in {k}/{len(ratio)} pairs, sign test {fp(p)}{_backends(pairs)}")
    if hi < 0:
        c.verdict, c.reason = SUPPORTED, nums
    elif lo > 0:
        c.verdict, c.reason = CONTRADICTED, f"{nums}: fewer parameters, but slower per step here"
    else:
        c.reason = f"{nums}: the interval includes 1"
    return c


def _backends(pairs) -> str:
    """'; GRU ran on native-avx2, LSTM on torch' from the records (empty for records without it)."""
    names = []
    for m in ("gru", "lstm"):
        col = f"prov_backend_{m}"
        vals = sorted(pairs[col].dropna().astype(str).unique()) if col in pairs else []
        names.append(f"{m.upper()} on {'/'.join(vals)}" if vals else "")
    return "; ran: " + ", ".join(n for n in names if n) if any(names) else ""


def claim_11(df) -> Claim:
    c = Claim(11, "LSTM does not rule out exploding gradients",
              f"Every LSTM-family run (all lrs): exploding if its per-step factor at init or end > "
              f"{EXPLODE_FACTOR_RUN}, it diverged, or its grad-norm max / median ≥ {SPIKE_RATIO:g}. An existence "
              f"claim: supported by any such run; never contradicted by a finite sweep (inconclusive when none).",
              figures=["grad_norms"])
    T = trained(df)
    L = T[T["m_family"] == "lstm"]
    if L.empty:
        return c
    factor = L[["decay_factor_init", "decay_factor_end"]].max(axis=1) > EXPLODE_FACTOR_RUN
    spike = (L["grad_norm_max"] / L["grad_norm_median"]) >= SPIKE_RATIO
    div = L["diverged"]
    c.evidence = (L.assign(exploding_factor=factor, spike=spike).groupby("m_name").agg(
        runs=("outcome", "size"), exploding_factor=("exploding_factor", "sum"), diverged=("diverged", "sum"),
        spikes=("spike", "sum"), max_factor=("decay_factor_end", "max"),
        max_gn_ratio=("grad_norm_max", lambda s: float(np.nanmax(s / L.loc[s.index, "grad_norm_median"]))
                      if len(s) else np.nan)).reset_index().rename(columns={"m_name": "mitigation"}))
    nf, nd, ns = int(factor.sum()), int(div.sum()), int(spike.sum())
    nums = (f"{len(L)} LSTM-family runs: {nf} with factor > {EXPLODE_FACTOR_RUN}, {nd} diverged, "
            f"{ns} with grad-norm spikes ≥ {SPIKE_RATIO:g}× median")
    if nf + nd + ns > 0:
        c.verdict, c.reason = SUPPORTED, nums
    else:
        c.reason = f"{nums}: no exploding LSTM run in this sweep (absence of evidence)"
    return c


CLAIMS: List[Callable[[pd.DataFrame], Claim]] = [claim_1, claim_2, claim_3, claim_4, claim_5, claim_6, claim_7,
                                                 claim_8, claim_9, claim_10, claim_11]


def evaluate_claims(df: pd.DataFrame) -> List[Claim]:
    """Judge every claim; a claim whose evaluation fails is reported inconclusive with the error,
    never silently dropped."""
    if "lr_chosen" not in df:
        from .aggregate import mark_lr_chosen

        df = mark_lr_chosen(df)
    out = []
    for fn in CLAIMS:
        try:
            out.append(fn(df))
        except Exception as e:  # a bug in one claim must not hide the others; the reason shows it
            n = int(fn.__name__.split("_")[1])
            out.append(Claim(n, fn.__doc__ or fn.__name__, "", INCONCLUSIVE,
                             f"evaluation failed: {type(e).__name__}: {e}"))
    return out
