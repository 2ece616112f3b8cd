"""Report parsing on logs captured from real YoWASP nextpnr-0.11.1 / Yosys 0.70 runs.

The snippets below are cut (not edited) from the logs of builds of the test MAC component
(``conftest.TinyMac``) on ULX3S-25F, ULX3S-85F and iCEBreaker, and of a 40-lane MAC that does
not fit the 28 multipliers of the LFE5U-25F.
"""

from __future__ import annotations

import pytest

from boards.build import (
    DoesNotFitError,
    _fit_error_from_log,
    check_fits,
    parse_nextpnr_log,
    parse_yosys_cells,
)
from boards.catalog import get_board

ECP5_25F_LOG = """\
Info: constraining clock net 'clk25_0__io' to 150.00 MHz

Info: Device utilisation:
Info: \t          TRELLIS_IO:       2/    197     1%
Info: \t                DCCA:       1/     56     1%
Info: \t              DP16KD:       0/     56     0%
Info: \t          MULT18X18D:       2/     28     7%
Info: \t              ALU54B:       0/     14     0%
Info: \t             EHXPLLL:       0/      2     0%
Info: \t             EXTREFB:       0/      1     0%
Info: \t                DCUA:       0/      1     0%
Info: \t           PCSCLKDIV:       0/      2     0%
Info: \t             IOLOGIC:       0/    128     0%
Info: \t            SIOLOGIC:       0/     69     0%
Info: \t                 GSR:       1/      1   100%
Info: \t               JTAGG:       0/      1     0%
Info: \t                OSCG:       0/      1     0%
Info: \t               SEDGA:       0/      1     0%
Info: \t                 DTR:       0/      1     0%
Info: \t             USRMCLK:       0/      1     0%
Info: \t             CLKDIVF:       0/      4     0%
Info: \t           ECLKSYNCB:       0/     10     0%
Info: \t             DLLDELD:       0/      8     0%
Info: \t              DDRDLL:       0/      4     0%
Info: \t             DQSBUFM:       0/      8     0%
Info: \t     TRELLIS_ECLKBUF:       0/      8     0%
Info: \t        ECLKBRIDGECS:       0/      2     0%
Info: \t                DCSC:       0/      2     0%
Info: \t          TRELLIS_FF:     264/  24288     1%
Info: \t        TRELLIS_COMB:     100/  24288     0%
Info: \t        TRELLIS_RAMW:       0/   3036     0%

Info: Max frequency for clock '$glbnet$cd_sync.clk': 165.23 MHz (PASS at 150.01 MHz)

...
Warning: Max frequency for clock '$glbnet$cd_sync.clk': 145.35 MHz (FAIL at 150.01 MHz)
"""

ICE40_LOG = """\
Info: constraining clock net 'clk12_0__io' to 100.00 MHz

Info: Device utilisation:
Info: \t         ICESTORM_LC:     286/   5280     5%
Info: \t        ICESTORM_RAM:       0/     30     0%
Info: \t               SB_IO:       2/     39     5%
Info: \t               SB_GB:       3/      8    37%
Info: \t        ICESTORM_PLL:       0/      1     0%
Info: \t         SB_WARMBOOT:       0/      1     0%
Info: \t        ICESTORM_DSP:       2/      8    25%
Info: \t      ICESTORM_HFOSC:       0/      1     0%
Info: \t      ICESTORM_LFOSC:       0/      1     0%
Info: \t              SB_I2C:       0/      2     0%
Info: \t              SB_SPI:       0/      2     0%
Info: \t              IO_I3C:       0/      2     0%
Info: \t         SB_LEDDA_IP:       0/      1     0%
Info: \t         SB_RGBA_DRV:       0/      1     0%
Info: \t      ICESTORM_SPRAM:       0/      4     0%

Info: Max frequency for clock 'cd_sync.clk': 63.65 MHz (FAIL at 100.00 MHz)

...
Warning: Max frequency for clock 'cd_sync.clk': 65.27 MHz (FAIL at 100.00 MHz)
"""

ECP5_25F_NOFIT_LOG = """\
Info: constraining clock net 'clk25_0__io' to 150.00 MHz

Info: Device utilisation:
Info: \t          TRELLIS_IO:       2/    197     1%
Info: \t                DCCA:       1/     56     1%
Info: \t              DP16KD:       0/     56     0%
Info: \t          MULT18X18D:      40/     28   142%
Info: \t              ALU54B:       0/     14     0%
Info: \t             EHXPLLL:       0/      2     0%
Info: \t             EXTREFB:       0/      1     0%
Info: \t                DCUA:       0/      1     0%
Info: \t           PCSCLKDIV:       0/      2     0%
Info: \t             IOLOGIC:       0/    128     0%
Info: \t            SIOLOGIC:       0/     69     0%
Info: \t                 GSR:       1/      1   100%
Info: \t               JTAGG:       0/      1     0%
Info: \t                OSCG:       0/      1     0%
Info: \t               SEDGA:       0/      1     0%
Info: \t                 DTR:       0/      1     0%
Info: \t             USRMCLK:       0/      1     0%
Info: \t             CLKDIVF:       0/      4     0%
Info: \t           ECLKSYNCB:       0/     10     0%
Info: \t             DLLDELD:       0/      8     0%
Info: \t              DDRDLL:       0/      4     0%
Info: \t             DQSBUFM:       0/      8     0%
Info: \t     TRELLIS_ECLKBUF:       0/      8     0%
Info: \t        ECLKBRIDGECS:       0/      2     0%
Info: \t                DCSC:       0/      2     0%
Info: \t          TRELLIS_FF:    4555/  24288    18%
Info: \t        TRELLIS_COMB:    1874/  24288     7%
Info: \t        TRELLIS_RAMW:       0/   3036     0%

Info: Placed 3 cells based on constraints.
ERROR: Unable to place cell 'unit.p$62_TRELLIS_FF_Q_11_DI_MULT18X18D_P15', no BELs remaining to implement cell type 'MULT18X18D'
"""

ECP5_85F_UTIL = """\
Info: Device utilisation:
Info: \t          TRELLIS_IO:       2/    365     0%
Info: \t                DCCA:       1/     56     1%
Info: \t              DP16KD:       0/    208     0%
Info: \t          MULT18X18D:       2/    156     1%
Info: \t              ALU54B:       0/     78     0%
Info: \t             EHXPLLL:       0/      4     0%
Info: \t             EXTREFB:       0/      2     0%
Info: \t                DCUA:       0/      2     0%
Info: \t           PCSCLKDIV:       0/      2     0%
Info: \t             IOLOGIC:       0/    224     0%
Info: \t            SIOLOGIC:       0/    141     0%
Info: \t                 GSR:       1/      1   100%
Info: \t               JTAGG:       0/      1     0%
Info: \t                OSCG:       0/      1     0%
Info: \t               SEDGA:       0/      1     0%
Info: \t                 DTR:       0/      1     0%
Info: \t             USRMCLK:       0/      1     0%
Info: \t             CLKDIVF:       0/      4     0%
Info: \t           ECLKSYNCB:       0/     10     0%
Info: \t             DLLDELD:       0/      8     0%
Info: \t              DDRDLL:       0/      4     0%
Info: \t             DQSBUFM:       0/     14     0%
Info: \t     TRELLIS_ECLKBUF:       0/      8     0%
Info: \t        ECLKBRIDGECS:       0/      2     0%
Info: \t                DCSC:       0/      2     0%
Info: \t          TRELLIS_FF:     264/  83640     0%
Info: \t        TRELLIS_COMB:     100/  83640     0%
Info: \t        TRELLIS_RAMW:       0/  10455     0%
"""

ICE40_YOSYS_STAT = """\
2.59. Printing statistics.

=== top ===

        +----------Local Count, excluding submodules.
        |
      294 wires
      668 wire bits
      294 public wires
      668 public wire bits
        2 ports
        2 port bits
        9 cells
        5   $scopeinfo
        1   SB_GB_IO
        1   SB_IO
        2   SB_MAC16
      486 submodules
       71   SB_CARRY
        1   SB_DFF
       12   SB_DFFE
       64   SB_DFFESR
      197   SB_DFFSR
      141   SB_LUT4

2.60. Executing CHECK pass (checking for obvious problems).
"""

OLD_YOSYS_STAT = """\
2.50. Printing statistics.

=== top ===

   Number of wires:                 87
   Number of cells:                 12
     MULT18X18D                      2
     TRELLIS_FF                    264
"""


def test_ecp5_log_utilisation_and_final_fmax():
    rep = parse_nextpnr_log(ECP5_25F_LOG)
    assert rep.utilisation["TRELLIS_COMB"] == (100, 24288)
    assert rep.utilisation["TRELLIS_FF"] == (264, 24288)
    assert rep.utilisation["MULT18X18D"] == (2, 28)
    assert rep.utilisation["DP16KD"] == (0, 56)
    assert rep.used("MULT18X18D") == 2
    assert rep.used("NOT_A_CELL") == 0
    clock = rep.main_clock()
    assert clock == "$glbnet$cd_sync.clk"
    # the post-route figure (last line) wins over the post-placement estimate
    assert rep.fmax[clock] == pytest.approx(145.35)
    assert rep.constraint[clock] == pytest.approx(150.01)
    assert rep.passed[clock] is False
    assert rep.errors == []


def test_ecp5_85f_totals_match_catalog():
    rep = parse_nextpnr_log(ECP5_85F_UTIL)
    b = get_board("ulx3s-85f")
    assert rep.utilisation["TRELLIS_COMB"][1] == b.luts
    assert rep.utilisation["TRELLIS_FF"][1] == b.ffs
    assert rep.utilisation["MULT18X18D"][1] == b.dsps
    assert rep.utilisation["DP16KD"][1] == b.brams
    assert rep.fmax == {}  # no timing lines in this snippet


def test_ecp5_25f_totals_match_catalog():
    rep = parse_nextpnr_log(ECP5_25F_LOG)
    b = get_board("ulx3s-25f")
    assert [rep.utilisation[c][1] for c in ("TRELLIS_COMB", "TRELLIS_FF", "MULT18X18D",
                                            "DP16KD")] == [b.luts, b.ffs, b.dsps, b.brams]


def test_ice40_log():
    rep = parse_nextpnr_log(ICE40_LOG)
    b = get_board("icebreaker")
    assert rep.utilisation["ICESTORM_LC"] == (286, b.luts)
    assert rep.utilisation["ICESTORM_DSP"] == (2, b.dsps)
    assert rep.utilisation["ICESTORM_RAM"] == (0, b.brams)
    assert rep.utilisation["ICESTORM_SPRAM"] == (0, 4)
    assert rep.main_clock() == "cd_sync.clk"
    assert rep.fmax["cd_sync.clk"] == pytest.approx(65.27)
    assert rep.constraint["cd_sync.clk"] == pytest.approx(100.0)


def test_yosys_stat_new_and_old_layouts():
    cells = parse_yosys_cells(ICE40_YOSYS_STAT)
    assert cells["SB_MAC16"] == 2
    assert cells["SB_LUT4"] == 141
    assert sum(n for c, n in cells.items() if c.startswith("SB_DFF")) == 274
    assert "cells" not in cells and "submodules" not in cells and "top" not in cells
    old = parse_yosys_cells(OLD_YOSYS_STAT)
    assert old == {"MULT18X18D": 2, "TRELLIS_FF": 264}
    assert parse_yosys_cells("no statistics here") == {}


def test_nofit_log_names_the_resource():
    rep = parse_nextpnr_log(ECP5_25F_NOFIT_LOG)
    assert rep.utilisation["MULT18X18D"] == (40, 28)
    assert len(rep.errors) == 1 and "MULT18X18D" in rep.errors[0]
    err = _fit_error_from_log(rep, rep.errors, get_board("ulx3s-25f"))
    assert isinstance(err, DoesNotFitError)
    assert (err.resource, err.needed, err.available) == ("dsps", 40, 28)
    assert "40" in str(err) and "28" in str(err) and "MULT18X18D" in str(err)
    assert "ulx3s-25f" in str(err)


def test_nofit_from_error_line_alone():
    line = ("Unable to place cell 'x', no BELs remaining to implement cell type "
            "'ICESTORM_RAM'")
    rep = parse_nextpnr_log("")
    err = _fit_error_from_log(rep, [line], get_board("icebreaker"))
    assert err is not None and err.resource == "brams" and err.available == 30
    assert _fit_error_from_log(rep, ["something else broke"], get_board("icebreaker")) is None


def test_check_fits():
    check_fits("ulx3s-25f", dsps=28, brams=56)
    with pytest.raises(DoesNotFitError, match="needs 29 DSPs, ulx3s-25f has 28"):
        check_fits("ulx3s-25f", dsps=29, what="thing")
