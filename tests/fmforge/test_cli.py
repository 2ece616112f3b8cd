"""The ``fmforge verilog`` and ``fmforge cosim`` commands: output, JSON keys, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fmforge.cli import main


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmforge", *argv], capture_output=True, text=True)


def test_verilog_gemm_is_deterministic_and_written_atomically(tmp_path, capsys):
    out = tmp_path / "g.v"
    assert main(["verilog", "gemm", "--rows", "2", "--cols", "3", "-o", str(out), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["verilog"] == str(out) and out.read_text().startswith("/*")
    assert "src =" not in out.read_text()
    assert main(["verilog", "gemm", "--rows", "2", "--cols", "3", "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["sha256"] == first["sha256"] and second["verilog"] is None
    assert [p.name for p in tmp_path.iterdir()] == ["g.v"]  # no temporary left behind


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["verilog", "gemm", "--rows", "0", "--cols", "2"], "0 is out of range: expected an integer in 1..64"),
        (["verilog", "gemm", "--rows", "2", "--cols", "2", "--dataflow", "xs"],
         "dataflow must be one of os, ws, not 'xs'"),
        (["verilog", "gemm", "--rows", "65", "--cols", "2"], "65 is out of range: expected an integer in 1..64"),
        (["cosim", "gemm", "--rows", "4", "--cols", "4", "--m", "70000", "--k", "3", "--n", "3"],
         "70000 is out of range: expected an integer in 1..65536"),
        (["cosim", "gemm", "--rows", "4", "--cols", "4", "--m", "3", "--k", "3", "--n", "3",
          "--stall", "sometimes"], "invalid choice: 'sometimes'"),
        (["cosim", "layernorm", "--len", "10", "--rows", "2", "--lanes", "4"], "must divide"),
    ],
)
def test_bad_input_is_one_line_exit_2_no_traceback(argv, message):
    p = _cli(*argv)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fmforge: error:"), p.stderr
    assert message in lines[0]
    assert "Traceback" not in p.stderr and p.stdout == ""


def test_verilog_to_missing_directory_writes_nothing(tmp_path):
    p = _cli("verilog", "gemm", "--rows", "2", "--cols", "2", "-o", str(tmp_path / "no" / "g.v"))
    assert p.returncode == 2 and "does not exist" in p.stderr
    assert not (tmp_path / "no").exists()


def test_cosim_gemm_json_keys_amaranth_simulator(capsys):
    rc = main(["cosim", "gemm", "--rows", "2", "--cols", "2", "--m", "3", "--k", "5", "--n", "3",
               "--requant", "--bias", "--stall", "both", "--simulator", "amaranth", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert rc == 0 and r["match"] is True and r["ok"] is True
    assert r["cycles"] == r["predicted_cycles"]
    for key in ("utilization", "sim_seconds", "cycles_per_second", "macs_per_second"):
        assert r[key] > 0
    # end to end (loads and stalls included, counted by the testbench) beside compute only
    assert r["utilization"] == pytest.approx(3 * 5 * 3 / (r["tb_cycles"] * 4))
    assert r["compute_utilization"] == pytest.approx(3 * 5 * 3 / (r["cycles"] * 4))
    assert r["timing_ok"] and r["tb_cycles"] > r["cycles"]


@pytest.mark.parametrize("unit", ["requant", "gelu", "softmax", "layernorm", "rmsnorm", "silu"])
def test_cosim_nonlinear_json_has_testbench_edges(unit, capsys):
    rc = main(["cosim", unit, "--len", "4", "--rows", "2", "--lanes", "2", "--stall", "both",
               "--simulator", "amaranth", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert rc == 0 and r["ok"] is True and r["cycles"] == r["predicted_cycles"]
    # the testbench's own count: the model plus the stall edges it saw
    stalls = r["tb_sink_stalls"] + r["tb_source_stalls"]
    assert r["tb_cycles"] == r["tb_predicted_cycles"] == r["predicted_cycles"] + stalls


@pytest.mark.parametrize(("unit", "flags"), [("rmsnorm", ["--length", "8", "--lanes", "2"]),
                                             ("silu", ["--lanes", "2", "--in-scale", "0.1"])])
def test_verilog_of_the_decoder_units(unit, flags, capsys):
    assert main(["verilog", unit, *flags, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["unit"] == unit and r["bytes"] > 1000
