"""Board catalog: names, resource totals (as nextpnr counts them), lookup errors."""

from __future__ import annotations

import pytest

from boards.catalog import BOARDS, Board, board_names, get_board, list_boards


def test_required_boards_present():
    names = board_names()
    for name in ("ulx3s-85f", "ulx3s-25f", "icebreaker"):
        assert name in names
    assert names == [b.name for b in list_boards()]


@pytest.mark.parametrize("name, family, device, luts, dsps, brams, bram_bits", [
    ("ulx3s-85f", "ecp5", "LFE5U-85F", 83640, 156, 208, 208 * 18432),
    ("ulx3s-25f", "ecp5", "LFE5U-25F", 24288, 28, 56, 56 * 18432),
    ("orangecrab-25f", "ecp5", "LFE5U-25F", 24288, 28, 56, 56 * 18432),
    ("icebreaker", "ice40", "iCE40UP5K", 5280, 8, 30, 30 * 4096),
])
def test_totals(name, family, device, luts, dsps, brams, bram_bits):
    b = get_board(name)
    assert (b.family, b.device, b.luts, b.dsps, b.brams, b.bram_bits) == (
        family, device, luts, dsps, brams, bram_bits)
    assert b.ffs == luts  # one FF per LUT4 site on both families


def test_icebreaker_and_ulx3s_facts():
    ice = get_board("icebreaker")
    assert ice.spram_bits == 4 * 256 * 1024
    assert ice.flash_bytes == 16 * 1024 * 1024
    assert "FT2232H" in ice.host_link
    assert ice.clock_mhz == 12.0
    ulx = get_board("ulx3s-85f")
    assert ulx.ext_memory_bytes == 32 * 1024 * 1024
    assert "FT231X" in ulx.host_link
    assert ulx.spram_bits == 0
    assert ulx.part == "LFE5U-85F-6BG381C"
    assert ice.part == "iCE40UP5K-SG48"


@pytest.mark.parametrize("name", list(BOARDS))
def test_platform_class_matches(name):
    b = get_board(name)
    plat = b.platform()
    assert plat.device == b.device
    assert plat.package == b.package
    assert plat.default_clk_frequency == pytest.approx(b.clock_mhz * 1e6)
    assert b.target_mhz > b.clock_mhz


def test_lookup_is_case_insensitive_and_passes_boards_through():
    b = get_board("ULX3S-25F")
    assert b.name == "ulx3s-25f"
    assert get_board(b) is b
    assert isinstance(b, Board)


def test_unknown_board_lists_allowed_names():
    with pytest.raises(LookupError) as ei:
        get_board("de10-nano")
    msg = str(ei.value)
    assert "de10-nano" in msg
    assert "\n" not in msg
    for name in BOARDS:
        assert name in msg


def test_to_dict_has_resources():
    d = get_board("ulx3s-25f").to_dict()
    for key in ("name", "family", "part", "luts", "ffs", "dsps", "brams", "bram_bits",
                "clock_mhz", "ext_memory", "host_link"):
        assert key in d
    assert d["dsps"] == 28 and d["family"] == "ecp5"
