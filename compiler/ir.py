"""Typed graph IR of the fmforge compiler.

A :class:`Graph` is a list of :class:`Node` in topological order. Every node is one operator
of the exported model: ``op`` is the canonical kind the targets reason about (``linear``,
``matmul``, ``attention``, ``softmax``, ``layer_norm``, ``rms_norm``, ``gelu``, ``silu``,
``relu``, ``add``, ``mul``, ``embedding``, ``layout`` for pure data-movement ops,
``grouped_linear`` for a mixture of experts' routed expert GEMMs, ``other`` for anything else), ``target``
the ATen overload it came from (``aten.linear.default``), ``args``/``kwargs`` the call with
:class:`Ref` standing for values (graph inputs or node outputs) and :class:`Param` for weights
(by reference into ``Graph.params``), ``out`` the output type(s) and ``module`` the
``nn.Module`` path it came from. ``attrs`` holds op-specific facts that passes add (MAC counts,
quantization scales, the sparse-attention filter).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import torch

from golden.errors import UserValueError

__all__ = [
    "OP_KINDS",
    "Graph",
    "Node",
    "Param",
    "Ref",
    "TensorType",
    "dtype_bytes",
    "map_structure",
]

#: the canonical operator kinds
OP_KINDS = ("linear", "matmul", "attention", "softmax", "layer_norm", "gelu", "relu", "add",
            "mul", "embedding", "layout", "other", "rms_norm", "silu", "grouped_linear")

_DTYPE_BYTES = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4,
                "int16": 2, "int8": 1, "uint8": 1, "bool": 1}


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a dtype name (``float32`` -> 4); unknown names count 4."""
    return _DTYPE_BYTES.get(dtype, 4)


@dataclass(frozen=True)
class Ref:
    """A reference to a value: a graph input or the output of a node, by name."""

    name: str


@dataclass(frozen=True)
class Param:
    """A reference to a weight/buffer/constant tensor in ``Graph.params``, by name."""

    name: str


@dataclass(frozen=True)
class TensorType:
    """Static shape and dtype of one tensor value."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        """Number of elements."""
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        """Size in bytes at this dtype."""
        return self.numel * dtype_bytes(self.dtype)

    def to_json(self) -> dict[str, Any]:
        """JSON form ``{"shape": [...], "dtype": "..."}``."""
        return {"shape": list(self.shape), "dtype": self.dtype}


def map_structure(obj: Any, fn: Any) -> Any:
    """Apply ``fn`` to every :class:`Ref`/:class:`Param` leaf of a nested args structure."""
    if isinstance(obj, (Ref, Param)):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(map_structure(o, fn) for o in obj)
    if isinstance(obj, list):
        return [map_structure(o, fn) for o in obj]
    if isinstance(obj, dict):
        return {k: map_structure(v, fn) for k, v in obj.items()}
    return obj


def _leaves(obj: Any, out: list[Any]) -> list[Any]:
    map_structure(obj, lambda r: out.append(r) or r)
    return out


@dataclass
class Node:
    """One operator of the graph (see the module docstring)."""

    name: str
    op: str
    target: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    out: tuple[TensorType, ...]
    module: str = ""
    #: True when the node returns a tuple (``out`` lists its elements)
    multi: bool = False
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def inputs(self) -> tuple[str, ...]:
        """Names of the values this node reads, in first-use order, without repeats."""
        seen: list[str] = []
        for r in _leaves((self.args, self.kwargs), []):
            if isinstance(r, Ref) and r.name not in seen:
                seen.append(r.name)
        return tuple(seen)

    @property
    def weights(self) -> tuple[str, ...]:
        """Names of the parameters this node reads."""
        seen: list[str] = []
        for r in _leaves((self.args, self.kwargs), []):
            if isinstance(r, Param) and r.name not in seen:
                seen.append(r.name)
        return tuple(seen)

    @property
    def out_bytes(self) -> int:
        """Bytes of the node's output(s) at their dtype."""
        return sum(t.nbytes for t in self.out)

    def signature(self) -> str:
        """A stable one-line text of the node (used for the graph fingerprint)."""
        def fmt(o: Any) -> Any:
            if isinstance(o, Ref):
                return f"%{o.name}"
            if isinstance(o, Param):
                return f"@{o.name}"
            if isinstance(o, (tuple, list)):
                return [fmt(x) for x in o]
            if isinstance(o, dict):
                return {k: fmt(v) for k, v in sorted(o.items())}
            return repr(o)
        return json.dumps([self.name, self.op, self.target, fmt(self.args), fmt(self.kwargs),
                           [t.to_json() for t in self.out]], sort_keys=True)


@dataclass
class Graph:
    """A typed operator graph: inputs, nodes in topological order, outputs, parameters."""

    inputs: list[tuple[str, TensorType]]
    nodes: list[Node]
    outputs: list[Ref]
    params: dict[str, torch.Tensor]
    #: facts passes established (``canonical``, ``quantized``, ...), see compiler.passes
    properties: set[str] = field(default_factory=set)
    #: where the graph came from (model source string)
    source: str = ""
    #: the output is a tuple (True) or a single tensor
    multi_output: bool = False
    #: results of analyses over the graph, cached by the code that computes them (e.g.
    #: compiler.accuracy's measured cost of integer placement); not part of the structure
    analyses: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def node(self, name: str) -> Node:
        """The node called ``name`` (KeyError naming it otherwise)."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named {name!r} in the graph")

    def node_map(self) -> dict[str, Node]:
        """Nodes by name."""
        return {n.name: n for n in self.nodes}

    def value_type(self, name: str) -> tuple[TensorType, ...]:
        """Types of a value (graph input or node output)."""
        for n, t in self.inputs:
            if n == name:
                return (t,)
        return self.node(name).out

    def users(self) -> dict[str, list[str]]:
        """For every value name, the nodes that read it (in order)."""
        u: dict[str, list[str]] = {n: [] for n, _ in self.inputs}
        for n in self.nodes:
            u.setdefault(n.name, [])
            for i in n.inputs:
                u.setdefault(i, []).append(n.name)
        return u

    def fingerprint(self) -> str:
        """sha256 of the graph structure (nodes, shapes, input/output names; not weights)."""
        h = hashlib.sha256()
        for name, t in self.inputs:
            h.update(json.dumps([name, t.to_json()]).encode())
        for n in self.nodes:
            h.update(n.signature().encode())
        h.update(json.dumps([r.name for r in self.outputs]).encode())
        return h.hexdigest()

    def validate(self) -> None:
        """Check that every reference resolves to an earlier value or a parameter."""
        known = {n for n, _ in self.inputs}
        for n in self.nodes:
            for i in n.inputs:
                if i not in known:
                    raise UserValueError(f"node {n.name!r} reads {i!r} before it is defined")
            for w in n.weights:
                if w not in self.params:
                    raise UserValueError(f"node {n.name!r} reads unknown parameter {w!r}")
            if n.op not in OP_KINDS:
                raise UserValueError(f"node {n.name!r} has unknown op kind {n.op!r}")
            known.add(n.name)
        for r in self.outputs:
            if r.name not in known:
                raise UserValueError(f"graph output {r.name!r} is not defined")

    def counts(self) -> dict[str, int]:
        """Number of nodes per op kind."""
        c: dict[str, int] = {}
        for n in self.nodes:
            c[n.op] = c.get(n.op, 0) + 1
        return dict(sorted(c.items()))
