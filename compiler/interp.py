"""A reference interpreter of the IR: runs every node with its ATen operator, in order.

Used for calibration (with an observer on every value) and, with a per-node override, by the
plan executor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from compiler.frontend import resolve_target
from compiler.ir import Graph, Node, Param, Ref, map_structure
from golden.errors import UserValueError

__all__ = ["NodeImpl", "float_impl", "last_uses", "run_graph", "run_nodes"]

#: ``impl(node, args, kwargs) -> value``: computes one node from resolved arguments
NodeImpl = Callable[[Node, tuple[Any, ...], dict[str, Any]], Any]


def float_impl(node: Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run a node with its own ATen operator (float, PyTorch)."""
    return resolve_target(node.target)(*args, **kwargs)


def last_uses(graph: Graph) -> dict[str, int]:
    """Per value, the index of the last node that reads it (values that no node reads are
    absent)."""
    last_use: dict[str, int] = {}
    for i, n in enumerate(graph.nodes):
        for v in n.inputs:
            last_use[v] = i
    return last_use


def run_nodes(graph: Graph, env: dict[str, Any], lo: int, hi: int, *,
              impl: NodeImpl | None = None,
              observe: Callable[[Node, Any, tuple[Any, ...]], None] | None = None,
              last_use: dict[str, int] | None = None) -> dict[str, Any]:
    """Run ``graph.nodes[lo:hi]`` on ``env`` (value name -> value: the graph inputs and every
    value computed before ``lo`` that these nodes read) in place, as :func:`run_graph` runs
    them; a value is dropped from ``env`` after its last use (``last_use``, default
    :func:`last_uses`) unless it is a graph output. Returns ``env``."""
    last_use = last_uses(graph) if last_use is None else last_use
    keep = {r.name for r in graph.outputs}
    run = impl or float_impl

    def resolve(r: Ref | Param) -> Any:
        return env[r.name] if isinstance(r, Ref) else graph.params[r.name]

    with torch.no_grad():
        for i in range(lo, hi):
            n = graph.nodes[i]
            args = map_structure(n.args, resolve)
            kwargs = map_structure(n.kwargs, resolve)
            val = run(n, args, kwargs)
            env[n.name] = val
            if observe is not None:
                observe(n, val, args)
            for v in n.inputs:
                if last_use.get(v) == i and v not in keep:
                    env.pop(v, None)
    return env


def run_graph(graph: Graph, inputs: Sequence[torch.Tensor], *, impl: NodeImpl | None = None,
              observe: Callable[[Node, Any, tuple[Any, ...]], None] | None = None) -> list[Any]:
    """Run ``graph`` on ``inputs`` (one tensor per graph input) and return its outputs.

    ``impl`` computes each node (default: :func:`float_impl`); ``observe(node, value, args)``
    sees every node's result. Values are freed after their last use.
    """
    if len(inputs) != len(graph.inputs):
        raise UserValueError(f"graph takes {len(graph.inputs)} inputs, got {len(inputs)}")
    env: dict[str, Any] = {name: t for (name, _), t in zip(graph.inputs, inputs, strict=True)}
    run_nodes(graph, env, 0, len(graph.nodes), impl=impl, observe=observe)
    return [env[r.name] for r in graph.outputs]
