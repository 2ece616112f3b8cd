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
from amaranth import Module, Signal, signed, unsigned
from amaranth.lib import data, memory, wiring

from golden.errors import UserValueError
from golden.layernorm import EPS_MAX, GAMMA_BITS, RECIP_K, SQRT_BITS, Y_FRAC, LayerNormParams
from golden.rmsnorm import rmsnorm_int
from hw.layernorm import (
    RootReciprocal,
    check_norm_shape,
    lane_sums,
    norm_control,
    norm_cycles,
    norm_phases,
    norm_valid_chain,
    tree_levels,
)
from hw.lib import (
    check_lanes_divide,
    check_positive,
    check_stalls,
    lane_stream,
    round_half_up_const,
    saturate_bits,
    stream_unit_ports,
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


def _stat_cycles(lanes: int) -> int:
    # the LOAD pipeline drains first: input register, squares, lane-sum tree, accumulate
    return (tree_levels(lanes) + 2) + _STAT_SETUP + SQRT_BITS + _DIV_STEPS


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
    return norm_cycles(rows, length, lanes, rmsnorm_row_overhead)


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
        io = lane_stream(lanes)
        super().__init__(stream_unit_ports(io, io))

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

        adv, phase, k, accept = norm_phases(
            m, self, max(W + _NORM_STAGES, _stat_cycles(P)) + 1)

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
        (s2,) = lane_sums(m, adv, (sq2,), lv2, lf2, (("w", unsigned(27), "s2"),))

        # ---------------------------------------------------------------- STAT registers
        k0 = tree_levels(P) + 2  # S2 final
        pn0 = Signal(unsigned(30), name="pn0")
        pn1 = Signal(unsigned(23), name="pn1")
        ns2 = Signal(unsigned(40), name="ns2")
        rr = RootReciprocal(m, ysh_bits=6, drem_bits=20, quo_bits=_R_BITS,
                            skip=SQRT_BITS - 1)  # the remainder after them: 2**18
        dd, quo, sh = rr.dd, rr.quo, rr.sh

        # ---------------------------------------------------------------- NORM pipeline
        # 1 read q and G, 2 register, 3 c = N*q, 4 four partial products c*r, 5 two sums,
        # 6 c*r, 7 >> (22-k-1), 8 round, 9 y*G partial products, 10 y*G, 11 rhu(., out_shift),
        # 12 saturate into the output register (the register after the read keeps the RAM's
        # clock-to-output delay out of the multiplier's path)
        m.d.comb += [qr.addr.eq(k), qr.en.eq(adv), gr.addr.eq(k), gr.en.eq(adv)]
        norm_valid_chain(m, adv, o, phase, k, W, _NORM_STAGES)
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
        def stat():
            with m.If(k == k0):  # N*S2 partial products
                m.d.sync += [pn0.eq(s2[0:17] * N), pn1.eq(s2[17:27] * N)]
            with m.If(k == k0 + 1):
                m.d.sync += ns2.eq(pn0 + (pn1 << 17))
            with m.If(k == k0 + 2):
                m.d.sync += dd.eq((ns2 << 8) + prm.eps_int)
            rr.steps(m, k, k0 + 3)

        norm_control(m, self, adv, phase, k, accept, W, _stat_cycles(P), _NORM_STAGES, stat)
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
        check_norm_shape(self.lanes, self.n)
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
