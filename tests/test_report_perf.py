"""The report's engine-benchmark table (bench/report/perf_section.py) and the `perf_results`
config key: from hand-made pytest-benchmark JSON (no timing here)."""
from __future__ import annotations

import copy
import json
import math

import pytest

from bench.config import ConfigError, validate
from bench.report.__main__ import main as report_main
from bench.report.perf_section import perf_context
from test_config import BASE, SCHEMA  # noqa: E402  (tests/ is on sys.path under pytest)


def _b(test, name, med, kind="step", T=100, **extra):
    return {"name": f"{test}[h64-T{T}-{name}]", "fullname": f"perf/test_perf.py::{test}[h64-T{T}-{name}]",
            "stats": {"median": med}, "options": {"timer": "process_time"},
            "extra_info": {"kind": kind, "name": name, "hidden": 64, "T": T, "batch": 64, "malloc": "pinned",
                           "device": "cpu", **extra}}


def perf_json():
    """bn_lstm at 1.2x / 1.6x the reference (T=100 / T=1000: one PASS, one MISS of T2), its
    T=1000 / T=100 scaling 10x; an nn.LSTMCell loop (a bare reference); one T5 measurement."""
    ref = [0.010] * 3
    return {"datetime": "2026-12-03T07:48:04", "commit_info": {"id": "abcdef0" + "0" * 33},
            "machine_info": {"cpu": {"brand_raw": "Test CPU"}},
            "benchmarks": [
                _b("test_step", "bn_lstm", 0.012, ref_times=ref),
                _b("test_step", "bn_lstm", 0.120, T=1000, ref_times=[0.075] * 3, short_times=[0.012] * 3, short_T=100),
                _b("test_step", "lstmcell", 0.020, kind="cellloop", ref_times=ref),
                _b("test_stack_bound", "bn_lstm", 0.045, kind="stack_bound", S=5, separate_times=[0.060] * 3,
                   per_model_times=[0.055] * 3)]}


def test_perf_table_shows_targets_verdicts_and_ratios(tmp_path):
    p = tmp_path / "full.json"
    p.write_text(json.dumps(perf_json()))
    c = perf_context(p)
    assert "4 benchmarks of the perf suite" in c["perf_sentences"][0] and "commit abcdef0" in c["perf_sentences"][0]
    assert "Test CPU" in c["perf_sentences"][0]
    t = c["perf_targets"].set_index("target")
    assert t.loc["T2 vs LSTM", "verdicts"] == "1 PASS, 1 MISS" and t.loc["T2 vs LSTM", "checks"] == 2
    assert t.loc["T2 vs LSTM", "lowest"] == "1.200" and t.loc["T2 vs LSTM", "highest"] == "1.600"
    assert t.loc["T2 vs LSTM", "misses"] == "bn_lstm h64-T1000 (1.600)"
    assert t.loc["T2 vs cell loop", "verdicts"] == "1 PASS"  # 1.2 / 2.0
    assert t.loc["T3 T=1000/T=100", "highest"] == "10.000" and t.loc["T5 ceiling S=5", "verdicts"] == "1 could save"
    r = c["perf_ratios"].set_index("mitigation")
    assert r.loc["bn_lstm", "step h64-T100"] == pytest.approx(1.2)
    assert r.loc["bn_lstm", "step h64-T1000"] == pytest.approx(1.6)
    assert r.loc["bn_lstm", "T=1000/T=100 h64 (exponent)"] == f"10.00 ({math.log10(10.0):.2f})"
    assert r.loc["bare nn.LSTMCell loop", "step h64-T100"] == pytest.approx(2.0)
    assert "step h128-T100" not in r.columns  # sizes the run did not measure are left out


@pytest.mark.parametrize("recorded,mode", [(None, "quick mode"), (True, "quick mode"), (False, "full mode")])
def test_the_source_names_the_mode_the_suite_ran_in(tmp_path, recorded, mode):
    """As the benchmarks recorded it (bench.perf.run_info); results from before that: guessed from
    the sizes (quick mode measures no hidden-128 size, as in this hand-made file)."""
    data = perf_json()
    if recorded is not None:
        for b in data["benchmarks"]:
            b["extra_info"]["quick"] = recorded
    p = tmp_path / "r.json"
    p.write_text(json.dumps(data))
    assert f"({mode})" in perf_context(p)["perf_sentences"][0]


@pytest.mark.parametrize("content,why", [(None, "no engine benchmark results were given"),
                                         ("{not json", "could not be read"),
                                         (json.dumps({"benchmarks": [{"name": "x", "stats": {}}]}),
                                          "holds no benchmarks of this suite")])
def test_without_a_usable_perf_file_the_report_says_why(tmp_path, content, why):
    p = None
    if content is not None:
        p = tmp_path / "perf.json"
        p.write_text(content)
    c = perf_context(p)
    assert c["perf_targets"] is None and c["perf_ratios"] is None and why in c["perf_sentences"][0]


def test_render_with_perf_puts_the_tables_in_the_timings_section(tmp_path):
    from test_report_overhead import _record
    from bench.records import write_json_atomic

    rec = tmp_path / "r.json"
    write_json_atomic(rec, _record(0, 3.0))
    (tmp_path / "list.txt").write_text(f"{rec}\n")
    out = {k: str(tmp_path / k) for k in ("runs.parquet", "runs.csv", "summary.csv")}
    assert report_main(["aggregate", "--records-list", str(tmp_path / "list.txt"), "--runs-parquet", out["runs.parquet"],
                        "--runs-csv", out["runs.csv"], "--summary-csv", out["summary.csv"]]) == 0
    pj = tmp_path / "full.json"
    pj.write_text(json.dumps(perf_json()))
    html = tmp_path / "report.html"
    assert report_main(["render", "--runs", out["runs.parquet"], "--perf", str(pj), "--out", str(html)]) == 0
    text = html.read_text()
    timings = text[text.index('id="timings"'):text.index('id="claims"')]
    assert 'id="engine-benchmarks"' in timings and "T2 vs LSTM" in timings and "1 PASS, 1 MISS" in timings
    assert report_main(["render", "--runs", out["runs.parquet"], "--out", str(html)]) == 0
    assert "no engine benchmark results were given" in html.read_text()


def test_perf_results_config_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert validate(copy.deepcopy(BASE), SCHEMA).perf_results is None
    for word in ("null", "None"):  # `--config perf_results=null` arrives as text
        assert validate(dict(copy.deepcopy(BASE), perf_results=word), SCHEMA).perf_results is None
    with pytest.raises(ConfigError) as e:
        validate(dict(copy.deepcopy(BASE), perf_results="perf/full.json"), SCHEMA)
    msg = str(e.value)
    assert "config key 'perf_results': no file 'perf/full.json'" in msg and "python -m pytest perf" in msg
    (tmp_path / "perf").mkdir()
    (tmp_path / "perf" / "full.json").write_text("{}")
    sweep = validate(dict(copy.deepcopy(BASE), perf_results="perf/full.json"), SCHEMA)
    assert sweep.perf_results == "perf/full.json" and validate(sweep.to_config(), SCHEMA) == sweep
    with pytest.raises(ConfigError, match="'perf_results'"):
        validate(dict(copy.deepcopy(BASE), perf_results=3), SCHEMA)
