"""SmoothQuant-style activation smoothing, chosen per linear group on the calibration samples.

An int8 linear ``y = x @ W^T`` with a per-tensor activation scale loses the small channels of
``x`` when a few channels are large (MiniLM's layer-norm outputs: one channel up to 28, the
median channel 1.5). Smoothing moves that range into the weights, which are quantized per output
channel: with one factor per input channel ``s_j = max|x_j|^a / max|W[:, j]|^(1-a)``,
``y = (x / s) @ (W * s)^T`` exactly, and ``x / s`` is flat enough for one int8 scale.

**Groups.** The linears that read the same value share one factor vector (``max|W[:, j]|`` over
all of them): the value is divided by ``s`` once. Candidates: 8-bit-input ``linear`` ops with a
parameter weight; a linear that reads a GELU output is left alone under ``ffn_down="int16"`` or
``"float"`` (its input is 16 bits or float already).

**Forms** (recorded per linear in ``attrs["smooth"]["form"]`` and in the plan):

* ``fold``: the value's producer absorbs ``1 / s`` in its own parameters, so the float graph
  itself computes ``x / s`` and every backend (GEMM engines, crossbars, the core) just sees
  other int8 weights and scales. Allowed when the value reaches only the group's linears,
  through channel-keeping layout ops that nobody else reads, from: a ``layer_norm`` (gamma and
  beta divided by ``s``), an ``rms_norm`` (its weight), a ``linear`` (its output rows and bias),
  or a ``mul`` one of whose operands is such a linear (SwiGLU's ``silu(gate) * up``: ``up``'s
  rows). The group's weights get their columns multiplied by ``s`` in ``graph.params`` (new
  tensors; the model's own are untouched). Llama/Mistral/Qwen2 RMSNorm -> q/k/v and -> gate/up,
  up -> down; GPT-2/OPT/ViT pre-LN blocks.
* ``host``: a per-channel activation quantizer, for a value other ops read too (post-LN BERT:
  the layer norm's output is also the residual). The float graph is unchanged; the linear's
  integer operands are ``xq = clamp(round(x / (s_in' * s)), -128, 127)`` (``s_in'`` =
  ``attrs["smooth"]["in_scale"]``, absmax of ``x / s`` on the calibration samples) and the int8
  weights of ``W * s`` per output channel (:func:`compiler.passes.quantize.linear_qparams` with
  ``host_smooth=True``, what the executor runs); bias and requantizer on the grid
  ``s_in' * s_w[c]``. The division happens where the host quantizes the value for the
  accelerator, so it holds only while the value's producer (``"into"``, through layout ops)
  runs on a float device: once the partition (or an edited plan) puts the producer on an
  integer device, whose int8 output the linear reads as it is, :func:`drop_host_smoothing`
  removes the record and the linear runs unsmoothed with its plain ``quant["in_scales"]``
  (calibrated as always). The compile does that before writing the plan and the executor again
  for the plan it runs. A group whose producer is a ``linear`` / ``matmul`` is not smoothed this
  way (a GEMM runs on the accelerator). Only when ``host=True``: a compile with a ``core``
  device passes ``False``, because the core quantizes its own int8 values per tensor; a core
  that runs such a linear anyway (``fmforge run`` of an asic plan) gets the unsmoothed
  parameters, which ``linear_qparams`` returns by default.

**Choice** (``alpha="auto"``): per group, the candidates are no smoothing and
``a`` in :data:`AUTO_ALPHAS`; the metric is the relative squared error of the group's int8
outputs on the calibration inputs, ``sum ||Xq Wq^T - X W^T||^2 / sum ||X W^T||^2`` (activations
per tensor with the absmax scale of ``X / s``, weights ``W * s`` per output channel, at most
:data:`MAX_ROWS` rows and :data:`MAX_ROW_MACS` / (K N) for K input and N output channels in
all: MiniLM keeps 512 rows per group, GPT-2-small's larger groups 128, which took a third
of its smoothing time; 512 everywhere until 2026-12); the lowest wins, except that the
``host`` form must beat no smoothing by :data:`HOST_GAIN` (it costs the producer its
accelerator). The alphas are walked downhill from
the choice of the previous group with the same form and weight shapes (the middle alpha for the
first): the same choice as trying all six wherever the error falls then rises along them (every
MiniLM and GPT-2-small group), about half the evaluations. The products ``Xq Wq^T`` are exact
integers (:class:`_GroupError`; the plain formula is :func:`_rel_error`). A number ``a`` in
0..1 smooths every group that has a form with that ``a``; ``"off"`` smooths nothing (the pass
is not run).

**Calibration** (one run of the samples, :meth:`Smooth.run`): the samples run through the
graph in segments, all of them up to the producer (``into``) of the next ``fold`` group in
graph order; from there that group's value is computed on a copy for its statistics (per
sample the per-channel absmax and up to R / S evenly spaced rows, R as in **Choice**), the group
is chosen and folded at once, and the samples go on from the producer with the folded
parameters. So a group is chosen on its value as the graph computes it with the folds of the
groups before it (a ``host`` group: with every fold before its value), and every other value
is computed once, as the smoothed graph computes it: the quantize pass given as ``quantize``
records its calibration in the same run (:class:`compiler.passes.quantize.Calibration`) and
runs no sample itself (the compile saves one run of the samples: GPT-2-small, 16 samples,
about 2.5 s). Until 2026-12 the groups were chosen on the unsmoothed graph and the quantize
pass ran the samples again; the values after a fold differ from the unsmoothed ones by float32
rounding, so GPT-2-small's factors and scales moved by at most 3e-6 (relative), with the same
choices; MiniLM's plan is unchanged. Only the probed values and the samples' live values at a
segment's start are held per sample.

Each smoothed linear records ``{"alpha", "form", "factors" (s, one per input channel),
"error", "error_off"}``, plus ``"into"`` (the node that absorbed ``1 / s`` for ``fold``, the
producer of the value for ``host``; absent for a graph input) and ``"in_scale"`` (``host``).
The quantize pass copies it into ``quant["smooth"]`` and the plan; :func:`restore_smoothing`
re-applies the folds to a graph rebuilt from the model (the executor), bit for bit: the factors
travel as JSON floats and the folds run in the same order with the same float64 arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from compiler.interp import last_uses, run_nodes
from compiler.ir import Graph, Node, Param, Ref
from compiler.passes.base import Pass, PassError
from compiler.passes.quantize import _CHANNEL_KEEPING, FFN_DOWN_MODES, Quantize, quantize_weight
from compiler.passes.quantize import _EPS as _QEPS
from golden.errors import UserValueError

__all__ = ["AUTO_ALPHAS", "FLOAT_KINDS", "HOST_GAIN", "MAX_ROW_MACS", "MAX_ROWS", "SMOOTH_FORMS", "Smooth",
           "SmoothGroup", "drop_host_smoothing", "parse_smooth", "restore_smoothing",
           "smooth_factors", "smooth_groups"]

#: alphas ``auto`` tries per group (besides no smoothing)
AUTO_ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
#: ``auto`` keeps a ``host`` smoothing only when its error is at most this fraction of the
#: unsmoothed error (it keeps the producer on the host)
HOST_GAIN = 0.9
#: calibration rows per group the metric uses (evenly spaced within each sample)
MAX_ROWS = 512
#: and at most this many over ``K * N`` (K input channels, N the group's output channels in
#: all): one candidate's int8 products ``Xq Wq^T`` cost at most this many MACs. MiniLM's groups
#: (K 384, N up to 1536) keep all :data:`MAX_ROWS`; GPT-2-small's q/k/v (N 2304) and FFN
#: linears (K * N = 768 * 3072) 128 (every 4th of its 32 rows per sample), its attention output
#: projections 512
MAX_ROW_MACS = 512 * 384 * 1536
#: the two ways a smoothing reaches the integers (module doc)
SMOOTH_FORMS = ("fold", "host")
#: device kinds that run ops in float (the host quantizes their outputs for an accelerator)
FLOAT_KINDS = ("cpu", "gpu")
_EPS = 1e-5


def parse_smooth(value: Any) -> str | float:
    """``"auto"``, ``"off"`` or an alpha in 0..1 (a number or its text); ``UserValueError``
    naming the value otherwise."""
    if isinstance(value, str) and value.strip().lower() in ("auto", "off"):
        return value.strip().lower()
    what = f"smoothing must be auto, off or an alpha in 0..1, not {value!r}"
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UserValueError(what)
    try:
        a = float(value)
    except ValueError:
        raise UserValueError(what) from None
    if not (math.isfinite(a) and 0.0 <= a <= 1.0):
        raise UserValueError(what)
    return a


@dataclass
class SmoothGroup:
    """The linears reading one value, and how a smoothing of that value reaches the integers."""

    value: str
    linears: tuple[str, ...]
    #: ``fold``, ``host`` or None (neither is possible)
    form: str | None
    #: fold: the node whose parameters absorb 1/s; host: the value's producer (None: an input)
    into: str | None
    #: why the form is what it is (for messages and tests)
    why: str


def _x_arg(n: Node) -> Any:
    i = n.attrs.get("x_arg", 0)
    return n.args[i] if len(n.args) > i else None


def _last_dim(graph: Graph, v: str) -> int | None:
    t = graph.value_type(v)
    return int(t[0].shape[-1]) if t and t[0].shape else None


def _keeps_channels(graph: Graph, n: Node) -> bool:
    """A layout op that leaves the last (channel) axis as it is."""
    if n.op != "layout" or not any(k in n.target for k in _CHANNEL_KEEPING):
        return False
    if len(n.inputs) != 1 or not n.out or not n.out[0].shape:
        return False
    return _last_dim(graph, n.inputs[0]) == int(n.out[0].shape[-1])


def _param_uses(graph: Graph) -> dict[str, int]:
    uses: dict[str, int] = {}
    for n in graph.nodes:
        for w in n.weights:
            uses[w] = uses.get(w, 0) + 1
    return uses


def _own_param(a: Any, uses: dict[str, int]) -> bool:
    return isinstance(a, Param) and uses.get(a.name, 0) == 1


def _linear_foldable(n: Node, k: int, uses: dict[str, int]) -> bool:
    """A linear whose output rows (and bias) may absorb 1/s: parameter weight and bias that no
    other node reads, ``k`` output channels."""
    if n.op != "linear" or n.attrs.get("transpose_b") or not n.attrs.get("weight"):
        return False
    if uses.get(n.attrs["weight"], 0) != 1:
        return False
    if n.attrs.get("bias") and uses.get(n.attrs["bias"], 0) != 1:
        return False
    return bool(n.out and n.out[0].shape and int(n.out[0].shape[-1]) == k)


def _chain_to(graph: Graph, nodes: dict[str, Node], users: dict[str, list[str]],
              v: str) -> str:
    """Walk back from ``v`` through channel-keeping layout ops, each the only reader of its
    input; returns the first value that is not such a layout output."""
    while v in nodes and _keeps_channels(graph, nodes[v]):
        src = nodes[v].inputs[0]
        if users.get(src) != [v]:
            break
        v = src
    return v


def _fold_target(graph: Graph, nodes: dict[str, Node], users: dict[str, list[str]],
                 uses: dict[str, int], v: str, linears: Sequence[str]) -> tuple[Node | None, str]:
    """The node whose parameters absorb ``1 / s`` for the group reading ``v`` (module doc), or
    None and the reason."""
    readers = users.get(v, [])
    if sorted(readers) != sorted(linears):
        others = [u for u in readers if u not in linears]
        return None, f"{v} is also read by {', '.join(others) or 'the graph outputs'}"
    if any(r.name == v for r in graph.outputs):
        return None, f"{v} is a graph output"
    k = _last_dim(graph, v)
    for lin in linears:
        if uses.get(nodes[lin].attrs["weight"], 0) != 1:
            return None, f"the weight of {lin} is shared"
    root = _chain_to(graph, nodes, users, v)
    if root not in nodes:
        return None, f"{root} is a graph input"
    p = nodes[root]
    if p.op in ("layer_norm", "rms_norm"):
        shape = p.args[1] if len(p.args) > 1 else None
        if not isinstance(shape, (list, tuple)) or len(shape) != 1 or int(shape[0]) != k:
            return None, f"{root} normalizes more than the channel axis"
        if len(p.args) < 3 or not _own_param(p.args[2], uses):
            return None, f"{root} has no weight of its own"
        if p.op == "layer_norm" and len(p.args) > 3 and p.args[3] is not None \
                and not _own_param(p.args[3], uses):
            return None, f"{root} has no bias of its own"
        return p, f"{p.op} {root}"
    if p.op == "linear":
        if _linear_foldable(p, k or 0, uses):
            return p, f"output channels of {root}"
        return None, f"{root}'s parameters are shared or its weight is computed"
    if p.op == "mul" and p.target == "aten.mul.Tensor" and len(p.inputs) == 2:
        # x * y with x and y distinct: dividing one operand by s divides the product by s
        for a in p.args[:2]:
            if not isinstance(a, Ref) or users.get(a.name) != [root] \
                    or _last_dim(graph, a.name) != k:
                continue
            src = _chain_to(graph, nodes, users, a.name)
            n = nodes.get(src)
            if n is not None and _linear_foldable(n, k or 0, uses):
                return n, f"output channels of {src} (through {root})"
        return None, f"no operand of {root} is a linear of its own"
    return None, f"{root} ({p.op}) has no per-channel parameters"


def _producer(nodes: dict[str, Node], v: str) -> str:
    while v in nodes and nodes[v].op == "layout" and nodes[v].inputs:
        v = nodes[v].inputs[0]
    return v


def smooth_groups(graph: Graph, host: bool = True, ffn_down: str = "int16") -> list[SmoothGroup]:
    """The smoothing groups of ``graph`` in graph order (module doc): every value read by an
    eligible linear, with the form its smoothing would take (None: no form applies)."""
    if ffn_down not in FFN_DOWN_MODES:
        raise UserValueError(f"ffn_down must be one of {', '.join(FFN_DOWN_MODES)}, "
                             f"not {ffn_down!r}")
    nodes = graph.node_map()
    users = graph.users()
    uses = _param_uses(graph)
    by_value: dict[str, list[str]] = {}
    for n in graph.nodes:
        if n.op != "linear" or n.attrs.get("transpose_b") or not n.attrs.get("weight") \
                or n.attrs.get("keep_float"):
            continue
        x = _x_arg(n)
        if not isinstance(x, Ref) or n.attrs.get("w_layout") not in ("nk", "kn"):
            continue
        src = _producer(nodes, x.name)
        if ffn_down != "int8" and src in nodes and nodes[src].op == "gelu":
            continue  # 16-bit or float input already
        by_value.setdefault(x.name, []).append(n.name)
    out = []
    for v, lins in by_value.items():
        target, why = _fold_target(graph, nodes, users, uses, v, lins)
        if target is not None:
            out.append(SmoothGroup(v, tuple(lins), "fold", target.name, why))
            continue
        src = _producer(nodes, v)
        kind = nodes[src].op if src in nodes else "input"
        if not host:
            out.append(SmoothGroup(v, tuple(lins), None, None,
                                   f"cannot fold ({why}); no host quantizer with a core device"))
        elif kind in ("linear", "matmul"):
            out.append(SmoothGroup(v, tuple(lins), None, None,
                                   f"cannot fold ({why}); the producer {src} is a GEMM"))
        else:
            out.append(SmoothGroup(v, tuple(lins), "host", src if src in nodes else None,
                                   f"cannot fold ({why}): per-channel quantizer on the host"))
    return out


def _weight_shape(graph: Graph, name: str) -> tuple[int, int]:
    """``(N, K)`` of a group linear's weight."""
    n = graph.node(name)
    shape = tuple(graph.params[n.attrs["weight"]].shape)
    return (shape[1], shape[0]) if n.attrs["w_layout"] == "kn" else (shape[0], shape[1])


def _weight_nk(graph: Graph, name: str) -> torch.Tensor:
    n = graph.node(name)
    w = graph.params[n.attrs["weight"]]
    return (w.t() if n.attrs["w_layout"] == "kn" else w).detach().to(torch.float64)


def _weight_rows(graph: Graph, name: str) -> torch.Tensor:
    """The weight ``[N, K]`` as a contiguous tensor of its own dtype (the values of
    :func:`_weight_nk`, which is float64, when that dtype is float32 or float64)."""
    n = graph.node(name)
    w = graph.params[n.attrs["weight"]].detach()
    w = (w.t() if n.attrs["w_layout"] == "kn" else w).contiguous()
    return w if w.dtype in (torch.float32, torch.float64) else w.to(torch.float64)


def smooth_factors(xmax: torch.Tensor, wmax: torch.Tensor, alpha: float) -> list[float]:
    """``s_j = max|x_j|^a / max|W_j|^(1-a)`` (float64, clamped to [1e-5, 1e5]; 1 for a channel
    whose activation or weights are all zero), as a list of floats (what the plan stores)."""
    return _factors(xmax, wmax, alpha).tolist()


def _factors(xmax: torch.Tensor, wmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """:func:`smooth_factors` as a float64 tensor."""
    x, w = xmax.to(torch.float64), wmax.to(torch.float64)
    s = x.clamp_min(_EPS) ** alpha / w.clamp_min(_EPS) ** (1.0 - alpha)
    return torch.where((x > 0) & (w > 0), s.clamp(_EPS, 1.0 / _EPS), torch.ones_like(s))


def _rel_error(x: torch.Tensor, xmax: torch.Tensor, ws: Sequence[torch.Tensor],
               refs: Sequence[torch.Tensor], s: torch.Tensor | None) -> float:
    """The metric of the module doc for factors ``s`` (None: no smoothing), written out plainly:
    the reference :class:`_GroupError` computes bit for bit (tests compare the two)."""
    s = torch.ones_like(xmax) if s is None else s
    sx = max(float((xmax / s).max()), 1e-12) / 127.0
    xq = torch.clamp(torch.round(x / s / sx), -128, 127).to(torch.float32)
    num = den = 0.0
    for w, ref in zip(ws, refs, strict=True):
        wq, sw = quantize_weight(w * s[None, :])
        y = (xq @ wq.to(torch.float32).t()).to(torch.float64) * (sx * sw)[None, :]
        num += float(((y - ref) ** 2).sum())
        den += float((ref ** 2).sum())
    return num / max(den, 1e-30)


#: output channels per block when quantizing a candidate's weights (a block's float64 rows and
#: their magnitudes stay in cache through the five element-wise steps)
_BLOCK_ROWS = 64


def _int_mm_works() -> bool:
    """Whether ``torch._int_mm`` (int8 x int8 -> int32) runs here on oneDNN's int8 kernels;
    otherwise :class:`_GroupError` multiplies the same integers in float32."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch, "_int_mm"):
        return False
    try:
        a = (torch.arange(24 * 40) % 256 - 128).to(torch.int8).reshape(24, 40)
        b = (torch.arange(40 * 9) * 7 % 255 - 127).to(torch.int8).reshape(9, 40)
        got = torch._int_mm(a, b.t())
    except (RuntimeError, NotImplementedError):
        return False
    return torch.equal(got.to(torch.int64), a.to(torch.int64) @ b.to(torch.int64).t())


_INT_MM: bool | None = None


class _GroupError:
    """The metric of the module doc for one group's weights, candidate after candidate, with the
    same float64 arithmetic as :func:`_rel_error` (the same results, bit for bit) but without
    its temporaries: each candidate's weights ``W * s`` are quantized per output channel in
    blocks of rows into reused buffers, and ``Xq Wq^T`` is an integer product (int8 operands,
    int32 sums, or float32 where ``torch._int_mm`` is unavailable: exact either way while
    ``K * 128 * 127 < 2**24``, and the int32 sums are exact for any K here). The unsmoothed
    weights are quantized once for both folds."""

    def __init__(self, ws: Sequence[torch.Tensor],
                 rows: Sequence[torch.Tensor] | None = None) -> None:
        global _INT_MM
        if _INT_MM is None:
            _INT_MM = _int_mm_works()
        self.int_mm = _INT_MM
        #: as given (the float64 references ``x @ w.t()`` use them as the metric always has)
        self.given = list(ws)
        #: row blocks (``kn`` weights arrive transposed): ``rows`` when given, contiguous
        #: tensors with the very values of ``ws`` (the float32 parameters: ``W * s`` is
        #: computed in float64 all the same, at half the reads)
        self.ws = [w.contiguous() for w in (ws if rows is None else rows)]
        assert all(a.shape == b.shape for a, b in zip(self.ws, self.given, strict=True))
        #: ``max|W[:, j]|`` over the group (as ``abs().amax(0)``, without the temporary)
        self.wmax = torch.stack([torch.maximum(w.amax(0), w.amin(0).neg_())
                                 for w in self.ws]).amax(0).to(torch.float64)
        dt = torch.int8 if self.int_mm else torch.float32
        self.wq = [torch.empty(w.shape, dtype=dt) for w in self.ws]
        k = self.ws[0].shape[1]
        rows = min(_BLOCK_ROWS, max(w.shape[0] for w in self.ws))
        self.buf = torch.empty(rows, k, dtype=torch.float64)
        self.mag = torch.empty(rows, k, dtype=torch.float64)
        self.off: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        #: float64 ``[rows, N]`` buffers of the products' errors, by shape
        self.diff: dict[tuple[int, ...], torch.Tensor] = {}

    def _quantize(self, i: int, s: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``quantize_weight(W_i * s)`` as (int8 or float32 values, float64 scales)."""
        w, out = self.ws[i], self.wq[i]
        n = w.shape[0]
        scales = torch.empty(n, dtype=torch.float64)
        for r0 in range(0, n, _BLOCK_ROWS):
            r1 = min(n, r0 + _BLOCK_ROWS)
            b, m = self.buf[:r1 - r0], self.mag[:r1 - r0]
            if s is None:
                b.copy_(w[r0:r1])
            else:
                torch.mul(w[r0:r1], s[None, :], out=b)
            torch.abs(b, out=m)
            sw = torch.clamp(m.amax(dim=1) / 127.0, min=_QEPS)
            scales[r0:r1] = sw
            # |b / sw| <= 127 up to one rounding, so quantize_weight's clamp changes nothing
            b.div_(sw[:, None]).round_()
            out[r0:r1].copy_(b)
        return out, scales

    def error(self, x: torch.Tensor, xmax: torch.Tensor, refs: Sequence[torch.Tensor],
              den: float, s: torch.Tensor | None) -> float:
        """:func:`_rel_error` of ``x`` with ``den`` its ``sum ||ref||^2`` (summed weight by
        weight, as there)."""
        one = torch.ones_like(xmax) if s is None else s
        sx = max(float((xmax / one).max()), 1e-12) / 127.0
        xq = torch.clamp(torch.round(x / one / sx), -128, 127)
        xq = xq.to(torch.int8) if self.int_mm else xq.to(torch.float32)
        if s is None and self.off is None:
            self.off = [(q.clone(), sw) for q, sw in map(self._quantize, range(len(self.ws)),
                                                        [None] * len(self.ws))]
        num = 0.0
        for i, ref in enumerate(refs):
            wq, sw = self.off[i] if s is None else self._quantize(i, s)
            y = torch._int_mm(xq, wq.t()) if self.int_mm else xq @ wq.t()
            d = self.diff.get(tuple(ref.shape))
            if d is None:
                d = self.diff[tuple(ref.shape)] = torch.empty(ref.shape, dtype=torch.float64)
            torch.mul(y, (sx * sw)[None, :], out=d).sub_(ref)  # y exact: float64 products
            num += float(d.mul_(d).sum())
        return num / max(den, 1e-30)


def _fold(graph: Graph, group: Sequence[str], into: str, factors: Sequence[float]) -> None:
    """Apply one fold: the group's weight columns times ``s``, ``into``'s parameters over
    ``s`` (new tensors in ``graph.params``)."""
    s = torch.tensor(list(factors), dtype=torch.float64)
    nodes = graph.node_map()

    def scaled(name: str, f: torch.Tensor) -> None:
        p = graph.params[name]
        graph.params[name] = (p.detach().to(torch.float64) * f).to(p.dtype)

    for lin in group:
        n = nodes[lin]
        scaled(n.attrs["weight"], s[None, :] if n.attrs["w_layout"] == "nk" else s[:, None])
    p = nodes[into]
    inv = 1.0 / s
    if p.op in ("layer_norm", "rms_norm"):
        scaled(p.args[2].name, inv)
        if p.op == "layer_norm" and len(p.args) > 3 and isinstance(p.args[3], Param):
            scaled(p.args[3].name, inv)
    elif p.op == "linear":
        scaled(p.attrs["weight"], inv[:, None] if p.attrs["w_layout"] == "nk" else inv[None, :])
        if p.attrs.get("bias"):
            scaled(p.attrs["bias"], inv)
    else:  # pragma: no cover - _fold_target returns only these kinds
        raise PassError(f"smooth: cannot fold into {into} ({p.op})")


def _descend(err: Any, n: int, start: int) -> int:
    """Index of the least ``err(i)`` over ``0..n-1`` by walking downhill from ``start`` (left
    while not worse, right while better): the first minimum, as ``min`` over all of them, when
    ``err`` falls then rises along the indices."""
    i = min(max(start, 0), n - 1)
    err(i)  # evaluated even when there is no neighbour
    while True:
        if i > 0 and err(i - 1) <= err(i):
            i -= 1
        elif i + 1 < n and err(i + 1) < err(i):
            i += 1
        else:
            return i


class Smooth(Pass):
    """Choose and apply activation smoothing on ``samples`` (see the module doc); run it after
    canonicalize and before quantize."""

    name = "smooth"
    requires = frozenset({"canonical"})
    ensures = frozenset({"smoothed"})

    def __init__(self, samples: Sequence[Sequence[torch.Tensor]], alpha: str | float = "auto",
                 host: bool = True, ffn_down: str = "int16", quantize: Quantize | None = None
                 ) -> None:
        if not samples:
            raise UserValueError("smoothing needs at least one calibration sample")
        self.alpha = parse_smooth(alpha)
        if ffn_down not in FFN_DOWN_MODES:
            raise UserValueError(f"ffn_down must be one of {', '.join(FFN_DOWN_MODES)}, "
                                 f"not {ffn_down!r}")
        self.samples = [tuple(s) for s in samples]
        self.host = host
        self.ffn_down = ffn_down
        #: the quantize pass that runs next: the run records its calibration too (module doc)
        self.quantize = quantize
        #: per group: (group, chosen alpha or None, {candidate: error}) after run
        self.report: list[tuple[SmoothGroup, float | None, dict[str, float]]] = []
        #: per group value: the statistics its choice was made on (:meth:`_see`), after run
        self.stats: dict[str, tuple[torch.Tensor, list[torch.Tensor]]] = {}

    def _see(self, cmax: dict[str, list[torch.Tensor]], rows: dict[str, list[torch.Tensor]],
             name: str, val: Any, outputs: int) -> None:
        """Record one sample's value of a group with ``outputs`` output channels in all: its
        per-channel absmax and up to ``R / S`` of its rows (evenly spaced), ``R`` =
        :data:`MAX_ROWS`, at most :data:`MAX_ROW_MACS` ``/ (K * outputs)``."""
        if not isinstance(val, torch.Tensor) or not val.is_floating_point():
            return
        k = max(1, int(val.shape[-1]) if val.dim() else 1)
        per = max(1, min(MAX_ROWS, MAX_ROW_MACS // (k * max(1, outputs))) // len(self.samples))
        x = val.detach().reshape(-1, val.shape[-1]).to(torch.float64)
        cmax.setdefault(name, []).append(x.abs().amax(0))
        rows.setdefault(name, []).append(x[::max(1, math.ceil(x.shape[0] / per))])

    def _errors(self, cmax: torch.Tensor, rows: list[torch.Tensor], ge: _GroupError,
                cands: Sequence[float], start: int | None = None) -> dict[str, float]:
        """The metric for ``"off"`` and the alphas :func:`_descend` visits from ``start`` (an
        index into ``cands``; None: every alpha), two-fold over the samples: the factors and
        the input scale from the even samples, the error on the odd ones' rows, and the other
        way round (one sample: fitted and measured on it)."""
        n = cmax.shape[0]
        idx = list(range(n))
        splits = [(idx[0::2], idx[1::2]), (idx[1::2], idx[0::2])] if n > 1 else [(idx, idx)]
        folds = []
        for fit, test in splits:
            xmax = cmax[fit].amax(0)
            x = torch.cat([rows[i] for i in test])
            refs = [x @ w.t() for w in ge.given]
            den = 0.0
            for ref in refs:
                den += float((ref ** 2).sum())
            folds.append((xmax, x, refs, den))

        def error(a: float | None) -> float:
            e = 0.0
            for xmax, x, refs, den in folds:
                s = None if a is None else _factors(xmax, ge.wmax, a)
                e += ge.error(x, xmax, refs, den, s) / len(folds)
            return e

        errs = {"off": error(None)}
        seen: dict[int, float] = {}

        def at(i: int) -> float:
            if i not in seen:
                seen[i] = errs[f"{cands[i]:g}"] = error(cands[i])
            return seen[i]

        if start is None:
            for i in range(len(cands)):
                at(i)
        else:
            _descend(at, len(cands), start)
        return errs

    def _choose(self, graph: Graph, g: SmoothGroup, stats: tuple[torch.Tensor, list[torch.Tensor]],
                start: dict[tuple[Any, ...], int]) -> tuple[float | None, dict[str, float],
                                                          list[float] | None]:
        """The choice for one group: (alpha or None, the errors, the factors)."""
        cmax, rows = stats
        ge = _GroupError([_weight_nk(graph, lin) for lin in g.linears],
                         [_weight_rows(graph, lin) for lin in g.linears])
        cands = AUTO_ALPHAS if self.alpha == "auto" else (float(self.alpha),)
        key = (g.form, tuple(tuple(w.shape) for w in ge.ws))
        errs = self._errors(cmax, rows, ge, cands, start.get(key, len(cands) // 2))
        best = min((a for a in cands if f"{a:g}" in errs), key=lambda a: errs[f"{a:g}"])
        start[key] = cands.index(best)
        if self.alpha == "auto":
            need = errs["off"] * (HOST_GAIN if g.form == "host" else 1.0)
            if not errs[f"{best:g}"] < need:
                return None, errs, None
        return best, errs, smooth_factors(cmax.amax(0), ge.wmax, best)  # all the samples

    def run(self, graph: Graph) -> None:
        """One pass over the samples, in segments (module doc, "Calibration"): every sample
        runs up to the next ``fold`` group's producer; that group's value is computed from
        there (on a copy) for its statistics, the group is chosen and folded, and the samples
        go on from the producer with the folded parameters. A ``host`` group is chosen once
        its value has been computed for every sample (before any later fold). The quantize
        pass given as ``quantize`` sees every value once, as the smoothed graph computes it."""
        groups = [g for g in smooth_groups(graph, self.host, self.ffn_down) if g.form]
        self.report, self.stats = [], {}
        if not groups:
            return
        index = {n.name: i for i, n in enumerate(graph.nodes)}
        order = {g.value: i for i, g in enumerate(groups)}
        folds = sorted((g for g in groups if g.form == "fold"), key=lambda g: index[g.into])
        hosts = [g for g in groups if g.form == "host"]
        host_values = {g.value for g in hosts}
        #: per group value, the group's output channels in all
        outputs = {g.value: sum(int(_weight_shape(graph, lin)[0]) for lin in g.linears)
                   for g in groups}
        cal = self.quantize.calibration(graph) if self.quantize is not None else None
        cmax: dict[str, list[torch.Tensor]] = {}
        rows: dict[str, list[torch.Tensor]] = {}
        last_use = last_uses(graph)
        envs = []
        for smp in self.samples:
            envs.append({name: t for (name, _), t in zip(graph.inputs, smp, strict=True)})
            for name, t in envs[-1].items():
                if name in host_values:
                    self._see(cmax, rows, name, t, outputs[name])
            if cal is not None:
                cal.inputs(smp)

        def observe(n: Node, val: Any, args: tuple[Any, ...]) -> None:
            if n.name in host_values:
                self._see(cmax, rows, n.name, val, outputs[n.name])
            if cal is not None:
                cal.observe(n, val, args)

        done: dict[str, tuple[float | None, dict[str, float], list[float] | None]] = {}
        start: dict[tuple[Any, ...], int] = {}

        def choose(g: SmoothGroup) -> None:
            if len(cmax.get(g.value, [])) == len(self.samples):
                self.stats[g.value] = (torch.stack(cmax[g.value]), rows[g.value])
                done[g.value] = self._choose(graph, g, self.stats[g.value], start)

        def choose_hosts(upto: int) -> None:  # the host groups whose value every sample has
            for g in hosts:
                if g.value not in done and index.get(g.value, -1) < upto:
                    done.setdefault(g.value, (None, {}, None))
                    choose(g)

        pos = 0
        for g in folds:
            b, e = index[g.into], index[g.value] + 1
            for env in envs:
                run_nodes(graph, env, pos, b, observe=observe, last_use=last_use)
            pos = b
            choose_hosts(pos)
            for env in envs:  # the group's value from its producer on, on a copy
                val = run_nodes(graph, dict(env), b, e, last_use=last_use)[g.value]
                self._see(cmax, rows, g.value, val, outputs[g.value])
            choose(g)
            if done.get(g.value, (None,))[0] is not None:
                assert g.into is not None
                _fold(graph, g.linears, g.into, done[g.value][2])
        for env in envs:
            run_nodes(graph, env, pos, len(graph.nodes), observe=observe, last_use=last_use)
        del envs
        choose_hosts(len(graph.nodes) + 1)
        nodes = graph.node_map()
        for g in sorted(groups, key=lambda g: order[g.value]):
            if g.value not in done or not done[g.value][1]:
                continue
            best, errs, s = done[g.value]
            self.report.append((g, best, errs))
            if best is None:
                continue
            assert s is not None
            rec: dict[str, Any] = {"alpha": best, "form": g.form, "factors": s,
                                   "error": errs[f"{best:g}"], "error_off": errs["off"]}
            if g.into is not None:
                rec["into"] = g.into
            if g.form == "host":
                st = torch.tensor(s, dtype=torch.float64)
                rec["in_scale"] = max(float((self.stats[g.value][0].amax(0) / st).max()),
                                      1e-8) / 127.0
            for lin in g.linears:
                nodes[lin].attrs["smooth"] = dict(rec)
        if cal is not None and self.quantize is not None:
            self.quantize.use_calibration(cal, self.samples)

    def check(self, graph: Graph) -> None:
        for n in graph.nodes:
            rec = n.attrs.get("smooth")
            if rec is None:
                continue
            s = rec["factors"]
            k = _last_dim(graph, _x_arg(n).name)
            if len(s) != k or not all(math.isfinite(v) and v > 0 for v in s):
                raise PassError(f"smooth: node {n.name} has {len(s)} factors for {k} channels "
                                "or a factor that is not positive and finite")


def drop_host_smoothing(graph: Graph, kinds: dict[str, str]) -> list[str]:
    """Remove the ``host`` smoothing of every linear whose value's producer runs on an integer
    device (``kinds``: op name -> device kind; module doc); returns their names."""
    dropped = []
    for n in graph.nodes:
        q = n.attrs.get("quant") or {}
        sm = q.get("smooth")
        if n.op != "linear" or not sm or sm.get("form") != "host":
            continue
        into = sm.get("into")
        if into is not None and kinds.get(into, "cpu") not in FLOAT_KINDS:
            del q["smooth"]
            n.attrs.pop("smooth", None)
            n.attrs.pop("_qs", None)
            dropped.append(n.name)
    return dropped


def restore_smoothing(graph: Graph, plan: dict[str, Any] | None = None) -> None:
    """Re-apply the folds recorded in the linears' ``quant["smooth"]`` (a plan's) to a graph
    rebuilt from the model, in the order the pass applied them, and (given the ``plan``) drop
    the host smoothing its placement does not allow (:func:`drop_host_smoothing`);
    ``UserValueError`` when the record does not fit the graph (the fold target differs, or the
    linears reading one value disagree on the factors)."""
    if plan is not None:
        kind = {d["name"]: d["kind"] for d in plan["devices"]}
        drop_host_smoothing(graph, {o["name"]: kind[o["device"]] for o in plan["ops"]})
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for n in graph.nodes:
        rec = (n.attrs.get("quant") or {}).get("smooth")
        if n.op != "linear" or not rec:
            continue
        if rec.get("form") not in SMOOTH_FORMS:
            raise UserValueError(f"op {n.name}: smoothing form {rec.get('form')!r} is not one of "
                                 f"{', '.join(SMOOTH_FORMS)}")
        if rec["form"] == "host":
            continue
        x = _x_arg(n)
        groups.setdefault(x.name, []).append((n.name, rec))
    if not groups:
        return
    nodes = graph.node_map()
    users = graph.users()
    uses = _param_uses(graph)
    for v, members in groups.items():
        lins = [m for m, _ in members]
        recs = [r for _, r in members]
        if any(r["factors"] != recs[0]["factors"] or r.get("into") != recs[0].get("into")
               for r in recs):
            raise UserValueError(f"plan smoothing of {', '.join(lins)} (they read {v}) records "
                                 "different factors: recompile the plan")
        target, why = _fold_target(graph, nodes, users, uses, v, lins)
        if target is None or target.name != recs[0].get("into"):
            raise UserValueError(f"plan smoothing of {', '.join(lins)} folds into "
                                 f"{recs[0].get('into')!r}, which the model does not allow "
                                 f"({why}): recompile the plan")
        if len(recs[0]["factors"]) != _last_dim(graph, v):
            raise UserValueError(f"plan smoothing of {', '.join(lins)}: "
                                 f"{len(recs[0]['factors'])} factors for {_last_dim(graph, v)} "
                                 "channels: recompile the plan")
        _fold(graph, lins, target.name, recs[0]["factors"])
