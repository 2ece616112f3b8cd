"""sim.streams: stall patterns, lane packing, scoreboard."""

import pytest

from sim.streams import STALL_MODES, Scoreboard, pack_lanes, stall_pattern, unpack_lanes


def test_pack_unpack_round_trip_with_edges():
    vals = [-128, 127, 0, -1, 5]
    w = pack_lanes(vals, 8)
    assert w & 0xFF == 0x80 and (w >> 8) & 0xFF == 0x7F
    assert unpack_lanes(w, 8, 5) == vals
    assert unpack_lanes(pack_lanes([2**31 - 1, -(2**31)], 32), 32, 2) == [2**31 - 1, -(2**31)]
    assert unpack_lanes(0xFF, 8, 1, signed=False) == [255]


def test_stall_modes():
    assert STALL_MODES == ("none", "idle", "backpressure", "both")
    none = stall_pattern("none", 1)
    assert not any(none.source_idle() for _ in range(100))
    assert all(none.sink_ready() for _ in range(100))
    both = stall_pattern("both", 1)
    idles = sum(both.source_idle() for _ in range(1000))
    refusals = sum(not both.sink_ready() for _ in range(1000))
    assert 200 < idles < 400 and 200 < refusals < 400
    a, b = stall_pattern("idle", 7), stall_pattern("idle", 7)
    assert [a.idle_run() for _ in range(50)] == [b.idle_run() for _ in range(50)]
    assert stall_pattern("backpressure", 3).idle_p == 0
    with pytest.raises(ValueError, match="stall mode must be one of none, idle, backpressure, both"):
        stall_pattern("sometimes", 0)


def test_scoreboard_reports_mismatch_missing_and_extra():
    sb = Scoreboard("t")
    sb.expect([1, 2, 3])
    for x in (1, 5):
        sb.receive(x)
    assert not sb.ok and sb.pending == 1
    with pytest.raises(AssertionError, match="item 1: expected 2, got 5"):
        sb.check_done()
    sb2 = Scoreboard("u")
    sb2.expect([1])
    sb2.receive(1)
    sb2.check_done()
    sb2.receive(9)
    with pytest.raises(AssertionError, match="expected None, got 9"):
        sb2.check_done()
