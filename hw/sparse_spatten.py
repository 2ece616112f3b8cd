"""SpAtten's cascade pruning unit: importance accumulators and an order-preserving top-k engine.

One *job* per attention layer of one sequence. The unit sits beside the core's softmax unit:
it takes the layer's uint8 probability codes, adds them into the token and head importance
accumulators, then selects the tokens and heads that survive into the next layer and emits
them as keep bit vectors. It matches :func:`golden.sparse.spatten.spatten_step_int` (the
per-layer step of ``SpattenFilter.mask_int``) bit for bit, state included.

Input (``i_data``, P lanes): the probability rows of the layer, each row ``W = ceil(n / P)``
words (``n = prm.n_tokens`` key positions; word ``w`` lane ``c`` is key ``w P + c``, lanes
past ``n`` ignored), rows in any order and number; every word carries its row's ``head``
(sampled at the row's first word) and ``last`` marks the job's final word. Rows of pruned
heads and lanes of pruned or padding tokens add nothing (the softmax unit gives them 0 anyway).

Phases (``cycles`` counts the cycles marked counted)::

    LOAD    one cycle per accepted word (idle source cycles are not counted). Stage 1, one
            cycle later: token memory read-modify-write ``s_t[j] += p`` (saturating; alive
            tokens of alive heads), row maximum over those lanes, at a row's end
            ``s_h[head] += row max``; the job's first row counts the alive tokens. A job
            with ``prm.first`` starts a sequence: its first row treats the stored importances
            as 0 and the alive tokens as ``prm.key_mask``; the head registers are cleared and
            heads ``< n_heads`` made alive.
    DRAIN   1 cycle (stage 1 of the last word)
    then for the tokens (over W words of the token memory), then the heads (over
    HW = ceil(n_heads / P) words of the head registers):
    SETUP   1 cycle: need = min(k, alive), m = alive, empty prefix, bit = width - 1
    PASS    (words + 1) cycles per pass, while m > need and bits are left: count c1, the
            alive elements matching the prefix whose current bit is 1 (P per cycle); if
            c1 >= need the prefix takes a 1 (m = c1), else a 0 (need -= c1, m -= c1)
    EMIT    (words + 2) cycles: in input order keep the alive elements above the prefix and
            the first ``need`` equal to it (a running count of the equal ones); write the
            keep bits back as the alive bits; one ``o_data`` word per input word; the last
            cycle holds the final word until it is taken

This is the bit-serial radix select of :func:`golden.sparse.spatten.spatten_radix_select`;
its pass counts (0 when k covers every survivor, at most the accumulator width) are the
data-dependent part of the cycle model (:func:`spatten_cycles`)::

    cycles = words + W + HW + 7 + token_passes (W + 1) + head_passes (HW + 1)

Seen at the ports, a job's edges from its first ``i_data`` transfer to its last ``o_data``
transfer (inclusive) are ``cycles`` plus the stall edges (``o_data`` valid & ~ready, which
freezes the unit, or ``i_data`` ready & ~valid in LOAD): :func:`spatten_edges`.

Output (``o_data``): W words of token keep bits (``heads`` = 0), then HW words of head keep
bits (``heads`` = 1, ``last`` on the final one); lane ``c`` of word ``w`` is token (head)
``w P + c``, 0 past ``n`` (``n_heads``).

``prm`` (:func:`spatten_param_layout`) is sampled throughout the job: hold it from the job's
first input word to its last output word; ``n_tokens``/``n_heads`` must stay the same from a
``first`` job to the next. ``error`` (sticky until reset): ``n_tokens`` or ``n_heads`` 0 or
above the maximum (then the maximum is used), ``last`` inside a row (the row is cut), a row
head ``>= n_heads`` (the row is ignored), or an accumulator overflow (it saturates).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.errors import UserValueError
from golden.sparse.spatten import PROB_MAX, spatten_step_int
from hw.lib import check_stalls
from hw.spec import UnitParamError, UnitSpec, check_int

__all__ = ["SpattenPruner", "SpattenSpec", "spatten_cycles", "spatten_edges", "spatten_param_layout",
           "SPATTEN_RESOURCE_RULE"]

MAX_LANES = 16
MAX_TOKENS = 4096
MAX_HEADS = 64
MAX_BITS = 40
PROB_BITS = 8
assert PROB_MAX == (1 << PROB_BITS) - 1


def _words(n: int, lanes: int) -> int:
    return -(-n // lanes)


def spatten_cycles(*, words: int, n_tokens: int, n_heads: int, lanes: int, token_passes: int,
                   head_passes: int) -> int:
    """Exact counted cycles of one job: ``words`` input words, ``W = ceil(n_tokens / P)``,
    ``HW = ceil(n_heads / P)``, the radix passes of the token and head selections
    (:func:`golden.sparse.spatten.spatten_radix_select`):
    ``words + W + HW + 7 + token_passes (W + 1) + head_passes (HW + 1)``."""
    for name, v in (("words", words), ("n_tokens", n_tokens), ("n_heads", n_heads), ("lanes", lanes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserValueError(f"{name} must be a positive integer, not {v!r}")
    for name, v in (("token_passes", token_passes), ("head_passes", head_passes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise UserValueError(f"{name} must be a non-negative integer, not {v!r}")
    w, hw = _words(n_tokens, lanes), _words(n_heads, lanes)
    return words + w + hw + 7 + token_passes * (w + 1) + head_passes * (hw + 1)


def spatten_edges(stalls: int = 0, **shape: int) -> int:
    """Edges from a job's first ``i_data`` transfer to its last ``o_data`` transfer, inclusive:
    :func:`spatten_cycles` plus ``stalls`` (the edges at which the sink refused a valid word or
    the unit waited in LOAD for the source)."""
    return spatten_cycles(**shape) + check_stalls(stalls)


def spatten_param_layout(max_tokens: int, max_heads: int) -> data.StructLayout:
    """The ``prm`` port: ``first`` (a new sequence), ``n_tokens`` (key positions L),
    ``n_heads``, ``k_tokens``/``k_heads`` (top-k sizes for the next layer, clipped to the
    survivors; the host computes ``max(1, (n * keep_q16) >> 16)``), ``key_mask`` (bit ``j``:
    token ``j`` is real; read by ``first`` jobs)."""
    tw, hw = max_tokens.bit_length(), max_heads.bit_length()
    return data.StructLayout({"first": unsigned(1), "n_tokens": unsigned(tw), "n_heads": unsigned(hw),
                              "k_tokens": unsigned(tw), "k_heads": unsigned(hw),
                              "key_mask": unsigned(max_tokens)})


def _popcount(bits: list) -> Any:
    total = Const(0, 1)
    for b in bits:
        total = total + b
    return total


class SpattenPruner(wiring.Component):
    """SpAtten token/head importance accumulators and the order-preserving top-k engine.

    Parameters (keyword-only): ``lanes`` P (power of two, 1..16), ``max_tokens`` (multiple of
    P, up to 4096: the token memory holds ``max_tokens`` x (token_bits + 1) bits),
    ``max_heads`` (1..64, head registers), ``token_bits`` and ``head_bits`` (accumulator
    widths, 8..40).

    Interface
    ---------
    prm : In(:func:`spatten_param_layout`)   held for the whole job
    i_data : In(stream of {data: P x uint8, head, last})
    o_data : Out(stream of {keep: P bits, heads: 1, last: 1})
    busy : Out(1)   a job is in flight
    cycles : Out(32)   counted cycles of the current (or last) job (module docstring)
    error : Out(1)   sticky (module docstring)
    """

    def __init__(self, *, lanes: int, max_tokens: int, max_heads: int, token_bits: int,
                 head_bits: int) -> None:
        spec = SpattenSpec(lanes, max_tokens, max_heads, token_bits, head_bits)
        self._spec = spec
        hidx = max(1, (max_heads - 1).bit_length())
        super().__init__({
            "prm": In(spatten_param_layout(max_tokens, max_heads)),
            "i_data": In(stream.Signature(data.StructLayout({
                "data": data.ArrayLayout(unsigned(PROB_BITS), lanes),
                "head": unsigned(hidx), "last": unsigned(1)}))),
            "o_data": Out(stream.Signature(data.StructLayout({
                "keep": unsigned(lanes), "heads": unsigned(1), "last": unsigned(1)}))),
            "busy": Out(1),
            "cycles": Out(32),
            "error": Out(1),
        })

    spec = property(lambda self: self._spec, doc="The unit's :class:`SpattenSpec`.")

    def elaborate(self, platform) -> Module:
        m = Module()
        sp = self._spec
        P, N, HM, TB, HB = sp.lanes, sp.max_tokens, sp.max_heads, sp.token_bits, sp.head_bits
        V = max(TB, HB)
        LP = P.bit_length() - 1
        TW, HWM = N // P, _words(HM, P)
        cw = max(N, HM).bit_length() + 1
        i, o, prm = self.i_data, self.o_data, self.prm

        LOAD, DRAIN, SETUP, PASS, EMIT = range(5)
        phase = Signal(range(5), name="phase")
        sel = Signal(name="sel")              # 0: tokens, 1: heads
        jobstart = Signal(init=1, name="jobstart")
        row0 = Signal(init=1, name="row0")   # the job's first row is being loaded
        adv = Signal(name="adv")
        accept = Signal(name="accept")
        m.d.comb += [adv.eq(~(o.valid & ~o.ready)), i.ready.eq(adv & (phase == LOAD)),
                     accept.eq(i.valid & i.ready)]

        # ------------------------------------------------------------ parameters
        n_bad = (prm.n_tokens == 0) | (prm.n_tokens > N)
        h_bad = (prm.n_heads == 0) | (prm.n_heads > HM)
        n_eff = Signal(range(N + 1), name="n_eff")
        nh_eff = Signal(range(HM + 1), name="nh_eff")
        m.d.comb += [n_eff.eq(Mux(n_bad, N, prm.n_tokens)), nh_eff.eq(Mux(h_bad, HM, prm.n_heads))]
        w_tok = Signal(range(TW + 1), name="w_tok")
        w_head = Signal(range(HWM + 1), name="w_head")
        m.d.comb += [w_tok.eq((n_eff + (P - 1)) >> LP), w_head.eq((nh_eff + (P - 1)) >> LP)]

        # ------------------------------------------------------------ storage
        tword = data.ArrayLayout(data.StructLayout({"acc": unsigned(TB), "alive": unsigned(1)}), P)
        m.submodules.tmem = tmem = memory.Memory(shape=tword, depth=max(TW, 2), init=[])
        wp = tmem.write_port()
        rp = tmem.read_port(transparent_for=(wp,))
        s_h = [Signal(HB, name=f"s_h{h}") for h in range(HM)]
        alive_h = Signal(HM, name="alive_h")

        # ------------------------------------------------------------ LOAD: stage 0
        waddr = Signal(range(max(TW, 2)), name="waddr")
        rhead = Signal.like(i.payload.head, name="rhead")
        rowend0 = waddr == w_tok - 1
        v1 = Signal(name="v1")
        d1 = Signal.like(i.payload.data, name="d1")
        wa1 = Signal.like(waddr, name="wa1")
        rs1, re1, r0_1, init1 = (Signal(name=n) for n in ("rs1", "re1", "r0_1", "init1"))
        head1 = Signal.like(i.payload.head, name="head1")
        with m.If(adv):
            m.d.sync += v1.eq(accept)
        with m.If(accept):
            m.d.sync += [
                d1.eq(i.payload.data), wa1.eq(waddr), rs1.eq(waddr == 0),
                re1.eq(rowend0 | i.payload.last), r0_1.eq(row0), init1.eq(row0 & prm.first),
                head1.eq(Mux(waddr == 0, i.payload.head, rhead)),
                waddr.eq(Mux(rowend0 | i.payload.last, 0, waddr + 1)),
            ]
            with m.If(waddr == 0):
                m.d.sync += rhead.eq(i.payload.head)
            with m.If(rowend0 | i.payload.last):
                m.d.sync += row0.eq(0)
            with m.If(i.payload.last):
                m.d.sync += phase.eq(DRAIN)
                with m.If(~rowend0):
                    m.d.sync += self.error.eq(1)
            with m.If(jobstart):
                m.d.sync += jobstart.eq(0)
                with m.If(n_bad | h_bad):
                    m.d.sync += self.error.eq(1)
                with m.If(prm.first):
                    m.d.sync += [s.eq(0) for s in s_h]
                    m.d.sync += alive_h.eq(Cat(Const(h, range(HM + 1)) < nh_eff for h in range(HM)))

        # ------------------------------------------------------------ LOAD: stage 1
        cnt_t = Signal(cw, name="cnt_t")       # alive tokens (counted on the first row)
        rmax = Signal(PROB_BITS, name="rmax")
        hok = Signal(name="hok")
        m.d.comb += hok.eq(alive_h.bit_select(head1, 1) & (head1 < nh_eff))
        kmw = prm.key_mask.word_select(wa1, P) if TW > 1 else prm.key_mask[:P]
        alive1, add1, new1 = [], [], []
        ovf_t = Signal(name="ovf_t")
        ovf_terms = []
        for c in range(P):
            idx = Cat(Const(c, LP), wa1) if LP else wa1
            a = Signal(name=f"alive1_{c}")
            m.d.comb += a.eq(Mux(init1, kmw[c], rp.data[c].alive) & (idx < n_eff))
            add = Signal(PROB_BITS, name=f"add1_{c}")
            m.d.comb += add.eq(Mux(a & hok, d1[c], 0))
            tot = Signal(TB + 1, name=f"sum1_{c}")
            m.d.comb += tot.eq(Mux(init1, 0, rp.data[c].acc) + add)
            new = Signal(TB, name=f"new1_{c}")
            m.d.comb += new.eq(Mux(tot[TB], (1 << TB) - 1, tot[:TB]))
            ovf_terms.append(tot[TB])
            alive1.append(a)
            add1.append(add)
            new1.append(new)
        m.d.comb += ovf_t.eq(Cat(*ovf_terms).any())
        lmax = add1[0]
        for a in add1[1:]:
            lmax = Mux(a > lmax, a, lmax)
        cur = Signal(PROB_BITS, name="rowmax")
        m.d.comb += cur.eq(Mux(rs1 | (lmax > rmax), lmax, rmax))
        with m.If(adv & v1):
            m.d.sync += rmax.eq(cur)
            with m.If(r0_1):
                m.d.sync += cnt_t.eq(Mux(rs1, 0, cnt_t) + _popcount(alive1))
            with m.If(ovf_t | (head1 >= nh_eff)):
                m.d.sync += self.error.eq(1)
            with m.If(re1):
                for h in range(HM):
                    with m.If(head1 == h):
                        hs = s_h[h] + cur
                        with m.If(hs[HB]):
                            m.d.sync += [s_h[h].eq((1 << HB) - 1), self.error.eq(1)]
                        with m.Else():
                            m.d.sync += s_h[h].eq(hs[:HB])

        # ------------------------------------------------------------ top-k engine
        j = Signal(range(max(TW, HWM) + 2), name="j")
        da = Signal(range(max(TW, HWM, 2)), name="da")     # word whose data is visible now
        wn = Signal(range(max(TW, HWM) + 1), name="wn")
        m.d.comb += wn.eq(Mux(sel, w_head, w_tok))
        need = Signal(cw, name="need")
        mcnt = Signal(cw, name="mcnt")
        cnt1 = Signal(cw, name="cnt1")
        eqseen = Signal(cw, name="eqseen")
        pval = Signal(V, name="pval")
        pmask = Signal(V, name="pmask")
        onehot = Signal(V, name="onehot")
        bleft = Signal(range(V + 1), name="bleft")
        hv = [Signal(HB, name=f"hv{c}") for c in range(P)]
        ha = Signal(P, name="ha")
        raddr = Signal(range(max(TW, 2)), name="raddr")
        m.d.comb += raddr.eq(Mux(phase == LOAD, waddr, j))
        m.d.comb += [rp.addr.eq(raddr), rp.en.eq(adv)]
        with m.If(adv):
            m.d.sync += da.eq(j)
            with m.Switch(j):
                for w in range(HWM):
                    with m.Case(w):
                        for c in range(P):
                            h = w * P + c
                            m.d.sync += [hv[c].eq(s_h[h] if h < HM else 0),
                                         ha[c].eq(alive_h[h] if h < HM else 0)]
                with m.Default():
                    m.d.sync += [x.eq(0) for x in hv] + [ha.eq(0)]
        bound = Mux(sel, nh_eff, n_eff)
        elig, vals = [], []
        for c in range(P):
            idx = Cat(Const(c, LP), da) if LP else da
            e = Signal(name=f"elig{c}")
            m.d.comb += e.eq(Mux(sel, ha[c], rp.data[c].alive) & (idx < bound))
            v = Signal(V, name=f"val{c}")
            m.d.comb += v.eq(Mux(sel, hv[c], rp.data[c].acc))
            elig.append(e)
            vals.append(v)
        data_ok = (j >= 1) & (j <= wn)
        # PASS: matches of the prefix extended by a 1 at the current bit
        match = [elig[c] & ((vals[c] & (pmask | onehot)) == (pval | onehot)) for c in range(P)]
        pc = Signal(cw, name="pc")
        m.d.comb += pc.eq(_popcount(match))
        c1 = Signal(cw, name="c1")
        m.d.comb += c1.eq(cnt1 + pc)
        # EMIT: above the prefix, or among the first `need` equal to it
        keep = []
        before = eqseen
        for c in range(P):
            top = vals[c] & pmask
            eq = elig[c] & (top == pval)
            k_c = Signal(name=f"keep{c}")
            m.d.comb += k_c.eq(elig[c] & ((top > pval) | (eq & (before < need))))
            keep.append(k_c)
            before = before + eq
        keep_v = Signal(P, name="keep_v")
        m.d.comb += keep_v.eq(Cat(*keep))
        n_eq = Signal(cw + 1, name="n_eq")
        m.d.comb += n_eq.eq(before - eqseen)

        # writes of the token memory: stage 1 of LOAD, the alive bits in EMIT
        emit_wr = (phase == EMIT) & ~sel & data_ok
        m.d.comb += [wp.addr.eq(Mux(v1, wa1, da)), wp.en.eq(adv & (v1 | emit_wr))]
        for c in range(P):
            m.d.comb += [wp.data[c].acc.eq(Mux(v1, new1[c], rp.data[c].acc)),
                         wp.data[c].alive.eq(Mux(v1, alive1[c], keep[c]))]

        cnt_h = Signal(cw, name="cnt_h")
        m.d.comb += cnt_h.eq(_popcount([alive_h[h] & (Const(h, range(HM + 1)) < nh_eff)
                                        for h in range(HM)]))
        k_sel = Mux(sel, prm.k_heads, prm.k_tokens)
        cnt_sel = Mux(sel, cnt_h, cnt_t)

        with m.If(adv):
            m.d.sync += o.valid.eq(0)
            with m.Switch(phase):
                with m.Case(DRAIN):
                    m.d.sync += [phase.eq(SETUP), sel.eq(0)]
                with m.Case(SETUP):
                    m.d.sync += [need.eq(Mux(k_sel < cnt_sel, k_sel, cnt_sel)), mcnt.eq(cnt_sel),
                                 pval.eq(0), pmask.eq(0), j.eq(0), cnt1.eq(0), eqseen.eq(0),
                                 onehot.eq(Mux(sel, 1 << (HB - 1), 1 << (TB - 1))),
                                 bleft.eq(Mux(sel, HB, TB)),
                                 phase.eq(Mux(k_sel < cnt_sel, PASS, EMIT))]
                with m.Case(PASS):
                    with m.If(j == wn):
                        take1 = c1 >= need
                        new_m = Mux(take1, c1, mcnt - c1)
                        new_need = Mux(take1, need, need - c1)
                        m.d.sync += [mcnt.eq(new_m), need.eq(new_need),
                                     pval.eq(Mux(take1, pval | onehot, pval)),
                                     pmask.eq(pmask | onehot), onehot.eq(onehot >> 1),
                                     bleft.eq(bleft - 1), j.eq(0), cnt1.eq(0), eqseen.eq(0),
                                     phase.eq(Mux((new_m > new_need) & (bleft > 1), PASS, EMIT))]
                    with m.Else():
                        m.d.sync += j.eq(j + 1)
                        with m.If(j >= 1):
                            m.d.sync += cnt1.eq(c1)
                with m.Case(EMIT):
                    with m.If(data_ok):
                        m.d.sync += [eqseen.eq(eqseen + n_eq), o.valid.eq(1),
                                     o.payload.keep.eq(keep_v), o.payload.heads.eq(sel),
                                     o.payload.last.eq(sel & (j == wn))]
                        with m.If(sel):
                            for w in range(HWM):
                                with m.If(da == w):
                                    for c in range(P):
                                        if w * P + c < HM:
                                            m.d.sync += alive_h[w * P + c].eq(keep[c])
                    with m.If(j == wn + 1):
                        m.d.sync += j.eq(0)
                        with m.If(sel):
                            m.d.sync += [phase.eq(LOAD), jobstart.eq(1), row0.eq(1)]
                        with m.Else():
                            m.d.sync += [phase.eq(SETUP), sel.eq(1)]
                    with m.Else():
                        m.d.sync += j.eq(j + 1)

        # ------------------------------------------------------------ bookkeeping
        with m.If(adv & (accept | (phase != LOAD))):
            m.d.sync += self.cycles.eq(Mux(accept & jobstart, 1, self.cycles + 1))
        with m.If(accept):
            m.d.sync += self.busy.eq(1)
        with m.If(o.valid & o.ready & o.payload.last):
            m.d.sync += self.busy.eq(0)
        return m


# ---------------------------------------------------------------------- unit spec

SPATTEN_RESOURCE_RULE = (
    "estimated, not placed: fitted to yosys synth_ecp5 cell counts of four configurations "
    "(lanes 1/4/8, max_tokens 32..128, max_heads 12/16, widths 16..24; LUTs = LUT4 + 2 x CCU2C, "
    "within 4 %): LUTs = 3.8 P (token_bits + 2 V) per-lane datapath (saturating adder, prefix "
    "compares, tie count, row max) + 4.5 max_heads head_bits (head adders and read mux) + 10 V "
    "+ 2 max_tokens + 320; FFs = P (token_bits + head_bits + 10) + max_heads (head_bits + 1) + "
    "3 V + 5 counters + 87 (V = max(token_bits, head_bits)); no multipliers; the token memory "
    "(max_tokens x (token_bits + 1) bits) is LUT RAM (ceil(W/16) x ceil(P (token_bits + 1)/4) "
    "DPR16X4) up to 64 words of P lanes, else 18 Kbit (ecp5) / 4 Kbit (ice40) blocks; asic: "
    "buffer_bits")


@dataclasses.dataclass(frozen=True)
class SpattenSpec(UnitSpec):
    """Parameters of a :class:`SpattenPruner`: lanes P, the longest sequence (token memory),
    the most heads, and the token and head accumulator widths. The widths must hold the
    importances: ``255 x heads x rows x layers`` for a token, ``255 x rows x layers`` for a
    head (else the unit saturates and raises ``error``). :meth:`cycles` is
    :func:`spatten_cycles`; :meth:`reference` is :func:`golden.sparse.spatten.spatten_step_int`."""

    lanes: int
    max_tokens: int
    max_heads: int
    token_bits: int
    head_bits: int

    kind: ClassVar[str] = "sparse_spatten"
    summary: ClassVar[str] = ("SpAtten token/head importance accumulators and order-preserving "
                              "top-k (bit-serial radix select, in-order emit)")
    ops: ClassVar[tuple[str, ...]] = ("sparse_filter",)
    golden: ClassVar[str] = "golden.sparse.spatten.spatten_step_int"
    component: ClassVar[str] = "hw.sparse_spatten.SpattenPruner"

    def __post_init__(self) -> None:
        check_int("lanes", self.lanes, 1, MAX_LANES)
        if self.lanes & (self.lanes - 1):
            raise UnitParamError(f"lanes must be a power of two, not {self.lanes}")
        check_int("max_tokens", self.max_tokens, 1, MAX_TOKENS)
        if self.max_tokens % self.lanes:
            raise UnitParamError(f"lanes={self.lanes} must divide max_tokens={self.max_tokens}")
        check_int("max_heads", self.max_heads, 1, MAX_HEADS)
        check_int("token_bits", self.token_bits, PROB_BITS, MAX_BITS)
        check_int("head_bits", self.head_bits, PROB_BITS, MAX_BITS)

    def build(self) -> SpattenPruner:
        return SpattenPruner(lanes=self.lanes, max_tokens=self.max_tokens, max_heads=self.max_heads,
                             token_bits=self.token_bits, head_bits=self.head_bits)

    def reference(self, state: Any, probs: Any, k_tokens: Any, k_heads: Any) -> Any:  # type: ignore[override]
        return spatten_step_int(state, probs, k_tokens, k_heads)

    def cycles(self, *, rows: int, n_tokens: int, n_heads: int, token_passes: int,  # type: ignore[override]
               head_passes: int) -> int:
        """Counted cycles of one job of ``rows`` probability rows (:func:`spatten_cycles`)."""
        check_int("n_tokens", n_tokens, 1, self.max_tokens)
        check_int("n_heads", n_heads, 1, self.max_heads)
        check_int("rows", rows, 1)
        check_int("token_passes", token_passes, 0, self.token_bits)
        check_int("head_passes", head_passes, 0, self.head_bits)
        return spatten_cycles(words=rows * _words(n_tokens, self.lanes), n_tokens=n_tokens,
                              n_heads=n_heads, lanes=self.lanes, token_passes=token_passes,
                              head_passes=head_passes)

    @property
    def buffer_bits(self) -> int:
        """On-chip memory: the token memory."""
        return self.max_tokens * (self.token_bits + 1)

    def resources(self, family: str) -> dict[str, Any]:
        if family not in ("ecp5", "ice40", "asic"):
            raise UnitParamError(f"unknown family {family!r}; families: ecp5, ice40, asic")
        P, N, HM, TB, HB = self.lanes, self.max_tokens, self.max_heads, self.token_bits, self.head_bits
        V = max(TB, HB)
        cw = max(N, HM).bit_length() + 1
        luts = -(-(38 * P * (TB + 2 * V) + 45 * HM * HB) // 10) + 10 * V + 2 * N + 320
        ffs = P * (TB + HB + 10) + HM * (HB + 1) + 3 * V + 5 * cw + 87
        block = {"ecp5": 18432, "ice40": 4096}.get(family)
        lut_ram = N // P <= 64
        brams = 0 if block is None or lut_ram else -(-self.buffer_bits // block)
        return {"dsps": 0, "luts": luts, "ffs": ffs, "brams": brams, "buffer_bits": self.buffer_bits,
                "estimated": True, "basis": SPATTEN_RESOURCE_RULE}
