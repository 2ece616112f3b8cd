"""Convolutions count their multiply-accumulates (ViT patches, wav2vec2 feature encoder), so an
accelerator's MAC share is not overstated: before, a convolution counted 0 MACs. An ungrouped
one becomes a GEMM (its ``linear`` carries ``attrs["conv"]`` and the convolution's MACs); a
grouped or transposed one stays on the host with its MACs."""

from __future__ import annotations

import pytest
import torch

from compiler.driver import compile_model
from compiler.frontend import export_graph
from compiler.passes import Canonicalize, run_passes


class Convs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c2 = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.c1 = torch.nn.Conv1d(8, 6, 5, stride=2, dilation=2)
        self.tr = torch.nn.ConvTranspose1d(6, 4, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(self.c2(x))  # [1, 8, 8, 8]
        return self.tr(self.c1(y.flatten(2)))


def _count(mod: torch.nn.Module, x: torch.Tensor) -> tuple[list[int], list[int]]:
    """(MACs of each conv in the graph, MACs counted here from the modules' hooks)."""
    ref: list[int] = []

    def hook(m, inp, out):
        w = m.weight
        if isinstance(m, torch.nn.ConvTranspose1d):
            ref.append(inp[0].numel() * w.shape[1] * w.shape[2])
        else:
            ref.append(out.numel() * w[0].numel())

    hs = [m.register_forward_hook(hook) for m in mod.modules() if m is not mod]
    with torch.no_grad():
        mod(x)
    for h in hs:
        h.remove()
    g = export_graph(mod, (x,))
    run_passes(g, [Canonicalize()])
    return [n.attrs["macs"] for n in g.nodes if n.attrs.get("conv")], ref


def test_conv_macs_match_the_modules():
    torch.manual_seed(0)
    got, ref = _count(Convs().eval(), torch.randn(1, 3, 16, 16))
    assert got == ref
    # the depthwise-style grouped conv: 8x8 outputs x 8 channels x (8/4) x 3x3
    assert got[1] == 8 * 8 * 8 * 2 * 9


@pytest.mark.parametrize("model", ["vit-tiny", "wav2vec2-tiny"])
def test_accelerator_share_counts_the_convolutions(model):
    c = compile_model(model, "asic,cpu:mode=roofline", "energy")
    ops = c.plan["ops"]
    # every ungrouped convolution became a GEMM (linear ``<conv>_gemm``) placed on the asic
    gemms = [o for o in ops if o["op"] == "linear" and o["name"].endswith("_gemm")]
    assert gemms and all(o["macs"] > 0 and o["device"] == "asic" for o in gemms)
    conv = [o for o in ops if o["target"] == "aten.convolution.default"]
    assert all(o["device"].startswith("cpu") for o in conv)
    per = c.plan["totals"]["per_device"]
    total = sum(d["macs"] for d in per.values())
    assert total == sum(o["macs"] for o in ops)
    host_conv = sum(o["macs"] for o in conv)
    assert per["cpu:mode=roofline"]["macs"] >= host_conv
    share = per["asic"]["macs"] / total
    if model == "vit-tiny":  # the patch embedding was its only convolution
        assert not conv and share > 0.9
    else:  # the positional conv is grouped: on the host, with the reason
        assert conv and 0.5 < share <= 1 - host_conv / total
        why = {f["op"]: f["reason"] for f in c.plan["fallback_ops"]}
        assert all("grouped convolution" in why[o["name"]] for o in conv)
