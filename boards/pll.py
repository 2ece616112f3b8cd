"""The core clock from a PLL: the ECP5 ``EHXPLLL`` parameter solver and the reset held until lock.

An ECP5 PLL (Lattice TN1263, "ECP5 and ECP5-5G sysCLOCK PLL/DLL Design and Usage Guide", and
the ECP5 data sheet's sysCLOCK PLL timing table) with its feedback taken from the primary output
``CLKOP`` (``FEEDBK_PATH="CLKOP"``) makes::

    f_pfd = f_in / CLKI_DIV                 phase detector input,   3.125 - 400 MHz
    f_out = f_pfd * CLKFB_DIV               CLKOP,                  3.125 - 400 MHz
    f_vco = f_out * CLKOP_DIV               VCO,                    400   - 800 MHz

with the input clock 8 - 400 MHz and every divider an integer 1 - 128. ``CLKOP_DIV`` does not
change ``f_out``: it only puts the VCO in its range. The output's phase is 0 degrees with
``CLKOP_CPHASE = CLKOP_DIV - 1`` and ``CLKOP_FPHASE = 0`` (the convention of Project Trellis's
``ecppll`` and LiteX). :func:`solve_ecp5_pll` searches every divider for the frequency nearest the
request (ties: the highest phase-detector frequency, then the highest VCO frequency) and refuses
one it cannot make within ``tolerance`` (relative; :data:`DEFAULT_TOLERANCE`). With a 25 MHz
oscillator (the ULX3S) the frequencies it makes are ``25 MHz * CLKFB_DIV / CLKI_DIV`` with
``CLKI_DIV <= 8``: 50, 62.5, 75 MHz exactly, 48 MHz not within 1 % (46.875 or 50 are nearest).

iCE40 boards (``SB_PLL40``) have no solver here: :func:`solve_pll` refuses any clock but their
oscillator's.

:class:`LockReset` holds a clock domain's reset from power-up until the PLL's ``LOCK`` (brought
into the PLL's clock by a two-flop synchroniser) has been high for :data:`LOCK_CYCLES` cycles,
and again whenever it drops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from amaranth import Elaboratable, Instance, Module, Signal
from amaranth.lib.cdc import FFSynchronizer

from golden.errors import UserValueError

__all__ = ["DEFAULT_TOLERANCE", "ECP5_DIV", "ECP5_IN_HZ", "ECP5_OUT_HZ", "ECP5_PFD_HZ",
           "ECP5_VCO_HZ", "EcpPll", "LOCK_CYCLES", "LockReset", "solve_ecp5_pll", "solve_pll"]

#: the dividers' range (CLKI_DIV, CLKFB_DIV, CLKOP_DIV), inclusive
ECP5_DIV = (1, 128)
#: input clock range (Hz)
ECP5_IN_HZ = (8e6, 400e6)
#: phase-detector input range (Hz): f_in / CLKI_DIV
ECP5_PFD_HZ = (3.125e6, 400e6)
#: VCO range (Hz)
ECP5_VCO_HZ = (400e6, 800e6)
#: output range (Hz)
ECP5_OUT_HZ = (3.125e6, 400e6)
#: how far (relative) the made frequency may be from the requested one
DEFAULT_TOLERANCE = 0.01
#: cycles of the PLL clock that LOCK must hold before the domain leaves reset
LOCK_CYCLES = 16


def _mhz(hz: float) -> str:
    return f"{hz / 1e6:.6g} MHz"


@dataclass(frozen=True)
class EcpPll:
    """One EHXPLLL setting: input ``clki_hz`` and the three dividers (feedback from CLKOP)."""

    clki_hz: float
    clki_div: int
    clkfb_div: int
    clkop_div: int

    @property
    def pfd_hz(self) -> float:
        return self.clki_hz / self.clki_div

    @property
    def out_hz(self) -> float:
        """The exact output frequency: ``clki_hz * CLKFB_DIV / CLKI_DIV``."""
        return float(Fraction(self.clki_hz) * self.clkfb_div / self.clki_div)

    @property
    def vco_hz(self) -> float:
        return float(Fraction(self.clki_hz) * self.clkfb_div * self.clkop_div / self.clki_div)

    @property
    def clkop_cphase(self) -> int:
        return self.clkop_div - 1

    @property
    def clkop_fphase(self) -> int:
        return 0

    def parameters(self) -> dict[str, Any]:
        """The EHXPLLL parameters and attributes as amaranth ``Instance`` keywords (``p_``,
        ``a_``): CLKOP only, feedback from CLKOP, the loop-filter attributes that nextpnr and
        ecppll write for every setting."""
        return {
            "a_FREQUENCY_PIN_CLKI": f"{self.clki_hz / 1e6:.6f}".rstrip("0").rstrip("."),
            "a_FREQUENCY_PIN_CLKOP": f"{self.out_hz / 1e6:.6f}".rstrip("0").rstrip("."),
            "a_ICP_CURRENT": "12", "a_LPF_RESISTOR": "8", "a_MFG_ENABLE_FILTEROPAMP": "1",
            "a_MFG_GMCREF_SEL": "2",
            "p_PLLRST_ENA": "DISABLED", "p_INTFB_WAKE": "DISABLED",
            "p_STDBY_ENABLE": "DISABLED", "p_DPHASE_SOURCE": "DISABLED",
            "p_OUTDIVIDER_MUXA": "DIVA", "p_OUTDIVIDER_MUXB": "DIVB",
            "p_OUTDIVIDER_MUXC": "DIVC", "p_OUTDIVIDER_MUXD": "DIVD",
            "p_CLKI_DIV": self.clki_div, "p_CLKFB_DIV": self.clkfb_div,
            "p_CLKOP_DIV": self.clkop_div, "p_CLKOP_ENABLE": "ENABLED",
            "p_CLKOP_CPHASE": self.clkop_cphase, "p_CLKOP_FPHASE": self.clkop_fphase,
            "p_FEEDBK_PATH": "CLKOP",
        }

    def instance(self, clki: Any, clkop: Signal, lock: Signal) -> Instance:
        """The EHXPLLL: ``clki`` in, ``clkop`` out (and fed back), ``lock``."""
        return Instance("EHXPLLL", **self.parameters(),
                        i_CLKI=clki, i_CLKFB=clkop, o_CLKOP=clkop, o_LOCK=lock,
                        i_RST=0, i_STDBY=0, i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1,
                        i_PHASESTEP=1, i_PHASELOADREG=1, i_PLLWAKESYNC=0, i_ENCLKOP=0)

    def to_json(self) -> dict[str, Any]:
        return {"clki_mhz": self.clki_hz / 1e6, "clki_div": self.clki_div,
                "clkfb_div": self.clkfb_div, "clkop_div": self.clkop_div,
                "clkop_cphase": self.clkop_cphase, "clkop_fphase": self.clkop_fphase,
                "pfd_mhz": self.pfd_hz / 1e6, "vco_mhz": self.vco_hz / 1e6,
                "out_mhz": self.out_hz / 1e6}


def _settings(clki_hz: float):
    """Every valid (CLKI_DIV, CLKFB_DIV, highest valid CLKOP_DIV), output frequency exact."""
    lo, hi = ECP5_DIV
    fin = Fraction(clki_hz)
    for i in range(lo, hi + 1):
        pfd = fin / i
        if not ECP5_PFD_HZ[0] <= pfd <= ECP5_PFD_HZ[1]:
            continue
        for fb in range(lo, hi + 1):
            out = pfd * fb
            if out > ECP5_OUT_HZ[1]:
                break
            if out < ECP5_OUT_HZ[0]:
                continue
            op = min(hi, math.floor(Fraction(ECP5_VCO_HZ[1]) / out))
            if op < lo or out * op < ECP5_VCO_HZ[0]:
                continue
            yield i, fb, op, out


def solve_ecp5_pll(clki_hz: float, out_hz: float,
                   tolerance: float = DEFAULT_TOLERANCE) -> EcpPll:
    """The EHXPLLL setting whose output is nearest ``out_hz`` (module docstring); refuses
    (:class:`UserValueError`, one line naming the frequency and the reason) an input or output
    out of range, or an output no setting makes within ``tolerance`` (relative)."""
    if not (isinstance(out_hz, (int, float)) and math.isfinite(out_hz) and out_hz > 0):
        raise UserValueError(f"a PLL clock must be a positive frequency, not {out_hz!r}")
    if not ECP5_IN_HZ[0] <= clki_hz <= ECP5_IN_HZ[1]:
        raise UserValueError(f"the ECP5 PLL cannot take a {_mhz(clki_hz)} input clock: its "
                             f"input is {_mhz(ECP5_IN_HZ[0])} to {_mhz(ECP5_IN_HZ[1])}")
    if not ECP5_OUT_HZ[0] <= out_hz <= ECP5_OUT_HZ[1]:
        raise UserValueError(f"the ECP5 PLL cannot make {_mhz(out_hz)}: its output is "
                             f"{_mhz(ECP5_OUT_HZ[0])} to {_mhz(ECP5_OUT_HZ[1])}")
    want = Fraction(out_hz)
    best = None
    below = above = None
    for i, fb, op, out in _settings(clki_hz):
        key = (abs(out - want), i, -op)
        if best is None or key < best[0]:
            best = (key, i, fb, op)
        if out <= want and (below is None or out > below):
            below = out
        if out >= want and (above is None or out < above):
            above = out
    assert best is not None  # 8 MHz in and 3.125-400 MHz out always have some setting
    (err, _, _), i, fb, op = best
    if err > want * Fraction(tolerance):
        near = " or ".join(_mhz(float(f)) for f in (below, above) if f is not None)
        within = "exactly" if tolerance < 1e-6 else f"within {tolerance * 100:.3g} %"
        raise UserValueError(f"the ECP5 PLL cannot make {_mhz(out_hz)} from the "
                             f"{_mhz(clki_hz)} clock {within}: the nearest it makes are {near}")
    return EcpPll(clki_hz=float(clki_hz), clki_div=i, clkfb_div=fb, clkop_div=op)


def solve_pll(family: str, clki_hz: float, out_hz: float,
              tolerance: float = DEFAULT_TOLERANCE) -> EcpPll | None:
    """The PLL that makes ``out_hz`` from ``clki_hz`` on an FPGA ``family`` ("ecp5", "ice40"):
    None when ``out_hz`` is the input clock itself (no PLL), an :class:`EcpPll` on ECP5;
    refused on iCE40 (no SB_PLL40 solver yet) and on other families."""
    if out_hz == clki_hz:
        return None
    fam = family.lower()
    if fam == "ecp5":
        return solve_ecp5_pll(clki_hz, out_hz, tolerance)
    if fam == "ice40":
        raise UserValueError(f"cannot clock an iCE40 SoC at {_mhz(out_hz)}: the SB_PLL40 has no "
                             f"solver here yet, so the SoC runs on the {_mhz(clki_hz)} board "
                             "oscillator only")
    raise UserValueError(f"cannot clock a {family} SoC at {_mhz(out_hz)}: no PLL solver for "
                         f"{family}; it runs on the {_mhz(clki_hz)} board oscillator only")


class LockReset(Elaboratable):
    """``rst`` (Out, registered, 1 from configuration) stays high until ``lock`` (In, from the
    PLL, asynchronous) is high, and ``arst`` (In, an extra reset such as a button) low, for
    ``cycles`` consecutive cycles of ``domain`` (a reset-less domain on the PLL's output); it
    rises again the cycle after either changes (after the two-flop synchroniser)."""

    def __init__(self, cycles: int = LOCK_CYCLES, domain: str = "pll") -> None:
        if cycles < 1:
            raise UserValueError(f"LockReset needs at least 1 cycle, not {cycles}")
        self.cycles = cycles
        self.domain = domain
        self.lock = Signal()
        self.arst = Signal()
        self.rst = Signal(init=1)

    def elaborate(self, platform: Any) -> Module:
        m = Module()
        ok = Signal()
        m.submodules.sync_lock = FFSynchronizer(self.lock & ~self.arst, ok, o_domain=self.domain)
        count = Signal(range(self.cycles + 1))
        d = m.d[self.domain]
        with m.If(~ok):
            d += count.eq(0)
        with m.Elif(count != self.cycles):
            d += count.eq(count + 1)
        d += self.rst.eq(~ok | (count < self.cycles - 1))
        return m
