"""What the fmforge core (:class:`hw.core.Core`) costs on an ECP5: block RAMs and multipliers
counted from its structure, LUTs and flip-flops from a model fitted to measured builds.

* **Block RAMs** (DP16KD): every memory the core elaborates (:func:`core_memories`, checked
  against the RTL by tests/hw/test_core_area.py), each mapped as Yosys maps it
  (:func:`ecp5_block_rams`): a RAM at least :data:`BRAM_MIN_DEPTH` deep takes the DP16KD
  configuration (16384x1 ... 512x36) that needs the fewest blocks; shallower RAMs are LUT RAM,
  ROMs are logic, and the scratchpad banks are flip-flops (9 read and 4 write ports: no RAM
  primitive has them). This is the count Yosys maps; synthesis then drops the instruction
  memory's blocks whose bits the decoder never reads (3 to 5 of its 29 in the configurations
  measured, depending on the scratchpad's address width), so a build uses that many fewer.
* **Multipliers** (MULT18X18D): the GEMM engine's (:func:`hw.gemm.gemm_dsps`), four per output
  column for the accumulate epilogue's requantizer, and the fixed units: the ADD pipeline (8),
  the run-time softmax (20), layer norm (16) and GELU (7), one lane each.
* **LUTs and flip-flops**: linear in the MACs (``rows*cols``), the output columns (the engine's
  and the epilogue's requantizers), the scratchpad width (:func:`hw.core_model.sp_width` banks,
  each behind 13 rotating ports) and the scratchpad bytes (flip-flops with a read multiplexer per
  port: about 108 LUTs a byte), least-squares fitted to the SoCs of ``python
  benchmarks/core_area.py`` (Yosys 0.70 synthesis, nextpnr 0.11 packing: the counts ``fmforge
  build`` reports); the fit and its residuals are in docs/hostlink.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from hw.core_model import SOFTMAX_LANES, sp_width
from hw.gemm import buffer_depths, gemm_dsps

__all__ = ["BRAM_MIN_DEPTH", "SOC_FFS", "SOC_LUTS", "CoreMemory", "core_area_ecp5", "core_memories", "ecp5_block_rams"]

#: DP16KD configurations (depth, width); the pseudo-dual-port 512x36 included
DP16KD_MODES = ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36))
#: RAMs shallower than this become LUT RAM (TRELLIS_DPR16X4) under Yosys 0.70's synth_ecp5
BRAM_MIN_DEPTH = 128
#: multipliers of the core's fixed units: ADD pipeline, run-time softmax, layer norm, GELU
FIXED_DSPS = 8 + 20 + 16 + 7
#: multipliers per output column of the accumulate epilogue's requantizer
EPILOGUE_DSPS_PER_COLUMN = 4


@dataclass(frozen=True)
class CoreMemory:
    """One memory of the core: ``width`` bits x ``depth`` words; ``rom`` (no write port) or
    ``ff`` (multi-ported: flip-flops)."""

    name: str
    width: int
    depth: int
    rom: bool = False
    ff: bool = False


def core_memories(*, rows: int, cols: int, dataflow: str = "os", bytes_per_cycle: int = 4,
                  queue_depth: int = 4, sp_bytes: int = 4096, imem_instrs: int = 256,
                  max_m: int = 64, max_k: int = 64, max_n: int = 64,
                  max_row: int = 512) -> list[CoreMemory]:
    """Every memory :class:`hw.core.Core` with these parameters elaborates (its keyword
    arguments), in no particular order."""
    R, C = rows, cols
    w = sp_width(R, C, bytes_per_cycle)
    a, b, chan = buffer_depths(R, C, dataflow, max_m, max_k, max_n)
    words = max(max_row // SOFTMAX_LANES, 2)
    mems = [CoreMemory("imem", 256, imem_instrs),
            CoreMemory("res", 32 * C, max_m * -(-max_n // C)),
            CoreMemory("ma_t", 24, max_row), CoreMemory("mb_t", 24, max_row),
            CoreMemory("gemm.amem", 8 * R, a), CoreMemory("gemm.bmem", 8 * C, b),
            CoreMemory("gemm.cmem", 70 * C, chan),
            CoreMemory("lnorm.qbuf", 16, max(max_row, 2)),
            CoreMemory("lnorm.gram", 16, max(max_row, 2)),
            CoreMemory("lnorm.bram", 48, max(max_row, 2)),
            CoreMemory("smax.xbuf", 33 * SOFTMAX_LANES, words),
            CoreMemory("smax.ebuf", 16 * SOFTMAX_LANES, words),
            CoreMemory("smax.rom", 16, 256, rom=True)]
    if dataflow == "ws":  # the weight-stationary engine's partial sums
        mems.append(CoreMemory("gemm.pmem", 32 * C, max(max_m, 2)))
    mems += [CoreMemory(f"{q}q.storage", 256, queue_depth) for q in "dms"]
    mems += [CoreMemory(f"sp_bank{j}", 8, max(1, -(-sp_bytes // w)), ff=True) for j in range(w)]
    return mems


def ecp5_block_rams(mem: CoreMemory) -> int:
    """DP16KD blocks of one memory (0: LUT RAM, logic or flip-flops)."""
    if mem.rom or mem.ff or mem.depth < BRAM_MIN_DEPTH:
        return 0
    return min(ceil(mem.width / w) * ceil(mem.depth / d) for d, w in DP16KD_MODES)


#: least-squares fits of the packed SDRAM SoC's TRELLIS_COMB, as (constant, per MAC, per output
#: column, per scratchpad bank, per scratchpad byte), and TRELLIS_FF, as (constant, per MAC, per
#: column, per byte), over seven configurations from 2x2 to 8x8 and 128 to 512 bytes (``python
#: benchmarks/core_area.py``; residuals within 0.3 % and 1.2 %, leave-one-out within 1.4 % and
#: 3.8 %: docs/hostlink.md). The core's share is the fit less :data:`SOC_LUTS` / :data:`SOC_FFS`.
LUT_FIT = (9016.67, 120.07, 2217.81, 667.13, 107.61)
FF_FIT = (11141.76, 139.01, 1520.6, 7.58)
#: LUTs and flip-flops of the SDRAM SoC's parts besides the core (host link, UARTs, LiteDRAM,
#: its initialisation, the bridge): the packed 2x2 SoC less that core synthesised alone
SOC_LUTS = 3458
SOC_FFS = 521


def core_area_ecp5(*, rows: int, cols: int, dataflow: str = "os", bytes_per_cycle: int = 4,
                   queue_depth: int = 4, sp_bytes: int = 4096, imem_instrs: int = 256,
                   max_m: int = 64, max_k: int = 64, max_n: int = 64,
                   max_row: int = 512) -> dict[str, int]:
    """``luts``, ``ffs``, ``dsps``, ``brams`` of the core on an ECP5 (module docstring)."""
    mems = core_memories(rows=rows, cols=cols, dataflow=dataflow,
                         bytes_per_cycle=bytes_per_cycle, queue_depth=queue_depth,
                         sp_bytes=sp_bytes, imem_instrs=imem_instrs, max_m=max_m, max_k=max_k,
                         max_n=max_n, max_row=max_row)
    w = sp_width(rows, cols, bytes_per_cycle)
    lx = (1.0, rows * cols, cols, w, sp_bytes)
    fx = (1.0, rows * cols, cols, sp_bytes)
    return {"luts": round(sum(c * v for c, v in zip(LUT_FIT, lx, strict=True))) - SOC_LUTS,
            "ffs": round(sum(c * v for c, v in zip(FF_FIT, fx, strict=True))) - SOC_FFS,
            "dsps": (gemm_dsps(rows, cols, True, "ecp5") + EPILOGUE_DSPS_PER_COLUMN * cols
                     + FIXED_DSPS),
            "brams": sum(ecp5_block_rams(m) for m in mems)}
