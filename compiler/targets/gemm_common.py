"""Costing linear/matmul ops on the systolic GEMM engine (``hw.gemm``), shared by fpga and asic.

An op ``[batch] x (M x K) @ (K x N)`` runs as engine commands of at most
``max_m x max_k x max_n`` (the on-chip buffer sizes): M and N are split into chunks, K never
(the requantizing epilogue needs the whole sum), so ``max_k`` must cover the largest K.
Cycles per command are :func:`hw.gemm.gemm_cycles` (the exact cycle model of the RTL) plus the
operand load words of :func:`hw.gemm.load_words` (one word per cycle per stream, A and B
streams in parallel, the channel stream after them; loads do not overlap compute: a
conservative assumption, the engine's double buffering may hide part of it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from compiler.ir import Node
from compiler.targets.base import hw_cycle_model
from hw.gemm import DATAFLOWS, gemm_cycles, load_words

__all__ = ["GEMM_OPS", "GemmConfig", "GemmShape", "accel_lowering", "buffer_bits",
           "choose_config", "gemm_shape", "nonlinear_cycles", "op_cycles", "fit_buffers",
           "rows_length"]

#: IR ops that run on the GEMM engine
GEMM_OPS = ("linear", "matmul")

#: bits per channel-table lane: bias int32 + mult int32 + shift uint6
_CHAN_BITS = 70


@dataclass(frozen=True)
class GemmShape:
    """One GEMM-like op: ``batch`` independent ``m x k @ k x n`` products."""

    batch: int
    m: int
    k: int
    n: int


@dataclass(frozen=True)
class GemmConfig:
    """A GEMM engine instance: array, dataflow, buffer sizes, clock."""

    rows: int
    cols: int
    dataflow: str
    max_m: int
    max_k: int
    max_n: int
    mhz: float

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def gemm_shape(node: Node) -> GemmShape:
    """The GEMM of a ``linear`` or ``matmul`` node.

    A 16-bit-input linear (``quant["in_bits"] == 16``) runs as two int8 passes over the same
    weights (high and low bytes of the input stacked as ``2M`` rows, int32 out), so its shape
    has twice the rows.
    """
    a = node.attrs
    m = int(a["m"]) * (2 if (a.get("quant") or {}).get("in_bits") == 16 else 1)
    return GemmShape(int(a.get("batch", 1)), m, int(a["k"]), int(a["n"]))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def buffer_bits(rows: int, cols: int, dataflow: str, max_m: int, max_k: int, max_n: int) -> int:
    """On-chip buffer bits of an engine (A, B, channel table, WS partial sums)."""
    a = _cdiv(max_m, rows) * max_k * rows * 8 if dataflow == "os" else \
        _cdiv(max_k, rows) * max_m * rows * 8
    b = _cdiv(max_n, cols) * max_k * cols * 8
    chan = _cdiv(max_n, cols) * cols * _CHAN_BITS
    psum = max_m * cols * 32 if dataflow == "ws" else 0
    return a + b + chan + psum


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
            if buffer_bits(rows, cols, dataflow, max_m, max_k, mid * cols) <= budget_bits:
                best_n, lo = mid * cols, mid + 1
            else:
                hi = mid - 1
        if best_n:
            return max_m, max_k, min(best_n, 2**16)
        if max_m <= rows:
            return None
        max_m = max(rows, max_m // 2)


def op_cycles(cfg: GemmConfig, s: GemmShape) -> tuple[int, int, int]:
    """``(compute_cycles, load_cycles, commands)`` of one op on the engine ``cfg``."""
    if s.k > cfg.max_k:
        raise ValueError(f"K={s.k} exceeds the engine's max_k={cfg.max_k}")
    compute = load = cmds = 0
    for m0 in range(0, s.m, cfg.max_m):
        mi = min(cfg.max_m, s.m - m0)
        for n0 in range(0, s.n, cfg.max_n):
            ni = min(cfg.max_n, s.n - n0)
            compute += gemm_cycles(cfg.rows, cfg.cols, cfg.dataflow, mi, s.k, ni)
            w = load_words(cfg.rows, cfg.cols, cfg.dataflow, mi, s.k, ni, True)
            load += max(w["a"], w["b"]) + w["chan"]
            cmds += 1
    return compute * s.batch, load * s.batch, cmds * s.batch


def choose_config(shapes: list[tuple[GemmShape, int]], fits: Any, budget_bits: int,
                  mhz: float, arrays: list[tuple[int, int]] | None = None,
                  dataflows: tuple[str, ...] = DATAFLOWS) -> GemmConfig | None:
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
    best: tuple[tuple[int, int, int], GemmConfig] | None = None
    for r, c in arrays:
        for df in dataflows:
            bufs = fit_buffers(r, c, df, plain, budget_bits)
            if bufs is None:
                continue
            cfg = GemmConfig(r, c, df, *bufs, mhz=mhz)
            total = 0
            for s, count in shapes:
                comp, ld, _ = op_cycles(cfg, s)
                total += (comp + ld) * count
            key = (total, r * c, r)
            if best is None or key < best[0]:
                best = (key, cfg)
    return None if best is None else best[1]


def rows_length(node: Node) -> tuple[int, int]:
    """(rows, row length) of a nonlinear op (elementwise ops: one row per last-dim vector)."""
    shape = node.out[0].shape if node.out else (1,)
    length = shape[-1] if shape else 1
    rows = max(1, node.out[0].numel // max(length, 1)) if node.out else 1
    return rows, length


def nonlinear_cycles(node: Node, target: str) -> int:
    """Cycles of a nonlinear op on its hw unit's exact cycle model (``hw_cycle_model``)."""
    fn = hw_cycle_model(node.op)
    if fn is None:  # pragma: no cover - supports() refuses these
        raise ValueError(f"{target} cannot run {node.name} ({node.op})")
    return fn(*rows_length(node))


def accel_lowering(node: Node) -> dict[str, Any]:
    """The unit and golden implementation an accelerator op lowers to (fpga and asic alike)."""
    if node.op in GEMM_OPS:
        return {"unit": "gemm", "impl": "golden.gemm.gemm_int (bias, requant)"}
    if node.op == "layout":
        return {"unit": "loader", "impl": "operand layout (hw.gemm.pack_operands)"}
    return {"unit": node.op, "impl": f"golden.{node.op.replace('_', '')}"}
