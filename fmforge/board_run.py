"""``fmforge run PLAN --board-sim``: the plan's core programs through the host runtime on the
Verilated board SoC (:mod:`fmforge.board_sim`).

Per program run: the SoC of the program's core (memory in block RAM, so the timing model's
latency is :data:`hw.extmem.BRAM_LATENCY`), its weight image preloaded through the back door (the
RAM's initial contents); everything else crosses the UART: the inputs written with WRITE_MEM, the
program with LOAD_PROGRAM, START, STATUS polls, the outputs read with READ_MEM and the counters
with READ_COUNTERS. The outputs are compared byte for byte with the golden core, the cycles with
the timing model. ``link_bytes`` counts the bytes both ways on the line; ``link_seconds`` is what
they take on the board's UART at the SoC's baud rate (10 bits a byte).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

__all__ = ["SerialTransport", "board_report", "board_runner", "plan_clock_hz", "soc_for_program"]

#: the SoC clock of a plan without a board core device: the default board's (ULX3S) oscillator
OSCILLATOR_HZ = 25e6


def plan_clock_hz(plan: dict[str, Any]) -> float:
    """The SoC clock of the plan's board core device (:func:`boards.soc_build.device_clock_hz`:
    with ``core:board=B:mhz=F`` the PLL's frequency), else :data:`OSCILLATOR_HZ`: the simulated
    SoC's UART divisor and link timeout follow it as on the board."""
    from boards.soc_build import device_clock_hz

    for d in plan.get("devices", []):
        board = d.get("params", {}).get("board")
        if d.get("kind") == "core" and board:
            return device_clock_hz(d, board)
    return OSCILLATOR_HZ


def soc_for_program(prog: Any, *, baud: float = 1e6, clock_hz: float = OSCILLATOR_HZ) -> Any:
    """The :class:`boards.soc.SocConfig` that runs ``prog`` (a compiler ``CoreProgram``)."""
    from boards.soc import SocConfig
    from hw.core_spec import CoreSpec
    from hw.extmem import BRAM_LATENCY

    c = prog.cfg
    imem = 1 << max(4, (len(prog.instrs) - 1).bit_length())
    spec = CoreSpec(rows=c.rows, cols=c.cols, dataflow=c.dataflow, latency=BRAM_LATENCY,
                    bytes_per_cycle=c.bytes_per_cycle, queue_depth=c.queue_depth,
                    sp_bytes=c.sp_bytes, imem_instrs=imem, max_m=c.max_m, max_k=c.max_k,
                    max_n=c.max_n)
    return SocConfig(core=spec, ext_bytes=prog.ext_bytes, clock_hz=clock_hz, baud=baud,
                     image=bytes(prog.image))


class SerialTransport:
    """A :class:`golden.hostproto.Transport` on a serial port (pyserial)."""

    def __init__(self, port: str, baud: float) -> None:
        try:
            import serial
        except ImportError:
            from golden.errors import UserFileNotFoundError
            raise UserFileNotFoundError("pyserial is not installed: `pip install pyserial` "
                                        "(or the 'build' extra)") from None
        from golden.hostproto import HostLinkError
        try:
            self.ser = serial.Serial(port, int(baud), timeout=1.0)
        except (serial.SerialException, OSError, ValueError) as e:
            raise HostLinkError(f"cannot open serial port {port}: {e}") from None

    def write(self, data: bytes) -> None:
        self.ser.write(data)
        self.ser.flush()

    def read(self, n: int, timeout: float) -> bytes:
        self.ser.timeout = timeout
        return self.ser.read(n)

    def close(self) -> None:
        self.ser.close()


def _check_board(info: dict[str, int], prog: Any) -> None:
    from golden.hostproto import HostLinkError
    n = len(prog.instrs)
    if info["ext_bytes"] < prog.ext_bytes or info["imem_instrs"] < n:
        raise HostLinkError(
            f"the board's SoC does not match the plan: it has {info['ext_bytes']} bytes of "
            f"memory and {info['imem_instrs']} instructions, the program needs "
            f"{prog.ext_bytes} and {n}; load the bitstream of 'fmforge build PLAN'")


def board_runner(stats: dict[str, Any], progress: Any = None, *, baud: float = 1e6,
                 port: str | None = None, timeout: float = 5.0,
                 clock_hz: float = OSCILLATOR_HZ) -> Any:
    """A program runner for :func:`compiler.core_run.run_on_core` (as
    :func:`fmforge.commands.run.rtl_runner`) over the simulated board, or with ``port`` over
    a real board's serial port (the image is then written over the link too, once per image;
    ``timeout`` seconds per answer); ``clock_hz``: the SoC's clock (:func:`plan_clock_hz`).
    ``stats`` accumulates ``match``, ``cycles``,
    ``predicted_cycles``, ``busy``, ``memory_stall_cycles``, ``link_bytes``, ``link_seconds``,
    ``sim_seconds``, ``build_seconds``, ``runs``, ``errors``."""
    import torch

    from fmforge.board_sim import BoardSim
    from fmforge.commands.run import _ranges
    from golden.core import CoreMemory, run_program
    from golden.hostproto import HostLinkError
    from hw.core_model import program_timing

    stats.update(match=True, cycles=0, predicted_cycles=0, memory_stall_cycles=0,
                 sim_seconds=0.0, build_seconds=0.0, runs=0, busy={"D": 0, "M": 0, "S": 0},
                 errors=[], link_bytes=0, link_seconds=0.0)
    loaded: set[str] = set()  # images already on the real board

    def runner(prog: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        mem = prog.memory(inputs)
        ins = [(lo, mem.ext[lo:lo + n].numpy().tobytes())
               for v in prog.inputs.values() for lo, n in _ranges(v)]
        outs = [r for v in prog.outputs.values() for r in _ranges(v)]
        gold = CoreMemory(1, 1)
        gold.ext, gold.sp = mem.ext.clone(), mem.sp.clone()
        run_program(prog.instrs, gold)
        cfg = soc_for_program(prog, baud=baud, clock_hz=clock_hz)
        if port is not None:
            session: Any = _SerialSession(port, baud, timeout, prog, loaded)
        else:
            if progress:
                progress(f"board simulation: {len(prog.instrs)} instructions, "
                         f"{len(prog.image):,} image bytes preloaded")
            session = BoardSim(cfg, timeout=600, progress=progress)
        t0 = time.perf_counter()
        with session as host:
            for lo, data in ins:
                host.write_mem(lo, data)
            host.load_program(prog.program_bytes())
            try:
                host.run()
            except HostLinkError as e:
                stats["errors"].append(str(e))
            got = [host.read_mem(lo, n) for lo, n in outs]
            cnt = host.counters()
            nbytes = host.bytes_sent + host.bytes_received
        stats["sim_seconds"] += time.perf_counter() - t0 - session.build_seconds
        stats["build_seconds"] += session.build_seconds
        ok = all(g == gold.ext[lo:lo + n].numpy().tobytes()
                 for g, (lo, n) in zip(got, outs, strict=True))
        stats["match"] &= ok
        stats["cycles"] += cnt["cycles"]
        timing_cfg = dataclasses.replace(prog.cfg, latency=cfg.core.latency if port is None
                                         else prog.cfg.latency)
        stats["predicted_cycles"] += program_timing(prog.instrs, timing_cfg).cycles
        stats["memory_stall_cycles"] += cnt["mem_stall"]
        for q in "DMS":
            stats["busy"][q] += cnt[f"busy_{q.lower()}"]
        stats["link_bytes"] += nbytes
        stats["link_seconds"] += nbytes * 10 / baud
        stats["runs"] += 1
        for (lo, n), g in zip(outs, got, strict=True):  # downstream ops read the board's bytes
            mem.ext[lo:lo + n] = torch.frombuffer(bytearray(g), dtype=torch.uint8)
        return {name: prog.read(mem, name) for name in prog.outputs}

    return runner


class _SerialSession:
    """A real board over its serial port: ``with`` gives a checked :class:`Host` with the
    program's image on the board (written once per image digest)."""

    build_seconds = 0.0

    def __init__(self, port: str, baud: float, timeout: float, prog: Any,
                 loaded: set[str]) -> None:
        self.port, self.baud, self.timeout, self.prog, self.loaded = (port, baud, timeout, prog,
                                                                      loaded)

    def __enter__(self) -> Any:
        from golden.hostproto import Host
        self.t = SerialTransport(self.port, self.baud)
        try:
            host = Host(self.t, timeout=self.timeout)
            _check_board(host.info(), self.prog)
            key = self.prog.digest()
            if key not in self.loaded:
                host.write_mem(0, bytes(self.prog.image))
                self.loaded.add(key)
        except BaseException:
            self.t.close()
            raise
        return host

    def __exit__(self, *exc: Any) -> None:
        self.t.close()


def board_report(r: dict[str, Any], stats: dict[str, Any]) -> None:
    """Add the board simulation's numbers to ``fmforge run``'s result ``r`` (per input, as the
    ``--sim`` fields, plus ``link_bytes`` and ``link_seconds``)."""
    n = max(1, r["n_inputs"])
    r.update(engine="board-sim", bit_exact=stats["match"],
             match=stats["match"] and stats["cycles"] == stats["predicted_cycles"],
             cycles=stats["cycles"] // n, predicted_cycles=stats["predicted_cycles"] // n,
             memory_stall_cycles=stats["memory_stall_cycles"] // n,
             array_utilization=stats["busy"]["M"] / stats["cycles"] if stats["cycles"] else 0.0,
             unit_busy={"queues": {q: v // n for q, v in stats["busy"].items()},
                        "ops": r["unit_busy"]["ops"]},
             link_bytes=stats["link_bytes"], link_seconds=stats["link_seconds"],
             sim_seconds=stats["sim_seconds"], build_seconds=stats["build_seconds"],
             board_errors=stats["errors"])
