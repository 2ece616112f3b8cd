"""Mixture-of-experts blocks written as eager PyTorch (test_moe.py): top-k routing by a linear
router, experts as stacked parameters ``[E, N, K]`` that ``forward`` indexes in a Python loop
(``self.w1[e]``), as hand-written MoE code does.

* :func:`dense_loop`: token choice, top-2 of 4 experts; every expert runs on every token and the
  router's top-k weights (0 for the experts a token did not choose) mix the results.
* :func:`expert_choice`: every expert takes its ``C`` highest-scoring tokens (capacity
  ``C = T * k / E``), gathers them, runs on those rows only and adds its weighted result back
  (``index_add``): routed rows with static shapes.
* :func:`token_loop`: token choice that gathers each expert's tokens with ``torch.where``: the
  row count is data dependent, so it has no static shape (torch.export cannot trace it).
* :func:`gathered_bmm`: token choice as transformers' ``batched_mm`` experts compute it: every
  (token, choice) row multiplies its own gathered copy of its expert's weights
  (``w[expert_ids]``, ``bmm``); the up projections with ``[E, N, K]`` weights, the down
  projection with ``[E, K, N]`` weights (both layouts transformers has).
* :func:`mixtral_batched_mm`: the zoo's ``mixtral-tiny`` with transformers' ``batched_mm``
  experts implementation instead of its default grouped matmul.
"""

import torch
import torch.nn.functional as F

T, D, FFN, E, TOP_K = 16, 64, 96, 4, 2


class _Experts(torch.nn.Module):
    """A linear router and ``E`` SwiGLU experts held as stacked parameters."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.router = torch.nn.Linear(D, E, bias=False)
        self.w1 = torch.nn.Parameter(torch.randn(E, FFN, D, generator=g) * D ** -0.5)
        self.w3 = torch.nn.Parameter(torch.randn(E, FFN, D, generator=g) * D ** -0.5)
        self.w2 = torch.nn.Parameter(torch.randn(E, D, FFN, generator=g) * FFN ** -0.5)
        self.b2 = torch.nn.Parameter(torch.randn(E, D, generator=g) * 0.1)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.silu(F.linear(x, self.w1[e])) * F.linear(x, self.w3[e]), self.w2[e],
                        self.b2[e])


class DenseLoop(_Experts):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(-1, D)
        probs = torch.softmax(self.router(h), dim=-1)
        top_w, top_i = torch.topk(probs, TOP_K, dim=-1)
        top_w = top_w / top_w.sum(-1, keepdim=True)
        mix = torch.zeros_like(probs).scatter(1, top_i, top_w)  # [T, E], 0 where not chosen
        out = torch.zeros_like(h)
        for e in range(E):
            out = out + mix[:, e:e + 1] * self.expert(e, h)
        return x + out.reshape(x.shape)


class ExpertChoice(_Experts):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(-1, D)
        probs = torch.softmax(self.router(h), dim=-1)
        cap = h.shape[0] * TOP_K // E
        out = torch.zeros_like(h)
        for e in range(E):
            w, idx = torch.topk(probs[:, e], cap)
            out = out.index_add(0, idx, self.expert(e, h[idx]) * w[:, None])
        return x + out.reshape(x.shape)


class TokenLoop(_Experts):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(-1, D)
        probs = torch.softmax(self.router(h), dim=-1)
        top_w, top_i = torch.topk(probs, TOP_K, dim=-1)
        out = torch.zeros_like(h)
        for e in range(E):
            tok, slot = torch.where(top_i == e)
            out = out.index_add(0, tok, self.expert(e, h[tok]) * top_w[tok, slot, None])
        return x + out.reshape(x.shape)


class GatheredBmm(_Experts):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(-1, D)
        probs = torch.softmax(self.router(h), dim=-1)
        top_w, top_i = torch.topk(probs, TOP_K, dim=-1)
        ids = top_i.reshape(-1)  # (token, choice) rows
        rows = h.repeat_interleave(TOP_K, dim=0)
        g = torch.bmm(self.w1[ids], rows.unsqueeze(-1)).squeeze(-1)  # W [E, N, K]
        u = torch.bmm(self.w3[ids], rows.unsqueeze(-1)).squeeze(-1)
        w2t = self.w2.transpose(1, 2).contiguous()  # [E, K, N]: x @ W[e]
        y = torch.bmm((F.silu(g) * u).unsqueeze(1), w2t[ids]).squeeze(1) + self.b2[ids]
        out = (y * top_w.reshape(-1, 1)).reshape(-1, TOP_K, D).sum(1)
        return x + out.reshape(x.shape)


def _model(cls: type) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    x = torch.randn(1, T, D, generator=torch.Generator().manual_seed(1))
    return cls().eval(), (x,)


def dense_loop():
    return _model(DenseLoop)


def expert_choice():
    return _model(ExpertChoice)


def token_loop():
    return _model(TokenLoop)


def gathered_bmm():
    return _model(GatheredBmm)


def mixtral_batched_mm():
    from compiler.zoo import hf_tiny

    m, x = hf_tiny("mixtral")
    m.m.config._experts_implementation = "batched_mm"  # how transformers picks the experts' code
    return m, x
