"""hw.imc: construction and errors, the cycle model, Amaranth-simulator runs against the golden
crossbar (ideal and a seeded noise draw) under the four stall modes."""

from __future__ import annotations

import pytest

from golden.gemm import gemm_int
from golden.imc import CrossbarNoise
from hw.imc import IMC_LATENCY, ImcMacro, ImcSpec, imc_cycles, imc_edges
from hw.registry import UNITS, spec_from_json, unit_for_op
from hw.spec import UnitParamError
from sim.imc_bench import ImcBenchConfig, imc_stimulus, run_imc_pysim
from sim.streams import STALL_MODES

NOISY = CrossbarNoise(prog_sigma=0.05, read_sigma=0.05, stuck_on=0.05, stuck_off=0.05,
                      adc_offset_sigma=0.3)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rows": 0, "cols": 2}, "rows must be a positive integer, not 0"),
    ({"rows": 4, "cols": 2, "tiles": 2, "k": 9}, "k must be at most 8, not 9"),
    ({"rows": 4, "cols": 2, "cell_bits": 9}, "cell_bits must be at most 8, not 9"),
    ({"rows": 4, "cols": 2, "adc_shift": 17}, r"adc_shift must be an integer in \[0, 16\]"),
])
def test_invalid_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImcMacro(**kwargs)


def test_properties_and_spec():
    u = ImcMacro(rows=8, cols=4, tiles=3, k=20, cell_bits=2, dac_bits=2, differential=True)
    assert (u.rows, u.cols, u.tiles, u.k, u.slices, u.arrays, u.steps, u.latency) == \
        (8, 4, 3, 20, 4, 8, 4, IMC_LATENCY)
    with pytest.raises(AttributeError):
        u.rows = 2
    assert UNITS["imc"] is ImcSpec and unit_for_op("linear").kind == "gemm"
    spec = ImcSpec(rows=128, cols=128, tiles=3, k=384)
    assert spec_from_json("imc", spec.to_json()) == spec
    assert spec.cycles(tokens=32) == 32 * 3 * 8 + IMC_LATENCY
    r = spec.resources("ecp5")
    assert r["estimated"] and r["dsps"] == 4 * 128
    with pytest.raises(UnitParamError, match="k must be at most 384, not 385"):
        ImcSpec(rows=128, tiles=3, k=385)


def test_cycle_model():
    assert imc_cycles(3, 2, 8) == 48 + IMC_LATENCY
    assert imc_cycles(3, 2, 8, requant=False) == 53
    assert imc_edges(1, 1, 4, stalls=6) == 4 + IMC_LATENCY + 6
    with pytest.raises(ValueError, match="tokens must be a positive integer, not 0"):
        imc_cycles(0, 1, 1)


def _check(results):
    for r in results:
        assert r["match"], r
        assert not r["dac_errors"], r["dac_errors"]
        assert not r["error"]
        assert r["cycles"] == r["predicted_cycles"], r
        assert r["tb_edges"] == r["tb_predicted_edges"], r


@pytest.mark.parametrize("stall", STALL_MODES)
@pytest.mark.parametrize("noisy", [False, True], ids=["ideal", "noise"])
def test_pysim_bit_and_cycle_exact(stall, noisy):
    # 4x3 bit lines, 2 row tiles, K=7 (a padded row), 2-bit cells, 1-bit DAC, a 4-bit ADC on a
    # full scale of 12 (exact when ideal); the noise draw moves codes (seed in the id: 5)
    cfg = ImcBenchConfig(noise=NOISY if noisy else CrossbarNoise())
    st = imc_stimulus(cfg, [3], 5)
    ideal = gemm_int(st["jobs"][0]["x"], st["w"], st["bias"], st["mult"], st["shift"]).tolist()
    assert (st["jobs"][0]["expected"] == ideal) != noisy  # the noise draw moves outputs
    _check(run_imc_pysim(cfg, [3, 1, 2], stall=stall, seed=5))


@pytest.mark.parametrize("stall", ["none", "both"])
@pytest.mark.parametrize("variant", ["diff-dac2-lossy", "int32-dac8-cell1", "cell3-dac3"])
def test_pysim_variants(variant, stall):
    cfg = {"diff-dac2-lossy": ImcBenchConfig(differential=True, dac_bits=2, adc_bits=3),
           "int32-dac8-cell1": ImcBenchConfig(rows=3, tiles=1, k=3, cell_bits=1, dac_bits=8,
                                              adc_bits=10, requant=False),
           "cell3-dac3": ImcBenchConfig(rows=2, cols=2, tiles=3, k=5, cell_bits=3, dac_bits=3,
                                        adc_bits=6)}[variant]
    if variant == "diff-dac2-lossy":
        assert cfg.crossbar().adc_shift == 3
    _check(run_imc_pysim(cfg, [2, 1], stall=stall, seed=11))
