"""The report's figures: one function per name in FIGURE_NAMES, each a pure function of the
results table (the runs of the chosen learning rate). A figure without data in the sweep is a
placeholder image that says so, so every file always exists."""
from __future__ import annotations

import io
import math
import warnings
from typing import Callable, Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .captions import CAPTIONS, FIGURE_NAMES  # noqa: E402,F401  (re-exported: figures.CAPTIONS etc.)

RECIPE_ORDER = ("rnn", "rnn_orth", "irnn", "bn_rnn", "ln_rnn", "lstm", "lstm_chrono", "bn_lstm", "ln_lstm", "gru")
DPI = 100


def mitigation_order(names) -> List[str]:
    def key(n):
        r = str(n).split("+")[0]
        return (RECIPE_ORDER.index(r) if r in RECIPE_ORDER else len(RECIPE_ORDER), r, str(n).count("+"), str(n))

    return sorted({str(n) for n in names}, key=key)


def palette(names) -> Dict[str, tuple]:
    names = mitigation_order(names)
    cols = sns.color_palette("tab20", 20) if len(names) <= 20 else sns.color_palette("husl", len(names))
    # Alternate dark/light tab20 pairs so neighbours differ: 0, 2, 4, ... then 1, 3, 5, ...
    if len(names) <= 20:
        cols = [cols[i] for i in list(range(0, 20, 2)) + list(range(1, 20, 2))]
    return {n: cols[i] for i, n in enumerate(names)}


MODIFIER_STYLE = {"clipnorm": ("--", "s"), "clipvalue": ("--", "P"), "radius": ("-.", "D"), "tbptt": (":", "^")}


def style(name: str):
    """(linestyle, marker) by the mitigation's first modifier: variants of one recipe stay
    distinguishable even where their lines coincide (same init, e.g. rnn and rnn+clipnorm:1)."""
    parts = str(name).split("+")
    if len(parts) == 1:
        return "-", "o"
    return MODIFIER_STYLE.get(parts[1].split(":")[0], ("--", "v"))


def log_axis(ax, which="y"):
    """Log scale with plain-number tick labels (0.5, 1, 2 rather than 5x10^-1)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    getattr(ax, f"set_{which}scale")("log")
    axis = ax.yaxis if which == "y" else ax.xaxis
    lo, hi = (ax.get_ylim() if which == "y" else ax.get_xlim())
    span = np.log10(hi / lo) if lo > 0 and hi > 0 else 99
    subs = (1.0, 1.5, 2.0, 3.0, 5.0, 7.0) if span < 1.2 else (1.0, 2.0, 5.0) if span < 3 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _tasks(df) -> List[str]:
    return sorted(df["p_task"].dropna().unique().tolist())


def _grid(n: int, ncols: int = 3, w: float = 5.0, h: float = 3.8, sharey=False):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols + 2.6, h * nrows), squeeze=False, sharey=sharey)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _legend(fig, handles_labels, title="mitigation"):
    handles, labels = handles_labels
    if handles:
        fig.legend(handles, labels, title=title, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
                   fontsize=9)


def _collect(axes):
    seen: Dict[str, object] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    order = mitigation_order(seen)
    return [seen[k] for k in order], order


def _log_x_if_spread(ax, values):
    """Log x when the lengths span a factor of 4 or more; ticks at the lengths themselves."""
    v = np.asarray([x for x in values if x and np.isfinite(x) and x > 0], float)
    if not v.size:
        return
    if v.max() / v.min() >= 4:
        ax.set_xscale("log")
    ticks = sorted(set(v.tolist()))
    if len(ticks) <= 12:
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.minorticks_off()
    if len(ticks) == 1:
        ax.set_xlim(ticks[0] * 0.8, ticks[0] * 1.25)


def longest(df) -> pd.DataFrame:
    """Rows at the longest length of each task."""
    if df.empty:
        return df
    mx = df.groupby("p_task")["p_length"].transform("max")
    return df[df["p_length"] == mx]


def placeholder(name: str, reason: str = "no data for this figure in this sweep"):
    fig, ax = plt.subplots(figsize=(8, 2.2))
    ax.axis("off")
    ax.text(0.5, 0.6, name.replace("_", " "), ha="center", va="center", fontsize=14, weight="bold", color="#555")
    ax.text(0.5, 0.3, reason, ha="center", va="center", fontsize=12, color="#a33")
    ax.add_patch(plt.Rectangle((0.01, 0.02), 0.98, 0.96, fill=False, ec="#bbb", lw=1.5, ls="--",
                               transform=ax.transAxes))
    return fig


# -- success ------------------------------------------------------------------------------------
def fig_success_vs_length(df, summary, pal):
    s = summary[summary["lr_chosen"] & summary["task"].notna() & ((summary["n"] - summary["n_error"]) > 0)]
    if s.empty:
        return None
    tasks = sorted(s["task"].unique())
    fig, axes = _grid(len(tasks), ncols=2, w=6.5, h=4.2, sharey=True)
    for ax, t in zip(axes, tasks):
        d = s[s["task"] == t]
        names = mitigation_order(d["mitigation"])
        lengths = sorted(d["length"].unique())
        logx = len(lengths) > 1 and max(lengths) / min(lengths) >= 4
        for i, m in enumerate(names):
            dm = d[d["mitigation"] == m].sort_values("length")
            # Dodge the points sideways (10% of the axis span in all) so the intervals stay readable.
            frac_off = (i - (len(names) - 1) / 2) / max(len(names) - 1, 1) * 0.10
            x = dm["length"].astype(float)
            if logx:
                x = x * 10 ** (frac_off * np.log10(max(lengths) / min(lengths)))
            else:
                x = x + frac_off * (max(lengths) - min(lengths) if len(lengths) > 1 else 1)
            y = dm["success_rate"]
            ls, mk = style(m)
            eb = ax.errorbar(x, y, yerr=[(y - dm["success_lo"]).clip(lower=0), (dm["success_hi"] - y).clip(lower=0)],
                             marker=mk, ms=4, lw=1.4, ls=ls, elinewidth=0.7, capsize=0, color=pal[m], label=m)
            eb[-1][0].set_alpha(0.3)  # intervals faint: 13 mitigations x 3 seeds give wide, overlapping ones
        ax.set_title(t)
        ax.set_xlabel("length")
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel("success rate")
        _log_x_if_spread(ax, lengths)
        ax.grid(alpha=0.3)
    _legend(fig, _collect(axes))
    fig.tight_layout()
    return fig


def fig_success_heatmap(df, summary, pal):
    s = summary[summary["lr_chosen"] & summary["task"].notna() & ((summary["n"] - summary["n_error"]) > 0)]
    if s.empty:
        return None
    tasks = sorted(s["task"].unique())
    nm = len(mitigation_order(s["mitigation"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(4.2, 1.1 * s["length"].nunique() + 3) * len(tasks),
                                                     0.42 * nm + 1.8), squeeze=False)
    for ax, t in zip(axes.flat, tasks):
        d = s[s["task"] == t].copy()
        order = mitigation_order(d["mitigation"])
        grid = summary[summary["task"] == t].groupby(["length", "mitigation"]).size()
        star = [grid.get((L, m), 1) > 1 for L, m in zip(d["length"], d["mitigation"])]
        d["lab"] = [f"{int(a)}/{int(n - e)}{'*' if st else ''}"
                    for a, n, e, st in zip(d["n_solved"], d["n"], d["n_error"], star)]
        rate = d.pivot(index="mitigation", columns="length", values="success_rate").reindex(order)
        lab = d.pivot(index="mitigation", columns="length", values="lab").reindex(order)
        sns.heatmap(rate, ax=ax, vmin=0, vmax=1, cmap="RdYlGn", annot=lab.fillna(""), fmt="", cbar=False,
                    linewidths=0.5, linecolor="white", annot_kws={"fontsize": 8})
        ax.set_title(t)
        ax.set_xlabel("length")
        ax.set_ylabel("")
        ax.grid(False)
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    return fig


# -- time to solve --------------------------------------------------------------------------
def km_curve(steps_to_solve, solved, last_step, end=None):
    """Fraction solved by step: 1 - Kaplan-Meier survival. Events are solves; unsolved runs are
    censored at `last_step`. Diverged runs should be passed with last_step = their budget
    (failures that stay at risk), not their divergence step. Returns (x, y) of a step curve."""
    sts = np.asarray(steps_to_solve, float)
    solved = np.asarray(solved, bool)
    last = np.asarray(last_step, float)
    t_end = np.where(solved, sts, last)
    n = len(t_end)
    if n == 0:
        return np.array([0.0]), np.array([0.0])
    surv, xs, ys = 1.0, [0.0], [0.0]
    for t in np.unique(t_end[solved]):
        at_risk = (t_end >= t).sum()
        d = ((t_end == t) & solved).sum()
        if at_risk:
            xs.append(t)
            ys.append(1 - surv)
            surv *= 1 - d / at_risk
            xs.append(t)
            ys.append(1 - surv)
    xs.append(end if end is not None else np.nanmax(np.where(np.isfinite(last), last, t_end)))
    ys.append(1 - surv)
    return np.asarray(xs, float), np.asarray(ys, float)


MAX_KM_LENGTHS = 4  # time-to-solve panels per task: its longest lengths


def fig_time_to_solve(df, summary, pal):
    d = df[df["p_task"].notna()]
    if d.empty:
        return None
    tasks = _tasks(d)
    cells = [(t, L) for t in tasks for L in sorted(d[d["p_task"] == t]["p_length"].unique())[-MAX_KM_LENGTHS:]]
    ncols = max(sum(1 for c in cells if c[0] == t) for t in tasks)
    fig, axes = plt.subplots(len(tasks), ncols, figsize=(4.3 * ncols + 2.6, 3.3 * len(tasks)), squeeze=False,
                             sharey=True)
    used = []
    for i, t in enumerate(tasks):
        lengths = [L for tt, L in cells if tt == t]
        for j in range(ncols):
            ax = axes[i, j]
            if j >= len(lengths):
                ax.set_visible(False)
                continue
            dt = d[(d["p_task"] == t) & (d["p_length"] == lengths[j])]
            for m in mitigation_order(dt["m_name"]):
                dm = dt[dt["m_name"] == m]
                last = np.where(dm["diverged"], dm["p_budget"].astype(float), dm["steps"])
                x, y = km_curve(dm["steps_to_solve"], dm["solved"], last, end=float(dt["p_budget"].max()))
                ax.step(x, y, where="post", color=pal[m], lw=1.6, ls=style(m)[0], label=m)
                dv = dm[dm["diverged"]]
                if len(dv):
                    ax.scatter(dv["diverged_at"], np.full(len(dv), -0.03), marker="x", color=pal[m], s=30, zorder=5)
            ax.set_title(f"{t} @ {int(lengths[j])}")
            ax.set_xlabel("training step")
            ax.set_ylabel("fraction solved" if j == 0 else "")
            ax.set_ylim(-0.06, 1.04)
            ax.grid(alpha=0.3)
            used.append(ax)
    _legend(fig, _collect(used))
    fig.tight_layout()
    return fig


def fig_loss_curves(df, summary, pal):
    d = longest(df)
    d = d[[isinstance(v, list) and len(v) > 0 for v in d["curve_steps"]]]
    if d.empty:
        return None
    tasks = _tasks(d)
    fig, axes = _grid(len(tasks))
    for ax, t in zip(axes, tasks):
        dt = d[d["p_task"] == t]
        for m in mitigation_order(dt["m_name"]):
            for _, r in dt[dt["m_name"] == m].iterrows():
                y = np.asarray(r["curve_heldout_loss"], float) / r["baseline_loss"]
                ax.plot(r["curve_steps"], y, color=pal[m], lw=1.1, alpha=0.75, ls=style(m)[0], label=m)
        ax.axhline(1, color="k", ls=":", lw=1)
        log_axis(ax)
        ax.set_title(f"{t} @ {int(dt['p_length'].iloc[0])}")
        ax.set_xlabel("training step")
        ax.set_ylabel("held-out loss / baseline")
        ax.grid(alpha=0.3)
    _legend(fig, _collect(axes))
    fig.tight_layout()
    return fig


# -- gradient flow ----------------------------------------------------------------------------
def _median_log_profile(rows, when):
    """Median over runs of log10 profile at distances 1..t_loss; zeros -> NaN."""
    profs = []
    for _, r in rows.iterrows():
        p, tl = r[f"profile_{when}"], r["t_loss"]
        if not isinstance(p, list) or pd.isna(tl):
            continue
        g = np.asarray(p, float)[: int(tl)][::-1]  # index 0 <-> distance 1
        with np.errstate(divide="ignore", invalid="ignore"):
            profs.append(np.where(g > 0, np.log10(g), np.nan))
    if not profs:
        return None
    n = max(len(p) for p in profs)
    arr = np.full((len(profs), n), np.nan)
    for i, p in enumerate(profs):
        arr[i, : len(p)] = p
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-NaN columns (zero gradients in every run) are expected
        med = np.nanmedian(arr, axis=0)
    return np.arange(1, n + 1), med


def fig_gradient_profile(df, summary, pal):
    d = longest(df)
    d = d[[isinstance(v, list) for v in d["profile_init"]]]
    if d.empty:
        return None
    tasks = _tasks(d)
    fig, axes = plt.subplots(len(tasks), 2, figsize=(13, 3.9 * len(tasks)), squeeze=False)
    for i, t in enumerate(tasks):
        dt = d[d["p_task"] == t]
        for j, when in enumerate(("init", "end")):
            ax = axes[i, j]
            for m in mitigation_order(dt["m_name"]):
                res = _median_log_profile(dt[dt["m_name"] == m], when)
                if res is not None:
                    ax.plot(res[0], res[1], color=pal[m], lw=1.5, ls=style(m)[0], label=m)
            ax.set_title(f"{t} @ {int(dt['p_length'].iloc[0])}: {'at init' if when == 'init' else 'after training'}")
            ax.set_xlabel("distance from the loss, t_loss − t (steps)")
            ax.set_ylabel("log10 ‖∂L/∂h_t‖")
            ax.grid(alpha=0.3)
    _legend(fig, _collect(axes.flat))
    fig.tight_layout()
    return fig


def fig_decay_vs_length(df, summary, pal):
    d = df[np.isfinite(df["decay_factor_init"]) | np.isfinite(df["decay_factor_end"])]
    if d.empty:
        return None
    tasks = _tasks(d)
    fig, axes = plt.subplots(2, len(tasks), figsize=(5 * len(tasks) + 2.6, 7.4), squeeze=False, sharey="row")
    for j, t in enumerate(tasks):
        dt = d[d["p_task"] == t]
        for i, when in enumerate(("init", "end")):
            ax = axes[i, j]
            g = dt.groupby(["m_name", "p_length"])[f"decay_factor_{when}"].median().reset_index()
            for m in mitigation_order(g["m_name"]):
                gm = g[g["m_name"] == m].dropna().sort_values("p_length")
                if len(gm):
                    ls, mk = style(m)
                    ax.plot(gm["p_length"], gm[f"decay_factor_{when}"], marker=mk, ms=4, ls=ls, color=pal[m], label=m)
            ax.axhline(1, color="k", ls=":", lw=1)
            log_axis(ax)
            ax.set_title(f"{t}: {'at init' if when == 'init' else 'after training'}")
            ax.set_xlabel("length")
            ax.set_ylabel("per-step gradient factor")
            _log_x_if_spread(ax, dt["p_length"].unique())
            ax.grid(alpha=0.3, which="both")
    _legend(fig, _collect(axes.flat))
    fig.tight_layout()
    return fig


# -- gradient norms -------------------------------------------------------------------------
MAX_TRACE_POINTS = 400


def fig_grad_norms(df, summary, pal):
    d = longest(df)
    d = d[[isinstance(v, list) and len(v) > 0 for v in d["grad_trace"]]]
    if d.empty:
        return None
    rows = []
    for _, r in d.iterrows():
        tr = np.asarray(r["grad_trace"], float)
        if tr.size > MAX_TRACE_POINTS:  # evenly spaced subsample: the shape of the distribution, cheaply
            tr = tr[np.linspace(0, tr.size - 1, MAX_TRACE_POINTS).astype(int)]
        tr = tr[np.isfinite(tr) & (tr > 0)]
        rows.append(pd.DataFrame({"task": r["p_task"], "mitigation": r["m_name"], "log10 grad norm": np.log10(tr)}))
    long_df = pd.concat(rows, ignore_index=True)
    tasks = sorted(long_df["task"].unique())
    nm = long_df["mitigation"].nunique()
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 0.38 * nm + 1.8), squeeze=False)
    for ax, t in zip(axes.flat, tasks):
        dt = long_df[long_df["task"] == t]
        order = mitigation_order(dt["mitigation"])
        sns.boxplot(data=dt, y="mitigation", x="log10 grad norm", hue="mitigation", order=order, palette=pal,
                    ax=ax, fliersize=1.5, linewidth=0.8, legend=False)
        ax.axvline(0, color="k", ls="--", lw=0.8)
        L = int(d[d["p_task"] == t]["p_length"].iloc[0])
        ax.set_title(f"{t} @ {L}")
        ax.set_ylabel("")
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def fig_spectral_radius(df, summary, pal):
    d = df[np.isfinite(df["spectral_radius_init"])]
    if d.empty:
        return None
    fig, ax = plt.subplots(figsize=(8.5, 6))
    for m in mitigation_order(d["m_name"]):
        dm = d[d["m_name"] == m]
        end = dm["spectral_radius_end"]
        ax.scatter(dm["spectral_radius_init"], end.where(np.isfinite(end)), color=pal[m], s=24, alpha=0.8,
                   marker=style(m)[1], label=m)
    lo = np.nanmin(d[["spectral_radius_init", "spectral_radius_end"]].to_numpy(float))
    hi = np.nanmax(d[["spectral_radius_init", "spectral_radius_end"]].to_numpy(float))
    lo, hi = max(min(lo, 0.5) * 0.9, 1e-3), max(hi, 1.5) * 1.1
    ax.plot([lo, hi], [lo, hi], color="#888", lw=1, label="_end = init")
    ax.axvline(1, color="k", ls=":", lw=1)
    ax.axhline(1, color="k", ls=":", lw=1)
    log_axis(ax, "x")
    log_axis(ax, "y")
    ax.set_xlabel("spectral radius at init")
    ax.set_ylabel("spectral radius after training")
    ax.grid(alpha=0.3, which="both")
    _legend(fig, _collect([ax]))
    fig.tight_layout()
    return fig


def fig_gate_means(df, summary, pal):
    d = longest(df)
    d = d[d["m_family"].isin(["lstm", "gru"]) & np.isfinite(d["gate_mean_init"])]
    if d.empty:
        return None
    g = (d.groupby(["p_task", "m_name"])[["gate_mean_init", "gate_mean_end"]].median().reset_index()
         .melt(id_vars=["p_task", "m_name"], var_name="when", value_name="gate mean"))
    g["when"] = g["when"].map({"gate_mean_init": "init", "gate_mean_end": "after training"})
    tasks = sorted(g["p_task"].unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.8 * len(tasks), 4.2), squeeze=False, sharey=True)
    for ax, t in zip(axes.flat, tasks):
        gt = g[g["p_task"] == t]
        sns.barplot(data=gt, x="m_name", y="gate mean", hue="when", order=mitigation_order(gt["m_name"]),
                    palette=["#9ecae1", "#08519c"], ax=ax)
        ax.axhline(1, color="k", ls=":", lw=1)
        L = int(d[d["p_task"] == t]["p_length"].iloc[0])
        ax.set_title(f"{t} @ {L}")
        ax.set_xlabel("")
        ax.set_ylim(0, 1.05)
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


# -- timings ----------------------------------------------------------------------------------
def fig_step_time(df, summary, pal):
    d = df[np.isfinite(df["ms_step"]) & df["t_seq_len"].notna()]
    if d.empty:
        return None
    tasks = _tasks(d)
    fig, axes = _grid(len(tasks))
    for ax, t in zip(axes, tasks):
        g = d[d["p_task"] == t].groupby(["m_name", "t_seq_len"])["ms_step"].median().reset_index()
        for m in mitigation_order(g["m_name"]):
            gm = g[g["m_name"] == m].sort_values("t_seq_len")
            ls, mk = style(m)
            ax.plot(gm["t_seq_len"].astype(float), gm["ms_step"], marker=mk, ms=4, ls=ls, color=pal[m], label=m)
        ax.set_xscale("log")
        log_axis(ax)
        ticks = sorted(g["t_seq_len"].astype(float).unique())
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{x:g}" for x in ticks])
        ax.minorticks_off()
        ax.set_title(t)
        ax.set_xlabel("steps read (seq_len)")
        ax.set_ylabel("ms per training step (median)")
        ax.grid(alpha=0.3, which="both")
    _legend(fig, _collect(axes))
    fig.tight_layout()
    return fig


def fig_radius_decay(df, summary, pal):
    d = df[(df["m_family"] == "rnn_tanh") & df["m_norm"].isna() & np.isfinite(df["decay_factor_init"])
           & np.isfinite(df["spectral_radius_init"])]
    if d.empty or not d["m_radius"].notna().any():
        return None
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    order = mitigation_order(d["m_name"])
    for i, m in enumerate(order):
        dm = d[d["m_name"] == m]
        # hollow and shrinking: mitigations that share an initialization (rnn, rnn+clipnorm) sit on the
        # same points, each marker then rings the next
        ax.scatter(dm["spectral_radius_init"], dm["decay_factor_init"], facecolors="none", edgecolors=pal[m],
                   linewidths=1.3, s=90 - 60 * i / max(1, len(order) - 1), alpha=0.9, marker=style(m)[1], label=m)
        dv = dm[dm["diverged"]]
        if len(dv):
            ax.scatter(dv["spectral_radius_init"], dv["decay_factor_init"], color="k", marker="x", s=40)
    ax.axvline(1, color="k", ls=":", lw=1)
    ax.axhline(1, color="k", ls=":", lw=1)
    log_axis(ax, "x")
    log_axis(ax, "y")
    ax.set_xlabel("spectral radius of W_hh at init")
    ax.set_ylabel("per-step gradient factor at init")
    ax.grid(alpha=0.3, which="both")
    _legend(fig, _collect([ax]))
    fig.tight_layout()
    return fig


FIGURES: Dict[str, Callable] = {
    "success_vs_length": fig_success_vs_length,
    "success_heatmap": fig_success_heatmap,
    "time_to_solve": fig_time_to_solve,
    "loss_curves": fig_loss_curves,
    "gradient_profile": fig_gradient_profile,
    "decay_vs_length": fig_decay_vs_length,
    "grad_norms": fig_grad_norms,
    "spectral_radius": fig_spectral_radius,
    "gate_means": fig_gate_means,
    "step_time": fig_step_time,
    "radius_decay": fig_radius_decay,
}
assert tuple(FIGURES) == FIGURE_NAMES


def fig_to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def make_figures(df: pd.DataFrame, summary: pd.DataFrame) -> Dict[str, Dict]:
    """Every figure as PNG bytes: {name: {"png", "has_data", "caption"}}. `df` holds the runs of the
    chosen lr (trained runs only); a figure that fails to draw becomes a placeholder naming the error."""
    pal = palette(df["m_name"].dropna().unique()) if not df.empty else {}
    out = {}
    with sns.axes_style("whitegrid"), plt.rc_context({"font.size": 10, "axes.titlesize": 11}), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # library deprecation notes must not flood the pipeline's log
        for name, fn in FIGURES.items():
            fig, has = None, False
            if not df.empty:
                try:
                    fig = fn(df, summary, pal)
                    has = fig is not None
                except Exception as e:  # one broken figure must not sink the report; the image says why
                    plt.close("all")
                    fig = placeholder(name, f"figure failed: {type(e).__name__}: {e}"[:120])
            if fig is None:
                fig = placeholder(name)
            out[name] = {"png": fig_to_png(fig), "has_data": has, "caption": CAPTIONS[name]}
    return out
