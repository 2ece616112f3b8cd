"""Streaming integer GELU (I-BERT i-GELU) and ReLU: P int8 lanes per cycle -> P int8 lanes.

GELU mode matches :func:`golden.gelu.gelu_int` bit for bit, per element::

    v   = |q| << fs
    t   = Bq - min(v, Bq)                       # 12 bits
    h   = 2*K - t*t  if q >= 0  else  t*t       # 24 bits unsigned
    g   = q * h                                 # int32
    out = requantize(g, mult, shift)            # round half up, saturate to int8

ReLU mode matches :func:`golden.gelu.relu_int`: ``max(q, 0)``, requantized with
``(relu_mult, relu_shift)`` when given (otherwise passed through as ``requantize(y, 1, 0)``,
which is ``y``). The constants (:class:`golden.gelu.GeluParams`) are elaboration parameters.

Job framing, ``busy``/``cycles``/``error`` and backpressure behave as described in
:mod:`hw.requant` (the pipeline freezes when the source idles or the sink refuses); so does the
end-to-end edge count seen at the ports (:func:`gelu_edges`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.errors import UserValueError
from golden.gelu import GeluParams, gelu_int, gelu_params, relu_int, relu_params
from hw.lib import (
    FrameControl,
    check_positive,
    check_scales,
    check_stalls,
    elementwise_job_cycles,
    lane_stream,
    stream_unit_ports,
)
from hw.requant import NONLINEAR_QOR_COMMAND, REQUANT_STAGES, requant_stages
from hw.spec import Measured, UnitParamError, UnitSpec, check_int, scaled_resources

__all__ = ["GELU_LATENCY", "MODES", "Gelu", "GeluSpec", "gelu_cycles", "gelu_edges",
           "gelu_param_layout"]

#: registers from the input to the output register inclusive: t, t*t, h, q*h partial products,
#: g, then the requantizer's :data:`hw.requant.REQUANT_STAGES` (6)
GELU_LATENCY = 5 + REQUANT_STAGES
MODES = ("gelu", "relu")


def gelu_cycles(rows: int, length: int, lanes: int) -> int:
    """Exact cycles of a job of ``rows`` rows of ``length`` int8 values on a P-lane :class:`Gelu`.

    ``rows * length / P`` words, one per cycle, plus :data:`GELU_LATENCY` (both modes).
    """
    return elementwise_job_cycles(rows, length, lanes, GELU_LATENCY)


def gelu_edges(rows: int, length: int, lanes: int, stalls: int = 0) -> int:
    """Exact edges from a job's first ``i_data`` transfer to its last ``o_data`` transfer, inclusive.

    :func:`gelu_cycles` plus ``stalls``, the edges in that window at which the sink refused a
    valid output or the unit was ready while the source idled (:mod:`hw.requant`, end-to-end
    timing).
    """
    return gelu_cycles(rows, length, lanes) + check_stalls(stalls)


def gelu_param_layout() -> data.StructLayout:
    """Run-time GELU parameters (:class:`golden.gelu.GeluParams`): ``fs`` (0..16), ``k``
    (``K < 2**23``), ``b`` (``Bq < 2**12``), ``mult`` int32, ``shift`` (0..63)."""
    return data.StructLayout({"fs": unsigned(5), "k": unsigned(23), "b": unsigned(12),
                              "mult": signed(32), "shift": unsigned(6)})


class Gelu(wiring.Component):
    """P-lane streaming I-BERT integer GELU (or ReLU), int8 -> int8.

    Parameters (keyword-only)
    -------------------------
    lanes : int
        P, elements per cycle (1..64).
    mode : ``"gelu"`` or ``"relu"``
    params : GeluParams
        Compiled constants (:func:`golden.gelu.gelu_params`); required in GELU mode.
    relu_mult, relu_shift : int or None
        Optional ReLU requantization (:func:`golden.gelu.relu_params`); both or neither.
    runtime : bool
        GELU mode with run-time parameters: ``params`` is not used; the ``prm`` input
        (:func:`gelu_param_layout`) supplies them and must be held while a job is in flight;
        ``o_data`` then also carries ``wide``, the same polynomial requantized to the
        split-int16 range ``[-32640, 32639]`` (the core's ``GELU split16``).

    Interface
    ---------
    i_data : In(stream of {data: P x int8, last: 1})   ``last`` marks a job's final word
    o_data : Out(stream of {data: P x int8, last: 1})
    busy : Out(1), cycles : Out(32), error : Out(1)   see :mod:`hw.requant` (error stays 0:
    the unit has no row state)

    Number formats: ``t`` uint12, ``h`` uint24 (< 2**24 since K < 2**23), ``g = q*h`` int32,
    ``g * mult`` int64, round half up by ``2**shift``, saturate to int8. Latency
    :data:`GELU_LATENCY` = 11 registers; throughput P elements per cycle; a job of W words takes
    exactly ``W + 11`` cycles (:func:`gelu_cycles`). Matches :func:`golden.gelu.gelu_int` /
    :func:`golden.gelu.relu_int`.
    """

    def __init__(self, *, lanes: int, mode: str = "gelu", params: GeluParams | None = None,
                 relu_mult: int | None = None, relu_shift: int | None = None,
                 runtime: bool = False) -> None:
        self._lanes = check_positive("lanes", lanes, 64)
        if mode not in MODES:
            raise UserValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if not isinstance(runtime, bool):
            raise UserValueError(f"runtime must be a bool, not {runtime!r}")
        if runtime and mode != "gelu":
            raise UserValueError("runtime parameters are for gelu mode only")
        self._mode = mode
        self._runtime = runtime
        if runtime:
            mult, shift = 0, 0
        elif mode == "gelu":
            if not isinstance(params, GeluParams):
                raise UserValueError("gelu mode needs params=golden.gelu.gelu_params(in_scale, out_scale)")
            if not (0 <= params.fs <= 16 and 0 < params.k < 2**23 and 0 <= params.b < 2**12):
                raise UserValueError(f"gelu params out of range (fs 0..16, K < 2**23, Bq < 2**12): {params}")
            mult, shift = params.mult, params.shift
        else:
            if (relu_mult is None) != (relu_shift is None):
                raise UserValueError("relu requantization needs both relu_mult and relu_shift")
            mult, shift = (1, 0) if relu_mult is None else (relu_mult, relu_shift)
        if not (-(2**31) <= mult < 2**31 and 0 <= shift <= 63):
            raise UserValueError(f"requant mult must be int32 and shift in [0, 63], not ({mult}, {shift})")
        self._params = params if mode == "gelu" and not runtime else None
        self._mult, self._shift = mult, shift
        io = lane_stream(lanes)
        ports = stream_unit_ports(io, io)
        if runtime:
            ports["o_data"] = Out(stream.Signature(data.StructLayout({
                "data": data.ArrayLayout(signed(8), lanes),
                "wide": data.ArrayLayout(signed(16), lanes), "last": unsigned(1)})))
            ports["prm"] = In(gelu_param_layout())
        super().__init__(ports)

    lanes = property(lambda self: self._lanes, doc="Elements per cycle P.")
    runtime = property(lambda self: self._runtime, doc="Parameters from the ``prm`` port.")
    mode = property(lambda self: self._mode, doc="'gelu' or 'relu'.")
    params = property(lambda self: self._params, doc="GeluParams (GELU mode) or None.")
    mult = property(lambda self: self._mult, doc="Output requantizer multiplier.")
    shift = property(lambda self: self._shift, doc="Output requantizer shift.")

    @property
    def latency(self) -> int:
        """Pipeline registers, input to output inclusive."""
        return GELU_LATENCY

    def elaborate(self, platform) -> Module:
        m = Module()
        P = self._lanes
        fc = FrameControl(m, self, GELU_LATENCY, row_words=1)
        gs = []
        for c in range(P):
            q = self.i_data.payload.data[c]
            qs = [Signal(signed(8), name=f"q{j}_{c}") for j in range(1, 5)]
            t1 = Signal(unsigned(12), name=f"t1_{c}")
            sq2 = Signal(unsigned(24), name=f"sq2_{c}")
            h3 = Signal(unsigned(24), name=f"h3_{c}")
            glo4 = Signal(signed(21), name=f"glo4_{c}")
            ghi4 = Signal(signed(21), name=f"ghi4_{c}")
            g5 = Signal(signed(32), name=f"g5_{c}")
            if self._mode == "gelu":
                if self._runtime:
                    bq, fs, two_k = self.prm.b, self.prm.fs, Cat(Const(0, 1), self.prm.k)
                else:
                    p = self._params
                    bq, fs = Const(p.b, unsigned(12)), p.fs
                    two_k = Const(2 * p.k, unsigned(24))
                v = Signal(unsigned(25), name=f"v{c}")
                m.d.comb += v.eq(Mux(q < 0, -q, q).as_unsigned()[0:8 + 1] << fs)
                with m.If(fc.adv):
                    m.d.sync += [
                        # 1: t = Bq - min(|q| << fs, Bq)
                        qs[0].eq(q),
                        t1.eq(bq - Mux(v < bq, v, bq)),
                        # 2: t*t
                        qs[1].eq(qs[0]),
                        sq2.eq(t1 * t1),
                        # 3: h = 2K - t*t (q >= 0) or t*t
                        qs[2].eq(qs[1]),
                        h3.eq(Mux(qs[1][7], sq2, two_k - sq2)),
                        # 4: partial products q * h[11:0] and q * h[23:12]
                        glo4.eq(qs[2] * h3[0:12]),
                        ghi4.eq(qs[2] * h3[12:24]),
                        # 5: g = q * h = (hi << 12) + lo
                        g5.eq((ghi4 << 12) + glo4),
                    ]
            else:
                with m.If(fc.adv):
                    m.d.sync += [qs[0].eq(Mux(q < 0, 0, q))]
                    m.d.sync += [qs[j].eq(qs[j - 1]) for j in range(1, 4)]
                    m.d.sync += g5.eq(qs[3])
            gs.append(g5)
        if self._runtime:
            mult, shift = self.prm.mult, self.prm.shift
        else:
            mult = Const(self._mult, signed(32))
            shift = Const(self._shift, unsigned(6))
        wide: list[Signal] | None = [] if self._runtime else None
        ys = requant_stages(m, fc.adv, gs, [mult] * P, [shift] * P, "rq", wide_out=wide)
        m.d.comb += [self.o_data.payload.data[c].eq(ys[c]) for c in range(P)]
        if wide is not None:
            m.d.comb += [self.o_data.payload.wide[c].eq(wide[c]) for c in range(P)]
        return m


# ---------------------------------------------------------------------- unit spec


@dataclasses.dataclass(frozen=True)
class GeluSpec(UnitSpec):
    """Parameters of a :class:`Gelu`: lanes, mode and the real input/output scales it is
    compiled for (:func:`golden.gelu.gelu_params` / :func:`golden.gelu.relu_params`; the
    integer constants are elaboration constants, so each scale pair is its own instance).
    :meth:`cycles` is :func:`gelu_cycles`."""

    lanes: int
    in_scale: float
    out_scale: float
    mode: str = "gelu"

    kind: ClassVar[str] = "gelu"
    summary: ClassVar[str] = "P-lane I-BERT integer GELU / ReLU"
    ops: ClassVar[tuple[str, ...]] = ("gelu", "relu")
    golden: ClassVar[str] = "golden.gelu.gelu_int"
    component: ClassVar[str] = "hw.gelu.Gelu"
    measured: ClassVar[tuple[Measured, ...]] = (
        Measured("ecp5", {"lanes": 4, "mode": "gelu"}, luts=1705, ffs=2495, dsps=28, brams=0,
                 fmax_mhz=106.1, command=NONLINEAR_QOR_COMMAND),
    )

    def __post_init__(self) -> None:
        check_int("lanes", self.lanes, 1, 64)
        if self.mode not in MODES:
            raise UnitParamError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        check_scales(self)
        try:
            if self.mode == "gelu":
                gelu_params(self.in_scale, self.out_scale)
            else:
                relu_params(self.in_scale, self.out_scale)
        except ValueError as e:
            raise UnitParamError(str(e)) from None

    def build(self) -> Gelu:
        if self.mode == "gelu":
            return Gelu(lanes=self.lanes, params=gelu_params(self.in_scale, self.out_scale))
        mult, shift = relu_params(self.in_scale, self.out_scale)
        return Gelu(lanes=self.lanes, mode="relu", relu_mult=mult, relu_shift=shift)

    def reference(self, x: Any) -> Any:  # type: ignore[override]
        if self.mode == "gelu":
            return gelu_int(x, gelu_params(self.in_scale, self.out_scale))
        return relu_int(x, *relu_params(self.in_scale, self.out_scale))

    def cycles(self, *, rows: int, length: int) -> int:  # type: ignore[override]
        return gelu_cycles(rows, length, self.lanes)

    def resources(self, family: str) -> dict[str, Any]:
        return scaled_resources(self.measured, family, {"lanes": self.lanes, "mode": self.mode}, 0)
