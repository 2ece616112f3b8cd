"""Board top level: wraps any Amaranth component for a timing/utilisation build.

:class:`BoardTop` instantiates the unit under build and closes all of its ports on chip, so
that synthesis keeps every part of the unit and place-and-route measures the unit's own
timing:

* every input port bit is driven by a flip-flop. The flip-flops form 32-bit words: word 0 is
  loaded from a 32-bit Galois LFSR every cycle and word ``i`` from word ``i - 1`` rotated left
  by ``rot(i)`` bits. Every drive bit is therefore a distinct register with fanout one, nothing
  is constant, and no two drive bits can be merged by synthesis;
* every output port bit is captured in a flip-flop, then XOR-reduced ``fan_in`` bits at a time
  through a registered parity tree (one LUT level per stage) down to a single bit that drives
  an LED.

The clock is the board oscillator via the platform's default ``sync`` domain. The harness
adds at most one LUT level between registers, so it is never the critical path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from amaranth.build import ResourceError
from amaranth.hdl import Cat, Const, Elaboratable, Module, Signal, Value
from amaranth.lib import io, wiring
from amaranth.lib.wiring import Flow

from golden.errors import UserLookupError, UserValueError

__all__ = ["BoardTop", "LFSR32_TAPS", "lfsr32_next", "unit_ports", "port_bits"]

#: feedback mask of the 32-bit Galois LFSR x^32 + x^22 + x^2 + x + 1 (maximal length)
LFSR32_TAPS = 0x80200003
_LFSR_SEED = 0xACE1_2468


def lfsr32_next(state: int) -> int:
    """One step of the harness LFSR on a Python int (the reference for the RTL)."""
    state &= 0xFFFF_FFFF
    lsb = state & 1
    state >>= 1
    if lsb:
        state ^= LFSR32_TAPS
    return state


def _rot(i: int) -> int:
    """Rotation (in bits) between drive word ``i - 1`` and word ``i``; odd so it never repeats
    a word's alignment quickly."""
    return (7 * i + 3) % 32 or 1


def unit_ports(component: wiring.Component) -> Iterator[tuple[tuple[Any, ...], Flow, Value]]:
    """Yield ``(path, flow, value)`` for every port of ``component`` (flattened signature)."""
    if not isinstance(component, wiring.Component):
        raise TypeError(
            f"the unit under build must be an amaranth.lib.wiring.Component, not "
            f"{type(component).__name__}")
    for path, member, value in component.signature.flatten(component):
        yield path, member.flow, Value.cast(value)


def port_bits(component: wiring.Component) -> tuple[int, int]:
    """Total number of (input bits, output bits) of ``component``'s ports."""
    n_in = n_out = 0
    for _path, flow, value in unit_ports(component):
        if flow == Flow.In:
            n_in += len(value)
        else:
            n_out += len(value)
    return n_in, n_out


class BoardTop(Elaboratable):
    """Top level that drives ``unit``'s inputs from an LFSR and folds its outputs into an LED.

    Parameters: ``unit`` (an ``amaranth.lib.wiring.Component`` using the ``sync`` domain),
    ``fan_in`` (XOR inputs per parity-tree node, 2 to 6; 4 fits one LUT4), ``led`` (the
    resource name of the LED to drive; the first ``led``/``rgb_led``/``led_g`` the platform has
    when ``None``).

    Latency from an output bit of the unit to the LED: ``1 + parity_stages`` cycles.
    Elaborated without a platform (simulation, Verilog export) the LED is the ``led`` signal
    of this object.
    """

    def __init__(self, unit: wiring.Component, *, fan_in: int = 4, led: str | None = None):
        n_in, n_out = port_bits(unit)
        if n_out == 0:
            raise UserValueError(
                f"{type(unit).__name__} has no output ports: nothing would survive synthesis")
        if not isinstance(fan_in, int) or not 2 <= fan_in <= 6:
            raise UserValueError(f"fan_in must be an integer from 2 to 6, not {fan_in!r}")
        self._unit = unit
        self._fan_in = fan_in
        self._led_name = led
        self._n_in = n_in
        self._n_out = n_out
        self.led = Signal()

    @property
    def unit(self) -> wiring.Component:
        """The unit under build."""
        return self._unit

    @property
    def input_bits(self) -> int:
        """Number of unit input bits driven from the LFSR."""
        return self._n_in

    @property
    def output_bits(self) -> int:
        """Number of unit output bits folded into the LED."""
        return self._n_out

    @property
    def drive_words(self) -> int:
        """Number of 32-bit drive register words."""
        return (self._n_in + 31) // 32

    @property
    def parity_stages(self) -> int:
        """Number of registered XOR levels between the output capture registers and the LED."""
        n, stages = self._n_out, 0
        while n > 1:
            n = (n + self._fan_in - 1) // self._fan_in
            stages += 1
        return stages

    def _request_led(self, platform: Any) -> io.PortLike:
        """The I/O port of the first available LED (or LED colour channel)."""
        names = [self._led_name] if self._led_name else ["led", "rgb_led", "led_g", "led_r"]
        for name in names:
            try:
                res = platform.request(name, 0, dir="-")
            except ResourceError:
                continue
            if isinstance(res, io.PortLike):
                return res
            for sub in ("r", "g", "b"):
                if hasattr(res, sub):
                    return getattr(res, sub)
        raise UserLookupError(f"platform {type(platform).__name__} has no LED resource among {names}")

    def elaborate(self, platform: Any) -> Module:
        m = Module()
        m.submodules.unit = unit = self._unit

        # --- input side: LFSR -> chain of rotated 32-bit drive words -> unit inputs
        lfsr = Signal(32, init=_LFSR_SEED)
        m.d.sync += lfsr.eq(Cat(lfsr[1:], Const(0, 1)) ^ (Const(LFSR32_TAPS, 32) & lfsr[0].replicate(32)))
        words: list[Signal] = []
        prev: Value = lfsr
        for i in range(self.drive_words):
            w = Signal(32, name=f"drive{i}", init=(_LFSR_SEED * (i + 3)) & 0xFFFF_FFFF)
            r = _rot(i) if i else 0
            m.d.sync += w.eq(prev.rotate_left(r))
            words.append(w)
            prev = w
        drive = Cat(*words) if words else Const(0, 0)
        offset = 0
        for _path, flow, value in unit_ports(unit):
            if flow == Flow.In:
                m.d.comb += value.eq(drive[offset:offset + len(value)])
                offset += len(value)

        # --- output side: capture registers -> registered XOR tree -> LED
        outs = [value for _path, flow, value in unit_ports(unit) if flow == Flow.Out]
        level = Signal(self._n_out, name="capture")
        m.d.sync += level.eq(Cat(*outs))
        stage = 0
        while len(level) > 1:
            n_next = (len(level) + self._fan_in - 1) // self._fan_in
            nxt = Signal(n_next, name=f"parity{stage}")
            for j in range(n_next):
                m.d.sync += nxt[j].eq(level[j * self._fan_in:(j + 1) * self._fan_in].xor())
            level, stage = nxt, stage + 1
        m.d.comb += self.led.eq(level[0])

        if platform is not None:
            m.submodules.led_buf = led_buf = io.Buffer("o", self._request_led(platform))
            m.d.comb += led_buf.o.eq(self.led)
        return m
