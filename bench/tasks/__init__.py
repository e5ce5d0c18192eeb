"""Long-dependency tasks, registered by name (one file per task)."""
from ..registry import Registry

TASKS: Registry = Registry("task")

from . import adding, copy, digits, temporal_order  # noqa: E402,F401  (register)
from .base import Task  # noqa: E402,F401

# A task's `name` is its registry name: it appears in the record and seeds the held-out set and
# the training stream (without it every task would share the name '' and so the same seeds).
for _name, _cls in TASKS:
    _cls.name = _name


def make_task(name: str, length: int) -> "Task":
    """Instantiate task `name` at `length`; a clear BenchError on a bad name or length."""
    return TASKS.get(name)(length)
