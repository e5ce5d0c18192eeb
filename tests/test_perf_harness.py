"""The perf suite's measuring helpers (bench.perf) that are not benchmarks themselves."""
from __future__ import annotations

from bench import perf, runtime


def test_settle_does_nothing_without_the_pinned_allocator(monkeypatch):
    monkeypatch.setattr(runtime, "MALLOC_MODE", "default")
    calls = []
    assert perf.settle([lambda: calls.append(1)]) == 0
    assert calls == []


def test_settle_stops_at_the_first_cycle_without_page_faults(monkeypatch):
    monkeypatch.setattr(runtime, "MALLOC_MODE", "pinned")
    calls = []
    assert perf.settle([lambda: calls.append(1), lambda: calls.append(2)], max_rounds=5) == 1
    assert calls == [1, 2]


def test_settle_gives_up_after_max_rounds_while_memory_keeps_growing(monkeypatch):
    monkeypatch.setattr(runtime, "MALLOC_MODE", "pinned")
    kept = []

    def grow():  # fresh pages every call: 16 MiB kept and touched
        b = bytearray(16 << 20)
        b[::4096] = b"\x01" * len(b[::4096])
        kept.append(b)

    assert perf.settle([grow], max_rounds=3) == 3
    assert len(kept) == 3
