"""Systolic GEMM engine: an R x C array of int8 MACs with its tiling controller and epilogue.

The engine computes ``C[M,N] = A[M,K] @ B[K,N]`` (int8 x int8 -> int32), optionally adds a
per-output-channel int32 bias and optionally requantizes to int8 with a per-channel int32
multiplier and shift. It matches :func:`golden.gemm.gemm_int` bit for bit and its timing matches
:func:`gemm_cycles` cycle for cycle.

Dataflows (``dataflow=``):

``"os"`` (output-stationary)
    Each PE owns one output element of an R x C output tile. A-columns enter the rows from the
    left and B-rows enter the columns from the top, skewed by one cycle per row/column. Tiles are
    issued back to back every ``P = max(K, R, C)`` cycles: the wavefront of the next tile enters
    the array while the current one is still in flight, and every PE copies its finished sum into
    a shadow output register, so the array is idle only while the pipeline fills once and drains
    once per GEMM.
``"ws"`` (weight-stationary)
    Each PE holds one weight of an R x C block of B (R along K). Rows of A stream through from
    the left, partial sums flow down the columns and are accumulated across K-blocks in an
    on-chip partial-sum buffer. The next block's weights are loaded into shadow registers while
    the current block streams (double buffering) and swapped in on the wavefront, so folds are
    issued every ``P = max(M, R, C)`` cycles.

Operation. One command on ``i_cmd`` (``m``, ``k``, ``n``, ``bias``, ``requant``) starts a GEMM.
The engine then accepts exactly the operand words it needs on ``i_a``, ``i_b`` and, when ``bias``
or ``requant`` is set, ``i_chan`` (the streams may be interleaved in any way), computes, and
emits the result rows on ``o_c``; ``o_c.payload.last`` marks the final row. Then it accepts the
next command. Operand layouts (what a DMA engine writes; see :func:`pack_operands`):

* ``i_a`` words hold R int8 lanes. OS: for each row block ``i`` (rows ``i*R .. i*R+R-1``), for
  each ``k``: lane ``r`` = ``A[i*R + r, k]``. WS: for each K block ``kb``, for each ``m``: lane
  ``r`` = ``A[m, kb*R + r]``. Lanes beyond M (OS) or K (WS) must be zero.
* ``i_b`` words hold C int8 lanes: for each column block ``j``, for each ``k``: lane ``c`` =
  ``B[k, j*C + c]`` (lanes beyond N zero).
* ``i_chan`` words hold C lanes of ``{bias: int32, mult: int32, shift: uint6}``, one word per
  column block.
* ``o_c`` rows hold C lanes of int32 (int8 values sign-extended when ``requant``). OS order:
  row blocks outer, column blocks inner, the valid rows of each tile in order. WS order: column
  blocks outer, all M rows inner. Lanes beyond N are don't-care.

Backpressure: a refused ``o_c`` row holds the whole compute pipeline for as many cycles as the
consumer refuses it, so the result and its timing do not depend on when the consumer takes the
data: ``cycles`` (the number of compute cycles in which ``o_c`` was not refused, from the first
compute cycle to the transfer of the final row, inclusive) always equals :func:`gemm_cycles`.
The pipeline's clock enable is registered, not decoded from ``o_c.ready``: a row refused while
the pipeline advances is caught in a one-row skid register, ``o_c`` shows the skid register
while it is full and the pipeline holds until it has been taken. The ``o_c`` transfers are
cycle for cycle those of a pipeline held in the refused cycle itself. Operand loading is not counted in ``cycles``: it happens strictly before
compute, the three load streams in parallel (:func:`load_words`, :func:`gemm_load_cycles`), and
:func:`gemm_total_cycles` is the exact end-to-end count, loads included.

Number formats: int8 x int8 products, int32 accumulators; the accumulators never wrap because
``max_k <= 2**16``. ``acc + bias`` saturates to int32; requantization as in
:mod:`golden.requant` (round half up, saturate to int8).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
from amaranth import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

from golden.errors import UserValueError
from golden.gemm import gemm_int
from hw.dsp import is_ecp5, registered_product
from hw.lib import check_positive as _check_positive
from hw.lib import saturate_bits
from hw.requant import REQUANT_STAGES, requant_stages
from hw.spec import Measured, UnitParamError, UnitSpec, check_int

__all__ = [
    "DATAFLOWS",
    "EPILOGUE_LATENCY",
    "GemmEngine",
    "LOAD_COMPUTE_GAP",
    "gemm_cycles",
    "gemm_load_cycles",
    "gemm_total_cycles",
    "gemm_period",
    "check_gemm_shape",
    "scalesim_cycles",
    "load_words",
    "pack_operands",
    "unpack_result",
    "channel_layout",
    "GemmSpec",
    "REQUANT_DSPS_PER_COLUMN",
    "buffer_depths",
    "gemm_buffer_bits",
    "gemm_dsps",
]

DATAFLOWS = ("os", "ws")
#: pipeline registers between the array's result row and the output register (inclusive):
#: align with the channel table read, bias add, int32 saturate, the shared requantizer's
#: :data:`hw.requant.REQUANT_STAGES` (6) and the output register (int8 or int32 select)
EPILOGUE_LATENCY = 3 + REQUANT_STAGES + 1
#: cycles between the transfer of a GEMM's last operand word and its first compute cycle: the
#: one LOAD cycle in which the controller sees every load stream's (registered) done flag
LOAD_COMPUTE_GAP = 1
_MAX_DIM = 2**16


def channel_layout() -> data.StructLayout:
    """Per-output-channel epilogue parameters: ``bias`` int32, ``mult`` int32, ``shift`` uint6."""
    return data.StructLayout({"bias": signed(32), "mult": signed(32), "shift": unsigned(6)})


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _check_dataflow(dataflow: object) -> str:
    if dataflow not in DATAFLOWS:
        raise UserValueError(f"dataflow must be one of {', '.join(DATAFLOWS)}, not {dataflow!r}")
    return dataflow  # type: ignore[return-value]


def check_gemm_shape(m: int, k: int, n: int, *, max_m: int, max_k: int, max_n: int) -> None:
    """Raise ``ValueError`` naming the dimension if an M x K x N GEMM exceeds the buffer limits."""
    for name, v, lim in (("m", m, max_m), ("k", k, max_k), ("n", n, max_n)):
        _check_positive(name, v)
        if v > lim:
            raise UserValueError(
                f"{name}={v} exceeds this engine's max_{name}={lim} (its on-chip buffers); "
                f"build the engine with max_{name} >= {v}"
            )


def gemm_period(rows: int, cols: int, dataflow: str, m: int, k: int, n: int) -> int:
    """Cycles between successive tile (OS) or fold (WS) issues: ``max(K, R, C)`` / ``max(M, R, C, 2)``."""
    if dataflow == "os":
        return max(k, rows, cols)
    return max(m, rows, cols, 2)  # the next fold's weight load starts one cycle before it issues


def gemm_cycles(rows: int, cols: int, dataflow: str, m: int, k: int, n: int) -> int:
    """Exact compute cycles of one GEMM on the engine (first compute cycle to final row, inclusive).

    OS: ``T = ceil(M/R) * ceil(N/C)`` tiles, one issued every ``P = max(K, R, C)`` cycles. Slice
    ``k`` of the last tile issues in cycle ``(T-1)*P + k``; its buffer address is registered,
    the buffers are read and the data registered (3 cycles), it reaches PE ``(r, c)`` ``r + c``
    cycles later, where operands are registered (1), multiplied (1), the product registered
    again (1) and accumulated (1); the row's result is read out (1) and passes the epilogue (``EPILOGUE_LATENCY`` = 10 registers:
    align with the channel table read, bias add, int32 saturate, then the six stages of
    :func:`hw.requant.requant_stages` -- partial products, two sums, shift, round, int8
    saturate -- and the output register). The final row ``r = R_last - 1``
    (``R_last`` = valid rows of the last row block) therefore transfers in cycle
    ``(T-1)*P + K + R_last + C + 5 + EPILOGUE_LATENCY``, and counting from cycle 0 adds one.

    WS: ``F = ceil(N/C) * ceil(K/R)`` folds, one issued every ``P = max(M, R, C, 2)`` cycles
    from cycle 0; each fold's weights are read alongside its first rows (the skew gives them
    time) into shadow registers. Row ``m`` of a fold passes the 3 issue registers, the skew,
    the operand, product and partial-sum registers of each PE down its column, the de-skew, the
    partial-sum buffer (1), readout (1) and the epilogue: the final row transfers
    ``M - 1 + R + C + 4 + EPILOGUE_LATENCY`` cycles after the last fold issues.

    Fill and drain are paid once per GEMM; SCALE-Sim's no-overlap model pays ``R + C - 2``
    (OS) or ``2R + C - 2`` (WS) on every fold.
    """
    _check_dataflow(dataflow)
    for name, v in (("rows", rows), ("cols", cols), ("m", m), ("k", k), ("n", n)):
        _check_positive(name, v)
    p = gemm_period(rows, cols, dataflow, m, k, n)
    if dataflow == "os":
        tiles = _ceil_div(m, rows) * _ceil_div(n, cols)
        r_last = m - (_ceil_div(m, rows) - 1) * rows
        return (tiles - 1) * p + k + cols + r_last + 6 + EPILOGUE_LATENCY
    folds = _ceil_div(n, cols) * _ceil_div(k, rows)
    return (folds - 1) * p + m + rows + cols + 5 + EPILOGUE_LATENCY


def scalesim_cycles(rows: int, cols: int, dataflow: str, m: int, k: int, n: int) -> int:
    """SCALE-Sim v2/v3 compute cycles for the same GEMM (the reference model, folds not overlapped).

    Closed forms read from SCALE-Sim's compute models and checked against its runs
    (shared/reference/costmodels.md, section 1.3): OS ``ceil(M/R)*ceil(N/C)*(R+C+K-2) - 1``,
    WS ``ceil(K/R)*ceil(N/C)*(2R+C+M-2) - 1``, IS ``ceil(K/R)*ceil(M/C)*(2R+C+N-2) - 1``.
    """
    if dataflow == "os":
        return _ceil_div(m, rows) * _ceil_div(n, cols) * (rows + cols + k - 2) - 1
    if dataflow == "ws":
        return _ceil_div(k, rows) * _ceil_div(n, cols) * (2 * rows + cols + m - 2) - 1
    if dataflow == "is":
        return _ceil_div(k, rows) * _ceil_div(m, cols) * (2 * rows + cols + n - 2) - 1
    raise UserValueError(f"dataflow must be one of os, ws, is, not {dataflow!r}")


def load_words(rows: int, cols: int, dataflow: str, m: int, k: int, n: int, channels: bool) -> dict[str, int]:
    """Number of words the engine takes on each load stream for one GEMM."""
    _check_dataflow(dataflow)
    a = _ceil_div(m, rows) * k if dataflow == "os" else _ceil_div(k, rows) * m
    return {"a": a, "b": _ceil_div(n, cols) * k, "chan": _ceil_div(n, cols) if channels else 0}


def gemm_load_cycles(rows: int, cols: int, dataflow: str, m: int, k: int, n: int, channels: bool) -> int:
    """Cycles from the first operand word's transfer to the last one's, inclusive, when no source idles.

    The engine takes ``i_a``, ``i_b`` and ``i_chan`` in parallel, one word each per cycle, from
    the cycle after the command's transfer, so the longest stream sets the load time:
    ``max(load_words(...).values())``.
    """
    return max(load_words(rows, cols, dataflow, m, k, n, channels).values())


def gemm_total_cycles(rows: int, cols: int, dataflow: str, m: int, k: int, n: int, channels: bool) -> int:
    """Exact end-to-end cycles of one GEMM: first operand word's transfer to the final row's, inclusive.

    The engine loads strictly before it computes. The command transfers in IDLE cycle ``c``;
    every load stream is ready from cycle ``c+1`` until its last word, so with sources that
    never idle the longest stream's ``L`` words (:func:`gemm_load_cycles`) transfer in cycles
    ``c+1 .. c+L``. The load counters' done flags are registered: cycle ``c+L+1`` is the LOAD
    cycle that sees them all (``LOAD_COMPUTE_GAP`` = 1, the ``start`` pulse), compute runs from
    ``c+L+2`` and the final row transfers in cycle ``c+L+1+G`` with ``G`` = :func:`gemm_cycles`.
    Counting from cycle ``c+1``::

        gemm_total_cycles = gemm_load_cycles + LOAD_COMPUTE_GAP + gemm_cycles

    Every cycle in which the sink refuses a valid ``o_c`` row adds one (the pipeline holds); an
    idling source lengthens the load phase only. Whatever the stall pattern, the cycles after
    the last operand word's transfer up to the final row's, inclusive, in which ``o_c`` is not
    refused number exactly ``LOAD_COMPUTE_GAP + gemm_cycles``.
    """
    return (gemm_load_cycles(rows, cols, dataflow, m, k, n, channels) + LOAD_COMPUTE_GAP
            + gemm_cycles(rows, cols, dataflow, m, k, n))


def pack_operands(
    rows: int, cols: int, dataflow: str, a: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lay out ``a[M,K]`` and ``b[K,N]`` as the engine's ``i_a`` / ``i_b`` word sequences.

    Returns int64 tensors ``[words, R]`` and ``[words, C]`` (lane values, zero padded).
    """
    _check_dataflow(dataflow)
    m, k = a.shape
    n = b.shape[1]
    a = a.to(torch.int64)
    b = b.to(torch.int64)
    if dataflow == "os":
        mp = _ceil_div(m, rows) * rows
        ap = torch.zeros(mp, k, dtype=torch.int64)
        ap[:m] = a
        # [blocks, R, K] -> [blocks, K, R]
        aw = ap.view(-1, rows, k).transpose(1, 2).reshape(-1, rows)
    else:
        kp = _ceil_div(k, rows) * rows
        ap = torch.zeros(m, kp, dtype=torch.int64)
        ap[:, :k] = a
        # [M, kblocks, R] -> [kblocks, M, R]
        aw = ap.view(m, -1, rows).transpose(0, 1).reshape(-1, rows)
    np_ = _ceil_div(n, cols) * cols
    bp = torch.zeros(k, np_, dtype=torch.int64)
    bp[:, :n] = b
    bw = bp.view(k, -1, cols).transpose(0, 1).reshape(-1, cols)
    return aw.contiguous(), bw.contiguous()


def unpack_result(rows: int, cols: int, dataflow: str, m: int, n: int, out_rows: torch.Tensor) -> torch.Tensor:
    """Reassemble the ``o_c`` row sequence (``[beats, C]``) into the ``[M, N]`` result."""
    _check_dataflow(dataflow)
    nb = _ceil_div(n, cols)
    if out_rows.shape[0] != nb * m:
        raise UserValueError(f"expected {nb * m} result rows, got {out_rows.shape[0]}")
    res = torch.zeros(m, nb * cols, dtype=torch.int64)
    beat = 0
    if dataflow == "os":
        for i0 in range(0, m, rows):
            nr = min(rows, m - i0)
            for j in range(nb):
                res[i0 : i0 + nr, j * cols : (j + 1) * cols] = out_rows[beat : beat + nr]
                beat += nr
    else:
        for j in range(nb):
            res[:, j * cols : (j + 1) * cols] = out_rows[beat : beat + m]
            beat += m
    return res[:, :n]


class GemmEngine(wiring.Component):
    """R x C systolic int8 GEMM engine with tiling controller, bias and requantizing epilogue.

    Parameters (keyword-only)
    -------------------------
    rows, cols : int
        Array size R x C (each >= 1).
    dataflow : ``"os"`` or ``"ws"``
        Output- or weight-stationary (see the module docstring).
    max_m, max_k, max_n : int
        The largest GEMM the on-chip buffers take (each in [1, 2**16]). Buffers: A holds
        ``ceil(max_m/R)*max_k`` (OS) or ``ceil(max_k/R)*max_m`` (WS) words of R bytes, B holds
        ``ceil(max_n/C)*max_k`` words of C bytes, the channel table ``ceil(max_n/C)`` words, and in
        WS a partial-sum buffer of ``max_m`` words of C int32.
    requant : bool
        Build the requantizer (C lanes of :func:`hw.requant.requant_stages`: four 16x16
        partial products, sums, rounding shift, int8 saturation). Without it a command with
        ``requant`` set returns the int32 result; the latency is the same either way.

    Interface
    ---------
    i_cmd : In(stream of {m, k, n, bias: 1, requant: 1})
    i_a : In(stream of R x int8), i_b : In(stream of C x int8), i_chan : In(stream of C x
    {bias, mult, shift}), o_c : Out(stream of {data: C x int32, last: 1})
    busy : Out(1)   high from command acceptance to the final row's transfer
    cycles : Out(32)   compute cycles of the current/last GEMM (see module docstring)

    Latency and throughput: :func:`gemm_cycles` compute cycles and :func:`gemm_total_cycles`
    end to end, loads included (both exact). In steady state the array performs
    R*C MACs per cycle whenever K (OS) or M (WS) is at least max(R, C). Matches
    :func:`golden.gemm.gemm_int`.
    """

    def __init__(
        self,
        *,
        rows: int,
        cols: int,
        dataflow: str = "os",
        max_m: int = 128,
        max_k: int = 128,
        max_n: int = 128,
        requant: bool = True,
    ) -> None:
        self._rows = _check_positive("rows", rows, 64)
        self._cols = _check_positive("cols", cols, 64)
        self._dataflow = _check_dataflow(dataflow)
        self._max_m = _check_positive("max_m", max_m, _MAX_DIM)
        self._max_k = _check_positive("max_k", max_k, _MAX_DIM)
        self._max_n = _check_positive("max_n", max_n, _MAX_DIM)
        if not isinstance(requant, bool):
            raise TypeError(f"requant must be a bool, not {requant!r}")
        self._requant = requant
        cmd = data.StructLayout(
            {
                "m": unsigned(bits_for(max_m)),
                "k": unsigned(bits_for(max_k)),
                "n": unsigned(bits_for(max_n)),
                "bias": unsigned(1),
                "requant": unsigned(1),
            }
        )
        out = data.StructLayout({"data": data.ArrayLayout(signed(32), cols), "last": unsigned(1)})
        super().__init__(
            {
                "i_cmd": In(stream.Signature(cmd)),
                "i_a": In(stream.Signature(data.ArrayLayout(signed(8), rows))),
                "i_b": In(stream.Signature(data.ArrayLayout(signed(8), cols))),
                "i_chan": In(stream.Signature(data.ArrayLayout(channel_layout(), cols))),
                "o_c": Out(stream.Signature(out)),
                "busy": Out(1),
                "cycles": Out(32),
            }
        )

    rows = property(lambda self: self._rows, doc="Array rows R.")
    cols = property(lambda self: self._cols, doc="Array columns C.")
    dataflow = property(lambda self: self._dataflow, doc="'os' or 'ws'.")
    max_m = property(lambda self: self._max_m)
    max_k = property(lambda self: self._max_k)
    max_n = property(lambda self: self._max_n)
    requant = property(lambda self: self._requant)

    def _depths(self) -> tuple[int, int, int]:
        return buffer_depths(self._rows, self._cols, self._dataflow, self._max_m, self._max_k,
                             self._max_n)

    @property
    def a_depth(self) -> int:
        """Words in the A buffer."""
        return self._depths()[0]

    @property
    def b_depth(self) -> int:
        """Words in the B buffer."""
        return self._depths()[1]

    @property
    def chan_depth(self) -> int:
        """Words in the per-channel parameter table."""
        return self._depths()[2]

    def check_shape(self, m: int, k: int, n: int) -> None:
        """Raise ``ValueError`` naming the dimension if an M x K x N GEMM does not fit the buffers."""
        check_gemm_shape(m, k, n, max_m=self._max_m, max_k=self._max_k, max_n=self._max_n)

    def cycles_for(self, m: int, k: int, n: int) -> int:
        """:func:`gemm_cycles` for this engine's configuration."""
        self.check_shape(m, k, n)
        return gemm_cycles(self._rows, self._cols, self._dataflow, m, k, n)

    # ------------------------------------------------------------------ elaboration

    def elaborate(self, platform):  # noqa: C901 - one controller, written out in order
        m = Module()
        R, C = self._rows, self._cols
        os_flow = self._dataflow == "os"

        # ---- memories
        m.submodules.amem = amem = memory.Memory(shape=unsigned(8 * R), depth=self.a_depth, init=[])
        m.submodules.bmem = bmem = memory.Memory(shape=unsigned(8 * C), depth=self.b_depth, init=[])
        chan_shape = data.ArrayLayout(channel_layout(), C)
        m.submodules.cmem = cmem = memory.Memory(shape=chan_shape, depth=self.chan_depth, init=[])
        a_wr, b_wr, c_wr = amem.write_port(), bmem.write_port(), cmem.write_port()
        a_rd, b_rd, c_rd = amem.read_port(), bmem.read_port(), cmem.read_port()

        # ---- command registers and FSM
        cm = Signal.like(self.i_cmd.payload.m, name="cm")
        ck = Signal.like(self.i_cmd.payload.k, name="ck")
        cn = Signal.like(self.i_cmd.payload.n, name="cn")
        c_bias = Signal(name="c_bias")
        c_rq = Signal(name="c_rq")
        period = Signal(bits_for(max(self._max_k, self._max_m, R, C)), name="period")

        # global advance: the compute pipeline holds while the output skid register is full
        # (a register, so no path runs from o_c.ready to the thousands of enables)
        adv = Signal(name="adv")
        skid_v = Signal(name="skid_v")
        m.d.comb += adv.eq(~skid_v)
        refused = Signal(name="refused")
        m.d.comb += refused.eq(self.o_c.valid & ~self.o_c.ready)

        final_xfer = Signal()
        m.d.comb += final_xfer.eq(self.o_c.valid & self.o_c.ready & self.o_c.payload.last)

        start = Signal()  # one-cycle pulse: loads complete, compute begins next cycle
        computing = Signal()
        perf = Signal(32, name="perf")
        m.d.comb += self.cycles.eq(perf)

        # ---- load counters (nested: outer steps by `step` up to `outer_n`, inner counts `inner_n`)
        def load_port(name, strm, wr, depth, inner_n, step, outer_n, enabled):
            addr = Signal(range(max(depth, 2)), name=f"{name}_addr")
            inner = Signal(bits_for(_MAX_DIM), name=f"{name}_inner")
            outer = Signal(bits_for(_MAX_DIM + 64), name=f"{name}_outer")
            done = Signal(name=f"{name}_done")
            with m.If(self.i_cmd.valid & self.i_cmd.ready):
                m.d.sync += [addr.eq(0), inner.eq(0), outer.eq(0), done.eq(~enabled)]
            # the buffer write is registered: the handshake drives only the counters, not the
            # (wide, spread out) memory's write enables; the word lands one cycle later, well
            # before compute reads it (the first read address is registered in compute cycle 0)
            w_en = Signal(name=f"{name}_wen")
            w_addr = Signal.like(addr, name=f"{name}_waddr")
            w_data = Signal(len(Value.cast(strm.payload)), name=f"{name}_wdata")
            m.d.sync += [w_en.eq(strm.valid & strm.ready), w_addr.eq(addr),
                         w_data.eq(Value.cast(strm.payload))]
            m.d.comb += [
                strm.ready.eq(loading & ~done),
                wr.addr.eq(w_addr),
                Value.cast(wr.data).eq(w_data),
                wr.en.eq(w_en),
            ]
            with m.If(strm.valid & strm.ready):
                m.d.sync += addr.eq(addr + 1)
                with m.If(inner == inner_n - 1):
                    m.d.sync += [inner.eq(0), outer.eq(outer + step)]
                    with m.If(outer + step >= outer_n):
                        m.d.sync += done.eq(1)
                with m.Else():
                    m.d.sync += inner.eq(inner + 1)
            return done

        loading = Signal()
        p = self.i_cmd.payload
        en_chan = Signal()
        m.d.comb += en_chan.eq(p.bias | p.requant)
        if os_flow:
            a_done = load_port("la", self.i_a, a_wr, self.a_depth, ck, R, cm, 1)
        else:
            a_done = load_port("la", self.i_a, a_wr, self.a_depth, cm, R, ck, 1)
        b_done = load_port("lb", self.i_b, b_wr, self.b_depth, ck, C, cn, 1)
        ch_done = load_port("lc", self.i_chan, c_wr, self.chan_depth, 1, C, cn, en_chan)

        with m.FSM(name="ctrl"):
            with m.State("IDLE"):
                m.d.comb += self.i_cmd.ready.eq(1)
                with m.If(self.i_cmd.valid):
                    long_dim = p.k if os_flow else p.m
                    floor = max(R, C) if os_flow else max(R, C, 2)
                    m.d.sync += [
                        cm.eq(p.m), ck.eq(p.k), cn.eq(p.n), c_bias.eq(p.bias),
                        c_rq.eq(p.requant & int(self._requant)),
                        period.eq(Mux(long_dim > floor, long_dim, floor)),
                    ]
                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += [self.busy.eq(1), loading.eq(1)]
                with m.If(a_done & b_done & ch_done):
                    m.d.comb += start.eq(1)
                    m.d.sync += perf.eq(0)
                    m.next = "COMPUTE"
            with m.State("COMPUTE"):
                m.d.comb += [self.busy.eq(1), computing.eq(1)]
                with m.If(~refused):
                    m.d.sync += perf.eq(perf + 1)
                with m.If(final_xfer):
                    m.next = "IDLE"

        # ---- epilogue input (filled by the dataflow-specific part)
        ro_valid = Signal(name="ro_valid")
        ro_tlast = Signal(name="ro_tlast")
        ro_final = Signal(name="ro_final")
        ro_data = [Signal(signed(32), name=f"ro_data{c}") for c in range(C)]

        if os_flow:
            self._elab_os(m, adv, start, computing, cm, ck, cn, period, a_rd, b_rd,
                          ro_valid, ro_tlast, ro_final, ro_data, platform)
        else:
            self._elab_ws(m, adv, start, computing, cm, ck, cn, period, a_rd, b_rd,
                          ro_valid, ro_tlast, ro_final, ro_data)

        out_v, out_l, out_d = self._elab_epilogue(m, adv, start, cn, c_bias, c_rq, c_rd,
                                                  ro_valid, ro_tlast, ro_final, ro_data, platform)

        # ---- output skid register: while it is empty o_c shows the output register; a row
        # refused there is copied into it (the pipeline advances in that cycle), and while it is
        # full o_c shows it and the pipeline holds
        skid_l = Signal(name="skid_l")
        skid_d = [Signal(signed(32), name=f"skid_d{c}") for c in range(C)]
        with m.If(skid_v):
            m.d.comb += [self.o_c.valid.eq(1), self.o_c.payload.last.eq(skid_l)]
            m.d.comb += [self.o_c.payload.data[c].eq(skid_d[c]) for c in range(C)]
            with m.If(self.o_c.ready):
                m.d.sync += skid_v.eq(0)
        with m.Else():
            m.d.comb += [self.o_c.valid.eq(out_v), self.o_c.payload.last.eq(out_l)]
            m.d.comb += [self.o_c.payload.data[c].eq(out_d[c]) for c in range(C)]
            with m.If(out_v & ~self.o_c.ready):
                m.d.sync += [skid_v.eq(1), skid_l.eq(out_l)]
                m.d.sync += [skid_d[c].eq(out_d[c]) for c in range(C)]
        return m

    @staticmethod
    def _delay_line(m, adv):
        """``delay(sig, n, name)``: ``sig`` delayed by ``n`` registers that advance with ``adv``."""
        def delay(sig, n, name):
            cur = sig
            for s in range(n):
                nxt = Signal.like(sig, name=f"{name}_d{s}")
                with m.If(adv):
                    m.d.sync += nxt.eq(cur)
                cur = nxt
            return cur
        return delay

    # ---------------------------------------------------------------- output-stationary

    def _elab_os(self, m, adv, start, computing, cm, ck, cn, period, a_rd, b_rd,
                 ro_valid, ro_tlast, ro_final, ro_data, platform):
        R, C = self._rows, self._cols
        # issue counters: tile (i0, j0), slot t in [0, period)
        issuing = Signal(name="issuing")
        i0 = Signal(bits_for(self._max_m + R), name="i0")
        j0 = Signal(bits_for(self._max_n + C), name="j0")
        abase = Signal(range(max(self.a_depth, 2)), name="abase")
        bbase = Signal(range(max(self.b_depth, 2)), name="bbase")
        t = Signal.like(period, name="t")
        last_row_blk = Signal()
        last_col_blk = Signal()
        m.d.comb += [last_row_blk.eq(i0 + R >= cm), last_col_blk.eq(j0 + C >= cn)]

        with m.If(start):
            m.d.sync += [issuing.eq(1), i0.eq(0), j0.eq(0), abase.eq(0), bbase.eq(0), t.eq(0)]
        with m.Elif(issuing & adv):
            with m.If(t == period - 1):
                m.d.sync += t.eq(0)
                with m.If(last_col_blk):
                    m.d.sync += [j0.eq(0), bbase.eq(0), i0.eq(i0 + R), abase.eq(abase + ck)]
                    with m.If(last_row_blk):
                        m.d.sync += issuing.eq(0)
                with m.Else():
                    m.d.sync += [j0.eq(j0 + C), bbase.eq(bbase + ck)]
            with m.Else():
                m.d.sync += t.eq(t + 1)

        delay = self._delay_line(m, adv)
        # Issue pipeline: the buffer addresses are registered (I1), read (I2) and the read data
        # registered (I3) before it enters the skew registers, so no adder sits in front of a
        # block RAM and no block-RAM output drives a multiplier directly.
        iv = Signal()  # issuing a k-slice this cycle
        m.d.comb += iv.eq(issuing & (t < ck))
        a_addr = Signal.like(abase, name="a_addr")
        b_addr = Signal.like(bbase, name="b_addr")
        a_q = Signal(8 * R, name="a_q")
        b_q = Signal(8 * C, name="b_q")
        with m.If(adv):
            m.d.sync += [a_addr.eq(abase + t), b_addr.eq(bbase + t), a_q.eq(a_rd.data), b_q.eq(b_rd.data)]
        m.d.comb += [a_rd.addr.eq(a_addr), b_rd.addr.eq(b_addr), a_rd.en.eq(adv), b_rd.en.eq(adv)]
        # row flags at issue time: valid, last (k == K-1), tile-last row; final tile; aligned
        # with a_q by the same three registers
        rv = Cat(iv & (i0 + r < cm) for r in range(R))
        rtl = Cat((i0 + r + 1 == cm) | (r == R - 1) for r in range(R))
        meta = delay(Cat(rv, rtl, t == ck - 1, last_row_blk & last_col_blk), 3, "imeta")
        s1_last, s1_final = meta[2 * R], meta[2 * R + 1]

        # skew: row r delayed by r cycles, column c by c cycles
        a_in = []
        for r in range(R):
            lane = a_q[8 * r : 8 * r + 8].as_signed()
            bundle = Cat(lane, meta[r], s1_last, meta[R + r], s1_final)
            a_in.append(delay(bundle, r, f"askew{r}"))
        b_in = [delay(b_q[8 * c : 8 * c + 8].as_signed(), c, f"bskew{c}") for c in range(C)]

        # PE grid: a (with its flags) moves right, b moves down; operands registered, product
        # registered twice (the multiplier's output register, then a fabric register), then
        # summed
        row_done = []
        row_out = []
        b_top = b_in
        for r in range(R):
            left = a_in[r]
            b_next = []
            outs = []
            for c in range(C):
                top = b_top[c]
                # operands (and flags) are registered in this PE, then multiplied: the
                # multiplier's inputs come from its own registers, not from a neighbour
                a_reg = Signal(len(left), name=f"pe{r}_{c}_a")
                b_reg = Signal(signed(8), name=f"pe{r}_{c}_b")
                a_val = a_reg[0:8].as_signed()
                fv, flast = a_reg[8], a_reg[9]
                prod = Signal(signed(16), name=f"pe{r}_{c}_prod")
                pv = Signal(name=f"pe{r}_{c}_pv")
                pl = Signal(name=f"pe{r}_{c}_pl")
                acc = Signal(signed(32), name=f"pe{r}_{c}_acc")
                out = Signal(signed(32), name=f"pe{r}_{c}_out")
                if is_ecp5(platform):
                    # the same two registers inside the MULT18X18D (its input registers take
                    # the operands a_reg/b_reg take, its output register is the product)
                    m.d.comb += prod.eq(registered_product(
                        m, platform, left[0:8].as_signed(), top, ce=adv, width=16,
                        reg_inputs=True, name=f"pe{r}_{c}_mul"))
                else:
                    with m.If(adv):
                        m.d.sync += prod.eq(a_val * b_reg)
                # the product is registered once more in the fabric before the accumulator, so
                # a hard multiplier placed away from its accumulator costs no cycle time
                prod2 = Signal(signed(16), name=f"pe{r}_{c}_prod2")
                pv2 = Signal(name=f"pe{r}_{c}_pv2")
                pl2 = Signal(name=f"pe{r}_{c}_pl2")
                with m.If(adv):
                    m.d.sync += [
                        a_reg.eq(left),
                        b_reg.eq(top),
                        pv.eq(fv),
                        pl.eq(flast),
                        prod2.eq(prod),
                        pv2.eq(pv),
                        pl2.eq(pl),
                    ]
                    with m.If(pv2):
                        with m.If(pl2):
                            m.d.sync += [out.eq(acc + prod2), acc.eq(0)]
                        with m.Else():
                            m.d.sync += acc.eq(acc + prod2)
                if c == C - 1:
                    # the row's last PE reports completion together with the tile flags
                    done = Signal(name=f"row{r}_done")
                    tl = Signal(name=f"row{r}_tl")
                    fin = Signal(name=f"row{r}_fin")
                    ptl = Signal(name=f"pe{r}_{c}_ptl")
                    pfin = Signal(name=f"pe{r}_{c}_pfin")
                    ptl2 = Signal(name=f"pe{r}_{c}_ptl2")
                    pfin2 = Signal(name=f"pe{r}_{c}_pfin2")
                    with m.If(adv):
                        m.d.sync += [
                            ptl.eq(a_reg[10]), pfin.eq(a_reg[11]),
                            ptl2.eq(ptl), pfin2.eq(pfin),
                            done.eq(pv2 & pl2), tl.eq(ptl2), fin.eq(pfin2),
                        ]
                    row_done.append((done, tl, fin))
                outs.append(out)
                b_next.append(b_reg)
                left = a_reg
            b_top = b_next
            row_out.append(outs)

        # readout: at most one row completes per cycle (period >= R)
        with m.If(adv):
            m.d.sync += [
                ro_valid.eq(Cat(d for d, _, _ in row_done).any()),
                ro_tlast.eq(Cat(d & tl for d, tl, _ in row_done).any()),
                ro_final.eq(Cat(d & tl & f for d, tl, f in row_done).any()),
            ]
            for c in range(C):
                sel = 0
                for r in range(R):
                    sel = sel | Mux(row_done[r][0], row_out[r][c], 0)
                m.d.sync += ro_data[c].eq(sel)

    # ---------------------------------------------------------------- weight-stationary

    def _elab_ws(self, m, adv, start, computing, cm, ck, cn, period, a_rd, b_rd,
                 ro_valid, ro_tlast, ro_final, ro_data):
        R, C = self._rows, self._cols
        # fold counters: column block j0 (outer), K block kb0 (inner); slot t in [0, period)
        issuing = Signal(name="issuing")
        j0 = Signal(bits_for(self._max_n + C), name="j0")
        kb0 = Signal(bits_for(self._max_k + R), name="kb0")
        abase = Signal(range(max(self.a_depth, 2)), name="abase")
        bbase = Signal(range(max(self.b_depth, 2)), name="bbase")  # B word of (j0, kb0)
        t = Signal.like(period, name="t")
        last_kb = Signal()
        last_j = Signal()
        m.d.comb += [last_kb.eq(kb0 + R >= ck), last_j.eq(j0 + C >= cn)]

        # weight loader: reads R rows of B for the fold about to be issued, one row per cycle
        wl_active = Signal(name="wl_active")
        wl_r = Signal(range(R + 1), name="wl_r")
        wl_base = Signal.like(bbase, name="wl_base")
        wl_kb0 = Signal.like(kb0, name="wl_kb0")
        # the next fold's B base and K block (computed from the current one)
        nx_bbase = Signal.like(bbase)
        nx_kb0 = Signal.like(kb0)
        with m.If(last_kb):
            m.d.comb += [nx_kb0.eq(0), nx_bbase.eq(bbase + ck - kb0)]  # next column block
        with m.Else():
            m.d.comb += [nx_kb0.eq(kb0 + R), nx_bbase.eq(bbase + R)]
        more_folds = Signal()
        m.d.comb += more_folds.eq(~(last_kb & last_j))

        with m.If(start):
            # the first fold issues in the first compute cycle, its weights load alongside
            m.d.sync += [
                issuing.eq(1), j0.eq(0), kb0.eq(0), abase.eq(0), bbase.eq(0), t.eq(0),
                wl_active.eq(1), wl_r.eq(0), wl_base.eq(0), wl_kb0.eq(0),
            ]
        with m.Elif(adv):
            # weight loader runs R cycles
            with m.If(wl_active):
                with m.If(wl_r == R - 1):
                    m.d.sync += wl_active.eq(0)
                m.d.sync += wl_r.eq(wl_r + 1)
            with m.If(issuing):
                with m.If(t == period - 1):
                    m.d.sync += [t.eq(0), kb0.eq(nx_kb0), bbase.eq(nx_bbase)]
                    # the next fold's weights load while it issues (the skew gives them time)
                    with m.If(more_folds):
                        m.d.sync += [wl_active.eq(1), wl_r.eq(0), wl_base.eq(nx_bbase), wl_kb0.eq(nx_kb0)]
                    with m.If(last_kb):
                        m.d.sync += [j0.eq(j0 + C), abase.eq(0)]
                        with m.If(last_j):
                            m.d.sync += issuing.eq(0)
                    with m.Else():
                        m.d.sync += abase.eq(abase + cm)
                with m.Else():
                    m.d.sync += t.eq(t + 1)

        delay = self._delay_line(m, adv)
        # issue pipeline as in OS: registered address (I1), read (I2), registered data (I3)
        iv = Signal()
        m.d.comb += iv.eq(issuing & (t < cm))
        a_addr = Signal.like(abase, name="a_addr")
        b_addr = Signal.like(bbase, name="b_addr")
        a_q = Signal(8 * R, name="a_q")
        b_q = Signal(8 * C, name="b_q")
        with m.If(adv):
            m.d.sync += [a_addr.eq(abase + t), b_addr.eq(wl_base + wl_r), a_q.eq(a_rd.data), b_q.eq(b_rd.data)]
        m.d.comb += [a_rd.addr.eq(a_addr), b_rd.addr.eq(b_addr), a_rd.en.eq(adv), b_rd.en.eq(adv)]
        # shadow row write enables and A-row flags (valid, swap = first row of a fold), aligned
        # with the registered read data
        wr_row = delay(Cat(wl_active & (wl_r == r) & (wl_kb0 + r < ck) for r in range(R)), 3, "wrow")
        s1 = delay(Cat(iv, iv & (t == 0)), 3, "ameta")

        a_in = []
        for r in range(R):
            a_in.append(delay(Cat(a_q[8 * r : 8 * r + 8], s1[0], s1[1]), r, f"askew{r}"))

        # PE grid: weights shadowed; the row's operand is registered in the PE, multiplied with
        # the active (or, on a fold's first row, the shadow) weight, and the product is added to
        # the partial sum coming down the column
        psum_prev = [Const(0, signed(32))] * C
        for r in range(R):
            left = a_in[r]
            psum_row = []
            for c in range(C):
                shadow = Signal(signed(8), name=f"pe{r}_{c}_ws")
                wact = Signal(signed(8), name=f"pe{r}_{c}_wa")
                a_reg = Signal(10, name=f"pe{r}_{c}_a")
                prod = Signal(signed(16), name=f"pe{r}_{c}_prod")
                psum = Signal(signed(32), name=f"pe{r}_{c}_psum")
                a_val = a_reg[0:8].as_signed()
                fv, fsw = a_reg[8], a_reg[9]
                w_use = Mux(fsw, shadow, wact)
                with m.If(adv):
                    m.d.sync += [
                        a_reg.eq(left),
                        prod.eq(Mux(fv, a_val * w_use, 0)),
                        psum.eq(psum_prev[c] + prod),
                    ]
                    with m.If(fv & fsw):
                        m.d.sync += wact.eq(shadow)
                    with m.If(wr_row[r]):
                        m.d.sync += shadow.eq(b_q[8 * c : 8 * c + 8].as_signed())
                psum_row.append(psum)
                left = a_reg
            psum_prev = psum_row

        # de-skew: column c delayed by C-1-c so a whole output row aligns
        col = [delay(psum_prev[c], C - 1 - c, f"dsk{c}") for c in range(C)]

        # per-row metadata delayed from issue to the aligned row: issue at cycle x, aligned at
        # x + R + C + 4 (3 issue registers, operand, product and partial-sum registers)
        mm = Signal(bits_for(self._max_m), name="mm")
        m.d.comb += mm.eq(t)
        meta = Cat(iv, mm, kb0 == 0, last_kb, last_j, t == cm - 1)
        lat = R + C + 4
        meta_rd = delay(meta, lat - 1, "meta")  # one cycle early: psum buffer read address
        meta_al = delay(meta_rd, 1, "metaal")
        mw = bits_for(self._max_m)
        rd_mm = meta_rd[1 : 1 + mw]
        al_v, al_mm = meta_al[0], meta_al[1 : 1 + mw]
        al_first, al_lastkb = meta_al[1 + mw], meta_al[2 + mw]
        al_lastj, al_lastrow = meta_al[3 + mw], meta_al[4 + mw]

        m.submodules.pmem = pmem = memory.Memory(
            shape=data.ArrayLayout(signed(32), C), depth=max(self._max_m, 2), init=[]
        )
        p_wr = pmem.write_port()
        p_rd = pmem.read_port(transparent_for=(p_wr,))
        total = [Signal(signed(32), name=f"tot{c}") for c in range(C)]
        m.d.comb += [p_rd.addr.eq(rd_mm), p_rd.en.eq(adv)]
        for c in range(C):
            m.d.comb += total[c].eq(col[c] + Mux(al_first, 0, p_rd.data[c]))
        m.d.comb += [
            p_wr.addr.eq(al_mm),
            p_wr.en.eq(adv & al_v & ~al_lastkb),
        ]
        for c in range(C):
            m.d.comb += p_wr.data[c].eq(total[c])
        with m.If(adv):
            m.d.sync += [
                ro_valid.eq(al_v & al_lastkb),
                ro_tlast.eq(al_v & al_lastkb & al_lastrow),
                ro_final.eq(al_v & al_lastkb & al_lastrow & al_lastj),
            ]
            for c in range(C):
                m.d.sync += ro_data[c].eq(total[c])

    # ---------------------------------------------------------------- epilogue

    def _elab_epilogue(self, m, adv, start, cn, c_bias, c_rq, c_rd,
                       ro_valid, ro_tlast, ro_final, ro_data, platform):
        C = self._cols
        # Channel block of the row now in `ro`: advances after each tile's (OS) or column block's
        # (WS) last row. Its parameters are read now and arrive with the row one stage later (E0).
        jc = Signal(range(max(self.chan_depth, 2)), name="jc")
        jc_end = Signal(bits_for(self._max_n + C), name="jc_end")  # (jc + 1) * C, kept running
        jc_last = Signal()
        m.d.comb += jc_last.eq(jc_end >= cn)
        with m.If(start):
            m.d.sync += [jc.eq(0), jc_end.eq(C)]
        with m.Elif(adv & ro_valid & ro_tlast):
            m.d.sync += [jc.eq(Mux(jc_last, 0, jc + 1)), jc_end.eq(Mux(jc_last, C, jc_end + C))]
        m.d.comb += [c_rd.addr.eq(jc), c_rd.en.eq(adv)]

        def lanes(name, shape):
            return [Signal(shape, name=f"{name}{c}") for c in range(C)]

        e0 = lanes("e0_", signed(32))
        e1a, e1a_mult, e1a_shift = lanes("e1a_", signed(33)), lanes("e1a_mult", signed(32)), lanes("e1a_shift", 6)
        e1, e1_mult, e1_shift = lanes("e1_", signed(32)), lanes("e1_mult", signed(32)), lanes("e1_shift", 6)
        with m.If(adv):
            # E0: align the row with its channel parameters (synchronous table read)
            m.d.sync += [e0[c].eq(ro_data[c]) for c in range(C)]
            for c in range(C):
                ch = c_rd.data[c]
                m.d.sync += [
                    # E1a: bias add (33 bits, exact); the channel parameters are registered
                    e1a[c].eq(e0[c] + Mux(c_bias, ch.bias, 0)),
                    e1a_mult[c].eq(ch.mult),
                    e1a_shift[c].eq(ch.shift),
                    # E1b: saturate to int32
                    e1[c].eq(saturate_bits(e1a[c], 32)),
                    e1_mult[c].eq(e1a_mult[c]),
                    e1_shift[c].eq(e1a_shift[c]),
                ]
        # E2..E7: the shared pipelined requantizer (hw.requant.requant_stages); the int32 value
        # and the row flags travel beside it
        delay = self._delay_line(m, adv)
        flags = delay(Cat(ro_valid, ro_final), 3 + REQUANT_STAGES, "eflags")
        x_out = [delay(e1[c], REQUANT_STAGES, f"ex{c}") for c in range(C)]
        if self._requant:
            ys = requant_stages(m, adv, e1, e1_mult, e1_shift, "erq", platform=platform)
            res = [Mux(c_rq, ys[c], x_out[c]) for c in range(C)]
        else:
            res = x_out
        out_v, out_l = Signal(name="out_v"), Signal(name="out_l")
        out_d = lanes("out_d", signed(32))
        with m.If(adv):
            # output register: the int8 result (sign-extended) when requantizing, else int32
            m.d.sync += [out_v.eq(flags[0]), out_l.eq(flags[1])]
            m.d.sync += [out_d[c].eq(res[c]) for c in range(C)]
        with m.If(start):
            m.d.sync += out_v.eq(0)
        return out_v, out_l, out_d


# ---------------------------------------------------------------------- unit spec

#: hard multipliers per output column of the int32 x int32 requantizer, by family (Yosys splits
#: the product into four 18x18 / 16x16 multipliers; 2x2 with requant on LFE5U-25F: 12 MULT18X18D)
REQUANT_DSPS_PER_COLUMN = {"ecp5": 4, "ice40": 4, "asic": 4}


def buffer_depths(rows: int, cols: int, dataflow: str, max_m: int, max_k: int,
                  max_n: int) -> tuple[int, int, int]:
    """Words of the A buffer (R bytes each), the B buffer (C bytes) and the channel table."""
    a = _ceil_div(max_m, rows) * max_k if dataflow == "os" else _ceil_div(max_k, rows) * max_m
    return a, _ceil_div(max_n, cols) * max_k, _ceil_div(max_n, cols)


def gemm_buffer_bits(rows: int, cols: int, dataflow: str, max_m: int, max_k: int, max_n: int) -> int:
    """On-chip buffer bits of an engine: A, B, the channel table (bias 32 + mult 32 + shift 6
    bits per lane) and, for WS, the partial-sum buffer (``max_m`` words of C int32)."""
    a, b, chan = buffer_depths(rows, cols, dataflow, max_m, max_k, max_n)
    psum = max_m * cols * 32 if dataflow == "ws" else 0
    return a * rows * 8 + b * cols * 8 + chan * cols * 70 + psum


def gemm_dsps(rows: int, cols: int, requant: bool, family: str) -> int:
    """Hard multipliers of an engine (measured rule, Yosys 0.70 + nextpnr 0.11).

    One per int8 MAC (MULT18X18D on ECP5, SB_MAC16 on iCE40 UP5K with ``synth_ice40 -dsp``),
    :data:`REQUANT_DSPS_PER_COLUMN` per output column for the requantizer, and one more when C
    is not a power of two (the epilogue's channel-block test multiplies by the constant C;
    measured 5x5: 26 MULT18X18D, 4x7: 29).
    """
    const_mul = 1 if cols & (cols - 1) else 0
    return rows * cols + const_mul + (REQUANT_DSPS_PER_COLUMN[family] * cols if requant else 0)


@dataclasses.dataclass(frozen=True)
class GemmSpec(UnitSpec):
    """Parameters of a :class:`GemmEngine` (the fields are its keyword arguments).

    :meth:`cycles` is :func:`gemm_cycles` (compute), :meth:`load_cycles` the operand loads
    plus the load-to-compute gap (:func:`gemm_load_cycles` + :data:`LOAD_COMPUTE_GAP`: the
    three load streams in parallel, strictly before compute), so that ``cycles + load_cycles``
    is :func:`gemm_total_cycles`, the command's first load word to its last result row.
    """

    rows: int
    cols: int
    dataflow: str = "os"
    max_m: int = 128
    max_k: int = 128
    max_n: int = 128
    requant: bool = True

    kind: ClassVar[str] = "gemm"
    summary: ClassVar[str] = "R x C systolic int8 GEMM engine"
    ops: ClassVar[tuple[str, ...]] = ("linear", "matmul", "grouped_linear")
    golden: ClassVar[str] = "golden.gemm.gemm_int"
    component: ClassVar[str] = "hw.gemm.GemmEngine"
    measured: ClassVar[tuple[Measured, ...]] = (
        Measured("ecp5", {"rows": 8, "cols": 8, "dataflow": "os", "max_m": 64, "max_k": 64,
                          "max_n": 64, "requant": True},
                 luts=13269, ffs=15670, dsps=96, brams=4, fmax_mhz=113.7,
                 command="fmforge build gemm --board ulx3s-85f --rows 8 --cols 8"),
        Measured("ecp5", {"rows": 8, "cols": 8, "dataflow": "os", "max_m": 64, "max_k": 64,
                          "max_n": 64, "requant": False},
                 luts=6295, ffs=12047, dsps=64, brams=4, fmax_mhz=123.1,
                 command="fmforge build gemm --board ulx3s-85f --rows 8 --cols 8 --no-requant"),
    )

    def __post_init__(self) -> None:
        for f, lim in (("rows", 64), ("cols", 64), ("max_m", _MAX_DIM), ("max_k", _MAX_DIM),
                       ("max_n", _MAX_DIM)):
            check_int(f, getattr(self, f), 1, lim)
        if self.dataflow not in DATAFLOWS:
            raise UnitParamError(f"dataflow must be one of {', '.join(DATAFLOWS)}, not "
                                 f"{self.dataflow!r}")
        if not isinstance(self.requant, bool):
            raise UnitParamError(f"requant must be a bool, not {self.requant!r}")

    def build(self) -> GemmEngine:
        return GemmEngine(**self.to_json())

    def check_shape(self, m: int, k: int, n: int) -> None:
        """``ValueError`` naming the dimension when M x K x N exceeds the buffers."""
        check_gemm_shape(m, k, n, max_m=self.max_m, max_k=self.max_k, max_n=self.max_n)

    def cycles(self, *, m: int, k: int, n: int) -> int:  # type: ignore[override]
        self.check_shape(m, k, n)
        return gemm_cycles(self.rows, self.cols, self.dataflow, m, k, n)

    def reference(self, a: Any, b: Any, bias: Any = None, mult: Any = None,  # type: ignore[override]
                  shift: Any = None) -> Any:
        """:func:`golden.gemm.gemm_int` (the requantizer only when this engine has one)."""
        if not self.requant:
            mult = shift = None
        return gemm_int(a, b, bias, mult, shift)

    def load_cycles(self, *, m: int, k: int, n: int, channels: bool = True) -> int:
        """Cycles from one command's first load word to its first compute cycle."""
        return gemm_load_cycles(self.rows, self.cols, self.dataflow, m, k, n, channels) + \
            LOAD_COMPUTE_GAP

    @property
    def buffer_bits(self) -> int:
        return gemm_buffer_bits(self.rows, self.cols, self.dataflow, self.max_m, self.max_k,
                                self.max_n)

    def resources(self, family: str) -> dict[str, Any]:
        dsps = gemm_dsps(self.rows, self.cols, self.requant, family)
        same = [b for b in self.measured if b.family == family and b.config == self.to_json()]
        if same:
            b = same[0]
            return {"dsps": b.dsps, "luts": b.luts, "ffs": b.ffs, "brams": b.brams,
                    "buffer_bits": self.buffer_bits, "estimated": False,
                    "basis": f"measured: {b.command}"}
        # logic scales with the MACs (PEs) of the nearest measured build of the same requant
        near = [b for b in self.measured if b.config["requant"] == self.requant] or list(self.measured)
        b = min(near, key=lambda b: abs(b.config["rows"] * b.config["cols"] - self.rows * self.cols))
        f = self.rows * self.cols / (b.config["rows"] * b.config["cols"])
        return {"dsps": dsps, "luts": math.ceil(b.luts * f), "ffs": math.ceil(b.ffs * f),
                "brams": None, "buffer_bits": self.buffer_bits, "estimated": True,
                "basis": f"DSPs: measured rule (hw.gemm.gemm_dsps); logic scaled x{f:.3g} by MACs "
                         f"from {b.config['rows']}x{b.config['cols']}: {b.command}"}
