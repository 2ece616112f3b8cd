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
from golden.errors import UserValueError

__all__ = ["SparsifyAttention", "SparseFilter", "golden_filter", "parse_sparse_spec",
           "register_sparse_filter", "sparse_filters", "sparsify_from_spec"]

SparseFilter = Callable[..., Any]
_FILTERS: dict[str, SparseFilter] = {}
_GOLDEN_DONE = False


def golden_filter(method: str) -> SparseFilter:
    """The hook form of ``golden.sparse`` method ``method`` (instances cached per knob set)."""
    from golden.sparse import FILTERS, make_filter

    cache: dict[str, Any] = {}
    # knobs not given fall back to the method's measured default (the setting `fmforge
    # sparsity` reports), not to the constructor's
    defaults = dict(getattr(FILTERS.get(method), "default", {}) or {})

    def fn(q: Any, k: Any, key_mask: Any, *, layer: int = 0, **params: Any) -> Any:
        params = {**defaults, **params}
        key = repr(sorted(params.items()))
        if key not in cache:
            cache[key] = make_filter(method, **params)
        f = cache[key]
        if layer == 0 and key_mask is not None:
            f.reset(key_mask)  # stateful filters (SpAtten) start a new sequence at layer 0
        return f.mask(q, k, key_mask, layer=layer)

    return fn


def _register_golden() -> None:
    global _GOLDEN_DONE
    if _GOLDEN_DONE:
        return
    _GOLDEN_DONE = True
    try:
        from golden.sparse import METHODS
    except ImportError:  # pragma: no cover - golden.sparse is part of fmforge
        return
    for m in METHODS:
        _FILTERS.setdefault(m, golden_filter(m))


def _value(text: str) -> Any:
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_sparse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"sanger:threshold=0.02"`` -> ``("sanger", {"threshold": 0.02})`` (numbers parsed)."""
    name, _, rest = str(spec).strip().partition(":")
    if not name:
        raise UserValueError("sparse spec is empty (e.g. sanger:threshold=0.02)")
    params: dict[str, Any] = {}
    for item in filter(None, rest.split(":")):
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise UserValueError(f"sparse spec {spec!r}: expected knob=value, got {item!r}")
        params[k] = _value(v)
    return name, params


def sparsify_from_spec(spec: str) -> SparsifyAttention:
    """The :class:`SparsifyAttention` pass of a ``METHOD[:knob=value]`` spec; the knobs are checked
    by building the filter once (errors name the spec)."""
    name, params = parse_sparse_spec(spec)
    _register_golden()
    if name in _FILTERS and name in _golden_methods():
        from golden.sparse import make_filter
        try:
            make_filter(name, **params)
        except (TypeError, ValueError) as e:
            raise UserValueError(f"sparse spec {spec!r}: {e}") from None
    return SparsifyAttention(name, params)


def _golden_methods() -> tuple[str, ...]:
    try:
        from golden.sparse import METHODS
    except ImportError:  # pragma: no cover
        return ()
    return tuple(METHODS)


def register_sparse_filter(name: str, fn: SparseFilter) -> None:
    """Make a sparse-attention filter available under ``name``."""
    if not name or not callable(fn):
        raise UserValueError("register_sparse_filter needs a name and a callable")
    _FILTERS[name] = fn


def sparse_filters() -> dict[str, SparseFilter]:
    """The registered filters, by name (the ``golden.sparse`` methods included)."""
    _register_golden()
    return dict(_FILTERS)


class SparsifyAttention(Pass):
    """Attach filter ``name`` with ``params`` to every attention op (and explicit QK^T matmul)."""

    name = "sparsify"
    requires = frozenset({"canonical"})
    ensures = frozenset({"sparsified"})

    def __init__(self, filter_name: str, params: dict[str, Any] | None = None,
                 layers: set[str] | None = None) -> None:
        _register_golden()
        if filter_name not in _FILTERS:
            raise PassError(f"unknown sparse filter {filter_name!r}; registered: "
                            f"{', '.join(sorted(_FILTERS)) or 'none'}")
        self.filter_name = filter_name
        self.params = dict(params or {})
        self.layers = layers

    def run(self, graph: Graph) -> None:
        layer = 0
        for n in graph.nodes:
            is_att = n.op == "attention" or n.attrs.get("attention_role") == "qk"
            if not is_att:
                continue
            if self.layers is None or n.module in self.layers:
                n.attrs["sparse_filter"] = {"name": self.filter_name, "params": self.params,
                                            "layer": layer}
            layer += 1

    def check(self, graph: Graph) -> None:
        if not any("sparse_filter" in n.attrs for n in graph.nodes):
            raise PassError("sparsify: the graph has no attention op to attach a filter to")
