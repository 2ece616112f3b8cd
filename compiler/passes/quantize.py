"""Int8 quantization with calibration.

Weights: symmetric int8 per output channel, ``s_w[c] = max|W[c,:]| / 127``,
``Wq = clamp(round_half_even(W / s_w), -127, 127)``. Activations: symmetric int8 per tensor,
``q = clamp(round_half_even(x / s), -128, 127)``; ``s`` is chosen on the calibration inputs
(``method="mse"``, default: the clip level ``max|x| * r``, r = 1.0 .. 0.2, with the lowest
quantization MSE; ``method="absmax"``: ``max|x| / 127``).
A dynamic ``matmul`` gets one per-tensor scale per operand: a computed operand's from
calibration, a parameter operand's (``W @ x`` with ``W`` a parameter) from its own values,
``max|W| / 127`` (:func:`param_scale`); a ``linear`` with a computed weight (a matmul with
``attrs["transpose_b"]``) adds its bias in the accumulator as int32 ``round(b / (s_a * s_b))``.
A linear's bias becomes int32 ``round(b / (s_in * s_w[c]))`` and its requantizer the int32
multiplier and shift of ``s_in * s_w[c] / s_out`` from :func:`golden.requant.quantize_multiplier`.

Masked softmax: the values of a softmax input at or below :data:`MASK_SENTINEL` (an additive
mask's -1e4 / -1e9 / dtype minimum / -inf) are mask positions; calibration leaves them out of
the softmax's input scale (with them, a causal mask of -1e4 set the scale to 78.7 and every
real logit quantized to 0), and the executor passes them to the integer softmax as its mask
(1 bit per element beside the int8 logits).

Per-channel output scales (``per_channel_out=True``, default): a linear whose output reaches
only residual ``add`` nodes (directly or through channel-preserving layout ops such as ``clone``
or a ``view`` that keeps the last dimension) gets one output scale per output channel,
``quant["out_scales"][c] = max|y[..., c]| / 127``, folded **exactly** into the GEMM engine's
per-channel requantizer (``mult[c], shift[c]`` of ``s_in * s_w[c] / s_out[c]``; the requantizer
already has one multiplier per channel). The int8 result is dequantized per channel by its
consumer, the residual ``add``, which no integer target runs (it is a float op on the host), so
every accelerator op still reads per-tensor int8. ``quant["out_scale"]`` then holds
``max(out_scales)`` for tools that want one number. Why: MiniLM's FFN down-projection (the
linear reading the GELU output) writes one outlier channel (|y| up to 195 where the median
channel stays below 1); a per-tensor int8 output scale wipes out the other 383 channels and
costs about 0.11 of sentence-embedding cosine. Its per-tensor int8 *input* (the GELU output)
costs only about 0.01 (measured; docs/compiler.md).

Few calibration rows (fewer than :data:`MIN_CHANNEL_ROWS`, 256, rows of that output over all
samples: a decode step sees one row per sample): a channel's own maximum over ``R`` rows is
exceeded by about one new value in ``R + 1``, so with 16 rows nearly every new row clips some
channel (gpt2-tiny's decode step at an empty cache: 111 of 128 channels of the first attention
output projection above their calibrated maximum, up to 4x). Then :func:`channel_scales`:
each channel's root mean square times one peak-to-RMS ratio pooled over all ``R * C`` values,
at least the channel's own maximum and at most the per-tensor maximum. With 256 rows or more
(MiniLM, the full-sequence models at their default length) each channel keeps its own maximum.

16-bit input path (``ffn_down="int16"``, default): a linear that reads a GELU output gets
``quant["in_bits"] = 16`` and ``quant["out_bits"] = 32``: its input is quantized per tensor to
``x16 = clamp(round(x / s), -32640, 32639)``, ``s = max|x| / 32639``, split exactly into two
int8 bytes ``lo = ((x16 + 128) mod 256) - 128`` and ``hi = (x16 - lo) / 256`` (both in
[-128, 127]), and runs as two int8 passes of the GEMM engine (or the crossbars) over the same
int8 weights with int32 results; the host combines ``256 * acc_hi + acc_lo + bias`` in int64
(exact) and scales it by ``s * s_w[c]`` for the residual add it feeds (a float host op). Targets
price it as a GEMM with ``2M`` rows; the partitioner moves its input as 2 bytes and its result as
4 bytes per element. The GELU feeding it gets ``attrs["keep_float"]`` (the GELU unit emits
int8, which would throw the 16 bits away), so it runs in float on the host.
``ffn_down="int8"``: plain per-tensor int8 input (with per-channel output scales).
``ffn_down="float"`` (``fmforge compile --float-ffn-down``; ``keep_float_after_gelu=True`` is the
same) restores the old behaviour: the linear gets ``attrs["keep_float"]`` and stays in float32 on
the CPU/GPU.

Activation smoothing (:mod:`compiler.passes.smooth`, run before this pass): a linear's
``attrs["smooth"]`` is copied into ``quant["smooth"]``. Folded smoothing is already in the
graph's parameters; a per-channel host quantizer (``form == "host"``) keeps ``in_scales`` as the
plain per-tensor scale (what a backend without it runs) and :func:`linear_qparams` with
``host_smooth=True`` gives the smoothed integers (``W * s``, ``x / (s_in' * s)``).

Mixture of experts (``grouped_linear``, :mod:`compiler.passes.canonicalize`): the input and
output are int8 per tensor (one calibrated scale each, shared by every expert, so the router's
row gather and the experts' results stay on one grid); each expert ``e`` has its own int8
weights per output channel, ``s_w[e, c] = max|W[e, :, c]| / 127``, and its own requantizer
``s_in * s_w[e, c] / s_out`` (:func:`grouped_qparams`). Calibration also records how many rows
the router sent to each expert on each sample (``attrs["expert_rows"]``, one list per sample):
the targets price the experts' GEMMs with these counts (:mod:`compiler.targets.gemm_common`).

Ensures ``quantized``: every ``linear``, ``matmul``, ``softmax``, ``layer_norm``, ``gelu`` and
``relu`` node has ``attrs["quant"] = {"in_scales": [...], "out_scale": s}`` (linears possibly also
``"out_scales": [...]``) with positive finite scales, and every linear/matmul requantizer is
representable (else the error names the node).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from compiler.interp import run_graph
from compiler.ir import Graph, Node, Param, Ref
from compiler.passes.base import Pass, PassError
from golden.errors import UserValueError
from golden.requant import INT32_MAX, INT32_MIN, quantize_multiplier

__all__ = ["Calibration", "FFN_DOWN_MODES", "MIN_CHANNEL_ROWS", "Quantize", "QLinear", "QUANT_KINDS",
           "channel_scales", "expert_rows", "grouped_qparams",
           "grouped_weight", "linear_qparams", "linear_weight",
           "MASK_SENTINEL", "matmul_operands", "matmul_qparams", "mse_scale", "param_scale",
           "quantize_tensor", "quantize_weight", "residual_only_linears", "softmax_keep"]

#: how the FFN down-projection (a linear reading a GELU output) is quantized (module doc)
FFN_DOWN_MODES = ("int16", "int8", "float")
#: op kinds that get activation scales
QUANT_KINDS = ("linear", "matmul", "softmax", "layer_norm", "gelu", "relu", "rms_norm", "silu",
               "grouped_linear")
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
    out_scales: torch.Tensor | None = None  # [N] float64 when the output is per channel
    #: [K] float64 smoothing factors of a per-channel host quantizer (``wq`` holds ``W * s``)
    in_smooth: torch.Tensor | None = None

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """The int8 operand (int64) of the float input ``x[..., K]``: ``clamp(round(x /
        in_scale), -128, 127)``, or with smoothing ``clamp(round(x / (in_scale * s)), ...)``."""
        if self.in_smooth is None:
            return quantize_tensor(x, self.in_scale)
        return quantize_tensor(x, self.in_scale * self.in_smooth)

    def dequantize(self, y: torch.Tensor) -> torch.Tensor:
        """Real values (float64) of the int8 result ``y[..., N]``."""
        s = self.out_scales if self.out_scales is not None else self.out_scale
        return y.to(torch.float64) * s


def linear_weight(graph: Graph, node: Node) -> torch.Tensor:
    """The float weight ``[N, K]`` of a ``linear`` node (``y = x @ W^T``), from its attrs."""
    w = graph.params[node.attrs["weight"]]
    return w.t() if node.attrs["w_layout"] == "kn" else w


def _requantizers(where: str, s_in: float, ws: torch.Tensor, s_out: Any
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output channel ``c`` the requantizer of ``s_in * ws[c] / s_out[c]`` (``s_out`` one
    scale or one per channel): ``(mult, shift)`` int64; PassError names ``where`` and the
    channel whose multiplier is not representable."""
    mults, shifts = [], []
    for c in range(ws.shape[0]):
        try:
            oc = float(s_out[c]) if torch.is_tensor(s_out) else float(s_out)
            m, s = quantize_multiplier(float(s_in * ws[c] / oc))
        except ValueError as e:
            raise PassError(f"{where}channel {c}: {e}") from None
        mults.append(m)
        shifts.append(s)
    return torch.tensor(mults, dtype=torch.int64), torch.tensor(shifts, dtype=torch.int64)


def linear_qparams(graph: Graph, node: Node, host_smooth: bool = False) -> QLinear:
    """Integer parameters of a quantized ``linear`` node (cached in ``node.attrs['_q']``).

    ``host_smooth=True`` (the executor's per-op path): a linear with a per-channel host
    quantizer (``quant["smooth"]["form"] == "host"``, :mod:`compiler.passes.smooth`) gets the
    int8 weights of ``W * s``, ``in_scale`` = the smoothed input's scale and ``in_smooth`` =
    ``s`` (cached in ``attrs['_qs']``); by default, and for every other linear, the unsmoothed
    parameters (what a backend without that quantizer, the core, runs)."""
    q = node.attrs.get("quant")
    sm = (q or {}).get("smooth")
    host = bool(host_smooth and sm and sm.get("form") == "host")
    key = "_qs" if host else "_q"
    cached = node.attrs.get(key)
    if isinstance(cached, QLinear):
        return cached
    if not q:
        raise PassError(f"node {node.name} is not quantized (run the quantize pass)")
    w = linear_weight(graph, node)
    s_in, s_out = float(q["in_scales"][0]), float(q["out_scale"])
    smooth = None
    if host:
        smooth = torch.tensor([float(v) for v in sm["factors"]], dtype=torch.float64)
        if smooth.shape[0] != w.shape[1]:
            raise PassError(f"node {node.name}: {smooth.shape[0]} smoothing factors for "
                            f"{w.shape[1]} input channels")
        w = w.detach().to(torch.float64) * smooth[None, :]
        s_in = float(sm["in_scale"])
    wq, ws = quantize_weight(w)
    so = q.get("out_scales")
    s_outs = torch.tensor([float(v) for v in so], dtype=torch.float64) if so else None
    if s_outs is not None and s_outs.shape[0] != ws.shape[0]:
        raise PassError(f"node {node.name}: {s_outs.shape[0]} output scales for "
                        f"{ws.shape[0]} channels")
    if node.attrs.get("bias"):
        b = graph.params[node.attrs["bias"]].detach().to(torch.float64)
        bias = torch.clamp(torch.round(b / (s_in * ws)), INT32_MIN, INT32_MAX).to(torch.int64)
    else:
        bias = torch.zeros(ws.shape[0], dtype=torch.int64)
    n_req = ws.shape[0] if q.get("out_bits") != 32 else 0  # int32 out: no requantizer
    mult, shift = _requantizers(f"node {node.name}: ", s_in, ws[:n_req],
                                s_outs[:n_req] if s_outs is not None else s_out)
    ql = QLinear(wq=wq.t().contiguous(), w_scale=ws, bias=bias, mult=mult, shift=shift,
                 in_scale=s_in, out_scale=s_out, out_scales=s_outs, in_smooth=smooth)
    node.attrs[key] = ql
    return ql


def grouped_weight(graph: Graph, node: Node) -> torch.Tensor:
    """The float expert weights ``[E, N, K]`` of a ``grouped_linear`` node (expert ``e``:
    ``y = x @ W[e]^T``), from its attrs (the parameter is ``[E, K, N]``, layout ``"ekn"``)."""
    w = graph.params[node.attrs["weight"]]
    return w.transpose(1, 2) if node.attrs["w_layout"] == "ekn" else w


def grouped_qparams(graph: Graph, node: Node) -> list[QLinear]:
    """Integer parameters of a quantized ``grouped_linear``, one :class:`QLinear` per expert
    (int8 weights per output channel of that expert, no bias, the requantizer of ``s_in *
    s_w[e, c] / s_out``); cached in ``node.attrs['_q']``. PassError names the node and expert
    whose requantizer is not representable."""
    cached = node.attrs.get("_q")
    if isinstance(cached, list):
        return cached
    q = node.attrs.get("quant")
    if not q:
        raise PassError(f"node {node.name} is not quantized (run the quantize pass)")
    s_in, s_out = float(q["in_scales"][0]), float(q["out_scale"])
    out = []
    for e, w in enumerate(grouped_weight(graph, node)):
        wq, ws = quantize_weight(w)
        mult, shift = _requantizers(f"node {node.name}: expert {e}, ", s_in, ws, s_out)
        out.append(QLinear(wq=wq.t().contiguous(), w_scale=ws,
                           bias=torch.zeros(ws.shape[0], dtype=torch.int64), mult=mult,
                           shift=shift, in_scale=s_in, out_scale=s_out))
    node.attrs["_q"] = out
    return out


def expert_rows(offs: Any, experts: int) -> list[int]:
    """Rows per expert of a grouped matmul from its cumulative end rows ``offs``."""
    ends = [int(v) for v in torch.as_tensor(offs).reshape(-1).tolist()][:experts]
    return [b - a for a, b in zip([0, *ends[:-1]], ends, strict=True)]


#: softmax inputs at or below this value (or -inf) are mask positions, not logits: additive
#: masks write -1e4 (BERT), -1e9 or the dtype's minimum (transformers), -inf (PyTorch)
MASK_SENTINEL = -1000.0


def softmax_keep(x: torch.Tensor) -> torch.Tensor:
    """The positions of a softmax input that take part (bool, ``x > MASK_SENTINEL``, NaN-free):
    the rest are the mask's sentinel values. Calibration leaves them out of the input scale
    and the integer softmax gets this as its mask (:mod:`golden.softmax`)."""
    return x > MASK_SENTINEL


def matmul_operands(node: Node) -> tuple[Ref | Param, Ref | Param]:
    """The two operands ``(a, b)`` of a dynamic ``matmul`` node as written in the op (``b`` is
    ``W`` of ``x @ W^T`` for a ``linear`` with a computed weight, ``attrs["transpose_b"]``)."""
    a = node.args
    first = a[0]
    second = a[1] if len(a) > 1 else first
    if not isinstance(first, (Ref, Param)) or not isinstance(second, (Ref, Param)):
        raise PassError(f"node {node.name} ({node.target}): matmul operands must be tensors")
    return first, second


def param_scale(w: torch.Tensor) -> float:
    """Per-tensor int8 scale of a parameter operand of a dynamic matmul: ``max|W| / 127``."""
    return max(float(w.detach().abs().max()) if w.numel() else 0.0, _EPS) / 127.0


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
    if q.get("out_bits") == 32:  # no requantizer
        return
    so = q.get("out_scales")
    if so:
        ratios = ws.to(torch.float64) / torch.tensor(so, dtype=torch.float64)
    else:
        ratios = ws.to(torch.float64) / q["out_scale"]
    for r in (float(ratios.min()), float(ratios.max())):
        try:
            quantize_multiplier(q["in_scales"][0] * r)
        except ValueError as e:
            raise PassError(f"node {node.name}: {e}") from None


def _check_host_smooth(graph: Graph, node: Node) -> None:
    """What :func:`linear_qparams` with ``host_smooth=True`` would refuse for a linear with a
    per-channel host quantizer, without building its integers: the factor count, and the
    requantizer scales ``s_in' * s_w[c] / s_out[c]`` at their extremes (the representable
    scales are an interval, :func:`golden.requant.quantize_multiplier`); the per-channel
    weight scales ``max|W[c, :] * s| / 127`` are computed as there. On a problem
    ``linear_qparams`` itself raises the error, naming the channel."""
    q = node.attrs["quant"]
    sm = q["smooth"]
    w = linear_weight(graph, node)
    s = torch.tensor([float(v) for v in sm["factors"]], dtype=torch.float64)
    so = q.get("out_scales")
    if s.shape[0] == w.shape[1] and (not so or len(so) == w.shape[0]):
        ws = torch.clamp((w.detach().to(torch.float64) * s[None, :]).abs().amax(dim=1) / 127.0,
                         min=_EPS)
        if q.get("out_bits") == 32:
            return
        out = torch.tensor([float(v) for v in so], dtype=torch.float64) if so \
            else torch.full_like(ws, float(q["out_scale"]))
        r = float(sm["in_scale"]) * ws / out
        try:
            for v in (float(r.min()), float(r.max())):
                quantize_multiplier(v)
            return
        except ValueError:
            pass
    linear_qparams(graph, node, host_smooth=True)  # raises the PassError


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


#: layout targets that keep the last (channel) axis in place when its size is unchanged
_CHANNEL_KEEPING = ("clone", "view", "reshape", "contiguous", "alias")


#: fewer calibration rows than this and a per-channel output scale is not the channel's own
#: maximum but :func:`channel_scales`' pooled estimate (module doc)
MIN_CHANNEL_ROWS = 256


def channel_scales(rows: torch.Tensor, top: float) -> torch.Tensor:
    """Per-channel int8 output scales ``[C]`` (float64) of the calibration values ``rows [R, C]``
    of a linear's output when ``R`` is small: channel ``c`` gets ``max(max|y_c|, min(r *
    rms_c, top)) / 127`` with ``rms_c`` the channel's root mean square and ``r`` the largest
    ``|y| / rms`` over every row and channel (one peak-to-RMS ratio, estimated from ``R * C``
    values instead of ``R``), never above ``top`` (the per-tensor maximum)."""
    a = rows.to(torch.float64).abs()
    own = a.amax(0)
    rms = torch.clamp(a.pow(2).mean(0).sqrt(), min=_EPS)
    r = float((a / rms).max())
    pooled = torch.clamp(r * rms, max=max(top, _EPS))
    return torch.clamp(torch.maximum(own, pooled), min=_EPS) / 127.0


def residual_only_linears(graph: Graph) -> set[str]:
    """Linears whose output reaches only ``add`` nodes (through channel-keeping layout ops).

    These may use per-output-channel scales: their consumers are float ops on the host.
    """
    users = graph.users()
    nodes = graph.node_map()

    def only_adds(v: str, channels: int) -> bool:
        us = users.get(v, [])
        if not us or any(r.name == v for r in graph.outputs):
            return False
        for u in us:
            n = nodes[u]
            if n.op == "add":
                continue
            if n.op == "layout" and any(k in n.target for k in _CHANNEL_KEEPING) and n.out \
                    and n.out[0].shape and n.out[0].shape[-1] == channels \
                    and only_adds(u, channels):
                continue
            return False
        return True

    return {n.name for n in graph.nodes if n.op == "linear" and n.out and n.out[0].shape
            and only_adds(n.name, int(n.out[0].shape[-1]))}


class Calibration:
    """What the quantize pass records of ``graph``'s values on the calibration samples: every
    value's absolute maximum (a softmax input's without its mask positions), per-channel
    maxima and the first rows of the linears with per-channel output scales, the values
    ``mse`` samples, the rows per expert of each ``grouped_linear``. Fed by
    :meth:`observe` (every node's value, sample by sample) and :meth:`inputs` (each sample's
    graph inputs); per value the samples must come in their order."""

    def __init__(self, graph: Graph, method: str = "absmax", per_channel_out: bool = True
                 ) -> None:
        self.graph = graph
        self.method = method
        self.want: set[str] = set()
        for n in graph.nodes:
            if n.op in QUANT_KINDS:
                self.want.add(n.name)
                self.want.update(n.inputs)
        self.absmax: dict[str, float] = {name: 0.0 for name, _ in graph.inputs}
        self.chan_max: dict[str, torch.Tensor] = {}
        #: kept while fewer than MIN_CHANNEL_ROWS
        self.chan_rows: dict[str, list[torch.Tensor]] = {}
        self.chan_out = residual_only_linears(graph) if per_channel_out else set()
        self.seen: dict[str, list[torch.Tensor]] = {}
        self.masked = {n.inputs[0] for n in graph.nodes if n.op == "softmax" and n.inputs}
        self.routed: dict[str, list[list[int]]] = {}

    def observe(self, node: Node, val: Any, args: tuple[Any, ...]) -> None:
        """One sample's value of ``node`` (``args``: its resolved arguments)."""
        absmax, chan_max, chan_rows = self.absmax, self.chan_max, self.chan_rows
        if node.name in self.want and isinstance(val, torch.Tensor) and val.is_floating_point():
            v = val.detach()
            if node.name in self.masked:  # a softmax input: the mask's sentinels are no logits
                v = v[softmax_keep(v)]
            a = v.abs().flatten()
            absmax[node.name] = max(absmax.get(node.name, 0.0), float(a.max()) if a.numel() else 0.0)
            if node.name in self.chan_out:
                rows = val.detach().reshape(-1, val.shape[-1]).to(torch.float64)
                cm = rows.abs().amax(0)
                prev = chan_max.get(node.name)
                chan_max[node.name] = cm if prev is None else torch.maximum(prev, cm)
                kept = chan_rows.setdefault(node.name, [])
                if sum(t.shape[0] for t in kept) < MIN_CHANNEL_ROWS:
                    kept.append(rows)
            if self.method == "mse":
                self.seen.setdefault(node.name, []).append(a[:: max(1, a.numel() // 65536)])
        if node.op == "grouped_linear":  # the rows the router sent to each expert
            from compiler.passes.canonicalize import grouped_offsets
            self.routed.setdefault(node.name, []).append(expert_rows(
                grouped_offsets(node, args, {}), int(node.attrs["experts"])))

    def inputs(self, sample: Sequence[torch.Tensor]) -> None:
        """One sample's graph inputs."""
        for (name, _), t in zip(self.graph.inputs, sample, strict=True):
            if t.is_floating_point():
                self.absmax[name] = max(self.absmax.get(name, 0.0), float(t.abs().max()))


class Quantize(Pass):
    """Calibrate activation scales on ``samples`` (each a tuple of graph inputs); see module doc."""

    name = "quantize"
    requires = frozenset({"canonical"})
    ensures = frozenset({"quantized"})

    def __init__(self, samples: Sequence[Sequence[torch.Tensor]], method: str = "absmax",
                 keep_float_after_gelu: bool = False, per_channel_out: bool = True,
                 ffn_down: str = "int16") -> None:
        if not samples:
            raise UserValueError("quantize needs at least one calibration sample")
        if method not in ("mse", "absmax"):
            raise UserValueError(f"calibration method must be mse or absmax, not {method!r}")
        self.samples = [tuple(s) for s in samples]
        self._given: Calibration | None = None  # use_calibration
        self.method = method
        self.keep_float_after_gelu = keep_float_after_gelu
        self.per_channel_out = per_channel_out
        if ffn_down not in FFN_DOWN_MODES:
            raise UserValueError(f"ffn_down must be one of {', '.join(FFN_DOWN_MODES)}, not {ffn_down!r}")
        self.ffn_down = "float" if keep_float_after_gelu else ffn_down

    def calibration(self, graph: Graph) -> Calibration:
        """An empty :class:`Calibration` of ``graph`` for this pass's settings."""
        return Calibration(graph, self.method, self.per_channel_out)

    def use_calibration(self, cal: Calibration, samples: Sequence[Sequence[torch.Tensor]]
                        ) -> None:
        """Let the next :meth:`run` on ``cal.graph`` take ``cal`` (filled by another pass on
        ``samples``, which must be this pass's very tensors, with every value as the graph
        computes it then: :class:`compiler.passes.smooth.Smooth`) instead of running the
        samples itself; ignored for other samples or another graph."""
        same = len(samples) == len(self.samples) and all(
            len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))
            for a, b in zip(samples, self.samples, strict=True))
        self._given = cal if same else None

    def run(self, graph: Graph) -> None:
        cal, self._given = self._given, None
        if cal is None or cal.graph is not graph:
            cal = self.calibration(graph)
            for s in self.samples:
                outs = run_graph(graph, s, observe=cal.observe)
                del outs
                cal.inputs(s)
        absmax, chan_max, chan_rows = cal.absmax, cal.chan_max, cal.chan_rows
        seen, routed = cal.seen, cal.routed

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

        wide: set[str] = set()
        for n in graph.nodes:
            n.attrs.pop("_q", None)
            n.attrs.pop("_qs", None)
            down = n.op == "linear" and producer_kind(n.inputs[0]) == "gelu"
            if down and self.ffn_down == "float":
                n.attrs["keep_float"] = ("FFN down-projection reads the GELU output; kept in "
                                         "float (--float-ffn-down)")
            elif down and self.ffn_down == "int16" and n.inputs[0] in nodes:
                wide.add(n.name)
                g = nodes[n.inputs[0]]
                if g.op == "gelu":
                    g.attrs["keep_float"] = ("feeds a 16-bit-input linear and the GELU unit "
                                             "emits int8")
            if n.op not in QUANT_KINDS:
                continue
            if n.op == "matmul":  # each operand its own scale; a parameter's from its values
                n.attrs["quant"] = {"in_scales": [
                    param_scale(graph.params[o.name]) if isinstance(o, Param) else scale(o.name)
                    for o in matmul_operands(n)], "out_scale": scale(n.name)}
            else:
                ins = [n.inputs[0]]
                n.attrs["quant"] = {"in_scales": [scale(v) for v in ins],
                                    "out_scale": scale(n.name)}
            if n.name in wide:
                n.attrs["quant"].update(in_bits=16, out_bits=32,
                                        in_scales=[max(absmax.get(n.inputs[0], 0.0), _EPS)
                                                   / 32639.0])
            elif n.name in chan_max:
                rows = torch.cat(chan_rows.get(n.name, []) or [chan_max[n.name][None]])
                if rows.shape[0] < MIN_CHANNEL_ROWS:  # too few rows for each channel's maximum
                    so = channel_scales(rows, float(chan_max[n.name].max())).tolist()
                else:
                    so = [max(float(v), _EPS) / 127.0 for v in chan_max[n.name]]
                n.attrs["quant"]["out_scales"] = so
                n.attrs["quant"]["out_scale"] = max(so)
            if n.op == "linear" and n.attrs.get("smooth") and n.name not in wide:
                n.attrs["quant"]["smooth"] = dict(n.attrs["smooth"])  # compiler.passes.smooth
                if n.attrs["smooth"]["form"] == "host":
                    _check_host_smooth(graph, n)  # its requantizer fits too
            if n.op == "linear":
                _check_linear_range(graph, n)
            elif n.op == "grouped_linear":
                n.attrs["expert_rows"] = routed.get(n.name, [])
                grouped_qparams(graph, n)
            elif n.op == "matmul":
                matmul_qparams(n)

    def check(self, graph: Graph) -> None:
        for n in graph.nodes:
            if n.op not in QUANT_KINDS:
                continue
            q = n.attrs.get("quant")
            if not q:
                raise PassError(f"quantize: node {n.name} ({n.op}) has no scales")
            for s in [*q["in_scales"], q["out_scale"], *q.get("out_scales", [])]:
                if not (math.isfinite(s) and s > 0):
                    raise PassError(f"quantize: node {n.name} has scale {s!r}")
