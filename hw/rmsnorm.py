"""Streaming integer RMSNorm: rows of N int8 values, P lanes -> P int8 lanes.

Matches :func:`golden.rmsnorm.rmsnorm_int` bit for bit: the layer norm's arithmetic
(:mod:`hw.layernorm`) without the mean and without beta. The constants (a
:class:`golden.layernorm.LayerNormParams` from :func:`golden.rmsnorm.rmsnorm_params`: N,
eps_int, per-channel G, g_shift) are elaboration parameters; G lives in a ROM read alongside the
row buffer. Per row, three phases::

    LOAD  (W cycles, one per accepted word)  store q; S2 += q*q
    STAT  (L + 52 cycles, L = ceil(log2 P))  L + 2 draining the LOAD pipeline (input register,
                       squares, lane-sum tree, accumulate); 8 setup cycles: N*S2 as two partial
                       products, their sum, D = (N*S2 << 8) + eps_int, bytes of z, z =
                       bit_length(D), k = (40 - z) >> 1, shift amounts, D' = D << 2k or D >> -2k;
                       s = isqrt(D') (20, one root bit per cycle);
                       r = floor(2**40 / s) (22, one quotient bit per cycle)
    NORM  (W + 12 cycles)  read q, G; register; c = N*q; c*r as four partial products; two sums;
                          >> (21 - k); round; y*G as two partial products; their sum;
                          round by out_shift; saturate to int8

The divider skips the first 19 of the 41 steps of ``golden.intmath.reciprocal_floor``: for
``D > 0`` the normalized ``D'`` lies in ``[2**38, 2**40)``, so ``s >= 2**19`` and those
quotient bits are 0 (the partial remainder after them is ``2**18``, loaded as the start value).
``D = 0`` (``eps_int = 0`` and a row of zeros) gives ``s = 0`` and a quotient of all ones here
(``2**22 - 1``, the golden model's ``2**41 - 1``), but such a row has ``c = 0``, so both output
0.

``W = N / P``. Cycle model (:func:`rmsnorm_cycles`): exactly ``2W + L + 64`` counted cycles
per row (66 for P = 4, :func:`rmsnorm_row_overhead`); ``cycles`` is cumulative since reset and
counts as the layer norm's does (every cycle in which the unit advanced while working on a row
except LOAD cycles without an input word; never cycles frozen by output backpressure). Seen at
the ports, a job's edges from its first input transfer to its last output transfer are that
count plus the stall edges (:func:`rmsnorm_edges`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.errors import UserValueError
from golden.layernorm import EPS_MAX, GAMMA_BITS, MAX_N, RECIP_K, SQRT_BITS, Y_FRAC, LayerNormParams
from golden.rmsnorm import rmsnorm_int
from hw.lib import (
    check_lanes_divide,
    check_positive,
    check_stalls,
    round_half_up_const,
    row_unit_bookkeeping,
    saturate_bits,
)
from hw.spec import Measured, UnitParamError, UnitSpec, check_int, scaled_resources

__all__ = ["RMSNORM_QOR_COMMAND", "RmsNorm", "RmsNormSpec", "rmsnorm_cycles", "rmsnorm_edges",
           "rmsnorm_row_overhead"]

_STAT_SETUP = 8  # N*S2 partial products, their sum, D, bytes of z, z, k, shifts, D'
#: divider steps: the reciprocal's quotient bits below 2**22 (the 19 above are 0 for s >= 2**19)
_DIV_STEPS = RECIP_K + 1 - (SQRT_BITS - 1)
_NORM_STAGES = 12
_R_BITS = _DIV_STEPS  # r <= 2**21 for D > 0
_MAX_G_SHIFT = 62 - Y_FRAC  # layernorm_params caps g_shift there (out_shift <= 62)


def _tree_levels(lanes: int) -> int:
    return (lanes - 1).bit_length()


def _stat_cycles(lanes: int) -> int:
    # the LOAD pipeline drains first: input register, squares, lane-sum tree, accumulate
    return (_tree_levels(lanes) + 2) + _STAT_SETUP + SQRT_BITS + _DIV_STEPS


def rmsnorm_row_overhead(lanes: int) -> int:
    """Fixed cycles per row besides the two W-cycle passes.

    STAT: ``ceil(log2 P) + 2`` cycles draining the LOAD pipeline, 8 setup cycles, the square
    root 20 and the reciprocal 22; NORM: a 12-stage pipeline. 66 for P = 4.
    """
    check_positive("lanes", lanes)
    return _stat_cycles(lanes) + _NORM_STAGES


def rmsnorm_cycles(rows: int, length: int, lanes: int) -> int:
    """Exact counted cycles of ``rows`` rows of ``length`` values: ``rows * (2W + overhead)``.

    ``W = N/P`` and the overhead is :func:`rmsnorm_row_overhead` (66 for P = 4).
    """
    check_positive("rows", rows)
    check_positive("length", length, MAX_N)
    check_positive("lanes", lanes)
    check_lanes_divide(lanes, length)
    return rows * (2 * (length // lanes) + rmsnorm_row_overhead(lanes))


def rmsnorm_edges(rows: int, length: int, lanes: int, stalls: int = 0) -> int:
    """Exact edges from a job's first ``i_data`` transfer to its last ``o_data`` transfer, inclusive.

    :func:`rmsnorm_cycles` plus ``stalls``, the edges in that window at which the sink refused
    a valid output or the unit was ready (LOAD) while the source idled (:mod:`hw.lib`,
    end-to-end timing).
    """
    return rmsnorm_cycles(rows, length, lanes) + check_stalls(stalls)


def _check_params(p: LayerNormParams) -> None:
    """The unit's ranges of compiled RMSNorm constants (what ``rmsnorm_params`` gives)."""
    if p.in_shift != 0:
        raise UserValueError(f"an RMSNorm takes int8 input (in_shift 0), not in_shift {p.in_shift}")
    if not 0 <= p.eps_int <= EPS_MAX:
        raise UserValueError(f"eps_int must lie in [0, 2**61], not {p.eps_int}")
    if not 0 <= p.g_shift <= _MAX_G_SHIFT:
        raise UserValueError(f"g_shift must lie in [0, {_MAX_G_SHIFT}], not {p.g_shift}")
    g = p.gamma_int
    if g.shape != (p.n,) or int(g.abs().max()) >= 2 ** (GAMMA_BITS - 1):
        raise UserValueError(f"gamma_int must hold n={p.n} int16 values")


def _leading_one(v, widths):
    """(any bit set, position of the leading one) of ``v`` by a binary search over ``widths``."""
    pos = []
    for w in widths:
        h = v[w:2 * w].any()
        pos.append(h)
        v = Mux(h, v[w:2 * w], v[0:w])
    return v[0], Cat(*reversed(pos))


class RmsNorm(wiring.Component):
    """P-lane streaming integer RMSNorm over rows of N = ``params.n`` int8 values.

    Parameters (keyword-only)
    -------------------------
    lanes : int
        P, values per word (1..64); P must divide N.
    params : LayerNormParams
        :func:`golden.rmsnorm.rmsnorm_params` (N <= 4096, ``in_shift`` 0; beta is not used).

    Interface
    ---------
    i_data : In(stream of {data: P x int8, last: 1})    ``last`` on each row's final word
    o_data : Out(stream of {data: P x int8, last: 1})   ``last`` on each row's final word
    busy : Out(1), cycles : Out(32) (cumulative, module docstring)
    error : Out(1)   sticky: ``last`` was missing at or early before a row's W-th word

    Number formats: q int8; q*q uint15; S2 uint27 (``<= 2**26``); N*S2 uint39; D uint64
    (``< 2**62``); s uint20; r uint22 (``<= 2**21`` for D > 0); c = N*q int21 (``|c| <= 2**19``);
    c*r int46 (``|c*r| <= 2**40``); y int24 (``|y| <= sqrt(N) * 2**14 (1 + 2**-18) + 1 < 2**21``);
    y*G int40 (``< 2**36``); output int8. Throughput one row per ``2W + L + 64`` cycles,
    ``L = ceil(log2 P)`` (:func:`rmsnorm_cycles`); latency from a row's last input word to its
    first output ``L + 64`` cycles. Matches :func:`golden.rmsnorm.rmsnorm_int`.
    """

    def __init__(self, *, lanes: int, params: LayerNormParams) -> None:
        self._lanes = check_positive("lanes", lanes, 64)
        if not isinstance(params, LayerNormParams):
            raise UserValueError("params must be golden.rmsnorm.rmsnorm_params(...)")
        check_lanes_divide(lanes, params.n, "n")
        _check_params(params)
        self._params = params
        io = data.StructLayout({"data": data.ArrayLayout(signed(8), lanes), "last": unsigned(1)})
        super().__init__({
            "i_data": In(stream.Signature(io)),
            "o_data": Out(stream.Signature(io)),
            "busy": Out(1),
            "cycles": Out(32),
            "error": Out(1),
        })

    lanes = property(lambda self: self._lanes, doc="Values per word P.")
    params = property(lambda self: self._params, doc="The compiled constants (LayerNormParams).")

    @property
    def words(self) -> int:
        """Words per row, ``N / P``."""
        return self._params.n // self._lanes

    def elaborate(self, platform) -> Module:
        m = Module()
        P, W, prm = self._lanes, self.words, self._params
        N = prm.n
        i, o = self.i_data, self.o_data
        depth = max(W, 2)

        adv = Signal(name="adv")
        m.d.comb += adv.eq(~(o.valid & ~o.ready))
        phase = Signal(2, name="phase")
        LOAD, STAT, NORM = 0, 1, 2
        k = Signal(range(max(W + _NORM_STAGES, _stat_cycles(P)) + 1), name="k")
        accept = row_unit_bookkeeping(m, adv, phase == LOAD, i, o, self.cycles, self.busy)

        m.submodules.qbuf = qbuf = memory.Memory(shape=data.ArrayLayout(signed(8), P),
                                                 depth=depth, init=[])
        qw, qr = qbuf.write_port(), qbuf.read_port()
        g_init = [[int(prm.gamma_int[j * P + c]) for c in range(P)] for j in range(W)]
        m.submodules.grom = grom = memory.Memory(shape=data.ArrayLayout(signed(GAMMA_BITS), P),
                                                 depth=depth, init=g_init)
        gr = grom.read_port()
        aw = range(depth)

        # ---------------------------------------------------------------- LOAD pipeline
        # 1 input register (written to the row buffer), 2 q*q, lane-sum tree, accumulate
        lv1, lf1, lv2, lf2 = (Signal(name=nm) for nm in ("lv1", "lf1", "lv2", "lf2"))
        la1 = Signal(aw, name="la1")
        q1 = [Signal(signed(8), name=f"q1_{c}") for c in range(P)]
        sq2 = [Signal(unsigned(15), name=f"sq2_{c}") for c in range(P)]
        with m.If(adv):
            m.d.sync += [lv1.eq(accept), lf1.eq(k == 0), la1.eq(k), lv2.eq(lv1), lf2.eq(lf1)]
            for c in range(P):
                m.d.sync += [q1[c].eq(i.payload.data[c]),
                             sq2[c].eq((q1[c] * q1[c]).as_unsigned()[0:15])]
        m.d.comb += [qw.addr.eq(la1), qw.en.eq(adv & lv1)]
        m.d.comb += [qw.data[c].eq(q1[c]) for c in range(P)]
        t, tv, tf, j = list(sq2), lv2, lf2, 0
        while len(t) > 1:
            j += 1
            nt = [Signal(unsigned(27), name=f"w_{j}_{c}") for c in range((len(t) + 1) // 2)]
            nv, nf = Signal(name=f"wv{j}"), Signal(name=f"wf{j}")
            with m.If(adv):
                m.d.sync += [nv.eq(tv), nf.eq(tf)]
                m.d.sync += [nt[c].eq(sum(t[2 * c:2 * c + 2])) for c in range(len(nt))]
            t, tv, tf = nt, nv, nf
        s2 = Signal(unsigned(27), name="s2")
        with m.If(adv & tv):
            m.d.sync += s2.eq(Mux(tf, 0, s2) + t[0])

        # ---------------------------------------------------------------- STAT registers
        k0 = _tree_levels(P) + 2  # S2 final
        j0 = k0 + _STAT_SETUP + SQRT_BITS  # first divider cycle
        pn0 = Signal(unsigned(30), name="pn0")
        pn1 = Signal(unsigned(23), name="pn1")
        ns2 = Signal(unsigned(40), name="ns2")
        dd = Signal(unsigned(64), name="D")
        z = Signal(range(65), name="z")
        b_any = Signal(8, name="byte_any")
        b_pos = [Signal(3, name=f"byte_pos{t}") for t in range(8)]
        b_any_c, b_pos_c = [], []
        for t8 in range(8):
            an, ps = _leading_one(dd[8 * t8:8 * t8 + 8], (4, 2, 1))
            b_any_c.append(an)
            b_pos_c.append(ps)
        top_any, top = _leading_one(b_any, (4, 2, 1))
        pos_sel = Signal(3, name="pos_sel")
        with m.Switch(top):
            for t8 in range(8):
                with m.Case(t8):
                    m.d.comb += pos_sel.eq(b_pos[t8])
        zc = Mux(top_any, Cat(pos_sel, top) + 1, 0)
        kk = Signal(signed(8), name="kk")
        shl, shr = Signal(6, name="shl"), Signal(5, name="shr")  # 2k (k >= 0), -2k (k < 0)
        sh = Signal(6, name="ysh")  # 22 - k - 1, k in [-12, 20]: the rounding shift less one
        rem = Signal(unsigned(42), name="srem")
        root = Signal(unsigned(42), name="root")
        one = Signal(unsigned(42), name="one")
        trial = Signal(unsigned(42), name="trial")
        m.d.comb += trial.eq(root | one)  # root and one never share a bit
        drem = Signal(unsigned(20), name="drem")
        quo = Signal(unsigned(_R_BITS), name="quo")
        drem2 = Signal(unsigned(21), name="drem2")
        m.d.comb += drem2.eq(Cat(Const(0, 1), drem))  # the dividend's low 22 bits are 0

        # ---------------------------------------------------------------- NORM pipeline
        # 1 read q and G, 2 register, 3 c = N*q, 4 four partial products c*r, 5 two sums,
        # 6 c*r, 7 >> (22-k-1), 8 round, 9 y*G partial products, 10 y*G, 11 rhu(., out_shift),
        # 12 saturate into the output register (the register after the read keeps the RAM's
        # clock-to-output delay out of the multiplier's path)
        m.d.comb += [qr.addr.eq(k), qr.en.eq(adv), gr.addr.eq(k), gr.en.eq(adv)]
        nv = [Signal(name=f"nv{t}") for t in range(_NORM_STAGES)]
        nl = [Signal(name=f"nl{t}") for t in range(_NORM_STAGES)]
        with m.If(adv):
            m.d.sync += [nv[1].eq((phase == NORM) & (k < W)), nl[1].eq(k == W - 1)]
            m.d.sync += [nv[t + 1].eq(nv[t]) for t in range(1, _NORM_STAGES - 1)]
            m.d.sync += nl[2].eq(nv[1] & nl[1])
            m.d.sync += [nl[t + 1].eq(nl[t]) for t in range(2, _NORM_STAGES - 1)]
            m.d.sync += [o.valid.eq(nv[-1]), o.payload.last.eq(nl[-1])]
        half = _R_BITS // 2
        r_lo, r_hi = quo[0:half], quo[half:_R_BITS]
        for c in range(P):
            def sig(nm, shp, c=c):
                return Signal(shp, name=f"{nm}_{c}")
            gs = {t: sig(f"g{t}", signed(GAMMA_BITS)) for t in range(2, 9)}
            q2 = sig("q2", signed(8))
            c3 = sig("c3", signed(21))
            pll4, plh4 = sig("pll4", unsigned(22)), sig("plh4", unsigned(22))
            phl4, phh4 = sig("phl4", signed(22)), sig("phh4", signed(22))
            a5, b5 = sig("a5", unsigned(34)), sig("b5", signed(34))
            cr6 = sig("cr6", signed(46))
            t7 = sig("t7", signed(25))
            y8 = sig("y8", signed(24))
            ml9, mh9 = sig("ml9", signed(29)), sig("mh9", signed(28))
            m10 = sig("m10", signed(40))
            ro11 = sig("ro11", signed(40))
            u7 = sig("u7", signed(26))
            m.d.comb += u7.eq(t7 + 1)
            with m.If(adv):
                m.d.sync += [gs[2].eq(gr.data[c])] + [gs[t + 1].eq(gs[t]) for t in range(2, 8)]
                m.d.sync += [
                    q2.eq(qr.data[c]),
                    c3.eq(q2 * N),
                    pll4.eq(c3[0:11] * r_lo), plh4.eq(c3[0:11] * r_hi),
                    phl4.eq(c3[11:21].as_signed() * r_lo), phh4.eq(c3[11:21].as_signed() * r_hi),
                    a5.eq(pll4 + (plh4 << half)), b5.eq(phl4 + (phh4 << half)),
                    cr6.eq(a5 + (b5 << 11)),
                    t7.eq((cr6 >> sh)[0:25].as_signed()),
                    y8.eq(u7[1:25].as_signed()),
                    ml9.eq(y8[0:12] * gs[8]), mh9.eq(y8[12:24].as_signed() * gs[8]),
                    m10.eq(ml9 + (mh9 << 12)),
                    ro11.eq(round_half_up_const(m10, prm.out_shift)),
                    o.payload.data[c].eq(saturate_bits(ro11, 8)),
                ]

        # ---------------------------------------------------------------- control
        with m.If(adv):
            with m.Switch(phase):
                with m.Case(LOAD):
                    with m.If(accept):
                        with m.If(k == W - 1):
                            m.d.sync += [phase.eq(STAT), k.eq(0)]
                            with m.If(~i.payload.last):
                                m.d.sync += self.error.eq(1)
                        with m.Else():
                            m.d.sync += k.eq(k + 1)
                            with m.If(i.payload.last):
                                m.d.sync += self.error.eq(1)
                with m.Case(STAT):
                    m.d.sync += k.eq(k + 1)
                    with m.If(k == k0):  # N*S2 partial products
                        m.d.sync += [pn0.eq(s2[0:17] * N), pn1.eq(s2[17:27] * N)]
                    with m.If(k == k0 + 1):
                        m.d.sync += ns2.eq(pn0 + (pn1 << 17))
                    with m.If(k == k0 + 2):
                        m.d.sync += dd.eq((ns2 << 8) + prm.eps_int)
                    with m.If(k == k0 + 3):
                        m.d.sync += [b_any.eq(Cat(*b_any_c))] + [b_pos[t].eq(b_pos_c[t]) for t in range(8)]
                    with m.If(k == k0 + 4):
                        m.d.sync += z.eq(zc)
                    with m.If(k == k0 + 5):
                        m.d.sync += kk.eq((Const(RECIP_K, signed(8)) - z) >> 1)
                    with m.If(k == k0 + 6):
                        m.d.sync += [shl.eq(Mux(kk >= 0, kk, 0) << 1), shr.eq(Mux(kk < 0, -kk, 0) << 1),
                                     sh.eq(RECIP_K - Y_FRAC - 4 - 1 - kk)]
                    with m.If(k == k0 + 7):
                        m.d.sync += [rem.eq(Mux(kk >= 0, dd << shl, dd >> shr)[0:41]),
                                     root.eq(0), one.eq(1 << (2 * SQRT_BITS - 2))]
                    with m.If((k >= k0 + _STAT_SETUP) & (k < j0)):
                        with m.If(rem >= trial):
                            m.d.sync += [rem.eq(rem - trial), root.eq((root >> 1) | one)]
                        with m.Else():
                            m.d.sync += root.eq(root >> 1)
                        m.d.sync += one.eq(one >> 2)
                    with m.If(k == j0 - 1):  # the remainder after the 19 skipped steps
                        m.d.sync += [drem.eq(1 << (SQRT_BITS - 2)), quo.eq(0)]
                    with m.If(k >= j0):
                        with m.If(drem2 >= root):
                            m.d.sync += [drem.eq(drem2 - root), quo.eq(Cat(1, quo))]
                        with m.Else():
                            m.d.sync += [drem.eq(drem2), quo.eq(Cat(0, quo))]
                    with m.If(k == _stat_cycles(P) - 1):
                        m.d.sync += [phase.eq(NORM), k.eq(0)]
                with m.Case(NORM):
                    with m.If(k == W + _NORM_STAGES - 1):
                        m.d.sync += [phase.eq(LOAD), k.eq(0)]
                    with m.Else():
                        m.d.sync += k.eq(k + 1)
        return m


# ---------------------------------------------------------------------- unit spec

#: the build that measured the unit (placed and routed on the ULX3S-85F's ECP5)
RMSNORM_QOR_COMMAND = "python benchmarks/fpga_qor.py --boards ulx3s-85f --units rmsnorm"


@dataclasses.dataclass(frozen=True)
class RmsNormSpec(UnitSpec):
    """Parameters of an :class:`RmsNorm`: lanes and the integer constants of
    :func:`golden.rmsnorm.rmsnorm_params` (row length ``n``, ``eps_int``, ``g_shift``,
    per-channel ``gamma_int``). They are elaboration constants (the gamma ROM), so every RMSNorm
    of a model is its own instance. :meth:`cycles` is :func:`rmsnorm_cycles`.
    :meth:`from_params` wraps compiled params."""

    lanes: int
    n: int
    eps_int: int
    g_shift: int
    gamma_int: tuple[int, ...]

    kind: ClassVar[str] = "rmsnorm"
    summary: ClassVar[str] = "P-lane integer RMSNorm (gamma/eps built in)"
    ops: ClassVar[tuple[str, ...]] = ("rms_norm",)
    golden: ClassVar[str] = "golden.rmsnorm.rmsnorm_int"
    component: ClassVar[str] = "hw.rmsnorm.RmsNorm"
    measured: ClassVar[tuple[Measured, ...]] = (
        Measured("ecp5", {"lanes": 4, "n": 384}, luts=3524, ffs=2424, dsps=34, brams=3,
                 fmax_mhz=108.32, command=RMSNORM_QOR_COMMAND),
    )

    def __post_init__(self) -> None:
        check_int("lanes", self.lanes, 1, 64)
        check_int("n", self.n, 1, MAX_N)
        if self.n % self.lanes:
            raise UnitParamError(f"lanes={self.lanes} must divide n={self.n}")
        check_int("eps_int", self.eps_int, 0, EPS_MAX)
        check_int("g_shift", self.g_shift, 0, _MAX_G_SHIFT)
        v = self.gamma_int
        if not isinstance(v, tuple) or len(v) != self.n:
            raise UnitParamError(f"gamma_int must be a list of n={self.n} integers")
        for i, x in enumerate(v):
            check_int(f"gamma_int[{i}]", x, -(2 ** (GAMMA_BITS - 1)) + 1, 2 ** (GAMMA_BITS - 1) - 1)

    @classmethod
    def from_params(cls, p: LayerNormParams, lanes: int) -> RmsNormSpec:
        """The spec of compiled :func:`golden.rmsnorm.rmsnorm_params` on ``lanes`` lanes."""
        if p.in_shift != 0:
            raise UnitParamError(f"an RMSNorm takes int8 input (in_shift 0), not {p.in_shift}")
        return cls(lanes=lanes, n=p.n, eps_int=p.eps_int, g_shift=p.g_shift,
                   gamma_int=tuple(int(x) for x in p.gamma_int.tolist()))

    def params(self) -> LayerNormParams:
        """The integer constants as the golden model takes them (beta 0, in_shift 0)."""
        return LayerNormParams(n=self.n, in_shift=0, eps_int=self.eps_int, g_shift=self.g_shift,
                               gamma_int=torch.tensor(self.gamma_int, dtype=torch.int64),
                               beta_int=torch.zeros(self.n, dtype=torch.int64))

    def build(self) -> RmsNorm:
        return RmsNorm(lanes=self.lanes, params=self.params())

    def reference(self, x: Any) -> Any:  # type: ignore[override]
        return rmsnorm_int(x, self.params())

    def cycles(self, *, rows: int, length: int) -> int:  # type: ignore[override]
        if length != self.n:
            raise UserValueError(f"this RMSNorm takes rows of {self.n}, not {length}")
        return rmsnorm_cycles(rows, self.n, self.lanes)

    @property
    def buffer_bits(self) -> int:
        """Row buffer (int8) and gamma ROM (int16) bits."""
        return self.n * (8 + GAMMA_BITS)

    def resources(self, family: str) -> dict[str, Any]:
        return scaled_resources(self.measured, family, {"lanes": self.lanes, "n": self.n},
                                self.buffer_bits)
