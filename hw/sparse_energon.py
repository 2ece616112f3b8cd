"""Energon sparse-attention filter: multi-round low-bit filtering with integer mean/max
thresholds, bit for bit :meth:`golden.sparse.energon.EnergonFilter.mask_int`.

One *job* is one (sequence, head): its ``n`` keys, then its query rows; per query row one keep
mask comes out. The keys sit in a ``max_keys``-word buffer (one key row of ``dim`` int8 codes
per word); two (row, score) list buffers alternate between rounds.

Streams::

    i_key   n words, the key rows (dim int8 codes); ``last`` on key n-1
    i_query the query rows (dim int8 codes); ``last`` on the job's final row
    o_mask  per query row: ``keep`` (bit j = key j survives the last round; bits >= n are 0),
            ``last`` on the job's final row

``prm`` (:func:`energon_param_layout`: ``alpha_q8`` signed, per round ``q_shift``/``k_shift``;
:meth:`~golden.sparse.energon.EnergonFilter.int_params`) is sampled with the job's first key
word. The number of rounds R is an elaboration parameter.

Per query row (cycles in brackets; ``e_r`` keys enter round r: ``e_0 = n``, ``e_r`` = the
survivors of round r-1)::

    QLOAD  [1]       take the query word
    SCORE0 [n]       one key per cycle into the score pipeline: read the key row; d products
                     ``(q_i >> q_shift0) * (k_i >> k_shift0)``; adder tree; append (row, S) to
                     the round's list and update cnt, sum, max, min
    DRAIN  [3]       the pipeline empties
    THRESH [2]       ``rhs = |a| * (cnt * E) + (256 - |a|) * sum`` (E = max for a >= 0, else min)
    FILT   [e_{r-1}+4]  rounds r = 1..R-1: re-read the previous round's list; an entry with
                     ``256 * cnt * S >= rhs`` enters the score pipeline with round r's shifts,
                     writing the other list; then THRESH [2] again
    FINAL  [e_{R-1}+1]  re-read the last round's list: keep bit of every entry that passes
    OUT    [1]       the mask word (waits for the sink)

Cycle model (:func:`energon_cycles`): a job takes ``n + sum over rows (2n + 6R + 2 +
sum_{r<R-1} s_r)`` counted cycles, ``s_r`` the survivors of round r. ``cycles`` restarts with
the job's first key word and counts every cycle in which the unit took a word or worked (the
output cycle only when the word is taken); seen at the ports, the edges from a job's first
input transfer to its last output transfer are that count plus the stall edges (an input
stream ready and not valid, or ``o_mask`` valid and not ready; :func:`energon_edges`).

``error`` (sticky): more than ``max_keys`` keys without ``last``.

Number formats: shifted operands int8, products int16, scores, sums and the threshold terms
exact (widths from their bounds, :func:`energon_widths`); nothing rounds or saturates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, wiring

from golden.errors import UserValueError
from hw.lib import check_positive, check_stalls
from hw.sparse_sanger import filter_ports
from hw.spec import UnitParamError, UnitSpec, check_int

__all__ = ["MAX_ROUNDS", "SparseEnergon", "SparseEnergonSpec", "energon_cycles", "energon_edges",
           "energon_param_layout", "energon_row_cycles", "energon_widths"]

MAX_ROUNDS = 4
_PROD_MAX = 127 * 127


def energon_widths(dim: int, max_keys: int) -> dict[str, int]:
    """Bit widths: ``idx`` (a key row), ``n`` (a count 0..max_keys), ``score`` (signed,
    ``|S| <= dim * 127**2``), ``sum`` (signed, ``<= max_keys`` scores), ``p1`` (cnt * E),
    ``p2`` ((256-|a|) * sum), ``rhs`` and ``lhs`` (256 * cnt * S), all signed."""
    nw = max_keys.bit_length()
    sw = (dim * _PROD_MAX).bit_length() + 1
    sumw = (max_keys * dim * _PROD_MAX).bit_length() + 1
    p1 = nw + sw + 1
    p2 = sumw + 10
    return {"idx": max(1, (max_keys - 1).bit_length()), "n": nw, "score": sw, "sum": sumw,
            "p1": p1, "p2": p2, "rhs": max(p1 + 10, p2) + 2, "lhs": nw + sw + 10}


def energon_row_cycles(keys: int, survivors: Sequence[int]) -> int:
    """Counted cycles of one query row: ``2n + 6R + 2 + sum_{r<R-1} s_r``; ``survivors``
    holds ``s_r`` for every round r = 0..R-1 (the last one does not enter the sum)."""
    check_positive("keys", keys)
    if not survivors:
        raise UserValueError("survivors needs one count per round")
    for s in survivors:
        if not isinstance(s, int) or isinstance(s, bool) or not 1 <= s <= keys:
            raise UserValueError(f"survivors per round must be integers in [1, {keys}], not {s!r}")
    if list(survivors) != sorted(survivors, reverse=True):
        raise UserValueError(f"survivors cannot grow from round to round: {list(survivors)}")
    r = len(survivors)
    return 2 * keys + 6 * r + 2 + sum(survivors[:-1])


def energon_cycles(keys: int, survivors: Sequence[Sequence[int]]) -> int:
    """Exact counted cycles of a job: ``n`` (keys) plus :func:`energon_row_cycles` per query
    row (``survivors[row][r]``)."""
    check_positive("keys", keys)
    if not survivors:
        raise UserValueError("a job needs at least one query row")
    return keys + sum(energon_row_cycles(keys, s) for s in survivors)


def energon_edges(keys: int, survivors: Sequence[Sequence[int]], stalls: int = 0) -> int:
    """Edges from a job's first input transfer to its last output transfer, inclusive:
    :func:`energon_cycles` plus ``stalls`` (module docstring)."""
    return energon_cycles(keys, survivors) + check_stalls(stalls)


def energon_param_layout(rounds: int) -> data.StructLayout:
    """The ``prm`` port: ``alpha_q8`` (signed 10 bits, -256..256), ``q_shift``/``k_shift``
    (``rounds`` x uint3)."""
    return data.StructLayout({"alpha_q8": signed(10),
                              "q_shift": data.ArrayLayout(unsigned(3), rounds),
                              "k_shift": data.ArrayLayout(unsigned(3), rounds)})


def _sum_tree(vals: list) -> Any:
    while len(vals) > 1:
        vals = [vals[i] + vals[i + 1] if i + 1 < len(vals) else vals[i] for i in range(0, len(vals), 2)]
    return vals[0]


class SparseEnergon(wiring.Component):
    """The Energon filter (module docstring): ``dim`` values per row, up to ``max_keys`` keys,
    ``rounds`` filtering rounds.

    Interface: ``prm`` In(:func:`energon_param_layout`); ``i_key``/``i_query`` In(stream of
    {data: dim x int8, last}); ``o_mask`` Out(stream of {keep: max_keys bits, last}); ``busy``,
    ``cycles`` (32), ``error`` Out.
    """

    def __init__(self, *, dim: int, max_keys: int, rounds: int = 2) -> None:
        self._dim = check_positive("dim", dim, 128)
        self._max_keys = check_positive("max_keys", max_keys, 1024)
        if max_keys < 2:
            raise UserValueError(f"max_keys must be at least 2, not {max_keys}")
        self._rounds = check_positive("rounds", rounds, MAX_ROUNDS)
        self._w = energon_widths(dim, max_keys)
        row = data.StructLayout({"data": data.ArrayLayout(signed(8), dim), "last": unsigned(1)})
        super().__init__(filter_ports(energon_param_layout(rounds), row, max_keys))

    dim = property(lambda self: self._dim, doc="Values per key / query row.")
    max_keys = property(lambda self: self._max_keys, doc="Keys the buffer holds.")
    rounds = property(lambda self: self._rounds, doc="Filtering rounds R.")

    def elaborate(self, platform) -> Module:
        m = Module()
        D, N, R, w = self._dim, self._max_keys, self._rounds, self._w
        IW, NW, SW = w["idx"], w["n"], w["score"]
        ik, iq, o = self.i_key, self.i_query, self.o_mask
        KEYS, QLOAD, SCORE0, DRAIN, THRESH, FILT, FINAL, OUT = range(8)
        st = Signal(range(8), name="state")
        k = Signal(range(N + 5), name="k")
        n = Signal(NW, name="n")
        rnd = Signal(range(max(R, 2)), name="rnd")
        alpha = Signal(signed(10), name="alpha")
        qsh = [Signal(3, name=f"qsh{r}") for r in range(R)]
        ksh = [Signal(3, name=f"ksh{r}") for r in range(R)]

        acc_k, acc_q, o_fire = Signal(name="acc_k"), Signal(name="acc_q"), Signal(name="o_fire")
        m.d.comb += [
            ik.ready.eq(st == KEYS), iq.ready.eq(st == QLOAD), o.valid.eq(st == OUT),
            acc_k.eq(ik.valid & ik.ready), acc_q.eq(iq.valid & iq.ready),
            o_fire.eq(o.valid & o.ready),
        ]
        working = (st == SCORE0) | (st == DRAIN) | (st == THRESH) | (st == FILT) | (st == FINAL)
        job_start = acc_k & (k == 0)
        with m.If(job_start):
            m.d.sync += [self.cycles.eq(1), self.busy.eq(1)]
        with m.Elif(acc_k | acc_q | working | o_fire):
            m.d.sync += self.cycles.eq(self.cycles + 1)

        # ------------------------------------------------------------ buffers
        m.submodules.keys = km = memory.Memory(shape=data.ArrayLayout(signed(8), D), depth=N, init=[])
        kw, kr = km.write_port(), km.read_port()
        el = data.StructLayout({"r": unsigned(IW), "s": signed(SW)})
        m.submodules.list0 = l0 = memory.Memory(shape=el, depth=N, init=[])
        m.submodules.list1 = l1 = memory.Memory(shape=el, depth=N, init=[])
        lw = [l0.write_port(), l1.write_port()]
        lr = [l0.read_port(), l1.read_port()]
        wsel = Signal(name="wsel")                   # list the current round writes
        rsel = Signal(name="rsel")                   # list FILT / FINAL read

        # ------------------------------------------------------------ KEYS
        m.d.comb += [kw.addr.eq(k), kw.data.eq(ik.payload.data), kw.en.eq(acc_k)]
        with m.If(acc_k):
            with m.If(k == 0):
                m.d.sync += alpha.eq(self.prm.alpha_q8)
                m.d.sync += [qsh[r].eq(self.prm.q_shift[r]) for r in range(R)]
                m.d.sync += [ksh[r].eq(self.prm.k_shift[r]) for r in range(R)]
            with m.If(ik.payload.last | (k == N - 1)):
                m.d.sync += [st.eq(QLOAD), k.eq(0), n.eq(k + 1)]
                with m.If(~ik.payload.last):
                    m.d.sync += self.error.eq(1)
            with m.Else():
                m.d.sync += k.eq(k + 1)

        # ------------------------------------------------------------ query
        q = [Signal(signed(8), name=f"q{i}") for i in range(D)]
        qlast = Signal(name="qlast")
        keep = Signal(N, name="keep")

        # ------------------------------------------------------------ score pipeline
        iss = Signal(name="iss")
        iss_row = Signal(IW, name="iss_row")
        cur_q = Signal(3, name="cur_qsh")
        cur_k = Signal(3, name="cur_ksh")
        m.d.comb += [cur_q.eq(qsh[0]), cur_k.eq(ksh[0])]
        for r in range(1, R):
            with m.If(rnd == r):
                m.d.comb += [cur_q.eq(qsh[r]), cur_k.eq(ksh[r])]
        m.d.comb += kr.addr.eq(iss_row)
        e1, e2, e3 = Signal(name="e1"), Signal(name="e2"), Signal(name="e3")
        e1r, e2r, e3r = (Signal(IW, name=f"e{j}r") for j in (1, 2, 3))
        preg = [Signal(signed(16), name=f"preg{i}") for i in range(D)]
        score = Signal(signed(SW), name="score")
        m.d.sync += [e1.eq(iss), e1r.eq(iss_row), e2.eq(e1), e2r.eq(e1r), e3.eq(e2), e3r.eq(e2r),
                     score.eq(_sum_tree(list(preg)))]
        for i in range(D):
            m.d.sync += preg[i].eq((q[i] >> cur_q) * (kr.data[i] >> cur_k))

        cnt = Signal(NW, name="cnt")
        total = Signal(signed(w["sum"]), name="sum")
        smax = Signal(signed(SW), name="smax")
        smin = Signal(signed(SW), name="smin")
        lc = Signal(range(N + 1), name="lc")
        for j in range(2):
            m.d.comb += [lw[j].addr.eq(lc), lw[j].data.r.eq(e3r), lw[j].data.s.eq(score),
                         lw[j].en.eq(e3 & (wsel == j))]
        with m.If(e3):
            m.d.sync += [cnt.eq(cnt + 1), total.eq(total + score), lc.eq(lc + 1),
                         smax.eq(Mux((cnt == 0) | (score > smax), score, smax)),
                         smin.eq(Mux((cnt == 0) | (score < smin), score, smin))]

        # ------------------------------------------------------------ threshold and list reads
        a_abs = Signal(9, name="a_abs")
        m.d.comb += a_abs.eq(Mux(alpha < 0, -alpha, alpha))
        p1 = Signal(signed(w["p1"]), name="p1")
        p2 = Signal(signed(w["p2"]), name="p2")
        rhs = Signal(signed(w["rhs"]), name="rhs")
        cntp = Signal(NW, name="cntp")
        lcp = Signal(range(N + 1), name="lcp")
        fv = Signal(name="fv")
        ent = Signal(el, name="ent")
        for j in range(2):
            m.d.comb += lr[j].addr.eq(k)
        m.d.comb += ent.eq(Mux(rsel, lr[1].data, lr[0].data))
        lhs = Signal(signed(w["lhs"]), name="lhs")
        m.d.comb += lhs.eq((cntp * ent.s) << 8)
        passes = Signal(name="passes")
        m.d.comb += passes.eq(fv & (lhs >= rhs))
        m.d.sync += fv.eq(((st == FILT) | (st == FINAL)) & (k < lcp))

        with m.If(st == SCORE0):
            m.d.comb += [iss.eq(1), iss_row.eq(k)]
        with m.Elif(st == FILT):
            m.d.comb += [iss.eq(passes), iss_row.eq(ent.r)]
        with m.If((st == FINAL) & passes):
            m.d.sync += keep.bit_select(ent.r, 1).eq(1)

        m.d.comb += [o.payload.keep.eq(keep), o.payload.last.eq(qlast)]

        # ------------------------------------------------------------ control
        with m.Switch(st):
            with m.Case(QLOAD):
                with m.If(acc_q):
                    m.d.sync += [q[i].eq(iq.payload.data[i]) for i in range(D)]
                    m.d.sync += [qlast.eq(iq.payload.last), st.eq(SCORE0), k.eq(0), rnd.eq(0),
                                 keep.eq(0), cnt.eq(0), total.eq(0), lc.eq(0), wsel.eq(0)]
            with m.Case(SCORE0):
                with m.If(k == n - 1):
                    m.d.sync += [st.eq(DRAIN), k.eq(0)]
                with m.Else():
                    m.d.sync += k.eq(k + 1)
            with m.Case(DRAIN):
                with m.If(k == 2):
                    m.d.sync += [st.eq(THRESH), k.eq(0)]
                with m.Else():
                    m.d.sync += k.eq(k + 1)
            with m.Case(THRESH):
                with m.If(k == 0):
                    m.d.sync += [p1.eq(cnt * Mux(alpha < 0, smin, smax)),
                                 p2.eq((256 - a_abs) * total), k.eq(1)]
                with m.Else():
                    m.d.sync += [rhs.eq(a_abs * p1 + p2), cntp.eq(cnt), lcp.eq(lc), k.eq(0),
                                 cnt.eq(0), total.eq(0), lc.eq(0), rsel.eq(wsel), wsel.eq(~wsel)]
                    with m.If(rnd == R - 1):
                        m.d.sync += st.eq(FINAL)
                    with m.Else():
                        m.d.sync += [st.eq(FILT), rnd.eq(rnd + 1)]
            with m.Case(FILT):
                with m.If(k == lcp + 3):
                    m.d.sync += [st.eq(THRESH), k.eq(0)]
                with m.Else():
                    m.d.sync += k.eq(k + 1)
            with m.Case(FINAL):
                with m.If(k == lcp):
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

ENERGON_RESOURCE_RULE = (
    "estimated: one hard multiplier per int8 product (dim, as the GEMM's measured rule) plus "
    "the threshold's four wide multipliers at ceil(a/18) x ceil(b/18) 18x18 blocks each "
    "(yosys synth_ecp5 of dim 8, 16 keys: 14 MULT18X18D, as this rule); "
    "LUTs: 1 per bit of the variable shifters (2 x dim x 8 x 3), the score adder tree "
    "((dim-1) x score bits), the stats and threshold adders/comparators, 2 per key for the "
    "keep decode, plus 300 for control; FFs: every register bit; buffers: the key and two "
    "list memories")


def _dsp18(a: int, b: int) -> int:
    return -(-a // 18) * -(-b // 18)


@dataclasses.dataclass(frozen=True)
class SparseEnergonSpec(UnitSpec):
    """Parameters of a :class:`SparseEnergon`: head size ``dim``, key buffer ``max_keys`` and
    the number of filtering ``rounds``. :meth:`cycles` is :func:`energon_cycles`; alpha and
    the shifts come through ``prm``."""

    dim: int = 32
    max_keys: int = 128
    rounds: int = 2

    kind: ClassVar[str] = "sparse_energon"
    summary: ClassVar[str] = ("Energon sparse-attention filter: multi-round low-bit scores, "
                              "integer mean/max thresholds over the survivors")
    ops: ClassVar[tuple[str, ...]] = ("sparse_filter",)
    golden: ClassVar[str] = "golden.sparse.energon.EnergonFilter.mask_int"
    component: ClassVar[str] = "hw.sparse_energon.SparseEnergon"

    def __post_init__(self) -> None:
        check_int("dim", self.dim, 1, 128)
        check_int("max_keys", self.max_keys, 2, 1024)
        check_int("rounds", self.rounds, 1, MAX_ROUNDS)

    def build(self) -> SparseEnergon:
        return SparseEnergon(dim=self.dim, max_keys=self.max_keys, rounds=self.rounds)

    def cycles(self, *, keys: int, survivors: Sequence[Sequence[int]]) -> int:  # type: ignore[override]
        """:func:`energon_cycles` (``keys <= max_keys``, ``rounds`` counts per row)."""
        check_int("keys", keys, 1, self.max_keys)
        for s in survivors:
            if len(s) != self.rounds:
                raise UserValueError(f"survivors per row must hold {self.rounds} counts (one per "
                                     f"round), not {len(s)}")
        return energon_cycles(keys, survivors)

    def reference(self, q: Any, k: Any, key_mask: Any, params: dict[str, int]) -> Any:  # type: ignore[override]
        """:meth:`golden.sparse.energon.EnergonFilter.mask_int` (the keep mask)."""
        from golden.sparse.energon import EnergonFilter

        return EnergonFilter().mask_int(q, k, key_mask, params).mask

    @property
    def buffer_bits(self) -> int:
        w = energon_widths(self.dim, self.max_keys)
        return self.max_keys * (self.dim * 8 + 2 * (w["idx"] + w["score"]))

    def resources(self, family: str) -> dict[str, Any]:
        if family not in ("ecp5", "ice40", "asic"):
            raise UnitParamError(f"family must be one of ecp5, ice40, asic, not {family!r}")
        w = energon_widths(self.dim, self.max_keys)
        d, n = self.dim, self.max_keys
        dsps = (d + _dsp18(w["n"], w["score"]) + _dsp18(9, w["sum"]) + _dsp18(9, w["p1"])
                + _dsp18(w["n"], w["score"]))
        luts = (2 * d * 8 * 3 + (d - 1) * w["score"] + w["sum"] + 2 * w["score"] + w["rhs"]
                + w["lhs"] + 2 * n + 300)
        ffs = (d * (8 + 16) + n + w["sum"] + 3 * w["score"] + w["p1"] + w["p2"] + w["rhs"]
               + 6 * w["idx"] + 2 * w["n"] + 10 + 6 * self.rounds + 64)
        return {"dsps": dsps, "luts": luts, "ffs": ffs, "brams": None,
                "buffer_bits": self.buffer_bits, "estimated": True, "basis": ENERGON_RESOURCE_RULE}
