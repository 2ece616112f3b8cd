"""Streaming row softmax: P int32 logits (+ mask bits) per word -> P uint8 probabilities.

Matches :func:`golden.softmax.softmax_int` bit for bit (base-2 exponential with a 256-entry
ROM, restoring-division reciprocal; see ``docs/nonlinear.md``). One row at a time, in four
phases over on-chip row buffers (``x`` with its mask bits, then ``e``)::

    LOAD  (W cycles, one per accepted word)   store x/keep, xmax = max over kept lanes
    EXP   (W + 5 cycles)   read x; d = xmax - x; u = rhu(d*mult, shift-F); ROM; e = rhu(T[f], n);
                           store e, sum += e          (read, multiply, round, ROM, shift, sum)
    DIV   (40 cycles)      r = floor(2**39 / sum), restoring division, one quotient bit per cycle
                           (sum = 0, a fully masked row, gives 2**40 - 1 and p = 0)
    NORM  (W + 3 cycles)   read e; p = min(rhu(e*r, 31), 255)   (read, multiply, round/output)

``W = ceil(L / P)`` words per row; a row ends with the input word carrying ``last`` (lanes
beyond L in the final word must be masked off). Cycle model (:func:`softmax_cycles`): a row
takes exactly ``3W + 48`` counted cycles; ``cycles`` is cumulative since reset and counts every
cycle in which the unit advanced while working on a row, except LOAD cycles without an input
word (so source idling is not counted), and never cycles frozen by output backpressure
(``adv = ~(o.valid & ~o.ready)`` holds the whole unit).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.softmax import MAX_ROW, RECIP_BITS, SoftmaxParams
from hw.requant import check_positive

__all__ = ["SOFTMAX_ROW_OVERHEAD", "Softmax", "softmax_cycles", "softmax_words", "check_row_length"]

#: fixed cycles per row besides the three W-cycle passes: EXP pipeline 5 + divider 40 + NORM 3
SOFTMAX_ROW_OVERHEAD = 5 + (RECIP_BITS + 1) + 3
_EXP_STAGES = 5
_NORM_STAGES = 3


def softmax_words(length: int, lanes: int) -> int:
    """Input words of one row of ``length`` logits on ``lanes`` lanes, ``ceil(L / P)``."""
    check_positive("length", length, MAX_ROW)
    check_positive("lanes", lanes)
    return -(-length // lanes)


def softmax_cycles(rows: int, length: int, lanes: int) -> int:
    """Exact counted cycles of ``rows`` rows of ``length`` logits: ``rows * (3W + 48)``."""
    check_positive("rows", rows)
    return rows * (3 * softmax_words(length, lanes) + SOFTMAX_ROW_OVERHEAD)


def check_row_length(length: int, max_length: int) -> None:
    """Raise ``ValueError`` if a row of ``length`` logits does not fit buffers of ``max_length``."""
    check_positive("length", length)
    if length > max_length:
        raise ValueError(f"row length {length} exceeds this unit's buffer (max_length="
                         f"{max_length}); build it with max_length >= {length}")


def _rhu(v, s: int):
    """Round half up of ``v / 2**s`` for a constant ``s`` (golden.requant.round_shift_right)."""
    return v if s == 0 else ((v >> (s - 1)) + 1) >> 1


class Softmax(wiring.Component):
    """P-lane streaming integer softmax over rows of up to ``max_length`` logits.

    Parameters (keyword-only)
    -------------------------
    lanes : int
        P, logits per word (1..64); P must divide ``max_length``.
    max_length : int
        The longest row the buffers take (1..65536): ``max_length / P`` words of x (P x 33
        bits) and of e (P x 16 bits).
    params : SoftmaxParams
        :func:`golden.softmax.softmax_params` (elaboration constants; ``frac_bits`` must be 8).

    Interface
    ---------
    i_data : In(stream of {data: P x int32, keep: P x 1, last: 1})   ``keep`` = takes part
    o_data : Out(stream of {data: P x uint8, last: 1})   ``last`` on a row's final word
    busy : Out(1)   a row is in flight
    cycles : Out(32)   cumulative counted cycles (module docstring)
    error : Out(1)   sticky: a row ran past ``max_length`` without ``last`` (it is cut there)

    Number formats: int32 logits; ``d`` 33-bit; ``d*mult`` 49-bit; ``e`` uint16 (<= 2**15);
    ``sum`` uint33; ``r`` uint40; ``e*r`` 56-bit; output uint8 (p = 1.0 saturates to 255).
    Throughput: one row per ``3W + 48`` cycles (:func:`softmax_cycles`); latency from a row's
    last input word to its first output word ``W + 48`` cycles. Matches
    :func:`golden.softmax.softmax_int` (with ``mask`` = ``keep``).
    """

    def __init__(self, *, lanes: int, max_length: int, params: SoftmaxParams) -> None:
        self._lanes = check_positive("lanes", lanes, 64)
        self._max_length = check_positive("max_length", max_length, MAX_ROW)
        if max_length % lanes:
            raise ValueError(f"lanes={lanes} must divide the row length (max_length={max_length})")
        if not isinstance(params, SoftmaxParams) or params.frac_bits != 8:
            raise ValueError("params must be golden.softmax.softmax_params(scale) with frac_bits=8")
        self._params = params
        super().__init__({
            "i_data": In(stream.Signature(data.StructLayout({
                "data": data.ArrayLayout(signed(32), lanes),
                "keep": data.ArrayLayout(unsigned(1), lanes),
                "last": unsigned(1)}))),
            "o_data": Out(stream.Signature(data.StructLayout({
                "data": data.ArrayLayout(unsigned(8), lanes), "last": unsigned(1)}))),
            "busy": Out(1),
            "cycles": Out(32),
            "error": Out(1),
        })

    lanes = property(lambda self: self._lanes, doc="Logits per word P.")
    max_length = property(lambda self: self._max_length, doc="Longest row the buffers take.")
    params = property(lambda self: self._params, doc="The compiled SoftmaxParams.")

    @property
    def depth(self) -> int:
        """Words per row buffer, ``max_length / P``."""
        return self._max_length // self._lanes

    def check_length(self, length: int) -> None:
        """Raise ``ValueError`` if a row of ``length`` logits does not fit the buffers."""
        check_row_length(length, self._max_length)

    def elaborate(self, platform) -> Module:
        m = Module()
        P, D, prm = self._lanes, self.depth, self._params
        i, o = self.i_data, self.o_data
        aw = range(max(D, 2))

        adv = Signal(name="adv")
        m.d.comb += adv.eq(~(o.valid & ~o.ready))
        phase = Signal(2, name="phase")  # 0 LOAD, 1 EXP, 2 DIV, 3 NORM
        LOAD, EXP, DIV, NORM = 0, 1, 2, 3
        k = Signal(range(max(D + 64, 2)), name="k")
        nw = Signal(range(D + 1), name="nw")  # words of the current row
        accept = Signal(name="accept")
        m.d.comb += [i.ready.eq(adv & (phase == LOAD)), accept.eq(i.valid & i.ready)]

        # cycle counter and busy
        with m.If(adv & (accept | (phase != LOAD))):
            m.d.sync += self.cycles.eq(self.cycles + 1)
        with m.If(accept):
            m.d.sync += self.busy.eq(1)
        with m.If(o.valid & o.ready & o.payload.last):
            m.d.sync += self.busy.eq(0)

        xw = data.ArrayLayout(data.StructLayout({"x": signed(32), "keep": unsigned(1)}), P)
        m.submodules.xbuf = xbuf = memory.Memory(shape=xw, depth=max(D, 2), init=[])
        m.submodules.ebuf = ebuf = memory.Memory(shape=data.ArrayLayout(unsigned(16), P),
                                                 depth=max(D, 2), init=[])
        m.submodules.rom = rom = memory.Memory(shape=unsigned(16), depth=256, init=list(prm.table))
        xw_p, xr_p = xbuf.write_port(), xbuf.read_port()
        ew_p, er_p = ebuf.write_port(), ebuf.read_port()
        rom_p = [rom.read_port() for _ in range(P)]

        # ---------------------------------------------------------------- LOAD
        int32_min = Const(-(2**31), signed(32))
        xmax = Signal(signed(32), name="xmax")
        lane_max = int32_min
        for c in range(P):
            v = Mux(i.payload.keep[c], i.payload.data[c], int32_min)
            lane_max = Mux(v > lane_max, v, lane_max)
        cur = Mux(k == 0, int32_min, xmax)
        m.d.comb += [xw_p.addr.eq(k), xw_p.en.eq(accept)]
        for c in range(P):
            m.d.comb += [xw_p.data[c].x.eq(i.payload.data[c]), xw_p.data[c].keep.eq(i.payload.keep[c])]

        # ---------------------------------------------------------------- EXP pipeline
        s_sh = prm.shift - prm.frac_bits
        m.d.comb += [xr_p.addr.eq(k), xr_p.en.eq(adv)]
        v1 = Signal(name="ev1")  # read data valid
        prod2 = [Signal(unsigned(49), name=f"prod2_{c}") for c in range(P)]
        keep2 = Signal(P, name="keep2")
        u3 = [Signal(unsigned(49), name=f"u3_{c}") for c in range(P)]
        keep3 = Signal(P, name="keep3")
        n4 = [Signal(unsigned(5), name=f"n4_{c}") for c in range(P)]
        keep4 = Signal(P, name="keep4")
        e5 = [Signal(unsigned(16), name=f"e5_{c}") for c in range(P)]
        v2, v3, v4, v5 = (Signal(name=f"ev{j}") for j in (2, 3, 4, 5))
        a1, a2, a3, a4, a5 = (Signal(aw, name=f"ea{j}") for j in range(1, 6))
        total = Signal(unsigned(33), name="sum")
        for c in range(P):
            d = Signal(signed(34), name=f"d{c}")
            m.d.comb += d.eq(xmax - xr_p.data[c].x)
            m.d.comb += [rom_p[c].addr.eq(u3[c][0:8]), rom_p[c].en.eq(adv)]
            with m.If(adv):
                m.d.sync += [
                    prod2[c].eq(Mux(xr_p.data[c].keep, d.as_unsigned()[0:33] * Const(prm.mult, unsigned(16)), 0)),
                    u3[c].eq(_rhu(prod2[c], s_sh)),
                    n4[c].eq(Mux(u3[c][8:] > 31, 31, u3[c][8:])),
                ]
            t = rom_p[c].data
            nm1 = Signal(5, name=f"nm1_{c}")
            m.d.comb += nm1.eq(Mux(n4[c] == 0, 0, n4[c] - 1))
            ev = Mux(n4[c] == 0, t, ((t >> nm1) + 1) >> 1)
            with m.If(adv):
                m.d.sync += e5[c].eq(Mux(keep4[c], ev, 0))
        with m.If(adv):
            m.d.sync += [
                v1.eq((phase == EXP) & (k < nw)), a1.eq(k),
                v2.eq(v1), a2.eq(a1), keep2.eq(Cat(xr_p.data[c].keep for c in range(P))),
                v3.eq(v2), a3.eq(a2), keep3.eq(keep2),
                v4.eq(v3), a4.eq(a3), keep4.eq(keep3),
                v5.eq(v4), a5.eq(a4),
            ]
        esum = 0
        for c in range(P):
            esum = esum + e5[c]
        m.d.comb += [ew_p.addr.eq(a5), ew_p.en.eq(adv & v5)]
        for c in range(P):
            m.d.comb += ew_p.data[c].eq(e5[c])

        # ---------------------------------------------------------------- DIV
        rem = Signal(unsigned(34), name="rem")
        quo = Signal(unsigned(RECIP_BITS + 1), name="quo")
        rem2 = Signal(unsigned(35), name="rem2")
        m.d.comb += rem2.eq(Cat(k == 0, rem))

        # ---------------------------------------------------------------- NORM pipeline
        m.d.comb += [er_p.addr.eq(k), er_p.en.eq(adv)]
        nv1, nl1 = Signal(name="nv1"), Signal(name="nl1")
        nv2, nl2 = Signal(name="nv2"), Signal(name="nl2")
        np2 = [Signal(unsigned(56), name=f"np2_{c}") for c in range(P)]
        with m.If(adv):
            m.d.sync += [nv1.eq((phase == NORM) & (k < nw)), nl1.eq(k == nw - 1),
                         nv2.eq(nv1), nl2.eq(nv1 & nl1), o.valid.eq(nv2), o.payload.last.eq(nl2)]
            for c in range(P):
                m.d.sync += np2[c].eq(er_p.data[c] * quo)
                p = _rhu(np2[c], RECIP_BITS - 8)
                m.d.sync += o.payload.data[c].eq(Mux(p > 255, 255, p))

        # ---------------------------------------------------------------- control
        with m.If(adv):
            with m.Switch(phase):
                with m.Case(LOAD):
                    with m.If(accept):
                        m.d.sync += xmax.eq(Mux(lane_max > cur, lane_max, cur))
                        full = k == D - 1
                        with m.If(i.payload.last | full):
                            m.d.sync += [phase.eq(EXP), k.eq(0), nw.eq(k + 1), total.eq(0)]
                            with m.If(~i.payload.last):
                                m.d.sync += self.error.eq(1)
                        with m.Else():
                            m.d.sync += k.eq(k + 1)
                with m.Case(EXP):
                    with m.If(v5):
                        m.d.sync += total.eq(total + esum)
                    with m.If(k == nw + _EXP_STAGES - 1):
                        m.d.sync += [phase.eq(DIV), k.eq(0), rem.eq(0), quo.eq(0)]
                    with m.Else():
                        m.d.sync += k.eq(k + 1)
                with m.Case(DIV):
                    with m.If(rem2 >= total):
                        m.d.sync += [rem.eq(rem2 - total), quo.eq(Cat(1, quo))]
                    with m.Else():
                        m.d.sync += [rem.eq(rem2), quo.eq(Cat(0, quo))]
                    with m.If(k == RECIP_BITS):
                        m.d.sync += [phase.eq(NORM), k.eq(0)]
                    with m.Else():
                        m.d.sync += k.eq(k + 1)
                with m.Case(NORM):
                    with m.If(k == nw + _NORM_STAGES - 1):
                        m.d.sync += [phase.eq(LOAD), k.eq(0)]
                    with m.Else():
                        m.d.sync += k.eq(k + 1)
        return m
