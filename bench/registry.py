"""Name -> component registries shared by config, wildcards, result columns and report."""
from __future__ import annotations

from typing import Callable, Dict, Generic, Iterator, Tuple, TypeVar

from .errors import BenchError, choices_message

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, T] = {}
        self._descriptions: Dict[str, str] = {}

    def register(self, name: str, description: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise RuntimeError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            self._descriptions[name] = description
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._items:
            raise BenchError(choices_message(self.kind, name, self._items))
        return self._items[name]

    def describe(self, name: str) -> str:
        return self._descriptions[name]

    def names(self) -> list:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[Tuple[str, T]]:
        return iter(sorted(self._items.items()))
