"""UART receiver and transmitter, 8N1 (one start bit, eight data bits LSB first, one stop bit).

The bit time is ``divisor`` clock cycles (``clock_hz / baud``, rounded; a rate error up to about
2% still samples every bit inside its window). The host link (:mod:`hw.hostlink`,
docs/hostlink.md) runs over them; on the ULX3S they sit on the FT231X's pins.
"""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.lib import check_positive

__all__ = ["UartRx", "UartTx", "uart_bits", "uart_divisor"]


def uart_divisor(clock_hz: float, baud: float) -> int:
    """Clock cycles per bit for ``baud`` at ``clock_hz`` (rounded; at least 4)."""
    d = round(clock_hz / baud)
    if d < 4:
        raise ValueError(f"baud {baud:g} is too fast for a {clock_hz / 1e6:g} MHz clock "
                         f"(needs at least 4 cycles a bit)")
    return d


def uart_bits(byte: int) -> list[int]:
    """The ten line levels of one 8N1 character (start, data LSB first, stop)."""
    return [0] + [(byte >> i) & 1 for i in range(8)] + [1]


def _check_divisor(divisor: int) -> int:
    check_positive("divisor", divisor, 1 << 24)
    if divisor < 4:
        raise ValueError(f"divisor must be at least 4 cycles a bit, not {divisor}")
    return divisor


class UartRx(wiring.Component):
    """UART receiver (8N1).

    Interface: ``rx`` (In, the line, idle high; synchronised here through two flip-flops);
    ``o_data`` (Out stream of 8 bits): one payload per received character, held until taken,
    replaced (``overrun`` pulses) if a new character arrives first; ``frame_error`` (Out): pulses
    for a character whose stop bit is low (the character is dropped; the receiver then waits for
    the line to go high before it looks for the next start bit).

    Timing: a falling edge starts a character; the start bit is checked at its middle
    (``divisor // 2`` cycles later; a glitch returns to idle), each data bit sampled ``divisor``
    cycles after the previous sample, the stop bit likewise; the byte is offered in the cycle
    after the stop bit's sample, about 9.5 bit times after the start edge plus the synchroniser's
    two cycles. Matches :func:`uart_bits` on the line.
    """

    def __init__(self, *, divisor: int) -> None:
        self._div = _check_divisor(divisor)
        super().__init__({"rx": In(1, init=1), "o_data": Out(stream.Signature(8)),
                          "frame_error": Out(1), "overrun": Out(1)})

    divisor = property(lambda self: self._div)

    def elaborate(self, platform):
        m = Module()
        s1, s2 = Signal(init=1), Signal(init=1)
        m.d.sync += [s1.eq(self.rx), s2.eq(s1)]
        timer = Signal(range(self._div))
        nbit = Signal(range(9))
        shreg = Signal(8)
        with m.If(self.o_data.ready):
            m.d.sync += self.o_data.valid.eq(0)
        with m.FSM(name="uart_rx"):
            with m.State("IDLE"):
                with m.If(~s2):
                    m.d.sync += timer.eq(self._div // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer == 0):
                    with m.If(s2):
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [timer.eq(self._div - 1), nbit.eq(0)]
                        m.next = "DATA"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [shreg.eq(Cat(shreg[1:], s2)), timer.eq(self._div - 1),
                                 nbit.eq(nbit + 1)]
                    with m.If(nbit == 7):
                        m.next = "STOP"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("STOP"):
                with m.If(timer == 0):
                    with m.If(s2):
                        m.d.sync += [self.o_data.payload.eq(shreg), self.o_data.valid.eq(1)]
                        m.d.comb += self.overrun.eq(self.o_data.valid & ~self.o_data.ready)
                        m.next = "IDLE"
                    with m.Else():
                        m.d.comb += self.frame_error.eq(1)
                        m.next = "BREAK"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("BREAK"):  # a low stop bit: wait for the line to rise again
                with m.If(s2):
                    m.next = "IDLE"
        return m


class UartTx(wiring.Component):
    """UART transmitter (8N1).

    Interface: ``i_data`` (In stream of 8 bits): ready while idle; a taken byte goes out as
    :func:`uart_bits`, each level for ``divisor`` cycles, starting the cycle after it is taken;
    ``tx`` (Out, idle high). Throughput: one character per ``10 * divisor + 1`` cycles.
    """

    def __init__(self, *, divisor: int) -> None:
        self._div = _check_divisor(divisor)
        super().__init__({"i_data": In(stream.Signature(8)), "tx": Out(1, init=1)})

    divisor = property(lambda self: self._div)

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self._div))
        nbit = Signal(range(10))
        shreg = Signal(10, init=0x3FF)
        busy = Signal()
        m.d.comb += [self.i_data.ready.eq(~busy), self.tx.eq(shreg[0])]
        with m.If(~busy):
            with m.If(self.i_data.valid):
                m.d.sync += [shreg.eq(Cat(0, self.i_data.payload, 1)), busy.eq(1),
                             timer.eq(self._div - 1), nbit.eq(0)]
        with m.Elif(timer == 0):
            m.d.sync += [shreg.eq(Cat(shreg[1:], 1)), timer.eq(self._div - 1),
                         nbit.eq(nbit + 1)]
            with m.If(nbit == 9):
                m.d.sync += busy.eq(0)
        with m.Else():
            m.d.sync += timer.eq(timer - 1)
        return m
