"""Name -> function registries, so a method is chosen by a string in config.

Every algorithm stage (advantage, policy loss, credit, KL estimator, reward) registers itself with a
decorator; the trainer looks the name up and never branches on it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

from pivotal.errors import PivotalError

F = TypeVar("F", bound=Callable)


class UnknownNameError(PivotalError, KeyError):
    """A config named a method that no registry entry has."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


def suggest(name: str, options: list[str]) -> str:
    """' Did you mean 'x'?' for the closest option, or '' when nothing is close."""
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


class Registry(Generic[F]):
    """A named table of functions of one kind (e.g. advantage estimators)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._table: dict[str, F] = {}
        self._renamed: dict[str, str] = {}   # old name -> the sentence saying what it is now

    def register(self, name: str) -> Callable[[F], F]:
        def decorator(fn: F) -> F:
            if name in self._table:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._table[name] = fn
            return fn

        return decorator

    def renamed(self, old: str, new: str, why: str = "") -> None:
        """Record that entry `old` is now called `new`: asking for `old` raises an error that says
        so (and why), instead of "unknown", so that a config written before the rename is told
        what to write."""
        self._renamed[old] = f"{self.kind} '{old}' was renamed '{new}'" + (f" ({why})" if why else "")

    def get(self, name: str) -> F:
        if name in self._renamed and name not in self._table:
            raise UnknownNameError(f"{self._renamed[name]}; write the new name in its place")
        if name not in self._table:
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'.{suggest(name, self.names())} "
                f"Known: {', '.join(self.names())}"
            )
        return self._table[name]

    def names(self) -> list[str]:
        return sorted(self._table)

    def __contains__(self, name: str) -> bool:
        return name in self._table
