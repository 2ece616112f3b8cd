"""golden.imc, noise-robust mapping: two-phase sign-magnitude inputs and fault-aware differential
encoding stay exact when ideal, keep realistic noise within a stated bound on small
activations (where offset-binary inputs fail), recover accuracy under stuck cells, and drive the
unchanged macro RTL bit- and cycle-exactly."""

from __future__ import annotations

import math

import pytest
import torch

from golden.errors import UserValueError
from golden.gemm import gemm_int
from golden.imc import (
    REALISTIC_NOISE,
    CrossbarConfig,
    CrossbarNoise,
    _solve_patterns,
    crossbar_codes,
    crossbar_linear,
    crossbar_recombine,
    input_digits,
    macro_inputs,
    program,
)
from golden.requant import quantize_multiplier

ROBUST = dict(differential=True, signed_inputs=True)


def _layer(m: int, k: int, n: int, seed: int, x_std: float = 6.0, w_std: float = 40.0):
    """A linear shaped like MiniLM's: int8 activations of a few LSB (std ``x_std``, with -128
    and 127 present), per-channel int8 weights, bias and a requantizer."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(m, k, generator=g) * x_std).round().clamp(-128, 127).to(torch.int64)
    x[0, 0], x[-1, -1] = -128, 127
    w = (torch.randn(k, n, generator=g) * w_std).round().clamp(-128, 127).to(torch.int64)
    w[:, 0] = -128
    b = torch.randint(-3000, 3000, (n,), generator=g)
    ms = [quantize_multiplier(1.0 / float(6 * x_std * w_std * math.sqrt(k) / 127))] * n
    mult, shift = torch.tensor([p[0] for p in ms]), torch.tensor([p[1] for p in ms])
    return x, w, b, mult, shift


def _rel(y: torch.Tensor, ref: torch.Tensor, b: torch.Tensor) -> float:
    return float((y - ref).double().norm() / (ref - b).double().norm())


@pytest.mark.parametrize(("rows", "cell_bits", "dac_bits", "k"),
                         [(128, 2, 1, 200), (16, 1, 1, 37), (8, 4, 2, 9), (32, 3, 3, 64)])
def test_ideal_two_phase_and_fault_aware_equal_gemm_int(rows, cell_bits, dac_bits, k):
    full = rows * (2**dac_bits - 1) * (2**cell_bits - 1)
    cfg = CrossbarConfig(rows=rows, cols=16, cell_bits=cell_bits, dac_bits=dac_bits,
                         adc_bits=full.bit_length(), fault_aware=True, spare_cols=2, **ROBUST)
    g = torch.Generator().manual_seed(k)
    x = torch.randint(-128, 128, (5, k), generator=g)
    w = torch.randint(-128, 128, (k, 11), generator=g)
    x[0], x[1], w[:, 0] = -128, 127, -128
    b = torch.randint(-2**20, 2**20, (11,), generator=g)
    ref = gemm_int(x, w, b)
    assert torch.equal(crossbar_linear(x, w, b, cfg=cfg, fast=False), ref)
    p = program(w, cfg)
    assert int(p.wsum.abs().sum()) == 0  # [W; -W]: the weight sums cancel
    codes = crossbar_codes(x, p)
    assert codes.shape[0] == cfg.macro_tiles(k) == 2 * math.ceil(k / rows)
    assert torch.equal(crossbar_recombine(codes, x, p, b), ref)
    # the macro's words: offset binary of [x+ ; x-], each half padded with -128
    words = macro_inputs(x, cfg)
    t = math.ceil(k / rows)
    assert torch.equal(words[:, :k] + 128, x.clamp(min=0))
    assert torch.equal(words[:, t * rows:t * rows + k] + 128, (-x).clamp(min=0))
    assert bool((words[:, k:t * rows] == -128).all()) and bool((words[:, t * rows + k:] == -128).all())
    assert input_digits(x, cfg).shape == (cfg.steps, 5, 2 * t * rows)


def test_robust_flags_need_the_differential_encoding():
    with pytest.raises(UserValueError, match="signed_inputs needs the differential"):
        CrossbarConfig(signed_inputs=True)
    with pytest.raises(UserValueError, match="fault_aware needs the differential"):
        CrossbarConfig(fault_aware=True)


@pytest.mark.parametrize("cfg_kw", [{}, {"differential": True}, ROBUST,
                                    {**ROBUST, "fault_aware": True, "spare_cols": 2}])
def test_fast_error_path_equals_the_codes_path(cfg_kw):
    # crossbar_linear adds the rounding errors to x @ encoded without building codes; it must be
    # bit-identical to recombining crossbar_codes (what the RTL periphery is checked against)
    cfg = CrossbarConfig(rows=64, cols=8, **cfg_kw)
    x, w, b, mult, shift = _layer(6, 150, 20, 7)
    for nz in (REALISTIC_NOISE, REALISTIC_NOISE.with_(stuck_on=0.01, stuck_off=0.01),
               CrossbarNoise(adc_offset_sigma=0.3, read_sigma=0.05, drift_t=1e5, drift_nu=0.02,
                             drift_nu_sigma=0.01)):
        p = program(w, cfg, nz, seed=3)
        fast = crossbar_linear(x, p, b, mult, shift, read_seed=11)
        slow = crossbar_linear(x, p, b, mult, shift, read_seed=11, fast=False)
        assert torch.equal(fast, slow), (cfg_kw, nz)
        assert torch.equal(crossbar_recombine(crossbar_codes(x, p, 11), x, p, b, mult, shift), slow)


def test_realistic_noise_error_bound_on_small_activations():
    # activations of a few LSB, as in MiniLM (std 1.4..10): offset-binary inputs x + 128 drive
    # the top input bit on every row whatever |x|, so each code's analog error (and the ADC
    # rounding flips it causes, weighted up to 2**13) scales with 128 while the signal scales
    # with |x|; sign-magnitude inputs make the error scale with |x|. Stated bound: 5% relative
    # error of x @ w (measured about 2% here, 1..4% on MiniLM's linears)
    x, w, b, _, _ = _layer(16, 384, 48, 1)
    ref = gemm_int(x, w, b)
    errs = {}
    for name, kw in (("offset", {}), ("differential", {"differential": True}),
                     ("robust", ROBUST)):
        cfg = CrossbarConfig(cols=48, **kw)
        errs[name] = max(_rel(crossbar_linear(x, w, b, cfg=cfg, noise=REALISTIC_NOISE, seed=s), ref, b)
                         for s in (1, 2))
    assert errs["robust"] < 0.05, errs
    assert errs["offset"] > 0.5 and errs["differential"] > 0.2, errs
    # ideal stays exact on the same layer
    assert torch.equal(crossbar_linear(x, w, b, cfg=CrossbarConfig(cols=48, **ROBUST), fast=False), ref)


def test_fault_aware_pairs_absorb_stuck_cells():
    cfg = CrossbarConfig(rows=64, cols=16, fault_aware=True, **ROBUST)
    x, w, b, _, _ = _layer(8, 128, 32, 5)
    nz = CrossbarNoise(stuck_on=0.01, stuck_off=0.01)  # faults only: g == digits unless stuck
    plain = program(w, CrossbarConfig(rows=64, cols=16, **ROBUST), nz, seed=4)
    fa = program(w, cfg, nz, seed=4)
    assert fa.faulty_cells == plain.faulty_cells > 300  # the same stuck map
    assert not torch.equal(plain.g, plain.digits.float())
    # every stuck cell holds the digit its pair was re-encoded to: no analog error is left, and
    # the crossbar computes the encoded weights exactly
    assert torch.equal(fa.g, fa.digits.float())
    # a pair with two stuck cells may have no exact encoding (about 1% of the pairs at this rate)
    assert fa.reencoded > 100 and fa.residual < 0.1 * fa.reencoded
    # (a weight whose pair has, say, u+ <= 63 and u- >= 192 can only be encoded as -129 or
    # below: encoded values may leave int8)
    assert torch.equal(crossbar_linear(x, fa, b), x @ fa.encoded + b)
    s = cfg.slices
    d = fa.digits.long().reshape(-1, cfg.arrays, 32)[:128]
    val = sum(d[:, j] << (2 * j) for j in range(s)) - sum(d[:, s + j] << (2 * j) for j in range(s))
    assert torch.equal(val, fa.encoded)


def test_pair_solver_cancels_a_stuck_on_top_digit():
    cfg = CrossbarConfig(differential=True)
    sp = torch.tensor([[0, 0, 0, 1]])  # u+'s top digit stuck at 3: u+ >= 192
    sm = torch.tensor([[0, 0, 0, 0]])
    tab = _solve_patterns(sp, sm, cfg)[0]  # [256, 2] for w = -128..127
    diff = tab[:, 0] - tab[:, 1]
    w = torch.arange(-128, 128)
    assert bool((tab[:, 0] >= 192).all()) and bool((tab <= 255).all())
    assert torch.equal(diff[w >= -63], w[w >= -63])  # u- = u+ - w cancels the stuck cell
    assert torch.equal(diff[w < -63], torch.full_like(w[w < -63], -63))  # the nearest value
    # a stuck-off top digit of u- (u- <= 63): exact where it fits, else the nearest value; among
    # exact pairs the one with the least programming-noise variance (127 = 128 - 1: two on cells
    # instead of four)
    tab2 = _solve_patterns(torch.tensor([[0, 0, 0, 0]]), torch.tensor([[0, 0, 0, 2]]), cfg)[0]
    d2 = tab2[:, 0] - tab2[:, 1]
    assert torch.equal(d2[w >= -63], w[w >= -63]) and bool((d2[w < -63] == -63).all())
    assert bool((tab2[:, 1] <= 63).all()) and tab2[255].tolist() == [128, 1]


def test_mitigation_recovers_accuracy_under_stuck_cells():
    # 2% of the cells stuck (half on, half off) on a MiniLM-like layer with realistic noise:
    # without mitigation a stuck-on high digit shifts its weight by up to 3 * 64; with the
    # fault-aware encoding (and spare columns for what it cannot absorb) the error stays within
    # four times the fault-free error
    x, w, b, _, _ = _layer(16, 256, 64, 3)
    ref = gemm_int(x, w, b)
    nz = REALISTIC_NOISE.with_(stuck_on=0.01, stuck_off=0.01)
    err = {}
    for name, kw in (("none", {}), ("spares", {"spare_cols": 4}),
                     ("fault-aware", {"fault_aware": True, "spare_cols": 4})):
        cfg = CrossbarConfig(rows=128, cols=32, **ROBUST, **kw)
        err[name] = _rel(crossbar_linear(x, w, b, cfg=cfg, noise=nz, seed=2), ref, b)
    clean = _rel(crossbar_linear(x, w, b, cfg=CrossbarConfig(cols=32, **ROBUST),
                                 noise=REALISTIC_NOISE, seed=2), ref, b)
    assert err["none"] > 0.3, err
    assert err["fault-aware"] < min(4 * clean, 0.1 * err["none"]), (err, clean)
    assert err["spares"] < err["none"], err


def _signed_stimulus(cfg, tokens, seed):
    """sim.imc_bench's stimulus for a two-phase macro: K = cfg.k - T*rows real rows on the
    ``[W; -W]`` tiles, codes from golden.imc in the macro's tile order."""
    from sim.imc_bench import ImcBenchConfig  # noqa: F401  (documents the shape of cfg)

    t = cfg.tiles // 2
    k = cfg.k - t * cfg.rows
    xc = CrossbarConfig(rows=cfg.rows, cols=cfg.cols, cell_bits=cfg.cell_bits,
                        dac_bits=cfg.dac_bits, adc_bits=cfg.adc_bits, **ROBUST)
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-128, 128, (k, cfg.cols), generator=g)
    w[:, 0] = -128
    bias = torch.randint(-5000, 5000, (cfg.cols,), generator=g)
    mult, shift = torch.full((cfg.cols,), 1 << 30), torch.full((cfg.cols,), 40)
    prog = program(w, xc, cfg.noise, seed)
    jobs = []
    for j, m in enumerate(tokens):
        x = torch.randint(-128, 128, (m, k), generator=g)
        x[0] = -128 if j % 2 else 127
        codes = crossbar_codes(x, prog, seed * 31 + j)
        exp = crossbar_linear(x, prog, bias, mult, shift, read_seed=seed * 31 + j)
        assert torch.equal(exp, crossbar_recombine(codes, x, prog, bias, mult, shift))
        jobs.append({"x": macro_inputs(x, xc)[:, :cfg.k], "codes": codes, "expected": exp.tolist(),
                     "digits": input_digits(x, xc)})
    return {"w": w, "bias": bias, "mult": mult, "shift": shift, "prog": prog, "jobs": jobs}


@pytest.mark.parametrize("noisy", [False, True], ids=["ideal", "noise"])
def test_unchanged_macro_rtl_runs_two_phase_inputs(monkeypatch, noisy):
    # the periphery RTL is not changed: it sees 2T row tiles, k' = T*rows + K, a zero weight sum
    # and the offset-binary words of [x+ ; x-]; its outputs must equal golden.imc bit for bit
    # and its cycles the model's
    pytest.importorskip("amaranth")
    import sim.imc_bench as bench

    nz = REALISTIC_NOISE.with_(stuck_on=0.05, stuck_off=0.05) if noisy else CrossbarNoise()
    cfg = bench.ImcBenchConfig(rows=4, cols=3, tiles=4, k=8 + 7, differential=True, noise=nz)
    monkeypatch.setattr(bench, "imc_stimulus", _signed_stimulus)
    for r in bench.run_imc_pysim(cfg, [3, 1, 2], stall="both", seed=5):
        assert r["match"] and not r["dac_errors"] and not r["error"], r
        assert r["cycles"] == r["predicted_cycles"] and r["tb_edges"] == r["tb_predicted_edges"], r


def test_imc_target_defaults_to_the_robust_mapping_and_prices_two_phases():
    from types import SimpleNamespace

    from compiler.imc_run import crossbar_config
    from compiler.targets.imc import ImcTarget

    t = ImcTarget()
    cfg = crossbar_config(t.params())
    assert (cfg.differential, cfg.signed_inputs, cfg.fault_aware) == (True, True, True)
    assert t.crossbars_for(384, 1536) == 3 * 12 * 8 and t.crossbars == 8192
    old = ImcTarget("imc", "differential=0:signed_inputs=0:fault_aware=0")
    assert t.t_mvm == pytest.approx(2 * old.t_mvm) and t.e_mac == pytest.approx(4 * old.e_mac)
    spec = t.macro(SimpleNamespace(attrs={"k": 384, "quant": {}}))
    assert (spec.tiles, spec.k) == (6, 3 * 128 + 384)
    # plans written before these keys run with offset-binary inputs, as compiled
    legacy = crossbar_config({"xbar": 128, "cell_bits": 2, "dac_bits": 1, "adc_bits": 9})
    assert not (legacy.differential or legacy.signed_inputs or legacy.fault_aware)
    with pytest.raises(UserValueError, match="signed_inputs=1 needs differential=1"):
        ImcTarget("imc", "differential=0:signed_inputs=1")
    with pytest.raises(UserValueError, match="parameter fault_aware must be 0 or 1"):
        ImcTarget("imc", "fault_aware=2")
