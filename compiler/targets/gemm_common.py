"""What the integer accelerators (fpga, asic) build and how they price it, from ``hw.registry``.

An op is placed on an accelerator only if a unit of :mod:`hw.registry` computes it
(:func:`hw.registry.unit_for_op`), and it is priced by that unit's cycle model:

* ``linear`` / ``matmul``: the GEMM engine (:class:`hw.gemm.GemmSpec`). An op
  ``[batch] x (M x K) @ (K x N)`` runs as engine commands of at most ``max_m x max_k x max_n``
  (the on-chip buffer sizes): M and N are split into chunks, K never (the requantizing epilogue
  needs the whole sum), so ``max_k`` must cover the largest K. Cycles per command are
  :meth:`GemmSpec.cycles` (exact compute model of the RTL) plus :meth:`GemmSpec.load_cycles`
  (one word per cycle per stream, A and B in parallel, the channel table after them; loads do
  not overlap compute, as in the RTL).
* ``grouped_linear`` (a mixture of experts' expert GEMMs): one engine GEMM per expert that
  the router sent rows to, ``rows_e x K @ K x N`` with that expert's weights and channel table
  (:func:`node_cycles`); the routing depends on the data, so the rows per expert are those the
  router chose on the calibration samples (cycles averaged over them), or uniform when none
  were recorded (:func:`routed_rows`; the plan's ``lowering.impl`` says which).
* the 16-bit-input linear (FFN down): the engine runs the two int8 passes (high and low bytes,
  int32 out); no unit combines them (``256*hi + lo + bias``), so the two int32 results cross the
  host link and the host combines them (priced by the CPU roofline, :func:`host_combine_seconds`).
* ``softmax`` / ``layer_norm`` / ``rms_norm`` / ``gelu`` / ``relu`` / ``silu``: one instance of
  the streaming unit per op (:func:`nonlinear_spec`), because their constants (softmax, GELU and
  SiLU scales, layer-norm gamma/beta/eps, RMSNorm gamma/eps) are elaboration constants of the
  RTL: each instance has its own resources.
* ``layout`` ops (view/permute/cat/split/...): hw/ has no loader that reorders data, so they
  run on the host (transfers priced by the partitioner).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from compiler.ir import Graph, Node, Param
from golden.errors import UserValueError
from hw.gemm import DATAFLOWS, GemmSpec, gemm_buffer_bits
from hw.registry import unit_for_op
from hw.spec import UnitSpec

__all__ = ["GEMM_OPS", "NONLINEAR_OPS", "NONLINEAR_LANES", "GemmShape", "UnitTable",
           "accel_lowering", "choose_config", "experts_hit", "gemm_shape", "grouped_lowering",
           "host_combine_cost", "host_combine_seconds", "node_cycles", "routed_rows",
           "nonlinear_spec", "op_cycles", "fit_buffers", "rows_length"]

#: IR ops that run on the GEMM engine
GEMM_OPS = GemmSpec.ops
#: IR ops that run on a streaming nonlinear unit
NONLINEAR_OPS = ("softmax", "layer_norm", "gelu", "relu", "rms_norm", "silu")
#: lanes of the nonlinear unit instances the compiler builds (each lane has its own multipliers)
NONLINEAR_LANES = 1


@dataclass(frozen=True)
class GemmShape:
    """One GEMM-like op: ``batch`` independent ``m x k @ k x n`` products."""

    batch: int
    m: int
    k: int
    n: int


def gemm_shape(node: Node) -> GemmShape:
    """The GEMM of a ``linear`` or ``matmul`` node.

    A 16-bit-input linear (``quant["in_bits"] == 16``) runs as two int8 passes over the same
    weights (high and low bytes of the input stacked as ``2M`` rows, int32 out), so its shape
    has twice the rows.
    """
    a = node.attrs
    m = int(a["m"]) * (2 if is_linear16(node) else 1)
    return GemmShape(int(a.get("batch", 1)), m, int(a["k"]), int(a["n"]))


def is_linear16(node: Node) -> bool:
    """A linear whose input is int16 (two int8 passes, int32 out, combined on the host)."""
    return node.op == "linear" and (node.attrs.get("quant") or {}).get("in_bits") == 16


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def fit_buffers(rows: int, cols: int, dataflow: str, shapes: list[GemmShape],
                budget_bits: int) -> tuple[int, int, int] | None:
    """Largest ``(max_m, max_k, max_n)`` within ``budget_bits`` (max_k = the largest K), or None."""
    if not shapes:
        return None
    max_k = min(max(s.k for s in shapes), 2**16)
    max_m = min(max(s.m for s in shapes), 2**16)
    n_top = _cdiv(max(s.n for s in shapes), cols) * cols
    while True:
        best_n = 0
        lo, hi = 1, _cdiv(n_top, cols)
        while lo <= hi:  # largest multiple of cols that fits
            mid = (lo + hi) // 2
            if gemm_buffer_bits(rows, cols, dataflow, max_m, max_k, mid * cols) <= budget_bits:
                best_n, lo = mid * cols, mid + 1
            else:
                hi = mid - 1
        if best_n:
            return max_m, max_k, min(best_n, 2**16)
        if max_m <= rows:
            return None
        max_m = max(rows, max_m // 2)


def op_cycles(spec: GemmSpec, s: GemmShape, channels: bool = True) -> tuple[int, int, int]:
    """``(compute_cycles, load_cycles, commands)`` of one op on the engine ``spec``.

    ``channels``: the commands load the per-channel table (bias / requantizer); the two int32
    passes of a 16-bit linear have neither."""
    if s.k > spec.max_k:
        raise UserValueError(f"K={s.k} exceeds the engine's max_k={spec.max_k}")
    compute = load = cmds = 0
    for m0 in range(0, s.m, spec.max_m):
        mi = min(spec.max_m, s.m - m0)
        for n0 in range(0, s.n, spec.max_n):
            ni = min(spec.max_n, s.n - n0)
            compute += spec.cycles(m=mi, k=s.k, n=ni)
            load += spec.load_cycles(m=mi, k=s.k, n=ni, channels=channels)
            cmds += 1
    return compute * s.batch, load * s.batch, cmds * s.batch


def choose_config(shapes: list[tuple[GemmShape, int]], fits: Any, budget_bits: int,
                  arrays: list[tuple[int, int]] | None = None,
                  dataflows: tuple[str, ...] = DATAFLOWS) -> GemmSpec | None:
    """The engine with the fewest total cycles over ``shapes`` (each with a count).

    Candidates: ``arrays`` if given, else for each R in 1..64 the widest C <= 64 with
    ``fits(R, C)``; both dataflows. Ties go to fewer MACs, then fewer rows.
    """
    if not shapes:
        return None
    if arrays is None:
        arrays = []
        for r in range(1, 65):
            c = max((c for c in range(1, 65) if fits(r, c)), default=0)
            if c:
                arrays.append((r, c))
    plain = [s for s, _ in shapes]
    best: tuple[tuple[int, int, int], GemmSpec] | None = None
    for r, c in arrays:
        for df in dataflows:
            bufs = fit_buffers(r, c, df, plain, budget_bits)
            if bufs is None:
                continue
            spec = GemmSpec(rows=r, cols=c, dataflow=df, max_m=bufs[0], max_k=bufs[1],
                            max_n=bufs[2], requant=True)
            total = 0
            for s, count in shapes:
                comp, ld, _ = op_cycles(spec, s)
                total += (comp + ld) * count
            key = (total, r * c, r)
            if best is None or key < best[0]:
                best = (key, spec)
    return None if best is None else best[1]


def rows_length(node: Node) -> tuple[int, int]:
    """(rows, row length) of a nonlinear op as its unit streams it: softmax rows run along its
    ``dim``, a layer norm's row is all its normalized (trailing) dims, elementwise ops one row
    per last-dim vector."""
    shape = tuple(node.out[0].shape) if node.out else (1,)
    numel = node.out[0].numel if node.out else 1
    if not shape:
        return 1, 1
    length = shape[-1]
    if node.op == "softmax" and len(node.args) > 1 and isinstance(node.args[1], int):
        length = shape[node.args[1]]
    elif node.op == "layer_norm" and len(node.args) > 1 and isinstance(node.args[1], (list, tuple)):
        length = math.prod(int(v) for v in shape[len(shape) - len(node.args[1]):])
    return max(1, numel // max(length, 1)), length


def _param(graph: Graph, a: Any) -> Any:
    return graph.params[a.name] if isinstance(a, Param) else a


def nonlinear_spec(node: Node, graph: Graph, lanes: int = NONLINEAR_LANES) -> UnitSpec:
    """The unit instance that computes nonlinear ``node``, with the node's own constants.

    Raises ``ValueError`` when hw/ has no unit for the op, the node is not quantized, or its
    constants do not fit the unit (the message says which).
    """
    from golden.layernorm import layernorm_params
    from golden.rmsnorm import rmsnorm_params
    from hw.gelu import GeluSpec
    from hw.layernorm import LayerNormSpec
    from hw.rmsnorm import RmsNormSpec
    from hw.silu import SiluSpec
    from hw.softmax import SoftmaxSpec

    if unit_for_op(node.op) is None:
        raise UserValueError(f"no unit in hw/ computes {node.op}")
    q = node.attrs.get("quant")
    if not q:
        raise UserValueError(f"{node.name} is not quantized")
    rows, length = rows_length(node)
    s_in, s_out = float(q["in_scales"][0]), float(q["out_scale"])
    if node.op == "softmax":
        return SoftmaxSpec(lanes=lanes, max_length=_cdiv(length, lanes) * lanes, scale=s_in)
    if node.op in ("gelu", "relu"):
        return GeluSpec(lanes=lanes, in_scale=s_in, out_scale=s_out, mode=node.op)
    if node.op == "layer_norm":
        args = node.args
        gamma = _param(graph, args[2]) if len(args) > 2 and args[2] is not None else 1.0
        beta = _param(graph, args[3]) if len(args) > 3 and args[3] is not None else 0.0
        eps = float(args[4]) if len(args) > 4 else 1e-5
        if hasattr(gamma, "detach"):
            gamma = gamma.detach().reshape(length)
        if hasattr(beta, "detach"):
            beta = beta.detach().reshape(length)
        p = layernorm_params(int(length), s_in, gamma, beta, s_out, eps)
        return LayerNormSpec.from_params(p, lanes if length % lanes == 0 else 1)
    if node.op == "silu":
        return SiluSpec(lanes=lanes if length % lanes == 0 else 1, in_scale=s_in, out_scale=s_out)
    if node.op == "rms_norm":  # aten.rms_norm(x, [n], weight, eps), as compiler.execute reads it
        args = node.args
        gamma = _param(graph, args[2]) if len(args) > 2 and args[2] is not None else 1.0
        if hasattr(gamma, "detach"):
            gamma = gamma.detach().reshape(length)
        eps = float(args[3]) if len(args) > 3 and args[3] is not None else \
            float(torch.finfo(torch.float32).eps)
        p = rmsnorm_params(int(length), s_in, gamma, s_out, eps)
        return RmsNormSpec.from_params(p, lanes if length % lanes == 0 else 1)
    raise UserValueError(f"no unit in hw/ computes {node.op}")  # pragma: no cover


def host_combine_cost(node: Node, link: Any) -> tuple[float, float]:
    """``(seconds, joules)`` a 16-bit linear adds beyond the engine's passes (0 for any other
    op): its two int32 results cross ``link`` and the host combines them."""
    if not is_linear16(node):
        return 0.0, 0.0
    host_s, nbytes = host_combine_seconds(node)
    return link.seconds(nbytes) + host_s, link.energy(nbytes)


def host_combine_seconds(node: Node) -> tuple[float, int]:
    """Host work and link bytes of a 16-bit linear's combine: ``(seconds, bytes)``.

    The two int32 results (``2 * M * N * 4`` bytes) go to the host, which computes
    ``256*hi + lo + bias`` and scales it: priced by the CPU roofline
    (:func:`compiler.targets.cpu.roofline_seconds`, 4 operations per element, 12 bytes moved).
    """
    from compiler.targets.cpu import roofline_seconds

    el = int(node.attrs.get("batch", 1)) * int(node.attrs["m"]) * int(node.attrs["n"])
    return roofline_seconds(4.0 * el, 12 * el), 8 * el


class UnitTable:
    """The units an accelerator builds for a graph: the GEMM engine and nonlinear instances.

    ``gemm`` is the engine (or None); ``nonlinear[node name]`` the instance of that op, or the
    reason there is none (a string).
    """

    GEMM_ID = "gemm"

    def __init__(self) -> None:
        self.gemm: GemmSpec | None = None
        self.nonlinear: dict[str, UnitSpec | str] = {}

    def configure_nonlinear(self, graph: Graph, lanes: int = NONLINEAR_LANES) -> None:
        """One instance per nonlinear op of ``graph`` (or the reason it cannot have one)."""
        self.nonlinear = {}
        for n in graph.nodes:
            if n.op in NONLINEAR_OPS:
                try:
                    self.nonlinear[n.name] = nonlinear_spec(n, graph, lanes)
                except ValueError as e:
                    self.nonlinear[n.name] = str(e)

    @staticmethod
    def unit_id(node: Node) -> str:
        """The id of the unit that runs ``node`` in the plan's ``hardware.units``."""
        if node.op in GEMM_OPS:
            return UnitTable.GEMM_ID
        return f"{node.op}.{node.name}"

    def nonlinear_cycles(self, node: Node) -> int:
        """Cycles of nonlinear ``node`` on its instance (its unit's exact cycle model)."""
        spec = self.spec_of(node)
        assert spec is not None, node.name
        rows, length = rows_length(node)
        return spec.cycles(rows=rows, length=length)

    def spec_of(self, node: Node) -> UnitSpec | None:
        if node.op in GEMM_OPS:
            return self.gemm
        s = self.nonlinear.get(node.name)
        return s if isinstance(s, UnitSpec) else None

    def entries(self, nodes: list[Node], family: str, clock_mhz: float,
                extra: Any = None) -> list[dict[str, Any]]:
        """``hardware.units`` entries of the units ``nodes`` use (GEMM first, then by op order).

        Each: ``id``, ``unit`` (registry kind), ``module`` (the Component), ``params`` (the
        spec's JSON, which rebuilds it), ``ops`` (the op names it runs) and ``predicted``
        (:meth:`UnitSpec.resources` for ``family`` plus the clock, and ``extra(spec)`` if given).
        """
        out: list[dict[str, Any]] = []
        gemm_ops = [n.name for n in nodes if n.op in GEMM_OPS]
        if self.gemm is not None and gemm_ops:
            out.append(self._entry(self.GEMM_ID, self.gemm, gemm_ops, family, clock_mhz, extra))
        for n in nodes:
            s = self.spec_of(n) if n.op in NONLINEAR_OPS else None
            if s is not None:
                out.append(self._entry(self.unit_id(n), s, [n.name], family, clock_mhz, extra))
        return out

    @staticmethod
    def _entry(uid: str, spec: UnitSpec, ops: list[str], family: str, clock_mhz: float,
               extra: Any) -> dict[str, Any]:
        pred = dict(spec.resources(family))
        pred["clock_mhz"] = clock_mhz
        if extra is not None:
            pred.update(extra(spec))
        return {"id": uid, "unit": spec.kind, "module": spec.component, "params": spec.to_json(),
                "ops": ops, "predicted": pred}


def accel_lowering(node: Node) -> dict[str, Any]:
    """The unit id and golden implementation an accelerator op lowers to (fpga and asic)."""
    cls = unit_for_op(node.op)
    assert cls is not None, node.op
    impl = cls.golden
    if node.op == "grouped_linear":
        rows, _ = routed_rows(node)
        return {"unit": UnitTable.unit_id(node), "impl": grouped_lowering(node),
                "expert_rows": rows}
    if node.op in GEMM_OPS:
        impl += " (bias, requant)"
        if is_linear16(node):
            impl = ("golden.gemm.gemm_int x2 (int8 high/low passes, int32 out); "
                    "256*hi + lo + bias on the host")
    return {"unit": UnitTable.unit_id(node), "impl": impl}


def routed_rows(node: Node) -> tuple[list[list[int]], str]:
    """The rows per expert a ``grouped_linear`` is priced with, and where they come from:
    the router's choices on each calibration sample (``attrs["expert_rows"]``, recorded by
    :mod:`compiler.passes.quantize`), else uniform top-k routing (the ``m`` routed rows split
    as evenly as the experts allow)."""
    seen = [list(r) for r in node.attrs.get("expert_rows") or []]
    if seen:
        return seen, f"the router's rows per expert on {len(seen)} calibration samples"
    e, m = int(node.attrs["experts"]), int(node.attrs["m"])
    return [[m // e + (1 if i < m % e else 0) for i in range(e)]], "uniform routing"


def node_cycles(spec: GemmSpec, node: Node) -> tuple[int, int, int]:
    """``(compute_cycles, load_cycles, commands)`` of a GEMM-engine op. A ``grouped_linear``
    runs one GEMM per expert that got rows (``rows_e x K @ K x N`` with that expert's weights
    and channel table), priced with :func:`routed_rows` and averaged over the samples."""
    if node.op != "grouped_linear":
        return op_cycles(spec, gemm_shape(node), channels=not is_linear16(node))
    samples, _ = routed_rows(node)
    k, n = int(node.attrs["k"]), int(node.attrs["n"])
    tot = [0, 0, 0]
    for rows in samples:
        for r in rows:
            if r > 0:
                for i, v in enumerate(op_cycles(spec, GemmShape(1, r, k, n))):
                    tot[i] += v
    c, ld, cmd = (round(v / len(samples)) for v in tot)
    return c, ld, cmd


def experts_hit(node: Node) -> float:
    """Mean number of experts of a ``grouped_linear`` that get rows (whose weights the engine
    loads), over :func:`routed_rows`."""
    samples, _ = routed_rows(node)
    return sum(sum(1 for r in rows if r > 0) for rows in samples) / len(samples)


def grouped_lowering(node: Node) -> str:
    """The plan's ``lowering.impl`` text of a ``grouped_linear`` (says how it was priced)."""
    samples, source = routed_rows(node)
    mean = [round(sum(col) / len(samples), 2) for col in zip(*samples, strict=True)]
    return (f"golden.gemm.gemm_int per expert (int8 weights and requant per expert; the router "
            f"and the row gather/scatter on the host); priced with {source}: mean rows per "
            f"expert {mean}")
