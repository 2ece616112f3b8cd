"""A one-layer causal self-attention block (no residual) with its softmax written out, the causal mask added
as a large negative constant (``-1e4``, as BERT-era code does) or filled with ``-inf``
(test_masked_softmax.py)."""

import torch

L, D, H = 16, 64, 4
DH = D // H


class Causal(torch.nn.Module):
    def __init__(self, fill: float) -> None:
        super().__init__()
        self.qkv = torch.nn.Linear(D, 3 * D)
        self.o = torch.nn.Linear(D, D)
        self.fill = fill
        self.register_buffer("future", torch.triu(torch.ones(L, L, dtype=torch.bool), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).view(1, L, 3, H, DH).permute(2, 0, 3, 1, 4)
        s = (q @ k.transpose(-1, -2)) / DH ** 0.5
        if self.fill == float("-inf"):
            s = s.masked_fill(self.future, self.fill)
        else:
            s = s + self.future.float() * self.fill
        a = torch.softmax(s, dim=-1) @ v
        return self.o(a.transpose(1, 2).reshape(1, L, D))


def _make(fill: float):
    torch.manual_seed(0)
    return Causal(fill).eval(), (torch.randn(1, L, D, generator=torch.Generator().manual_seed(1)),)


def causal_1e4():
    return _make(-1e4)


def causal_inf():
    return _make(float("-inf"))
