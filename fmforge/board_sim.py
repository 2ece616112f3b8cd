"""The host runtime against the Verilated board SoC: :class:`BoardSim`.

The SoC (:class:`boards.soc.Soc`, with its external memory in block RAM and optionally a weight
image preloaded there: the back door) is Verilated through :func:`sim.verilator.build` (cached by
a hash of its Verilog). A cocotb test (:mod:`sim.cocotb_board_bridge`) connects its UART pins to a
local TCP socket; :class:`BoardSim` listens on that socket and hands the host a
:class:`SocketTransport`, so :class:`golden.hostproto.Host` runs exactly as on a serial port:
every frame crosses the simulated UART pins bit by bit.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from boards.soc import Soc, SocConfig
from golden.hostproto import Host, HostLinkError
from sim.verilator import VerilatorBuild, build, run_cocotb, to_verilog

__all__ = ["BoardSim", "SocketTransport", "board_sim_build"]


def board_sim_build(cfg: SocConfig, progress: Any = None) -> VerilatorBuild:
    """The Verilated SoC of ``cfg`` (module ``fmforge_soc``; cached by content hash)."""
    if cfg.memory != "bram":
        raise HostLinkError("the board simulation runs the SoC with its memory in block RAM "
                            "(memory='bram')")
    return build(to_verilog(Soc(cfg), "fmforge_soc"), "fmforge_soc", progress=progress)


class SocketTransport:
    """A :class:`golden.hostproto.Transport` over a connected socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def write(self, data: bytes) -> None:
        self.sock.settimeout(None)
        self.sock.sendall(data)

    def read(self, n: int, timeout: float) -> bytes:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(n)
        except TimeoutError:
            return b""


class BoardSim:
    """``with BoardSim(cfg) as host:`` a :class:`golden.hostproto.Host` talking to the Verilated
    SoC through its UART pins. ``timeout`` is the host's per-answer timeout (wall seconds: a
    simulated byte takes far longer than a real one). On exit the link closes and the simulation
    ends; ``result`` then holds the cocotb outcome and ``seconds`` the simulation's wall time."""

    def __init__(self, cfg: SocConfig, *, timeout: float = 120.0, progress: Any = None) -> None:
        self.cfg = cfg
        self.timeout = timeout
        self.progress = progress
        self.result: dict | None = None
        self.seconds = 0.0
        self.build_seconds = 0.0

    def __enter__(self) -> Host:
        t0 = time.perf_counter()
        b = board_sim_build(self.cfg, self.progress)
        self.build_seconds = time.perf_counter() - t0
        self._listen = socket.create_server(("127.0.0.1", 0))
        self._listen.settimeout(self.timeout)
        port = self._listen.getsockname()[1]
        env = {"FMFORGE_BOARD_SIM_PORT": str(port),
               "FMFORGE_UART_DIVISOR": str(self.cfg.divisor)}
        self._t0 = time.perf_counter()

        def run() -> None:
            try:
                self.result = run_cocotb(b, "sim.cocotb_board_bridge", extra_env=env)
            except Exception as e:  # noqa: BLE001 - reported by __exit__
                self.result = {"failed": 1, "failures": [repr(e)]}

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        try:
            conn, _ = self._listen.accept()
        except TimeoutError:
            raise HostLinkError(f"the simulated board did not connect within {self.timeout:g} s"
                                ) from None
        self._conn = conn
        self.transport = SocketTransport(conn)
        return Host(self.transport, timeout=self.timeout)

    def __exit__(self, *exc: Any) -> None:
        try:
            self._conn.close()
        finally:
            self._listen.close()
        self._thread.join(timeout=self.timeout)
        self.seconds = time.perf_counter() - self._t0
        if exc[0] is None and self.result and self.result.get("failed"):
            raise HostLinkError(f"board simulation failed: {'; '.join(self.result['failures'])}")
