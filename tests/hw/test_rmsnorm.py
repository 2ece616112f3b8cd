"""hw.rmsnorm: construction and errors, the cycle model, the spec, Amaranth-simulator runs vs
golden (random and edge rows, the D = 0 path, extreme constants, the longest row)."""

from __future__ import annotations

import pytest
import torch

from golden.layernorm import EPS_MAX, layernorm_params
from golden.rmsnorm import rmsnorm_int, rmsnorm_params
from hw.registry import spec_from_json, unit_for_op
from hw.rmsnorm import RmsNorm, RmsNormSpec, rmsnorm_cycles, rmsnorm_edges, rmsnorm_row_overhead
from hw.spec import UnitParamError
from sim.nonlinear_bench import Job, RmsNormConfig, result_problems, run_pysim
from sim.replay import StreamReplay
from sim.streams import STALL_MODES

RP = rmsnorm_params(8, 0.05, 1.0, 0.05)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lanes": 0, "params": RP}, "lanes must be a positive integer, not 0"),
        ({"lanes": 3, "params": RP}, r"lanes=3 must divide the row length \(n=8\)"),
        ({"lanes": 65, "params": RP}, "lanes must be at most 64, not 65"),
        ({"lanes": 2, "params": None}, "params must be golden.rmsnorm.rmsnorm_params"),
        ({"lanes": 1, "params": layernorm_params(8, 0.05, 1.0, 0.0, 0.05, in_bits=24)},
         "int8 input"),
    ],
)
def test_invalid_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RmsNorm(**kwargs)


def test_properties_read_only():
    u = RmsNorm(lanes=4, params=RP)
    assert (u.lanes, u.words, u.params) == (4, 2, RP)
    with pytest.raises(AttributeError):
        u.lanes = 2


def test_cycle_model():
    # L + 2 drain, 8 setup, 20 square-root steps, 22 divider steps, 12 NORM stages
    assert [rmsnorm_row_overhead(p) for p in (1, 2, 4, 8, 64)] == [64, 65, 66, 67, 70]
    assert rmsnorm_cycles(3, 64, 4) == 3 * (2 * 16 + 66)
    assert rmsnorm_edges(3, 64, 4, 9) == 3 * (2 * 16 + 66) + 9
    with pytest.raises(ValueError, match=r"lanes=4 must divide the row length \(length=6\)"):
        rmsnorm_cycles(1, 6, 4)
    with pytest.raises(ValueError, match="length must be at most 4096"):
        rmsnorm_cycles(1, 4097, 1)
    with pytest.raises(ValueError, match="stalls must be a non-negative integer"):
        rmsnorm_edges(1, 8, 1, -1)


def test_spec_json_registry_and_errors():
    s = RmsNormConfig(lanes=2, length=8, seed=3).spec()
    assert unit_for_op("rms_norm") is RmsNormSpec
    assert spec_from_json("rmsnorm", s.to_json()) == s
    assert s.cycles(rows=5, length=8) == rmsnorm_cycles(5, 8, 2)
    x = torch.randint(-128, 128, (3, 8), generator=torch.Generator().manual_seed(0))
    assert torch.equal(s.reference(x), rmsnorm_int(x, RmsNormConfig(lanes=2, length=8, seed=3).params()[0]))
    with pytest.raises(ValueError, match="rows of 8, not 6"):
        s.cycles(rows=1, length=6)
    bad = {"lanes": 3}, {"gamma_int": [1] * 7}, {"g_shift": 49}, {"eps_int": EPS_MAX + 1}, \
        {"gamma_int": [2**15] * 8}
    for b in bad:
        with pytest.raises(UnitParamError):
            spec_from_json("rmsnorm", {**s.to_json(), **b})
    with pytest.raises(UnitParamError, match="unknown rmsnorm parameter"):
        spec_from_json("rmsnorm", {**s.to_json(), "beta_int": [0] * 8})
    r = s.resources("ecp5")
    assert r["estimated"] and r["dsps"] > 0 and r["buffer_bits"] == 8 * (8 + 16)


CASES = [RmsNormConfig(lanes=2, length=6), RmsNormConfig(lanes=1, length=1),
         RmsNormConfig(lanes=4, length=8, eps=0.0)]


@pytest.mark.parametrize("stall", STALL_MODES)
@pytest.mark.parametrize("cfg", CASES, ids=lambda c: f"n{c.length}p{c.lanes}eps{c.eps:g}")
def test_pysim_bit_exact_and_cycle_exact(cfg, stall):
    # rowconst starts with rows at -128, 127 and 0: with eps = 0 the zero row has D = 0
    jobs = [Job(2, "random", 1), Job(1, "max", 2), Job(1, "min", 3), Job(3, "rowconst", 4),
            Job(2, "nearconst", 5), Job(1, "onehot", 6)]
    for r in run_pysim(cfg, jobs, stall=stall, seed=5):
        assert not result_problems(r, stall), result_problems(r, stall)
        if cfg.eps > 0:  # documented: within 1 LSB of the float RMSNorm (0.51 unrounded)
            assert r["max_abs_err_lsb"] <= 0.51


def _replay(spec, x, stall="none"):
    y = spec.reference(x)
    (r,) = run_pysim(StreamReplay(spec, x, y), [Job(int(x.shape[0]), "replay", 0)], stall=stall,
                     seed=2)
    return r


@pytest.mark.parametrize(("gamma", "out_scale", "eps", "want"), [
    (1e-12, 1.0, 1e-6, {"g_shift": 48}),  # the largest out_shift (62)
    (1.0, 0.05, 1e12, {"eps_int": EPS_MAX}),  # eps dominates D (D near 2**61, k = -11)
    (3.0, 0.001, 0.0, {"eps_int": 0}),  # saturating outputs; the zero row has D = 0
    (-2.0, 0.02, 1e-2, {}),  # negative gamma
])
def test_extreme_constants(gamma, out_scale, eps, want):
    x = torch.randint(-128, 128, (4, 8), generator=torch.Generator().manual_seed(1))
    x[0], x[1, 3] = 0, -128
    spec = RmsNormSpec.from_params(rmsnorm_params(8, 0.05, gamma, out_scale, eps), 2)
    assert {k: getattr(spec, k) for k in want} == want
    r = _replay(spec, x)
    assert not result_problems(r), result_problems(r)


def test_longest_row_widest_sums():
    # N = 4096 at the int8 extremes: S2 = 2**26, |c| = 2**19, |y| near 2**20 (one-hot row)
    n = 4096
    x = torch.full((3, n), -128, dtype=torch.int64)
    x[1, ::2] = 127
    x[2] = 0
    x[2, 5] = 127
    gamma = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
    spec = RmsNormSpec.from_params(rmsnorm_params(n, 0.05, gamma, 0.004), 64)
    r = _replay(spec, x, "both")
    assert not result_problems(r, "both"), result_problems(r, "both")
