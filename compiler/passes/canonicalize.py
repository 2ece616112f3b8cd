"""Canonicalization: classify every node into a canonical op kind, fold weight matmuls into
``linear``, annotate shapes/MACs, mark explicit attention patterns, drop dead nodes.

Ensures ``canonical``: every node has a kind from :data:`compiler.ir.OP_KINDS`; every
``linear`` has ``attrs`` ``m, k, n, macs, weight, bias, w_layout`` (``"nk"`` for
``torch.nn.Linear`` weights ``[N, K]``, ``"kn"`` for ``addmm``/``mm`` weights ``[K, N]`` such as
GPT-2's Conv1D; ``x_arg`` (default 0) is the position of the activation argument); every ``matmul`` has ``batch, m, k, n, macs``; every ``attention`` has
``bh, l, s, d, dv, macs, causal, masked``.
"""

from __future__ import annotations

from typing import Any

from compiler.ir import Graph, Node, Param, Ref, TensorType
from compiler.passes.base import Pass, PassError

__all__ = ["Canonicalize", "LAYOUT_TARGETS", "classify"]

#: ATen ops that only move or re-view data (zero arithmetic)
LAYOUT_TARGETS = frozenset(
    f"aten.{n}" for n in (
        "view.default", "_unsafe_view.default", "reshape.default", "permute.default",
        "transpose.int", "t.default", "unsqueeze.default", "squeeze.dim", "squeeze.dims",
        "squeeze.default", "clone.default", "contiguous.default", "expand.default",
        "slice.Tensor", "select.int", "split.Tensor", "split_with_sizes.default",
        "dropout.default", "alias.default", "detach.default", "flatten.using_ints",
        "unflatten.int", "chunk.default", "cat.default")) | {"getitem"}

_KINDS = {
    "aten.linear.default": "linear",
    "aten.scaled_dot_product_attention.default": "attention",
    "aten._softmax.default": "softmax", "aten.softmax.int": "softmax",
    "aten.layer_norm.default": "layer_norm",
    "aten.gelu.default": "gelu", "aten.relu.default": "relu",
    "aten.add.Tensor": "add", "aten.mul.Tensor": "mul",
    "aten.embedding.default": "embedding",
}
_MATMULS = ("aten.matmul.default", "aten.bmm.default", "aten.mm.default")


def _prod(xs: tuple[int, ...]) -> int:
    p = 1
    for x in xs:
        p *= x
    return p


def classify(node: Node, types: dict[str, tuple[TensorType, ...]],
             params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Canonical kind and attrs of one node, given the types of all earlier values."""
    t = node.target
    a = node.args

    def shape(x: Any) -> tuple[int, ...]:
        if isinstance(x, Ref):
            return types[x.name][0].shape
        if isinstance(x, Param):
            return tuple(params[x.name].shape)
        raise PassError(f"node {node.name}: expected a tensor argument, got {x!r}")

    if t in LAYOUT_TARGETS:
        return "layout", {}
    if t == "aten.linear.default":
        w = a[1]
        bias = a[2] if len(a) > 2 else node.kwargs.get("bias")
        if not isinstance(w, Param):
            return "matmul", _mm_attrs(shape(a[0]), tuple(reversed(shape(w))))
        n, k = shape(w)
        m = _prod(shape(a[0])) // k
        return "linear", {"m": m, "k": k, "n": n, "macs": m * k * n, "weight": w.name,
                          "bias": bias.name if isinstance(bias, Param) else None,
                          "w_layout": "nk"}
    if t == "aten.addmm.default" and isinstance(a[2], Param) and isinstance(a[0], Param) \
            and len(shape(a[2])) == 2 and not node.kwargs:
        k, n = shape(a[2])
        m = shape(a[1])[0]
        return "linear", {"m": m, "k": k, "n": n, "macs": m * k * n, "weight": a[2].name,
                          "bias": a[0].name, "w_layout": "kn", "x_arg": 1}
    if t in _MATMULS:
        if isinstance(a[1], Param) and len(shape(a[1])) == 2:
            k, n = shape(a[1])
            m = _prod(shape(a[0])) // k
            return "linear", {"m": m, "k": k, "n": n, "macs": m * k * n, "weight": a[1].name,
                              "bias": None, "w_layout": "kn"}
        return "matmul", _mm_attrs(shape(a[0]), shape(a[1]))
    if t == "aten.scaled_dot_product_attention.default":
        q, k, v = shape(a[0]), shape(a[1]), shape(a[2])
        mask = a[3] if len(a) > 3 else node.kwargs.get("attn_mask")
        causal = bool(a[5] if len(a) > 5 else node.kwargs.get("is_causal", False))
        bh = _prod(q[:-2])
        attrs = {"bh": bh, "l": q[-2], "s": k[-2], "d": q[-1], "dv": v[-1],
                 "macs": bh * q[-2] * k[-2] * (q[-1] + v[-1]), "causal": causal,
                 "masked": mask is not None}
        return "attention", attrs
    kind = _KINDS.get(t)
    if kind is None:
        return "other", {}
    attrs: dict[str, Any] = {}
    if kind in ("softmax", "layer_norm"):
        s = node.out[0].shape
        attrs = {"rows": _prod(s[:-1]), "length": s[-1] if s else 1}
    elif kind in ("gelu", "relu", "add", "mul"):
        attrs = {"elements": node.out[0].numel if node.out else 0}
        if kind == "gelu":
            attrs["approximate"] = node.kwargs.get("approximate", a[1] if len(a) > 1 else "none")
    return kind, attrs


def _mm_attrs(sa: tuple[int, ...], sb: tuple[int, ...]) -> dict[str, Any]:
    if len(sa) < 2 or len(sb) < 2:
        raise PassError(f"matmul of shapes {sa} and {sb} is not a matrix product")
    m, k = sa[-2], sa[-1]
    n = sb[-1]
    batch = max(_prod(sa[:-2]), _prod(sb[:-2]))
    return {"batch": batch, "m": m, "k": k, "n": n, "macs": batch * m * k * n}


class Canonicalize(Pass):
    """See the module docstring."""

    name = "canonicalize"
    requires = frozenset()
    ensures = frozenset({"canonical"})

    def run(self, graph: Graph) -> None:
        # dead-code elimination (export keeps nothing unused, but passes may)
        live = {r.name for r in graph.outputs}
        kept = []
        for n in reversed(graph.nodes):
            if n.name in live:
                kept.append(n)
                live.update(n.inputs)
        graph.nodes = list(reversed(kept))
        types: dict[str, tuple[TensorType, ...]] = {n: (t,) for n, t in graph.inputs}
        for n in graph.nodes:
            n.op, attrs = classify(n, types, graph.params)
            n.attrs.update(attrs)
            types[n.name] = n.out
        self._mark_attention_patterns(graph)

    @staticmethod
    def _mark_attention_patterns(graph: Graph) -> None:
        """Mark ``matmul -> (scale/mask/layout)* -> softmax -> (layout)* -> matmul`` chains."""
        users = graph.users()
        nodes = graph.node_map()
        group = 0
        for sm in graph.nodes:
            if sm.op != "softmax":
                continue
            # walk back to the producing matmul through elementwise/layout ops
            cur, back = sm, []
            while cur.inputs and cur.op != "matmul":
                prev = nodes.get(cur.inputs[0])
                if prev is None or prev.op not in ("matmul", "mul", "add", "layout", "other"):
                    break
                back.append(prev)
                cur = prev
            if cur.op != "matmul":
                continue
            fwd = [u for u in users.get(sm.name, []) if nodes[u].op in ("matmul", "layout")]
            av = None
            while fwd:
                u = nodes[fwd[0]]
                if u.op == "matmul":
                    av = u
                    break
                fwd = [x for x in users.get(u.name, []) if nodes[x].op in ("matmul", "layout")]
            if av is None:
                continue
            for n in (cur, sm, av):
                n.attrs["attention_group"] = group
            cur.attrs["attention_role"] = "qk"
            sm.attrs["attention_role"] = "softmax"
            av.attrs["attention_role"] = "av"
            group += 1

    def check(self, graph: Graph) -> None:
        need = {"linear": ("m", "k", "n", "macs", "weight", "w_layout"),
                "matmul": ("batch", "m", "k", "n", "macs"),
                "attention": ("bh", "l", "s", "d", "macs")}
        for n in graph.nodes:
            for key in need.get(n.op, ()):
                if key not in n.attrs:
                    raise PassError(f"canonicalize: node {n.name} ({n.op}) lacks attr {key!r}")
