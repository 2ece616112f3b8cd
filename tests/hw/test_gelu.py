"""hw.gelu: construction and errors, the cycle model, Amaranth-simulator runs vs golden."""

from __future__ import annotations

import pytest
import torch

from golden.gelu import gelu_int, gelu_params
from hw.gelu import GELU_LATENCY, Gelu, gelu_cycles, gelu_edges
from sim.nonlinear_bench import GeluConfig, Job, result_problems, run_pysim
from sim.streams import STALL_MODES

P = gelu_params(0.05, 0.03)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lanes": 0, "params": P}, "lanes must be a positive integer, not 0"),
        ({"lanes": 2, "mode": "tanh"}, "mode must be one of gelu, relu, not 'tanh'"),
        ({"lanes": 2}, "gelu mode needs params"),
        ({"lanes": 2, "mode": "relu", "relu_mult": 5}, "needs both relu_mult and relu_shift"),
        ({"lanes": 2, "mode": "relu", "relu_mult": 5, "relu_shift": 64}, r"shift in \[0, 63\]"),
    ],
)
def test_invalid_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Gelu(**kwargs)


def test_properties_read_only():
    g = Gelu(lanes=4, params=P)
    assert (g.lanes, g.mode, g.params, g.mult, g.shift, g.latency) == (4, "gelu", P, P.mult, P.shift, 11)
    with pytest.raises(AttributeError):
        g.lanes = 2
    r = Gelu(lanes=2, mode="relu")
    assert (r.mult, r.shift, r.params) == (1, 0, None)


def test_cycle_model():
    assert gelu_cycles(3, 16, 4) == 12 + GELU_LATENCY
    assert gelu_edges(3, 16, 4, 7) == 19 + GELU_LATENCY
    with pytest.raises(ValueError, match=r"lanes=4 must divide the row length \(length=6\)"):
        gelu_cycles(1, 6, 4)
    with pytest.raises(ValueError, match="length must be a positive integer, not 0"):
        gelu_cycles(1, 0, 1)


def test_bench_golden_is_the_gelu_golden():
    # the bench's expected values are golden.gelu.gelu_int of the words it sends
    st = GeluConfig(lanes=2).stimulus(Job(1, "minmax", 0), 4)
    assert st.expected == gelu_int(torch.tensor([[-128, 127], [-128, 127]]), P).tolist()


@pytest.mark.parametrize("stall", STALL_MODES)
@pytest.mark.parametrize("mode", ["gelu", "relu"])
def test_pysim_bit_exact_and_cycle_exact(mode, stall):
    cfg = GeluConfig(lanes=2, mode=mode)
    jobs = [Job(3, "random", 1), Job(1, "min", 2), Job(1, "max", 3), Job(2, "minmax", 4)]
    for r in run_pysim(cfg, jobs, length=4, stall=stall, seed=7):
        assert r["match"], f"{r['job']} ({stall}): {r['mismatches']}"
        assert r["cycles"] == r["predicted_cycles"], r["job"]
        assert not result_problems(r, stall), result_problems(r, stall)  # + testbench edges


@pytest.mark.parametrize("stall", ["none", "both"])
@pytest.mark.parametrize(("mode", "in_scale", "out_scale"), [
    ("gelu", 0.05, 0.03), ("gelu", 0.01, 0.005), ("gelu", 0.02, 0.02), ("relu", 0.05, 0.02),
    ("relu", 0.05, 0.05)])
def test_pysim_every_int8_input(mode, in_scale, out_scale, stall):
    # all 256 int8 values through a 4-lane unit; the GELU scale pairs are ones where a change of
    # Bq by one moves some output (K by one moves none of the 256: K is about 2**21)
    cfg = GeluConfig(lanes=4, mode=mode, in_scale=in_scale, out_scale=out_scale)
    for r in run_pysim(cfg, [Job(1, "all", 0), Job(2, "minmax", 1)], length=256, stall=stall, seed=3):
        assert not result_problems(r, stall), result_problems(r, stall)
