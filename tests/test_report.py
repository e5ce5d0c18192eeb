"""The results table and the report, from hand-built run records (no training).

Records are built in the documented format (docs/RECORD.md) with profiles whose decay we choose,
so each claim's verdict can be flipped by flipping the evidence."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from bench.diagnostics import fit_decay
from bench.models import parse_mitigation
from bench.records import write_json_atomic
from bench.report import (FIGURE_NAMES, SECTION_IDS, aggregate_records, evaluate_claims, render_report, summarize,
                          wilson_interval)
from bench.report import claims as C
from bench.report.__main__ import main as report_main
from bench.report.aggregate import LIST_COLUMNS, mark_lr_chosen, read_runs, record_to_row, tidy
from bench.report.render import timing_table
from bench.tasks import make_task

VERDICTS = {C.SUPPORTED, C.CONTRADICTED, C.INCONCLUSIVE}


def profile(task, factor: float):
    """||dL/dh_t|| = factor ** (t_loss - t) before the loss, 1 from it on: geometric decay."""
    t_loss = task.seq_len - task.probe_window()
    return [factor ** (t_loss - t) if t < t_loss else 1.0 for t in range(task.seq_len)], t_loss


def snap(task, factor, step, gate=None, rho=0.6):
    prof, t_loss = profile(task, factor)
    return {"step": step, "profile": prof, **fit_decay(prof, t_loss), "spectral_radius": rho, "sigma_max": rho * 1.5,
            "gate_mean": gate}


def record(task="adding", length=20, mitigation="rnn", seed=0, outcome="unsolved", lr=1e-3, optimizer="adam",
           factor=0.6, factor_end=None, budget=400, solve_at=200, ms=1.0, gate=None, spike=False, backend=None):
    """A complete record in the documented format; outcome 'error' gives an error record."""
    spec = {"task": task, "length": length, "mitigation": mitigation, "seed": seed, "hidden": 16, "batch": 32,
            "optimizer": optimizer, "lr": lr, "budget": budget, "eval_every": 50, "heldout_size": 100,
            "probe_size": 16, "device": "cpu", "threads": 1}
    prov = {"versions": {"python": "3.11.7", "torch": "2.13.0+cpu", "numpy": "2.4.6", "bench": "0.1.0"},
            "device_name": "Test CPU", "cpu_model": "Test CPU", "threads": 1, "threads_requested": 1,
            "git_commit": "abc123", "hostname": "testhost", "platform": "Linux", "finished_utc": "2026-01-01T00:00:00"}
    if backend is not None:
        prov["recurrence_backend"] = backend
    if outcome == "error":
        return {"record_version": 1, "spec": spec, "outcome": "error",
                "error": {"type": "BenchError", "message": f"impossible composition {mitigation!r}",
                          "traceback": "Traceback ..."}, "provenance": prov}
    t = make_task(task, length)
    mit = parse_mitigation(mitigation)
    steps = {"solved": solve_at, "unsolved": budget, "diverged": 7}[outcome]
    trace = [1.0 + 0.01 * (i % 7) for i in range(steps)]
    if spike:
        trace[steps // 2] = 1e4
    if outcome == "diverged":
        trace[-1] = float("nan")
    curve = [{"step": s, "train_loss": 0.1, "heldout_loss": 0.05 if outcome == "solved" else 0.15,
              "heldout_wrong": 0.0 if outcome == "solved" else 0.5, "heldout_accuracy": 0.5, "wall_s": s * ms / 1e3}
             for s in range(50, steps + 1, 50)]
    fin = [x for x in trace if math.isfinite(x)] or [1.0]
    end = None if outcome == "diverged" else snap(t, factor if factor_end is None else factor_end, steps, gate)
    return {
        "record_version": 1, "spec": spec, "mitigation": {"name": mit.name, **mit.describe()}, "task": t.describe(),
        "optimizer": optimizer, "lr": lr, "device": "cpu", "outcome": outcome, "error": None, "steps": steps,
        "steps_to_solve": solve_at if outcome == "solved" else None,
        "diverged_at": steps if outcome == "diverged" else None,
        "final": {"heldout_loss": None if outcome == "diverged" else (0.01 if outcome == "solved" else 0.15),
                  "heldout_wrong": None if outcome == "diverged" else (0.0 if outcome == "solved" else 0.5),
                  "heldout_accuracy": None, "train_loss": 0.1},
        "baseline": {"loss": 0.1667, "wrong": 0.8, "accuracy": 0.2},
        "curve": curve,
        "grad_norm": {"median": float(np.median(fin)), "p99": max(fin), "max": max(fin), "mean": float(np.mean(fin)),
                      "trace": trace, "frac_clipped": 0.5 if mit.get("clipnorm") else 0.0,
                      "nonfinite_events": int(outcome == "diverged")},
        "diagnostics": {"init": snap(t, factor, 0, gate), "end": end, "snapshots": [snap(t, factor, 0, gate)]},
        "timing": {"fwd_ms": {"median": ms * 0.3, "mean": ms * 0.3}, "bwd_ms": {"median": ms * 0.5, "mean": ms * 0.5},
                   "opt_ms": {"median": ms * 0.2, "mean": ms * 0.2}, "step_ms": {"median": ms, "mean": ms},
                   "train_s": steps * ms / 1e3, "eval_s": 0.1, "diagnostics_s": 0.05,
                   "wall_s": steps * ms / 1e3 + 0.2, "time_to_solve_s": solve_at * ms / 1e3 if outcome == "solved" else None},
        "provenance": prov,
    }


def cell(n=5, outcomes=None, **kw):
    """n seeds of one configuration; `outcomes` a list (cycled) or one outcome for all."""
    outs = outcomes if isinstance(outcomes, list) else [outcomes or kw.pop("outcome", "unsolved")] * n
    kw.pop("outcome", None)
    return [record(seed=s, outcome=outs[s % len(outs)], **kw) for s in range(n)]


def frame(records) -> pd.DataFrame:
    return mark_lr_chosen(tidy([record_to_row(r, f"mem/{i}.json") for i, r in enumerate(records)]))


def verdict(records, number):
    c = [c for c in evaluate_claims(frame(records)) if c.number == number][0]
    assert c.verdict in VERDICTS
    assert "evaluation failed" not in c.reason, c.reason
    return c


# -- the sweep used for the end-to-end tests -------------------------------------------------------
def sweep_records():
    recs = []
    for L in (10, 20):
        recs += cell(mitigation="rnn", length=L, outcome="unsolved", factor=0.6, ms=1.0)
        recs += cell(mitigation="lstm", length=L, outcome="solved", factor=0.95, gate=0.9, ms=2.0)
        recs += cell(mitigation="gru", length=L, outcomes=["solved", "solved", "unsolved"], factor=0.9, gate=0.7, ms=2.5)
        recs += cell(mitigation="rnn+radius:2", length=L, outcome="diverged", factor=1.3, ms=1.0)
        recs += cell(mitigation="rnn+clipnorm:1+radius:2", length=L, outcome="unsolved", factor=1.3, ms=1.1)
    recs += cell(task="temporal_order", length=10, mitigation="lstm", outcome="solved", factor=0.9, gate=0.85)
    recs += cell(task="temporal_order", length=10, mitigation="rnn", outcome="unsolved", factor=0.55)
    # a learning-rate grid: lr 0.01 solves, 0.001 does not
    recs += cell(mitigation="rnn_orth", length=20, lr=0.01, outcome="solved", factor=0.95)
    recs += cell(mitigation="rnn_orth", length=20, lr=0.001, outcome="unsolved", factor=0.95)
    recs.append(record(mitigation="rnn+tbptt:30", length=20, outcome="error"))
    return recs


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    paths = []
    for i, r in enumerate(sweep_records()):
        p = d / f"r{i:03d}.json"
        write_json_atomic(p, r)
        paths.append(str(p))
    bad = d / "runs" / "adding" / "T20" / "lstm" / "lr-0.001" / "seed9.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(json.dumps(record(mitigation="lstm"))[:300])  # a partial write
    paths.append(str(bad))
    lst = d / "records.txt"
    lst.write_text("\n".join(paths) + "\n")
    return {"dir": d, "paths": paths, "list": lst, "bad": str(bad)}


@pytest.fixture(scope="module")
def built(sweep):
    d = sweep["dir"]
    out = {k: d / "results" / v for k, v in {"parquet": "runs.parquet", "csv": "runs.csv", "summary": "summary.csv",
                                             "config": "config_used.yaml"}.items()}
    rc = report_main(["aggregate", "--records-list", str(sweep["list"]), "--runs-parquet", str(out["parquet"]),
                      "--runs-csv", str(out["csv"]), "--summary-csv", str(out["summary"])])
    assert rc == 0
    out["config"].write_text("tasks: [adding]\nseeds: 5\n")
    html, figs = d / "report" / "report.html", d / "results" / "figures"
    rc = report_main(["render", "--runs", str(out["parquet"]), "--config", str(out["config"]), "--out", str(html),
                      "--figures-dir", str(figs)])
    assert rc == 0
    out.update(html=html, figs=figs)
    return out


# -- statistics --------------------------------------------------------------------------------------
@pytest.mark.parametrize("k,n,lo,hi", [(5, 10, 0.2366, 0.7634), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0),
                                       (1, 10, 0.0179, 0.4042), (3, 3, 0.4385, 1.0)])
def test_wilson_interval_known_values(k, n, lo, hi):
    a, b = wilson_interval(k, n)
    assert a == pytest.approx(lo, abs=1e-4) and b == pytest.approx(hi, abs=1e-4)


def test_wilson_interval_without_trials_is_nan():
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


# -- aggregation ----------------------------------------------------------------------------------
def test_aggregate_one_row_per_file_and_corrupt_file_is_an_error_row(sweep, capsys):
    df = aggregate_records(sweep["paths"])
    assert len(df) == len(sweep["paths"])
    bad = df[df["record_path"] == sweep["bad"]]
    assert len(bad) == 1
    row = bad.iloc[0]
    assert row["outcome"] == "error" and row["error_type"] == "CorruptRecord"
    assert sweep["bad"] in row["error_message"]
    # the pipeline's path layout puts the row in its cell
    assert (row["p_task"], row["p_length"], row["m_name"], row["p_seed"]) == ("adding", 20, "lstm", 9)
    assert sweep["bad"] in capsys.readouterr().err


def test_aggregate_columns_error_rows_and_outcomes(sweep):
    df = aggregate_records(sweep["paths"])
    for c in ("p_task", "p_length", "p_mitigation", "p_seed", "p_hidden", "p_batch", "p_optimizer", "p_lr", "p_budget",
              "p_eval_every", "p_device", "m_recipe", "m_family", "m_norm", "m_clipnorm", "m_clipvalue", "m_tbptt",
              "m_radius", "t_seq_len", "t_length_meaning", "t_kind", "outcome", "solved", "steps", "steps_to_solve",
              "diverged_at", "error_type", "error_message", "final_loss", "final_wrong", "final_accuracy",
              "baseline_loss", "baseline_accuracy", "loss_ratio", "decay_factor_init", "decay_factor_end",
              "spectral_radius_init", "gate_mean_end", "grad_norm_median", "grad_norm_p99", "grad_norm_max",
              "frac_clipped", "nonfinite_events", "ms_step", "ms_fwd", "ms_bwd", "ms_opt", "train_s", "eval_s",
              "diag_s", "wall_s", "time_to_solve_s", "seed_group", "prov_git", "prov_torch", "prov_python", "prov_numpy",
              "prov_cpu", "prov_device", "prov_threads", "prov_host", "record_path", "lr_chosen", *LIST_COLUMNS):
        assert c in df.columns, c
    assert set(df["outcome"]) == {"solved", "unsolved", "diverged", "error"}
    err = df[df["error_type"] == "BenchError"].iloc[0]
    assert err["p_mitigation"] == "rnn+tbptt:30" and err["m_tbptt"] == 30 and "impossible" in err["error_message"]
    rnn = df[(df["m_name"] == "rnn") & (df["p_length"] == 20)].iloc[0]
    assert rnn["decay_factor_init"] == pytest.approx(0.6) and rnn["decay_r2_init"] == pytest.approx(1.0)
    assert rnn["t_loss"] == 19 and len(rnn["profile_init"]) == 20
    assert rnn["loss_ratio"] == pytest.approx(0.15 / 0.1667)


def test_files_round_trip_lists_as_arrays_and_json(built):
    df = read_runs(built["parquet"])
    assert isinstance(df["profile_init"].dropna().iloc[0], list)
    csv = pd.read_csv(built["csv"])
    assert len(csv) == len(df)
    first = csv["grad_trace"].dropna().iloc[0]
    assert isinstance(json.loads(first), list)
    # diverged traces end in NaN, stored as null in the CSV JSON
    div = csv[csv["outcome"] == "diverged"]["grad_trace"].iloc[0]
    assert json.loads(div)[-1] is None


def test_summary_counts_and_wilson(built):
    s = pd.read_csv(built["summary"])
    row = s[(s["task"] == "adding") & (s["length"] == 20) & (s["mitigation"] == "gru")].iloc[0]
    assert (row["n"], row["n_solved"], row["n_unsolved"], row["n_diverged"], row["n_error"]) == (5, 4, 1, 0, 0)
    lo, hi = wilson_interval(4, 5)
    assert row["success_rate"] == pytest.approx(0.8)
    assert (row["success_lo"], row["success_hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert row["median_steps_to_solve"] == 200
    div = s[(s["mitigation"] == "rnn+radius:2") & (s["length"] == 10)].iloc[0]
    assert div["n_diverged"] == 5 and div["success_rate"] == 0
    lstm = s[(s["task"] == "adding") & (s["length"] == 20) & (s["mitigation"] == "lstm")].iloc[0]
    assert lstm["n_error"] == 1 and lstm["n"] == 6  # the corrupt file counts as an error of its cell
    assert lstm["success_rate"] == 1.0  # over the runs that trained


def test_lr_chosen_picks_the_better_lr():
    df = frame(cell(mitigation="lstm", lr=0.01, outcome="unsolved") + cell(mitigation="lstm", lr=0.001, outcome="solved"))
    assert set(df[df["lr_chosen"]]["lr_used"]) == {0.001}
    # equal success: the lower median final held-out loss wins (a diverged run counts as infinite loss)
    df = frame(cell(mitigation="rnn", lr=0.1, outcome="diverged") + cell(mitigation="rnn", lr=0.001, outcome="unsolved"))
    assert set(df[df["lr_chosen"]]["lr_used"]) == {0.001}
    s = summarize(df)
    assert s.set_index("lr")["lr_chosen"].to_dict() == {0.001: True, 0.1: False}


# -- the report ------------------------------------------------------------------------------------
def test_report_is_self_contained_with_every_section_and_figure(built, sweep):
    html = built["html"].read_text()
    for sid in SECTION_IDS:
        assert f'<section id="{sid}"' in html, sid
    assert not re.search(r'(?:src|href)\s*=\s*["\']?\s*(?:https?:)?//', html, re.I)
    assert not re.search(r"<link\b|<script\b[^>]*\bsrc=|@import|url\(\s*['\"]?https?:", html, re.I)
    imgs = re.findall(r'<img[^>]*\bsrc="([^"]*)"', html)
    assert len(imgs) == len(FIGURE_NAMES) and all(s.startswith("data:image/png;base64,") for s in imgs)
    for name in FIGURE_NAMES:
        f = built["figs"] / f"{name}.png"
        assert f.is_file() and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f'id="fig-{name}"' in html
    assert sweep["bad"] in html and "CorruptRecord" in html  # the corrupt file is listed
    assert "impossible composition" in html  # and the errored run
    assert "tasks: [adding]" in html  # the config, for provenance
    for n in range(1, 12):
        assert f'id="claim-{n}"' in html
    assert "Learning-rate choice" in html and "optimistic" in html


def test_report_of_an_empty_sweep_still_writes_every_figure(tmp_path):
    df = aggregate_records([], warn=lambda m: None)
    out = render_report(df, tmp_path / "r.html", figures_dir=tmp_path / "f")
    html = out.read_text()
    assert all((tmp_path / "f" / f"{n}.png").is_file() for n in FIGURE_NAMES)
    assert "No data for this figure in this sweep" in html
    assert all(c.reason.endswith(C.NOT_MEASURED) for c in evaluate_claims(df))


# -- claims flip with the evidence ------------------------------------------------------------------
def test_a_sweep_whose_every_run_errored_aggregates_and_renders(tmp_path):
    """E.g. `device: cuda:any` on a machine without CUDA: every record is an error record. The
    tables and the report are still written, and the report names the errors (an empty
    learning-rate table once made the aggregate step fail with a KeyError)."""
    paths = []
    for i, r in enumerate([record(mitigation=m, length=L, seed=s, outcome="error")
                           for m in ("lstm", "rnn") for L in (5, 10) for s in (0, 1)]):
        paths.append(str(tmp_path / f"r{i}.json"))
        write_json_atomic(paths[-1], r)
    df = aggregate_records(paths, warn=lambda m: None)
    assert len(df) == 8 and set(df["outcome"]) == {"error"} and df["lr_chosen"].all()
    assert summarize(df)["n_error"].sum() == 8
    html = render_report(df, tmp_path / "r.html", figures_dir=tmp_path / "f").read_text()
    assert "impossible composition" in html and all(c.reason.endswith(C.NOT_MEASURED) for c in evaluate_claims(df))


def test_claim_1_geometric_vs_flat_profiles():
    assert verdict(cell(mitigation="rnn", factor=0.6), 1).verdict == C.SUPPORTED
    assert verdict(cell(mitigation="rnn", factor=1.0), 1).verdict == C.CONTRADICTED
    assert verdict(cell(mitigation="rnn", n=2, factor=0.6), 1).reason.startswith("fewer than 3")


def test_claim_2_radius_below_and_above_one():
    below = cell(mitigation="rnn+radius:0.5", factor=0.5)
    assert verdict(below + cell(mitigation="rnn+radius:2", factor=1.4), 2).verdict == C.SUPPORTED
    assert verdict(below + cell(mitigation="rnn+radius:2", outcome="diverged", factor=0.9), 2).verdict == C.SUPPORTED
    assert verdict(below + cell(mitigation="rnn+radius:2", factor=0.8), 2).verdict == C.CONTRADICTED
    assert C.NOT_MEASURED in verdict(below, 2).reason


def test_claim_3_lstm_decay_and_forget_gate():
    rnn = cell(mitigation="rnn", factor=0.6)
    assert verdict(rnn + cell(mitigation="lstm", factor=0.97, gate=0.9), 3).verdict == C.SUPPORTED
    assert verdict(rnn + cell(mitigation="lstm", factor=0.4, gate=0.9), 3).verdict == C.CONTRADICTED
    assert verdict(rnn + cell(mitigation="lstm", factor=0.97, gate=0.5), 3).verdict == C.INCONCLUSIVE


def test_claim_4_gated_models_vs_rnn():
    lstm_wins = cell(mitigation="lstm", outcome="solved") + cell(mitigation="rnn", outcome="unsolved")
    assert verdict(lstm_wins, 4).verdict == C.SUPPORTED
    rnn_wins = cell(mitigation="lstm", outcome="unsolved") + cell(mitigation="rnn", outcome="solved")
    assert verdict(rnn_wins, 4).verdict == C.CONTRADICTED
    nobody = cell(mitigation="lstm", outcome="unsolved") + cell(mitigation="rnn", outcome="unsolved")
    c = verdict(nobody, 4)
    assert c.verdict == C.INCONCLUSIVE and "budget too small" in c.reason
    # the longest length decides: both solve length 10, only lstm solves 40
    longer = lstm_wins + [dict(r, spec={**r["spec"], "length": 10}) for r in rnn_wins]
    assert verdict(longer, 4).verdict == C.SUPPORTED


def test_claim_5_clipping_and_divergence():
    unclipped = cell(mitigation="rnn+radius:2", outcome="diverged")
    clipped = cell(mitigation="rnn+clipnorm:1+radius:2", outcome="unsolved")
    assert verdict(unclipped + clipped, 5).verdict == C.SUPPORTED
    assert verdict(unclipped + cell(mitigation="rnn+clipnorm:1+radius:2", outcome="diverged"), 5).verdict == C.CONTRADICTED
    c = verdict(cell(mitigation="rnn+radius:2") + clipped, 5)
    assert c.verdict == C.INCONCLUSIVE and "nothing diverged" in c.reason
    # pairs match on the learning rate: a clipped run at another lr has no counterpart
    other_lr = cell(mitigation="rnn+clipnorm:1+radius:2", lr=0.1)
    assert C.NOT_MEASURED in verdict(unclipped + other_lr, 5).reason


def test_claim_6_irnn_vs_lstm_on_adding():
    lstm = cell(mitigation="lstm", outcome="solved")
    assert verdict(lstm + cell(mitigation="irnn", outcome="solved"), 6).verdict == C.SUPPORTED
    assert verdict(lstm + cell(mitigation="irnn", outcome="unsolved"), 6).verdict == C.CONTRADICTED


def test_claim_7_orthogonal_init():
    rnn_fails, orth_solves = cell(mitigation="rnn"), cell(mitigation="rnn_orth", outcome="solved")
    assert verdict(rnn_fails + orth_solves, 7).verdict == C.SUPPORTED
    assert verdict(cell(mitigation="rnn", outcome="solved") + cell(mitigation="rnn_orth"), 7).verdict == C.CONTRADICTED


def test_claim_8_normalization():
    base = cell(mitigation="rnn", factor=0.6)
    assert verdict(base + cell(mitigation="ln_rnn", factor=0.9), 8).verdict == C.SUPPORTED
    assert verdict(base + cell(mitigation="ln_rnn", factor=0.4), 8).verdict == C.CONTRADICTED


def test_claim_9_truncated_bptt():
    full = cell(mitigation="rnn", outcome="solved", ms=2.0)  # adding 20: shortest dependency 10 > k = 5
    assert verdict(full + cell(mitigation="rnn+tbptt:5", ms=1.0), 9).verdict == C.SUPPORTED
    assert verdict(full + cell(mitigation="rnn+tbptt:5", outcome="solved", ms=1.0), 9).verdict == C.CONTRADICTED


def test_claim_9_judges_cost_only_where_truncation_cuts_the_backward():
    """With a loss on every step (copy's readout 'all') every step is backpropagated anyway: such pairs
    are shown, not judged; the cost verdict comes from tasks with the loss on the last step."""
    copy_full = cell(task="copy", length=20, mitigation="rnn", outcome="solved", ms=2.0)
    copy_cut = cell(task="copy", length=20, mitigation="rnn+tbptt:5", ms=1.0)
    c = verdict(copy_full + copy_cut, 9)
    assert c.verdict == C.INCONCLUSIVE  # learning supported, but no judged cost: not the whole claim
    assert "cost inconclusive: no pair with the loss on the last step only" in c.reason
    assert "with a loss on every step (shown, not judged) 0.5 [95% CI 0.5, 0.5] over 5 pairs" in c.reason
    # adding pairs cheaper, copy pairs dearer: the verdict follows the adding pairs, copy's are shown
    add_full = cell(mitigation="rnn", outcome="solved", ms=2.0)
    add_cut = cell(mitigation="rnn+tbptt:5", ms=1.0)
    dear = cell(task="copy", length=20, mitigation="rnn+tbptt:5", ms=3.0)
    c = verdict(add_full + add_cut + copy_full + dear, 9)
    assert c.verdict == C.SUPPORTED
    assert "loss on the last step: step time ratio truncated/untruncated 0.5" in c.reason
    assert "(shown, not judged) 1.5" in c.reason


def test_claim_10_gru_vs_lstm_step_time():
    lstm = cell(mitigation="lstm", ms=2.0)
    assert verdict(lstm + cell(mitigation="gru", ms=1.5), 10).verdict == C.SUPPORTED
    c = verdict(lstm + cell(mitigation="gru", ms=3.0), 10)
    assert c.verdict == C.CONTRADICTED and "0.75" in c.reason  # parameter ratio 3/4, structural
    assert "ran:" not in c.reason  # records without recurrence_backend
    assert C.NOT_MEASURED in verdict(lstm, 10).reason
    c = verdict(cell(mitigation="lstm", ms=2.0, backend="torch") + cell(mitigation="gru", ms=1.5, backend="native-avx2"), 10)
    assert c.verdict == C.SUPPORTED and "ran: GRU on native-avx2, LSTM on torch" in c.reason


def test_claim_11_lstm_exploding():
    assert verdict(cell(mitigation="lstm", outcomes=["diverged", "unsolved"]), 11).verdict == C.SUPPORTED
    assert verdict(cell(mitigation="lstm", spike=True), 11).verdict == C.SUPPORTED
    assert verdict(cell(mitigation="lstm", factor=0.9), 11).verdict == C.INCONCLUSIVE


def test_claims_of_the_sweep(built):
    claims = {c.number: c for c in evaluate_claims(read_runs(built["parquet"]))}
    assert len(claims) == 11 and all(c.verdict in VERDICTS for c in claims.values())
    assert claims[4].verdict == C.SUPPORTED  # lstm 5/5 + temporal_order vs rnn 0/5
    assert claims[5].verdict == C.SUPPORTED  # rnn+radius:2 diverges 10/10, clipped 0/10
    assert claims[1].verdict == C.SUPPORTED
    assert C.NOT_MEASURED in claims[9].reason  # the only tbptt run errored


def test_timing_table_ratio_exponent_and_runs():
    """ms/step at the longest length (median over its runs), the ratio to lstm's there and the
    log-log scaling exponent over the lengths."""
    recs = [record(mitigation="lstm", length=L, seed=s, ms=2.0 * L / 20) for L in (20, 40) for s in range(3)]
    recs += [record(mitigation="gru", length=L, seed=s, ms=m * (L / 20) ** 2) for L in (20, 40)
             for s, m in enumerate((3.0, 4.0, 6.0))]
    t = timing_table(frame(recs)).set_index("mitigation")
    assert t.loc["lstm", "ms/step"] == pytest.approx(4.0) and t.loc["lstm", "ratio to lstm"] == pytest.approx(1.0)
    assert t.loc["gru", "ms/step"] == pytest.approx(16.0) and t.loc["gru", "ratio to lstm"] == pytest.approx(4.0)
    assert t.loc["lstm", "scaling exponent"] == pytest.approx(1.0) and t.loc["gru", "scaling exponent"] == pytest.approx(2.0)
    assert (t["runs"] == 3).all() and (t["longest length"] == 40).all()
    one = timing_table(frame([record(mitigation="lstm", length=20, ms=2.0)]))
    assert one["runs"].tolist() == [1] and one["ratio to lstm"].iloc[0] == pytest.approx(1.0)


@pytest.mark.parametrize("groups,expect", [
    ([3, 3, 3, 1], "3 of 4 runs trained in seed groups"),
    ([1, 1], "Every run trained alone"),
    ([None, None], ""),
])
def test_timings_say_how_the_seeds_were_timed(groups, expect):
    from bench.report.render import seed_group_sentence

    text = seed_group_sentence(pd.DataFrame({"seed_group": pd.array(groups, dtype="Int64")}))
    assert (text.startswith(expect) if expect else text == "")
    if groups[0] == 3:
        assert "up to 3 at once" in text and "bit for bit" in text


def test_a_task_nobody_solved_names_who_came_closest_from_the_losses():
    """No mitigation solved copy: the summary says the sweep cannot rank them there and names the
    closest by median held-out loss / baseline at the shortest length -- computed, not assumed."""
    from bench.report.render import summary_sentences

    def with_loss(recs, loss):
        for r in recs:
            r["final"]["heldout_loss"] = loss
        return recs

    recs = (with_loss(cell(n=3, task="copy", length=5, mitigation="rnn", outcome="unsolved"), 0.1667)  # ratio 1.0
            + with_loss(cell(n=3, task="copy", length=5, mitigation="lstm", outcome="unsolved"), 0.05)  # 0.30
            + with_loss(cell(n=3, task="copy", length=5, mitigation="gru", outcome="unsolved"), 0.10)  # 0.60
            + with_loss(cell(n=3, task="copy", length=10, mitigation="gru", outcome="unsolved"), 0.01))  # longer: not used
    D = frame(recs)
    counts = {"runs": len(D), "solved": 0, "unsolved": len(D), "diverged": 0, "error": 0, "corrupt": 0}
    text = " ".join(summary_sentences(D, summarize(D), counts, []))
    assert "copy: no mitigation solved it at any length within 400 steps" in text
    assert "cannot rank the mitigations" in text
    assert "Closest at length 5, by median held-out loss / baseline (1 = learnt nothing): lstm 0.30, gru 0.60, rnn 1.00." in text
    # once one mitigation solves it in most seeds at the longest length, the sentence names the winners instead
    recs[-3:] = cell(n=3, task="copy", length=10, mitigation="gru", outcome="solved")
    D = frame(recs)
    text = " ".join(summary_sentences(D, summarize(D), dict(counts, solved=3), []))
    assert "Closest at" not in text and "copy at length 10: solved in most seeds by gru (3/3)" in text


# -- the exact tests stratified by cell ---------------------------------------------------------------
def fisher_pooled(s1, n1, s2, n2):
    """Fisher's one-sided p on counts pooled over cells: what the claims no longer do."""
    from scipy import stats

    return float(stats.fisher_exact([[s1, n1 - s1], [s2, n2 - s2]], alternative="greater")[1])


def test_exact_greater_is_fishers_test_within_one_cell():
    from scipy import stats

    for s1, n1, s2, n2 in [(3, 3, 0, 3), (5, 5, 0, 5), (2, 5, 1, 4), (0, 3, 3, 3), (4, 6, 4, 6), (1, 1, 0, 9)]:
        fisher = stats.fisher_exact([[s1, n1 - s1], [s2, n2 - s2]], alternative="greater")[1]
        assert C.exact_greater([(s1, n1, s2, n2)]) == pytest.approx(fisher, abs=1e-12)


def test_exact_greater_compares_within_cells_not_on_pooled_counts():
    # 3/3 vs 0/3 in one cell, 0/3 vs 0/3 in a cell nobody solves: the hopeless cell adds nothing
    assert C.exact_greater([(3, 3, 0, 3), (0, 3, 0, 3)]) == pytest.approx(0.05)
    assert fisher_pooled(3, 6, 0, 6) == pytest.approx(20 / 220)  # pooled: diluted to 0.091
    # two informative cells multiply the evidence: 0.05 x 0.05
    assert C.exact_greater([(3, 3, 0, 3), (3, 3, 0, 3)]) == pytest.approx(0.0025)
    # Simpson-like: arm 1 better within each cell but worse pooled (it ran mostly the hard cell): pooled
    # counts call arm 2 significantly better; within cells arm 2 is never better (p = 1)
    st = [(3, 3, 20, 30), (9, 30, 0, 3)]  # easy cell 100% vs 67%, hard cell 30% vs 0%; pooled 36% vs 61%
    assert fisher_pooled(20, 33, 12, 33) < C.ALPHA
    better_1, better_2 = C.exact_both(st)
    assert better_2 == pytest.approx(1.0) and better_1 < 0.5
    # cells with an empty arm carry nothing; none at all: nan
    assert C.exact_greater([(3, 3, 0, 3), (2, 2, 0, 0)]) == pytest.approx(0.05)
    assert math.isnan(C.exact_greater([(2, 2, 0, 0)])) and math.isnan(C.exact_greater([]))


def test_significance_is_strict_and_does_not_hinge_on_rounding():
    """p exactly ALPHA (3 seeds against 3: 1/20) is not significant whichever way the last bit falls."""
    p = C.exact_greater([(3, 3, 0, 3)])
    assert p == pytest.approx(1 / 20)
    for q in (p, C.ALPHA, 0.05000000000000001, 0.04999999999999999, 1 / 20):
        assert not C.significant(q)
    assert C.significant(0.0499) and C.significant(C.exact_greater([(5, 5, 0, 5)]))  # 1/252
    assert not C.significant(float("nan")) and not C.significant(0.2)


def test_claim_4_compares_the_arms_task_by_task():
    recs = (cell(n=3, mitigation="gru", outcome="solved") + cell(n=3, mitigation="rnn", outcome="unsolved")
            + cell(n=3, task="copy", length=10, mitigation="gru", outcome="unsolved")
            + cell(n=3, task="copy", length=10, mitigation="rnn", outcome="unsolved"))
    c = verdict(recs, 4)
    assert "gru 3/6 vs rnn 0/6, p = 0.05" in c.reason  # pooled counts shown; the p-value from the adding cell
    assert c.verdict == C.INCONCLUSIVE  # 3 seeds: 0.05 is the smallest p a 3-vs-3 cell can give
