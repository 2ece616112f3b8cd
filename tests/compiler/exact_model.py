"""A tiny model with one of every op kind the executor runs on an integer accelerator, with
non-trivial layer-norm gamma/beta/eps and a near-constant input row (test_executor_exact.py)."""

import torch

L, D, H, F = 16, 64, 4, 128
DH = D // H


class ExactNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1 = torch.nn.LayerNorm(D, eps=1e-2)
        self.q = torch.nn.Linear(D, D)
        self.k = torch.nn.Linear(D, D)
        self.v = torch.nn.Linear(D, D)
        self.o = torch.nn.Linear(D, D)  # feeds only the residual add: per-channel out scales
        self.ln2 = torch.nn.LayerNorm(D)
        self.up = torch.nn.Linear(D, F)
        self.down = torch.nn.Linear(F, D)  # reads the GELU output: 16-bit-input linear
        self.g = torch.nn.Linear(D, D)
        self.r = torch.nn.Linear(D, D)
        self.kb = torch.nn.Linear(D, DH)
        self.w_kn = torch.nn.Parameter(torch.randn(D, 32) * 0.2)  # x @ W: a "kn" linear
        self.b_kn = torch.nn.Parameter(torch.randn(32) * 0.1)
        self.w_mm = torch.nn.Parameter(torch.randn(D, 32) * 0.2)  # mm without bias: "kn" linear
        with torch.random.fork_rng():  # the parameters above keep their values
            torch.manual_seed(7)
            # W @ x, W a parameter of small values: a matmul whose left operand has its own scale
            self.w_left = torch.nn.Parameter(torch.randn(L, L) * 0.02)
            self.kw = torch.nn.Linear(D, D)  # makes the weight of a linear from the input
            self.b_dyn = torch.nn.Parameter(torch.randn(L) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        q = self.q(h).view(1, L, H, DH).transpose(1, 2)
        k = self.k(h).view(1, L, H, DH).transpose(1, 2)
        v = self.v(h).view(1, L, H, DH).transpose(1, 2)
        att = torch.softmax((q @ k.transpose(-1, -2)) * 3.0, dim=-1)
        a = (att @ v).transpose(1, 2).reshape(1, L, D)
        x = x + self.o(a)
        h2 = self.ln2(x)
        x = x + self.down(torch.nn.functional.gelu(self.up(h2)))
        y = torch.nn.functional.gelu(self.g(h2))
        z = torch.relu(self.r(h2))
        kb = self.kb(h2)[0].transpose(0, 1)  # [DH, L], computed: broadcast batched matmul
        s = q @ kb  # [1, H, L, DH] @ [DH, L]
        t = (torch.addmm(self.b_kn, h2[0], self.w_kn) + h2[0] @ self.w_mm) @ self.w_kn.t()
        t = t + self.w_left @ h2[0]
        # a linear whose [16, 64] weight is computed: y = h2 @ W^T + b (not W, and with b)
        d = torch.nn.functional.linear(h2[0], self.kw(h2)[0], self.b_dyn)
        return torch.cat([x + y * z + t[None], s.sum(1) + d[None]], dim=-1)


def exact_net():
    torch.manual_seed(0)
    m = ExactNet().eval()
    with torch.no_grad():
        for ln in (m.ln1, m.ln2):
            ln.weight.copy_(torch.linspace(-1.5, 2.0, D)[torch.randperm(D)])
            ln.bias.copy_(torch.randn(D) * 0.5)
        # GELU/ReLU input ranges dominated by negative values: in scale != out scale
        m.g.bias.sub_(1.0)
        m.r.bias.sub_(1.0)
    x = torch.randn(1, L, D, generator=torch.Generator().manual_seed(1))
    x[0, 0] = 0.7 + 0.02 * torch.randn(D, generator=torch.Generator().manual_seed(2))
    return m, (x,)


class OddAxes(torch.nn.Module):
    """Softmax over a dimension that is not the last, layer norm over the last two dimensions."""

    def __init__(self) -> None:
        super().__init__()
        self.ln = torch.nn.LayerNorm((8, 16), eps=1e-3)
        self.lin = torch.nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.lin(self.ln(x)) * 2.0, dim=1)


def odd_axes():
    torch.manual_seed(0)
    m = OddAxes().eval()
    with torch.no_grad():
        m.ln.weight.copy_(torch.linspace(-1.5, 2.0, 128).reshape(8, 16))
        m.ln.bias.copy_(torch.randn(8, 16) * 0.5)
    return m, (torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(1)),)
