"""Registered hard multipliers: an 18x18 product with its registers inside the DSP where there is one.

Yosys maps ``a * b`` onto ECP5 MULT18X18D blocks but does not pack the registers around them
into the block, so a registered product costs a fabric register -> multiplier -> fabric register
path with routing on both sides (the GEMM array's critical path at 109 MHz). On an ECP5 platform
:func:`registered_product` instantiates MULT18X18D with its input and/or output registers
enabled; anywhere else (simulation, Verilog export, other families) it builds the same
registers and the product in plain Amaranth. Both forms have the same latency and the same
values once the registers have been written; the registers advance only when ``ce`` is high
and are reset with the ``sync`` domain.
"""

from __future__ import annotations

from typing import Any

from amaranth import ClockSignal, Const, Module, ResetSignal, Signal, Value, signed, unsigned
from amaranth.hdl import Instance

__all__ = ["is_ecp5", "registered_product"]

_WIDTH = 18


def is_ecp5(platform: Any) -> bool:
    """True when ``platform`` is a Lattice ECP5 build platform (MULT18X18D available)."""
    return platform is not None and getattr(platform, "family", None) == "ecp5"


def registered_product(m: Module, platform: Any, a: Value, b: Value, *, ce: Value, width: int,
                       reg_inputs: bool, name: str) -> Signal:
    """``a * b`` (each at most 18 bits, signed or unsigned as its shape says) in ``width`` bits.

    Latency: one register (the product) when ``reg_inputs`` is false, two (operands, then
    product) when it is true. ``a`` and ``b`` are sampled in the same cycle.
    """
    a, b = Value.cast(a), Value.cast(b)
    for label, v in (("a", a), ("b", b)):
        if len(v) > _WIDTH or (len(v) == _WIDTH and not v.shape().signed):
            raise ValueError(f"operand {label} of {name} does not fit an 18-bit signed multiplier "
                             f"input ({v.shape()})")
    out = Signal(signed(width) if (a.shape().signed or b.shape().signed) else unsigned(width),
                 name=f"{name}_p")
    if not is_ecp5(platform):
        if reg_inputs:
            ar = Signal(a.shape(), name=f"{name}_ra")
            br = Signal(b.shape(), name=f"{name}_rb")
            with m.If(ce):
                m.d.sync += [ar.eq(a), br.eq(b)]
            a, b = ar, br
        with m.If(ce):
            m.d.sync += out.eq(a * b)
        return out
    a18 = Signal(signed(_WIDTH), name=f"{name}_a18")
    b18 = Signal(signed(_WIDTH), name=f"{name}_b18")
    m.d.comb += [a18.eq(a), b18.eq(b)]  # sign- or zero-extended by the operand's shape
    p = Signal(36, name=f"{name}_p36")
    reg = "CLK0" if reg_inputs else "NONE"
    ports: dict[str, Any] = {}
    for i in range(_WIDTH):
        ports[f"i_A{i}"] = a18[i]
        ports[f"i_B{i}"] = b18[i]
        ports[f"i_C{i}"] = Const(0, 1)
    for i in range(36):
        ports[f"o_P{i}"] = p[i]
    m.submodules[f"{name}_mult"] = Instance(
        "MULT18X18D",
        p_REG_INPUTA_CLK=reg, p_REG_INPUTA_CE="CE0", p_REG_INPUTA_RST="RST0",
        p_REG_INPUTB_CLK=reg, p_REG_INPUTB_CE="CE0", p_REG_INPUTB_RST="RST0",
        p_REG_INPUTC_CLK="NONE", p_REG_PIPELINE_CLK="NONE",
        p_REG_OUTPUT_CLK="CLK0", p_REG_OUTPUT_CE="CE0", p_REG_OUTPUT_RST="RST0",
        p_CLK0_DIV="ENABLED", p_HIGHSPEED_CLK="NONE", p_GSR="DISABLED",
        p_CAS_MATCH_REG="FALSE", p_SOURCEB_MODE="B_SHIFT", p_MULT_BYPASS="DISABLED",
        p_RESETMODE="SYNC",
        i_SIGNEDA=Const(1, 1), i_SIGNEDB=Const(1, 1), i_SOURCEA=Const(0, 1), i_SOURCEB=Const(0, 1),
        i_CLK0=ClockSignal("sync"), i_CE0=ce, i_RST0=ResetSignal("sync", allow_reset_less=True),
        **ports,
    )
    m.d.comb += out.eq(p[:width])
    return out
