"""Bitstreams of the board SoC (:mod:`boards.soc`): resource prediction, the fit check that runs
before any tool, and the build through :func:`boards.build.build_unit` (``harness=False``: the
SoC requests its own pins).

Predicted resources on ECP5 are the core's (:func:`hw.core_area.core_area_ecp5`: multipliers
and block RAMs counted from its structure, LUTs and flip-flops fitted to packed builds) plus the
SoC's own parts: the host link, the UARTs and LiteDRAM (:data:`SOC_LUTS`, :data:`SOC_FFS`,
measured) or the on-chip memory (:data:`LINK_LUTS`, :data:`LINK_FFS`, estimated), the external
memory's byte banks and the link's frame buffer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from boards.build import BuildResult, DoesNotFitError, build_unit
from boards.catalog import Board, get_board
from boards.soc import SocConfig, SocTop, soc_clock_hz, soc_pll
from hw.core_area import SOC_FFS, SOC_LUTS, core_area_ecp5

__all__ = ["LINK_FFS", "LINK_LUTS", "SOC_FFS", "SOC_LUTS", "build_soc", "check_soc_fits",
           "device_clock_hz", "predict_resources", "soc_config_for_device"]

LINK_LUTS = 1200
"""Estimated LUTs of the host link, the UARTs and the on-chip memory's controller."""
LINK_FFS = 900
"""Estimated flip-flops of the same."""
_DP16KD_BYTES = 2048  # one DP16KD as 2048 x 9 (a byte lane)


def _byte_rams(depth: int, lanes: int) -> int:
    return lanes * math.ceil(depth / _DP16KD_BYTES)


def predict_resources(cfg: SocConfig, family: str = "ecp5") -> dict[str, int]:
    """Predicted ``luts``, ``ffs``, ``dsps``, ``brams`` of the SoC on ``family``: the core
    (:meth:`hw.core_spec.CoreSpec.resources`; on ECP5 :func:`hw.core_area.core_area_ecp5`) plus
    the host link, the UARTs and the external memory (LiteDRAM's controller, or the on-chip
    memory's ``B`` byte banks), and the link's frame buffer."""
    s = cfg.core
    B = s.bytes_per_cycle
    ext = _byte_rams(math.ceil(cfg.ext_bytes / B), B) if cfg.memory == "bram" else 0
    frame = _byte_rams(cfg.max_payload, 1)
    if family == "ecp5":
        core = core_area_ecp5(**s.area_params(cfg.max_row))
        parts = (SOC_LUTS, SOC_FFS) if cfg.memory == "sdram" else (LINK_LUTS, LINK_FFS)
        return {"luts": core["luts"] + parts[0], "ffs": core["ffs"] + parts[1],
                "dsps": core["dsps"], "brams": core["brams"] + ext + frame}
    core = s.resources(family)
    imem_bits = 256 * s.imem_instrs
    core_bits = int(core["buffer_bits"]) - imem_bits - 8 * s.sp_bytes
    brams = (ext + frame
             + 8 * math.ceil(s.imem_instrs / 512)                     # 256-bit instructions
             + _byte_rams(math.ceil(s.sp_bytes / B), B)               # scratchpad banks
             + math.ceil(max(core_bits, 0) / (18 * 1024)))            # GEMM/SFU buffers
    dram = (SOC_LUTS - LINK_LUTS, SOC_FFS - LINK_FFS) if cfg.memory == "sdram" else (0, 0)
    return {"luts": int(core["luts"]) + LINK_LUTS + dram[0],
            "ffs": int(core["ffs"]) + LINK_FFS + dram[1], "dsps": int(core["dsps"]),
            "brams": brams}


def check_soc_fits(cfg: SocConfig, board: Board | str) -> dict[str, int]:
    """The prediction, or :class:`DoesNotFitError` naming the first resource that exceeds the
    board (DSPs and block RAMs exactly as predicted, LUTs with the estimate)."""
    b = get_board(board)
    pred = predict_resources(cfg, b.family)
    words = {"dsps": "DSP multipliers", "brams": "block RAMs", "luts": "LUTs"}
    for res in ("dsps", "brams", "luts"):
        have = getattr(b, res)
        if pred[res] > have:
            raise DoesNotFitError(
                f"the SoC ({cfg.core.rows}x{cfg.core.cols} core, {cfg.core.sp_bytes} B scratchpad, "
                f"{cfg.ext_bytes} B external memory) needs {pred[res]} {words[res]}, {b.name} has "
                f"{have}", resource=res, needed=pred[res], available=have, board=b.name)
    return pred


def build_soc(cfg: SocConfig, board: Board | str, *, name: str = "fmforge_soc",
              build_dir: Any = None, target_mhz: float | None = None, seed: int = 1,
              progress: Callable[[str], None] | None = None,
              use_cache: bool = True) -> tuple[BuildResult, dict[str, int]]:
    """Check the fit, then build the SoC's bitstream. Returns (the build result, the
    prediction). The build is cached by :func:`boards.build.build_unit` (same config, same
    bitstream).

    On the board oscillator the clock is constrained at ``target_mhz`` (default: the board's,
    above what the design reaches, so that nextpnr reports the design's Fmax). With a PLL
    (``cfg.clock_hz`` is not the oscillator: :func:`boards.soc.soc_pll`, refused before any
    tool when the board cannot make it) the oscillator keeps its own frequency and the PLL
    clock is constrained at ``target_mhz`` (default: ``cfg.clock_hz``), so that the result's
    ``timing_met`` says whether the SoC runs at its clock; ``target_mhz`` in the result is that
    constraint."""
    b = get_board(board)
    pred = check_soc_fits(cfg, b)
    pll = soc_pll(cfg.clock_hz, b)
    if pll is None:
        res = build_unit(SocTop(cfg), b, name=name, build_dir=build_dir, target_mhz=target_mhz,
                         seed=seed, progress=progress, use_cache=use_cache, harness=False)
        return res, pred
    constraint = float(target_mhz) * 1e6 if target_mhz is not None else pll.out_hz
    res = build_unit(SocTop(cfg, constraint_hz=constraint), b, name=name, build_dir=build_dir,
                     target_mhz=b.clock_mhz, seed=seed, progress=progress, use_cache=use_cache,
                     harness=False)
    res.target_mhz = constraint / 1e6
    return res, pred


def device_clock_hz(device: dict[str, Any], board: str = "ulx3s-85f") -> float:
    """The SoC clock of a plan's ``core`` device on ``board``: its planned ``clock_mhz`` when it
    was priced for a board (``core:board=B:mhz=F``), else the board oscillator, through
    :func:`boards.soc.soc_clock_hz` (the frequency the board's PLL makes)."""
    p = device.get("params", {})
    planned = p.get("board") and p.get("clock_mhz")
    return soc_clock_hz(board, float(p["clock_mhz"]) * 1e6 if planned else None)


def soc_config_for_device(device: dict[str, Any], *, ext_bytes: int | None = None,
                          clock_hz: float | None = None, baud: float = 1e6, max_payload: int = 1024,
                          max_row: int = 512, memory: str = "bram",
                          board: str = "ulx3s-85f") -> SocConfig:
    """The SoC of a plan's ``core`` device entry (its ``params`` are
    :class:`hw.core_spec.CoreSpec` fields). The external memory is on-chip here, so the core's
    memory latency becomes :data:`hw.extmem.BRAM_LATENCY`, the instruction memory holds the
    longest of the device's programs (rounded up to a power of two); ``ext_bytes`` defaults to the largest
    ``ext_bytes`` of the device's programs (64 KiB when it has none). The SoC's clock is
    ``clock_hz``, else the device's planned ``clock_mhz`` when it was priced for a board
    (``core:board=B:mhz=F``), else the board oscillator; it goes through
    :func:`boards.soc.soc_clock_hz` (the frequency the board's PLL makes, refused when it cannot
    come near). With ``memory="sdram"`` the external memory is the board's SDRAM
    (its size; the core keeps the plan's latency)."""
    import dataclasses

    from golden.errors import UserValueError
    from hw.core_spec import CoreSpec
    from hw.extmem import BRAM_LATENCY
    from hw.spec import UnitParamError

    if device.get("kind") != "core":
        raise UserValueError(f"device {device.get('name')!r} is a {device.get('kind')} device, "
                             f"not a core: the SoC builds the fmforge core")
    p = device.get("params", {})
    try:
        spec = CoreSpec(**{k: p[k] for k in CoreSpec.__dataclass_fields__ if k in p})
    except (UnitParamError, TypeError) as e:
        raise UserValueError(f"device {device['name']!r}: bad core parameters: {e}") from None
    progs = device.get("hardware", {}).get("programs", [])
    # the instruction memory holds the longest of the plan's programs (a power of two)
    longest = max([int(q.get("instructions", 0)) for q in progs] + [1])
    imem = min(spec.imem_instrs, 1 << max(4, (longest - 1).bit_length()))
    need = max([int(q.get("ext_bytes", 0)) for q in progs] + [0])
    if memory == "sdram":
        b = get_board(board)
        if not b.ext_memory_bytes:
            raise UserValueError(f"{b.name} has no external memory for --memory sdram")
        spec = dataclasses.replace(spec, imem_instrs=imem)
        size = b.ext_memory_bytes
    else:
        spec = dataclasses.replace(spec, latency=BRAM_LATENCY, imem_instrs=imem)
        size = ext_bytes if ext_bytes is not None else (need or 64 * 1024)
    if size < need:
        raise UserValueError(f"--ext-kb gives {size} bytes of external memory; the plan's "
                             f"programs use {need}")
    clock = soc_clock_hz(board, clock_hz) if clock_hz is not None else device_clock_hz(device, board)
    return SocConfig(core=spec, ext_bytes=size, clock_hz=clock, baud=baud,
                     max_payload=max_payload, max_row=max_row, memory=memory,
                     board=get_board(board).name)
