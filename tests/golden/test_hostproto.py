"""The host link protocol: framing, the device model, the host; fuzzing of bad frames."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from golden.core import INSTR_BYTES, Instr, encode, encode_program
from golden.hostproto import (
    E_BAD_ADDRESS,
    E_BAD_COMMAND,
    E_BAD_CRC,
    E_BAD_LENGTH,
    E_TRUNCATED,
    ERROR,
    INFO,
    LOAD_PROGRAM,
    READ_COUNTERS,
    READ_MEM,
    RESPONSE_BIT,
    SOF,
    START,
    STATUS,
    WRITE_MEM,
    DeviceModel,
    Frame,
    FrameParser,
    Host,
    HostLinkError,
    ModelTransport,
    crc32,
    encode_frame,
)

FUZZ = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
EXT, IMEM, MAXP = 4096, 16, 256


def _dev(**kw) -> DeviceModel:
    return DeviceModel(ext_bytes=EXT, imem_instrs=IMEM, max_payload=MAXP, sp_bytes=1024, **kw)


def _parse_all(data: bytes) -> list:
    p = FrameParser()
    evs = [ev for b in data if (ev := p.push(b)) is not None]
    assert not p.in_frame
    return evs


def _answer(data: bytes) -> Frame:
    (ev,) = _parse_all(data)
    assert ev[0] == "frame"
    return ev[1]


def test_crc_is_ieee():
    assert crc32(b"123456789") == 0xCBF43926
    assert crc32(b"") == 0


def test_frame_layout():
    f = encode_frame(7, READ_MEM, b"\x01\x02")
    assert f[0] == SOF and f[1:3] == b"\x02\x00" and f[3] == 7 and f[4] == READ_MEM
    assert f[5:7] == b"\x01\x02"
    assert struct.unpack("<I", f[7:])[0] == zlib.crc32(f[1:7])
    assert _answer(f) == Frame(7, READ_MEM, b"\x01\x02")


def test_parser_ignores_noise_between_frames():
    f1, f2 = encode_frame(1, STATUS), encode_frame(2, INFO, b"x")
    evs = _parse_all(b"\x00\x13" + f1 + b"\xff" + f2)
    assert [e[1] for e in evs] == [Frame(1, STATUS, b""), Frame(2, INFO, b"x")]


def test_write_read_roundtrip_and_info():
    d = _dev()
    h = Host(ModelTransport(d))
    assert h.info() == {"version": 1, "max_payload": MAXP, "imem_instrs": IMEM, "ext_bytes": EXT}
    data = bytes((i * 37 + 5) & 0xFF for i in range(1000))  # several frames each way
    h.write_mem(100, data)
    assert d.mem.read("ext", 100, 1000) == data
    assert h.read_mem(100, 1000) == data
    assert h.read_mem(EXT - 1, 1) == bytes([0])


def test_program_run_status_counters():
    seen = []

    def counters(prog):
        seen.append(len(prog))
        return (11, 22, 33, 44, 55)

    d = _dev(counters=counters)
    h = Host(ModelTransport(d))
    prog = [Instr("LOAD", f={"ext": 0, "sp": 0, "rows": 2, "cols": 8, "ext_rs": 8, "sp_rs": 8,
                             "sp_cs": 1}, signal=frozenset("M")),
            Instr("STORE", f={"ext": 512, "sp": 0, "rows": 1, "cols": 16, "ext_rs": 16,
                              "sp_rs": 16, "sp_cs": 1}),
            Instr("HALT")]
    h.write_mem(0, bytes(range(16)))
    h.load_program(encode_program(prog))
    assert bytes(d.imem[:3 * INSTR_BYTES]) == encode_program(prog)
    assert not h.status().done
    st_ = h.run()
    assert st_.done and not st_.error
    assert h.read_mem(512, 16) == bytes(range(16))
    assert h.counters() == dict(cycles=11, busy_d=22, busy_m=33, busy_s=44, mem_stall=55)
    assert seen == [3]


def test_illegal_instruction_runs_the_prefix_and_reports_pc():
    d = _dev()
    h = Host(ModelTransport(d))
    h.write_mem(0, b"\x5a" * 4)
    store = Instr("LOAD", f={"ext": 0, "sp": 0, "rows": 1, "cols": 4, "ext_rs": 4, "sp_rs": 4,
                             "sp_cs": 1})
    back = Instr("STORE", f={"ext": 64, "sp": 0, "rows": 1, "cols": 4, "ext_rs": 4, "sp_rs": 4,
                             "sp_cs": 1})
    bad = bytearray(encode(Instr("HALT")))
    bad[0] = 0x3F
    h.load_program(encode(store) + encode(back) + bytes(bad) + encode(Instr("HALT")))
    with pytest.raises(HostLinkError, match="pc 2"):
        h.run()
    st_ = h.status()
    assert st_.done and st_.error and st_.error_pc == 2
    assert d.mem.read("ext", 64, 4) == b"\x5a" * 4


def _err(data: bytes) -> tuple[int, int, int]:
    f = _answer(data)
    assert f.cmd == ERROR and len(f.payload) == 2
    return f.seq, f.payload[0], f.payload[1]


@pytest.mark.parametrize("payload, code", [
    (b"\x00\x00\x00\x00", E_BAD_LENGTH),                      # WRITE_MEM without data
    (struct.pack("<I", EXT - 3) + b"abcd", E_BAD_ADDRESS),    # one byte past the end
    (struct.pack("<I", 0xFFFFFFFF) + b"a", E_BAD_ADDRESS),    # wraps in 32 bits
])
def test_write_mem_refusals(payload, code):
    d = _dev()
    before = bytes(d.mem.ext.tolist())
    assert _err(d.receive(encode_frame(3, WRITE_MEM, payload))) == (3, code, WRITE_MEM)
    assert bytes(d.mem.ext.tolist()) == before and d.executed == []


@pytest.mark.parametrize("cmd, payload, code", [
    (READ_MEM, struct.pack("<IH", 0, 0), E_BAD_LENGTH),
    (READ_MEM, struct.pack("<IH", 0, MAXP + 1), E_BAD_LENGTH),
    (READ_MEM, struct.pack("<I", 0), E_BAD_LENGTH),
    (READ_MEM, struct.pack("<IH", EXT - 1, 2), E_BAD_ADDRESS),
    (LOAD_PROGRAM, b"\x00\x00" + bytes(31), E_BAD_LENGTH),
    (LOAD_PROGRAM, b"\x00\x00" + bytes(33), E_BAD_LENGTH),
    (LOAD_PROGRAM, struct.pack("<H", IMEM - 1) + bytes(64), E_BAD_ADDRESS),
    (START, b"\x00", E_BAD_LENGTH),
    (STATUS, b"\x00", E_BAD_LENGTH),
    (0x00, b"", E_BAD_COMMAND),
    (0x45, b"abc", E_BAD_COMMAND),
    (ERROR, b"", E_BAD_COMMAND),
    (STATUS | RESPONSE_BIT, b"", E_BAD_COMMAND),
])
def test_command_refusals(cmd, payload, code):
    d = _dev()
    assert _err(d.receive(encode_frame(9, cmd, payload))) == (9, code, cmd)
    assert d.executed == [] and not any(d.imem) and not d.done


def test_framing_errors_answer_on_idle_and_discard_until_then():
    d = _dev()
    good = encode_frame(4, WRITE_MEM, b"\x00\x00\x00\x00xyz")
    bad = bytearray(good)
    bad[-1] ^= 1
    # a bad CRC: nothing until idle, and a good frame right behind it is discarded too
    assert d.receive(bytes(bad) + good) == b""
    assert _err(d.idle()) == (4, E_BAD_CRC, WRITE_MEM)
    assert d.executed == [] and d.mem.read("ext", 0, 3) == bytes(3)
    # LEN above max_payload
    big = encode_frame(5, WRITE_MEM, bytes(MAXP + 1))
    assert d.receive(big) == b"" and _err(d.idle()) == (5, E_BAD_LENGTH, WRITE_MEM)
    # truncated: answered on idle
    assert d.receive(good[:-2]) == b"" and _err(d.idle()) == (4, E_TRUNCATED, WRITE_MEM)
    assert d.receive(good[:2]) == b"" and _err(d.idle()) == (0, E_TRUNCATED, 0)
    assert d.idle() == b""
    # and the link works afterwards
    assert _answer(d.receive(good)) == Frame(4, WRITE_MEM | RESPONSE_BIT, b"")
    assert d.mem.read("ext", 0, 3) == b"xyz"


def test_host_errors():
    d = _dev()
    h = Host(ModelTransport(d), max_payload=MAXP)
    with pytest.raises(HostLinkError, match="address out of range") as e:
        h.read_mem(EXT - 2, 4)
    assert e.value.code == E_BAD_ADDRESS

    class Silent:
        def write(self, data):
            pass

        def read(self, n, timeout):
            return b""

    with pytest.raises(HostLinkError, match="no answer to STATUS within 0.5 s"):
        Host(Silent(), timeout=0.5).status()


# ------------------------------------------------------------------------------------------ fuzz

_cmds = st.sampled_from([WRITE_MEM, READ_MEM, LOAD_PROGRAM, START, STATUS, READ_COUNTERS, INFO])


@st.composite
def _frames(draw):
    cmd = draw(_cmds)
    payload = draw(st.binary(max_size=80))
    return encode_frame(draw(st.integers(0, 255)), cmd, payload)


def _state(d: DeviceModel):
    return bytes(d.mem.ext.tolist()), bytes(d.imem), d.done, list(d.executed)


@FUZZ
@given(_frames(), st.integers(0, 10_000), st.integers(1, 255))
def test_fuzz_corrupted_byte_never_executes(frame, pos, xor):
    """Any single corrupted byte of a frame: an error frame (or silence for a corrupted SOF),
    nothing executed, nothing changed."""
    d = _dev()
    before = _state(d)
    bad = bytearray(frame)
    bad[pos % len(bad)] ^= xor
    out = d.receive(bytes(bad)) + d.idle()
    assert _state(d) == before
    if pos % len(bad) == 0:  # no SOF: the rest is noise unless it holds an 0xA5 by chance
        assert out == b"" or _err(out)[1] in (E_BAD_CRC, E_BAD_LENGTH, E_TRUNCATED)
    else:
        seq, code, _ = _err(out)
        assert code in (E_BAD_CRC, E_BAD_LENGTH, E_TRUNCATED)


@FUZZ
@given(_frames(), st.integers(1, 10_000))
def test_fuzz_truncated_frame(frame, cut):
    d = _dev()
    before = _state(d)
    n = 1 + cut % (len(frame) - 1)
    out = d.receive(frame[:n]) + d.idle()
    assert _state(d) == before
    assert _err(out)[1] == E_TRUNCATED


@FUZZ
@given(st.integers(0, 255).filter(lambda c: c not in range(1, 8)), st.binary(max_size=40),
       st.integers(0, 255))
def test_fuzz_unknown_command(cmd, payload, seq):
    d = _dev()
    before = _state(d)
    assert _err(d.receive(encode_frame(seq, cmd, payload))) == (seq, E_BAD_COMMAND, cmd)
    assert _state(d) == before


@FUZZ
@given(st.integers(0, 2**32 - 1), st.integers(1, 200))
def test_fuzz_addresses(addr, n):
    """Every WRITE_MEM/READ_MEM either fits and acts or is refused and changes nothing."""
    d = _dev()
    data = bytes((addr + i) & 0xFF for i in range(n))
    before = _state(d)
    fits = addr + n <= EXT
    w = _answer(d.receive(encode_frame(1, WRITE_MEM, struct.pack("<I", addr) + data)))
    r = _answer(d.receive(encode_frame(2, READ_MEM, struct.pack("<IH", addr, n))))
    if fits:
        assert w.cmd == WRITE_MEM | RESPONSE_BIT and r.payload == data
        assert d.mem.read("ext", addr, n) == data
    else:
        assert (w.cmd, w.payload[0]) == (ERROR, E_BAD_ADDRESS)
        assert (r.cmd, r.payload[0]) == (ERROR, E_BAD_ADDRESS)
        assert _state(d) == before


@FUZZ
@given(st.lists(_frames(), min_size=1, max_size=6), st.binary(max_size=30))
def test_fuzz_streams_resynchronise(frames, noise):
    """Noise, then frames each followed by idle: every frame gets exactly one answer with its
    sequence number (noise without SOF is ignored)."""
    d = _dev()
    noise = bytes(b for b in noise if b != SOF)
    assert d.receive(noise) == b""
    for f in frames:
        out = d.receive(f)
        out += d.idle() if not out else b""
        ans = _answer(out)
        assert ans.seq == f[3]
