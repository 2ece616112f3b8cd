"""Convolutions with a constant weight become GEMMs (``convolution_to_gemm``): im2col (or a
patch reshape) on the host, a ``linear`` with the weight ``[C_out, C_in * kernel]``, layout ops
back to the convolution's shape. Without quantization the executor with those linears on the
accelerator equals the float model; grouped and transposed convolutions stay on the host with
the reason."""

from __future__ import annotations

import pytest
import torch

from compiler.execute import make_impl
from compiler.frontend import export_graph
from compiler.interp import run_graph
from compiler.passes import Canonicalize, run_passes
from compiler.passes.quantize import QUANT_KINDS

#: (dims, in, out, kernel, stride, padding, dilation, input spatial size)
CASES = {
    "1d-plain": (1, 3, 5, 3, 1, 0, 1, (17,)),
    "1d-stride-pad": (1, 4, 6, 5, 2, 2, 1, (23,)),
    "1d-dilated": (1, 2, 4, 3, 3, 1, 2, (19,)),
    "1d-patches": (1, 3, 4, 4, 4, 0, 1, (16,)),
    "2d-plain": (2, 3, 4, 3, 1, 0, 1, (9, 7)),
    "2d-stride-pad": (2, 3, 8, (3, 2), (2, 1), (1, 0), 1, (10, 9)),
    "2d-dilated": (2, 2, 5, 3, 1, 2, (2, 3), (11, 12)),
    "2d-patches": (2, 3, 6, 4, 4, 0, 1, (16, 12)),
    "2d-stride-is-kernel-ragged": (2, 3, 6, 4, 4, 0, 1, (18, 13)),
}


class ConvNet(torch.nn.Module):
    def __init__(self, dims, cin, cout, k, s, p, d, bias=True):
        super().__init__()
        conv = torch.nn.Conv1d if dims == 1 else torch.nn.Conv2d
        self.conv = conv(cin, cout, k, stride=s, padding=p, dilation=d, bias=bias)
        self.post = conv(cout, 3, 1)  # a second one reading the first's output

    def forward(self, x):
        return self.post(torch.relu(self.conv(x)))


def _graph(mod, x):
    g = export_graph(mod, (x,))
    run_passes(g, [Canonicalize()])
    return g


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", list(CASES))
def test_unquantized_executor_is_the_float_conv_model(case, bias):
    dims, cin, cout, k, s, p, d, size = CASES[case]
    torch.manual_seed(0)
    mod = ConvNet(dims, cin, cout, k, s, p, d, bias).eval()
    x = torch.randn(2, cin, *size)
    g = _graph(mod, x)
    assert not [n for n in g.nodes if n.target == "aten.convolution.default"]
    gemms = [n for n in g.nodes if n.op == "linear"]
    assert [n.attrs["conv"]["from"] for n in gemms] == ["convolution", "convolution_1"]
    with torch.no_grad():
        y1 = mod.conv(x)
    # the linear's MACs are the convolution's: every output element sums C_in x the window
    assert gemms[0].attrs["macs"] == y1.numel() * mod.conv.weight[0].numel()
    assert gemms[0].attrs["k"] == mod.conv.weight[0].numel()
    patches = all(n.target != "aten.im2col.default" for n in g.nodes
                  if n.name.startswith("convolution_"))
    assert gemms[0].attrs["conv"]["im2col"] is not patches
    plan = {"devices": [{"name": "asic", "kind": "asic", "params": {}},
                        {"name": "cpu", "kind": "cpu", "params": {}}],
            "ops": [{"name": n.name, "device": "asic" if n.op in QUANT_KINDS else "cpu"}
                    for n in g.nodes]}
    impl = make_impl(g, plan, quantize=False)
    for xi in (x, torch.randn(2, cin, *size) * 3):
        with torch.no_grad():
            ref = mod(xi)
        out = run_graph(g, (xi,), impl=impl)[0]
        assert out.shape == ref.shape and out.is_contiguous()
        err = float((out.double() - ref.double()).abs().max() / ref.abs().max())
        assert err < 1e-5, f"{case}: executor differs from the float model by {err:.2e}"


def test_patch_path_only_when_windows_tile_the_input():
    torch.manual_seed(0)
    tiled = _graph(ConvNet(2, *CASES["2d-patches"][1:7]).eval(), torch.randn(1, 3, 16, 12))
    ragged = _graph(ConvNet(2, *CASES["2d-patches"][1:7]).eval(), torch.randn(1, 3, 18, 13))
    first = [n.target for n in tiled.nodes if n.name.startswith("convolution_")
             and not n.name.startswith("convolution_1")]
    assert "aten.im2col.default" not in first and "aten.permute.default" in first
    assert any(n.target == "aten.im2col.default" for n in ragged.nodes)


@pytest.mark.parametrize("kind", ["grouped", "transposed"])
def test_grouped_and_transposed_stay_on_the_host_with_the_reason(kind):
    conv = torch.nn.Conv1d(4, 8, 3, groups=2) if kind == "grouped" \
        else torch.nn.ConvTranspose1d(4, 8, 3, stride=2)
    g = _graph(conv.eval(), torch.randn(1, 4, 10))
    [n] = [n for n in g.nodes if n.target == "aten.convolution.default"]
    assert n.op == "other" and n.attrs["macs"] > 0
    assert kind in n.attrs["conv_host"]
    assert not [n for n in g.nodes if n.op == "linear"]
