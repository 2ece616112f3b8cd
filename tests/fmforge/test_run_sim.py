"""End to end in the suite: a compiled two-layer encoder on the Verilated RTL core through
``fmforge run --sim``, bit-exact with the golden core and cycle-exact with the timing model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fmforge.cli import main

MODEL = f"{Path(__file__).parents[1] / 'hw' / 'tiny_bert.py'}:two_layers"


@pytest.mark.slow
def test_run_sim_tiny_encoder_bit_and_cycle_exact(tmp_path, capsys):
    plan = tmp_path / "p.json"
    assert main(["compile", "--model", MODEL, "--devices", "core:rows=4:cols=4,cpu:mode=roofline",
                 "--objective", "energy", "-o", str(plan), "--json"]) == 0
    capsys.readouterr()
    assert main(["run", str(plan), "--sim", "--limit", "2", "--json", "--memory-latency", "12",
                 "--memory-bytes-per-cycle", "2", "--trace", str(tmp_path / "t.png")]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["engine"] == "rtl" and r["bit_exact"] and r["match"]
    assert r["cycles"] == r["predicted_cycles"] > 0
    assert r["region_ops"] >= 30 and r["n_inputs"] == 2
    assert r["core"]["latency"] == 12 and r["core"]["bytes_per_cycle"] == 2
    assert 0 < r["array_utilization"] < 1 and r["unit_busy"]["queues"]["S"] > 0
    assert r["cosine_mean"] > 0.99
    assert (tmp_path / "t.png").stat().st_size > 1000
