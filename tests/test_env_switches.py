"""The environment switches (BENCH_MALLOC, BENCH_NORMSEQ_NATIVE, BENCH_NORMSEQ_JIT; the perf suite's
BENCH_PERF_MALLOC and BENCH_PERF_QUICK): a value a switch does not know is a clear error naming the
variable, its value and the valid choices -- never quietly read as one of them."""
from __future__ import annotations

import pytest

from bench import runtime
from bench.errors import BenchError
from bench.spec import RunSpec
from bench.train import run_safely


def test_env_choice_reads_the_default_a_valid_value_and_refuses_the_rest(monkeypatch):
    monkeypatch.delenv("BENCH_TEST_SWITCH", raising=False)
    assert runtime.env_choice("BENCH_TEST_SWITCH", ("0", "1"), "1") == "1"
    monkeypatch.setenv("BENCH_TEST_SWITCH", "  ")
    assert runtime.env_choice("BENCH_TEST_SWITCH", ("0", "1"), "1") == "1"
    monkeypatch.setenv("BENCH_TEST_SWITCH", "0")
    assert runtime.env_choice("BENCH_TEST_SWITCH", ("0", "1"), "1") == "0"
    monkeypatch.setenv("BENCH_TEST_SWITCH", "off")
    with pytest.raises(BenchError, match=r"BENCH_TEST_SWITCH='off' is not a valid setting; valid choices: 0, 1 "
                                         r"\(unset: 1\)"):
        runtime.env_choice("BENCH_TEST_SWITCH", ("0", "1"), "1")


def test_a_training_command_with_an_unknown_allocator_setting_stops_with_the_choices(monkeypatch, tmp_path, capsys):
    from bench.cli import main

    monkeypatch.setenv("BENCH_MALLOC", "glibc")
    rc = main(["run", "--task", "adding", "--length", "10", "--mitigation", "rnn", "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "BENCH_MALLOC='glibc'" in err and "pinned, default" in err and "Traceback" not in err
    assert not (tmp_path / "r.json").exists()


def test_an_unknown_kernel_switch_is_refused_by_bench_native_and_recorded_by_a_run(monkeypatch, capsys):
    from bench.cli import main

    monkeypatch.setenv("BENCH_NORMSEQ_NATIVE", "off")
    assert main(["native", "--mitigations", "ln_lstm", "--device", "cpu"]) == 2
    assert "BENCH_NORMSEQ_NATIVE='off'" in capsys.readouterr().err
    # a run that would use the kernel: an error record with the message (the sweep goes on), not a
    # run quietly on the kernel or off it
    rec = run_safely(RunSpec(task="adding", length=10, mitigation="ln_lstm", budget=2, hidden=8, batch=4,
                             heldout_size=16, probe_size=4, device="cpu"))
    assert rec["outcome"] == "error" and "BENCH_NORMSEQ_NATIVE='off'" in rec["error"]["message"]


def test_an_unknown_torchscript_switch_is_refused(monkeypatch):
    from bench.models import normseq

    monkeypatch.setenv("BENCH_NORMSEQ_JIT", "no")
    monkeypatch.setattr(normseq, "_JIT", {})
    with pytest.raises(BenchError, match="BENCH_NORMSEQ_JIT='no'"):
        normseq._scripted("_lstm_forward_loop")
