"""Streaming integer SiLU (``x * sigmoid(x)``): P int8 lanes per cycle -> P int8 lanes.

Matches :func:`golden.silu.silu_int` bit for bit: an int8 input has 256 values, so the unit is
the compile-time table of :func:`golden.silu.silu_params` (256 int8 entries, any input and
output scale) in a ROM with one read port per lane, read at address ``q + 128`` (``q`` with its
sign bit inverted)::

    1  table read (the ROM's registered output)      T[q + 128]
    2  output register

No arithmetic runs at run time: the rounding (half up) and the saturation to int8 happened when
the table was computed. Job framing, ``busy``/``cycles``/``error`` and backpressure behave as
described in :mod:`hw.lib` (the pipeline freezes when the source idles or the sink refuses), and
so does the end-to-end edge count seen at the ports (:func:`silu_edges`). A job of ``W`` words
takes exactly ``W + 2`` cycles (:func:`silu_cycles`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from amaranth import Module, signed
from amaranth.lib import memory, wiring

from golden.errors import UserValueError
from golden.silu import SiluParams, silu_int, silu_params
from hw.lib import (
    FrameControl,
    check_positive,
    check_scales,
    check_stalls,
    elementwise_job_cycles,
    lane_stream,
    stream_unit_ports,
)
from hw.spec import Measured, UnitSpec, check_int, scaled_resources

__all__ = ["SILU_LATENCY", "SILU_QOR_COMMAND", "Silu", "SiluSpec", "silu_cycles", "silu_edges"]

#: registers from the input to the output register inclusive: the table read, the output
SILU_LATENCY = 2


def silu_cycles(rows: int, length: int, lanes: int) -> int:
    """Exact cycles of a job of ``rows`` rows of ``length`` int8 values on a P-lane :class:`Silu`:
    ``rows * length / P`` words, one per cycle, plus :data:`SILU_LATENCY` (2)."""
    return elementwise_job_cycles(rows, length, lanes, SILU_LATENCY)


def silu_edges(rows: int, length: int, lanes: int, stalls: int = 0) -> int:
    """Exact edges from a job's first ``i_data`` transfer to its last ``o_data`` transfer, inclusive.

    :func:`silu_cycles` plus ``stalls``, the edges in that window at which the sink refused a
    valid output or the unit was ready while the source idled (:mod:`hw.lib`, end-to-end timing).
    """
    return silu_cycles(rows, length, lanes) + check_stalls(stalls)


class Silu(wiring.Component):
    """P-lane streaming integer SiLU by table, int8 -> int8.

    Parameters (keyword-only)
    -------------------------
    lanes : int
        P, elements per cycle (1..64).
    params : SiluParams
        The table (:func:`golden.silu.silu_params`): 256 int8 values, ``table[q + 128]``.

    Interface
    ---------
    i_data : In(stream of {data: P x int8, last: 1})   ``last`` marks a job's final word
    o_data : Out(stream of {data: P x int8, last: 1})
    busy : Out(1), cycles : Out(32), error : Out(1)   see :mod:`hw.lib` (error stays 0: the unit
    has no row state)

    Latency :data:`SILU_LATENCY` = 2 registers; throughput P elements per cycle. Matches
    :func:`golden.silu.silu_int`.
    """

    def __init__(self, *, lanes: int, params: SiluParams) -> None:
        self._lanes = check_positive("lanes", lanes, 64)
        if not isinstance(params, SiluParams):
            raise UserValueError("params must be golden.silu.silu_params(in_scale, out_scale)")
        t = params.table
        if tuple(t.shape) != (256,) or int(t.min()) < -128 or int(t.max()) > 127:
            raise UserValueError("the SiLU table must hold 256 int8 values")
        self._params = params
        io = lane_stream(lanes)
        super().__init__(stream_unit_ports(io, io))

    lanes = property(lambda self: self._lanes, doc="Elements per cycle P.")
    params = property(lambda self: self._params, doc="The table (SiluParams).")

    @property
    def latency(self) -> int:
        """Pipeline registers, input to output inclusive."""
        return SILU_LATENCY

    def elaborate(self, platform) -> Module:
        m = Module()
        fc = FrameControl(m, self, SILU_LATENCY, row_words=1)
        m.submodules.table = table = memory.Memory(
            shape=signed(8), depth=256, init=[int(v) for v in self._params.table.tolist()])
        for c in range(self._lanes):
            rp = table.read_port()
            q = self.i_data.payload.data[c].as_unsigned()
            m.d.comb += [rp.addr.eq(q ^ 0x80), rp.en.eq(fc.adv)]  # q + 128
            with m.If(fc.adv):
                m.d.sync += self.o_data.payload.data[c].eq(rp.data)
        return m


# ---------------------------------------------------------------------- unit spec

#: the build that measured the unit (placed and routed on the ULX3S-85F's ECP5)
SILU_QOR_COMMAND = "python benchmarks/fpga_qor.py --boards ulx3s-85f --units silu"


@dataclasses.dataclass(frozen=True)
class SiluSpec(UnitSpec):
    """Parameters of a :class:`Silu`: lanes and the real input/output scales its table is
    compiled for (:func:`golden.silu.silu_params`; the table is a ROM's contents, so each scale
    pair is its own instance). :meth:`cycles` is :func:`silu_cycles`."""

    lanes: int
    in_scale: float
    out_scale: float

    kind: ClassVar[str] = "silu"
    summary: ClassVar[str] = "P-lane integer SiLU (256-entry int8 table)"
    ops: ClassVar[tuple[str, ...]] = ("silu",)
    golden: ClassVar[str] = "golden.silu.silu_int"
    component: ClassVar[str] = "hw.silu.Silu"
    # the table is LUT logic (no block RAM, no multiplier); its size depends a little on the
    # table's contents, so another scale pair counts as estimated
    measured: ClassVar[tuple[Measured, ...]] = (
        Measured("ecp5", {"lanes": 4, "in_scale": 0.05, "out_scale": 0.03}, luts=456, ffs=254,
                 dsps=0, brams=0, fmax_mhz=214.13, command=SILU_QOR_COMMAND),
    )

    def __post_init__(self) -> None:
        check_int("lanes", self.lanes, 1, 64)
        check_scales(self)

    def params(self) -> SiluParams:
        """The table as the golden model takes it."""
        return silu_params(self.in_scale, self.out_scale)

    def build(self) -> Silu:
        return Silu(lanes=self.lanes, params=self.params())

    def reference(self, x: Any) -> Any:  # type: ignore[override]
        return silu_int(x, self.params())

    def cycles(self, *, rows: int, length: int) -> int:  # type: ignore[override]
        return silu_cycles(rows, length, self.lanes)

    @property
    def buffer_bits(self) -> int:
        """The tables: 256 x 8 bits per lane (each lane reads its own copy)."""
        return 256 * 8 * self.lanes

    def resources(self, family: str) -> dict[str, Any]:
        return scaled_resources(self.measured, family, {"lanes": self.lanes,
                                                        "in_scale": self.in_scale,
                                                        "out_scale": self.out_scale},
                                self.buffer_bits)
