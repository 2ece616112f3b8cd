"""A^3 sparse-attention filter: greedy candidate search over sorted key columns, then
post-scoring (Ham et al., HPCA 2020), bit for bit :meth:`golden.sparse.a3.A3Filter.mask_int`.

One *job* is one (sequence, head): its ``n`` keys, the per-column sort order of those keys,
then its query rows; per query row one keep mask comes out. The unit holds the keys in ``dim``
column buffers of ``max_keys`` int8 entries and the sorted columns in ``dim`` buffers of
``(value, row)`` entries.

Streams, in the order the unit takes them (each is ready only in its phase)::

    i_key   n words: the key rows, dim int8 codes each; ``last`` on key n-1
    i_order n words: word p holds, per column i, the row of the p-th smallest key value of
            column i (ascending by (value, row), real keys only). Sorting is preprocessing
            done by the host (``sorted_key_orders``), as in the paper; the unit gathers each
            value from its key buffer (one cycle later) and checks the order (error flag)
    i_query the query rows, dim int8 codes each; ``last`` on the job's final row
    o_mask  per query row: ``keep`` (bit j = key j survives; bits >= n are 0), ``last`` on
            the job's final row

``prm`` (``m_q8`` uint12, ``t_int`` uint24; :meth:`~golden.sparse.a3.A3Filter.int_params`) is
sampled with the job's first key word.

Per query row, in phases (cycles in brackets)::

    QLOAD  [1]   take the query word
    INIT   [3]   clear the greedy scores; read the first max-/min-queue entry of every column
                 (max walk from the top of a column for q_i > 0, else from the bottom; the
                 min walk from the other end); d multipliers form the max heads, then the min heads
    SEARCH [2M]  M = (m_q8 n + 255) >> 8 iterations (0 when m_q8 = 0: every key a candidate)
                 of two cycles: (A) pop the largest max head (comparator tree, lowest column on
                 ties), add it to the key's greedy score (read-modify-write of a score buffer)
                 and the running sum if positive, advance that column's pointer; the min head
                 popped in the previous B is refilled; (B) if the running sum is >= 0, pop the
                 smallest min head (add it if negative), advance; the max head popped in A is
                 refilled. A column walked past its n entries offers -2**15 (max) / 2**15-1 (min)
    DOT    [|C|] one candidate per cycle (lowest row first; none: the first popped row): read
                 its key row, d products, adder tree, into a (row, dot) list, running max s_max
    DRAIN  [3]   the dot pipeline empties
    SCORE  [|C|+1] read the list: keep row iff s_max - dot <= t_int
    OUT    [1]   the mask word (waits for the sink)

Cycle model (:func:`a3_cycles`): a job takes ``2n + sum over rows (2M + 2|C_row| + 9)``
counted cycles; ``cycles`` restarts with the job's first key word and counts every cycle in
which the unit took a word or worked (the output cycle only when the word is taken), so source
idling and output backpressure are not counted. Seen at the ports, the edges from the job's
first input transfer to its last output transfer are that count plus the stall edges: an input
stream ready and not valid, or ``o_mask`` valid and not ready (:func:`a3_edges`).

``error`` (sticky): more than ``max_keys`` keys without ``last``; an order stream whose length
is not n; an order entry out of (value, row) ascending order or naming a row >= n.

Number formats: products int16 (exact, ``|p| <= 127**2``); greedy scores, the running sum and
dots exact (widths from their bounds, :func:`a3_widths`); nothing rounds or saturates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In

from golden.errors import UserValueError
from golden.sparse.a3 import M_Q8_MAX
from hw.lib import check_positive, check_stalls
from hw.sparse_sanger import filter_ports
from hw.spec import UnitParamError, UnitSpec, check_int

__all__ = ["A3_ROW_OVERHEAD", "SparseA3", "SparseA3Spec", "a3_cycles", "a3_edges", "a3_m_iter",
           "a3_param_layout", "a3_row_cycles", "a3_widths", "sorted_key_orders"]

#: per-row cycles besides the search and the two candidate passes: QLOAD 1, INIT 3, DRAIN 3,
#: the SCORE pipeline's 1, OUT 1
A3_ROW_OVERHEAD = 9
_EXH_MAX = -(2 ** 15)
_EXH_MIN = 2 ** 15 - 1
_PROD_MAX = 127 * 127


def a3_widths(dim: int, max_keys: int) -> dict[str, int]:
    """Bit widths: ``idx`` (a key row), ``n`` (a key count 0..max_keys), ``greedy`` and ``dot``
    (signed, ``|x| <= dim * 127**2``), ``cum`` (signed running sum, ``<= max_keys*dim*127**2``,
    ``>= -127**2``), ``m`` (M, up to ``(4095 * max_keys + 255) >> 8``), ``col`` (a column)."""
    return {"idx": max(1, (max_keys - 1).bit_length()), "n": max_keys.bit_length(),
            "greedy": (dim * _PROD_MAX).bit_length() + 1, "dot": (dim * _PROD_MAX).bit_length() + 1,
            "cum": (max_keys * dim * _PROD_MAX).bit_length() + 1,
            "m": ((M_Q8_MAX * max_keys + 255) >> 8).bit_length(),
            "col": max(1, (dim - 1).bit_length())}


def a3_m_iter(m_q8: int, keys: int) -> int:
    """Search iterations of a job: ``(m_q8 * n + 255) >> 8``, 0 with the search off."""
    check_int("m_q8", m_q8, 0, M_Q8_MAX)
    check_positive("keys", keys)
    return 0 if m_q8 == 0 else (m_q8 * keys + 255) >> 8


def a3_row_cycles(m_iter: int, candidates: int) -> int:
    """Counted cycles of one query row: ``2M + 2|C| + 9``."""
    if not isinstance(m_iter, int) or isinstance(m_iter, bool) or m_iter < 0:
        raise UserValueError(f"m_iter must be a non-negative integer, not {m_iter!r}")
    check_positive("candidates", candidates)
    return 2 * m_iter + 2 * candidates + A3_ROW_OVERHEAD


def a3_cycles(keys: int, m_iter: int, candidates: Sequence[int]) -> int:
    """Exact counted cycles of a job: ``2n`` (keys and orders) plus :func:`a3_row_cycles` per
    query row; ``candidates`` holds ``|C|`` (candidates after the search, before post-scoring)
    per row."""
    check_positive("keys", keys)
    if not candidates:
        raise UserValueError("a job needs at least one query row")
    for c in candidates:
        if not isinstance(c, int) or isinstance(c, bool) or not 1 <= c <= keys:
            raise UserValueError(f"candidates per row must be integers in [1, {keys}], not {c!r}")
    return 2 * keys + sum(a3_row_cycles(m_iter, c) for c in candidates)


def a3_edges(keys: int, m_iter: int, candidates: Sequence[int], stalls: int = 0) -> int:
    """Edges from a job's first input transfer to its last output transfer, inclusive:
    :func:`a3_cycles` plus ``stalls`` (module docstring)."""
    return a3_cycles(keys, m_iter, candidates) + check_stalls(stalls)


def a3_param_layout() -> data.StructLayout:
    """The ``prm`` port: ``m_q8`` (uint12, 0 = search off), ``t_int`` (uint24)."""
    return data.StructLayout({"m_q8": unsigned(12), "t_int": unsigned(24)})


def sorted_key_orders(k: Sequence[Sequence[int]]) -> list[list[int]]:
    """The host's preprocessing: ``orders[p][i]`` = row of the p-th smallest value of column
    ``i`` of the ``n x dim`` keys ``k``, ascending by (value, row) (the golden model's stable
    sort)."""
    n = len(k)
    if n == 0:
        raise UserValueError("sorted_key_orders needs at least one key")
    dim = len(k[0])
    cols = [sorted(range(n), key=lambda r, i=i: (int(k[r][i]), r)) for i in range(dim)]
    return [[cols[i][p] for i in range(dim)] for p in range(n)]


def _arg_tree(m: Module, items: list[tuple], better, name: str) -> tuple:
    """Pairwise tree over ``(value, column, row)`` items in column order: the best value, the
    lowest column on ties (``better(b, a)`` is strict). Every node is a signal, so the
    Verilog stays linear in the number of items."""
    lvl = 0
    while len(items) > 1:
        nxt = []
        for a in range(0, len(items) - 1, 2):
            (va, ca, ra), (vb, cb, rb) = items[a], items[a + 1]
            take = better(vb, va)
            node = (Signal.like(va, name=f"{name}_v{lvl}_{a // 2}"),
                    Signal.like(ca, name=f"{name}_c{lvl}_{a // 2}"),
                    Signal.like(ra, name=f"{name}_r{lvl}_{a // 2}"))
            m.d.comb += [node[0].eq(Mux(take, vb, va)), node[1].eq(Mux(take, cb, ca)),
                         node[2].eq(Mux(take, rb, ra))]
            nxt.append(node)
        if len(items) % 2:
            nxt.append(items[-1])
        items = nxt
        lvl += 1
    return items[0]


def _sum_tree(vals: list) -> Any:
    while len(vals) > 1:
        vals = [vals[i] + vals[i + 1] if i + 1 < len(vals) else vals[i] for i in range(0, len(vals), 2)]
    return vals[0]


def _lowest_set(m: Module, vec: Signal, width: int, name: str) -> Signal:
    """Index of the lowest set bit of ``vec`` (0 when none), a priority chain."""
    idx = Signal(range(max(width, 2)), name=name)
    for i in reversed(range(width)):
        with m.If(vec[i]):
            m.d.comb += idx.eq(i)
    return idx


class SparseA3(wiring.Component):
    """The A^3 filter (module docstring) for heads of ``dim`` values and up to ``max_keys`` keys.

    Interface: ``prm`` In(:func:`a3_param_layout`); ``i_key``/``i_query`` In(stream of {data:
    dim x int8, last}); ``i_order`` In(stream of {data: dim x uint(idx), last}); ``o_mask``
    Out(stream of {keep: max_keys bits, last}); ``busy``, ``cycles`` (32), ``error`` Out.
    """

    def __init__(self, *, dim: int, max_keys: int) -> None:
        self._dim = check_positive("dim", dim, 128)
        self._max_keys = check_positive("max_keys", max_keys, 1024)
        if max_keys < 2:
            raise UserValueError(f"max_keys must be at least 2, not {max_keys}")
        self._w = w = a3_widths(dim, max_keys)
        row = data.StructLayout({"data": data.ArrayLayout(signed(8), dim), "last": unsigned(1)})
        super().__init__(filter_ports(a3_param_layout(), row, max_keys, {
            "i_order": In(stream.Signature(data.StructLayout({
                "data": data.ArrayLayout(unsigned(w["idx"]), dim), "last": unsigned(1)})))}))

    dim = property(lambda self: self._dim, doc="Values per key / query row.")
    max_keys = property(lambda self: self._max_keys, doc="Keys the buffers hold.")

    def elaborate(self, platform) -> Module:
        m = Module()
        D, N, w = self._dim, self._max_keys, self._w
        IW, NW, MW, CI = w["idx"], w["n"], w["m"], w["col"]
        ik, io, iq, o = self.i_key, self.i_order, self.i_query, self.o_mask
        KEYS, ORDER, QLOAD, INIT, SEARCH, DOT, DRAIN, SCORE, OUT = range(9)
        st = Signal(range(9), name="state")
        k = Signal(range(N + 1), name="k")           # load position / phase counter
        n = Signal(NW, name="n")
        m_iter = Signal(MW, name="m_iter")
        it = Signal(MW, name="it")
        sub = Signal(name="sub")                      # SEARCH: 0 = A (max), 1 = B (min)
        m_q8 = Signal(12, name="m_q8")
        t_int = Signal(24, name="t_int")

        acc_k, acc_o, acc_q = Signal(name="acc_k"), Signal(name="acc_o"), Signal(name="acc_q")
        o_fire = Signal(name="o_fire")
        m.d.comb += [
            ik.ready.eq(st == KEYS), io.ready.eq(st == ORDER), iq.ready.eq(st == QLOAD),
            o.valid.eq(st == OUT),
            acc_k.eq(ik.valid & ik.ready), acc_o.eq(io.valid & io.ready),
            acc_q.eq(iq.valid & iq.ready), o_fire.eq(o.valid & o.ready),
        ]
        working = (st == INIT) | (st == SEARCH) | (st == DOT) | (st == DRAIN) | (st == SCORE)
        job_start = acc_k & (k == 0)
        with m.If(job_start):
            m.d.sync += [self.cycles.eq(1), self.busy.eq(1)]
        with m.Elif(acc_k | acc_o | acc_q | working | o_fire):
            m.d.sync += self.cycles.eq(self.cycles + 1)

        # ------------------------------------------------------------ buffers
        sl = data.StructLayout({"v": signed(8), "r": unsigned(IW)})
        kw, kr, sw, smx, smn = [], [], [], [], []
        for i in range(D):
            km = memory.Memory(shape=signed(8), depth=N, init=[])
            sm = memory.Memory(shape=sl, depth=N, init=[])
            m.submodules[f"kcol{i}"], m.submodules[f"scol{i}"] = km, sm
            kw.append(km.write_port())
            kr.append(km.read_port())
            sw.append(sm.write_port())
            smx.append(sm.read_port())
            smn.append(sm.read_port())
        m.submodules.greedy = gm = memory.Memory(shape=signed(w["greedy"]), depth=N, init=[])
        gw, gr = gm.write_port(), gm.read_port(domain="comb")
        m.submodules.dots = lm = memory.Memory(
            shape=data.StructLayout({"r": unsigned(IW), "s": signed(w["dot"])}), depth=N, init=[])
        lw, lr = lm.write_port(), lm.read_port()

        # ------------------------------------------------------------ KEYS
        for i in range(D):
            m.d.comb += [kw[i].addr.eq(k), kw[i].data.eq(ik.payload.data[i]), kw[i].en.eq(acc_k)]
        with m.If(acc_k):
            with m.If(k == 0):
                m.d.sync += [m_q8.eq(self.prm.m_q8), t_int.eq(self.prm.t_int)]
            with m.If(ik.payload.last | (k == N - 1)):
                m.d.sync += [st.eq(ORDER), k.eq(0), n.eq(k + 1)]
                with m.If(~ik.payload.last):
                    m.d.sync += self.error.eq(1)
            with m.Else():
                m.d.sync += k.eq(k + 1)

        # ------------------------------------------------------------ ORDER: gather and check
        gv = Signal(name="gv")
        gpos = Signal(IW, name="gpos")
        grow = [Signal(IW, name=f"grow{i}") for i in range(D)]
        pv = [Signal(signed(8), name=f"pv{i}") for i in range(D)]
        pr = [Signal(IW, name=f"pr{i}") for i in range(D)]
        m.d.sync += [gv.eq(acc_o), gpos.eq(k)]
        m.d.sync += [grow[i].eq(io.payload.data[i]) for i in range(D)]
        bad = []
        for i in range(D):
            v = kr[i].data
            m.d.comb += [sw[i].addr.eq(gpos), sw[i].data.v.eq(v), sw[i].data.r.eq(grow[i]),
                         sw[i].en.eq(gv)]
            up = (v > pv[i]) | ((v == pv[i]) & (grow[i] > pr[i]))
            bad.append(((gpos != 0) & ~up) | (grow[i] >= n))
        with m.If(gv):
            m.d.sync += [pv[i].eq(kr[i].data) for i in range(D)]
            m.d.sync += [pr[i].eq(grow[i]) for i in range(D)]
            with m.If(Cat(*bad).any()):
                m.d.sync += self.error.eq(1)
        with m.If(st == ORDER):
            m.d.sync += m_iter.eq(Mux(m_q8 == 0, 0, (m_q8 * n + 255) >> 8))
        with m.If(acc_o):
            at_end = k == n - 1
            with m.If(io.payload.last | at_end):
                m.d.sync += [st.eq(QLOAD), k.eq(0)]
                with m.If(io.payload.last != at_end):
                    m.d.sync += self.error.eq(1)
            with m.Else():
                m.d.sync += k.eq(k + 1)

        # ------------------------------------------------------------ query and queue heads
        q = [Signal(signed(8), name=f"q{i}") for i in range(D)]
        qlast = Signal(name="qlast")
        maxstep = [Signal(NW, name=f"maxstep{i}") for i in range(D)]
        minstep = [Signal(NW, name=f"minstep{i}") for i in range(D)]
        maxv = [Signal(signed(16), name=f"maxv{i}") for i in range(D)]
        minv = [Signal(signed(16), name=f"minv{i}") for i in range(D)]
        maxr = [Signal(IW, name=f"maxr{i}") for i in range(D)]
        minr = [Signal(IW, name=f"minr{i}") for i in range(D)]
        with m.If(acc_q):
            m.d.sync += [q[i].eq(iq.payload.data[i]) for i in range(D)]
            m.d.sync += [maxstep[i].eq(0) for i in range(D)] + [minstep[i].eq(0) for i in range(D)]
            m.d.sync += [qlast.eq(iq.payload.last), st.eq(INIT), k.eq(0)]

        # the d multipliers: max-head data, min-head data or a key row
        d1 = Signal(name="d1")
        x = [Signal(signed(8), name=f"x{i}") for i in range(D)]
        prod = [Signal(signed(16), name=f"prod{i}") for i in range(D)]
        use_min = ((st == INIT) & (k == 2)) | ((st == SEARCH) & ~sub)
        for i in range(D):
            m.d.comb += [x[i].eq(Mux(d1, kr[i].data, Mux(use_min, smn[i].data.v, smx[i].data.v))),
                         prod[i].eq(q[i] * x[i])]

        # search pops (combinational trees over the registered heads)
        cum = Signal(signed(w["cum"]), name="cum")
        gate = Signal(name="gate")
        m.d.comb += gate.eq(cum >= 0)
        va, ja, ra = _arg_tree(m, [(maxv[i], Const(i, CI), maxr[i]) for i in range(D)],
                               lambda b, a: b > a, "qmax")
        vb, jb, rb = _arg_tree(m, [(minv[i], Const(i, CI), minr[i]) for i in range(D)],
                               lambda b, a: b < a, "qmin")
        pop_a = (st == SEARCH) & ~sub
        pop_b = (st == SEARCH) & sub & gate
        for i in range(D):
            inc_a = pop_a & (ja == i) & (maxstep[i] != n)
            inc_b = pop_b & (jb == i) & (minstep[i] != n)
            s_a = maxstep[i] + inc_a
            s_b = minstep[i] + inc_b
            qp = q[i] > 0
            m.d.comb += [smx[i].addr.eq(Mux(qp, n - 1 - s_a, s_a)),
                         smn[i].addr.eq(Mux(qp, s_b, n - 1 - s_b))]
            with m.If(inc_a):
                m.d.sync += maxstep[i].eq(maxstep[i] + 1)
            with m.If(inc_b):
                m.d.sync += minstep[i].eq(minstep[i] + 1)

        # greedy scores: read-modify-write of one row per SEARCH cycle
        touched = Signal(N, name="touched")
        cand = Signal(N, name="cand")
        upd = Signal(name="upd")
        urow = Signal(IW, name="urow")
        uval = Signal(signed(16), name="uval")
        gnew = Signal(signed(w["greedy"]), name="gnew")
        m.d.comb += [
            upd.eq(Mux(sub, pop_b & (vb < 0), pop_a & (va > 0))),
            urow.eq(Mux(sub, rb, ra)), uval.eq(Mux(sub, vb, va)),
            gr.addr.eq(urow),
            gnew.eq(Mux(touched.bit_select(urow, 1), gr.data, 0) + uval),
            gw.addr.eq(urow), gw.data.eq(gnew), gw.en.eq(upd),
        ]
        with m.If(upd):
            m.d.sync += [touched.bit_select(urow, 1).eq(1), cand.bit_select(urow, 1).eq(gnew > 0),
                         cum.eq(cum + uval)]

        first_row = Signal(IW, name="first_row")
        ja_r = Signal(CI, name="ja_r")               # max column popped in A, refilled in B
        jb_r = Signal(CI, name="jb_r")               # min column popped in B, refilled in A
        refill_b = Signal(name="refill_b")
        keep = Signal(N, name="keep")
        lc = Signal(range(N + 1), name="lc")
        dfirst = Signal(name="dfirst")
        ones_n = Signal(N, name="ones_n")
        m.d.comb += ones_n.eq((Const(1, N + 1) << n) - 1)

        # DOT: candidate scan and the dot pipeline (issue, products, adder tree, list write)
        scan = Signal(N, name="scan")
        rest = Signal(N, name="rest")
        m.d.comb += [scan.eq(Mux(dfirst & ~cand.any(), Const(1, N) << first_row, cand)),
                     rest.eq(scan & (scan - 1)[:N])]
        idx = _lowest_set(m, scan, N, "dot_idx")
        for i in range(D):
            m.d.comb += kr[i].addr.eq(Mux(st == ORDER, io.payload.data[i], idx))
        d1r, d2r, d3r = (Signal(IW, name=f"d{j}r") for j in (1, 2, 3))
        d2, d3 = Signal(name="d2"), Signal(name="d3")
        preg = [Signal(signed(16), name=f"preg{i}") for i in range(D)]
        dot = Signal(signed(w["dot"]), name="dot")
        smaxd = Signal(signed(w["dot"]), name="smaxd")
        m.d.sync += [d1.eq(st == DOT), d1r.eq(idx), d2.eq(d1), d2r.eq(d1r), d3.eq(d2), d3r.eq(d2r),
                     dot.eq(_sum_tree(list(preg)))]
        m.d.sync += [preg[i].eq(prod[i]) for i in range(D)]
        m.d.comb += [lw.addr.eq(lc), lw.data.r.eq(d3r), lw.data.s.eq(dot), lw.en.eq(d3)]
        with m.If(d3):
            m.d.sync += [lc.eq(lc + 1), smaxd.eq(Mux((lc == 0) | (dot > smaxd), dot, smaxd))]

        # SCORE: keep iff s_max - dot <= t_int
        sv = Signal(name="sv")
        m.d.comb += lr.addr.eq(k)
        m.d.sync += sv.eq((st == SCORE) & (k < lc))
        with m.If(sv & ((smaxd - lr.data.s) <= t_int)):
            m.d.sync += keep.bit_select(lr.data.r, 1).eq(1)

        m.d.comb += [o.payload.keep.eq(keep), o.payload.last.eq(qlast)]

        # ------------------------------------------------------------ control
        with m.Switch(st):
            with m.Case(INIT):
                with m.If(k == 0):
                    m.d.sync += [touched.eq(0), cand.eq(Mux(m_q8 == 0, ones_n, 0)), cum.eq(0),
                                 keep.eq(0), lc.eq(0), dfirst.eq(1), it.eq(0), sub.eq(0),
                                 refill_b.eq(0)]
                with m.If(k == 1):
                    m.d.sync += [maxv[i].eq(prod[i]) for i in range(D)]
                    m.d.sync += [maxr[i].eq(smx[i].data.r) for i in range(D)]
                with m.If(k == 2):
                    m.d.sync += [minv[i].eq(prod[i]) for i in range(D)]
                    m.d.sync += [minr[i].eq(smn[i].data.r) for i in range(D)]
                    m.d.sync += [st.eq(Mux(m_q8 == 0, DOT, SEARCH)), k.eq(0)]
                with m.Else():
                    m.d.sync += k.eq(k + 1)
            with m.Case(SEARCH):
                with m.If(~sub):
                    with m.If(it == 0):
                        m.d.sync += first_row.eq(ra)
                    m.d.sync += [ja_r.eq(ja), sub.eq(1)]
                    for i in range(D):
                        with m.If(refill_b & (jb_r == i)):
                            m.d.sync += [minv[i].eq(Mux(minstep[i] == n, _EXH_MIN, prod[i])),
                                         minr[i].eq(smn[i].data.r)]
                with m.Else():
                    m.d.sync += [jb_r.eq(jb), refill_b.eq(gate), sub.eq(0), it.eq(it + 1)]
                    for i in range(D):
                        with m.If(ja_r == i):
                            m.d.sync += [maxv[i].eq(Mux(maxstep[i] == n, _EXH_MAX, prod[i])),
                                         maxr[i].eq(smx[i].data.r)]
                    with m.If(it == m_iter - 1):
                        m.d.sync += [st.eq(DOT), k.eq(0)]
            with m.Case(DOT):
                m.d.sync += [cand.eq(rest), dfirst.eq(0)]
                with m.If(rest == 0):
                    m.d.sync += [st.eq(DRAIN), k.eq(0)]
            with m.Case(DRAIN):
                with m.If(k == 2):
                    m.d.sync += [st.eq(SCORE), k.eq(0)]
                with m.Else():
                    m.d.sync += k.eq(k + 1)
            with m.Case(SCORE):
                with m.If(k == lc):
                    m.d.sync += [st.eq(OUT), k.eq(0)]
                with m.Else():
                    m.d.sync += k.eq(k + 1)
            with m.Case(OUT):
                with m.If(o_fire):
                    with m.If(qlast):
                        m.d.sync += [st.eq(KEYS), k.eq(0), self.busy.eq(0)]
                    with m.Else():
                        m.d.sync += st.eq(QLOAD)
        return m


# ---------------------------------------------------------------------- unit spec

A3_RESOURCE_RULE = (
    "estimated: one hard multiplier per int8 product (dim, as the GEMM's measured rule) and "
    "one for M = m_q8 * n (yosys synth_ecp5 of dim 8, 16 keys: 9 MULT18X18D); "
    "LUTs: 1 per bit of each comparator/mux of the two dim-input queue trees ((dim-1) x "
    "(2 x 16 + col + idx) each), of the dot adder tree ((dim-1) x dot bits), of the head "
    "refill muxes (dim x 2 x (16 + idx)), 4 per key for the candidate scan, greedy/cum "
    "adders, plus 300 for control; FFs: every register bit; buffers: the key, sorted-key, "
    "greedy and dot-list memories")


@dataclasses.dataclass(frozen=True)
class SparseA3Spec(UnitSpec):
    """Parameters of a :class:`SparseA3`: head size ``dim`` and the key buffer ``max_keys``.
    :meth:`cycles` is :func:`a3_cycles`; the run-time constants come through ``prm``."""

    dim: int = 32
    max_keys: int = 128

    kind: ClassVar[str] = "sparse_a3"
    summary: ClassVar[str] = ("A^3 sparse-attention filter: greedy max/min-queue candidate "
                              "search over host-sorted key columns, exact post-scoring")
    ops: ClassVar[tuple[str, ...]] = ("sparse_filter",)
    golden: ClassVar[str] = "golden.sparse.a3.A3Filter.mask_int"
    component: ClassVar[str] = "hw.sparse_a3.SparseA3"

    def __post_init__(self) -> None:
        check_int("dim", self.dim, 1, 128)
        check_int("max_keys", self.max_keys, 2, 1024)

    def build(self) -> SparseA3:
        return SparseA3(dim=self.dim, max_keys=self.max_keys)

    def cycles(self, *, keys: int, m_iter: int, candidates: Sequence[int]) -> int:  # type: ignore[override]
        """:func:`a3_cycles` (``keys <= max_keys``)."""
        check_int("keys", keys, 1, self.max_keys)
        return a3_cycles(keys, m_iter, candidates)

    def reference(self, q: Any, k: Any, key_mask: Any, params: dict[str, int]) -> Any:  # type: ignore[override]
        """:meth:`golden.sparse.a3.A3Filter.mask_int` (the keep mask)."""
        from golden.sparse.a3 import A3Filter

        return A3Filter().mask_int(q, k, key_mask, params).mask

    @property
    def buffer_bits(self) -> int:
        w = a3_widths(self.dim, self.max_keys)
        return self.max_keys * (self.dim * 8 + self.dim * (8 + w["idx"]) + w["greedy"]
                                + w["idx"] + w["dot"])

    def resources(self, family: str) -> dict[str, Any]:
        if family not in ("ecp5", "ice40", "asic"):
            raise UnitParamError(f"family must be one of ecp5, ice40, asic, not {family!r}")
        w = a3_widths(self.dim, self.max_keys)
        d, n = self.dim, self.max_keys
        luts = (2 * (d - 1) * (2 * 16 + w["col"] + w["idx"]) + (d - 1) * w["dot"]
                + d * 2 * (16 + w["idx"]) + 4 * n + w["greedy"] + w["cum"] + 300)
        ffs = (d * (8 + 2 * 16 + 2 * w["idx"] + 2 * w["n"] + 16 + w["idx"] + 8) + 3 * n
               + w["cum"] + 2 * w["dot"] + 2 * w["m"] + 12 + 24 + 6 * w["idx"] + 64)
        return {"dsps": d + 1, "luts": luts, "ffs": ffs, "brams": None,
                "buffer_bits": self.buffer_bits, "estimated": True, "basis": A3_RESOURCE_RULE}

