import torch


class Block(torch.nn.Module):
    def __init__(self, d: int = 64) -> None:
        super().__init__()
        self.ln1 = torch.nn.LayerNorm(d)
        self.q = torch.nn.Linear(d, d)
        self.k = torch.nn.Linear(d, d)
        self.v = torch.nn.Linear(d, d)
        self.o = torch.nn.Linear(d, d)
        self.ln2 = torch.nn.LayerNorm(d)

    def forward(self, x):
        h = self.ln1(x)
        p = torch.softmax(self.q(h) @ self.k(h).transpose(-1, -2), dim=-1)
        return self.ln2(self.o(p @ self.v(h)))


def block():
    torch.manual_seed(0)
    m = Block().eval()
    with torch.no_grad():
        m.q.weight.mul_(0.5)
    return m, (torch.randn(1, 16, 64),)
