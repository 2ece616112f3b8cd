"""A model calling a custom operator registered with torch.library (not an ATen operator): the
compiler runs it on the host as it is, and names it with its source line when nothing can."""

import torch

if not hasattr(torch.ops.fmforge_test, "twice"):
    torch.library.define("fmforge_test::twice", "(Tensor x) -> Tensor")

    @torch.library.impl("fmforge_test::twice", "CompositeExplicitAutograd")
    def _twice(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @torch.library.register_fake("fmforge_test::twice")
    def _twice_fake(x: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(x)


class TwiceAfterLinear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.fmforge_test.twice(self.lin(x))


def model() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return TwiceAfterLinear(), (torch.randn(4, 16),)
