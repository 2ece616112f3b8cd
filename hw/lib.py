"""Small hardware library shared by the units: parameter validation, stream framing, rounding,
saturation, and the streaming units' cycle bookkeeping.

Stream framing shared by the element-wise units (:class:`Requantizer`, :class:`hw.gelu.Gelu`)
----------------------------------------------------------------------------------------------
A *job* is a burst of input words whose final word carries ``last``. The pipeline is a chain of
``depth`` registers ending in the output register and advances (``adv``) only in cycles where
the output is not blocked (``~(o.valid & ~o.ready)``) **and** there is work: an input word is
offered, or the job's final word is still draining. A source that idles therefore freezes the
pipeline instead of inserting bubbles, and a sink that refuses freezes it too, so the unit's
``cycles`` counter (advancing cycles from the job's first accepted word to the transfer of its
final output word, inclusive) is exactly ``words + depth`` whatever the stall pattern
(:func:`elementwise_cycles`). The outputs of a job are all produced once its ``last`` word has
been accepted; words before it may wait in the pipeline while the source idles.

End-to-end timing seen at the ports (shared by all four nonlinear units)
-------------------------------------------------------------------------
A testbench counts the clock edges of a job from its first ``i_data`` transfer (valid & ready)
to its last ``o_data`` transfer, both inclusive, and the edges in that window at which the
unit was *held by a neighbour*: the sink refused (``o_data`` valid & ~ready) or the unit waited
for the source (``i_data`` ready & ~valid; the two never coincide, since a refused output
freezes the unit and drops ``i_data.ready``). The edge count is then exactly the unit's
``<unit>_cycles`` model plus those stall edges (:func:`elementwise_edges`,
:func:`requant_edges`, ``hw.gelu.gelu_edges``, ``hw.softmax.softmax_edges``,
``hw.layernorm.layernorm_edges``); with no stalls it is the model itself. A cycle the unit
loses on its own (a bubble outside the ``cycles`` counter) breaks the equality.
"""

from __future__ import annotations

import math

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream
from amaranth.lib.wiring import In, Out

from golden.errors import UserValueError
from hw.spec import UnitParamError

__all__ = [
    "round_half_up_const",
    "round_half_up_var",
    "check_positive",
    "check_lanes_divide",
    "row_unit_bookkeeping",
    "elementwise_cycles",
    "elementwise_job_cycles",
    "check_scales",
    "lane_stream",
    "stream_unit_ports",
    "check_stalls",
    "elementwise_edges",
    "FrameControl",
    "saturate_bits",
]


def round_half_up_const(v, s: int):
    """``v / 2**s`` rounded half up, for a constant ``s`` (as golden.requant.round_shift_right)."""
    return v if s == 0 else ((v >> (s - 1)) + 1) >> 1


def round_half_up_var(v: Value, s: Value) -> Value:
    """``v / 2**s`` rounded half up for a run-time shift ``s`` (``v`` itself for ``s = 0``):
    ``((2v >> s) + 1) >> 1``, arithmetic for a signed ``v``; as golden.requant.round_shift_right."""
    two = Cat(Const(0, 1), v)
    two = two.as_signed() if v.shape().signed else two
    return ((two >> s) + 1) >> 1


def check_positive(name: str, value: object, limit: int | None = None) -> int:
    """Validate a positive integer parameter (``ValueError`` with the parameter's name)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserValueError(f"{name} must be a positive integer, not {value!r}")
    if limit is not None and value > limit:
        raise UserValueError(f"{name} must be at most {limit}, not {value}")
    return value


def check_lanes_divide(lanes: int, length: int, name: str = "length") -> None:
    """``ValueError`` unless ``lanes`` divides the row length (named ``name`` in the message)."""
    if length % lanes:
        raise UserValueError(f"lanes={lanes} must divide the row length ({name}={length})")


def row_unit_bookkeeping(m: Module, adv, loading, i, o, cycles, busy):
    """The row units' handshake bookkeeping; returns ``accept`` (an input word taken now).

    The input is ready while the pipeline advances in the load phase; ``cycles`` counts the
    cycles that advance and either take a word or work outside the load phase; ``busy`` rises
    with the first word and falls with the transfer of the last output word.
    """
    accept = Signal(name="accept")
    m.d.comb += [i.ready.eq(adv & loading), accept.eq(i.valid & i.ready)]
    with m.If(adv & (accept | ~loading)):
        m.d.sync += cycles.eq(cycles + 1)
    with m.If(accept):
        m.d.sync += busy.eq(1)
    with m.If(o.valid & o.ready & o.payload.last):
        m.d.sync += busy.eq(0)
    return accept


def elementwise_cycles(words: int, depth: int) -> int:
    """Exact ``cycles`` of one job of ``words`` input words on a pipeline of ``depth`` registers."""
    check_positive("words", words)
    return words + depth


def elementwise_job_cycles(rows: int, length: int, lanes: int, depth: int) -> int:
    """Exact cycles of a job of ``rows`` rows of ``length`` values on a P-lane element-wise unit
    of ``depth`` registers: ``rows * length / P`` words, one per cycle, plus ``depth``."""
    check_positive("rows", rows)
    check_positive("length", length)
    check_positive("lanes", lanes)
    check_lanes_divide(lanes, length)
    return elementwise_cycles(rows * length // lanes, depth)


def check_scales(spec: object, fields: tuple[str, ...] = ("in_scale", "out_scale")) -> None:
    """``UnitParamError`` unless each of a unit spec's ``fields`` is a positive finite number."""
    for f in fields:
        v = getattr(spec, f)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v <= 0:
            raise UnitParamError(f"{f} must be a positive finite number, not {v!r}")


def lane_stream(lanes: int, bits: int = 8) -> data.StructLayout:
    """A word of ``lanes`` signed ``bits``-bit values with the ``last`` flag."""
    return data.StructLayout({"data": data.ArrayLayout(signed(bits), lanes), "last": unsigned(1)})


def stream_unit_ports(i_layout, o_layout) -> dict:
    """The streaming units' ports: ``i_data``, ``o_data`` and the ``busy``, ``cycles`` (32)
    and ``error`` outputs (a signature's members, in that order)."""
    return {
        "i_data": In(stream.Signature(i_layout)),
        "o_data": Out(stream.Signature(o_layout)),
        "busy": Out(1),
        "cycles": Out(32),
        "error": Out(1),
    }


def check_stalls(stalls: int) -> int:
    """Validate a stall-edge count (a non-negative integer)."""
    if not isinstance(stalls, int) or isinstance(stalls, bool) or stalls < 0:
        raise UserValueError(f"stalls must be a non-negative integer, not {stalls!r}")
    return stalls


def elementwise_edges(words: int, depth: int, stalls: int = 0) -> int:
    """Exact clock edges from a job's first input transfer to its last output transfer, inclusive.

    ``elementwise_cycles(words, depth) + stalls``; ``stalls`` is the number of edges in that
    window at which ``o_data`` was valid and not ready or ``i_data`` ready and not valid
    (module docstring, end-to-end timing).
    """
    return elementwise_cycles(words, depth) + check_stalls(stalls)


class FrameControl:
    """The element-wise units' job framing (see the module docstring), built into module ``m``.

    ``adv`` is the global advance; ``accept`` is an input transfer; ``valid[k]``/``last[k]`` are
    the occupancy bits of pipeline register ``k`` (``k = depth - 1`` is the output register,
    driven onto ``o.valid``/``o.payload.last``). ``busy``, ``cycles`` and a sticky ``error`` are
    driven onto the component's ports of the same names.
    """

    def __init__(self, m: Module, comp, depth: int, *, row_words: int) -> None:
        i, o = comp.i_data, comp.o_data
        self.adv = adv = Signal(name="adv")
        self.accept = accept = Signal(name="accept")
        drain = Signal(name="drain")
        o_ok = Signal(name="o_ok")
        self.valid = [Signal(name=f"v{k}") for k in range(depth)]
        self.last = [Signal(name=f"l{k}") for k in range(depth)]
        m.d.comb += [
            o_ok.eq(~(o.valid & ~o.ready)),
            i.ready.eq(o_ok & ~drain),
            adv.eq(o_ok & (i.valid | drain)),
            accept.eq(i.valid & i.ready),
            o.valid.eq(self.valid[-1]),
            o.payload.last.eq(self.last[-1]),
        ]
        with m.If(adv):
            m.d.sync += [self.valid[0].eq(accept), self.last[0].eq(accept & i.payload.last)]
            for k in range(1, depth):
                m.d.sync += [self.valid[k].eq(self.valid[k - 1]), self.last[k].eq(self.last[k - 1])]
        with m.Elif(o.valid & o.ready):  # taken while the pipeline is frozen
            m.d.sync += self.valid[-1].eq(0)
        final_out = o.valid & o.ready & o.payload.last
        with m.If(accept & i.payload.last):
            m.d.sync += drain.eq(1)
        with m.Elif(final_out):
            m.d.sync += drain.eq(0)
        # cycle counter: restarts with a job's first word, counts advancing cycles
        with m.If(adv):
            m.d.sync += comp.cycles.eq(Mux(comp.busy, comp.cycles + 1, 1))
        with m.If(accept):
            m.d.sync += comp.busy.eq(1)
        with m.Elif(final_out):
            m.d.sync += comp.busy.eq(0)
        # row position: a job must hold whole rows; `last` inside a row is a framing error
        self.group = Signal(range(max(row_words, 2)), name="group")
        with m.If(accept):
            at_end = self.group == row_words - 1
            m.d.sync += self.group.eq(Mux(at_end | i.payload.last, 0, self.group + 1))
            with m.If(i.payload.last & ~at_end):
                m.d.sync += comp.error.eq(1)


def saturate_bits(v: Value, bits: int) -> Value:
    """``clamp(v, -2**(bits-1), 2**(bits-1)-1)`` by a sign-extension check instead of compares."""
    w = len(v)
    top = v[bits - 1:]
    fits = (top == 0) | (top == (1 << (w - bits + 1)) - 1)
    sat = Cat(Const((1 << (bits - 1)) - 1, bits - 1), Const(0, 1))
    neg = Cat(Const(0, bits - 1), Const(1, 1))
    return Mux(fits, v[0:bits], Mux(v[w - 1], neg, sat)).as_signed()
