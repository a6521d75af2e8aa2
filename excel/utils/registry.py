"""Named registries: a decorator that files a function under a name in a dict (the loss terms, the affinity
sources)."""
from __future__ import annotations

from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


def registrar(table: dict[str, F], kind: str) -> Callable[[str], Callable[[F], F]]:
    """``registrar(table, "loss term")("name")`` is a decorator that puts the function into ``table["name"]``;
    a name may be registered once (ValueError naming the ``kind`` and the function already there)."""

    def named(name: str) -> Callable[[F], F]:
        def register(fn: F) -> F:
            if name in table:
                raise ValueError(f"{kind} {name!r} is already registered ({table[name].__qualname__})")
            table[name] = fn
            return fn

        return register

    return named
