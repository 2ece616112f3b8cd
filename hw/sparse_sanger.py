"""Sanger sparse-attention filter: b-bit score prediction and probability threshold (Lu et al.,
MICRO 2021), bit for bit :meth:`golden.sparse.sanger.SangerFilter.mask_int`.

One *job* is one (sequence, head): its ``n`` keys, then its query rows; per query row one keep
mask comes out. The keys are held as b-bit row codes in ``P`` lane buffers (key ``j`` in lane
``j mod P``, word ``j div P``) of ``max_keys / P`` words; a query row is compared with ``P``
keys per cycle.

Streams, in the order the unit takes them (each is ready only in its phase)::

    i_key   n words: a key row (dim int8 codes), ``real`` (0: a padding key, never kept and
            not in the row maximum), ``last`` on key n-1
    i_query the query rows (dim int8 codes), ``real`` (0: a padding query row, whose mask
            is empty), ``last`` on the job's final row
    o_mask  per query row: ``keep`` (bit j = key j is kept; bits >= n are 0), ``last`` on
            the job's final row

``prm`` (:func:`sanger_param_layout`: ``keep_all``, ``thr``, ``mult``, ``shift`` of
:meth:`~golden.sparse.sanger.SangerFilter.int_params`) is sampled with the job's first key
word. ``bits`` (the prediction width b) is an elaboration constant.

Row codes (keys and queries, one shared two-cycle quantizer): the OR of the row's ``|x|``
gives the bit length ``L`` of its maximum, ``s = max(0, L - (b - 1))``, and every code is
``clamp(rne(x / 2**s), +-(2**(b-1) - 1))`` (rounding right shift half to even). Keys are
written to their lane buffer with ``s`` and ``real``.

Per query row, in phases (cycles in brackets, ``W = ceil(n / P)``)::

    QLOAD [1]     take the query word
    QUANT [1]     its codes and shift into the query register
    DOT   [W+5]   per word of P keys: read; d products per lane (registered); adder tree D;
                  D * mult; z = (D * mult << (sq + sk)) >> shift (arithmetic); z and the
                  lane's valid bit into the z buffer, running maximum and its first index
    SUM   [W+4]   per word: read z; x = zmax - z; LUT index x[2:8], u = x[8:12], x >= 2**12;
                  e = 0 or LUT >> u (15 fraction bits); S += sum of the lanes' e
    KEEP  [W+4]   the same pipeline again; keep lane iff e * 2**16 > thr * S (``thr * S``
                  registered once S is final), or every valid lane with ``keep_all``
    OUT   [1]     the mask word (waits for the sink); a real row with valid keys and none
                  kept gets its first maximum-z key (only possible when ``thr * S >= 2**31``)

Cycle model (:func:`sanger_cycles`): a job takes ``n + rows * (3W + 16)`` counted cycles;
``cycles`` restarts with the job's first key word and counts every cycle in which the unit
took a word or worked (the output cycle only when the word is taken), so source idling and
output backpressure are not counted (the unit freezes while ``o_mask`` is refused). Seen at the
ports, the edges from the job's first input transfer to its last output transfer are that
count plus the stall edges: an input stream ready and not valid, or ``o_mask`` valid and not
ready (:func:`sanger_edges`).

``error`` (sticky): more than ``max_keys`` keys in a job (the extra keys are dropped).

Number formats: codes b bits; products 2b bits; ``D`` signed, ``|D| <= dim (2**(b-1)-1)**2``;
``D * mult`` and its shifted value exact (widths from the bounds, :func:`sanger_widths`);
``x`` unsigned; ``e`` uint16 (<= 2**15); ``S`` exact; nothing rounds or saturates after the
row codes except the floor of the logit shift.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.errors import UserValueError
from golden.sparse.base import exp2_neg_fixed
from golden.sparse.sanger import ALLOWED_BITS, MAX_SHIFT, MULT_BITS, THRESH_FRAC_BITS
from hw.lib import check_positive, check_stalls
from hw.spec import UnitParamError, UnitSpec, check_int

__all__ = ["SANGER_ROW_OVERHEAD", "FilterFraming", "SparseSanger", "SparseSangerSpec", "best_lane",
           "check_filter_shape", "code_product", "exp2_lut", "filter_row_layout", "sum_tree",
           "sanger_cycles", "sanger_edges", "sanger_param_layout", "sanger_widths", "words_of"]

#: per-row cycles besides the three W-cycle passes: QLOAD 1, QUANT 1, DOT pipeline 5, SUM and
#: KEEP pipelines 4 each, OUT 1
SANGER_ROW_OVERHEAD = 16
_DOT_LAT = 5
_E_LAT = 4


def words_of(keys: int, lanes: int) -> int:
    """Key words of a job of ``keys`` keys on ``lanes`` lanes: ``ceil(keys / lanes)``."""
    return -(-check_positive("keys", keys) // check_positive("lanes", lanes))


def sanger_cycles(keys: int, rows: int, lanes: int) -> int:
    """Exact counted cycles of a job: ``keys + rows * (3W + 16)``, ``W = ceil(keys / lanes)``."""
    check_positive("rows", rows)
    return keys + rows * (3 * words_of(keys, lanes) + SANGER_ROW_OVERHEAD)


def sanger_edges(keys: int, rows: int, lanes: int, stalls: int = 0) -> int:
    """Edges from a job's first input transfer to its last output transfer, inclusive:
    :func:`sanger_cycles` plus ``stalls`` (module docstring)."""
    return sanger_cycles(keys, rows, lanes) + check_stalls(stalls)


def sanger_param_layout() -> data.StructLayout:
    """The ``prm`` port: ``keep_all`` (1), ``thr`` (uint17, 16 fraction bits), ``mult`` (uint16),
    ``shift`` (uint6)."""
    return data.StructLayout({"keep_all": unsigned(1), "thr": unsigned(THRESH_FRAC_BITS + 1),
                              "mult": unsigned(MULT_BITS), "shift": unsigned(6)})


def filter_row_layout(dim: int) -> data.StructLayout:
    """A key or query word: ``data`` (dim int8 codes), ``real``, ``last``."""
    return data.StructLayout({"data": data.ArrayLayout(signed(8), dim), "real": unsigned(1),
                              "last": unsigned(1)})


def filter_ports(prm: data.StructLayout, row: data.StructLayout, max_keys: int,
                 extra: dict | None = None) -> dict:
    """The members of a sparse filter's signature: ``prm`` (its run-time constants),
    ``i_key``, the filter's ``extra`` inputs, ``i_query`` (both streams of ``row``), ``o_mask`` (one ``max_keys``-bit keep mask per query, ``last`` on a head's final query) and
    the ``busy``/``cycles``/``error`` status outputs."""
    return {"prm": In(prm), "i_key": In(stream.Signature(row)), **(extra or {}),
            "i_query": In(stream.Signature(row)),
            "o_mask": Out(stream.Signature(data.StructLayout({
                "keep": unsigned(max_keys), "last": unsigned(1)}))),
            "busy": Out(1), "cycles": Out(32), "error": Out(1)}


def exp2_lut() -> list[int]:
    """The 64 entries of :func:`golden.sparse.base.exp2_neg_fixed`'s table (15 fraction bits)."""
    return [int(v) for v in exp2_neg_fixed(torch.arange(64, dtype=torch.int64) * 4, 8).tolist()]


def sanger_widths(dim: int, bits: int, max_keys: int) -> dict[str, int]:
    """Bit widths: ``s`` (row shift, 0..8-b), ``dot`` (signed D), ``prod`` (signed D * mult),
    ``z`` (signed logit after ``<< (sq + sk)``), ``x`` (unsigned zmax - z), ``sum`` (S),
    ``ts`` (thr * S), ``idx`` (a key index), ``n`` (a key count)."""
    top = 2 ** (bits - 1) - 1
    smax = 8 - bits
    dot = (dim * top * top).bit_length() + 1
    prod = dot + MULT_BITS
    z = prod + 2 * smax
    ssum = (max_keys * 2 ** 15).bit_length()
    return {"s": max(1, smax.bit_length()), "dot": dot, "prod": prod, "z": z, "x": z + 1,
            "sum": ssum, "ts": ssum + THRESH_FRAC_BITS + 1, "idx": max(1, (max_keys - 1).bit_length()),
            "n": max_keys.bit_length()}


def check_filter_shape(dim: int, max_keys: int, lanes: int) -> None:
    check_int("dim", dim, 1, 256)
    check_int("lanes", lanes, 1, 64)
    check_int("max_keys", max_keys, 1, 4096)
    if lanes & (lanes - 1):
        raise UnitParamError(f"lanes must be a power of two, not {lanes}")
    if max_keys % lanes:
        raise UnitParamError(f"lanes={lanes} must divide max_keys={max_keys}")


def best_lane(vals: list, valid: list, better) -> tuple:
    """Pairwise tree over lanes in order: ``(any valid, best value, its lane)``, the lowest lane
    among equals (``better(b, a)`` strict)."""
    items = [(v, x, Const(c, 8)) for c, (v, x) in enumerate(zip(valid, vals, strict=True))]
    while len(items) > 1:
        nxt = []
        for a in range(0, len(items) - 1, 2):
            (va, xa, ca), (vb, xb, cb) = items[a], items[a + 1]
            take = vb & (~va | better(xb, xa))
            nxt.append((va | vb, Mux(take, xb, xa), Mux(take, cb, ca)))
        if len(items) % 2:
            nxt.append(items[-1])
        items = nxt
    return items[0]


def code_product(a: Any, c: Any, bits: int) -> Any:
    """``a * c`` of two signed ``bits``-bit codes. Up to 4 bits as shift-and-add (``bits - 1``
    partial products and the sign bit's), so synthesis keeps these small products in LUTs
    instead of spending a hard multiplier on each; wider codes multiply."""
    if bits > 4:
        return a * c
    terms = [Mux(c[j], a << j, 0) for j in range(bits - 1)]
    return sum_tree(terms) - Mux(c[bits - 1], a << (bits - 1), 0)


def sum_tree(vals: list) -> Any:
    while len(vals) > 1:
        vals = [vals[i] + vals[i + 1] if i + 1 < len(vals) else vals[i] for i in range(0, len(vals), 2)]
    return vals[0]


class FilterFraming:
    """The job framing shared by the Sanger and ELSA filters, built into module ``m``.

    Phases ``KEY`` (taking key words) and ``QLOAD`` (waiting for a query word) wait for the
    source; ``OUT`` offers the mask word; the unit's own phases lie in between. ``adv`` is low
    only while ``o_mask`` is refused (everything freezes). Drives ``i_key.ready``,
    ``i_query.ready``, ``busy``, ``cycles`` (restarting with the job's first key word) and
    ``error`` (a key beyond ``max_keys``); keeps the key count ``nk`` and the latched ``prm``.
    """

    KEY, QLOAD, QUANT, P1, P2, P3, OUT = range(7)

    def __init__(self, m: Module, comp, max_keys: int, lanes: int) -> None:
        self.phase = phase = Signal(3, name="phase")
        self.adv = adv = Signal(name="adv")
        o = comp.o_mask
        m.d.comb += [adv.eq(~(o.valid & ~o.ready)), o.valid.eq(phase == self.OUT)]
        m.d.comb += [comp.i_key.ready.eq(adv & (phase == self.KEY)),
                     comp.i_query.ready.eq(adv & (phase == self.QLOAD))]
        self.acc_k = acc_k = Signal(name="acc_k")
        self.acc_q = acc_q = Signal(name="acc_q")
        m.d.comb += [acc_k.eq(comp.i_key.valid & comp.i_key.ready),
                     acc_q.eq(comp.i_query.valid & comp.i_query.ready)]
        self.first = first = Signal(name="first")
        m.d.comb += first.eq(acc_k & ~comp.busy)
        self.sent = sent = Signal(name="sent")
        m.d.comb += sent.eq(o.valid & o.ready)
        waiting = (phase == self.KEY) | (phase == self.QLOAD)
        with m.If(first):
            m.d.sync += [comp.cycles.eq(1), comp.busy.eq(1)]
        with m.Elif(adv & (acc_k | acc_q | ~waiting)):
            m.d.sync += comp.cycles.eq(comp.cycles + 1)
        with m.If(sent & o.payload.last):
            m.d.sync += comp.busy.eq(0)
        # key count (saturating at max_keys) and key words W = ceil(nk / P)
        self.nk = nk = Signal(range(max_keys + 1), name="nk")
        self.over = over = Signal(name="over")
        m.d.comb += over.eq(nk == max_keys)
        lp = (lanes - 1).bit_length()
        self.nw = nw = Signal(range(max_keys // lanes + 1), name="nw")
        m.d.comb += nw.eq((nk + lanes - 1) >> lp)
        with m.If(acc_k):
            with m.If(first):
                m.d.sync += nk.eq(1)
            with m.Elif(over):
                m.d.sync += comp.error.eq(1)
            with m.Else():
                m.d.sync += nk.eq(nk + 1)
            with m.If(comp.i_key.payload.last):
                m.d.sync += phase.eq(self.QLOAD)
        with m.If(sent & o.payload.last):
            m.d.sync += nk.eq(0)
        self.prm = prm = Signal(comp.prm.shape(), name="prm_r")
        with m.If(first):
            m.d.sync += prm.eq(comp.prm)


class SparseSanger(wiring.Component):
    """The Sanger filter (module docstring) for heads of ``dim`` values and up to ``max_keys``
    keys, ``lanes`` keys per cycle, ``bits``-bit prediction.

    Interface: ``prm`` In(:func:`sanger_param_layout`); ``i_key``/``i_query``
    In(stream of :func:`filter_row_layout`); ``o_mask`` Out(stream of {keep: max_keys bits,
    last}); ``busy``, ``cycles`` (32), ``error`` Out.
    """

    def __init__(self, *, dim: int, max_keys: int, lanes: int, bits: int = 4) -> None:
        try:
            check_filter_shape(dim, max_keys, lanes)
        except UnitParamError as e:
            raise UserValueError(str(e)) from None
        if bits not in ALLOWED_BITS:
            raise UserValueError(f"bits must be one of {ALLOWED_BITS}, not {bits!r}")
        self._dim, self._max_keys, self._lanes, self._bits = dim, max_keys, lanes, bits
        self._w = sanger_widths(dim, bits, max_keys)
        super().__init__(filter_ports(sanger_param_layout(), filter_row_layout(dim), max_keys))

    def elaborate(self, platform) -> Module:
        m = Module()
        d, n_max, p, b, w = self._dim, self._max_keys, self._lanes, self._bits, self._w
        depth = n_max // p
        lp = (p - 1).bit_length()
        top = 2 ** (b - 1) - 1
        smax = 8 - b
        fr = FilterFraming(m, self, n_max, p)
        phase, adv, prm = fr.phase, fr.adv, fr.prm
        o = self.o_mask
        k = Signal(range(depth + 8), name="k")

        # ------------------------------------------------------------ row quantizer (2 cycles)
        # stage 1: the accepted word; its row shift from the OR of |x| (bit length of the max)
        is_key = Signal(name="is_key")
        m.d.comb += is_key.eq(phase == fr.KEY)
        x_sel = Signal(data.ArrayLayout(signed(8), d), name="x_sel")
        m.d.comb += x_sel.eq(Mux(is_key, self.i_key.payload.data.as_value(),
                                 self.i_query.payload.data.as_value()))
        x_in = [x_sel[i] for i in range(d)]
        real_in = Mux(is_key, self.i_key.payload.real, self.i_query.payload.real)
        mag_or = 0
        for i, xi in enumerate(x_in):
            ax = Signal(7, name=f"abs{i}")
            m.d.comb += ax.eq(Mux(xi[7], -xi, xi))
            mag_or = mag_or | ax
        mag = Signal(7, name="mag")
        m.d.comb += mag.eq(mag_or)
        length = Signal(range(8), name="len_in")
        for bl in range(1, 8):
            with m.If(mag[bl - 1]):
                m.d.comb += length.eq(bl)
        s_in = Signal(w["s"], name="s_in")
        m.d.comb += s_in.eq(Mux(length > b - 1, length - (b - 1), 0))
        st1_x = [Signal(signed(8), name=f"st1_x{i}") for i in range(d)]
        st1_s = Signal(w["s"], name="st1_s")
        st1_v, st1_key, st1_real, st1_over = (Signal(name=f"st1_{nm}") for nm in ("v", "key", "real", "over"))
        st1_idx = Signal(w["idx"], name="st1_idx")
        with m.If(adv):
            m.d.sync += [st1_v.eq(fr.acc_k | fr.acc_q), st1_key.eq(fr.acc_k), st1_real.eq(real_in),
                         st1_s.eq(s_in), st1_over.eq(fr.over & ~fr.first),
                         st1_idx.eq(Mux(fr.first, 0, fr.nk))]
            m.d.sync += [st1_x[i].eq(x_in[i]) for i in range(d)]
        # stage 2: codes = clamp(rne(x / 2**s)) (a mux over the possible shifts)
        codes = []
        for i in range(d):
            xi = st1_x[i]
            c = Signal(signed(9), name=f"rne{i}")
            with m.Switch(st1_s):
                for sv in range(1, smax + 1):
                    with m.Case(sv):
                        m.d.comb += c.eq((xi + (2 ** (sv - 1) - 1) + xi[sv]) >> sv)
                with m.Default():
                    m.d.comb += c.eq(xi)
            cl = Signal(signed(b), name=f"code{i}")
            m.d.comb += cl.eq(Mux(c > top, top, Mux(c < -top, -top, c)))
            codes.append(cl)
        kshape = data.StructLayout({"c": data.ArrayLayout(signed(b), d), "s": unsigned(w["s"]),
                                    "real": unsigned(1)})
        kbuf, kw, kr = [], [], []
        for c in range(p):
            mem = memory.Memory(shape=kshape, depth=max(depth, 2), init=[])
            m.submodules[f"kbuf{c}"] = mem
            kbuf.append(mem)
            kw.append(mem.write_port())
            kr.append(mem.read_port())
        lane = st1_idx[0:lp] if lp else Const(0, 1)
        for c in range(p):
            m.d.comb += [kw[c].addr.eq(st1_idx >> lp),
                         kw[c].en.eq(adv & st1_v & st1_key & ~st1_over & (lane == c)),
                         kw[c].data.s.eq(st1_s), kw[c].data.real.eq(st1_real)]
            m.d.comb += [kw[c].data.c[i].eq(codes[i]) for i in range(d)]
        qc = [Signal(signed(b), name=f"qc{i}") for i in range(d)]
        qs = Signal(w["s"], name="qs")
        qreal, qlast = Signal(name="qreal"), Signal(name="qlast")
        with m.If(adv & st1_v & ~st1_key):
            m.d.sync += [qc[i].eq(codes[i]) for i in range(d)]
            m.d.sync += [qs.eq(st1_s), qreal.eq(st1_real)]
        with m.If(fr.acc_q):
            m.d.sync += qlast.eq(self.i_query.payload.last)

        # ------------------------------------------------------------ DOT pass
        for c in range(p):
            m.d.comb += [kr[c].addr.eq(k), kr[c].en.eq(adv)]
        r_v, r_w = Signal(name="r_v"), Signal(range(max(depth, 2)), name="r_w")
        a_v, b_v, c_v, d_v = (Signal(name=f"{nm}_v") for nm in ("a", "b", "c", "d"))
        a_w, b_w, c_w, d_w = (Signal(range(max(depth, 2)), name=f"{nm}_w") for nm in ("a", "b", "c", "d"))
        prods = [[Signal(signed(2 * b), name=f"pr{c}_{i}") for i in range(d)] for c in range(p)]
        lv = {nm: [Signal(name=f"{nm}_lv{c}") for c in range(p)] for nm in ("a", "b", "c", "d")}
        ls = {nm: [Signal(w["s"], name=f"{nm}_ks{c}") for c in range(p)] for nm in ("a", "b")}
        dot = [Signal(signed(w["dot"]), name=f"dot{c}") for c in range(p)]
        prod = [Signal(signed(w["prod"]), name=f"mprod{c}") for c in range(p)]
        esh = [Signal(range(2 * smax + 1), name=f"esh{c}") for c in range(p)]
        z = [Signal(signed(w["z"]), name=f"z{c}") for c in range(p)]
        with m.If(adv):
            m.d.sync += [r_v.eq((phase == fr.P1) & (k < fr.nw)), r_w.eq(k)]
            m.d.sync += [a_v.eq(r_v), a_w.eq(r_w), b_v.eq(a_v), b_w.eq(a_w), c_v.eq(b_v), c_w.eq(b_w),
                         d_v.eq(c_v), d_w.eq(c_w)]
            for c in range(p):
                key = kr[c].data
                m.d.sync += [prods[c][i].eq(code_product(qc[i], key.c[i], b)) for i in range(d)]
                m.d.sync += [lv["a"][c].eq(key.real & (Cat(Const(c, lp), r_w) < fr.nk)
                                           if lp else key.real & (r_w < fr.nk)),
                             ls["a"][c].eq(key.s),
                             dot[c].eq(sum_tree(list(prods[c]))), lv["b"][c].eq(lv["a"][c]),
                             ls["b"][c].eq(ls["a"][c]),
                             prod[c].eq(dot[c] * prm.mult), esh[c].eq(qs + ls["b"][c]),
                             lv["c"][c].eq(lv["b"][c]),
                             z[c].eq((prod[c] << esh[c]) >> prm.shift), lv["d"][c].eq(lv["c"][c])]
        zshape = data.ArrayLayout(data.StructLayout({"z": signed(w["z"]), "v": unsigned(1)}), p)
        m.submodules.zbuf = zbuf = memory.Memory(shape=zshape, depth=max(depth, 2), init=[])
        zw, zr = zbuf.write_port(), zbuf.read_port()
        m.d.comb += [zw.addr.eq(d_w), zw.en.eq(adv & d_v)]
        for c in range(p):
            m.d.comb += [zw.data[c].z.eq(z[c]), zw.data[c].v.eq(lv["d"][c])]
        # running maximum over valid keys and its first index
        zmax = Signal(signed(w["z"]), name="zmax")
        amax = Signal(w["idx"], name="amax")
        have = Signal(name="have")
        any_v, best, blane = best_lane(z, lv["d"], lambda x1, x0: x1 > x0)
        with m.If(adv & d_v & any_v & (~have | (best > zmax))):
            m.d.sync += [zmax.eq(best), have.eq(1),
                         amax.eq(Cat(blane[0:lp], d_w) if lp else d_w)]

        # ------------------------------------------------------------ SUM / KEEP passes
        lut = Array(Const(v, unsigned(16)) for v in exp2_lut())
        m.d.comb += [zr.addr.eq(k), zr.en.eq(adv)]
        er_v, ea_v, eb_v, ec_v = (Signal(name=f"e{nm}_v") for nm in ("r", "a", "b", "c"))
        er_w, ea_w, eb_w, ec_w = (Signal(range(max(depth, 2)), name=f"e{nm}_w") for nm in ("r", "a", "b", "c"))
        ex = [Signal(unsigned(w["x"]), name=f"ex{c}") for c in range(p)]
        elut = [Signal(unsigned(16), name=f"elut{c}") for c in range(p)]
        eu = [Signal(4, name=f"eu{c}") for c in range(p)]
        ebig = [Signal(name=f"ebig{c}") for c in range(p)]
        ee = [Signal(unsigned(16), name=f"e{c}") for c in range(p)]
        elv = {nm: [Signal(name=f"e{nm}_lv{c}") for c in range(p)] for nm in ("a", "b", "c")}
        with m.If(adv):
            m.d.sync += [er_v.eq(((phase == fr.P2) | (phase == fr.P3)) & (k < fr.nw)), er_w.eq(k)]
            m.d.sync += [ea_v.eq(er_v), ea_w.eq(er_w), eb_v.eq(ea_v), eb_w.eq(ea_w),
                         ec_v.eq(eb_v), ec_w.eq(eb_w)]
            for c in range(p):
                m.d.sync += [ex[c].eq(zmax - zr.data[c].z), elv["a"][c].eq(zr.data[c].v),
                             elut[c].eq(lut[ex[c][2:8]]), eu[c].eq(ex[c][8:12]),
                             ebig[c].eq(ex[c][12:].any()), elv["b"][c].eq(elv["a"][c]),
                             ee[c].eq(Mux(ebig[c] | ~elv["b"][c], 0, elut[c] >> eu[c])),
                             elv["c"][c].eq(elv["b"][c])]
        total = Signal(unsigned(w["sum"]), name="sum")
        ts = Signal(unsigned(w["ts"]), name="ts")
        m.d.sync += ts.eq(prm.thr * total)
        keep = Signal(n_max, name="keep")
        kept = Signal(name="kept")
        bits = Signal(p, name="keep_bits")
        for c in range(p):
            m.d.comb += bits[c].eq(elv["c"][c] & qreal & (prm.keep_all | ((ee[c] << THRESH_FRAC_BITS) > ts)))
        with m.If(adv & ec_v):
            with m.If(phase == fr.P2):
                m.d.sync += total.eq(total + sum_tree(list(ee)))
            with m.If(phase == fr.P3):
                m.d.sync += keep.word_select(ec_w, p).eq(bits)
                with m.If(bits.any()):
                    m.d.sync += kept.eq(1)

        # ------------------------------------------------------------ output
        fallback = Signal(n_max, name="fallback")
        m.d.comb += fallback.eq(Mux(~kept & qreal & have, Const(1, n_max) << amax, 0))
        m.d.comb += [o.payload.keep.eq(keep | fallback), o.payload.last.eq(qlast)]

        # ------------------------------------------------------------ control
        last_k = {fr.P1: _DOT_LAT, fr.P2: _E_LAT, fr.P3: _E_LAT}
        with m.If(adv):
            with m.Switch(phase):
                with m.Case(fr.QLOAD):
                    with m.If(fr.acc_q):
                        m.d.sync += [phase.eq(fr.QUANT), keep.eq(0), kept.eq(0), have.eq(0), total.eq(0)]
                with m.Case(fr.QUANT):
                    m.d.sync += [phase.eq(fr.P1), k.eq(0)]
                for ph, nxt in ((fr.P1, fr.P2), (fr.P2, fr.P3), (fr.P3, fr.OUT)):
                    with m.Case(ph):
                        with m.If(k == fr.nw + last_k[ph] - 1):
                            m.d.sync += [phase.eq(nxt), k.eq(0)]
                        with m.Else():
                            m.d.sync += k.eq(k + 1)
                with m.Case(fr.OUT):
                    m.d.sync += phase.eq(Mux(qlast, fr.KEY, fr.QLOAD))
        return m


SANGER_RESOURCE_RULE = (
    "estimated, not placed: fitted to yosys synth_ecp5 cell counts of four configurations "
    "(bits 4, max_keys 16, dim 8/16 x lanes 2/4; LUTs = LUT4 + 2 x CCU2C; exact to 0.1 %): "
    "LUTs = 56 P d (the shift-and-add b-bit products and adder trees) + 708 P (per lane: "
    "shifters, x subtract, exp LUT and shifter, compare, max tree) + 132 d (row quantizer, "
    "query codes) + 2 max_keys + 42; FFs = 12.6 P d + 189 P + 12.2 d + max_keys + 226; DSPs "
    "(MULT18X18D) = P (D x mult) + 2 (thr x S). bits 2 is counted as bits 4; bits 6 and 8 "
    "multiply on DSPs (d P more, 40 LUTs fewer each). Key and z buffers (max_keys x (d b + "
    "4) and max_keys x (z + 1) bits) are LUT RAM (DPR16X4) at these depths; asic: buffer_bits")


@dataclasses.dataclass(frozen=True)
class SparseSangerSpec(UnitSpec):
    """Parameters of a :class:`SparseSanger`: head size ``dim``, the key buffer ``max_keys``,
    ``lanes`` keys per cycle (a power of two dividing ``max_keys``) and the prediction width
    ``bits``. :meth:`cycles` is :func:`sanger_cycles`; the run-time constants come through
    ``prm``."""

    dim: int = 32
    max_keys: int = 128
    lanes: int = 4
    bits: int = 4

    kind: ClassVar[str] = "sparse_sanger"
    summary: ClassVar[str] = ("Sanger sparse-attention filter: b-bit row-coded score prediction, "
                              "exp2 LUT, probability threshold without division")
    ops: ClassVar[tuple[str, ...]] = ("sparse_filter",)
    golden: ClassVar[str] = "golden.sparse.sanger.SangerFilter.mask_int"
    component: ClassVar[str] = "hw.sparse_sanger.SparseSanger"

    def __post_init__(self) -> None:
        check_filter_shape(self.dim, self.max_keys, self.lanes)
        if self.bits not in ALLOWED_BITS:
            raise UnitParamError(f"bits must be one of {ALLOWED_BITS}, not {self.bits!r}")

    def build(self) -> SparseSanger:
        return SparseSanger(dim=self.dim, max_keys=self.max_keys, lanes=self.lanes, bits=self.bits)

    def cycles(self, *, keys: int, rows: int) -> int:  # type: ignore[override]
        """:func:`sanger_cycles` (``keys <= max_keys``)."""
        check_int("keys", keys, 1, self.max_keys)
        check_int("rows", rows, 1, None)
        return sanger_cycles(keys, rows, self.lanes)

    def reference(self, q: Any, k: Any, key_mask: Any, params: dict[str, int]) -> Any:  # type: ignore[override]
        """:meth:`golden.sparse.sanger.SangerFilter.mask_int` with these ``bits`` (the keep mask)."""
        from golden.sparse.sanger import SangerFilter

        return SangerFilter(bits=self.bits).mask_int(q, k, key_mask, params).mask

    @property
    def buffer_bits(self) -> int:
        w = sanger_widths(self.dim, self.bits, self.max_keys)
        return self.max_keys * (self.dim * self.bits + w["s"] + 1 + w["z"] + 1)

    def resources(self, family: str) -> dict[str, Any]:
        if family not in ("ecp5", "ice40", "asic"):
            raise UnitParamError(f"family must be one of ecp5, ice40, asic, not {family!r}")
        d, p, n = self.dim, self.lanes, self.max_keys
        wide = self.bits > 4
        luts = (56 - 40 * wide) * p * d + 708 * p + 132 * d + 2 * n + 42
        ffs = round(12.6 * p * d + 189 * p + 12.2 * d) + n + 226
        return {"dsps": p + 2 + wide * p * d, "luts": luts, "ffs": ffs, "brams": None,
                "buffer_bits": self.buffer_bits, "estimated": True, "basis": SANGER_RESOURCE_RULE}


# the shift range of the prm port must hold every shift int_params() gives
assert MAX_SHIFT < 2 ** 6
