"""Streaming row softmax: P int32 logits (+ mask bits) per word -> P uint8 probabilities.

Matches :func:`golden.softmax.softmax_int` bit for bit (base-2 exponential with a 256-entry
ROM, restoring-division reciprocal; see ``docs/nonlinear.md``). One row at a time, in four
phases over on-chip row buffers (``x`` with its mask bits, then ``e``)::

    LOAD  (W cycles, one per accepted word)   store x/keep; xmax = max over kept lanes through a
                           registered tree (mask, ceil(log2 P) pairwise levels, accumulate)
    EXP   (W + O + 10 cycles, O = max(0, ceil(log2 P) - 1) waiting for xmax)   read x; register;
                           d = xmax - x; d*mult as two partial products, summed; u = rhu(., shift-F);
                           n = min(u >> 8, 31) and ROM read; register; e = rhu(T[f], n), store e;
                           lane sum; sum += lane sum
    DIV   (40 cycles)      r = floor(2**39 / sum), restoring division, one quotient bit per cycle
                           (sum = 0, a fully masked row, gives 2**40 - 1 and p = 0)
    NORM  (W + 6 cycles)   read e; register; e*r as three partial products; sum; rhu(., 31);
                           p = min(., 255) by a bit check into the output register

``W = ceil(L / P)`` words per row; a row ends with the input word carrying ``last`` (lanes
beyond L in the final word must be masked off). Cycle model (:func:`softmax_cycles`): a row
takes exactly ``3W + 56 + O`` counted cycles (57 for P = 4, :func:`softmax_row_overhead`); ``cycles`` is cumulative since reset and counts every
cycle in which the unit advanced while working on a row, except LOAD cycles without an input
word (so source idling is not counted), and never cycles frozen by output backpressure
(``adv = ~(o.valid & ~o.ready)`` holds the whole unit). Seen at the ports, a job's edges from
its first input transfer to its last output transfer are that count plus the stall edges
(:func:`softmax_edges`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.errors import UserValueError
from golden.softmax import (
    MAX_ROW,
    RECIP_BITS,
    SoftmaxParams,
    exp2_table,
    softmax_int,
    softmax_params,
)
from hw.lib import (
    check_lanes_divide,
    check_positive,
    check_stalls,
    round_half_up_const,
    round_half_up_var,
    row_unit_bookkeeping,
)
from hw.requant import NONLINEAR_QOR_COMMAND
from hw.spec import Measured, UnitParamError, UnitSpec, check_int, scaled_resources

__all__ = ["Softmax", "SoftmaxSpec", "softmax_cycles", "softmax_edges", "softmax_words",
           "softmax_row_overhead", "check_row_length", "softmax_param_layout"]

_EXP_STAGES = 10
_NORM_STAGES = 6


def _exp_offset(lanes: int) -> int:
    """EXP cycles before the first read: the row-maximum tree's log2(P) levels, less one."""
    return max(0, (lanes - 1).bit_length() - 1)


def softmax_row_overhead(lanes: int) -> int:
    """Fixed cycles per row besides the three W-cycle passes.

    EXP: ``max(0, ceil(log2 P) - 1)`` cycles waiting for the row maximum, then a 10-stage
    pipeline; the divider 40; NORM a 6-stage pipeline. 56 for P <= 2, 57 for P = 4.
    """
    check_positive("lanes", lanes)
    return _exp_offset(lanes) + _EXP_STAGES + (RECIP_BITS + 1) + _NORM_STAGES


def softmax_words(length: int, lanes: int) -> int:
    """Input words of one row of ``length`` logits on ``lanes`` lanes, ``ceil(L / P)``."""
    check_positive("length", length, MAX_ROW)
    check_positive("lanes", lanes)
    return -(-length // lanes)


def softmax_cycles(rows: int, length: int, lanes: int) -> int:
    """Exact counted cycles of ``rows`` rows: ``rows * (3W + softmax_row_overhead(P))``."""
    check_positive("rows", rows)
    return rows * (3 * softmax_words(length, lanes) + softmax_row_overhead(lanes))


def softmax_edges(rows: int, length: int, lanes: int, stalls: int = 0) -> int:
    """Exact edges from a job's first ``i_data`` transfer to its last ``o_data`` transfer, inclusive.

    :func:`softmax_cycles` plus ``stalls``, the edges in that window at which the sink refused a
    valid output or the unit was ready (LOAD) while the source idled (:mod:`hw.requant`,
    end-to-end timing). Rows of one job follow each other with no gap: the last NORM cycle of
    a row transfers its final output word and the next cycle loads the next row.
    """
    return softmax_cycles(rows, length, lanes) + check_stalls(stalls)


def check_row_length(length: int, max_length: int) -> None:
    """Raise ``ValueError`` if a row of ``length`` logits does not fit buffers of ``max_length``."""
    check_positive("length", length)
    if length > max_length:
        raise UserValueError(f"row length {length} exceeds this unit's buffer (max_length="
                         f"{max_length}); build it with max_length >= {length}")


def softmax_param_layout() -> data.StructLayout:
    """Run-time softmax parameters (:class:`golden.softmax.SoftmaxParams` with ``frac_bits``
    8): ``mult`` (16-bit unsigned), ``shift`` (8..62)."""
    return data.StructLayout({"mult": unsigned(16), "shift": unsigned(6)})


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
    runtime : bool
        Take ``mult`` and ``shift`` from the ``prm`` input (:func:`softmax_param_layout`, held
        while a row is in flight) instead of ``params``; the 2^-f ROM is
        :func:`golden.softmax.exp2_table` (8). Same datapath and timing.

    Interface
    ---------
    i_data : In(stream of {data: P x int32, keep: P x 1, last: 1})   ``keep`` = takes part
    o_data : Out(stream of {data: P x uint8, last: 1})   ``last`` on a row's final word
    busy : Out(1)   a row is in flight
    cycles : Out(32)   cumulative counted cycles (module docstring)
    error : Out(1)   sticky: a row ran past ``max_length`` without ``last`` (it is cut there)

    Number formats: int32 logits; ``d`` 33-bit; ``d*mult`` 49-bit; ``e`` uint16 (<= 2**15);
    ``sum`` uint33; ``r`` uint40; ``e*r`` 56-bit; output uint8 (p = 1.0 saturates to 255).
    Throughput: one row per ``3W + 56 + O`` cycles, ``O = max(0, ceil(log2 P) - 1)``
    (:func:`softmax_cycles`); latency from a row's last input word to its first output word
    ``W + 56 + O`` cycles. Matches
    :func:`golden.softmax.softmax_int` (with ``mask`` = ``keep``).
    """

    def __init__(self, *, lanes: int, max_length: int, params: SoftmaxParams | None = None,
                 runtime: bool = False) -> None:
        self._lanes = check_positive("lanes", lanes, 64)
        self._max_length = check_positive("max_length", max_length, MAX_ROW)
        check_lanes_divide(lanes, max_length, "max_length")
        if not isinstance(runtime, bool):
            raise UserValueError(f"runtime must be a bool, not {runtime!r}")
        if not runtime and (not isinstance(params, SoftmaxParams) or params.frac_bits != 8):
            raise UserValueError("params must be golden.softmax.softmax_params(scale) with frac_bits=8")
        self._params = None if runtime else params
        self._runtime = runtime
        ports = {} if not runtime else {"prm": In(softmax_param_layout())}
        super().__init__({
            **ports,
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
    params = property(lambda self: self._params, doc="The compiled SoftmaxParams (None at run time).")
    runtime = property(lambda self: self._runtime, doc="Parameters from the ``prm`` port.")

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
        table = exp2_table(8) if self._runtime else prm.table
        i, o = self.i_data, self.o_data
        aw = range(max(D, 2))

        adv = Signal(name="adv")
        m.d.comb += adv.eq(~(o.valid & ~o.ready))
        phase = Signal(2, name="phase")  # 0 LOAD, 1 EXP, 2 DIV, 3 NORM
        LOAD, EXP, DIV, NORM = 0, 1, 2, 3
        k = Signal(range(max(D + 64, 2)), name="k")
        nw = Signal(range(D + 1), name="nw")  # words of the current row
        # handshake, cycle counter and busy
        accept = row_unit_bookkeeping(m, adv, phase == LOAD, i, o, self.cycles, self.busy)

        xw = data.ArrayLayout(data.StructLayout({"x": signed(32), "keep": unsigned(1)}), P)
        m.submodules.xbuf = xbuf = memory.Memory(shape=xw, depth=max(D, 2), init=[])
        m.submodules.ebuf = ebuf = memory.Memory(shape=data.ArrayLayout(unsigned(16), P),
                                                 depth=max(D, 2), init=[])
        m.submodules.rom = rom = memory.Memory(shape=unsigned(16), depth=256, init=list(table))
        xw_p, xr_p = xbuf.write_port(), xbuf.read_port()
        ew_p, er_p = ebuf.write_port(), ebuf.read_port()
        rom_p = [rom.read_port() for _ in range(P)]

        # ---------------------------------------------------------------- LOAD
        # store the word; the row maximum runs through a registered tree (mask, log2(P) pairwise
        # levels, accumulate) that finishes before the EXP pipeline subtracts it
        int32_min = Const(-(2**31), signed(32))
        xmax = Signal(signed(32), name="xmax")
        lvl = [Signal(signed(32), name=f"mx0_{c}") for c in range(P)]
        mv, mf = Signal(name="mv0"), Signal(name="mf0")
        with m.If(adv):
            m.d.sync += [mv.eq(accept), mf.eq(k == 0)]
            m.d.sync += [lvl[c].eq(Mux(i.payload.keep[c], i.payload.data[c], int32_min)) for c in range(P)]
        j = 0
        while len(lvl) > 1:
            j += 1
            nxt = [Signal(signed(32), name=f"mx{j}_{c}") for c in range((len(lvl) + 1) // 2)]
            nv, nf = Signal(name=f"mv{j}"), Signal(name=f"mf{j}")
            with m.If(adv):
                m.d.sync += [nv.eq(mv), nf.eq(mf)]
                for c in range(len(nxt)):
                    if 2 * c + 1 < len(lvl):
                        x0, x1 = lvl[2 * c], lvl[2 * c + 1]
                        m.d.sync += nxt[c].eq(Mux(x1 > x0, x1, x0))
                    else:
                        m.d.sync += nxt[c].eq(lvl[2 * c])
            lvl, mv, mf = nxt, nv, nf
        with m.If(adv & mv):
            m.d.sync += xmax.eq(Mux(mf | (lvl[0] > xmax), lvl[0], xmax))
        off = _exp_offset(P)
        m.d.comb += [xw_p.addr.eq(k), xw_p.en.eq(accept)]
        for c in range(P):
            m.d.comb += [xw_p.data[c].x.eq(i.payload.data[c]), xw_p.data[c].keep.eq(i.payload.keep[c])]

        # ---------------------------------------------------------------- EXP pipeline
        # 1 read, 2 register, 3 d = xmax - x, 4 partial products, 5 d*mult, 6 u = rhu(., s-F),
        # 7 n = min(u >> 8, 31) and ROM read, 8 register, 9 e = rhu(T[f], n), 10 lane sum
        if self._runtime:
            s_sh = Signal(6, name="s_sh")
            m.d.comb += s_sh.eq(self.prm.shift - 8)
            mult = self.prm.mult
        else:
            s_sh = prm.shift - prm.frac_bits
            mult = Const(prm.mult, unsigned(16))
        m.d.comb += [xr_p.addr.eq(k - off), xr_p.en.eq(adv)]
        ev = [Signal(name=f"ev{j}") for j in range(_EXP_STAGES + 1)]
        ea = [Signal(aw, name=f"ea{j}") for j in range(_EXP_STAGES)]
        kp = [Signal(P, name=f"keep{j}") for j in range(_EXP_STAGES)]
        x2 = [Signal(signed(32), name=f"x2_{c}") for c in range(P)]
        d3 = [Signal(unsigned(33), name=f"d3_{c}") for c in range(P)]
        pa4 = [Signal(unsigned(33), name=f"pa4_{c}") for c in range(P)]
        pb4 = [Signal(unsigned(32), name=f"pb4_{c}") for c in range(P)]
        prod5 = [Signal(unsigned(49), name=f"prod5_{c}") for c in range(P)]
        u6 = [Signal(unsigned(49), name=f"u6_{c}") for c in range(P)]
        n7 = [Signal(unsigned(5), name=f"n7_{c}") for c in range(P)]
        t8 = [Signal(unsigned(16), name=f"t8_{c}") for c in range(P)]
        n8 = [Signal(unsigned(5), name=f"n8_{c}") for c in range(P)]
        e9 = [Signal(unsigned(16), name=f"e9_{c}") for c in range(P)]
        esum = Signal(unsigned(24), name="esum")
        total = Signal(unsigned(33), name="sum")
        with m.If(adv):
            m.d.sync += [ev[1].eq((phase == EXP) & (k >= off) & (k < nw + off)), ea[1].eq(k - off)]
            m.d.sync += [ev[j + 1].eq(ev[j]) for j in range(1, _EXP_STAGES)]
            m.d.sync += [ea[j + 1].eq(ea[j]) for j in range(1, _EXP_STAGES - 1)]
            m.d.sync += kp[2].eq(Cat(xr_p.data[c].keep for c in range(P)))
            m.d.sync += [kp[j + 1].eq(kp[j]) for j in range(2, _EXP_STAGES - 1)]
            esum_v = 0
            for c in range(P):
                d = Signal(signed(34), name=f"d{c}")
                m.d.comb += d.eq(xmax - x2[c])
                hi_sh = 17
                u_hi = u6[c][8:]
                m.d.sync += [
                    x2[c].eq(xr_p.data[c].x),
                    d3[c].eq(d.as_unsigned()[0:33]),
                    pa4[c].eq(d3[c][0:hi_sh] * mult),
                    pb4[c].eq(d3[c][hi_sh:33] * mult),
                    prod5[c].eq(Mux(kp[4][c], (pb4[c] << hi_sh) + pa4[c], 0)),
                    u6[c].eq(round_half_up_var(prod5[c], s_sh) if self._runtime
                             else round_half_up_const(prod5[c], s_sh)),
                    n7[c].eq(Mux(u_hi[5:].any(), 31, u_hi[0:5])),
                    t8[c].eq(rom_p[c].data), n8[c].eq(n7[c]),
                ]
                m.d.comb += [rom_p[c].addr.eq(u6[c][0:8]), rom_p[c].en.eq(adv)]
                # rhu(T, n) = (((T << 1) >> n) + 1) >> 1, which is T itself for n = 0
                evl = ((Cat(Const(0, 1), t8[c]) >> n8[c]) + 1) >> 1
                m.d.sync += e9[c].eq(Mux(kp[8][c], evl, 0))
                esum_v = esum_v + e9[c]
            m.d.sync += esum.eq(esum_v)
        m.d.comb += [ew_p.addr.eq(ea[9]), ew_p.en.eq(adv & ev[9])]
        for c in range(P):
            m.d.comb += ew_p.data[c].eq(e9[c])

        # ---------------------------------------------------------------- DIV
        rem = Signal(unsigned(34), name="rem")
        quo = Signal(unsigned(RECIP_BITS + 1), name="quo")
        rem2 = Signal(unsigned(35), name="rem2")
        m.d.comb += rem2.eq(Cat(k == 0, rem))

        # ---------------------------------------------------------------- NORM pipeline
        # 1 read, 2 register, 3 partial products e * r[16:0], r[33:17], r[39:34], 4 e*r,
        # 5 rhu(e*r, 31), 6 min(., 255) into the output register
        m.d.comb += [er_p.addr.eq(k), er_p.en.eq(adv)]
        nv = [Signal(name=f"nv{j}") for j in range(_NORM_STAGES)]
        nl = [Signal(name=f"nl{j}") for j in range(_NORM_STAGES)]
        e2 = [Signal(unsigned(16), name=f"ne2_{c}") for c in range(P)]
        pp = [[Signal(unsigned(33), name=f"npp{t}_{c}") for t in range(3)] for c in range(P)]
        np4 = [Signal(unsigned(56), name=f"np4_{c}") for c in range(P)]
        r5 = [Signal(unsigned(26), name=f"nr5_{c}") for c in range(P)]
        with m.If(adv):
            m.d.sync += [nv[1].eq((phase == NORM) & (k < nw)), nl[1].eq(k == nw - 1)]
            m.d.sync += [nv[j + 1].eq(nv[j]) for j in range(1, _NORM_STAGES - 1)]
            m.d.sync += nl[2].eq(nv[1] & nl[1])
            m.d.sync += [nl[j + 1].eq(nl[j]) for j in range(2, _NORM_STAGES - 1)]
            m.d.sync += [o.valid.eq(nv[-1]), o.payload.last.eq(nl[-1])]
            for c in range(P):
                m.d.sync += [
                    e2[c].eq(er_p.data[c]),
                    pp[c][0].eq(e2[c] * quo[0:17]),
                    pp[c][1].eq(e2[c] * quo[17:34]),
                    pp[c][2].eq(e2[c] * quo[34:]),
                    np4[c].eq(pp[c][0] + (pp[c][1] << 17) + (pp[c][2] << 34)),
                    r5[c].eq(round_half_up_const(np4[c], RECIP_BITS - 8)),
                    o.payload.data[c].eq(Mux(r5[c][8:].any(), 255, r5[c][0:8])),
                ]

        # ---------------------------------------------------------------- control
        with m.If(adv):
            with m.Switch(phase):
                with m.Case(LOAD):
                    with m.If(accept):
                        full = k == D - 1
                        with m.If(i.payload.last | full):
                            m.d.sync += [phase.eq(EXP), k.eq(0), nw.eq(k + 1), total.eq(0)]
                            with m.If(~i.payload.last):
                                m.d.sync += self.error.eq(1)
                        with m.Else():
                            m.d.sync += k.eq(k + 1)
                with m.Case(EXP):
                    with m.If(ev[_EXP_STAGES]):
                        m.d.sync += total.eq(total + esum)
                    with m.If(k == nw + off + _EXP_STAGES - 1):
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


# ---------------------------------------------------------------------- unit spec


@dataclasses.dataclass(frozen=True)
class SoftmaxSpec(UnitSpec):
    """Parameters of a :class:`Softmax`: lanes, the longest row, and the real logit scale it is
    compiled for (:func:`golden.softmax.softmax_params`; an elaboration constant, so each scale
    is its own instance). :meth:`cycles` is :func:`softmax_cycles`."""

    lanes: int
    max_length: int
    scale: float

    kind: ClassVar[str] = "softmax"
    summary: ClassVar[str] = "P-lane row softmax (three passes over a row buffer)"
    ops: ClassVar[tuple[str, ...]] = ("softmax",)
    golden: ClassVar[str] = "golden.softmax.softmax_int"
    component: ClassVar[str] = "hw.softmax.Softmax"
    measured: ClassVar[tuple[Measured, ...]] = (
        Measured("ecp5", {"lanes": 4, "max_length": 128}, luts=4505, ffs=2563, dsps=20, brams=0,
                 fmax_mhz=103.7, command=NONLINEAR_QOR_COMMAND),
    )

    def __post_init__(self) -> None:
        check_int("lanes", self.lanes, 1, 64)
        check_int("max_length", self.max_length, 1, MAX_ROW)
        if self.max_length % self.lanes:
            raise UnitParamError(f"lanes={self.lanes} must divide max_length={self.max_length}")
        try:
            self.params()
        except ValueError as e:
            raise UnitParamError(str(e)) from None

    def params(self) -> SoftmaxParams:
        """The compiled integer constants."""
        return softmax_params(self.scale)

    def build(self) -> Softmax:
        return Softmax(lanes=self.lanes, max_length=self.max_length, params=self.params())

    def reference(self, x: Any, mask: Any = None) -> Any:  # type: ignore[override]
        return softmax_int(x, self.params(), mask)

    def cycles(self, *, rows: int, length: int) -> int:  # type: ignore[override]
        check_row_length(length, self.max_length)
        return softmax_cycles(rows, length, self.lanes)

    def resources(self, family: str) -> dict[str, Any]:
        return scaled_resources(self.measured, family,
                                {"lanes": self.lanes, "max_length": self.max_length},
                                self.max_length * 49 + 256 * 16)
