"""Streaming requantizer: P int32 lanes per cycle -> P int8 lanes, per-channel mult/shift.

Matches :func:`golden.requant.requantize` bit for bit::

    p = x * mult                                  # int32 x int32 -> int64
    r = p if shift == 0 else ((p >> (shift-1)) + 1) >> 1     # round half up
    y = clamp(r, -128, 127)                       # saturate to int8

Stream framing and end-to-end timing: see :mod:`hw.lib` (shared by the streaming units).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.errors import UserValueError
from hw.lib import (
    FrameControl,
    check_lanes_divide,
    check_positive,
    check_stalls,
    elementwise_cycles,
    saturate_bits,
)
from hw.spec import Measured, UnitParamError, UnitSpec, check_int, scaled_resources

__all__ = [
    "REQUANT_LATENCY",
    "Requantizer",
    "requant_cycles",
    "requant_edges",
    "param_layout",
    "requant_stages",
    "REQUANT_STAGES",
    "RequantSpec",
    "NONLINEAR_QOR_COMMAND",
]

#: registers of :func:`requant_stages`: partial products, two sums, shift, round, saturate
REQUANT_STAGES = 6
#: registers from the input to the output register inclusive: table read, table output
#: register, then :data:`REQUANT_STAGES`
REQUANT_LATENCY = 2 + REQUANT_STAGES
_MAX_LANES = 64
_SPLIT16_MIN, _SPLIT16_MAX = -32640, 32639  # golden.core.INT16_MIN / INT16_MAX


def requant_cycles(rows: int, channels: int, lanes: int) -> int:
    """Exact cycles of ``rows`` rows of ``channels`` int32 values on a P-lane :class:`Requantizer`.

    ``rows * channels / P`` words (one per cycle) plus :data:`REQUANT_LATENCY`.
    """
    check_positive("rows", rows)
    check_positive("channels", channels)
    check_positive("lanes", lanes)
    check_lanes_divide(lanes, channels, "channels")
    return elementwise_cycles(rows * channels // lanes, REQUANT_LATENCY)


def requant_edges(rows: int, channels: int, lanes: int, stalls: int = 0) -> int:
    """Exact edges from a job's first ``i_data`` transfer to its last ``o_data`` transfer, inclusive.

    :func:`requant_cycles` plus ``stalls``, the edges in that window at which the sink refused
    a valid output or the unit was ready while the source idled (module docstring).
    """
    return requant_cycles(rows, channels, lanes) + check_stalls(stalls)


def param_layout() -> data.StructLayout:
    """One lane of the parameter table: ``mult`` int32, ``shift`` uint6."""
    return data.StructLayout({"mult": signed(32), "shift": unsigned(6)})


def requant_stages(m: Module, adv: Value, xs: list[Value], mults: list[Value], shifts: list[Value],
                   name: str, *, platform: Any = None,
                   wide_out: list[Signal] | None = None) -> list[Signal]:
    """:data:`REQUANT_STAGES` registered stages per lane; returns the int8 output registers.

    Bit-exact :func:`golden.requant.requantize` of ``xs`` (up to int32) with ``mults`` (int32) and
    ``shifts`` (0..63), advancing only when ``adv`` is high. Stages (pipelined for timing):

    1. four 16x16 partial products of ``x`` and ``mult`` split at bit 16 (each fits one
       18x18 DSP with no fabric adder behind it)
    2. ``a = hh << 32 | ll`` (no overlap, a concatenation) and ``b = hl + lh``
    3. ``p = a + (b << 16)`` (int64, exact)
    4. ``t = (p << 1) >> shift`` (arithmetic; equals ``p >> (shift-1)`` for shift >= 1, ``2p``
       for shift 0, so that step 5 gives ``p`` itself when shift is 0)
    5. ``r = (t + 1) >> 1`` (round half up)
    6. ``y = clamp(r, -128, 127)`` by a sign-extension check

    With a list ``wide_out``, each lane also appends a register beside its int8 output that
    saturates ``r`` to the split-int16 range ``[-32640, 32639]`` instead
    (:data:`golden.core.INT16_MIN` / ``INT16_MAX``: the GELU ``split16`` output of the core).

    On an ECP5 ``platform`` the stage-1 registers are the MULT18X18D output registers
    (:func:`hw.dsp.registered_product`); elsewhere they are fabric registers. Same values.
    """
    from hw.dsp import is_ecp5, registered_product

    hard = is_ecp5(platform)
    out = []
    for c, (x, mu, sh) in enumerate(zip(xs, mults, shifts, strict=True)):
        xv, mv = x.as_signed(), mu.as_signed()
        xw = Signal(signed(32), name=f"{name}_xw{c}")
        mw = Signal(signed(32), name=f"{name}_mw{c}")
        m.d.comb += [xw.eq(xv), mw.eq(mv)]
        ll = Signal(unsigned(32), name=f"{name}_ll{c}")
        lh = Signal(signed(33), name=f"{name}_lh{c}")
        hl = Signal(signed(33), name=f"{name}_hl{c}")
        hh = Signal(signed(32), name=f"{name}_hh{c}")
        s1 = Signal(6, name=f"{name}_s1_{c}")
        a2 = Signal(signed(64), name=f"{name}_a{c}")
        b2 = Signal(signed(34), name=f"{name}_b{c}")
        s2 = Signal(6, name=f"{name}_s2_{c}")
        p = Signal(signed(64), name=f"{name}_p{c}")
        s3 = Signal(6, name=f"{name}_s3_{c}")
        t = Signal(signed(65), name=f"{name}_t{c}")
        r = Signal(signed(64), name=f"{name}_r{c}")
        y = Signal(signed(8), name=f"{name}_y{c}")
        u = Signal(signed(66), name=f"{name}_u{c}")
        m.d.comb += u.eq(t + 1)
        products = ((ll, xw[0:16], mw[0:16]), (lh, xw[0:16], mw[16:32].as_signed()),
                    (hl, xw[16:32].as_signed(), mw[0:16]),
                    (hh, xw[16:32].as_signed(), mw[16:32].as_signed()))
        for reg, pa, pb in products:
            if hard:
                m.d.comb += reg.eq(registered_product(m, platform, pa, pb, ce=adv, width=len(reg),
                                                      reg_inputs=False, name=reg.name))
            else:
                with m.If(adv):
                    m.d.sync += reg.eq(pa * pb)
        with m.If(adv):
            m.d.sync += [
                s1.eq(sh),
                a2.eq(Cat(ll, hh).as_signed()),
                b2.eq(hl + lh),
                s2.eq(s1),
                p.eq(a2 + (b2 << 16)),
                s3.eq(s2),
                t.eq(Cat(Const(0, 1), p).as_signed() >> s3),
                r.eq(u[1:65].as_signed()),
                y.eq(saturate_bits(r, 8)),
            ]
        if wide_out is not None:
            w = Signal(signed(16), name=f"{name}_w{c}")
            with m.If(adv):
                m.d.sync += w.eq(Mux(r < _SPLIT16_MIN, _SPLIT16_MIN,
                                     Mux(r > _SPLIT16_MAX, _SPLIT16_MAX, r[0:16].as_signed())))
            wide_out.append(w)
        out.append(y)
    return out


def _out_layout(lanes: int) -> data.StructLayout:
    return data.StructLayout({"data": data.ArrayLayout(signed(8), lanes), "last": unsigned(1)})


class Requantizer(wiring.Component):
    """P-lane streaming int32 -> int8 requantizer with a per-channel (mult, shift) table.

    Parameters (keyword-only)
    -------------------------
    lanes : int
        P, elements per cycle (1..64).
    channels : int
        Row length N (the number of channels); P must divide it. Word ``k`` of a job holds
        channels ``(k mod N/P) * P .. + P-1``.

    Interface
    ---------
    i_param : In(stream of P x {mult: int32, shift: uint6})
        The parameter table, ``N/P`` words written in order (a write pointer wraps after the
        last group). Load it while the unit is idle (no job in flight).
    i_data : In(stream of {data: P x int32, last: 1})   ``last`` marks a job's final word
    o_data : Out(stream of {data: P x int8, last: 1})
    busy : Out(1), cycles : Out(32)   see :mod:`hw.requant` (framing)
    error : Out(1)   sticky: a job ended (``last``) in the middle of a row

    Number formats: int32 x int32 -> int64 product, round half up by ``2**shift``, saturate to
    int8 (exactly :func:`golden.requant.requantize`). Latency :data:`REQUANT_LATENCY` = 8
    registers (table read, table output register, partial products, two sums, shift, round,
    saturate/output); throughput P elements per cycle; a job of W words takes exactly ``W + 8``
    cycles (:func:`requant_cycles`).
    """

    def __init__(self, *, lanes: int, channels: int) -> None:
        self._lanes = check_positive("lanes", lanes, _MAX_LANES)
        self._channels = check_positive("channels", channels, 2**16)
        check_lanes_divide(lanes, channels, "channels")
        super().__init__({
            "i_param": In(stream.Signature(data.ArrayLayout(param_layout(), lanes))),
            "i_data": In(stream.Signature(data.StructLayout(
                {"data": data.ArrayLayout(signed(32), lanes), "last": unsigned(1)}))),
            "o_data": Out(stream.Signature(_out_layout(lanes))),
            "busy": Out(1),
            "cycles": Out(32),
            "error": Out(1),
        })

    lanes = property(lambda self: self._lanes, doc="Elements per cycle P.")
    channels = property(lambda self: self._channels, doc="Row length N (channels).")

    @property
    def groups(self) -> int:
        """Words per row (parameter table depth), ``N / P``."""
        return self._channels // self._lanes

    @property
    def latency(self) -> int:
        """Pipeline registers, input to output inclusive."""
        return REQUANT_LATENCY

    def elaborate(self, platform) -> Module:
        m = Module()
        P, G = self._lanes, self.groups
        fc = FrameControl(m, self, REQUANT_LATENCY, row_words=G)
        m.submodules.table = table = memory.Memory(
            shape=data.ArrayLayout(param_layout(), P), depth=max(G, 2), init=[])
        wr = table.write_port()
        rd = table.read_port()
        wptr = Signal(range(max(G, 2)), name="wptr")
        m.d.comb += [self.i_param.ready.eq(1), wr.en.eq(self.i_param.valid), wr.addr.eq(wptr),
                     wr.data.eq(self.i_param.payload)]
        with m.If(self.i_param.valid):
            m.d.sync += wptr.eq(Mux(wptr == G - 1, 0, wptr + 1))
        # stage 1: the word and its table entry (synchronous read addressed by the row position)
        m.d.comb += [rd.addr.eq(fc.group), rd.en.eq(fc.adv)]
        x1 = [Signal(signed(32), name=f"x1_{c}") for c in range(P)]
        with m.If(fc.adv):
            m.d.sync += [x1[c].eq(self.i_data.payload.data[c]) for c in range(P)]
        # stage 2: register the table output (block RAM clock-to-out is slow) with its word
        x2 = [Signal(signed(32), name=f"x2_{c}") for c in range(P)]
        mu2 = [Signal(signed(32), name=f"mu2_{c}") for c in range(P)]
        sh2 = [Signal(6, name=f"sh2_{c}") for c in range(P)]
        with m.If(fc.adv):
            for c in range(P):
                m.d.sync += [x2[c].eq(x1[c]), mu2[c].eq(rd.data[c].mult), sh2[c].eq(rd.data[c].shift)]
        ys = requant_stages(m, fc.adv, x2, mu2, sh2, "rq", platform=platform)
        m.d.comb += [self.o_data.payload.data[c].eq(ys[c]) for c in range(P)]
        return m


# ---------------------------------------------------------------------- unit spec

#: the command that measured the nonlinear units' ECP5-85F resources (4 lanes, seed 1)
NONLINEAR_QOR_COMMAND = ("python benchmarks/fpga_qor.py --boards ulx3s-85f "
                         "--units requant,gelu,softmax,layernorm")


@dataclasses.dataclass(frozen=True)
class RequantSpec(UnitSpec):
    """Parameters of a :class:`Requantizer`; :meth:`cycles` is :func:`requant_cycles`."""

    lanes: int
    channels: int

    kind: ClassVar[str] = "requant"
    summary: ClassVar[str] = "P-lane int32 -> int8 requantizer"
    ops: ClassVar[tuple[str, ...]] = ()
    golden: ClassVar[str] = "golden.requant.requantize"
    component: ClassVar[str] = "hw.requant.Requantizer"
    measured: ClassVar[tuple[Measured, ...]] = (
        Measured("ecp5", {"lanes": 4, "channels": 384}, luts=3562, ffs=2383, dsps=16, brams=5,
                 fmax_mhz=128.5, command=NONLINEAR_QOR_COMMAND),
    )

    def __post_init__(self) -> None:
        check_int("lanes", self.lanes, 1, _MAX_LANES)
        check_int("channels", self.channels, 1, 2**16)
        if self.channels % self.lanes:
            raise UnitParamError(f"lanes={self.lanes} must divide channels={self.channels}")

    def build(self) -> Requantizer:
        return Requantizer(lanes=self.lanes, channels=self.channels)

    def cycles(self, *, rows: int, length: int) -> int:  # type: ignore[override]
        if length != self.channels:
            raise UserValueError(f"this requantizer takes rows of {self.channels}, not {length}")
        return requant_cycles(rows, self.channels, self.lanes)

    def resources(self, family: str) -> dict[str, Any]:
        return scaled_resources(self.measured, family, self.to_json(), self.channels * 38)
