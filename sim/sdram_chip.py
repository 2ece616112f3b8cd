"""A behavioural SDR SDRAM chip for simulation: :class:`SdrSdramChip`.

The model is the chip side of the pins, one call of :meth:`SdrSdramChip.edge` per rising edge of
the SDRAM clock: it decodes the command on ``cs_n``/``ras_n``/``cas_n``/``we_n`` (with ``cke``,
``ba``, ``a``), keeps the banks' open rows, the mode register, the read pipeline (CAS latency)
and the write bursts, stores the data (byte lanes under ``dqm``) and returns what the chip
drives on ``dq`` in the cycle after the edge. Commands: DESELECT, NOP, ACTIVE, READ, WRITE (both
with auto precharge on ``A10``), BURST TERMINATE, PRECHARGE (one bank, or all with ``A10``),
AUTO REFRESH, MODE REGISTER SET (burst length, burst type, CAS latency, write burst mode).

It checks what is cheap to check, raising :class:`SdramProtocolError` (or, with
``strict=False``, recording the message in :attr:`SdrSdramChip.violations`): a command before
the power-up wait, an access before the initialisation (precharge all, two auto refreshes, mode
register set), ACTIVE on a bank with an open row, READ/WRITE on a bank with none, AUTO REFRESH
or MODE REGISTER SET with a bank open, a reserved mode (CAS latency, burst length, operating
mode), the minimum times tRCD, tRP, tRAS, tRC, tRRD, tWR, tRFC, tMRD (ceil of the nanoseconds at
the clock, as a controller must count them), refreshes further apart than nine tREFI (eight
may be postponed), write data not driven on a lane that is not masked, and the controller
driving ``dq`` while the chip does (read to write turnaround).

Geometry and timings default to the ULX3S's AS4C16M16SA-6 (16M x 16: 4 banks, 8192 rows, 512
columns; datasheet minimum times for the -6 grade). The model is written from the JEDEC SDR
command truth table, not from a vendor model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["AS4C16M16_6", "SdrGeometry", "SdrSdramChip", "SdrTimings", "SdramProtocolError",
           "AS4C16M16_GEOMETRY"]


class SdramProtocolError(AssertionError):
    """The controller broke the SDRAM protocol or a minimum time (the message says which)."""


@dataclass(frozen=True)
class SdrGeometry:
    """Chip organisation: ``banks``, ``row_bits``, ``col_bits``, data ``width`` (bits)."""

    banks: int = 4
    row_bits: int = 13
    col_bits: int = 9
    width: int = 16


@dataclass(frozen=True)
class SdrTimings:
    """Minimum times in ns (``*_ck`` in clock cycles) and the refresh interval tREFI in ns;
    ``power_up_ns`` is the wait with a stable clock before the first command."""

    tRCD: float = 18.0
    tRP: float = 18.0
    tRAS: float = 42.0
    tRC: float = 60.0
    tRRD: float = 12.0
    tWR_ck: int = 2
    tRFC: float = 60.0
    tMRD_ck: int = 2
    tREFI: float = 64e6 / 8192
    power_up_ns: float = 200e3


AS4C16M16_GEOMETRY = SdrGeometry()
AS4C16M16_6 = SdrTimings()

_FAR = -(1 << 40)  # "long ago": no minimum time applies


@dataclass
class _Bank:
    row: int | None = None
    act_at: int = _FAR       # edge of the last ACTIVE
    pre_at: int = _FAR       # edge at which the last precharge took effect
    wr_last: int = _FAR      # edge of the last write data into the open row
    autopre_at: int | None = None  # edge of a pending auto precharge


class SdrSdramChip:
    """See the module docstring. ``clock_hz``: the SDRAM clock (minimum times are converted to
    cycles with it). ``mem`` maps ``(bank, row, column)`` to the stored word (a missing key was
    never written; a read of it gives 0 and counts in :attr:`uninitialised_reads`).
    :attr:`stats` counts the commands by name; :attr:`refresh_intervals` lists the cycles
    between successive auto refreshes after the initialisation."""

    def __init__(self, clock_hz: float, *, geometry: SdrGeometry = AS4C16M16_GEOMETRY,
                 timings: SdrTimings = AS4C16M16_6, strict: bool = True) -> None:
        if clock_hz <= 0:
            raise ValueError(f"clock_hz must be positive, not {clock_hz}")
        self.geometry = geometry
        self.timings = timings
        self.clock_hz = float(clock_hz)
        self.strict = strict
        period = 1e9 / self.clock_hz

        def ck(ns: float) -> int:
            return max(1, math.ceil(ns / period - 1e-9))

        t = timings
        self.ck = {"tRCD": ck(t.tRCD), "tRP": ck(t.tRP), "tRAS": ck(t.tRAS), "tRC": ck(t.tRC),
                   "tRRD": ck(t.tRRD), "tWR": t.tWR_ck, "tRFC": ck(t.tRFC), "tMRD": t.tMRD_ck}
        self.refresh_limit = 9 * math.floor(t.tREFI / period)
        self.power_up_edges = math.ceil(t.power_up_ns / period)
        self.mem: dict[tuple[int, int, int], int] = {}
        self.violations: list[str] = []
        self.stats: dict[str, int] = {}
        self.uninitialised_reads = 0
        self.trace: list[tuple[int, str, int, int]] | None = None  # a list: (edge, command, ba, a)
        self.banks = [_Bank() for _ in range(geometry.banks)]
        self.n = -1                   # index of the current edge
        self.mode: int | None = None  # the mode register, once set
        self.cl = 0
        self.bl = 1
        self.burst_type = 0
        self.write_single = False
        self.mrs_at = _FAR
        self.ref_at = _FAR
        self.act_at = _FAR            # any bank
        self.precharged_all = False   # the init's precharge all seen
        self.init_refreshes = 0
        self.refresh_intervals: list[int] = []
        self._reads: dict[int, tuple[int, int, int]] = {}  # edge -> (bank, row, col) to drive
        self._wburst: list[tuple[int, int, int]] = []       # remaining write beats
        self._driving = [False, False]                     # chip drives in slots n-2, n-1
        self._dqm_hist = [0, 0, 0]                          # dqm at edges n-2, n-1, n
        self._wmask = (1 << geometry.width) - 1
        self._lanes = geometry.width // 8

    # ---- helpers
    def _fail(self, msg: str) -> None:
        msg = f"SDRAM edge {self.n}: {msg}"
        self.violations.append(msg)
        if self.strict:
            raise SdramProtocolError(msg)

    def _since(self, what: str, at: int, key: str) -> None:
        need = self.ck[key]
        if self.n - at < need:
            self._fail(f"{what}: {self.n - at} cycles after, {key} needs {need}")

    def _count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1

    @property
    def initialised(self) -> bool:
        """Precharge all, two auto refreshes and a mode register set seen (in that order)."""
        return self.mode is not None and self.init_refreshes >= 2

    def _check_access(self, what: str) -> None:
        if not self.initialised:
            self._fail(f"{what} before the initialisation (precharge all, 2 auto refreshes, "
                       "mode register set)")
        elif self.mode is not None and (self.mode >> 7) & 3:
            self._fail(f"{what} with the mode register in a reserved operating mode "
                       f"(A8:A7 = {(self.mode >> 7) & 3})")
        self._since(what + " after MODE REGISTER SET", self.mrs_at, "tMRD")
        self._since(what + " after AUTO REFRESH", self.ref_at, "tRFC")

    def _settle_autoprecharge(self) -> None:
        for b in self.banks:
            if b.autopre_at is not None and self.n >= b.autopre_at:
                b.row, b.pre_at, b.autopre_at = None, b.autopre_at, None

    def _burst_cols(self, col: int) -> list[int]:
        """The columns of a burst that starts at ``col`` (sequential or interleaved wrap)."""
        bl = self.bl
        if bl == 0:  # full page
            n = 1 << self.geometry.col_bits
            return [(col + i) % n for i in range(n)]
        base = col & ~(bl - 1)
        if self.burst_type:
            return [base | ((col & (bl - 1)) ^ i) for i in range(bl)]
        return [base | ((col + i) & (bl - 1)) for i in range(bl)]

    def word(self, bank: int, row: int, col: int) -> int | None:
        """The stored word at ``(bank, row, col)`` (``None``: never written)."""
        return self.mem.get((bank, row, col))

    # ---- one edge
    def edge(self, *, cke: int, cs_n: int, ras_n: int, cas_n: int, we_n: int, ba: int, a: int,
             dqm: int, dq: int, dq_oe: int) -> int | None:
        """The pins at rising edge ``n`` of the SDRAM clock (``dq``/``dq_oe``: what the
        controller drives, ``dq_oe`` a bit per data line). Returns the word the chip drives on
        ``dq`` from this edge to the next (``None``: high impedance; the data of a READ at edge
        ``n - CL``); lanes masked by ``dqm`` two edges before their data (the read DQM latency)
        read as 0."""
        self.n += 1
        n = self.n
        self._dqm_hist = [self._dqm_hist[1], self._dqm_hist[2], dqm]
        self._settle_autoprecharge()
        cmd = "DESELECT" if cs_n else ("NOP", "BURST TERMINATE", "READ", "WRITE", "ACTIVE",
                                       "PRECHARGE", "AUTO REFRESH", "MODE REGISTER SET"
                                       )[7 - (ras_n << 2 | cas_n << 1 | we_n)]
        if not cke:
            cmd = "DESELECT"  # CKE low (power-up, power down): the command is not registered
        if cmd not in ("DESELECT", "NOP"):
            self._count(cmd)
            if self.trace is not None:
                self.trace.append((n, cmd, ba, a))
            if n < self.power_up_edges:
                self._fail(f"{cmd} {n} cycles after power-up, the chip needs "
                           f"{self.power_up_edges} ({self.timings.power_up_ns / 1e3:g} us)")
        g = self.geometry
        bank = ba & (g.banks - 1)
        col = a & ((1 << g.col_bits) - 1)
        b = self.banks[bank]

        if cmd in ("READ", "WRITE", "BURST TERMINATE", "PRECHARGE"):
            # a new access, a terminate or a precharge (of the burst's bank) ends the running
            # bursts: a read's data stops CAS latency later, a write's at once
            def ended(beat_bank: int) -> bool:
                return cmd != "PRECHARGE" or bool(a >> 10 & 1) or beat_bank == bank
            self._wburst = [w for w in self._wburst if not ended(w[0])]
            stop = n + (0 if cmd == "WRITE" else self.cl)
            self._reads = {e: v for e, v in self._reads.items() if e < stop or not ended(v[0])}
        if cmd == "ACTIVE":
            if b.row is not None:
                self._fail(f"ACTIVE on bank {bank} with row {b.row} open")
            self._check_access("ACTIVE")
            self._since(f"ACTIVE bank {bank} after its PRECHARGE", b.pre_at, "tRP")
            self._since(f"ACTIVE bank {bank} after its ACTIVE", b.act_at, "tRC")
            self._since(f"ACTIVE bank {bank} after an ACTIVE", self.act_at, "tRRD")
            b.row, b.act_at = a & ((1 << g.row_bits) - 1), n
            self.act_at = n
        elif cmd in ("READ", "WRITE"):
            self._check_access(cmd)
            if b.row is None:
                self._fail(f"{cmd} on bank {bank} with no open row")
                return self._drive(dq_oe)
            self._since(f"{cmd} bank {bank} after its ACTIVE", b.act_at, "tRCD")
            cols = self._burst_cols(col)
            if cmd == "WRITE" and self.write_single:
                cols = cols[:1]
            beats = [(bank, b.row, c) for c in cols]
            if cmd == "READ":
                for i, beat in enumerate(beats):
                    self._reads[n + self.cl + i] = beat
                end = n + len(beats)  # READ with auto precharge: precharge after the burst
            else:
                self._write_beat(beats[0], dq, dq_oe, dqm)
                self._wburst = beats[1:]
                end = n + len(beats) - 1 + self.ck["tWR"]
            if a >> 10 & 1:
                b.autopre_at = end
        elif cmd == "PRECHARGE":
            targets = self.banks if a >> 10 & 1 else [b]
            for i, t in enumerate(targets):
                if t.row is None:
                    continue  # precharging an idle bank is a NOP
                k = i if a >> 10 & 1 else bank
                self._since(f"PRECHARGE bank {k} after its ACTIVE", t.act_at, "tRAS")
                self._since(f"PRECHARGE bank {k} after write data", t.wr_last, "tWR")
                t.row, t.pre_at, t.autopre_at = None, n, None
            if a >> 10 & 1:
                self.precharged_all = True
        elif cmd == "AUTO REFRESH":
            self._check_idle("AUTO REFRESH")
            self._since("AUTO REFRESH after AUTO REFRESH", self.ref_at, "tRFC")
            self._since("AUTO REFRESH after MODE REGISTER SET", self.mrs_at, "tMRD")
            for i, t in enumerate(self.banks):
                self._since(f"AUTO REFRESH after PRECHARGE of bank {i}", t.pre_at, "tRP")
            if self.initialised and self.ref_at != _FAR:
                gap = n - self.ref_at
                self.refresh_intervals.append(gap)
                if gap > self.refresh_limit:
                    self._fail(f"AUTO REFRESH {gap} cycles after the previous one (at most "
                               f"{self.refresh_limit}: eight postponed tREFI)")
            if self.precharged_all:
                self.init_refreshes += 1
            self.ref_at = n
        elif cmd == "MODE REGISTER SET":
            self._check_idle("MODE REGISTER SET")
            self._since("MODE REGISTER SET after AUTO REFRESH", self.ref_at, "tRFC")
            if ba:
                self._fail(f"MODE REGISTER SET with BA = {ba} (must be 0)")
            bl_code, cl = a & 7, (a >> 4) & 7
            if bl_code not in (0, 1, 2, 3, 7) or (bl_code == 7 and a >> 3 & 1):
                self._fail(f"MODE REGISTER SET: reserved burst length code {bl_code}")
            if cl not in (2, 3):
                self._fail(f"MODE REGISTER SET: CAS latency {cl} (the chip has 2 and 3)")
            self.mode = a
            self.bl = 0 if bl_code == 7 else 1 << bl_code
            self.burst_type = a >> 3 & 1
            self.cl = cl
            self.write_single = bool(a >> 9 & 1)
            self.mrs_at = n
            if not self.precharged_all:
                self._fail("MODE REGISTER SET before PRECHARGE ALL")
        if self._wburst and cmd not in ("READ", "WRITE"):  # a write burst goes on
            self._write_beat(self._wburst.pop(0), dq, dq_oe, dqm)
        return self._drive(dq_oe)

    def _check_idle(self, what: str) -> None:
        open_ = [f"{i} (row {t.row})" for i, t in enumerate(self.banks) if t.row is not None]
        if open_:
            self._fail(f"{what} with banks open: {', '.join(open_)}")

    def _write_beat(self, beat: tuple[int, int, int], dq: int, dq_oe: int, dqm: int) -> None:
        bank, row, col = beat
        keep = 0
        for lane in range(self._lanes):
            if not dqm >> lane & 1:
                lm = 0xFF << (8 * lane)
                if dq_oe & lm != lm:
                    self._fail(f"WRITE bank {bank} row {row} col {col}: byte lane {lane} not "
                               "driven by the controller and not masked")
                keep |= lm
        old = self.mem.get(beat, 0)
        if keep:
            self.mem[beat] = (old & ~keep | dq & keep) & self._wmask
            self.banks[bank].wr_last = self.n

    def _drive(self, dq_oe: int) -> int | None:
        """The word for the slot from this edge; checks that the controller does not drive
        ``dq`` in a slot where the chip does (this edge's slot, or the previous one whose data
        is held until after this edge)."""
        beat = self._reads.pop(self.n, None)
        out = None
        if beat is not None:
            v = self.mem.get(beat)
            if v is None:
                self.uninitialised_reads += 1
                v = 0
            dqm = self._dqm_hist[0]  # the slot's data is masked by dqm two edges before it
            for lane in range(self._lanes):
                if dqm >> lane & 1:
                    v &= ~(0xFF << (8 * lane))
            out = v
        self._driving = [self._driving[1], out is not None]  # slots n - 1, n
        if dq_oe and any(self._driving):
            self._fail("the controller drives dq while the chip drives read data "
                       "(read to write turnaround)")
        return out
