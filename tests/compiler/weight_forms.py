"""Models whose GEMM weights are not plain ``nn.Linear`` parameters (test_weight_forms.py):
computed in ``forward`` from parameters (weight norm, an expert indexed out of a stacked
parameter as eager MoE code does), computed from the input, or a parameter on the left of
``@``."""

import torch
import torch.nn.functional as F


def _x(*shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1)) * scale


class WeightNorm(torch.nn.Module):
    """``linear(x, g * v / |v|, b)``: the weight is a function of parameters only."""

    def __init__(self, k: int, n: int) -> None:
        super().__init__()
        self.v = torch.nn.Parameter(torch.randn(n, k))
        self.g = torch.nn.Parameter(torch.rand(n, 1) + 0.5)
        self.b = torch.nn.Parameter(torch.randn(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.g * self.v / self.v.norm(dim=1, keepdim=True), self.b)


class Experts(torch.nn.Module):
    """Two experts indexed out of stacked parameters ``[E, N, K]`` / ``[E, N]``."""

    def __init__(self, e: int = 4, k: int = 64, n: int = 96) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(e, n, k) * 0.1)
        self.b = torch.nn.Parameter(torch.randn(e, n) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.w[1], self.b[1]) + F.linear(x, self.w[2], self.b[2])


class FusedQK(torch.nn.Module):
    """A fused ``[2N, K]`` weight and ``[2N]`` bias split in ``forward`` (tuple-valued ops)."""

    def __init__(self, k: int = 48, n: int = 40) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(2 * n, k) * 0.2)
        self.b = torch.nn.Parameter(torch.randn(2 * n) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wq, wk = self.w.chunk(2)
        bq, bk = self.b.split(self.b.shape[0] // 2)
        return F.linear(x, wq, bq) * F.linear(x, wk, bk)


class LeftWeight(torch.nn.Module):
    """``W @ x`` with ``W`` a parameter whose values are much smaller than x's."""

    def __init__(self, m: int = 48, k: int = 32) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(m, k) * 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w @ x


class Hyper(torch.nn.Module):
    """A linear whose non-square weight ``[N, K]`` is computed from a second input."""

    def __init__(self, k: int = 48, n: int = 80) -> None:
        super().__init__()
        self.gen = torch.nn.Linear(16, n * k)
        self.b = torch.nn.Parameter(torch.randn(n))
        self.k, self.n = k, n

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.gen(z).view(self.n, self.k), self.b)


def weight_norm_square():
    torch.manual_seed(0)
    return WeightNorm(256, 256).eval(), (_x(1, 16, 256),)


def weight_norm_wide():
    torch.manual_seed(0)
    return WeightNorm(64, 96).eval(), (_x(1, 16, 64),)


def experts():
    torch.manual_seed(0)
    return Experts().eval(), (_x(1, 16, 64),)


def fused_qk():
    torch.manual_seed(0)
    return FusedQK().eval(), (_x(1, 16, 48),)


def left_weight():
    torch.manual_seed(0)
    return LeftWeight().eval(), (_x(2, 32, 24, scale=3.0),)


def hyper():
    torch.manual_seed(0)
    return Hyper().eval(), (_x(1, 16, 48), _x(16))
