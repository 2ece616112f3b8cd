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

import torch

from compiler.ir import Graph
from compiler.passes.base import Pass, PassError
from golden.errors import UserValueError

__all__ = ["SparsifyAttention", "SparseFilter", "attention_masks", "golden_filter", "parse_sparse_spec",
           "register_sparse_filter", "reset_sparse_filters", "sparse_filters", "sparsify_from_spec"]

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

    def fn(q: Any, k: Any, key_mask: Any, *, layer: int = 0, calibration: Any = None,
           **params: Any) -> Any:
        params = {**defaults, **params}
        key = repr((sorted(params.items()), calibration))
        if key not in cache:
            cache[key] = make_filter(method, **params)
            if calibration is not None:
                cache[key].load_calibration(calibration)
        f = cache[key]
        if layer == 0 and key_mask is not None:
            f.reset(key_mask)  # stateful filters (SpAtten) start a new sequence at layer 0
        return f.mask(q, k, key_mask, layer=layer)

    def reset() -> None:
        """Forget the state of every cached instance (a new input batch starts)."""
        for f in cache.values():
            f.reset(None)

    fn.reset = reset  # type: ignore[attr-defined]
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


def sparsify_from_spec(spec: str, samples: list[tuple[Any, ...]] | None = None
                       ) -> SparsifyAttention:
    """The :class:`SparsifyAttention` pass of a ``METHOD[:knob=value]`` spec; the knobs are checked
    by building the filter once (errors name the spec). ``samples`` (graph inputs) calibrate
    filters that learn parameters (ELSA's thresholds, Sanger's clips)."""
    name, params = parse_sparse_spec(spec)
    _register_golden()
    if name in _FILTERS and name in _golden_methods():
        from golden.sparse import make_filter
        try:
            make_filter(name, **params)
        except (TypeError, ValueError) as e:
            raise UserValueError(f"sparse spec {spec!r}: {e}") from None
    return SparsifyAttention(name, params, samples=samples)


def _golden_methods() -> tuple[str, ...]:
    try:
        from golden.sparse import METHODS
    except ImportError:  # pragma: no cover
        return ()
    return tuple(METHODS)


def attention_masks(q: Any, k: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
                    ) -> tuple[Any, Any]:
    """An attention op's allowed query-key pairs (bool ``[..., L, S]``, from its ``attn_mask``
    argument; all True without one) and the key mask ``[B, S]`` (None without a mask)."""
    mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
    shape = (*q.shape[:-1], k.shape[-2])
    if mask is None:
        return torch.ones(shape, dtype=torch.bool), None
    allowed = (mask if mask.dtype == torch.bool else mask > -1e30).expand(shape)
    return allowed, allowed.reshape(q.shape[0], -1, k.shape[-2]).any(1)


def filter_units(nodes: list[Any], family: str = "asic") -> list[dict[str, Any]]:
    """The sparse-filter units a device builds for the attention ops it runs (``nodes`` placed on
    it) that carry a golden filter: one unit per method, sized for the largest of those ops (head
    size ``dim``, keys ``max_keys`` / ``max_tokens``, heads ``max_heads``; accumulators wide
    enough for every layer), as a plan's ``hardware.units`` entry with the spec's resources."""
    import dataclasses

    from hw.registry import UNITS

    by_method: dict[str, list[Any]] = {}
    for n in nodes:
        spec = n.attrs.get("sparse_filter")
        if n.op == "attention" and spec and f"sparse_{spec['name']}" in UNITS:
            by_method.setdefault(spec["name"], []).append(n)
    out = []
    for method, ops in sorted(by_method.items()):
        cls = UNITS[f"sparse_{method}"]
        d = max(int(o.attrs["d"]) for o in ops)
        keys = max(int(o.attrs["s"]) for o in ops)
        rows = max(int(o.attrs["l"]) for o in ops)
        heads = max(int(o.attrs.get("q_heads") or o.attrs["bh"]) for o in ops)
        layers = len(ops)
        known = {"dim": d, "max_keys": max(2, keys), "max_tokens": keys, "max_heads": heads,
                 "lanes": 4,
                 "token_bits": (255 * heads * rows * layers).bit_length(),
                 "head_bits": (255 * rows * layers).bit_length()}
        knobs = ops[0].attrs["sparse_filter"].get("params", {})  # e.g. Sanger's bits
        fields = [f.name for f in dataclasses.fields(cls)]
        params = {k: known[k] for k in fields if k in known}
        params.update({k: v for k, v in knobs.items() if k in fields and isinstance(v, int)})
        unit = cls(**params)
        out.append({"id": f"sparse_{method}", "unit": cls.kind, "module": cls.component,
                    "params": unit.to_json(), "ops": [o.name for o in ops],
                    "predicted": dict(unit.resources(family))})
    return out


def register_sparse_filter(name: str, fn: SparseFilter) -> None:
    """Make a sparse-attention filter available under ``name``."""
    if not name or not callable(fn):
        raise UserValueError("register_sparse_filter needs a name and a callable")
    _FILTERS[name] = fn


def reset_sparse_filters() -> None:
    """Start a new input batch: filters with state across layers (SpAtten's importances and
    survivors) forget it. The executor calls this before every input; a registered filter
    opts in with a ``reset()`` attribute."""
    for fn in list(_FILTERS.values()):
        reset = getattr(fn, "reset", None)
        if callable(reset):
            reset()


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
                 layers: set[str] | None = None, samples: list[tuple[Any, ...]] | None = None
                 ) -> None:
        _register_golden()
        if filter_name not in _FILTERS:
            raise PassError(f"unknown sparse filter {filter_name!r}; registered: "
                            f"{', '.join(sorted(_FILTERS)) or 'none'}")
        self.filter_name = filter_name
        self.params = dict(params or {})
        self.layers = layers
        self.samples = samples

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
        cal = self._calibrate(graph)
        if cal is not None:
            for n in graph.nodes:
                if "sparse_filter" in n.attrs:
                    n.attrs["sparse_filter"]["calibration"] = cal

    def _calibrate(self, graph: Graph) -> dict[str, Any] | None:
        """Calibrate a golden filter that learns parameters on the calibration samples: run
        the float graph, capture each filtered attention's ``(q, k, key_mask)`` per layer, and
        return the filter's :meth:`calibration_state` (None when it learns nothing)."""
        if self.filter_name not in _golden_methods():
            return None
        from golden.sparse import FILTERS, make_filter
        if not getattr(FILTERS[self.filter_name], "needs_calibration", False):
            return None
        if not self.samples:
            raise PassError(f"sparse filter {self.filter_name!r} learns its parameters from "
                            "calibration data; the compiler was given no calibration samples")
        from compiler.interp import run_graph
        per_layer: dict[int, list[tuple[Any, Any, Any]]] = {}

        def observe(node: Any, val: Any, args: tuple[Any, ...]) -> None:
            spec = node.attrs.get("sparse_filter")
            if spec is None or node.op != "attention":
                return
            q, k = args[0], args[1]
            _, key_mask = attention_masks(q, k, args, {})
            if key_mask is None:
                key_mask = torch.ones(q.shape[0], k.shape[-2], dtype=torch.bool)
            per_layer.setdefault(int(spec["layer"]), []).append(
                (q.detach().float(), k.detach().float(), key_mask))

        for sample in self.samples:
            run_graph(graph, list(sample), observe=observe)
        if not per_layer:
            return None
        f = make_filter(self.filter_name, **{**dict(FILTERS[self.filter_name].default),
                                             **self.params})
        samples = [per_layer.get(i, []) for i in range(max(per_layer) + 1)]
        return f.calibration_state(samples)

    def check(self, graph: Graph) -> None:
        if not any("sparse_filter" in n.attrs for n in graph.nodes):
            raise PassError("sparsify: the graph has no attention op to attach a filter to")
