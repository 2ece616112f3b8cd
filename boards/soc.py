"""The board SoC: the fmforge core, its external memory and the UART host link.

:class:`Soc` (a component, board-independent; simulated in tests/boards/test_soc.py) is

```
 rx pin ─ UartRx ─┐                ┌─ imem write port ─┐
                  HostLink ────────┼─ start / done ────┼─ Core
 tx pin ─ UartTx ─┘    │           └─ counters ────────┘   │
                       └── memory port ─┬─ mux ─────────────┘ (the core's while it runs)
                                        └─ BramMemory (external memory, weight image preloaded)
```

The host link owns the external memory except while the core runs (START to ``done``); the
protocol is docs/hostlink.md. :class:`SocTop` puts a :class:`Soc` on a board: the sync domain on
the board oscillator, the UART on the board's ``uart`` pins (on the ULX3S the FT231X), LEDs 0-2
show done, error and running. The external memory is block RAM (small models; simulated and
built) or the board's SDRAM through LiteDRAM (``memory="sdram"``: elaborated and synthesised, not
yet simulated with an SDRAM model nor placed and routed).

The SoC's clock is ``SocConfig.clock_hz``: the board oscillator (25 MHz on the ULX3S; no PLL,
the sync domain is the platform's default one) or, at any other frequency, the output of an ECP5
``EHXPLLL`` fed by the oscillator (:mod:`boards.pll`: the solver's setting, the sync domain held
in reset until the PLL locks, the PLL clock constrained for nextpnr). ``clock_hz`` must be a
frequency the PLL makes exactly (:func:`soc_clock_hz` turns a request into it; :func:`soc_pll`
refuses any other), so the UART divisor, the host link's timeout and LiteDRAM are computed
for the clock the board really runs at. iCE40 boards run on their oscillator only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from amaranth import ClockDomain, Elaboratable, Module, Mux, Signal
from amaranth.lib import io, wiring
from amaranth.lib.wiring import In, Out

from boards.pll import DEFAULT_TOLERANCE, EcpPll, LockReset, solve_pll
from golden.errors import UserValueError
from hw.core import Core
from hw.core_spec import CoreSpec
from hw.extmem import BRAM_LATENCY, BramMemory
from hw.hostlink import HostLink
from hw.uart import UartRx, UartTx, uart_divisor

__all__ = ["Soc", "SocConfig", "SocTop", "soc_clock_hz", "soc_pll"]


@dataclass(frozen=True)
class SocConfig:
    """What a SoC is built from: the core (``core``, a :class:`hw.core_spec.CoreSpec`; its
    ``latency`` must be :data:`hw.extmem.BRAM_LATENCY` for the timing model to hold), the
    external memory (``memory``: ``"bram"`` on chip, ``ext_bytes``, ``image``: the bytes
    preloaded from address 0; or ``"sdram"``: the board's SDRAM through LiteDRAM,
    :class:`boards.litedram.SdramMemory`, generated for ``board``), the clock
    (``clock_hz``), the UART (``baud``), the host link's frame buffer (``max_payload``) and the
    core's S-queue row limit (``max_row``)."""

    core: CoreSpec
    ext_bytes: int = 64 * 1024
    clock_hz: float = 25e6
    baud: float = 1e6
    max_payload: int = 1024
    max_row: int = 512
    image: bytes = field(default=b"", repr=False)
    memory: str = "bram"
    board: str = "ulx3s-85f"

    def __post_init__(self) -> None:
        if self.memory not in ("bram", "sdram"):
            raise UserValueError(f"memory must be 'bram' or 'sdram', not {self.memory!r}")
        if self.memory == "sdram" and self.image:
            raise UserValueError("an SDRAM SoC cannot preload an image into the bitstream: "
                                 "the host writes it over the link")
        if self.memory == "bram" and self.core.latency != BRAM_LATENCY:
            raise UserValueError(f"the SoC's on-chip memory answers after {BRAM_LATENCY} cycles: "
                                 f"the core's latency must be {BRAM_LATENCY}, not "
                                 f"{self.core.latency}")
        if self.ext_bytes < 1 or len(self.image) > self.ext_bytes:
            raise UserValueError(f"the image ({len(self.image)} bytes) does not fit an external "
                                 f"memory of {self.ext_bytes} bytes")
        uart_divisor(self.clock_hz, self.baud)  # refuses a baud the clock cannot make

    @property
    def divisor(self) -> int:
        return uart_divisor(self.clock_hz, self.baud)

    @property
    def timeout_cycles(self) -> int:
        """Line silence that ends a frame: four character times."""
        return 40 * self.divisor


class Soc(wiring.Component):
    """Core + BRAM external memory + UART host link (module docstring; docs/hostlink.md).

    Interface: ``rx`` (In, the UART line from the host, idle high), ``tx`` (Out, to the host),
    ``done``, ``error``, ``running`` (Out, for LEDs).
    """

    def __init__(self, cfg: SocConfig) -> None:
        self._cfg = cfg
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "done": Out(1),
                          "error": Out(1), "running": Out(1)})

    cfg = property(lambda self: self._cfg)

    def elaborate(self, platform: Any) -> Module:
        c = self._cfg
        s = c.core
        m = Module()
        m.submodules.core = core = Core(
            rows=s.rows, cols=s.cols, dataflow=s.dataflow, bytes_per_cycle=s.bytes_per_cycle,
            queue_depth=s.queue_depth, sp_bytes=s.sp_bytes, imem_instrs=s.imem_instrs,
            max_m=s.max_m, max_k=s.max_k, max_n=s.max_n, max_row=c.max_row)
        if c.memory == "sdram":
            from boards.litedram import SdramMemory, generate
            mem = SdramMemory(generate(c.board, c.clock_hz), bytes_per_cycle=s.bytes_per_cycle)
        else:
            mem = BramMemory(size=c.ext_bytes, bytes_per_cycle=s.bytes_per_cycle, init=c.image)
        m.submodules.mem = mem
        m.submodules.link = link = HostLink(
            ext_bytes=c.ext_bytes, imem_instrs=s.imem_instrs, max_payload=c.max_payload,
            bytes_per_cycle=s.bytes_per_cycle, timeout=c.timeout_cycles)
        m.submodules.urx = urx = UartRx(divisor=c.divisor)
        m.submodules.utx = utx = UartTx(divisor=c.divisor)
        self.core, self.mem, self.link = core, mem, link  # for testbenches

        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]
        wiring.connect(m, urx.o_data, link.i_rx)
        wiring.connect(m, link.o_tx, utx.i_data)
        m.d.comb += [core.imem_w_en.eq(link.imem_w_en), core.imem_w_addr.eq(link.imem_w_addr),
                     core.imem_w_data.eq(link.imem_w_data), core.start.eq(link.start),
                     link.done.eq(core.done), link.error.eq(core.error),
                     link.error_pc.eq(core.error_pc)]
        for n in ("cnt_cycles", "cnt_busy_d", "cnt_busy_m", "cnt_busy_s", "cnt_mem_stall"):
            m.d.comb += getattr(link, n).eq(getattr(core, n))

        # the memory port: the core's while it runs, else the host link's
        run = link.running
        m.d.comb += [
            mem.i_req.valid.eq(Mux(run, core.o_req.valid, link.o_req.valid)),
            mem.i_req.payload.eq(Mux(run, core.o_req.payload, link.o_req.payload)),
            core.o_req.ready.eq(run & mem.i_req.ready),
            link.o_req.ready.eq(~run & mem.i_req.ready),
            core.i_rsp.payload.eq(mem.o_rsp.payload), link.i_rsp.payload.eq(mem.o_rsp.payload),
            core.i_rsp.valid.eq(run & mem.o_rsp.valid),
            link.i_rsp.valid.eq(~run & mem.o_rsp.valid),
            mem.o_rsp.ready.eq(Mux(run, core.i_rsp.ready, link.i_rsp.ready)),
            mem.i_wdata.valid.eq(Mux(run, core.o_wdata.valid, link.o_wdata.valid)),
            mem.i_wdata.payload.eq(Mux(run, core.o_wdata.payload, link.o_wdata.payload)),
            core.o_wdata.ready.eq(run & mem.i_wdata.ready),
            link.o_wdata.ready.eq(~run & mem.i_wdata.ready),
        ]
        m.d.comb += [self.done.eq(core.done), self.error.eq(core.error), self.running.eq(run)]
        return m


class SocTop(Elaboratable):
    """A :class:`Soc` on a board: the ``uart`` resource's rx/tx, LEDs 0-2 (done, error, running)
    and LED 7 a heartbeat (bit 23 of a counter: about 1.5 Hz at 25 MHz).

    When ``cfg.clock_hz`` is the board oscillator's frequency the sync domain is the platform's
    default one (the oscillator). Otherwise the oscillator, requested from the platform, feeds
    an ECP5 ``EHXPLLL`` (:func:`soc_pll`: the setting that makes ``cfg.clock_hz`` exactly,
    refused otherwise) whose output clocks the sync domain, held in reset by
    :class:`boards.pll.LockReset` until the PLL has locked (plus :data:`boards.pll.LOCK_CYCLES`
    cycles); the PLL clock is constrained at ``constraint_hz`` (default ``cfg.clock_hz``) for
    place and route."""

    def __init__(self, cfg: SocConfig, *, constraint_hz: float | None = None) -> None:
        self.soc = Soc(cfg)
        self.constraint_hz = constraint_hz
        self.pll: EcpPll | None = None  # the PLL of the last elaboration (None: the oscillator)

    def elaborate(self, platform: Any) -> Module:
        m = Module()
        m.submodules.soc = soc = self.soc
        beat = Signal(24)
        m.d.sync += beat.eq(beat + 1)
        if platform is None:
            return m
        cfg = soc.cfg
        self.pll = pll = solve_pll(getattr(platform, "family", "?"),
                                   platform.default_clk_frequency, cfg.clock_hz, _EXACT)
        if pll is not None:
            osc = platform.request(platform.default_clk, dir="-")
            m.submodules.osc_buf = osc_buf = io.Buffer("i", osc)
            # keep: the name survives synthesis, so nextpnr finds the constraint's net
            clk = Signal(name="pll_clk", attrs={"keep": 1})
            lock = Signal(name="pll_lock")
            m.submodules.pll = pll.instance(osc_buf.i, clk, lock)
            m.domains.sync = cd_sync = ClockDomain("sync")
            m.domains.pll = cd_pll = ClockDomain("pll", reset_less=True)
            m.submodules.lock_reset = lock_reset = LockReset(domain="pll")
            m.d.comb += [cd_sync.clk.eq(clk), cd_pll.clk.eq(clk), lock_reset.lock.eq(lock),
                         cd_sync.rst.eq(lock_reset.rst)]
            if platform.default_rst is not None:
                rst = platform.request(platform.default_rst, dir="-")
                m.submodules.rst_buf = rst_buf = io.Buffer("i", rst)
                m.d.comb += lock_reset.arst.eq(rst_buf.i)
            platform.add_clock_constraint(clk, self.constraint_hz or pll.out_hz)
        uart = platform.request("uart", 0)
        m.d.comb += [soc.rx.eq(uart.rx.i), uart.tx.o.eq(soc.tx)]
        for i, sig in enumerate((soc.done, soc.error, soc.running)):
            m.d.comb += platform.request("led", i).o.eq(sig)
        m.d.comb += platform.request("led", 7).o.eq(beat[-1])
        return m


_EXACT = 1e-9  # SocTop builds only the frequency the config states (the achieved one)


def soc_pll(clock_hz: float, board: Any) -> EcpPll | None:
    """The PLL that clocks the SoC at ``clock_hz`` on ``board`` (a :class:`boards.catalog.Board`
    or name): None when ``clock_hz`` is the board oscillator, else the EHXPLLL setting that
    makes exactly ``clock_hz``; refused when none does (the message names the nearest) or the
    board's FPGA has no PLL solver (iCE40)."""
    from boards.catalog import get_board
    b = get_board(board)
    return solve_pll(b.family, b.clock_mhz * 1e6, clock_hz, _EXACT)


def soc_clock_hz(board: Any, requested_hz: float | None = None,
                 tolerance: float = DEFAULT_TOLERANCE) -> float:
    """The SoC clock that ``board`` makes for ``requested_hz`` (default: its oscillator): the
    oscillator itself, or the PLL's exact output nearest the request (refused beyond
    ``tolerance``, relative). Use it for :attr:`SocConfig.clock_hz`, so that the UART divisor,
    LiteDRAM and every price see the frequency the board runs at."""
    from boards.catalog import get_board
    b = get_board(board)
    osc = b.clock_mhz * 1e6
    if requested_hz is None:
        return osc
    pll = solve_pll(b.family, osc, float(requested_hz), tolerance)
    return osc if pll is None else pll.out_hz
