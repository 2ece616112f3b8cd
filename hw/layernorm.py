"""Streaming integer layer norm: rows of N int32 (or int8) values, P lanes -> P int8 lanes.

Matches :func:`golden.layernorm.layernorm_int` bit for bit (exact variance, bit-by-bit square
root, restoring-division reciprocal; see ``docs/nonlinear.md``). The constants
(:class:`golden.layernorm.LayerNormParams`: N, in_shift, eps_int, per-channel G and B,
out_shift) are elaboration parameters; G and B live in a ROM read alongside the row buffer.
Per row, three phases::

    LOAD  (W cycles, one per accepted word)  q = sat(rhu(x, in_shift)); store q; S1 += q; S2 += q*q
    STAT  (L + 75 cycles, L = ceil(log2 P))  L + 3 draining the LOAD pipeline (rounding,
                       saturation, squares, lane-sum tree, accumulate); 11 setup cycles:
                       D = ((N*S2 - S1*S1) << 8) + eps_int from partial products, z =
                       bit_length(D) (two cycles), k = (40 - z) >> 1, shift amounts, D' = D << 2k or D >> -2k;
                       s = isqrt(D') (20, one root bit per cycle);
                       r = floor(2**40 / s) (41, one quotient bit per cycle)
    NORM  (W + 15 cycles)  read q, G, B; register; N*q; c = N*q - S1; c*r as six partial products
                          summed in three stages; y = rhu(c*r, 22 - k) (shift, round); y*G as two
                          partial products, summed; + B; rhu(acc, out_shift); saturate to int8

``W = N / P``. Cycle model (:func:`layernorm_cycles`): exactly ``2W + L + 90`` counted cycles
per row (92 for P = 4, :func:`layernorm_row_overhead`); ``cycles`` is cumulative since reset,
counts every cycle in which the unit advanced while working on a row except LOAD cycles without
an input word, and never cycles frozen by output backpressure (``adv = ~(o.valid & ~o.ready)`` holds the whole unit).
Seen at the ports, a job's edges from its first input transfer to its last output transfer are
that count plus the stall edges (:func:`layernorm_edges`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.errors import UserValueError
from golden.layernorm import (
    BIAS_BITS,
    CORE_BITS,
    EPS_MAX,
    GAMMA_BITS,
    MAX_N,
    RECIP_K,
    SQRT_BITS,
    Y_FRAC,
    LayerNormParams,
    layernorm_int,
)
from hw.lib import (
    check_lanes_divide,
    check_positive,
    check_stalls,
    round_half_up_const,
    round_half_up_var,
    row_unit_bookkeeping,
    saturate_bits,
)
from hw.requant import NONLINEAR_QOR_COMMAND
from hw.spec import Measured, UnitParamError, UnitSpec, check_int, scaled_resources

__all__ = ["LayerNorm", "LayerNormSpec", "layernorm_cycles", "layernorm_edges",
           "layernorm_param_layout", "layernorm_row_overhead"]

_STAT_SETUP = 11  # S1^2 and N*S2 partial products and sums, D, bytes of z, z, k, shifts, D'
_NORM_STAGES = 15
LOAD, STAT, NORM = 0, 1, 2  # the row phases (shared with hw.rmsnorm)


def tree_levels(lanes: int) -> int:
    """Register levels of a P-lane pairwise sum tree, ``ceil(log2 P)``."""
    return (lanes - 1).bit_length()


def _stat_cycles(lanes: int) -> int:
    # the LOAD pipeline drains first: rounding, saturation, squares, lane-sum tree, accumulate
    return (tree_levels(lanes) + 3) + _STAT_SETUP + SQRT_BITS + (RECIP_K + 1)


def norm_cycles(rows: int, length: int, lanes: int, overhead: Callable[[int], int]) -> int:
    """``rows * (2W + overhead(P))``, ``W = N/P``: the two-pass row units' cycle model (the
    layer norm's and :mod:`hw.rmsnorm`'s), its arguments checked."""
    check_positive("rows", rows)
    check_positive("length", length, MAX_N)
    check_positive("lanes", lanes)
    check_lanes_divide(lanes, length)
    return rows * (2 * (length // lanes) + overhead(lanes))


def layernorm_row_overhead(lanes: int) -> int:
    """Fixed cycles per row besides the two W-cycle passes.

    STAT: ``ceil(log2 P) + 3`` cycles draining the LOAD pipeline, 11 setup cycles, the square
    root 20 and the reciprocal 41; NORM: a 15-stage pipeline. 92 for P = 4.
    """
    check_positive("lanes", lanes)
    return _stat_cycles(lanes) + _NORM_STAGES


def layernorm_cycles(rows: int, length: int, lanes: int) -> int:
    """Exact counted cycles of ``rows`` rows of ``length`` values: ``rows * (2W + overhead)``.

    ``W = N/P`` and the overhead is :func:`layernorm_row_overhead` (92 for P = 4).
    """
    return norm_cycles(rows, length, lanes, layernorm_row_overhead)


def layernorm_edges(rows: int, length: int, lanes: int, stalls: int = 0) -> int:
    """Exact edges from a job's first ``i_data`` transfer to its last ``o_data`` transfer, inclusive.

    :func:`layernorm_cycles` plus ``stalls``, the edges in that window at which the sink refused
    a valid output or the unit was ready (LOAD) while the source idled (:mod:`hw.requant`,
    end-to-end timing).
    """
    return layernorm_cycles(rows, length, lanes) + check_stalls(stalls)


def layernorm_param_layout() -> data.StructLayout:
    """Run-time layer-norm parameters (:class:`golden.layernorm.LayerNormParams` less gamma and
    beta): row length ``n`` (1..4096), ``in_shift`` (0..32), ``g_shift`` (0..48), ``eps``
    (``eps_int < 2**62``)."""
    return data.StructLayout({"n": unsigned(13), "in_shift": unsigned(6),
                              "g_shift": unsigned(6), "eps": unsigned(62)})


# ---------------------------------------------------------------------- shared with hw.rmsnorm
# The row units' common structure: a LOAD / STAT / NORM phase counter ``k``, lane-sum trees into
# row accumulators, the bit length of D, the square root and the reciprocal sequencers, the NORM
# pipeline's valid/last chain and the phase control. Each builder adds its statements in the
# order the units always had, so their Verilog is unchanged.


def norm_phases(m: Module, comp: wiring.Component, k_states: int):
    """``adv`` (the output is not blocked), ``phase``, the step counter ``k`` (``k_states``
    values) and ``accept`` of a LOAD/STAT/NORM row unit ``comp``."""
    adv = Signal(name="adv")
    m.d.comb += adv.eq(~(comp.o_data.valid & ~comp.o_data.ready))
    phase = Signal(2, name="phase")
    k = Signal(range(k_states), name="k")
    accept = row_unit_bookkeeping(m, adv, phase == LOAD, comp.i_data, comp.o_data,
                                  comp.cycles, comp.busy)
    return adv, phase, k, accept


def lane_sums(m: Module, adv, leaves, valid, first, sums):
    """Pairwise lane-sum trees (one register level each, ``tree_levels(P)`` levels) of the
    per-lane values ``leaves[t]`` into row accumulators, restarted where ``first`` (a row's
    first word) comes out of the tree. ``sums[t]`` is ``(node prefix, shape, accumulator
    name)``; returns the accumulators."""
    trees, tv, tf, j = [list(t) for t in leaves], valid, first, 0
    while len(trees[0]) > 1:
        j += 1
        width = (len(trees[0]) + 1) // 2
        nxt = [[Signal(shp, name=f"{pre}_{j}_{c}") for c in range(width)] for pre, shp, _ in sums]
        nv, nf = Signal(name=f"wv{j}"), Signal(name=f"wf{j}")
        with m.If(adv):
            m.d.sync += [nv.eq(tv), nf.eq(tf)]
            for c in range(width):
                m.d.sync += [n[c].eq(sum(t[2 * c:2 * c + 2])) for t, n in zip(trees, nxt, strict=True)]
        trees, tv, tf = nxt, nv, nf
    accs = [Signal(shp, name=nm) for _, shp, nm in sums]
    with m.If(adv & tv):
        m.d.sync += [a.eq(Mux(tf, 0, a) + t[0]) for a, t in zip(accs, trees, strict=True)]
    return accs


def leading_one(v, widths):
    """(any bit set, position of the leading one) of ``v`` by a binary search over ``widths``."""
    pos = []
    for w in widths:
        h = v[w:2 * w].any()
        pos.append(h)
        v = Mux(h, v[w:2 * w], v[0:w])
    return v[0], Cat(*reversed(pos))


class RootReciprocal:
    """The STAT sequencers after D (``dd``, uint64): ``z = bit_length(D)``, ``k = (40 - z) >> 1``,
    the shifts, ``D' = D << 2k`` or ``D >> -2k``, ``s = isqrt(D')`` (one root bit per cycle) and
    ``r = floor(2**40 / s)`` by restoring division (one quotient bit per cycle, ``quo``).

    ``ysh_bits``: width of ``sh`` (``22 - k - 1``, the output rounding shift less one);
    ``drem_bits``, ``quo_bits``: the divider's remainder and quotient; ``skip``: leading
    quotient steps left out (0: all 41, the dividend's 1 entering at the first step; else the
    remainder starts at ``2**(skip - 1)``, the dividend's low bits all 0).
    """

    def __init__(self, m: Module, *, ysh_bits: int, drem_bits: int, quo_bits: int,
                 skip: int = 0) -> None:
        self.dd = dd = Signal(unsigned(64), name="D")
        self.z = Signal(range(65), name="z")
        # bit length of D by a binary search for its leading one: a 64-way priority chain of
        # `with m.If(dd[b])` here made Yosys 0.70's ABC9 abort in abc9_ops -reintegrate
        # over two cycles: each byte's "any" flag and leading-one position, then the top byte
        self.b_any = Signal(8, name="byte_any")
        self.b_pos = [Signal(3, name=f"byte_pos{t}") for t in range(8)]
        self.b_any_c, self.b_pos_c = [], []
        for t in range(8):
            an, ps = leading_one(dd[8 * t:8 * t + 8], (4, 2, 1))
            self.b_any_c.append(an)
            self.b_pos_c.append(ps)
        top_any, top = leading_one(self.b_any, (4, 2, 1))
        pos_sel = Signal(3, name="pos_sel")
        with m.Switch(top):
            for t in range(8):
                with m.Case(t):
                    m.d.comb += pos_sel.eq(self.b_pos[t])
        self.zc = Mux(top_any, Cat(pos_sel, top) + 1, 0)
        self.kk = Signal(signed(8), name="kk")
        # 2k (k >= 0), -2k (k < 0)
        self.shl, self.shr = Signal(6, name="shl"), Signal(5, name="shr")
        self.sh = Signal(ysh_bits, name="ysh")  # 22 - k - 1, k in [-12, 20]
        self.rem = Signal(unsigned(42), name="srem")
        self.root = Signal(unsigned(42), name="root")
        self.one = Signal(unsigned(42), name="one")
        self.trial = Signal(unsigned(42), name="trial")
        m.d.comb += self.trial.eq(self.root | self.one)  # root and one never share a bit
        self.drem = Signal(unsigned(drem_bits), name="drem")
        self.skip = skip
        self.dfirst = None if skip else Signal(name="dfirst")
        self.quo = Signal(unsigned(quo_bits), name="quo")
        self.drem2 = Signal(unsigned(drem_bits + 1), name="drem2")
        low = Const(0, 1) if skip else self.dfirst  # the dividend's next bit
        m.d.comb += self.drem2.eq(Cat(low, self.drem))

    def steps(self, m: Module, k, k1: int) -> None:
        """The STAT statements from cycle ``k1`` (D final): bytes of z, z, k, shifts, D', then
        the root steps and the divider steps."""
        kk, dd = self.kk, self.dd
        rem, root, one, trial = self.rem, self.root, self.one, self.trial
        j0 = k1 + 5 + SQRT_BITS  # first divider cycle
        with m.If(k == k1):
            m.d.sync += [self.b_any.eq(Cat(*self.b_any_c))] + \
                [self.b_pos[t].eq(self.b_pos_c[t]) for t in range(8)]
        with m.If(k == k1 + 1):
            m.d.sync += self.z.eq(self.zc)
        with m.If(k == k1 + 2):
            m.d.sync += kk.eq((Const(RECIP_K, signed(8)) - self.z) >> 1)
        with m.If(k == k1 + 3):
            m.d.sync += [self.shl.eq(Mux(kk >= 0, kk, 0) << 1),
                         self.shr.eq(Mux(kk < 0, -kk, 0) << 1),
                         self.sh.eq(RECIP_K - Y_FRAC - 4 - 1 - kk)]
        with m.If(k == k1 + 4):
            m.d.sync += [rem.eq(Mux(kk >= 0, dd << self.shl, dd >> self.shr)[0:41]),
                         root.eq(0), one.eq(1 << (2 * SQRT_BITS - 2))]
        with m.If((k >= k1 + 5) & (k < j0)):
            with m.If(rem >= trial):
                m.d.sync += [rem.eq(rem - trial), root.eq((root >> 1) | one)]
            with m.Else():
                m.d.sync += root.eq(root >> 1)
            m.d.sync += one.eq(one >> 2)
        drem, drem2, quo = self.drem, self.drem2, self.quo
        if self.dfirst is not None:
            m.d.sync += self.dfirst.eq(k == j0 - 1)
        with m.If(k == j0 - 1):  # the remainder after the skipped steps
            m.d.sync += [drem.eq(1 << (self.skip - 1) if self.skip else 0), quo.eq(0)]
        with m.If(k >= j0):
            with m.If(drem2 >= root):
                m.d.sync += [drem.eq(drem2 - root), quo.eq(Cat(1, quo))]
            with m.Else():
                m.d.sync += [drem.eq(drem2), quo.eq(Cat(0, quo))]


def norm_valid_chain(m: Module, adv, o, phase, k, words, stages: int) -> None:
    """The NORM pipeline's ``stages`` valid/last registers, ending in ``o.valid`` and
    ``o.payload.last``: a word enters in NORM for ``k < words``."""
    nv = [Signal(name=f"nv{t}") for t in range(stages)]
    nl = [Signal(name=f"nl{t}") for t in range(stages)]
    with m.If(adv):
        m.d.sync += [nv[1].eq((phase == NORM) & (k < words)), nl[1].eq(k == words - 1)]
        m.d.sync += [nv[t + 1].eq(nv[t]) for t in range(1, stages - 1)]
        m.d.sync += nl[2].eq(nv[1] & nl[1])
        m.d.sync += [nl[t + 1].eq(nl[t]) for t in range(2, stages - 1)]
        m.d.sync += [o.valid.eq(nv[-1]), o.payload.last.eq(nl[-1])]


def norm_control(m: Module, comp: wiring.Component, adv, phase, k, accept, words,
                 stat_cycles: int, norm_stages: int, stat: Callable[[], None]) -> None:
    """The phase control: LOAD counts ``words`` accepted words (a missing or early ``last`` sets
    ``error``), STAT runs ``stat()``'s statements for ``stat_cycles`` cycles, NORM
    ``words + norm_stages``."""
    i = comp.i_data
    with m.If(adv):
        with m.Switch(phase):
            with m.Case(LOAD):
                with m.If(accept):
                    with m.If(k == words - 1):
                        m.d.sync += [phase.eq(STAT), k.eq(0)]
                        with m.If(~i.payload.last):
                            m.d.sync += comp.error.eq(1)
                    with m.Else():
                        m.d.sync += k.eq(k + 1)
                        with m.If(i.payload.last):
                            m.d.sync += comp.error.eq(1)
            with m.Case(STAT):
                m.d.sync += k.eq(k + 1)
                stat()
                with m.If(k == stat_cycles - 1):
                    m.d.sync += [phase.eq(NORM), k.eq(0)]
            with m.Case(NORM):
                with m.If(k == words + norm_stages - 1):
                    m.d.sync += [phase.eq(LOAD), k.eq(0)]
                with m.Else():
                    m.d.sync += k.eq(k + 1)


class LayerNorm(wiring.Component):
    """P-lane streaming integer layer norm over rows of N = ``params.n`` values.

    Parameters (keyword-only)
    -------------------------
    lanes : int
        P, values per word (1..64); P must divide N.
    params : LayerNormParams
        :func:`golden.layernorm.layernorm_params` (N <= 4096).
    runtime : bool, max_n : int
        One lane with run-time parameters instead of ``params``: ``prm``
        (:func:`layernorm_param_layout`, held while a row is in flight) gives ``n`` (rows of
        ``n <= max_n`` values), ``in_shift``, ``g_shift`` and ``eps``; gamma (int16) and beta
        (int48) are written into RAMs of ``max_n`` entries through ``gb_waddr`` with ``gb_wg`` /
        ``gb_we_g`` and ``gb_wb`` / ``gb_we_b`` while no row is in flight; ``o_data`` also
        carries ``wide``, the int16 twin ``sat16(rhu(acc, out_shift - 8))`` (the core's
        ``LAYERNORM out16``). Same datapath and cycle model.

    Interface
    ---------
    i_data : In(stream of {data: P x int32, last: 1})   ``last`` on each row's final word
    o_data : Out(stream of {data: P x int8, last: 1})   ``last`` on each row's final word
    busy : Out(1), cycles : Out(32) (cumulative, module docstring)
    error : Out(1)   sticky: ``last`` was missing at or early before a row's W-th word

    Number formats: q int16; S1 int29; S2 uint44; D uint63; s uint20; r uint42 (2**41 - 1
    only for D = 0); c int29; c*r int71; y int21 (|y| < 2**20); acc int49; output int8.
    Throughput one row per ``2W + L + 90`` cycles, ``L = ceil(log2 P)`` (:func:`layernorm_cycles`);
    latency from a row's last input word to its first output ``L + 90`` cycles. Matches
    :func:`golden.layernorm.layernorm_int`.
    """

    def __init__(self, *, lanes: int, params: LayerNormParams | None = None,
                 runtime: bool = False, max_n: int = MAX_N) -> None:
        self._lanes = check_positive("lanes", lanes, 64)
        if not isinstance(runtime, bool):
            raise UserValueError(f"runtime must be a bool, not {runtime!r}")
        self._runtime = runtime
        if runtime:
            if lanes != 1:
                raise UserValueError(f"a run-time layer norm has one lane, not {lanes}")
            self._max_n = check_positive("max_n", max_n, MAX_N)
            self._params = None
        else:
            if not isinstance(params, LayerNormParams):
                raise UserValueError("params must be golden.layernorm.layernorm_params(...)")
            check_lanes_divide(lanes, params.n, "n")
            self._params = params
            self._max_n = params.n
        io_in = data.StructLayout({"data": data.ArrayLayout(signed(32), lanes), "last": unsigned(1)})
        out = {"data": data.ArrayLayout(signed(8), lanes), "last": unsigned(1)}
        ports = {}
        if runtime:
            out["wide"] = data.ArrayLayout(signed(16), lanes)
            ports = {"prm": In(layernorm_param_layout()), "gb_we_g": In(1), "gb_we_b": In(1),
                     "gb_waddr": In(range(self._max_n)), "gb_wg": In(signed(16)),
                     "gb_wb": In(signed(48))}
        super().__init__({
            "i_data": In(stream.Signature(io_in)),
            "o_data": Out(stream.Signature(data.StructLayout(out))),
            "busy": Out(1),
            "cycles": Out(32),
            "error": Out(1),
            **ports,
        })

    lanes = property(lambda self: self._lanes, doc="Values per word P.")
    params = property(lambda self: self._params, doc="The compiled LayerNormParams (None at run time).")
    runtime = property(lambda self: self._runtime, doc="Parameters from the ``prm``/``gb_*`` ports.")
    max_n = property(lambda self: self._max_n, doc="The longest row (buffer depth).")

    @property
    def words(self) -> int:
        """Words per row, ``N / P`` (the buffer depth ``max_n`` at run time)."""
        return self._max_n // self._lanes

    def elaborate(self, platform) -> Module:
        m = Module()
        P, W, prm = self._lanes, self.words, self._params
        rt = self._runtime
        i, o = self.i_data, self.o_data
        depth = max(W, 2)
        if rt:  # row length, shifts and eps from the prm port (P = 1: a word is a value)
            N = Wv = self.prm.n
            in_shift, eps_int = self.prm.in_shift, self.prm.eps
            out_shift = Signal(7, name="out_shift")
            wide_shift = Signal(7, name="wide_shift")
            m.d.comb += [out_shift.eq(self.prm.g_shift + 14), wide_shift.eq(self.prm.g_shift + 6)]
        else:
            N, Wv = prm.n, W
            in_shift, eps_int, out_shift = prm.in_shift, prm.eps_int, prm.out_shift

        def rhu(v, sh):
            return round_half_up_var(v, sh) if rt else round_half_up_const(v, sh)

        adv, phase, k, accept = norm_phases(m, self, max(W + 80, 2))

        m.submodules.qbuf = qbuf = memory.Memory(shape=data.ArrayLayout(signed(16), P),
                                                 depth=depth, init=[])
        qw, qr = qbuf.write_port(), qbuf.read_port()
        if rt:  # gamma and beta RAMs, written through the gb_* ports while idle
            m.submodules.gram = gram = memory.Memory(shape=signed(16), depth=depth, init=[])
            m.submodules.bram = bram = memory.Memory(shape=signed(48), depth=depth, init=[])
            gwp, bwp = gram.write_port(), bram.write_port()
            grp, brp = gram.read_port(), bram.read_port()
            m.d.comb += [gwp.en.eq(self.gb_we_g), gwp.addr.eq(self.gb_waddr),
                         gwp.data.eq(self.gb_wg), bwp.en.eq(self.gb_we_b),
                         bwp.addr.eq(self.gb_waddr), bwp.data.eq(self.gb_wb)]
            gb_rd = [(grp.data, brp.data)]
            gb_ports = (grp, brp)
        else:
            gb_shape = data.ArrayLayout(data.StructLayout({"g": signed(16), "b": signed(48)}), P)
            gb_init = [[{"g": int(prm.gamma_int[j * P + c]), "b": int(prm.beta_int[j * P + c])}
                        for c in range(P)] for j in range(W)]
            m.submodules.gbrom = gbrom = memory.Memory(shape=gb_shape, depth=depth, init=gb_init)
            gbr = gbrom.read_port()
            gb_rd = [(gbr.data[c].g, gbr.data[c].b) for c in range(P)]
            gb_ports = (gbr,)
        aw = range(depth)

        # ---------------------------------------------------------------- LOAD pipeline
        # 1 rhu(x, in_shift), 2 saturate to int16 (stored), 3 q*q, lane-sum tree, accumulate
        lv = [Signal(name=f"lv{j}") for j in range(4)]
        lf = [Signal(name=f"lf{j}") for j in range(4)]
        la = [Signal(aw, name=f"la{j}") for j in range(3)]
        rv1 = [Signal(signed(33), name=f"rv1_{c}") for c in range(P)]
        q2 = [Signal(signed(16), name=f"q2_{c}") for c in range(P)]
        q3 = [Signal(signed(16), name=f"q3_{c}") for c in range(P)]
        sq3 = [Signal(unsigned(32), name=f"sq3_{c}") for c in range(P)]
        with m.If(adv):
            m.d.sync += [lv[1].eq(accept), lf[1].eq(k == 0), la[1].eq(k),
                         lv[2].eq(lv[1]), lf[2].eq(lf[1]), la[2].eq(la[1]),
                         lv[3].eq(lv[2]), lf[3].eq(lf[2])]
            for c in range(P):
                m.d.sync += [
                    rv1[c].eq(rhu(i.payload.data[c], in_shift)),
                    q2[c].eq(saturate_bits(rv1[c], CORE_BITS)),
                    q3[c].eq(q2[c]),
                    sq3[c].eq((q2[c] * q2[c]).as_unsigned()[0:32]),
                ]
        m.d.comb += [qw.addr.eq(la[2]), qw.en.eq(adv & lv[2])]
        m.d.comb += [qw.data[c].eq(q2[c]) for c in range(P)]
        s1, s2 = lane_sums(m, adv, (q3, sq3), lv[3], lf[3],
                           (("w1", signed(29), "s1"), ("w2", unsigned(44), "s2")))

        # ---------------------------------------------------------------- STAT
        k0 = tree_levels(P) + 3  # S1, S2 final
        a_s1 = Signal(unsigned(28), name="abs_s1")
        pn = [Signal(unsigned(30), name=f"pn{t}") for t in range(3)]
        sq_ll, sq_lh, sq_hh = (Signal(unsigned(28), name=f"sq_{t}") for t in ("ll", "lh", "hh"))
        ns2a = Signal(unsigned(48), name="ns2a")
        ns2b = Signal(unsigned(58), name="ns2b")
        sqa = Signal(unsigned(56), name="sqa")
        sqb = Signal(unsigned(28), name="sqb")
        sq = Signal(unsigned(57), name="sq")
        diff = Signal(unsigned(56), name="diff")
        rr = RootReciprocal(m, ysh_bits=7, drem_bits=23, quo_bits=RECIP_K + 2)
        dd, quo, sh = rr.dd, rr.quo, rr.sh

        # ---------------------------------------------------------------- NORM pipeline
        # 1 read, 2 register, 3 N*q, 4 c = N*q - S1, 5 six partial products c*r, 6-8 c*r sums,
        # 9 >> (22-k-1), 10 round, 11 y*G partial products, 12 y*G, 13 + B,
        # 14 rhu(., out_shift), 15 saturate into the output register
        # (signal names below carry the stage number they had before the N*q stage)
        m.d.comb += [qr.addr.eq(k), qr.en.eq(adv)]
        m.d.comb += [p.addr.eq(k) for p in gb_ports] + [p.en.eq(adv) for p in gb_ports]
        norm_valid_chain(m, adv, o, phase, k, Wv, _NORM_STAGES)
        rpieces = [(0, 17), (17, 34), (34, RECIP_K + 2)]
        for c in range(P):
            def sig(nm, shp, c=c):
                return Signal(shp, name=f"{nm}_{c}")
            gs = [sig(f"g{t}", signed(16)) for t in range(12)]
            bs = [sig(f"b{t}", signed(48)) for t in range(13)]
            q2n = sig("nq2", signed(16))
            qn3 = sig("qn3", signed(30))
            cc3 = sig("c3", signed(30))
            pl4 = [sig(f"pl4_{t}", unsigned(32)) for t in range(3)]
            ph4 = [sig(f"ph4_{t}", signed(33)) for t in range(3)]
            s5 = [sig(f"s5_{t}", signed(49)) for t in range(3)]
            a6 = sig("a6", signed(67))
            s6 = sig("s6", signed(49))
            pr7 = sig("cr7", signed(72))
            t8 = sig("t8", signed(25))
            y9 = sig("y9", signed(24))
            yl10 = sig("yl10", signed(29))
            yh10 = sig("yh10", signed(28))
            m11 = sig("m11", signed(41))
            acc12 = sig("acc12", signed(66))
            ro13 = sig("ro13", signed(67))
            u9 = sig("u9", signed(26))
            m.d.comb += u9.eq(t8 + 1)
            with m.If(adv):
                m.d.sync += [gs[2].eq(gb_rd[c][0]), bs[2].eq(gb_rd[c][1])]
                m.d.sync += [gs[t + 1].eq(gs[t]) for t in range(2, 11)]
                m.d.sync += [bs[t + 1].eq(bs[t]) for t in range(2, 12)]
                m.d.sync += [
                    q2n.eq(qr.data[c]),
                    qn3.eq(q2n * N),
                    cc3.eq(qn3 - s1),
                    [pl4[t].eq(cc3[0:15] * quo[lo:hi]) for t, (lo, hi) in enumerate(rpieces)],
                    [ph4[t].eq(cc3[15:30].as_signed() * quo[lo:hi]) for t, (lo, hi) in enumerate(rpieces)],
                    [s5[t].eq(pl4[t] + (ph4[t] << 15)) for t in range(3)],
                    a6.eq(s5[0] + (s5[1] << 17)), s6.eq(s5[2]),
                    pr7.eq(a6 + (s6 << 34)),
                    t8.eq((pr7 >> sh)[0:25].as_signed()),
                    y9.eq(u9[1:25].as_signed()),
                    yl10.eq(y9[0:12] * gs[10]),
                    yh10.eq(y9[12:24].as_signed() * gs[10]),
                    m11.eq(yl10 + (yh10 << 12)),
                    acc12.eq(m11 + bs[12]),
                    ro13.eq(rhu(acc12, out_shift)),
                    o.payload.data[c].eq(saturate_bits(ro13, 8)),
                ]
            if rt:  # the out16 twin: the same accumulator rounded 8 bits later, int16
                rw13 = sig("rw13", signed(67))
                with m.If(adv):
                    m.d.sync += [rw13.eq(rhu(acc12, wide_shift)),
                                 o.payload.wide[c].eq(saturate_bits(rw13, 16))]

        # ---------------------------------------------------------------- control
        def stat():
            with m.If(k == k0):  # |S1|, N*S2 partial products
                m.d.sync += [a_s1.eq(Mux(s1 < 0, -s1, s1)),
                             pn[0].eq(s2[0:17] * N), pn[1].eq(s2[17:34] * N),
                             pn[2].eq(s2[34:44] * N)]
            with m.If(k == k0 + 1):  # S1^2 partial products; N*S2 low sum
                m.d.sync += [sq_ll.eq(a_s1[0:14] * a_s1[0:14]),
                             sq_lh.eq(a_s1[0:14] * a_s1[14:28]),
                             sq_hh.eq(a_s1[14:28] * a_s1[14:28]),
                             ns2a.eq(pn[0] + (pn[1] << 17))]
            with m.If(k == k0 + 2):
                m.d.sync += [sqa.eq(Cat(sq_ll, sq_hh)), sqb.eq(sq_lh),
                             ns2b.eq(ns2a + (pn[2] << 34))]
            with m.If(k == k0 + 3):
                m.d.sync += sq.eq(sqa + (sqb << 15))
            with m.If(k == k0 + 4):
                m.d.sync += diff.eq(ns2b - sq)
            with m.If(k == k0 + 5):
                m.d.sync += dd.eq((diff << 8) + eps_int)
            rr.steps(m, k, k0 + 6)

        norm_control(m, self, adv, phase, k, accept, Wv, _stat_cycles(P), _NORM_STAGES, stat)
        return m


# ---------------------------------------------------------------------- unit spec


def check_norm_shape(lanes: int, n: int) -> None:
    """A norm spec's ``lanes`` (1..64) and row length ``n`` (1..4096, a multiple of lanes)."""
    check_int("lanes", lanes, 1, 64)
    check_int("n", n, 1, MAX_N)
    if n % lanes:
        raise UnitParamError(f"lanes={lanes} must divide n={n}")


@dataclasses.dataclass(frozen=True)
class LayerNormSpec(UnitSpec):
    """Parameters of a :class:`LayerNorm`: lanes and the integer constants of
    :class:`golden.layernorm.LayerNormParams` (row length ``n``, ``in_shift``, ``eps_int``,
    ``g_shift``, per-channel ``gamma_int`` / ``beta_int``). They are elaboration constants (the
    gamma/beta ROM), so every layer norm of a model is its own instance.
    :meth:`cycles` is :func:`layernorm_cycles`. :meth:`from_params` wraps compiled params."""

    lanes: int
    n: int
    in_shift: int
    eps_int: int
    g_shift: int
    gamma_int: tuple[int, ...]
    beta_int: tuple[int, ...]

    kind: ClassVar[str] = "layernorm"
    summary: ClassVar[str] = "P-lane integer layer norm (gamma/beta/eps built in)"
    ops: ClassVar[tuple[str, ...]] = ("layer_norm",)
    golden: ClassVar[str] = "golden.layernorm.layernorm_int"
    component: ClassVar[str] = "hw.layernorm.LayerNorm"
    measured: ClassVar[tuple[Measured, ...]] = (
        Measured("ecp5", {"lanes": 4, "n": 384}, luts=6397, ffs=7445, dsps=46, brams=9,
                 fmax_mhz=103.8, command=NONLINEAR_QOR_COMMAND),
    )

    def __post_init__(self) -> None:
        check_norm_shape(self.lanes, self.n)
        check_int("in_shift", self.in_shift, 0, 32)
        check_int("eps_int", self.eps_int, 0, EPS_MAX)
        check_int("g_shift", self.g_shift, 0, 63)
        for f, bits in (("gamma_int", GAMMA_BITS), ("beta_int", BIAS_BITS)):
            v = getattr(self, f)
            if not isinstance(v, tuple) or len(v) != self.n:
                raise UnitParamError(f"{f} must be a list of n={self.n} integers")
            for i, x in enumerate(v):
                check_int(f"{f}[{i}]", x, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)

    @classmethod
    def from_params(cls, p: LayerNormParams, lanes: int) -> LayerNormSpec:
        """The spec of compiled :class:`LayerNormParams` on ``lanes`` lanes."""
        return cls(lanes=lanes, n=p.n, in_shift=p.in_shift, eps_int=p.eps_int, g_shift=p.g_shift,
                   gamma_int=tuple(int(x) for x in p.gamma_int.tolist()),
                   beta_int=tuple(int(x) for x in p.beta_int.tolist()))

    def params(self) -> LayerNormParams:
        """The integer constants as the golden model takes them."""
        return LayerNormParams(n=self.n, in_shift=self.in_shift, eps_int=self.eps_int,
                               g_shift=self.g_shift,
                               gamma_int=torch.tensor(self.gamma_int, dtype=torch.int64),
                               beta_int=torch.tensor(self.beta_int, dtype=torch.int64))

    def build(self) -> LayerNorm:
        return LayerNorm(lanes=self.lanes, params=self.params())

    def reference(self, x: Any) -> Any:  # type: ignore[override]
        return layernorm_int(x, self.params())

    def cycles(self, *, rows: int, length: int) -> int:  # type: ignore[override]
        if length != self.n:
            raise UserValueError(f"this layer norm takes rows of {self.n}, not {length}")
        return layernorm_cycles(rows, self.n, self.lanes)

    def resources(self, family: str) -> dict[str, Any]:
        return scaled_resources(self.measured, family, {"lanes": self.lanes, "n": self.n},
                                self.n * (16 + GAMMA_BITS + BIAS_BITS))
