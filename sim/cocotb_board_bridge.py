"""cocotb test run by ``fmforge.board_sim``: a TCP socket to the host runtime on one side, the
simulated SoC's UART pins on the other.

Bytes from the socket go onto ``rx`` as 8N1 characters (``$FMFORGE_UART_DIVISOR`` cycles a bit);
characters on ``tx`` are decoded (sampled in the middle of each bit) and sent to the socket. The
test ends when the host closes the socket. Python runs once per bit, never per cycle.
"""

from __future__ import annotations

import os
import socket

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge

__all__ = ["bridge"]


@cocotb.test()
async def bridge(dut):
    div = int(os.environ["FMFORGE_UART_DIVISOR"])
    port = int(os.environ["FMFORGE_BOARD_SIM_PORT"])
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns", impl="gpi").start())
    dut.rx.value = 1
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setblocking(False)

    async def from_tx():
        while True:
            await FallingEdge(dut.tx)
            await ClockCycles(dut.clk, div // 2)
            if int(dut.tx.value):
                continue  # a glitch, not a start bit
            byte = 0
            for i in range(8):
                await ClockCycles(dut.clk, div)
                byte |= int(dut.tx.value) << i
            await ClockCycles(dut.clk, div)  # the stop bit
            sock.setblocking(True)
            sock.sendall(bytes([byte]))
            sock.setblocking(False)

    cocotb.start_soon(from_tx())
    while True:
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            await ClockCycles(dut.clk, 10 * div)
            continue
        if not data:  # the host closed the link
            break
        for byte in data:
            for i in range(10):
                dut.rx.value = 0 if i == 0 else (1 if i == 9 else (byte >> (i - 1)) & 1)
                await ClockCycles(dut.clk, div)
    await ClockCycles(dut.clk, 2)
    sock.close()
