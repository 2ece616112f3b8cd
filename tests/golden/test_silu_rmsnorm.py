"""golden.silu and golden.rmsnorm against their float twins: random data (seeded) and the
inputs of the zoo's llama-tiny (its RMSNorm inputs and SwiGLU gate pre-activations)."""

from __future__ import annotations

import pytest
import torch

from golden.errors import UserValueError
from golden.rmsnorm import rmsnorm_float, rmsnorm_int, rmsnorm_params
from golden.silu import silu_float, silu_int, silu_params


def _llama_values():
    """(RMSNorm inputs [rows, 64] with gamma and eps, gate pre-activations) of llama-tiny."""
    from compiler.frontend import export_graph, load_model
    from compiler.interp import run_graph
    from compiler.passes import Canonicalize, run_passes

    lm = load_model("llama-tiny")
    g = export_graph(lm.module, lm.example_inputs, source=lm.name)
    run_passes(g, [Canonicalize()])
    rms = [n for n in g.nodes if n.op == "rms_norm"]
    silu = [n for n in g.nodes if n.op == "silu"]
    assert rms and silu
    seen: dict[str, torch.Tensor] = {}
    want = {n.inputs[0] for n in rms + silu}
    run_graph(g, lm.example_inputs,
              observe=lambda n, v, a: seen.__setitem__(n.name, v) if n.name in want else None)
    return ([(seen[n.inputs[0]], g.params[n.args[2].name], float(n.args[3])) for n in rms],
            [seen[n.inputs[0]] for n in silu])


# ------------------------------------------------------------------------------ SiLU

@pytest.mark.parametrize("si,so", [(0.01, 0.01), (0.05, 0.02), (0.1, 0.05), (0.03, 0.0023)])
def test_silu_every_int8_input_within_half_an_lsb(si, so):
    q = torch.arange(-128, 128)
    out = silu_int(q, silu_params(si, so))
    real = silu_float(q * si) / so
    assert int(out.min()) >= -128 and int(out.max()) <= 127
    ok = real.abs() < 127.5
    assert float((out - real).abs()[ok].max()) <= 0.5 + 1e-9
    assert torch.equal(out[~ok], torch.full_like(out[~ok], 127))  # saturates high only


def test_silu_on_llama_gates():
    _, gates = _llama_values()
    for x in gates:
        si = float(x.abs().max()) / 127
        so = float(silu_float(x).abs().max()) / 127
        q = torch.clamp(torch.round(x / si), -128, 127).to(torch.int64)
        out = silu_int(q, silu_params(si, so))
        assert float((out - silu_float(q * si) / so).abs().max()) <= 0.5 + 1e-9


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), True])
def test_silu_bad_scales(bad):
    with pytest.raises(UserValueError, match="silu in_scale"):
        silu_params(bad, 0.1)


def test_silu_bad_input():
    p = silu_params(0.1, 0.1)
    with pytest.raises(UserValueError, match="int8"):
        silu_int(torch.tensor([128]), p)
    with pytest.raises(UserValueError, match="integer tensor"):
        silu_int(torch.tensor([1.0]), p)


# ------------------------------------------------------------------------------ RMSNorm

def _check_rms(q, si, gamma, so, eps):
    out = rmsnorm_int(q, rmsnorm_params(q.shape[-1], si, gamma, so, eps))
    real = rmsnorm_float(q * si, gamma, eps) / so
    ok = real.abs() < 127.5
    assert ok.float().mean() > 0.9
    err = (out - real).abs()[ok]
    assert float(err.max()) <= 0.51, float(err.max())
    rounded = torch.clamp(torch.floor(real + 0.5), -128, 127)
    assert float((out - rounded).abs().max()) <= 1
    return out


@pytest.mark.parametrize("seed", range(4))
def test_rmsnorm_random_rows(seed):
    g = torch.Generator().manual_seed(seed)
    n = [1, 7, 64, 384][seed]
    q = torch.randint(-128, 128, (16, n), generator=g)
    q[0] = 0  # a row of zeros: output 0
    q[1] = -128  # the edges
    q[2] = 127
    gamma = torch.randn(n, generator=g, dtype=torch.float64) * 1.5
    si = [0.005, 0.02, 0.1, 0.2][seed]
    eps = [1e-6, 1e-5, 1e-3, 1e-2][seed]
    so = float(rmsnorm_float(q * si, gamma, eps).abs().max()) / 120
    out = _check_rms(q, si, gamma, so, eps)
    assert not out[0].any()


def test_rmsnorm_on_llama():
    rows, _ = _llama_values()
    for x, gamma, eps in rows:
        x = x.reshape(-1, x.shape[-1]).double()
        with torch.no_grad():
            gamma = gamma.detach().double() + torch.linspace(-0.5, 0.5, gamma.numel(),
                                                             dtype=torch.float64)
        si = float(x.abs().max()) / 127
        q = torch.clamp(torch.round(x / si), -128, 127).to(torch.int64)
        so = float(rmsnorm_float(q * si, gamma, eps).abs().max()) / 127
        _check_rms(q, si, gamma, so, eps)


def test_rmsnorm_bad_input():
    p = rmsnorm_params(4, 0.1, 1.0, 0.1)
    with pytest.raises(UserValueError, match="length 4"):
        rmsnorm_int(torch.zeros(2, 5, dtype=torch.int64), p)
    with pytest.raises(UserValueError, match="int8"):
        rmsnorm_int(torch.full((1, 4), 300), p)
    with pytest.raises(UserValueError):
        rmsnorm_params(4, 0.0, 1.0, 0.1)
