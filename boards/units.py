"""Accelerator units as board builds see them: the registry's units against a board's resources.

The DSP rules (:func:`hw.gemm.gemm_dsps`) are measured with the open flow (Yosys 0.70 + nextpnr 0.11, see
``benchmarks/fpga_qor.py``):

* one hard multiplier per int8 MAC of the systolic array (MULT18X18D on ECP5, SB_MAC16 on
  iCE40 UP5K with ``synth_ice40 -dsp``);
* the requantizing epilogue is the shared pipelined requantizer (``hw.requant.requant_stages``),
  which splits each output column's int32 x int32 product into four 16x16 partial products,
  one hard multiplier each (on ECP5 explicit MULT18X18D with their output registers,
  ``hw.dsp``): ``4 * C`` more (2x2 with requant on LFE5U-25F: 12 MULT18X18D; 8x8 with requant
  on LFE5U-85F: 96);
* one more when C is not a power of two: the epilogue's channel-block test multiplies by
  the constant C (5x5: 26 MULT18X18D, 4x7: 29).

:func:`check_gemm_fits` applies these rules before any tool runs, so a GEMM engine that
cannot fit a board fails at once with a one-line message.
"""

from __future__ import annotations

from typing import Any

from boards.build import DoesNotFitError
from boards.catalog import Board, get_board
from hw.gemm import REQUANT_DSPS_PER_COLUMN, GemmSpec
from hw.gemm import gemm_dsps as _gemm_dsps

__all__ = [
    "DEFAULT_GEMM_BUFFER",
    "check_gemm_fits",
    "gemm_dsps",
    "gemm_engine",
    "largest_gemm",
]

#: default max_m/max_k/max_n of GEMM engines built for boards (on-chip memory is small)
DEFAULT_GEMM_BUFFER = 64


def gemm_engine(**params: Any) -> Any:
    """The :class:`hw.gemm.GemmEngine` of ``GemmSpec(**params)`` (validated by the registry)."""
    return GemmSpec(**params).build()


def gemm_dsps(board: Board | str, *, rows: int, cols: int, requant: bool = True) -> int:
    """Hard multipliers a ``rows`` x ``cols`` GEMM engine needs on ``board``."""
    return _gemm_dsps(rows, cols, requant, get_board(board).family)


def check_gemm_fits(board: Board | str, *, rows: int, cols: int, requant: bool = True) -> int:
    """Return the DSP need of the engine, or raise :class:`DoesNotFitError`.

    The message reads e.g. ``GEMM 16x16 needs 256 DSPs, ulx3s-25f has 28`` (with the
    requantizer's share spelled out when it has one).
    """
    b = get_board(board)
    need = gemm_dsps(b, rows=rows, cols=cols, requant=requant)
    if need > b.dsps:
        detail = ""
        if need > rows * cols:
            parts = [f"{rows * cols} for the MAC array"]
            if requant:
                parts.append(f"{REQUANT_DSPS_PER_COLUMN[b.family] * cols} for the requantizer "
                             f"(--no-requant saves those)")
            if cols & (cols - 1):
                parts.append("1 for the epilogue's multiply by C")
            detail = f" ({', '.join(parts)})"
        raise DoesNotFitError(f"GEMM {rows}x{cols} needs {need} DSPs{detail}, {b.name} has "
                              f"{b.dsps}", resource="dsps", needed=need, available=b.dsps,
                              board=b.name)
    return need


def largest_gemm(board: Board | str, *, requant: bool = True, square: bool = True) -> tuple[int, int]:
    """The largest array (most MACs) whose DSP need fits ``board``.

    With ``square`` only R x R arrays are considered; otherwise R x C with R <= C, the largest
    product first and the squarer shape on ties. Returns ``(0, 0)`` when nothing fits.
    """
    b = get_board(board)
    best = (0, 0)
    for r in range(1, 65):
        for c in ([r] if square else range(r, 65)):
            if gemm_dsps(b, rows=r, cols=c, requant=requant) > b.dsps:
                continue
            if r * c > best[0] * best[1] or (r * c == best[0] * best[1] and
                                             abs(r - c) < abs(best[0] - best[1])):
                best = (r, c)
    return best
