"""Streaming integer layer norm: rows of N int32 (or int8) values, P lanes -> P int8 lanes.

Matches :func:`golden.layernorm.layernorm_int` bit for bit (exact variance, bit-by-bit square
root, restoring-division reciprocal; see ``docs/nonlinear.md``). The constants
(:class:`golden.layernorm.LayerNormParams`: N, in_shift, eps_int, per-channel G and B,
out_shift) are elaboration parameters; G and B live in a ROM read alongside the row buffer.
Per row, three phases::

    LOAD  (W cycles, one per accepted word)  q = sat(rhu(x, in_shift)); store q; S1 += q; S2 += q*q
    STAT  (64 cycles)  D = ((N*S2 - S1*S1) << 8) + eps_int (1); z = bit_length(D),
                       k = (40 - z) >> 1 (1); D' = D << 2k or D >> -2k (1);
                       s = isqrt(D') (20, one root bit per cycle);
                       r = floor(2**40 / s) (41, one quotient bit per cycle)
    NORM  (W + 5 cycles)  read q, G, B; c*r with c = N*q - S1; y = rhu(c*r, 22 - k);
                          acc = y*G + B; out = sat(rhu(acc, out_shift), -128, 127)

``W = N / P``. Cycle model (:func:`layernorm_cycles`): exactly ``2W + 69`` counted cycles per
row; ``cycles`` is cumulative since reset, counts every cycle in which the unit advanced while
working on a row except LOAD cycles without an input word, and never cycles frozen by output
backpressure (``adv = ~(o.valid & ~o.ready)`` holds the whole unit).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.layernorm import CORE_BITS, RECIP_K, SQRT_BITS, LayerNormParams
from hw.requant import check_positive

__all__ = ["LAYERNORM_ROW_OVERHEAD", "LayerNorm", "layernorm_cycles"]

_STAT_CYCLES = 3 + SQRT_BITS + (RECIP_K + 1)
_NORM_STAGES = 5
#: fixed cycles per row besides the two W-cycle passes: statistics 64 + NORM pipeline 5
LAYERNORM_ROW_OVERHEAD = _STAT_CYCLES + _NORM_STAGES


def layernorm_cycles(rows: int, length: int, lanes: int) -> int:
    """Exact counted cycles of ``rows`` rows of ``length`` values: ``rows * (2W + 69)``, W = N/P."""
    check_positive("rows", rows)
    check_positive("length", length, 4096)
    check_positive("lanes", lanes)
    if length % lanes:
        raise ValueError(f"lanes={lanes} must divide the row length (length={length})")
    return rows * (2 * (length // lanes) + LAYERNORM_ROW_OVERHEAD)


def _rhu_const(v, s: int):
    return v if s == 0 else ((v >> (s - 1)) + 1) >> 1


class LayerNorm(wiring.Component):
    """P-lane streaming integer layer norm over rows of N = ``params.n`` values.

    Parameters (keyword-only)
    -------------------------
    lanes : int
        P, values per word (1..64); P must divide N.
    params : LayerNormParams
        :func:`golden.layernorm.layernorm_params` (N <= 4096).

    Interface
    ---------
    i_data : In(stream of {data: P x int32, last: 1})   ``last`` on each row's final word
    o_data : Out(stream of {data: P x int8, last: 1})   ``last`` on each row's final word
    busy : Out(1), cycles : Out(32) (cumulative, module docstring)
    error : Out(1)   sticky: ``last`` was missing at or early before a row's W-th word

    Number formats: q int16; S1 int29; S2 uint44; D uint63; s uint20; r uint42 (2**41 - 1
    only for D = 0); c int29; c*r int71; y int21 (|y| < 2**20); acc int49; output int8.
    Throughput one row per ``2W + 69`` cycles (:func:`layernorm_cycles`); latency from a row's
    last input word to its first output ``69`` cycles. Matches
    :func:`golden.layernorm.layernorm_int`.
    """

    def __init__(self, *, lanes: int, params: LayerNormParams) -> None:
        self._lanes = check_positive("lanes", lanes, 64)
        if not isinstance(params, LayerNormParams):
            raise ValueError("params must be golden.layernorm.layernorm_params(...)")
        if params.n % lanes:
            raise ValueError(f"lanes={lanes} must divide the row length (n={params.n})")
        self._params = params
        io_in = data.StructLayout({"data": data.ArrayLayout(signed(32), lanes), "last": unsigned(1)})
        io_out = data.StructLayout({"data": data.ArrayLayout(signed(8), lanes), "last": unsigned(1)})
        super().__init__({
            "i_data": In(stream.Signature(io_in)),
            "o_data": Out(stream.Signature(io_out)),
            "busy": Out(1),
            "cycles": Out(32),
            "error": Out(1),
        })

    lanes = property(lambda self: self._lanes, doc="Values per word P.")
    params = property(lambda self: self._params, doc="The compiled LayerNormParams.")

    @property
    def words(self) -> int:
        """Words per row, ``N / P``."""
        return self._params.n // self._lanes

    def elaborate(self, platform) -> Module:
        m = Module()
        P, W, prm = self._lanes, self.words, self._params
        N = prm.n
        i, o = self.i_data, self.o_data

        adv = Signal(name="adv")
        m.d.comb += adv.eq(~(o.valid & ~o.ready))
        phase = Signal(2, name="phase")
        LOAD, STAT, NORM = 0, 1, 2
        k = Signal(range(max(W + 80, 2)), name="k")
        accept = Signal(name="accept")
        m.d.comb += [i.ready.eq(adv & (phase == LOAD)), accept.eq(i.valid & i.ready)]
        with m.If(adv & (accept | (phase != LOAD))):
            m.d.sync += self.cycles.eq(self.cycles + 1)
        with m.If(accept):
            m.d.sync += self.busy.eq(1)
        with m.If(o.valid & o.ready & o.payload.last):
            m.d.sync += self.busy.eq(0)

        qmax, qmin = 2 ** (CORE_BITS - 1) - 1, -(2 ** (CORE_BITS - 1))
        m.submodules.qbuf = qbuf = memory.Memory(shape=data.ArrayLayout(signed(16), P),
                                                 depth=max(W, 2), init=[])
        gb_shape = data.ArrayLayout(data.StructLayout({"g": signed(16), "b": signed(48)}), P)
        gb_init = [[{"g": int(prm.gamma_int[j * P + c]), "b": int(prm.beta_int[j * P + c])}
                    for c in range(P)] for j in range(W)]
        m.submodules.gbrom = gbrom = memory.Memory(shape=gb_shape, depth=max(W, 2), init=gb_init)
        qw, qr, gbr = qbuf.write_port(), qbuf.read_port(), gbrom.read_port()

        # ---------------------------------------------------------------- LOAD
        qs = []
        for c in range(P):
            rv = Signal(signed(33), name=f"rv{c}")
            q = Signal(signed(16), name=f"q{c}")
            m.d.comb += [rv.eq(_rhu_const(i.payload.data[c], prm.in_shift)),
                         q.eq(Mux(rv > qmax, qmax, Mux(rv < qmin, qmin, rv)))]
            qs.append(q)
        s1 = Signal(signed(29), name="s1")
        s2 = Signal(unsigned(44), name="s2")
        w1 = 0
        w2 = 0
        for q in qs:
            w1 = w1 + q
            w2 = w2 + q * q
        m.d.comb += [qw.addr.eq(k), qw.en.eq(accept)]
        m.d.comb += [qw.data[c].eq(qs[c]) for c in range(P)]

        # ---------------------------------------------------------------- STAT
        dd = Signal(unsigned(64), name="D")
        z = Signal(range(65), name="z")
        for b in range(64):
            with m.If(dd[b]):
                m.d.comb += z.eq(b + 1)
        kk = Signal(signed(8), name="kk")
        dn = Signal(unsigned(41), name="Dn")
        rem = Signal(unsigned(42), name="srem")
        root = Signal(unsigned(42), name="root")
        one = Signal(unsigned(42), name="one")
        trial = Signal(unsigned(43), name="trial")
        m.d.comb += trial.eq(root + one)
        drem = Signal(unsigned(23), name="drem")
        quo = Signal(unsigned(RECIP_K + 2), name="quo")
        drem2 = Signal(unsigned(24), name="drem2")
        j0 = 3 + SQRT_BITS  # first divider cycle
        m.d.comb += drem2.eq(Cat(k == j0, drem))
        shl, shr = Signal(6, name="shl"), Signal(5, name="shr")  # 2k (k >= 0), -2k (k < 0)
        m.d.comb += [shl.eq(Mux(kk >= 0, kk, 0) << 1), shr.eq(Mux(kk < 0, -kk, 0) << 1)]
        n_s2 = Signal(signed(60), name="n_s2")
        m.d.comb += n_s2.eq(s2 * N)

        # ---------------------------------------------------------------- NORM pipeline
        m.d.comb += [qr.addr.eq(k), qr.en.eq(adv), gbr.addr.eq(k), gbr.en.eq(adv)]
        v1, l1 = Signal(name="nv1"), Signal(name="nl1")
        v2, l2, v3, l3, v4, l4 = (Signal(name=f"n{t}") for t in ("v2", "l2", "v3", "l3", "v4", "l4"))
        sh = Signal(7, name="ysh")  # 22 - k - 1, k in [-12, 20]: the rounding shift less one
        m.d.comb += sh.eq(RECIP_K - 14 - 4 - 1 - kk)
        with m.If(adv):
            m.d.sync += [v1.eq((phase == NORM) & (k < W)), l1.eq(k == W - 1),
                         v2.eq(v1), l2.eq(v1 & l1), v3.eq(v2), l3.eq(l2), v4.eq(v3), l4.eq(l3),
                         o.valid.eq(v4), o.payload.last.eq(l4)]
        for c in range(P):
            cc = Signal(signed(30), name=f"c{c}")
            m.d.comb += cc.eq(qr.data[c] * N - s1)
            pr = Signal(signed(72), name=f"cr{c}")
            g2, b2 = Signal(signed(16), name=f"g2_{c}"), Signal(signed(48), name=f"b2_{c}")
            y3 = Signal(signed(24), name=f"y3_{c}")
            g3, b3 = Signal(signed(16), name=f"g3_{c}"), Signal(signed(48), name=f"b3_{c}")
            acc4 = Signal(signed(66), name=f"acc4_{c}")
            rnd = Signal(signed(73), name=f"yr{c}")
            m.d.comb += rnd.eq((pr >> sh) + 1)
            out = Signal(signed(67), name=f"ro{c}")
            m.d.comb += out.eq(_rhu_const(acc4, prm.out_shift))
            with m.If(adv):
                m.d.sync += [
                    pr.eq(cc * Cat(quo, Const(0, 1)).as_signed()),
                    g2.eq(gbr.data[c].g), b2.eq(gbr.data[c].b),
                    y3.eq(rnd >> 1), g3.eq(g2), b3.eq(b2),
                    acc4.eq(y3 * g3 + b3),
                    o.payload.data[c].eq(Mux(out > 127, 127, Mux(out < -128, -128, out))),
                ]

        # ---------------------------------------------------------------- control
        with m.If(adv):
            with m.Switch(phase):
                with m.Case(LOAD):
                    with m.If(accept):
                        first = k == 0
                        m.d.sync += [s1.eq(Mux(first, 0, s1) + w1), s2.eq(Mux(first, 0, s2) + w2)]
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
                    with m.If(k == 0):
                        m.d.sync += dd.eq(((n_s2 - s1 * s1) << 8) + prm.eps_int)
                    with m.If(k == 1):
                        m.d.sync += kk.eq((Const(RECIP_K, signed(8)) - z) >> 1)
                    with m.If(k == 2):
                        m.d.sync += [dn.eq(Mux(kk >= 0, dd << shl, dd >> shr)),
                                     root.eq(0), one.eq(1 << (2 * SQRT_BITS - 2))]
                    with m.If((k >= 3) & (k < j0)):
                        src = Mux(k == 3, dn, rem)
                        with m.If(src >= trial):
                            m.d.sync += [rem.eq(src - trial), root.eq((root >> 1) + one)]
                        with m.Else():
                            m.d.sync += [rem.eq(src), root.eq(root >> 1)]
                        m.d.sync += one.eq(one >> 2)
                    with m.If(k == j0 - 1):
                        m.d.sync += [drem.eq(0), quo.eq(0)]
                    with m.If(k >= j0):
                        with m.If(drem2 >= root):
                            m.d.sync += [drem.eq(drem2 - root), quo.eq(Cat(1, quo))]
                        with m.Else():
                            m.d.sync += [drem.eq(drem2), quo.eq(Cat(0, quo))]
                    with m.If(k == _STAT_CYCLES - 1):
                        m.d.sync += [phase.eq(NORM), k.eq(0)]
                with m.Case(NORM):
                    with m.If(k == W + _NORM_STAGES - 1):
                        m.d.sync += [phase.eq(LOAD), k.eq(0)]
                    with m.Else():
                        m.d.sync += k.eq(k + 1)
        return m
