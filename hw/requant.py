"""Streaming requantizer: P int32 lanes per cycle -> P int8 lanes, per-channel mult/shift.

Matches :func:`golden.requant.requantize` bit for bit::

    p = x * mult                                  # int32 x int32 -> int64
    r = p if shift == 0 else ((p >> (shift-1)) + 1) >> 1     # round half up
    y = clamp(r, -128, 127)                       # saturate to int8

Stream framing shared by the element-wise units (:class:`Requantizer`, :class:`hw.gelu.Gelu`)
----------------------------------------------------------------------------------------------
A *job* is a burst of input words whose final word carries ``last``. The pipeline is a chain of
``depth`` registers ending in the output register and advances (``adv``) only in cycles where
the output is not blocked (``~(o.valid & ~o.ready)``) **and** there is work: an input word is
offered, or the job's final word is still draining. A source that idles therefore freezes the
pipeline instead of inserting bubbles, and a sink that refuses freezes it too, so the unit's
``cycles`` counter (advancing cycles from the job's first accepted word to the transfer of its
final output word, inclusive) is exactly ``words + depth`` whatever the stall pattern
(:func:`elementwise_cycles`). The outputs of a job are all produced once its ``last`` word has
been accepted; words before it may wait in the pipeline while the source idles.

End-to-end timing seen at the ports (shared by all four nonlinear units)
-------------------------------------------------------------------------
A testbench counts the clock edges of a job from its first ``i_data`` transfer (valid & ready)
to its last ``o_data`` transfer, both inclusive, and the edges in that window at which the
unit was *held by a neighbour*: the sink refused (``o_data`` valid & ~ready) or the unit waited
for the source (``i_data`` ready & ~valid; the two never coincide, since a refused output
freezes the unit and drops ``i_data.ready``). The edge count is then exactly the unit's
``<unit>_cycles`` model plus those stall edges (:func:`elementwise_edges`,
:func:`requant_edges`, ``hw.gelu.gelu_edges``, ``hw.softmax.softmax_edges``,
``hw.layernorm.layernorm_edges``); with no stalls it is the model itself. A cycle the unit
loses on its own (a bubble outside the ``cycles`` counter) breaks the equality.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.errors import UserValueError
from hw.spec import Measured, UnitParamError, UnitSpec, check_int, scaled_resources

__all__ = [
    "REQUANT_LATENCY",
    "round_half_up_const",
    "check_lanes_divide",
    "row_unit_bookkeeping",
    "Requantizer",
    "requant_cycles",
    "elementwise_cycles",
    "elementwise_edges",
    "requant_edges",
    "check_stalls",
    "param_layout",
    "check_positive",
    "FrameControl",
    "requant_stages",
    "REQUANT_STAGES",
    "saturate_bits",
    "RequantSpec",
    "NONLINEAR_QOR_COMMAND",
]

#: registers of :func:`requant_stages`: partial products, two sums, shift, round, saturate
REQUANT_STAGES = 6
#: registers from the input to the output register inclusive: table read, table output
#: register, then :data:`REQUANT_STAGES`
REQUANT_LATENCY = 2 + REQUANT_STAGES
_MAX_LANES = 64


def round_half_up_const(v, s: int):
    """``v / 2**s`` rounded half up, for a constant ``s`` (as golden.requant.round_shift_right)."""
    return v if s == 0 else ((v >> (s - 1)) + 1) >> 1


def check_positive(name: str, value: object, limit: int | None = None) -> int:
    """Validate a positive integer parameter (``ValueError`` with the parameter's name)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserValueError(f"{name} must be a positive integer, not {value!r}")
    if limit is not None and value > limit:
        raise UserValueError(f"{name} must be at most {limit}, not {value}")
    return value


def check_lanes_divide(lanes: int, length: int, name: str = "length") -> None:
    """``ValueError`` unless ``lanes`` divides the row length (named ``name`` in the message)."""
    if length % lanes:
        raise UserValueError(f"lanes={lanes} must divide the row length ({name}={length})")


def row_unit_bookkeeping(m: Module, adv, loading, i, o, cycles, busy):
    """The row units' handshake bookkeeping; returns ``accept`` (an input word taken now).

    The input is ready while the pipeline advances in the load phase; ``cycles`` counts the
    cycles that advance and either take a word or work outside the load phase; ``busy`` rises
    with the first word and falls with the transfer of the last output word.
    """
    accept = Signal(name="accept")
    m.d.comb += [i.ready.eq(adv & loading), accept.eq(i.valid & i.ready)]
    with m.If(adv & (accept | ~loading)):
        m.d.sync += cycles.eq(cycles + 1)
    with m.If(accept):
        m.d.sync += busy.eq(1)
    with m.If(o.valid & o.ready & o.payload.last):
        m.d.sync += busy.eq(0)
    return accept


def elementwise_cycles(words: int, depth: int) -> int:
    """Exact ``cycles`` of one job of ``words`` input words on a pipeline of ``depth`` registers."""
    check_positive("words", words)
    return words + depth


def check_stalls(stalls: int) -> int:
    """Validate a stall-edge count (a non-negative integer)."""
    if not isinstance(stalls, int) or isinstance(stalls, bool) or stalls < 0:
        raise UserValueError(f"stalls must be a non-negative integer, not {stalls!r}")
    return stalls


def elementwise_edges(words: int, depth: int, stalls: int = 0) -> int:
    """Exact clock edges from a job's first input transfer to its last output transfer, inclusive.

    ``elementwise_cycles(words, depth) + stalls``; ``stalls`` is the number of edges in that
    window at which ``o_data`` was valid and not ready or ``i_data`` ready and not valid
    (module docstring, end-to-end timing).
    """
    return elementwise_cycles(words, depth) + check_stalls(stalls)


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


class FrameControl:
    """The element-wise units' job framing (see the module docstring), built into module ``m``.

    ``adv`` is the global advance; ``accept`` is an input transfer; ``valid[k]``/``last[k]`` are
    the occupancy bits of pipeline register ``k`` (``k = depth - 1`` is the output register,
    driven onto ``o.valid``/``o.payload.last``). ``busy``, ``cycles`` and a sticky ``error`` are
    driven onto the component's ports of the same names.
    """

    def __init__(self, m: Module, comp, depth: int, *, row_words: int) -> None:
        i, o = comp.i_data, comp.o_data
        self.adv = adv = Signal(name="adv")
        self.accept = accept = Signal(name="accept")
        drain = Signal(name="drain")
        o_ok = Signal(name="o_ok")
        self.valid = [Signal(name=f"v{k}") for k in range(depth)]
        self.last = [Signal(name=f"l{k}") for k in range(depth)]
        m.d.comb += [
            o_ok.eq(~(o.valid & ~o.ready)),
            i.ready.eq(o_ok & ~drain),
            adv.eq(o_ok & (i.valid | drain)),
            accept.eq(i.valid & i.ready),
            o.valid.eq(self.valid[-1]),
            o.payload.last.eq(self.last[-1]),
        ]
        with m.If(adv):
            m.d.sync += [self.valid[0].eq(accept), self.last[0].eq(accept & i.payload.last)]
            for k in range(1, depth):
                m.d.sync += [self.valid[k].eq(self.valid[k - 1]), self.last[k].eq(self.last[k - 1])]
        with m.Elif(o.valid & o.ready):  # taken while the pipeline is frozen
            m.d.sync += self.valid[-1].eq(0)
        final_out = o.valid & o.ready & o.payload.last
        with m.If(accept & i.payload.last):
            m.d.sync += drain.eq(1)
        with m.Elif(final_out):
            m.d.sync += drain.eq(0)
        # cycle counter: restarts with a job's first word, counts advancing cycles
        with m.If(adv):
            m.d.sync += comp.cycles.eq(Mux(comp.busy, comp.cycles + 1, 1))
        with m.If(accept):
            m.d.sync += comp.busy.eq(1)
        with m.Elif(final_out):
            m.d.sync += comp.busy.eq(0)
        # row position: a job must hold whole rows; `last` inside a row is a framing error
        self.group = Signal(range(max(row_words, 2)), name="group")
        with m.If(accept):
            at_end = self.group == row_words - 1
            m.d.sync += self.group.eq(Mux(at_end | i.payload.last, 0, self.group + 1))
            with m.If(i.payload.last & ~at_end):
                m.d.sync += comp.error.eq(1)


def saturate_bits(v: Value, bits: int) -> Value:
    """``clamp(v, -2**(bits-1), 2**(bits-1)-1)`` by a sign-extension check instead of compares."""
    w = len(v)
    top = v[bits - 1:]
    fits = (top == 0) | (top == (1 << (w - bits + 1)) - 1)
    sat = Cat(Const((1 << (bits - 1)) - 1, bits - 1), Const(0, 1))
    neg = Cat(Const(0, bits - 1), Const(1, 1))
    return Mux(fits, v[0:bits], Mux(v[w - 1], neg, sat)).as_signed()


def requant_stages(m: Module, adv: Value, xs: list[Value], mults: list[Value], shifts: list[Value],
                   name: str, *, platform: Any = None) -> list[Signal]:
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
        Measured("ecp5", {"lanes": 4, "channels": 384}, luts=3602, ffs=2891, dsps=16, brams=5,
                 fmax_mhz=119.8, command=NONLINEAR_QOR_COMMAND),
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
