"""hw.silu: construction and errors, the cycle model, the spec, Amaranth-simulator runs vs
golden over every int8 input."""

from __future__ import annotations

import pytest
import torch

from golden.silu import SiluParams, silu_int, silu_params
from hw.registry import spec_from_json, unit_for_op
from hw.silu import SILU_LATENCY, Silu, SiluSpec, silu_cycles, silu_edges
from hw.spec import UnitParamError
from sim.nonlinear_bench import Job, SiluConfig, result_problems, run_pysim
from sim.streams import STALL_MODES

SP = silu_params(0.05, 0.03)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lanes": 0, "params": SP}, "lanes must be a positive integer, not 0"),
        ({"lanes": 65, "params": SP}, "lanes must be at most 64, not 65"),
        ({"lanes": 1, "params": None}, "params must be golden.silu.silu_params"),
        ({"lanes": 1, "params": SiluParams(torch.zeros(255, dtype=torch.int64))}, "256 int8"),
        ({"lanes": 1, "params": SiluParams(torch.full((256,), 128))}, "256 int8"),
    ],
)
def test_invalid_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Silu(**kwargs)


def test_cycle_model():
    assert SILU_LATENCY == 2 and Silu(lanes=2, params=SP).latency == 2
    assert silu_cycles(3, 64, 4) == 3 * 16 + 2
    assert silu_edges(3, 64, 4, 5) == 3 * 16 + 2 + 5
    with pytest.raises(ValueError, match=r"lanes=4 must divide the row length \(length=6\)"):
        silu_cycles(1, 6, 4)


def test_spec_json_registry_and_errors():
    s = SiluSpec(lanes=2, in_scale=0.05, out_scale=0.03)
    assert unit_for_op("silu") is SiluSpec
    assert spec_from_json("silu", s.to_json()) == s
    q = torch.arange(-128, 128)
    assert torch.equal(s.reference(q), silu_int(q, SP))
    assert s.cycles(rows=2, length=8) == silu_cycles(2, 8, 2)
    for bad in ({"in_scale": 0.0}, {"out_scale": float("nan")}, {"lanes": 0}, {"in_scale": True}):
        with pytest.raises(UnitParamError):
            spec_from_json("silu", {**s.to_json(), **bad})
    r = s.resources("ecp5")
    assert r["estimated"] and r["dsps"] == 0 and r["luts"] > 0


@pytest.mark.parametrize("stall", STALL_MODES)
@pytest.mark.parametrize("cfg", [SiluConfig(lanes=1, in_scale=0.1, out_scale=0.05),
                                 SiluConfig(lanes=3, in_scale=0.02, out_scale=0.0023)],
                         ids=lambda c: f"p{c.lanes}")
def test_pysim_every_int8_input(cfg, stall):
    # "all" walks -128..127 in order: every table entry, each lane position
    jobs = [Job(1, "all", 0), Job(2, "random", 1), Job(1, "min", 2), Job(1, "max", 3)]
    for r in run_pysim(cfg, jobs, length=3 * 256, stall=stall, seed=4):
        assert not result_problems(r, stall), result_problems(r, stall)
        assert r["max_abs_err_lsb"] <= 0.5 + 1e-9  # documented: the float SiLU rounded
