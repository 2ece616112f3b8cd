"""Hook for sparse-attention filters: attach a named filter and its parameters to attention ops.

The filters themselves live in ``golden/sparse/`` (written separately). A filter is registered
here with :func:`register_sparse_filter` as ``fn(q, k, key_mask, **params) -> keep`` where ``q``,
``k`` are ``[..., L, d]``/``[..., S, d]`` float tensors, ``key_mask`` is a bool ``[..., S]`` (or
None) and ``keep`` a bool ``[..., L, S]`` candidate mask (True = the score is computed). The
executor applies it to every attention op that carries ``attrs["sparse_filter"]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from compiler.ir import Graph
from compiler.passes.base import Pass, PassError

__all__ = ["SparsifyAttention", "register_sparse_filter", "sparse_filters", "SparseFilter"]

SparseFilter = Callable[..., Any]
_FILTERS: dict[str, SparseFilter] = {}


def register_sparse_filter(name: str, fn: SparseFilter) -> None:
    """Make a sparse-attention filter available under ``name``."""
    if not name or not callable(fn):
        raise ValueError("register_sparse_filter needs a name and a callable")
    _FILTERS[name] = fn


def sparse_filters() -> dict[str, SparseFilter]:
    """The registered filters, by name."""
    return dict(_FILTERS)


class SparsifyAttention(Pass):
    """Attach filter ``name`` with ``params`` to every attention op (and explicit QK^T matmul)."""

    name = "sparsify"
    requires = frozenset({"canonical"})
    ensures = frozenset({"sparsified"})

    def __init__(self, filter_name: str, params: dict[str, Any] | None = None,
                 layers: set[str] | None = None) -> None:
        if filter_name not in _FILTERS:
            raise PassError(f"unknown sparse filter {filter_name!r}; registered: "
                            f"{', '.join(sorted(_FILTERS)) or 'none'}")
        self.filter_name = filter_name
        self.params = dict(params or {})
        self.layers = layers

    def run(self, graph: Graph) -> None:
        for n in graph.nodes:
            is_att = n.op == "attention" or n.attrs.get("attention_role") == "qk"
            if is_att and (self.layers is None or n.module in self.layers):
                n.attrs["sparse_filter"] = {"name": self.filter_name, "params": self.params}

    def check(self, graph: Graph) -> None:
        if not any("sparse_filter" in n.attrs for n in graph.nodes):
            raise PassError("sparsify: the graph has no attention op to attach a filter to")
