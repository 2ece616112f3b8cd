"""The host link protocol (docs/hostlink.md): framing, the device's reference model and the host.

Both directions carry the same frame::

    SOF (0xA5) | LEN (u16 LE) | SEQ (u8) | CMD (u8) | PAYLOAD (LEN bytes) | CRC (u32 LE)

``CRC`` is CRC-32 (IEEE 802.3, reflected, ``zlib.crc32``) of every byte from ``LEN`` to the end of
``PAYLOAD``. A response echoes the request's ``SEQ``; its ``CMD`` is the request's command with
bit 7 set (:data:`RESPONSE_BIT`), or :data:`ERROR` with a two-byte payload ``[code, command]``.

:class:`DeviceModel` is the golden model of the board's controller (:class:`hw.hostlink.HostLink`
is verified against it byte for byte): it acts on a :class:`golden.core.CoreMemory` (the external
memory) and an instruction memory, and runs the program with :func:`golden.core.run_program`.
:class:`Host` is the host side: it frames commands, checks responses and turns error frames into
:class:`HostLinkError`, over any :class:`Transport` (a serial port, a pseudo-terminal to a
simulation, or :class:`ModelTransport`, the device model in-process).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from golden.core import INSTR_BYTES, CoreError, CoreMemory, decode, run_program
from golden.errors import UserError

__all__ = [
    "CMD_NAMES",
    "COUNTER_NAMES",
    "ERROR",
    "ERROR_NAMES",
    "E_BAD_ADDRESS",
    "E_BAD_COMMAND",
    "E_BAD_CRC",
    "E_BAD_LENGTH",
    "E_BUSY",
    "E_TRUNCATED",
    "Frame",
    "FrameParser",
    "HEADER_BYTES",
    "Host",
    "HostLinkError",
    "INFO",
    "LOAD_PROGRAM",
    "DeviceModel",
    "ModelTransport",
    "OVERHEAD_BYTES",
    "PROTOCOL_VERSION",
    "READ_COUNTERS",
    "READ_MEM",
    "RESPONSE_BIT",
    "SOF",
    "START",
    "STATUS",
    "Transport",
    "WRITE_MEM",
    "crc32",
    "encode_frame",
]

PROTOCOL_VERSION = 1
SOF = 0xA5
HEADER_BYTES = 5  # SOF, LEN (2), SEQ, CMD
OVERHEAD_BYTES = HEADER_BYTES + 4  # and the CRC
RESPONSE_BIT = 0x80

WRITE_MEM = 0x01
READ_MEM = 0x02
LOAD_PROGRAM = 0x03
START = 0x04
STATUS = 0x05
READ_COUNTERS = 0x06
INFO = 0x07
ERROR = 0xFF
CMD_NAMES = {WRITE_MEM: "WRITE_MEM", READ_MEM: "READ_MEM", LOAD_PROGRAM: "LOAD_PROGRAM",
             START: "START", STATUS: "STATUS", READ_COUNTERS: "READ_COUNTERS", INFO: "INFO",
             ERROR: "ERROR"}

E_BAD_CRC = 1
E_BAD_LENGTH = 2
E_BAD_COMMAND = 3
E_BAD_ADDRESS = 4
E_TRUNCATED = 5
E_BUSY = 6
ERROR_NAMES = {E_BAD_CRC: "bad CRC", E_BAD_LENGTH: "wrong length", E_BAD_COMMAND: "unknown command",
               E_BAD_ADDRESS: "address out of range", E_TRUNCATED: "truncated frame",
               E_BUSY: "core busy"}

COUNTER_NAMES = ("cycles", "busy_d", "busy_m", "busy_s", "mem_stall")
"""The five 32-bit counters READ_COUNTERS returns, in order (:class:`hw.core.Core`'s ``cnt_*``)."""


def crc32(data: bytes) -> int:
    """CRC-32 of ``data`` (IEEE 802.3: polynomial 0x04C11DB7 reflected, init and final xor
    0xFFFFFFFF), as ``zlib.crc32``."""
    return zlib.crc32(bytes(data)) & 0xFFFFFFFF


def encode_frame(seq: int, cmd: int, payload: bytes = b"") -> bytes:
    """The bytes of one frame."""
    if not 0 <= seq <= 0xFF or not 0 <= cmd <= 0xFF:
        raise ValueError(f"seq and cmd are bytes, not {seq}, {cmd}")
    if len(payload) > 0xFFFF:
        raise ValueError(f"a payload is at most 65535 bytes, not {len(payload)}")
    body = struct.pack("<HBB", len(payload), seq, cmd) + bytes(payload)
    return bytes([SOF]) + body + struct.pack("<I", crc32(body))


@dataclass(frozen=True)
class Frame:
    """A frame whose CRC checked: ``seq``, ``cmd``, ``payload``."""

    seq: int
    cmd: int
    payload: bytes

    def encode(self) -> bytes:
        return encode_frame(self.seq, self.cmd, self.payload)


class FrameParser:
    """Byte-at-a-time frame receiver, the state machine both ends use.

    ``push(byte)`` returns ``None`` while a frame is incomplete, else one event:
    ``("frame", Frame)`` or ``("error", code, seq, cmd)`` for a frame whose LEN exceeds
    ``max_payload`` (:data:`E_BAD_LENGTH`) or whose CRC failed (:data:`E_BAD_CRC`).
    Bytes outside a frame other than SOF are ignored. ``idle()`` is the line going quiet for
    the timeout: inside a frame it returns ``("error", E_TRUNCATED, seq, cmd)``.
    ``seq``/``cmd`` in error events are the bytes as received (0 when not yet received).
    """

    def __init__(self, max_payload: int = 0xFFFF) -> None:
        self.max_payload = max_payload
        self._reset()

    def _reset(self) -> None:
        self.state = "hunt"
        self.buf = bytearray()
        self.need = 0
        self.seq = self.cmd = 0

    @property
    def in_frame(self) -> bool:
        return self.state != "hunt"

    def push(self, byte: int) -> tuple | None:
        if self.state == "hunt":
            if byte == SOF:
                self.state, self.buf, self.seq, self.cmd = "header", bytearray(), 0, 0
            return None
        self.buf.append(byte)
        if self.state == "header":
            if len(self.buf) == 3:
                self.seq = byte
            if len(self.buf) == 4:
                self.cmd = byte
                n = self.buf[0] | self.buf[1] << 8
                if n > self.max_payload:
                    ev = ("error", E_BAD_LENGTH, self.seq, self.cmd)
                    self._reset()
                    return ev
                self.state, self.need = "body", n + 4
            return None
        self.need -= 1
        if self.need:
            return None
        body, crc = bytes(self.buf[:-4]), struct.unpack("<I", bytes(self.buf[-4:]))[0]
        seq, cmd = self.seq, self.cmd
        self._reset()
        if crc32(body) != crc:
            return ("error", E_BAD_CRC, seq, cmd)
        return ("frame", Frame(seq, cmd, body[4:]))

    def idle(self) -> tuple | None:
        if self.state == "hunt":
            return None
        ev = ("error", E_TRUNCATED, self.seq, self.cmd)
        self._reset()
        return ev


# ------------------------------------------------------------------------------------------------
# the device


class DeviceModel:
    """Golden model of the board's host-link controller.

    State: ``mem`` (a :class:`CoreMemory` of ``ext_bytes`` external bytes and ``sp_bytes``
    scratchpad), ``imem`` (``imem_instrs`` instructions of 32 bytes, zero at reset), the core's
    ``done``/``error``/``error_pc`` flags and five counters.

    Behaviour (docs/hostlink.md): a frame is acted on only when its CRC checks, its length is
    right for its command and every address is in range; otherwise nothing changes and an error
    frame answers. After a framing error (LEN above ``max_payload``, bad CRC) the controller
    discards bytes until the line is idle (:meth:`idle`), then answers once; a frame cut short
    is answered on idle with :data:`E_TRUNCATED`. ``START`` runs the program at once
    (:func:`golden.core.run_program` on the instructions up to ``HALT``); ``counters`` (optional)
    gives the five counters of a program, e.g. from :func:`hw.core_model.program_timing`.
    An illegal instruction sets ``error`` with ``error_pc`` its pc; the instructions before it
    run (the core dispatched them), the counters keep their values. The model's core finishes at
    once, so it never answers :data:`E_BUSY` (the RTL does while its core runs).
    """

    def __init__(self, *, ext_bytes: int, imem_instrs: int, max_payload: int = 1024,
                 sp_bytes: int = 4096,
                 counters: Callable[[list], tuple[int, ...]] | None = None) -> None:
        if max_payload < 2 * INSTR_BYTES + 2 or max_payload > 0xFFFF:
            raise ValueError(f"max_payload must be in [{2 * INSTR_BYTES + 2}, 65535], "
                             f"not {max_payload}")
        self.ext_bytes, self.imem_instrs, self.max_payload = ext_bytes, imem_instrs, max_payload
        self.mem = CoreMemory(ext_bytes, sp_bytes)
        self.imem = bytearray(imem_instrs * INSTR_BYTES)
        self.done = self.error = False
        self.error_pc = 0
        self.counter_values = (0,) * len(COUNTER_NAMES)
        self._counters = counters
        self._parser = FrameParser(max_payload)
        self._discard: tuple | None = None  # the error to send when the line goes idle
        self.executed: list[int] = []  # commands acted on, in order

    # -- the line

    def receive(self, data: bytes) -> bytes:
        """Bytes arriving back to back; returns the bytes the device sends meanwhile."""
        out = bytearray()
        for b in data:
            if self._discard is not None:
                continue
            ev = self._parser.push(b)
            if ev is None:
                continue
            if ev[0] == "error":
                self._discard = ev
            else:
                out += self._execute(ev[1])
        return bytes(out)

    def idle(self) -> bytes:
        """The line has been quiet for the timeout; returns what the device sends."""
        if self._discard is not None:
            _, code, seq, cmd = self._discard
            self._discard = None
            return self._error(seq, cmd, code)
        ev = self._parser.idle()
        if ev is None:
            return b""
        _, code, seq, cmd = ev
        return self._error(seq, cmd, code)

    # -- commands

    @staticmethod
    def _error(seq: int, cmd: int, code: int) -> bytes:
        return encode_frame(seq, ERROR, bytes([code, cmd]))

    def info_payload(self) -> bytes:
        return struct.pack("<BHHI", PROTOCOL_VERSION, self.max_payload, self.imem_instrs,
                           self.ext_bytes)

    def status_payload(self) -> bytes:
        return struct.pack("<BH", int(self.done) | int(self.error) << 1, self.error_pc)

    def _execute(self, f: Frame) -> bytes:
        p, n = f.payload, len(f.payload)
        ok = b""
        if f.cmd == WRITE_MEM:
            if n < 5:
                return self._error(f.seq, f.cmd, E_BAD_LENGTH)
            addr = struct.unpack_from("<I", p)[0]
            if addr + n - 4 > self.ext_bytes:
                return self._error(f.seq, f.cmd, E_BAD_ADDRESS)
            self.mem.write("ext", addr, p[4:])
        elif f.cmd == READ_MEM:
            if n != 6:
                return self._error(f.seq, f.cmd, E_BAD_LENGTH)
            addr, count = struct.unpack("<IH", p)
            if count == 0 or count > self.max_payload:
                return self._error(f.seq, f.cmd, E_BAD_LENGTH)
            if addr + count > self.ext_bytes:
                return self._error(f.seq, f.cmd, E_BAD_ADDRESS)
            ok = self.mem.read("ext", addr, count)
        elif f.cmd == LOAD_PROGRAM:
            if n < 2 + INSTR_BYTES or (n - 2) % INSTR_BYTES:
                return self._error(f.seq, f.cmd, E_BAD_LENGTH)
            idx = struct.unpack_from("<H", p)[0]
            if idx + (n - 2) // INSTR_BYTES > self.imem_instrs:
                return self._error(f.seq, f.cmd, E_BAD_ADDRESS)
            self.imem[idx * INSTR_BYTES:idx * INSTR_BYTES + n - 2] = p[2:]
        elif f.cmd in (START, STATUS, READ_COUNTERS, INFO):
            if n:
                return self._error(f.seq, f.cmd, E_BAD_LENGTH)
            if f.cmd == START:
                self._run()
            elif f.cmd == STATUS:
                ok = self.status_payload()
            elif f.cmd == READ_COUNTERS:
                ok = struct.pack("<5I", *self.counter_values)
            else:
                ok = self.info_payload()
        else:
            return self._error(f.seq, f.cmd, E_BAD_COMMAND)
        self.executed.append(f.cmd)
        return encode_frame(f.seq, f.cmd | RESPONSE_BIT, ok)

    def _run(self) -> None:
        self.done, self.error, self.error_pc = False, False, 0
        prog = []
        for pc in range(self.imem_instrs):
            try:
                ins = decode(bytes(self.imem[pc * INSTR_BYTES:(pc + 1) * INSTR_BYTES]), pc)
            except CoreError:  # the core ran what it dispatched before the illegal instruction
                run_program([*prog, decode(bytes(INSTR_BYTES))], self.mem)
                self.done, self.error, self.error_pc = True, True, pc
                return
            prog.append(ins)
            if ins.op == "HALT":
                break
        else:  # no HALT in the whole memory: the model stops at its end
            prog.append(decode(bytes(INSTR_BYTES)))
        run_program(prog, self.mem)
        if self._counters is not None:
            self.counter_values = tuple(int(v) & 0xFFFFFFFF for v in self._counters(prog))
        self.done = True


# ------------------------------------------------------------------------------------------------
# the host


class HostLinkError(UserError):
    """The board answered with an error frame, did not answer, or answered nonsense."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class Transport(Protocol):
    """A byte pipe to the device: ``write`` sends; ``read(n, timeout)`` returns up to ``n``
    bytes, fewer (possibly none) when ``timeout`` seconds pass without more."""

    def write(self, data: bytes) -> None: ...

    def read(self, n: int, timeout: float) -> bytes: ...


class ModelTransport:
    """A :class:`Transport` to a :class:`DeviceModel` in the same process (the line goes idle
    after every write, as it does between a host's request and the device's answer)."""

    def __init__(self, device: DeviceModel) -> None:
        self.device = device
        self._rx = bytearray()
        self.sent = 0
        self.received = 0

    def write(self, data: bytes) -> None:
        self.sent += len(data)
        self._rx += self.device.receive(data)
        if not self._rx:
            self._rx += self.device.idle()

    def read(self, n: int, timeout: float) -> bytes:
        out = bytes(self._rx[:n])
        del self._rx[:n]
        self.received += len(out)
        return out


@dataclass
class Status:
    """What STATUS reports."""

    done: bool
    error: bool
    error_pc: int


class Host:
    """The host side of the link: one request at a time, each answered before the next.

    Methods raise :class:`HostLinkError` for an error frame (its ``code``), a response that does
    not arrive within ``timeout`` seconds, or one that does not match the request.
    ``write_mem``/``read_mem``/``load_program`` split long transfers into frames of at most
    ``max_payload`` bytes (from :meth:`info` when not given).
    """

    def __init__(self, transport: Transport, *, timeout: float = 2.0,
                 max_payload: int | None = None) -> None:
        self.t = transport
        self.timeout = timeout
        self._seq = 0
        self._max = max_payload
        self.bytes_sent = 0
        self.bytes_received = 0

    def request(self, cmd: int, payload: bytes = b"") -> bytes:
        """Send one command; return the payload of its answer."""
        seq = self._seq
        self._seq = (self._seq + 1) & 0xFF
        frame = encode_frame(seq, cmd, payload)
        self.t.write(frame)
        self.bytes_sent += len(frame)
        parser = FrameParser()
        name = CMD_NAMES.get(cmd, f"0x{cmd:02x}")
        while True:
            b = self.t.read(1, self.timeout)
            if not b:
                raise HostLinkError(f"no answer to {name} within {self.timeout:g} s: is the board "
                                    f"programmed and the port right?")
            self.bytes_received += 1
            ev = parser.push(b[0])
            if ev is None:
                continue
            if ev[0] == "error":
                raise HostLinkError(f"corrupted answer to {name} ({ERROR_NAMES[ev[1]]})")
            f = ev[1]
            if f.seq != seq:
                continue  # a late answer to an earlier request
            if f.cmd == ERROR:
                code = f.payload[0] if f.payload else 0
                raise HostLinkError(f"the board refused {name}: "
                                    f"{ERROR_NAMES.get(code, f'error {code}')}", code)
            if f.cmd != cmd | RESPONSE_BIT:
                raise HostLinkError(f"answer to {name} has command 0x{f.cmd:02x}")
            return f.payload

    @property
    def max_payload(self) -> int:
        if self._max is None:
            self._max = self.info()["max_payload"]
        return self._max

    def info(self) -> dict[str, int]:
        p = self.request(INFO)
        version, maxp, imem, ext = struct.unpack("<BHHI", p)
        return {"version": version, "max_payload": maxp, "imem_instrs": imem, "ext_bytes": ext}

    def write_mem(self, addr: int, data: bytes) -> None:
        step = self.max_payload - 4
        for i in range(0, len(data), step):
            self.request(WRITE_MEM, struct.pack("<I", addr + i) + data[i:i + step])

    def read_mem(self, addr: int, n: int) -> bytes:
        out = bytearray()
        step = self.max_payload
        for i in range(0, n, step):
            k = min(step, n - i)
            got = self.request(READ_MEM, struct.pack("<IH", addr + i, k))
            if len(got) != k:
                raise HostLinkError(f"READ_MEM answered {len(got)} bytes, not {k}")
            out += got
        return bytes(out)

    def load_program(self, program: bytes, first: int = 0) -> None:
        if len(program) % INSTR_BYTES:
            raise HostLinkError(f"a program is a multiple of {INSTR_BYTES} bytes")
        per = (self.max_payload - 2) // INSTR_BYTES
        for i in range(0, len(program) // INSTR_BYTES, per):
            chunk = program[i * INSTR_BYTES:(i + per) * INSTR_BYTES]
            self.request(LOAD_PROGRAM, struct.pack("<H", first + i) + chunk)

    def start(self) -> None:
        self.request(START)

    def status(self) -> Status:
        flags, pc = struct.unpack("<BH", self.request(STATUS))
        return Status(bool(flags & 1), bool(flags & 2), pc)

    def counters(self) -> dict[str, int]:
        return dict(zip(COUNTER_NAMES, struct.unpack("<5I", self.request(READ_COUNTERS)),
                        strict=True))

    def run(self, *, polls: int = 1_000_000) -> Status:
        """START, then poll STATUS until done; raises when the core reports an error."""
        self.start()
        for _ in range(polls):
            st = self.status()
            if st.done:
                if st.error:
                    raise HostLinkError(f"the core stopped on an illegal instruction at pc "
                                        f"{st.error_pc}")
                return st
        raise HostLinkError(f"the core did not finish within {polls} status polls")
