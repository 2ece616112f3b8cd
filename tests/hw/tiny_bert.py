"""A one-layer BERT-style encoder (d 32, 2 heads, FFN 64, 8 tokens) with random weights: the
smallest model whose compiled core program uses every instruction (tests/hw/test_core.py)."""

import torch
import torch.nn.functional as F


class Layer(torch.nn.Module):
    def __init__(self, d: int = 32, heads: int = 2, ffn: int = 64) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (torch.nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.ff1, self.ff2 = torch.nn.Linear(d, ffn), torch.nn.Linear(ffn, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, self.heads, d // self.heads).transpose(1, 2)

        a = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        x = self.ln1(self.o(a.transpose(1, 2).reshape(b, s, d)) + x)
        return self.ln2(self.ff2(F.gelu(self.ff1(x))) + x)


def layer():
    torch.manual_seed(0)
    return Layer().eval(), (torch.randn(1, 8, 32),)


class TwoLayers(torch.nn.Module):
    """Two such layers: the tiny model of the end-to-end suite case."""

    def __init__(self) -> None:
        super().__init__()
        self.l0, self.l1 = Layer(), Layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l1(self.l0(x))


def two_layers():
    torch.manual_seed(1)
    return TwoLayers().eval(), (torch.randn(1, 8, 32),)
