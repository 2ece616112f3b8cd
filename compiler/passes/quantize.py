"""Int8 quantization with calibration.

Weights: symmetric int8 per output channel, ``s_w[c] = max|W[c,:]| / 127``,
``Wq = clamp(round_half_even(W / s_w), -127, 127)``. Activations: symmetric int8 per tensor,
``q = clamp(round_half_even(x / s), -128, 127)``; ``s`` is chosen on the calibration inputs
(``method="mse"``, default: the clip level ``max|x| * r``, r = 1.0 .. 0.2, with the lowest
quantization MSE; ``method="absmax"``: ``max|x| / 127``).
A linear's bias becomes int32 ``round(b / (s_in * s_w[c]))`` and its requantizer the int32
multiplier and shift of ``s_in * s_w[c] / s_out`` from :func:`golden.requant.quantize_multiplier`.

Sensitive ops: a linear that reads a GELU output (the FFN down-projection) gets
``attrs["keep_float"]`` with the reason, and integer targets refuse it, so it stays in float32 on
the CPU/GPU: per-tensor int8 of the GELU output (long-tailed) costs MiniLM about 0.13 of
embedding cosine, everything else together well under 0.01.

Ensures ``quantized``: every ``linear``, ``matmul``, ``softmax``, ``layer_norm``, ``gelu`` and
``relu`` node has ``attrs["quant"] = {"in_scales": [...], "out_scale": s}`` with positive finite
scales, and every linear/matmul requantizer is representable (else the error names the node).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from compiler.interp import run_graph
from compiler.ir import Graph, Node
from compiler.passes.base import Pass, PassError
from golden.requant import INT32_MAX, INT32_MIN, quantize_multiplier

__all__ = ["Quantize", "QLinear", "QUANT_KINDS", "linear_qparams", "matmul_qparams", "mse_scale",
           "quantize_tensor", "quantize_weight"]

#: op kinds that get activation scales
QUANT_KINDS = ("linear", "matmul", "softmax", "layer_norm", "gelu", "relu")
_EPS = 1e-8


def quantize_tensor(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Float -> int8 values (int64): ``clamp(round_half_even(x / scale), -128, 127)``."""
    return torch.clamp(torch.round(x.to(torch.float64) / scale), -128, 127).to(torch.int64)


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel int8 weights of ``w[N, K]``: returns ``(wq[N, K] int64, scales[N] float64)``."""
    w = w.detach().to(torch.float64)
    s = torch.clamp(w.abs().amax(dim=1) / 127.0, min=_EPS)
    return torch.clamp(torch.round(w / s[:, None]), -127, 127).to(torch.int64), s


@dataclass
class QLinear:
    """Integer parameters of one quantized linear: ``b[K,N]`` int8, int32 bias, requantizer."""

    wq: torch.Tensor  # [K, N] int64 holding int8
    w_scale: torch.Tensor  # [N] float64
    bias: torch.Tensor  # [N] int64 holding int32
    mult: torch.Tensor  # [N] int64
    shift: torch.Tensor  # [N] int64
    in_scale: float
    out_scale: float


def linear_qparams(graph: Graph, node: Node) -> QLinear:
    """Integer parameters of a quantized ``linear`` node (cached in ``node.attrs['_q']``)."""
    cached = node.attrs.get("_q")
    if isinstance(cached, QLinear):
        return cached
    q = node.attrs.get("quant")
    if not q:
        raise PassError(f"node {node.name} is not quantized (run the quantize pass)")
    w = graph.params[node.attrs["weight"]]
    if node.attrs["w_layout"] == "kn":
        w = w.t()
    wq, ws = quantize_weight(w)
    s_in, s_out = float(q["in_scales"][0]), float(q["out_scale"])
    if node.attrs.get("bias"):
        b = graph.params[node.attrs["bias"]].detach().to(torch.float64)
        bias = torch.clamp(torch.round(b / (s_in * ws)), INT32_MIN, INT32_MAX).to(torch.int64)
    else:
        bias = torch.zeros(ws.shape[0], dtype=torch.int64)
    mults, shifts = [], []
    for c in range(ws.shape[0]):
        try:
            m, s = quantize_multiplier(float(s_in * ws[c] / s_out))
        except ValueError as e:
            raise PassError(f"node {node.name}: channel {c}: {e}") from None
        mults.append(m)
        shifts.append(s)
    ql = QLinear(wq=wq.t().contiguous(), w_scale=ws, bias=bias,
                 mult=torch.tensor(mults, dtype=torch.int64),
                 shift=torch.tensor(shifts, dtype=torch.int64), in_scale=s_in, out_scale=s_out)
    node.attrs["_q"] = ql
    return ql


def matmul_qparams(node: Node) -> tuple[float, float, int, int]:
    """``(s_a, s_b, mult, shift)`` of a quantized dynamic ``matmul`` node (per-tensor)."""
    q = node.attrs["quant"]
    sa, sb = float(q["in_scales"][0]), float(q["in_scales"][1])
    try:
        m, s = quantize_multiplier(sa * sb / float(q["out_scale"]))
    except ValueError as e:
        raise PassError(f"node {node.name}: {e}") from None
    return sa, sb, m, s


def _check_linear_range(graph: Graph, node: Node) -> None:
    """Check the extreme per-channel requant scales are representable (full params are lazy)."""
    w = graph.params[node.attrs["weight"]]
    ws = torch.clamp(w.detach().abs().amax(dim=1 if node.attrs["w_layout"] == "nk" else 0)
                     / 127.0, min=_EPS)
    q = node.attrs["quant"]
    for s in (float(ws.min()), float(ws.max())):
        try:
            quantize_multiplier(q["in_scales"][0] * s / q["out_scale"])
        except ValueError as e:
            raise PassError(f"node {node.name}: {e}") from None


def mse_scale(absvals: torch.Tensor, top: float) -> float:
    """Scale minimizing the int8 quantization MSE of ``absvals`` over clip levels ``top * r``,
    ``r`` in 1.0, 0.95, ..., 0.20 (outliers are clipped when that lowers the error)."""
    best = (float("inf"), top / 127.0)
    for i in range(17):
        s = top * (1.0 - 0.05 * i) / 127.0
        err = float(((torch.clamp(torch.round(absvals / s), max=127) * s - absvals) ** 2).mean())
        if err < best[0]:
            best = (err, s)
    return best[1]


class Quantize(Pass):
    """Calibrate activation scales on ``samples`` (each a tuple of graph inputs); see module doc."""

    name = "quantize"
    requires = frozenset({"canonical"})
    ensures = frozenset({"quantized"})

    def __init__(self, samples: Sequence[Sequence[torch.Tensor]], method: str = "absmax",
                 keep_float_after_gelu: bool = True) -> None:
        if not samples:
            raise ValueError("quantize needs at least one calibration sample")
        if method not in ("mse", "absmax"):
            raise ValueError(f"calibration method must be mse or absmax, not {method!r}")
        self.samples = [tuple(s) for s in samples]
        self.method = method
        self.keep_float_after_gelu = keep_float_after_gelu

    def run(self, graph: Graph) -> None:
        want: set[str] = set()
        for n in graph.nodes:
            if n.op in QUANT_KINDS:
                want.add(n.name)
                want.update(n.inputs)
        absmax: dict[str, float] = {}
        seen: dict[str, list[torch.Tensor]] = {}
        for name, _ in graph.inputs:
            absmax.setdefault(name, 0.0)

        def observe(node: Node, val: Any, args: tuple[Any, ...]) -> None:
            if node.name in want and isinstance(val, torch.Tensor) and val.is_floating_point():
                a = val.detach().abs().flatten()
                absmax[node.name] = max(absmax.get(node.name, 0.0), float(a.max()) if a.numel() else 0.0)
                if self.method == "mse":
                    seen.setdefault(node.name, []).append(a[:: max(1, a.numel() // 65536)])

        for s in self.samples:
            outs = run_graph(graph, s, observe=observe)
            del outs
            for (name, _), t in zip(graph.inputs, s, strict=True):
                if t.is_floating_point():
                    absmax[name] = max(absmax.get(name, 0.0), float(t.abs().max()))

        def scale(v: str) -> float:
            top = max(absmax.get(v, 0.0), _EPS)
            if self.method != "mse" or v not in seen:
                return top / 127.0
            return mse_scale(torch.cat(seen[v]).to(torch.float64), top)

        nodes = graph.node_map()

        def producer_kind(v: str) -> str:
            while v in nodes and nodes[v].op == "layout" and nodes[v].inputs:
                v = nodes[v].inputs[0]
            return nodes[v].op if v in nodes else "input"

        for n in graph.nodes:
            n.attrs.pop("_q", None)
            if self.keep_float_after_gelu and n.op == "linear" and \
                    producer_kind(n.inputs[0]) == "gelu":
                n.attrs["keep_float"] = ("FFN down-projection reads the GELU output, whose "
                                         "per-tensor int8 quantization costs too much accuracy")
            if n.op not in QUANT_KINDS:
                continue
            ins = [n.inputs[0]] if n.op != "matmul" else list(n.inputs[:2])
            if n.op == "matmul" and len(ins) == 1:  # x @ x
                ins = ins * 2
            n.attrs["quant"] = {"in_scales": [scale(v) for v in ins], "out_scale": scale(n.name)}
            if n.op == "linear":
                _check_linear_range(graph, n)
            elif n.op == "matmul":
                matmul_qparams(n)

    def check(self, graph: Graph) -> None:
        for n in graph.nodes:
            if n.op not in QUANT_KINDS:
                continue
            q = n.attrs.get("quant")
            if not q:
                raise PassError(f"quantize: node {n.name} ({n.op}) has no scales")
            for s in [*q["in_scales"], q["out_scale"]]:
                if not (math.isfinite(s) and s > 0):
                    raise PassError(f"quantize: node {n.name} has scale {s!r}")
