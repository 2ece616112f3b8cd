"""In-memory-compute macro: the digital periphery of a ReRAM crossbar tile group.

The analog array (word lines, cells, bit lines, ADCs) is outside this component: the macro drives
the DAC levels of one row tile per cycle on ``dac`` and takes the ADC codes of every bit line of
that tile's ``A`` arrays (``A = S`` slices, ``2S`` differential) on ``i_adc``. In simulation a
behavioural model of the array built on :mod:`golden.imc` answers (``sim.imc_bench``).

Per input row (token) of ``K <= T*rows`` int8 values, sent as ``T`` words of ``rows`` values
(rows beyond ``k`` must hold -128, i.e. offset-binary 0, so that they drive nothing)::

    for t in 0..T-1:                      # one i_x word per row tile
        for i in 0..I-1:                  # bit-serial, most significant digit first
            dac  <- digit i of xu = x + 128 (dac_bits per row), tile t, step i
            codes <- i_adc                # one ADC code per array and column
            v_n  = sum_a sign_a * (codes[a][n] << cell_bits * (a mod S))
            p_n  = v_n if i == 0 else (p_n << dac_bits) + v_n          # Horner shift-add
        acc_n = (0 if t == 0 else acc_n) + (p_n << adc_shift)
    y_n = sat32(acc_n - 128*sum(xu) - 128*wsum_n + k*128**2 + bias_n)   # offset binary
    y_n = sat32(acc_n - 128*wsum_n + bias_n)                            # differential
    out_n = requantize(y_n, mult_n, shift_n)   (or y_n as int32 when requant=False)

which is :func:`golden.imc.crossbar_recombine` of the same codes, bit for bit.

Parameters (keyword-only): ``rows``, ``cols`` (C bit lines, one output lane each), ``tiles``
(T), ``k`` (rows in use, ``k <= T*rows``), ``cell_bits``, ``dac_bits``, ``adc_bits``,
``adc_shift``, ``differential``, ``requant``.

Interface
---------
i_param : In(stream of {bias: int32, wsum, mult: int32, shift: uint6})
    One column per word, columns 0..C-1 in order (the pointer wraps); load while idle.
i_x : In(stream of {data: rows x int8, last: 1})
    ``T`` words per token; ``last`` on the job's final word (a ``last`` inside a token sets
    ``error``).
dac : Out({active: 1, tile, step, level: rows x uint(dac_bits)})
    The DAC levels applied to the array in this cycle (registered).
i_adc : In(stream of A x C x uint(adc_bits))
    The codes of the step on ``dac``; taken when the macro advances while ``dac.active``.
o_y : Out(stream of {data: C x int8 (int32 without requant), last: 1})   one word per token
busy, cycles : Out   ``cycles`` counts the advancing cycles of a job (below)
error : Out(1)   sticky framing error

Timing. The macro is one pipeline that advances only when nothing holds it: an i_x word is
needed (``~dac.active`` or the last step of a tile) and the source idles, or ``dac.active`` and
the ADC has no code, or ``o_y`` is valid and refused. A job of M tokens takes exactly
``M * T * I + latency`` advancing cycles (:func:`imc_cycles`; latency :data:`IMC_LATENCY` = 11
with the requantizer, 5 without), from its first i_x transfer to its last o_y transfer
inclusive; edges seen at the ports are that plus the edges in which the macro was held
(:func:`imc_edges`). Throughput: one ADC step per cycle.

Number formats: codes unsigned ``adc_bits``; shift-add exact (widths from the bounds); ``y``
int32 by saturation; requantizer round half up to int8 (:func:`golden.requant.requantize`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from amaranth import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.errors import UserValueError
from hw.lib import check_positive, check_stalls, saturate_bits
from hw.requant import REQUANT_STAGES, requant_stages
from hw.spec import UnitParamError, UnitSpec, check_int

__all__ = ["IMC_LATENCY", "ImcMacro", "ImcSpec", "imc_cycles", "imc_edges", "imc_widths"]

#: cycles from the last ADC step to the output transfer, plus one: A1 (codes), A2 (Horner),
#: A3 (tile accumulate), A4 (offset, bias, saturate), the requantizer's stages, the transfer
IMC_LATENCY = 5 + REQUANT_STAGES


def imc_cycles(tokens: int, tiles: int, steps: int, requant: bool = True) -> int:
    """Exact advancing cycles of a job of ``tokens`` rows: ``tokens * tiles * steps`` ADC steps
    plus :data:`IMC_LATENCY` (5 without the requantizer)."""
    check_positive("tokens", tokens)
    check_positive("tiles", tiles)
    check_positive("steps", steps)
    return tokens * tiles * steps + (IMC_LATENCY if requant else 5)


def imc_edges(tokens: int, tiles: int, steps: int, requant: bool = True, stalls: int = 0) -> int:
    """Clock edges from a job's first i_x transfer to its last o_y transfer, inclusive:
    :func:`imc_cycles` plus ``stalls`` (edges in which the macro was held, module docstring)."""
    return imc_cycles(tokens, tiles, steps, requant) + check_stalls(stalls)


def imc_widths(*, rows: int, tiles: int, k: int, cell_bits: int, dac_bits: int, adc_bits: int,
               adc_shift: int) -> dict[str, int]:
    """Signed widths of the datapath registers (from the largest magnitudes)."""
    slices, steps = math.ceil(8 / cell_bits), math.ceil(8 / dac_bits)
    vmax = (2**adc_bits - 1) * sum(2 ** (cell_bits * j) for j in range(slices))
    pmax = vmax * sum(2 ** (dac_bits * i) for i in range(steps))
    amax = tiles * pmax * 2**adc_shift
    ymax = amax + 128 * 255 * tiles * rows + 128 * 255 * k + k * 128 * 128 + 2**31
    return {"v": vmax.bit_length() + 1, "p": pmax.bit_length() + 1, "acc": amax.bit_length() + 1,
            "y": ymax.bit_length() + 1, "wsum": (255 * k).bit_length() + 1,
            "sx": (255 * tiles * rows).bit_length() + 1}


class ImcMacro(wiring.Component):
    """Digital periphery of a crossbar macro (see the module docstring for interface, formats
    and timing); matches :func:`golden.imc.crossbar_recombine`."""

    def __init__(self, *, rows: int, cols: int, tiles: int = 1, k: int | None = None,
                 cell_bits: int = 2, dac_bits: int = 1, adc_bits: int = 9, adc_shift: int = 0,
                 differential: bool = False, requant: bool = True) -> None:
        self._rows = check_positive("rows", rows, 1024)
        self._cols = check_positive("cols", cols, 1024)
        self._tiles = check_positive("tiles", tiles, 64)
        self._k = check_positive("k", tiles * rows if k is None else k, tiles * rows)
        self._cell_bits = check_positive("cell_bits", cell_bits, 8)
        self._dac_bits = check_positive("dac_bits", dac_bits, 8)
        self._adc_bits = check_positive("adc_bits", adc_bits, 16)
        if not isinstance(adc_shift, int) or isinstance(adc_shift, bool) or not 0 <= adc_shift <= 16:
            raise UserValueError(f"adc_shift must be an integer in [0, 16], not {adc_shift!r}")
        self._adc_shift = adc_shift
        self._differential = bool(differential)
        self._requant = bool(requant)
        self._w = imc_widths(rows=rows, tiles=tiles, k=self._k, cell_bits=cell_bits,
                             dac_bits=dac_bits, adc_bits=adc_bits, adc_shift=adc_shift)
        out_w = 8 if requant else 32
        super().__init__({
            "i_param": In(stream.Signature(data.StructLayout({
                "bias": signed(32), "wsum": signed(self._w["wsum"]), "mult": signed(32),
                "shift": unsigned(6)}))),
            "i_x": In(stream.Signature(data.StructLayout({
                "data": data.ArrayLayout(signed(8), rows), "last": unsigned(1)}))),
            "dac": Out(data.StructLayout({
                "active": unsigned(1), "tile": unsigned(max(1, (tiles - 1).bit_length())),
                "step": unsigned(max(1, (self.steps - 1).bit_length())),
                "level": data.ArrayLayout(unsigned(dac_bits), rows)})),
            "i_adc": In(stream.Signature(data.ArrayLayout(
                data.ArrayLayout(unsigned(adc_bits), cols), self.arrays))),
            "o_y": Out(stream.Signature(data.StructLayout({
                "data": data.ArrayLayout(signed(out_w), cols), "last": unsigned(1)}))),
            "busy": Out(1),
            "cycles": Out(32),
            "error": Out(1),
        })

    rows = property(lambda self: self._rows, doc="Word lines per row tile.")
    cols = property(lambda self: self._cols, doc="Bit lines (output lanes) C.")
    tiles = property(lambda self: self._tiles, doc="Row tiles T per token.")
    k = property(lambda self: self._k, doc="Rows in use K.")
    cell_bits = property(lambda self: self._cell_bits, doc="Bits per cell.")
    dac_bits = property(lambda self: self._dac_bits, doc="Input bits per step.")
    adc_bits = property(lambda self: self._adc_bits, doc="ADC code bits.")
    adc_shift = property(lambda self: self._adc_shift, doc="log2 of the ADC LSB in levels.")
    differential = property(lambda self: self._differential, doc="Differential weight encoding.")
    requant = property(lambda self: self._requant, doc="int8 output through the requantizer.")

    @property
    def slices(self) -> int:
        """Cells per weight S."""
        return math.ceil(8 / self._cell_bits)

    @property
    def arrays(self) -> int:
        """Arrays A per tile (S, or 2S differential)."""
        return self.slices * (2 if self._differential else 1)

    @property
    def steps(self) -> int:
        """DAC steps I per row tile."""
        return math.ceil(8 / self._dac_bits)

    @property
    def latency(self) -> int:
        """Cycles after the last ADC step up to the output transfer inclusive."""
        return IMC_LATENCY if self._requant else 5

    def elaborate(self, platform: Any) -> Module:
        m = Module()
        R, C, T, NS, A, S = self._rows, self._cols, self._tiles, self.steps, self.arrays, self.slices
        W = self._w
        db, cb = self._dac_bits, self._cell_bits
        # ---------------------------------------------------------- column parameters
        bias = [Signal(signed(32), name=f"bias{c}") for c in range(C)]
        wsum = [Signal(signed(W["wsum"]), name=f"wsum{c}") for c in range(C)]
        mult = [Signal(signed(32), name=f"mult{c}") for c in range(C)]
        shift = [Signal(6, name=f"shift{c}") for c in range(C)]
        wptr = Signal(range(max(C, 2)), name="wptr")
        pp = self.i_param.payload
        m.d.comb += self.i_param.ready.eq(1)
        with m.If(self.i_param.valid):
            m.d.sync += wptr.eq(Mux(wptr == C - 1, 0, wptr + 1))
            with m.Switch(wptr):
                for c in range(C):
                    with m.Case(c):
                        m.d.sync += [bias[c].eq(pp.bias), wsum[c].eq(pp.wsum),
                                     mult[c].eq(pp.mult), shift[c].eq(pp.shift)]
        # ---------------------------------------------------------- handshakes
        ix, ia, oy = self.i_x, self.i_adc, self.o_y
        active, drain = Signal(name="active"), Signal(name="drain")
        step = Signal(range(max(NS, 2)), name="step")
        tile = Signal(range(max(T, 2)), name="tile")
        wtile = Signal(range(max(T, 2)), name="wtile")  # tile of the next i_x word
        xlast = Signal(name="xlast")  # the word on dac is the job's last
        xr = [Signal(signed(8), name=f"xr{r}") for r in range(R)]
        need_x, o_ok, x_ok, adc_ok, adv = (Signal(name=n) for n in
                                           ("need_x", "o_ok", "x_ok", "adc_ok", "adv"))
        take_x, take_adc = Signal(name="take_x"), Signal(name="take_adc")
        m.d.comb += [
            need_x.eq(~active | (step == NS - 1)),
            o_ok.eq(~(oy.valid & ~oy.ready)),
            x_ok.eq(~need_x | drain | ix.valid),
            adc_ok.eq(~active | ia.valid),
            adv.eq(o_ok & x_ok & adc_ok & (active | ix.valid | drain)),
            ix.ready.eq(o_ok & adc_ok & need_x & ~drain),
            ia.ready.eq(o_ok & x_ok & active),
            take_x.eq(ix.valid & ix.ready),
            take_adc.eq(ia.valid & ia.ready),
        ]
        # ---------------------------------------------------------- sequencer
        sxa = Signal(unsigned(W["sx"]), name="sxa")  # sum of xu of the token so far
        word_sx = Signal(unsigned(W["sx"]), name="word_sx")
        m.d.comb += word_sx.eq(sum(ix.payload.data[r] for r in range(R)) + 128 * R)
        with m.If(adv):
            with m.If(take_x):
                m.d.sync += [active.eq(1), step.eq(0), tile.eq(wtile), xlast.eq(ix.payload.last),
                             wtile.eq(Mux(wtile == T - 1, 0, wtile + 1)),
                             sxa.eq(Mux(wtile == 0, 0, sxa) + word_sx)]
                m.d.sync += [xr[r].eq(ix.payload.data[r]) for r in range(R)]
                with m.If(ix.payload.last & (wtile != T - 1)):
                    m.d.sync += self.error.eq(1)
            with m.Elif(active & (step != NS - 1)):
                m.d.sync += step.eq(step + 1)
            with m.Elif(active):
                m.d.sync += active.eq(0)
        # DAC levels: digit `step` (MSB first) of xu = x + 128
        d = self.dac
        m.d.comb += [d.active.eq(active), d.tile.eq(tile), d.step.eq(step)]
        dsh = Signal(range(db * NS + 1), name="dsh")  # db * (NS-1-step): digit position
        with m.Switch(step):
            for i in range(NS):
                with m.Case(i):
                    m.d.comb += dsh.eq(db * (NS - 1 - i))
        for r in range(R):
            xu = Signal(8 + db, name=f"xu{r}")
            m.d.comb += xu.eq((xr[r] + 128)[0:8])
            m.d.comb += d.level[r].eq(xu >> dsh)
        # ---------------------------------------------------------- A1: slice-combined codes
        a1v, a1f, a1l, a1t0, a1tl, a1jl = (Signal(name=f"a1_{n}") for n in
                                           ("v", "first", "laststep", "t0", "tlast", "jl"))
        a1sx = Signal(unsigned(W["sx"]), name="a1_sx")
        v = [Signal(signed(W["v"]), name=f"v{c}") for c in range(C)]
        with m.If(adv):
            m.d.sync += [a1v.eq(take_adc), a1f.eq(step == 0), a1l.eq(step == NS - 1),
                         a1t0.eq(tile == 0), a1tl.eq(tile == T - 1), a1jl.eq(xlast), a1sx.eq(sxa)]
            for c in range(C):
                terms = []
                for a in range(A):
                    t = ia.payload[a][c].as_unsigned() << (cb * (a % S))
                    terms.append(-t if self._differential and a >= S else t)
                m.d.sync += v[c].eq(sum(terms))
        # ---------------------------------------------------------- A2: Horner over the steps
        a2v, a2l, a2t0, a2tl, a2jl = (Signal(name=f"a2_{n}") for n in
                                      ("v", "laststep", "t0", "tlast", "jl"))
        a2sx = Signal(unsigned(W["sx"]), name="a2_sx")
        p = [Signal(signed(W["p"]), name=f"p{c}") for c in range(C)]
        with m.If(adv):
            m.d.sync += [a2v.eq(a1v), a2l.eq(a1l), a2t0.eq(a1t0), a2tl.eq(a1tl), a2jl.eq(a1jl),
                         a2sx.eq(a1sx)]
            with m.If(a1v):
                for c in range(C):
                    m.d.sync += p[c].eq(Mux(a1f, v[c], (p[c] << db) + v[c]))
        # ---------------------------------------------------------- A3: accumulate the tiles
        a3v, a3jl = Signal(name="a3_v"), Signal(name="a3_jl")
        a3sx = Signal(unsigned(W["sx"]), name="a3_sx")
        acc = [Signal(signed(W["acc"]), name=f"acc{c}") for c in range(C)]
        with m.If(adv):
            m.d.sync += [a3v.eq(a2v & a2l & a2tl), a3jl.eq(a2jl), a3sx.eq(a2sx)]
            with m.If(a2v & a2l):
                for c in range(C):
                    m.d.sync += acc[c].eq(Mux(a2t0, 0, acc[c]) + (p[c] << self._adc_shift))
        # ---------------------------------------------------------- A4: offset, bias, sat32
        a4v, a4jl = Signal(name="a4_v"), Signal(name="a4_jl")
        y0 = [Signal(signed(32), name=f"y0_{c}") for c in range(C)]
        with m.If(adv):
            m.d.sync += [a4v.eq(a3v), a4jl.eq(a3jl)]
            for c in range(C):
                full = Signal(signed(W["y"]), name=f"yf{c}")
                corr = acc[c] - (wsum[c] << 7) + bias[c]
                if not self._differential:
                    corr = corr - (a3sx << 7) + Const(self._k * 128 * 128, signed(W["y"]))
                m.d.comb += full.eq(corr)
                m.d.sync += y0[c].eq(saturate_bits(full, 32))
        # ---------------------------------------------------------- requantizer, output
        if self._requant:
            ys = requant_stages(m, adv, y0, mult, shift, "rq", platform=platform)
            vs = [Signal(name=f"ov{j}") for j in range(REQUANT_STAGES)]
            ls = [Signal(name=f"ol{j}") for j in range(REQUANT_STAGES)]
            with m.If(adv):
                m.d.sync += [vs[0].eq(a4v), ls[0].eq(a4jl)]
                m.d.sync += [vs[j].eq(vs[j - 1]) for j in range(1, REQUANT_STAGES)]
                m.d.sync += [ls[j].eq(ls[j - 1]) for j in range(1, REQUANT_STAGES)]
            out_v, out_l = vs[-1], ls[-1]
        else:
            ys, out_v, out_l = y0, a4v, a4jl
        m.d.comb += [oy.valid.eq(out_v), oy.payload.last.eq(out_l)]
        m.d.comb += [oy.payload.data[c].eq(ys[c]) for c in range(C)]
        with m.If(~adv & oy.valid & oy.ready):  # taken while the pipeline is frozen
            m.d.sync += out_v.eq(0)
        final = oy.valid & oy.ready & oy.payload.last
        with m.If(take_x & ix.payload.last):
            m.d.sync += drain.eq(1)
        with m.Elif(final):
            m.d.sync += drain.eq(0)
        with m.If(adv):
            m.d.sync += self.cycles.eq(Mux(self.busy, self.cycles + 1, 1))
        with m.If(take_x):
            m.d.sync += self.busy.eq(1)
        with m.Elif(final):
            m.d.sync += self.busy.eq(0)
        return m


# ---------------------------------------------------------------------- unit spec

#: the rule of the estimated resources (no build of the macro has been measured yet)
IMC_RESOURCE_RULE = ("estimated: per column the requantizer lane of the measured 4-lane "
                     "requantizer (4 MULT18X18D, ~890 LUT, ~600 FF), an A-input adder of ADC "
                     "codes, the Horner and tile accumulators (1 LUT + 1 FF per bit); the "
                     "analog array and ADCs are not FPGA resources")


@dataclasses.dataclass(frozen=True)
class ImcSpec(UnitSpec):
    """Parameters of an :class:`ImcMacro` (one weight block of ``k x cols`` on ``tiles`` row
    tiles); :meth:`cycles` is :func:`imc_cycles`."""

    rows: int = 128
    cols: int = 128
    tiles: int = 1
    k: int = 128
    cell_bits: int = 2
    dac_bits: int = 1
    adc_bits: int = 9
    adc_shift: int = 0
    differential: bool = False
    requant: bool = True

    kind: ClassVar[str] = "imc"
    summary: ClassVar[str] = ("ReRAM crossbar macro periphery: bit-serial DAC sequencer, "
                              "per-column ADC codes, shift-add, offset correction, requant")
    ops: ClassVar[tuple[str, ...]] = ("linear",)
    golden: ClassVar[str] = "golden.imc.crossbar_recombine"
    component: ClassVar[str] = "hw.imc.ImcMacro"

    def __post_init__(self) -> None:
        check_int("rows", self.rows, 1, 1024)
        check_int("cols", self.cols, 1, 1024)
        check_int("tiles", self.tiles, 1, 64)
        check_int("k", self.k, 1, self.tiles * self.rows)
        check_int("cell_bits", self.cell_bits, 1, 8)
        check_int("dac_bits", self.dac_bits, 1, 8)
        check_int("adc_bits", self.adc_bits, 1, 16)
        check_int("adc_shift", self.adc_shift, 0, 16)
        for f in ("differential", "requant"):
            if not isinstance(getattr(self, f), bool):
                raise UnitParamError(f"{f} must be true or false, not {getattr(self, f)!r}")

    @property
    def steps(self) -> int:
        """DAC steps per row tile."""
        return math.ceil(8 / self.dac_bits)

    @property
    def arrays(self) -> int:
        """Crossbars per row tile."""
        return math.ceil(8 / self.cell_bits) * (2 if self.differential else 1)

    def build(self) -> ImcMacro:
        return ImcMacro(rows=self.rows, cols=self.cols, tiles=self.tiles, k=self.k,
                        cell_bits=self.cell_bits, dac_bits=self.dac_bits, adc_bits=self.adc_bits,
                        adc_shift=self.adc_shift, differential=self.differential,
                        requant=self.requant)

    def cycles(self, *, tokens: int) -> int:  # type: ignore[override]
        return imc_cycles(tokens, self.tiles, self.steps, self.requant)

    def reference(self, *operands: Any) -> Any:  # type: ignore[override]
        """``reference(codes, xq, programmed, bias, mult, shift)``: the golden periphery."""
        from golden.imc import crossbar_recombine
        return crossbar_recombine(*operands)

    def resources(self, family: str) -> dict[str, Any]:
        w = imc_widths(rows=self.rows, tiles=self.tiles, k=self.k, cell_bits=self.cell_bits,
                       dac_bits=self.dac_bits, adc_bits=self.adc_bits, adc_shift=self.adc_shift)
        per_col = self.arrays * self.adc_bits + w["v"] + w["p"] + w["acc"] + 32
        luts = self.cols * (per_col + (890 if self.requant else 0)) + self.rows * 16
        ffs = self.cols * (w["v"] + w["p"] + w["acc"] + 32 + 102 + (600 if self.requant else 0)) \
            + self.rows * 8
        return {"dsps": 4 * self.cols if self.requant else 0, "luts": luts, "ffs": ffs,
                "brams": None, "buffer_bits": self.rows * 8, "estimated": True,
                "basis": IMC_RESOURCE_RULE}
