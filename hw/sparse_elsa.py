"""ELSA sparse-attention filter: sign-random-projection hashes, Hamming distance, norm-based
angle bound (Ham, Lee et al., ISCA 2021), bit for bit
:meth:`golden.sparse.elsa.ElsaFilter.mask_int`.

One *job* is one (sequence, head): its ``n`` keys, then its query rows; per query row one keep
mask comes out. Each key is held as its ``k``-bit hash, its squared norm and its ``real`` bit
in ``P`` lane buffers (key ``j`` in lane ``j mod P``, word ``j div P``) of ``max_keys / P``
words; a query row is compared with ``P`` keys per cycle.

Streams and ``prm`` as in :mod:`hw.sparse_sanger` (:func:`hw.sparse_sanger.filter_row_layout`
words on ``i_key`` and ``i_query``, one ``o_mask`` word per query row); ``prm``
(:func:`elsa_param_layout`: ``keep_all``, ``thr`` of
:meth:`~golden.sparse.elsa.ElsaFilter.int_params`) is sampled with the job's first key word.
``dim``, ``hash_bits`` and ``seed`` are elaboration constants: the projection's sign flips
and the table ``c_H |c_H|`` (:func:`golden.sparse.elsa.elsa_cos_lut`).

Hash unit (keys and queries, two cycles): the accepted word is registered; its codes are
sign-flipped by the seeded signs (constant negations) and pass ``log2 dim`` butterfly levels
``(a + b, a - b)`` of a fast Walsh-Hadamard transform (exact, ``|y| <= 127 dim``); hash bit i
= ``y_i >= 0`` for the first ``hash_bits`` outputs; in parallel ``n2 = sum x_i**2`` (``dim``
squarers and an adder tree). A key's hash, ``n2`` and ``real`` are written to its lane
buffer and a real key's ``n2`` raises the job's ``n2max``; ``R = thr * n2max`` is registered
every cycle.

Per query row, in phases (cycles in brackets, ``W = ceil(n / P)``)::

    QLOAD [1]     take the query word
    QUANT [1]     its hash into the query register
    PASS  [W+3]   per word of P keys: read; H = popcount(h_q xor h_k) per lane; est =
                  L[H] * n2 (signed, exact); keep lane iff est * 2**8 > R (or every valid
                  lane with ``keep_all``), running maximum of est over valid keys and its
                  first index
    OUT   [1]     the mask word (waits for the sink); a real row with valid keys and none
                  kept gets its first maximum-est key

Cycle model (:func:`elsa_cycles`): a job takes ``n + rows * (W + 6)`` counted cycles, counted as
in :mod:`hw.sparse_sanger` (source idling and output backpressure not counted); the edges from
the job's first input transfer to its last output transfer are that count plus the stall
edges (:func:`elsa_edges`).

``error`` (sticky): more than ``max_keys`` keys in a job (the extra keys are dropped).

Number formats: transform outputs signed ``9 + log2 dim`` bits; ``n2`` unsigned (``<= 127**2
dim``); table entries signed 18 bits (16 fraction bits); ``est`` signed; ``R`` signed 32-bit
times ``n2max``; every quantity exact, nothing rounds or saturates.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, wiring

from golden.errors import UserValueError
from golden.sparse.elsa import THR_EXTRA_BITS, elsa_cos_lut, elsa_signs
from hw.lib import check_positive, check_stalls
from hw.sparse_sanger import (
    FilterFraming,
    best_lane,
    check_filter_shape,
    filter_ports,
    filter_row_layout,
    sum_tree,
    words_of,
)
from hw.spec import UnitParamError, UnitSpec, check_int

__all__ = ["ELSA_ROW_OVERHEAD", "SparseElsa", "SparseElsaSpec", "elsa_cycles", "elsa_edges",
           "elsa_param_layout", "elsa_widths"]

#: per-row cycles besides the W-cycle pass: QLOAD 1, QUANT 1, the pass pipeline 3, OUT 1
ELSA_ROW_OVERHEAD = 6
_PASS_LAT = 3


def elsa_cycles(keys: int, rows: int, lanes: int) -> int:
    """Exact counted cycles of a job: ``keys + rows * (W + 6)``, ``W = ceil(keys / lanes)``."""
    check_positive("rows", rows)
    return keys + rows * (words_of(keys, lanes) + ELSA_ROW_OVERHEAD)


def elsa_edges(keys: int, rows: int, lanes: int, stalls: int = 0) -> int:
    """Edges from a job's first input transfer to its last output transfer, inclusive:
    :func:`elsa_cycles` plus ``stalls``."""
    return elsa_cycles(keys, rows, lanes) + check_stalls(stalls)


def elsa_param_layout() -> data.StructLayout:
    """The ``prm`` port: ``keep_all`` (1), ``thr`` (int32, ``round(t |t| 2**24)``)."""
    return data.StructLayout({"keep_all": unsigned(1), "thr": signed(32)})


def elsa_widths(dim: int, max_keys: int) -> dict[str, int]:
    """Bit widths: ``y`` (signed transform output), ``n2`` (unsigned squared norm), ``lut``
    (signed table entry), ``est`` (signed), ``r`` (signed thr * n2max), ``h`` (Hamming
    distance), ``idx`` (a key index)."""
    n2 = (127 * 127 * dim).bit_length()
    est = 18 + n2
    return {"y": 9 + (dim - 1).bit_length(), "n2": n2, "lut": 18, "est": est,
            "r": 32 + n2 + 1, "h": dim.bit_length(), "idx": max(1, (max_keys - 1).bit_length())}


def _check_hash(dim: int, hash_bits: int, seed: int) -> None:
    if dim & (dim - 1):
        raise UnitParamError(f"dim must be a power of two (ELSA's Hadamard projection), not {dim}")
    check_int("hash_bits", hash_bits, 1, dim)
    if hash_bits & (hash_bits - 1):
        raise UnitParamError(f"hash_bits must be a power of two in [1, {dim}], not {hash_bits}")
    check_int("seed", seed, 0, 2 ** 31 - 1)


class SparseElsa(wiring.Component):
    """The ELSA filter (module docstring) for heads of ``dim`` values, ``hash_bits``-bit hashes
    (projection signs from ``seed``) and up to ``max_keys`` keys, ``lanes`` keys per cycle.

    Interface: ``prm`` In(:func:`elsa_param_layout`); ``i_key``/``i_query`` In(stream of
    :func:`hw.sparse_sanger.filter_row_layout`); ``o_mask`` Out(stream of {keep: max_keys
    bits, last}); ``busy``, ``cycles`` (32), ``error`` Out.
    """

    def __init__(self, *, dim: int, max_keys: int, lanes: int, hash_bits: int | None = None,
                 seed: int = 0) -> None:
        hash_bits = dim if hash_bits is None else hash_bits
        try:
            check_filter_shape(dim, max_keys, lanes)
            _check_hash(dim, hash_bits, seed)
        except UnitParamError as e:
            raise UserValueError(str(e)) from None
        self._dim, self._max_keys, self._lanes = dim, max_keys, lanes
        self._hash_bits, self._seed = hash_bits, seed
        self._w = elsa_widths(dim, max_keys)
        super().__init__(filter_ports(elsa_param_layout(), filter_row_layout(dim), max_keys))

    def elaborate(self, platform) -> Module:
        m = Module()
        d, n_max, p, kb, w = self._dim, self._max_keys, self._lanes, self._hash_bits, self._w
        depth = n_max // p
        lp = (p - 1).bit_length()
        fr = FilterFraming(m, self, n_max, p)
        phase, adv, prm = fr.phase, fr.adv, fr.prm
        o = self.o_mask
        k = Signal(range(depth + 8), name="k")

        # ------------------------------------------------------------ hash unit (2 cycles)
        signs = elsa_signs(d, self._seed)
        st1_x = [Signal(signed(8), name=f"st1_x{i}") for i in range(d)]
        st1_v, st1_key, st1_real, st1_over = (Signal(name=f"st1_{nm}") for nm in ("v", "key", "real", "over"))
        st1_idx = Signal(w["idx"], name="st1_idx")
        is_key = Signal(name="is_key")
        m.d.comb += is_key.eq(phase == fr.KEY)
        x_sel = Signal(data.ArrayLayout(signed(8), d), name="x_sel")
        m.d.comb += x_sel.eq(Mux(is_key, self.i_key.payload.data.as_value(),
                                 self.i_query.payload.data.as_value()))
        with m.If(adv):
            m.d.sync += [st1_v.eq(fr.acc_k | fr.acc_q), st1_key.eq(fr.acc_k),
                         st1_real.eq(Mux(is_key, self.i_key.payload.real, self.i_query.payload.real)),
                         st1_over.eq(fr.over & ~fr.first), st1_idx.eq(Mux(fr.first, 0, fr.nk))]
            m.d.sync += [st1_x[i].eq(x_sel[i]) for i in range(d)]
        y = []
        for i in range(d):
            yi = Signal(signed(9), name=f"fl{i}")
            m.d.comb += yi.eq(st1_x[i] if signs[i] > 0 else -st1_x[i])
            y.append(yi)
        h, lvl = 1, 0
        while h < d:
            lvl += 1
            nxt = [Signal(signed(9 + lvl), name=f"wh{lvl}_{i}") for i in range(d)]
            for i in range(0, d, 2 * h):
                for j in range(i, i + h):
                    m.d.comb += [nxt[j].eq(y[j] + y[j + h]), nxt[j + h].eq(y[j] - y[j + h])]
            y, h = nxt, 2 * h
        hbits = Signal(kb, name="hash")
        m.d.comb += hbits.eq(Cat(~(y[i] < 0) for i in range(kb)))
        n2 = Signal(unsigned(w["n2"]), name="n2_in")
        m.d.comb += n2.eq(sum_tree([st1_x[i] * st1_x[i] for i in range(d)]))
        kshape = data.StructLayout({"h": unsigned(kb), "n2": unsigned(w["n2"]), "real": unsigned(1)})
        kw, kr = [], []
        for c in range(p):
            mem = memory.Memory(shape=kshape, depth=max(depth, 2), init=[])
            m.submodules[f"kbuf{c}"] = mem
            kw.append(mem.write_port())
            kr.append(mem.read_port())
        lane = st1_idx[0:lp] if lp else Const(0, 1)
        for c in range(p):
            m.d.comb += [kw[c].addr.eq(st1_idx >> lp),
                         kw[c].en.eq(adv & st1_v & st1_key & ~st1_over & (lane == c)),
                         kw[c].data.h.eq(hbits), kw[c].data.n2.eq(n2), kw[c].data.real.eq(st1_real)]
        n2max = Signal(unsigned(w["n2"]), name="n2max")
        with m.If(fr.first):
            m.d.sync += n2max.eq(0)
        with m.Elif(adv & st1_v & st1_key & ~st1_over & st1_real & (n2 > n2max)):
            m.d.sync += n2max.eq(n2)
        r = Signal(signed(w["r"]), name="r")
        m.d.sync += r.eq(prm.thr * n2max)
        hq = Signal(kb, name="hq")
        qreal, qlast = Signal(name="qreal"), Signal(name="qlast")
        with m.If(adv & st1_v & ~st1_key):
            m.d.sync += [hq.eq(hbits), qreal.eq(st1_real)]
        with m.If(fr.acc_q):
            m.d.sync += qlast.eq(self.i_query.payload.last)

        # ------------------------------------------------------------ PASS
        for c in range(p):
            m.d.comb += [kr[c].addr.eq(k), kr[c].en.eq(adv)]
        lut = Array(Const(v, signed(w["lut"])) for v in elsa_cos_lut(d, kb, self._seed))
        r_v, a_v, b_v = (Signal(name=f"{nm}_v") for nm in ("r", "a", "b"))
        r_w, a_w, b_w = (Signal(range(max(depth, 2)), name=f"{nm}_w") for nm in ("r", "a", "b"))
        ham = [Signal(range(kb + 1), name=f"ham{c}") for c in range(p)]
        an2 = [Signal(unsigned(w["n2"]), name=f"an2_{c}") for c in range(p)]
        est = [Signal(signed(w["est"]), name=f"est{c}") for c in range(p)]
        lv = {nm: [Signal(name=f"{nm}_lv{c}") for c in range(p)] for nm in ("a", "b")}
        with m.If(adv):
            m.d.sync += [r_v.eq((phase == fr.P1) & (k < fr.nw)), r_w.eq(k),
                         a_v.eq(r_v), a_w.eq(r_w), b_v.eq(a_v), b_w.eq(a_w)]
            for c in range(p):
                key = kr[c].data
                diff = Signal(kb, name=f"hdiff{c}")
                m.d.comb += diff.eq(hq ^ key.h)
                m.d.sync += [ham[c].eq(sum_tree([diff[i] for i in range(kb)])), an2[c].eq(key.n2),
                             lv["a"][c].eq(key.real & (Cat(Const(c, lp), r_w) < fr.nk)
                                           if lp else key.real & (r_w < fr.nk)),
                             est[c].eq(lut[ham[c]] * an2[c]), lv["b"][c].eq(lv["a"][c])]
        keep = Signal(n_max, name="keep")
        kept = Signal(name="kept")
        bits = Signal(p, name="keep_bits")
        for c in range(p):
            m.d.comb += bits[c].eq(lv["b"][c] & qreal & (prm.keep_all | ((est[c] << THR_EXTRA_BITS) > r)))
        best = Signal(signed(w["est"]), name="best")
        amax = Signal(w["idx"], name="amax")
        have = Signal(name="have")
        any_v, wbest, wlane = best_lane(est, lv["b"], lambda x1, x0: x1 > x0)
        with m.If(adv & b_v):
            m.d.sync += keep.word_select(b_w, p).eq(bits)
            with m.If(bits.any()):
                m.d.sync += kept.eq(1)
            with m.If(any_v & (~have | (wbest > best))):
                m.d.sync += [best.eq(wbest), have.eq(1),
                             amax.eq(Cat(wlane[0:lp], b_w) if lp else b_w)]

        # ------------------------------------------------------------ output
        fallback = Signal(n_max, name="fallback")
        m.d.comb += fallback.eq(Mux(~kept & qreal & have, Const(1, n_max) << amax, 0))
        m.d.comb += [o.payload.keep.eq(keep | fallback), o.payload.last.eq(qlast)]

        # ------------------------------------------------------------ control
        with m.If(adv):
            with m.Switch(phase):
                with m.Case(fr.QLOAD):
                    with m.If(fr.acc_q):
                        m.d.sync += [phase.eq(fr.QUANT), keep.eq(0), kept.eq(0), have.eq(0)]
                with m.Case(fr.QUANT):
                    m.d.sync += [phase.eq(fr.P1), k.eq(0)]
                with m.Case(fr.P1):
                    with m.If(k == fr.nw + _PASS_LAT - 1):
                        m.d.sync += [phase.eq(fr.OUT), k.eq(0)]
                    with m.Else():
                        m.d.sync += k.eq(k + 1)
                with m.Case(fr.OUT):
                    m.d.sync += phase.eq(Mux(qlast, fr.KEY, fr.QLOAD))
        return m


ELSA_RESOURCE_RULE = (
    "estimated, not placed: fitted to yosys synth_ecp5 cell counts of four configurations "
    "(max_keys 16, hash_bits = dim, dim 8/16 x lanes 2/4; LUTs = LUT4 + 2 x CCU2C; within 3 %): "
    "LUTs = 26 d log2(d) (sign flips, butterflies, squared-norm tree) + 282 P (per lane: xor, "
    "popcount, table, compare, max tree) + 2 max_keys + 136; FFs = 1.5 P d + 70.5 P + 9.4 d + "
    "max_keys + 208; DSPs (MULT18X18D) = d (the squarers) + (P + 2) x ceil(n2 / 18) (L[H] x n2 "
    "per lane, thr x n2max). The key buffer (max_keys x (hash_bits + n2 + 1) bits) is LUT RAM "
    "(DPR16X4) at these depths; asic: buffer_bits")


@dataclasses.dataclass(frozen=True)
class SparseElsaSpec(UnitSpec):
    """Parameters of a :class:`SparseElsa`: head size ``dim`` (a power of two), ``hash_bits``
    (a power of two <= dim; 0 means ``dim``), the projection ``seed``, the key buffer
    ``max_keys`` and ``lanes`` keys per cycle (a power of two dividing ``max_keys``).
    :meth:`cycles` is :func:`elsa_cycles`; the run-time constants come through ``prm``."""

    dim: int = 32
    max_keys: int = 128
    lanes: int = 4
    hash_bits: int = 0
    seed: int = 0

    kind: ClassVar[str] = "sparse_elsa"
    summary: ClassVar[str] = ("ELSA sparse-attention filter: Hadamard sign-projection hashes, "
                              "Hamming distance, squared-norm angle bound")
    ops: ClassVar[tuple[str, ...]] = ("sparse_filter",)
    golden: ClassVar[str] = "golden.sparse.elsa.ElsaFilter.mask_int"
    component: ClassVar[str] = "hw.sparse_elsa.SparseElsa"

    def __post_init__(self) -> None:
        check_filter_shape(self.dim, self.max_keys, self.lanes)
        check_int("hash_bits", self.hash_bits, 0, self.dim)
        _check_hash(self.dim, self.bits, self.seed)

    @property
    def bits(self) -> int:
        """The hash width (``hash_bits``, or ``dim`` for 0)."""
        return self.hash_bits or self.dim

    def build(self) -> SparseElsa:
        return SparseElsa(dim=self.dim, max_keys=self.max_keys, lanes=self.lanes,
                          hash_bits=self.bits, seed=self.seed)

    def cycles(self, *, keys: int, rows: int) -> int:  # type: ignore[override]
        """:func:`elsa_cycles` (``keys <= max_keys``)."""
        check_int("keys", keys, 1, self.max_keys)
        check_int("rows", rows, 1, None)
        return elsa_cycles(keys, rows, self.lanes)

    def reference(self, q: Any, k: Any, key_mask: Any, params: dict[str, int]) -> Any:  # type: ignore[override]
        """:meth:`golden.sparse.elsa.ElsaFilter.mask_int` with this hash width and seed."""
        from golden.sparse.elsa import ElsaFilter

        return ElsaFilter(hash_bits=self.bits, seed=self.seed).mask_int(q, k, key_mask, params).mask

    @property
    def buffer_bits(self) -> int:
        return self.max_keys * (self.bits + elsa_widths(self.dim, self.max_keys)["n2"] + 1)

    def resources(self, family: str) -> dict[str, Any]:
        if family not in ("ecp5", "ice40", "asic"):
            raise UnitParamError(f"family must be one of ecp5, ice40, asic, not {family!r}")
        d, p, n = self.dim, self.lanes, self.max_keys
        lg = (d - 1).bit_length()
        m18 = -(-elsa_widths(d, n)["n2"] // 18)
        luts = 26 * d * lg + 282 * p + 2 * n + 136
        ffs = round(1.5 * p * d + 70.5 * p + 9.4 * d) + n + 208
        return {"dsps": d + (p + 2) * m18, "luts": luts, "ffs": ffs, "brams": None,
                "buffer_bits": self.buffer_bits, "estimated": True, "basis": ELSA_RESOURCE_RULE}
