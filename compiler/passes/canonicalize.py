"""Canonicalization: fold weights computed from parameters, classify every node into a canonical
op kind, fold weight matmuls into ``linear``, annotate shapes/MACs, mark explicit attention
patterns, drop dead nodes.

RMSNorm written out as ATen ops becomes one ``aten.rms_norm`` node of kind ``rms_norm``
(:func:`fuse_rms_norm`); ``silu`` is kept whole by the frontend.

Weight folding (:func:`fold_weight_constants`): a weight that ``forward`` computes from
parameters alone (weight norm ``g * v / |v|``, an expert's slice ``experts[i]`` as eager MoE
code indexes it, ``W.t()``) is evaluated once at compile time and becomes a parameter of its
own (``const:<node>``), so the op reading it is an ordinary ``linear`` with per-channel int8
weights. A weight that depends on the inputs stays a dynamic ``matmul``: a ``linear`` of that
kind gets ``attrs["transpose_b"] = True`` (``y = x @ W^T + b``: the executor transposes its
second operand and adds the bias) and ``attrs["bias_arg"]`` (2, or None without a bias).

Ensures ``canonical``: every node has a kind from :data:`compiler.ir.OP_KINDS`; every
``linear`` has ``attrs`` ``m, k, n, macs, weight, bias, w_layout`` (``"nk"`` for
``torch.nn.Linear`` weights ``[N, K]``, ``"kn"`` for ``addmm``/``mm`` weights ``[K, N]`` such as
GPT-2's Conv1D; ``x_arg`` (default 0) is the position of the activation argument); every ``matmul`` has ``batch, m, k, n, macs``; every ``attention`` has
``bh, l, s, d, dv, macs, causal, masked`` (and ``q_heads``, ``kv_heads``: fewer key/value
heads is grouped-query attention; ``causal`` also when the mask is a constant causal pattern,
:func:`mark_causal_masks`).

Convolutions (:func:`convolution_to_gemm`): one with a constant weight, ``groups == 1``, not
transposed, 1-D or 2-D (any stride, padding, dilation) becomes a GEMM: the input windows laid
out as rows (``aten.im2col``, a 1-D one through a 2-D ``unsqueeze``; windows that tile the input
without overlap or padding, as ViT's patch embedding, a ``view`` and ``permute`` instead), a
``linear`` (``aten.linear``, node ``<conv>_gemm``) with the weight ``[C_out, C_in * kernel]``
(parameter ``const:<conv>.gemm_weight``) and the bias, and layout ops back to the
convolution's shape under the convolution's own name. Those are layout ops (host data
movement, no arithmetic); the linear is quantized, placed and executed as any other and
carries ``attrs["conv"]`` (kernel, stride, padding, dilation), its MACs those of the
convolution. A grouped or transposed convolution stays ``other`` (no unit runs it) with
``attrs["macs"]``, ``attrs["conv"]`` and ``attrs["conv_host"]`` (why it was not rewritten), so
accelerator MAC shares count it.

Mixture-of-experts GEMMs: a grouped matmul (:data:`GROUPED_MM_TARGETS`: transformers'
``grouped_mm_fallback`` custom operator, ``aten._grouped_mm``) whose stacked expert weight is a
parameter (``permute`` of ``gate_up_proj`` / ``down_proj``, folded as above) becomes a
``grouped_linear`` with ``attrs`` ``experts, m, k, n, macs, weight, w_layout`` (``"ekn"``: the
weight is ``[E, K, N]``, expert ``e`` computes ``x[offs[e-1]:offs[e]] @ W[e]``) and
``offsets_arg`` (where the cumulative rows per expert, computed by the router on the host, are).
transformers' ``batched_mm`` experts gather a copy of the expert weights for every routed row
and multiply them one row at a time, ``bmm(W[ids], x.unsqueeze(-1))`` (or ``bmm(x.unsqueeze(1),
W[ids])``); with ``W`` a stacked 3-D parameter (or a constant of parameters) and ``ids`` one
expert index per row, :func:`fuse_gathered_expert_mm` makes that ``bmm`` one
:data:`GATHERED_MM_TARGET` node ``(x, W, ids, transposed)`` (the same values, without the
gathered weight copies), which is a ``grouped_linear`` with ``ids_arg`` (where the expert of each
row is) instead of ``offsets_arg``: expert ``e`` computes the rows ``s`` with ``ids[s] == e``.
"""

from __future__ import annotations

from typing import Any

import torch

from compiler.frontend import resolve_target
from compiler.ir import Graph, Node, Param, Ref, TensorType, map_structure
from compiler.passes.base import Pass, PassError
from golden.errors import UserValueError

__all__ = ["Canonicalize", "CONST_PREFIX", "GATHERED_MM_TARGET", "GROUPED_MM_TARGETS",
           "LAYOUT_TARGETS", "classify", "constant_nodes", "convolution_to_gemm",
           "fuse_gathered_expert_mm",
           "grouped_offsets", "grouped_row_index",
           "evaluate_constants", "fold_weight_constants", "fuse_rms_norm", "mark_causal_masks",
           "mark_grouped_kv"]

#: name prefix of the parameters that weight folding creates
CONST_PREFIX = "const:"
#: ``bmm`` of each row with its own expert's weights (``ids[s]``), what :func:`fuse_gathered_expert_mm`
#: makes of transformers' ``batched_mm`` experts: args ``(x [S, K], W, ids [S], transposed)``
GATHERED_MM_TARGET = "fmforge.gathered_mm.default"
#: argument positions that hold a weight (or bias) of a GEMM-like ATen op
_WEIGHT_SLOTS = {"aten.linear.default": (1, 2), "aten.addmm.default": (0, 2),
                 "aten.matmul.default": (0, 1), "aten.mm.default": (0, 1),
                 "aten.bmm.default": (0, 1), "aten.convolution.default": (1, 2), **{t: (1,) for t in ("transformers.grouped_mm_fallback.default",
                                                                  "aten._grouped_mm.default",
                                                                  GATHERED_MM_TARGET)}}


@torch.library.custom_op("fmforge::gathered_mm", mutates_args=())
def _gathered_mm(x: torch.Tensor, w: torch.Tensor, ids: torch.Tensor,
                 transposed: bool) -> torch.Tensor:
    """Row ``s`` of ``x`` times the weights of expert ``ids[s]``, as the ``bmm`` it replaces:
    ``bmm(w[ids], x[:, :, None])`` (``w`` ``[E, N, K]``, out ``[S, N, 1]``) or, ``transposed``,
    ``bmm(x[:, None, :], w[ids])`` (``w`` ``[E, K, N]``, out ``[S, 1, N]``)."""
    if transposed:
        return torch.bmm(x.unsqueeze(1), w[ids])
    return torch.bmm(w[ids], x.unsqueeze(-1))


@_gathered_mm.register_fake
def _gathered_mm_fake(x: torch.Tensor, w: torch.Tensor, ids: torch.Tensor,
                      transposed: bool) -> torch.Tensor:
    s = x.shape[0]
    return x.new_empty((s, 1, w.shape[2]) if transposed else (s, w.shape[1], 1))


#: grouped matrix products ``out[rows of group e] = x[rows of group e] @ W[e]`` with ``W`` of
#: shape ``[E, K, N]`` and the groups' cumulative end rows ``offs`` (transformers' MoE experts)
GROUPED_MM_TARGETS = ("transformers.grouped_mm_fallback.default", "aten._grouped_mm.default")
#: ATen ops never evaluated at compile time (their value is not a function of their inputs)
_NOT_CONSTANT = ("rand", "bernoulli", "normal", "uniform", "dropout", "empty")

#: ATen ops that only move or re-view data (zero arithmetic)
LAYOUT_TARGETS = frozenset(
    f"aten.{n}" for n in (
        "view.default", "_unsafe_view.default", "reshape.default", "permute.default",
        "transpose.int", "t.default", "unsqueeze.default", "squeeze.dim", "squeeze.dims",
        "squeeze.default", "clone.default", "contiguous.default", "expand.default",
        "slice.Tensor", "select.int", "split.Tensor", "split_with_sizes.default",
        "dropout.default", "alias.default", "detach.default", "flatten.using_ints",
        "unflatten.int", "chunk.default", "cat.default", "im2col.default")) | {"getitem"}

_KINDS = {
    "aten.linear.default": "linear",
    "aten.scaled_dot_product_attention.default": "attention",
    "aten._softmax.default": "softmax", "aten.softmax.int": "softmax",
    "aten.layer_norm.default": "layer_norm",
    "aten.gelu.default": "gelu", "aten.relu.default": "relu", "aten.silu.default": "silu",
    "aten.rms_norm.default": "rms_norm",
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
    if t in _WEIGHT_SLOTS and not node.inputs:  # a product of constants: computed as written
        return "other", {}
    if t == "aten.linear.default":
        w = a[1]
        bias = a[2] if len(a) > 2 else node.kwargs.get("bias")
        if not isinstance(w, Param) or not (bias is None or isinstance(bias, Param)):
            # weight or bias computed from the inputs: a dynamic y = x @ W^T (+ b)
            sw = shape(w)
            if len(sw) != 2 or len(shape(a[0])) < 2:  # no matrix product: run as written
                return "other", {}
            attrs = _mm_attrs(shape(a[0]), (sw[1], sw[0]))
            attrs.update(transpose_b=True, bias_arg=2 if bias is not None else None)
            return "matmul", attrs
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
    if t in GROUPED_MM_TARGETS:
        return _grouped_attrs(node, shape)
    if t == GATHERED_MM_TARGET:
        return _gathered_attrs(node, shape)
    if t in _MATMULS:
        if isinstance(a[1], Param) and len(shape(a[1])) == 2:
            k, n = shape(a[1])
            m = _prod(shape(a[0])) // k
            return "linear", {"m": m, "k": k, "n": n, "macs": m * k * n, "weight": a[1].name,
                              "bias": None, "w_layout": "kn"}
        if len(shape(a[0])) < 2 or len(shape(a[1])) < 2:  # vector products run as they are
            return "other", {}
        return "matmul", _mm_attrs(shape(a[0]), shape(a[1]))
    if t == "aten.scaled_dot_product_attention.default":
        q, k, v = shape(a[0]), shape(a[1]), shape(a[2])
        mask = a[3] if len(a) > 3 else node.kwargs.get("attn_mask")
        causal = bool(a[5] if len(a) > 5 else node.kwargs.get("is_causal", False))
        bh = _prod(q[:-2])
        attrs = {"bh": bh, "l": q[-2], "s": k[-2], "d": q[-1], "dv": v[-1],
                 "macs": bh * q[-2] * k[-2] * (q[-1] + v[-1]), "causal": causal,
                 "masked": mask is not None}
        if len(q) >= 3 and len(k) >= 3:  # grouped-query attention: fewer key/value heads
            attrs.update(q_heads=q[-3], kv_heads=k[-3])
        return "attention", attrs
    if t == "aten.convolution.default":  # no unit runs it (host), but its MACs count
        return "other", {"macs": _conv_macs(shape(a[0]), shape(a[1]), node.out[0].shape,
                                            bool(a[6]) if len(a) > 6 else False,
                                            int(a[8]) if len(a) > 8 else 1),
                         "conv": True}
    kind = _KINDS.get(t)
    if kind is None:
        return "other", {}
    attrs: dict[str, Any] = {}
    if kind in ("softmax", "layer_norm", "rms_norm"):
        s = node.out[0].shape
        attrs = {"rows": _prod(s[:-1]), "length": s[-1] if s else 1}
    elif kind in ("gelu", "relu", "silu", "add", "mul"):
        attrs = {"elements": node.out[0].numel if node.out else 0}
        if kind == "gelu":
            attrs["approximate"] = node.kwargs.get("approximate", a[1] if len(a) > 1 else "none")
    return kind, attrs


def grouped_offsets(node: Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The ``offs`` operand (cumulative end row of each expert) of a grouped matmul node, from
    its resolved arguments; for a gathered one (``ids_arg``) the cumulative count of the rows
    each expert gets (its rows' number, as if they were sorted by expert)."""
    if "ids_arg" in node.attrs:
        e = int(node.attrs["experts"])
        ids = torch.as_tensor(args[int(node.attrs["ids_arg"])]).reshape(-1).to(torch.int64)
        ids = ids[(ids >= 0) & (ids < e)]  # the executor refuses others (grouped_row_index)
        return torch.cumsum(torch.bincount(ids, minlength=e)[:e], 0)
    i = int(node.attrs.get("offsets_arg", 2))
    return args[i] if i < len(args) else kwargs.get("offs")


def grouped_row_index(node: Node, args: tuple[Any, ...], kwargs: dict[str, Any],
                      rows: list[int]) -> list[torch.Tensor]:
    """The input rows of each expert of a ``grouped_linear`` (int64 index tensors): the rows
    ``s`` with ``ids[s] == e`` of a gathered one, else the contiguous ranges of ``rows`` (the
    rows per expert, from the offsets). An expert index outside ``0..E-1`` is an error."""
    if "ids_arg" not in node.attrs:
        ends = torch.cumsum(torch.tensor([0, *rows], dtype=torch.int64), 0).tolist()
        return [torch.arange(a, b) for a, b in zip(ends[:-1], ends[1:], strict=True)]
    e = int(node.attrs["experts"])
    ids = torch.as_tensor(args[int(node.attrs["ids_arg"])]).reshape(-1).to(torch.int64)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= e):
        raise UserValueError(f"op {node.name}: expert index {int(ids.min())}..{int(ids.max())} "
                             f"outside 0..{e - 1} (the weights stack {e} experts)")
    return [torch.nonzero(ids == i).reshape(-1) for i in range(e)]


def _grouped_attrs(node: Node, shape: Any) -> tuple[str, dict[str, Any]]:
    """A grouped matmul whose weight ``[E, K, N]`` is a parameter (after weight folding) and
    whose input is 2-D is a ``grouped_linear``: expert ``e`` computes ``x[offs[e-1]:offs[e]] @
    W[e]``, so its MACs are ``rows * K * N`` however the rows are routed. Anything else stays
    ``other`` (run as written, on the host)."""
    a, kw = node.args, node.kwargs
    offs = a[2] if len(a) > 2 else kw.get("offs")
    extra = {k for k, v in kw.items() if v is not None and k != "offs"}
    if len(a) < 2 or not isinstance(a[1], Param) or not isinstance(a[0], Ref) \
            or not isinstance(offs, Ref) or extra or len(a) > 3:
        return "other", {}
    sx, sw = shape(a[0]), shape(a[1])
    if len(sx) != 2 or len(sw) != 3 or sx[1] != sw[1]:
        return "other", {}
    if len(a) < 3:  # ``offs`` by keyword: the third positional argument of both targets
        node.args, node.kwargs = (a[0], a[1], offs), {}
    e, k, n = sw
    return "grouped_linear", {"experts": e, "m": sx[0], "k": k, "n": n, "macs": sx[0] * k * n,
                              "weight": a[1].name, "bias": None, "w_layout": "ekn",
                              "offsets_arg": 2}


def _gathered_attrs(node: Node, shape: Any) -> tuple[str, dict[str, Any]]:
    """A gathered expert matmul (:func:`fuse_gathered_expert_mm`) whose weight is a parameter:
    a ``grouped_linear`` routed by ``ids`` (``w_layout`` ``"enk"``: ``W [E, N, K]``, expert
    ``e`` computes ``x @ W[e]^T``; ``"ekn"``: ``x @ W[e]``)."""
    x, w, ids, transposed = node.args
    if not isinstance(w, Param):  # a weight that is no parameter: run as written, on the host
        return "other", {}
    (s, k), sw = shape(x), shape(w)
    e, n = sw[0], (sw[2] if transposed else sw[1])
    return "grouped_linear", {"experts": e, "m": s, "k": k, "n": n, "macs": s * k * n,
                              "weight": w.name, "bias": None,
                              "w_layout": "ekn" if transposed else "enk", "ids_arg": 2}


def fuse_gathered_expert_mm(graph: Graph) -> int:
    """transformers' ``batched_mm`` experts (see the module docstring): a ``bmm`` of
    ``index(W, [ids])`` (``W`` a 3-D parameter or a constant of parameters, ``ids`` 1-D integer
    of one expert per row) with ``unsqueeze(x)`` of a 2-D ``x`` (``[S, K]``), as
    ``bmm(W[ids] [S, N, K], x[:, :, None])`` or ``bmm(x[:, None, :], W[ids] [S, K, N])``,
    becomes one :data:`GATHERED_MM_TARGET` node ``(x, W, ids, transposed)`` with the same output;
    the gather and the unsqueeze are left to dead-code elimination. Returns how many."""
    nodes = graph.node_map()
    inputs = dict(graph.inputs)
    const = constant_nodes(graph)

    def ty(r: Any) -> TensorType | None:
        if isinstance(r, Param):
            p = graph.params[r.name]
            return TensorType(tuple(p.shape), str(p.dtype).removeprefix("torch."))
        if isinstance(r, Ref):
            if r.name in inputs:
                return inputs[r.name]
            n = nodes.get(r.name)
            return n.out[0] if n is not None and len(n.out) == 1 else None
        return None

    done = 0
    for n in graph.nodes:
        if n.target != "aten.bmm.default" or len(n.args) != 2 or n.kwargs \
                or not all(isinstance(a, Ref) for a in n.args):
            continue
        for gi, transposed in ((0, False), (1, True)):
            g, u = nodes.get(n.args[gi].name), nodes.get(n.args[1 - gi].name)
            if g is None or u is None or g.target != "aten.index.Tensor" \
                    or u.target != "aten.unsqueeze.default" or len(g.args) != 2 \
                    or len(u.args) != 2:
                continue
            w, idx = g.args
            if not (isinstance(w, Param) or (isinstance(w, Ref) and w.name in const)) \
                    or not isinstance(idx, (list, tuple)) or len(idx) != 1 \
                    or not isinstance(idx[0], Ref):
                continue
            tw, ti, tx = ty(w), ty(idx[0]), ty(u.args[0])
            if tw is None or ti is None or tx is None or len(tw.shape) != 3 \
                    or len(ti.shape) != 1 or ti.dtype not in ("int64", "int32") \
                    or len(tx.shape) != 2 or tx.shape[0] != ti.shape[0]:
                continue
            s, k = tx.shape
            if transposed:  # bmm(x[:, None, :], W[ids]) with W [E, K, N]
                ok = u.args[1] in (1, -2) and tw.shape[1] == k \
                    and tuple(n.out[0].shape) == (s, 1, tw.shape[2])
            else:  # bmm(W[ids], x[:, :, None]) with W [E, N, K]
                ok = u.args[1] in (2, -1) and tw.shape[2] == k \
                    and tuple(n.out[0].shape) == (s, tw.shape[1], 1)
            if ok:
                n.target, n.op = GATHERED_MM_TARGET, "other"
                n.args = (u.args[0], w, idx[0], transposed)
                done += 1
                break
    return done


def _conv_macs(x: tuple[int, ...], w: tuple[int, ...], out: tuple[int, ...], transposed: bool,
               groups: int) -> int:
    """Multiply-accumulates of ``aten.convolution``: every output element sums ``C_in / groups``
    channels times the kernel window (``w = [C_out, C_in / groups, *kernel]``); a transposed
    convolution (``w = [C_in, C_out / groups, *kernel]``) scatters every input element over
    ``C_out / groups`` channels times the window."""
    window = _prod(w[2:])
    if transposed:
        return _prod(x) * w[1] * window
    return _prod(out) * w[1] * window


def _conv_host_reason(node: Node, x: Any, w: Any, bias: Any, sx: tuple[int, ...] | None,
                      sw: tuple[int, ...] | None) -> str | None:
    """Why :func:`convolution_to_gemm` leaves ``node`` as it is (None: it rewrites it)."""
    a = node.args
    if len(a) != 9 or node.kwargs or len(node.out) != 1 or node.multi:
        return "a convolution with keyword or missing arguments runs as written"
    if a[6]:
        return "a transposed convolution is not rewritten as an im2col GEMM"
    if int(a[8]) != 1:
        return f"a grouped convolution (groups={int(a[8])}) is not rewritten as an im2col GEMM"
    if not isinstance(x, Ref):
        return "a convolution of a constant input is computed as written"
    if not isinstance(w, Param) or not (bias is None or isinstance(bias, Param)):
        return "a convolution weight or bias computed from the inputs is no constant GEMM weight"
    if sx is None or sw is None or len(sw) not in (3, 4) or len(sx) != len(sw) \
            or not node.out[0].dtype.startswith("float"):
        return "only batched 1-D and 2-D float convolutions become GEMMs"
    if list(a[7]) and any(int(p) for p in a[7]):
        return "a convolution with output padding runs as written"
    return None


def convolution_to_gemm(graph: Graph) -> int:
    """Rewrite every ``aten.convolution`` with a constant weight, ``groups == 1``, not
    transposed, 1-D or 2-D (any stride, padding, dilation) into host data movement, one
    ``linear`` and a layout op back to the convolution's shape (module docstring); returns how
    many were rewritten. Others get ``attrs["conv_host"]``, the reason they stay on the host."""
    types = {n: t for n, t in graph.inputs}
    out_nodes: list[Node] = []
    done = 0

    def shape(v: Any) -> tuple[int, ...] | None:
        if isinstance(v, Ref):
            t = types.get(v.name)
            return tuple(t.shape) if t is not None else None
        if isinstance(v, Param):
            return tuple(graph.params[v.name].shape)
        return None

    for n in graph.nodes:
        if n.target != "aten.convolution.default":
            out_nodes.append(n)
            if len(n.out) == 1:
                types[n.name] = n.out[0]
            continue
        x, w, bias = (n.args + (None,) * 3)[:3]
        sx, sw = shape(x), shape(w)
        why = _conv_host_reason(n, x, w, bias, sx, sw)
        if why is not None:
            n.attrs["conv_host"] = why
            out_nodes.append(n)
            types[n.name] = n.out[0]
            continue
        assert sx is not None and sw is not None and isinstance(x, Ref) and isinstance(w, Param)
        out_t = n.out[0]
        dt, nd = out_t.dtype, len(sw) - 2
        stride, pad, dil = ([int(v) for v in n.args[i]] for i in (3, 4, 5))
        stride, pad, dil = (v * nd if len(v) == 1 else v for v in (stride, pad, dil))
        kern, (bn, cin), c_out = list(sw[2:]), sx[:2], sw[0]
        osz = list(out_t.shape[2:])
        ck = cin * _prod(tuple(kern))
        made: list[Node] = []

        def add(suffix: str, target: str, args: tuple[Any, ...], shp: list[int],
                conv: Node = n, made: list[Node] = made, dt: str = dt, **attrs: Any) -> Ref:
            made.append(Node(name=f"{conv.name}_{suffix}" if suffix else conv.name, op="other",
                             target=target, args=args, kwargs={},
                             out=(TensorType(tuple(shp), dt),), module=conv.module,
                             attrs=dict(attrs)))
            return Ref(made[-1].name)

        patches = stride == kern and not any(pad) and all(d == 1 for d in dil) \
            and all(s % k == 0 for s, k in zip(sx[2:], kern, strict=True))
        if patches:  # non-overlapping windows (ViT patches): a pure reshape and permute
            split = [bn, cin] + [v for o, k in zip(osz, kern, strict=True) for v in (o, k)]
            v = add("patches", "aten.reshape.default", (x, split), split)
            perm = [0] + [2 + 2 * i for i in range(nd)] + [1] + [3 + 2 * i for i in range(nd)]
            v = add("patches_t", "aten.permute.default", (v, perm), [split[p] for p in perm])
            cols = add("cols", "aten.reshape.default", (v, [bn, *osz, ck]), [bn, *osz, ck])
            y = add("gemm", "aten.linear.default", (cols, Param(""), bias), [bn, *osz, c_out])
            y = add("gemm_t", "aten.permute.default", (y, [0, nd + 1, *range(1, nd + 1)]),
                    [bn, c_out, *osz])
            add("", "aten.contiguous.default", (y,), [bn, c_out, *osz])  # as the conv's output
        else:  # overlapping or padded windows: aten.im2col (1-D through a 2-D view)
            x4, k2, s2, p2, d2 = x, kern, stride, pad, dil
            if nd == 1:
                x4 = add("2d", "aten.unsqueeze.default", (x, 2), [bn, cin, 1, sx[2]])
                k2, s2, p2, d2 = [1, *kern], [1, *stride], [0, *pad], [1, *dil]
            n_out = _prod(tuple(osz))
            c = add("im2col", "aten.im2col.default", (x4, k2, d2, p2, s2), [bn, ck, n_out],
                    im2col={"kernel": kern, "stride": stride, "padding": pad,
                            "dilation": dil})
            cols = add("cols", "aten.transpose.int", (c, 1, 2), [bn, n_out, ck])
            y = add("gemm", "aten.linear.default", (cols, Param(""), bias), [bn, n_out, c_out])
            y = add("gemm_t", "aten.transpose.int", (y, 1, 2), [bn, c_out, n_out])
            y = add("gemm_c", "aten.contiguous.default", (y,), [bn, c_out, n_out])
            add("", "aten.view.default", (y, [bn, c_out, *osz]), [bn, c_out, *osz])
        pname = f"{CONST_PREFIX}{n.name}.gemm_weight"
        graph.params[pname] = graph.params[w.name].detach().reshape(c_out, ck).clone()
        gemm = next(m for m in made if m.name == f"{n.name}_gemm")
        gemm.args = (gemm.args[0], Param(pname), gemm.args[2])
        gemm.attrs["conv"] = {"from": n.name, "kernel": kern, "stride": stride, "padding": pad,
                              "dilation": dil, "im2col": not patches}
        for m in made:
            types[m.name] = m.out[0]
        out_nodes.extend(made)
        done += 1
    graph.nodes = out_nodes
    return done


def _mm_attrs(sa: tuple[int, ...], sb: tuple[int, ...]) -> dict[str, Any]:
    if len(sa) < 2 or len(sb) < 2:
        raise PassError(f"matmul of shapes {sa} and {sb} is not a matrix product")
    m, k = sa[-2], sa[-1]
    n = sb[-1]
    batch = max(_prod(sa[:-2]), _prod(sb[:-2]))
    return {"batch": batch, "m": m, "k": k, "n": n, "macs": batch * m * k * n}


def constant_nodes(graph: Graph) -> set[str]:
    """Nodes whose value depends on no graph input (parameters and literals only)."""
    const: set[str] = set()
    for n in graph.nodes:
        if not any(w in n.target for w in _NOT_CONSTANT) and all(i in const for i in n.inputs):
            const.add(n.name)
    return const


def evaluate_constants(graph: Graph, names: list[str], why: str) -> dict[str, Any]:
    """The values of the constant nodes ``names`` (and of the constants they read), computed
    with their ATen ops; ``why`` names their use in an error."""
    nodes = graph.node_map()
    need: set[str] = set()
    todo = list(names)
    while todo:
        v = todo.pop()
        if v not in need:
            need.add(v)
            todo.extend(nodes[v].inputs)
    vals: dict[str, Any] = {}

    def resolve(r: Ref | Param) -> object:
        return vals[r.name] if isinstance(r, Ref) else graph.params[r.name]

    with torch.no_grad():
        for n in graph.nodes:
            if n.name in need:
                try:
                    vals[n.name] = resolve_target(n.target)(*map_structure(n.args, resolve),
                                                            **map_structure(n.kwargs, resolve))
                except Exception as e:  # an op torch cannot evaluate here: name it
                    raise PassError(f"canonicalize: cannot evaluate node {n.name} ({n.target}), "
                                    f"which computes {why} from parameters: "
                                    f"{type(e).__name__}: {e}") from None
    return vals


def fold_weight_constants(graph: Graph) -> list[str]:
    """Evaluate every weight or bias operand of a GEMM-like op that depends on parameters only
    (no graph input) and make it a parameter ``const:<node>`` (see the module docstring).

    Returns the names of the new parameters. The nodes that computed them stay in the graph
    until dead-code elimination drops those nothing else reads.
    """
    const = constant_nodes(graph)
    slots: list[tuple[Node, int | str, str]] = []
    for n in graph.nodes:
        for i in _WEIGHT_SLOTS.get(n.target, ()):
            r = n.args[i] if i < len(n.args) else None
            if isinstance(r, Ref) and r.name in const:
                slots.append((n, i, r.name))
        if n.target == "aten.linear.default" and isinstance(n.kwargs.get("bias"), Ref) \
                and n.kwargs["bias"].name in const:
            slots.append((n, "bias", n.kwargs["bias"].name))
    if not slots:
        return []
    vals = evaluate_constants(graph, [v for _, _, v in slots], "a weight")
    made: list[str] = []
    for n, i, v in slots:
        val = vals[v]
        if not isinstance(val, torch.Tensor):
            continue
        pname = CONST_PREFIX + v
        if pname not in graph.params:
            graph.params[pname] = val.detach()
            made.append(pname)
        if i == "bias":
            n.kwargs = {**n.kwargs, "bias": Param(pname)}
        else:
            n.args = tuple(Param(pname) if j == i else x for j, x in enumerate(n.args))
    return made


def mark_grouped_kv(graph: Graph) -> int:
    """Grouped-query attention whose keys were repeated to the query heads before the op (as
    transformers' ``repeat_kv`` does: unsqueeze, expand, reshape): ``attrs["kv_heads"]`` is the
    head count before the ``expand``. Returns how many attention ops read repeated keys."""
    nodes = graph.node_map()
    found = 0
    for n in graph.nodes:
        if n.op != "attention" or "q_heads" not in n.attrs or not isinstance(n.args[1], Ref):
            continue
        v, seen = n.args[1].name, None
        k_numel = graph.value_type(v)[0].numel
        while v in nodes and nodes[v].op == "layout" and nodes[v].inputs:
            if nodes[v].target == "aten.expand.default":
                src = graph.value_type(nodes[v].inputs[0])[0].numel
                if src and k_numel % src == 0 and k_numel > src:
                    seen = int(n.attrs["kv_heads"]) * src // k_numel
                break
            v = nodes[v].inputs[0]
        if seen:
            n.attrs["kv_heads"] = seen
            found += 1
    return found


def mark_causal_masks(graph: Graph) -> int:
    """Set ``attrs["causal"]`` (and ``attrs["mask"] = "causal"``) on every attention whose mask
    is a constant (no graph input) that allows exactly the causal pattern: query ``i`` sees keys
    ``0 .. i + S - L`` in every batch and head (a bool mask, or an additive one of 0 and
    sentinels at or below -1000 / -inf). Returns how many were marked."""
    const = constant_nodes(graph)
    todo = []
    for n in graph.nodes:
        if n.op != "attention" or n.attrs.get("causal"):
            continue
        m = n.args[3] if len(n.args) > 3 else n.kwargs.get("attn_mask")
        if isinstance(m, Param) or (isinstance(m, Ref) and m.name in const):
            todo.append((n, m))
    if not todo:
        return 0
    vals = evaluate_constants(graph, [r.name for _, r in todo if isinstance(r, Ref)],
                              "an attention mask")
    marked = 0
    for n, r in todo:
        m = vals[r.name] if isinstance(r, Ref) else graph.params[r.name]
        if not isinstance(m, torch.Tensor) or m.dim() < 2:
            continue
        keep = m if m.dtype == torch.bool else (m == 0)
        if m.dtype != torch.bool and not bool(((m == 0) | (m <= -1000)).all()):
            continue  # a bias of other values: not a plain mask
        lq, s = int(n.attrs["l"]), int(n.attrs["s"])
        if tuple(keep.shape[-2:]) not in ((lq, s), (1, s), (lq, 1)):
            continue
        tri = torch.ones(lq, s, dtype=torch.bool).tril(s - lq)
        if bool((keep.expand(*keep.shape[:-2], lq, s) == tri).all()):
            n.attrs.update(causal=True, mask="causal")
            marked += 1
    return marked


def _scalar(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def fuse_rms_norm(graph: Graph) -> int:
    """Rewrite RMSNorm written out as ATen ops (``x * rsqrt(mean(x**2, -1, keepdim) + eps)``,
    times a per-channel weight parameter when there is one, as transformers' Llama, Mistral,
    Qwen2 and T5 norms are) into one ``aten.rms_norm`` node in place of the last op of the
    chain (so its users keep reading the same name); returns how many were fused. The ops the
    chain leaves unused are dropped by dead-code elimination."""
    nodes = graph.node_map()
    users = graph.users()

    def producer(x: Any, target: str) -> Node | None:
        n = nodes.get(x.name) if isinstance(x, Ref) else None
        return n if n is not None and n.target == target else None

    fused = 0
    for r in graph.nodes:
        if r.target != "aten.rsqrt.default":
            continue
        a = producer(r.args[0], "aten.add.Tensor")
        if a is None or len(a.args) != 2 or _scalar(a.args[1]) is None or a.kwargs:
            continue
        m = producer(a.args[0], "aten.mean.dim")
        if m is None or len(m.args) < 3 or m.args[2] is not True or m.kwargs:
            continue
        p = producer(m.args[0], "aten.pow.Tensor_Scalar")
        if p is None or _scalar(p.args[1]) != 2.0 or not isinstance(p.args[0], Ref):
            continue
        x = p.args[0]
        shape = graph.value_type(x.name)[0].shape
        if not shape or list(m.args[1]) not in ([-1], [len(shape) - 1]):
            continue
        ys = [nodes[u] for u in users.get(r.name, []) if nodes[u].target == "aten.mul.Tensor"
              and set(nodes[u].args) == {x, Ref(r.name)} and len(nodes[u].args) == 2]
        for y in ys:
            last, weight = y, None
            ws = users.get(y.name, [])
            if len(ws) == 1 and nodes[ws[0]].target == "aten.mul.Tensor":
                w = nodes[ws[0]]
                other = [v for v in w.args if v != Ref(y.name)]
                if len(w.args) == 2 and len(other) == 1 and isinstance(other[0], Param) \
                        and tuple(graph.params[other[0].name].shape) == (shape[-1],):
                    last, weight = w, other[0]
            last.target = "aten.rms_norm.default"
            last.args = (x, [shape[-1]], weight, _scalar(a.args[1]))
            last.kwargs = {}
            fused += 1
    return fused


class Canonicalize(Pass):
    """See the module docstring."""

    name = "canonicalize"
    requires = frozenset()
    ensures = frozenset({"canonical"})

    def run(self, graph: Graph) -> None:
        fuse_gathered_expert_mm(graph)  # before folding: its weight operand folds as others do
        fold_weight_constants(graph)
        fuse_rms_norm(graph)
        convolution_to_gemm(graph)
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
        mark_causal_masks(graph)
        mark_grouped_kv(graph)

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
                "grouped_linear": ("experts", "m", "k", "n", "macs", "weight", "w_layout"),
                "matmul": ("batch", "m", "k", "n", "macs"),
                "attention": ("bh", "l", "s", "d", "macs")}
        for n in graph.nodes:
            for key in need.get(n.op, ()):
                if key not in n.attrs:
                    raise PassError(f"canonicalize: node {n.name} ({n.op}) lacks attr {key!r}")
