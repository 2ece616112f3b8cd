"""hw.requant: construction and errors, the cycle model, Amaranth-simulator runs vs golden."""

from __future__ import annotations

import pytest
import torch

from golden.requant import requantize
from hw.requant import REQUANT_LATENCY, Requantizer, requant_cycles, requant_edges
from sim.nonlinear_bench import (
    REQUANT_EDGE_PARAMS,
    Job,
    RequantConfig,
    requant_rounding_points,
    result_problems,
    run_pysim,
)
from sim.streams import STALL_MODES


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lanes": 0, "channels": 4}, "lanes must be a positive integer, not 0"),
        ({"lanes": 4, "channels": 0}, "channels must be a positive integer, not 0"),
        ({"lanes": 3, "channels": 8}, r"lanes=3 must divide the row length \(channels=8\)"),
        ({"lanes": 65, "channels": 65}, "lanes must be at most 64, not 65"),
        ({"lanes": 2.0, "channels": 4}, "lanes must be a positive integer, not 2.0"),
    ],
)
def test_invalid_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Requantizer(**kwargs)


def test_properties_read_only_and_ports():
    r = Requantizer(lanes=4, channels=12)
    assert (r.lanes, r.channels, r.groups, r.latency) == (4, 12, 3, REQUANT_LATENCY)
    with pytest.raises(AttributeError):
        r.lanes = 2
    assert r.i_data.payload.shape().size == 4 * 32 + 1
    assert r.o_data.payload.shape().size == 4 * 8 + 1
    assert r.i_param.payload.shape().size == 4 * 38


def test_cycle_model():
    assert requant_cycles(3, 12, 4) == 9 + REQUANT_LATENCY
    assert requant_edges(3, 12, 4) == 9 + REQUANT_LATENCY and requant_edges(3, 12, 4, 5) == 14 + REQUANT_LATENCY
    with pytest.raises(ValueError, match="stalls must be a non-negative integer, not -1"):
        requant_edges(3, 12, 4, -1)
    with pytest.raises(ValueError, match="must divide the row length"):
        requant_cycles(1, 10, 4)
    with pytest.raises(ValueError, match="rows must be a positive integer, not 0"):
        requant_cycles(0, 8, 4)


@pytest.mark.parametrize("stall", STALL_MODES)
def test_pysim_bit_exact_and_cycle_exact(stall):
    cfg = RequantConfig(lanes=2, channels=4)
    jobs = [Job(3, "random", 1), Job(1, "min", 2), Job(2, "max", 3), Job(1, "minmax", 4)]
    for r in run_pysim(cfg, jobs, stall=stall, seed=7):
        assert r["match"], f"{r['job']} ({stall}): {r['mismatches']}"
        assert r["cycles"] == r["predicted_cycles"], r["job"]
        assert not result_problems(r, stall), result_problems(r, stall)  # + testbench edges
        assert not r["error"]


@pytest.mark.parametrize("stall", ["none", "both"])
def test_pysim_rounding_points_and_int8_range(stall):
    # every rounding point and saturation edge of 8 (mult, shift) pairs (exact ties included),
    # then every int8 input times 8 realistic multipliers
    cfg = RequantConfig(lanes=8, channels=8)
    rows = max(len(requant_rounding_points(m, s)) for m, s in REQUANT_EDGE_PARAMS)
    jobs = [Job(rows, "rounding", 0), Job(256, "int8", 0)]
    for r in run_pysim(cfg, jobs, stall=stall, seed=4):
        assert not result_problems(r, stall), result_problems(r, stall)
        assert r["max_abs_err_lsb"] <= 1.0  # golden.requant: within 1 LSB of the float twin


def test_rounding_points_hit_every_output_and_ties():
    pts = requant_rounding_points(1, 1)  # scale 1/2: odd inputs are exact ties
    y = requantize(torch.tensor(pts), 1, 1)
    assert set(y.tolist()) == set(range(-128, 128))
    assert {-257, -256, 253, 254, 255, 256} <= set(pts)  # both sides of -128.5 and 127.5
