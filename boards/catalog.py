"""The boards fmforge can build for, with their resource budgets.

Each :class:`Board` couples an amaranth-boards platform class with the resource totals of its
FPGA as nextpnr counts them (the ``Device utilisation`` block of a nextpnr log, e.g.
``TRELLIS_COMB: 820/83640``), the cell names nextpnr uses for each resource class, the board
oscillator and what the board offers besides the FPGA (external memory, host link).

The totals were read back from real nextpnr-0.11 runs (see ``tests/boards/test_report.py``
for the captured logs); the external memory and host link facts come from the board
documentation.

Use :func:`get_board` to look a board up by name and :func:`list_boards` to list them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from golden.errors import UserLookupError

__all__ = ["Board", "BOARDS", "board_names", "get_board", "list_boards"]


@dataclass(frozen=True)
class Board:
    """One supported FPGA board.

    Resource totals are in the units nextpnr reports: ``luts`` are LUT4 sites
    (TRELLIS_COMB on ECP5, ICESTORM_LC on iCE40), ``ffs`` flip-flops (TRELLIS_FF; on iCE40 every
    logic cell has one), ``dsps`` hard multipliers (MULT18X18D on ECP5, SB_MAC16 on iCE40 UP5K),
    ``brams`` block RAMs (DP16KD of 18 Kbit on ECP5, 4 Kbit EBR on iCE40) and ``spram_bits`` the
    single-port RAM of the iCE40 UltraPlus (0 elsewhere).
    """

    name: str
    family: str  # "ecp5" or "ice40"
    device: str  # the device string amaranth and nextpnr use, e.g. "LFE5U-85F"
    package: str
    speed: str
    platform_path: str  # "module:Class" inside amaranth_boards
    luts: int
    ffs: int
    dsps: int
    brams: int
    bram_bits: int
    clock_mhz: float
    target_mhz: float  # default timing target for builds (above what designs reach)
    spram_bits: int = 0
    ext_memory: str | None = None
    ext_memory_bytes: int | None = None
    flash_bytes: int | None = None
    host_link: str | None = None
    description: str = ""
    #: nextpnr cell type for each resource class
    cells: dict[str, str] = field(default_factory=dict)
    #: extra tools the board's build script calls that only post-process the bitstream,
    #: as (tool, environment variable); skipped with a note when not installed
    optional_tools: tuple[tuple[str, str], ...] = ()

    @property
    def part(self) -> str:
        """The full part number, e.g. ``LFE5U-85F-6BG381C`` or ``iCE40UP5K-SG48``."""
        if self.family == "ecp5":
            return f"{self.device}-{self.speed}{self.package}C"
        return f"{self.device}-{self.package}"

    @property
    def platform_class(self) -> type:
        """The amaranth-boards platform class (imported on first use)."""
        module, _, cls = self.platform_path.partition(":")
        return getattr(importlib.import_module(f"amaranth_boards.{module}"), cls)

    def platform(self) -> Any:
        """A fresh instance of the amaranth-boards platform of this board."""
        return self.platform_class()

    def to_dict(self) -> dict[str, Any]:
        """The board as a JSON-ready dict (what ``fmforge boards --json`` prints)."""
        return {
            "name": self.name,
            "family": self.family,
            "part": self.part,
            "device": self.device,
            "package": self.package,
            "platform": self.platform_path.replace(":", "."),
            "luts": self.luts,
            "ffs": self.ffs,
            "dsps": self.dsps,
            "brams": self.brams,
            "bram_bits": self.bram_bits,
            "spram_bits": self.spram_bits,
            "clock_mhz": self.clock_mhz,
            "target_mhz": self.target_mhz,
            "ext_memory": self.ext_memory,
            "ext_memory_bytes": self.ext_memory_bytes,
            "flash_bytes": self.flash_bytes,
            "host_link": self.host_link,
            "description": self.description,
        }


_ECP5_CELLS = {"luts": "TRELLIS_COMB", "ffs": "TRELLIS_FF", "dsps": "MULT18X18D",
               "brams": "DP16KD"}
_ICE40_CELLS = {"luts": "ICESTORM_LC", "ffs": "ICESTORM_LC", "dsps": "ICESTORM_DSP",
                "brams": "ICESTORM_RAM", "spram": "ICESTORM_SPRAM"}

_MB = 1024 * 1024
_DP16KD_BITS = 18 * 1024
_EBR_BITS = 4 * 1024

_ECP5_25F = dict(family="ecp5", device="LFE5U-25F", speed="6", luts=24288, ffs=24288, dsps=28,
                 brams=56, bram_bits=56 * _DP16KD_BITS, target_mhz=150.0, cells=_ECP5_CELLS)
_ECP5_85F = dict(family="ecp5", device="LFE5U-85F", speed="6", luts=83640, ffs=83640, dsps=156,
                 brams=208, bram_bits=208 * _DP16KD_BITS, target_mhz=150.0, cells=_ECP5_CELLS)

_ULX3S = dict(package="BG381", clock_mhz=25.0, ext_memory="SDRAM 32 MB (AS4C16M16, 16-bit)",
              ext_memory_bytes=32 * _MB, flash_bytes=4 * _MB,
              host_link="USB-serial FT231X (UART, up to 3 Mbaud)")
_ORANGECRAB = dict(package="MG285", clock_mhz=48.0, optional_tools=(("dfu-suffix", "DFU_SUFFIX"),), ext_memory="DDR3L 128 MB (MT41K64M16, 16-bit)",
                   ext_memory_bytes=128 * _MB, flash_bytes=16 * _MB,
                   host_link="USB 1.1 full speed wired to the FPGA (needs a soft USB core)")

#: every supported board, by name
BOARDS: dict[str, Board] = {
    b.name: b
    for b in (
        Board(name="ulx3s-85f", platform_path="ulx3s:ULX3S_85F_Platform",
              description="Radiona ULX3S with ECP5 LFE5U-85F", **_ULX3S, **_ECP5_85F),
        Board(name="ulx3s-25f", platform_path="ulx3s:ULX3S_25F_Platform",
              description="Radiona ULX3S with ECP5 LFE5U-25F", **_ULX3S, **_ECP5_25F),
        Board(name="orangecrab-25f", platform_path="orangecrab_r0_2:OrangeCrabR0_2_25FPlatform",
              description="OrangeCrab r0.2 with ECP5 LFE5U-25F", **_ORANGECRAB, **_ECP5_25F),
        Board(name="orangecrab-85f", platform_path="orangecrab_r0_2:OrangeCrabR0_2_85FPlatform",
              description="OrangeCrab r0.2 with ECP5 LFE5U-85F", **_ORANGECRAB, **_ECP5_85F),
        Board(name="icebreaker", family="ice40", device="iCE40UP5K", package="SG48", speed="",
              platform_path="icebreaker:ICEBreakerPlatform",
              luts=5280, ffs=5280, dsps=8, brams=30, bram_bits=30 * _EBR_BITS,
              spram_bits=4 * 256 * 1024, clock_mhz=12.0, target_mhz=100.0,
              ext_memory=None, ext_memory_bytes=None, flash_bytes=16 * _MB,
              host_link="FTDI FT2232H USB (UART and SPI to the flash)",
              description="1BitSquared iCEBreaker with iCE40 UltraPlus UP5K",
              cells=_ICE40_CELLS),
    )
}


def board_names() -> list[str]:
    """The names of all supported boards, in catalog order."""
    return list(BOARDS)


def get_board(name: str | Board) -> Board:
    """Return the board called ``name`` (case-insensitive); a :class:`Board` passes through.

    Raises :class:`LookupError` with a one-line message listing the supported names when the
    board is unknown.
    """
    if isinstance(name, Board):
        return name
    key = str(name).strip().lower()
    if key in BOARDS:
        return BOARDS[key]
    raise UserLookupError(f"unknown board {name!r}; supported boards: {', '.join(BOARDS)}")


def list_boards() -> list[Board]:
    """All supported boards, in catalog order."""
    return list(BOARDS.values())
