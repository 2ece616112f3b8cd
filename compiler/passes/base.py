"""Pass infrastructure: requires/ensures contracts checked around every pass."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from compiler.ir import Graph
from golden.errors import UserValueError

__all__ = ["Pass", "PassError", "run_passes"]


class PassError(UserValueError):
    """A pass precondition or postcondition failed (names the pass and the property)."""


class Pass:
    """Base class: subclasses set ``name``, ``requires``, ``ensures`` and implement ``run``
    (mutating the graph in place) and ``check`` (verifying what ``ensures`` claims)."""

    name: ClassVar[str] = "pass"
    requires: ClassVar[frozenset[str]] = frozenset()
    ensures: ClassVar[frozenset[str]] = frozenset()

    def run(self, graph: Graph) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def check(self, graph: Graph) -> None:
        """Raise :class:`PassError` when the graph does not satisfy ``ensures``."""

    def __call__(self, graph: Graph) -> Graph:
        missing = sorted(self.requires - graph.properties)
        if missing:
            raise PassError(f"pass {self.name} requires {', '.join(missing)}; run the pass "
                            "that ensures it first")
        self.run(graph)
        graph.validate()
        self.check(graph)
        graph.properties |= self.ensures
        return graph


def run_passes(graph: Graph, passes: Sequence[Pass]) -> Graph:
    """Run ``passes`` in order, each with its contract checks."""
    for p in passes:
        graph = p(graph)
    return graph
