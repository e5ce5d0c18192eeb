"""Small shared fixtures for the engine tests (tasks, mitigations, training, diagnostics)."""
from __future__ import annotations

import pytest

from bench.models import build_model, parse_mitigation
from bench.seeding import generator
from bench.spec import RunSpec
from bench.tasks import TASKS, make_task


def _short_length(task_name: str) -> int:
    """The shortest valid length of a task, but at least 5 (digits: its fixed 64)."""
    cls = TASKS.get(task_name)
    return min(max(cls.min_length, 5), cls.max_length)


@pytest.fixture(scope="session")
def short_length():
    """short_length(task_name) -> a short valid length (min_length, at least 5)."""
    return _short_length


@pytest.fixture
def small_model():
    """small_model(mitigation, task_name, length=None, hidden=8, seed=0) -> (model, task)."""

    def make(mitigation: str, task_name: str, length=None, hidden: int = 8, seed: int = 0):
        task = make_task(task_name, length if length is not None else _short_length(task_name))
        mit = parse_mitigation(mitigation)
        model = build_model(mit, task.n_in, task.n_out, task.readout, hidden, task.seq_len,
                            generator("test-init", mitigation, task_name, hidden, seed))
        return model, task

    return make


@pytest.fixture
def tiny_spec():
    """tiny_spec(**overrides) -> a RunSpec that trains in well under a second on CPU."""

    def make(**kw):
        base = dict(task="adding", length=5, mitigation="rnn", hidden=8, batch=16, budget=4,
                    eval_every=2, heldout_size=64, probe_size=16, device="cpu", threads=1)
        base.update(kw)
        return RunSpec(**base)

    return make
