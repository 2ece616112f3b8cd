"""Energon (Zhou et al., TCAD 2022): mix-precision multi-round filtering (MP-MRF).

Choices where the paper (not read in full text; see the reference notes) is open:

* Q and K are held as INT16: symmetric, per sequence and head, separately for Q and K,
  ``x16 = clamp(round(x * 32767 / max|x|), -32767, 32767)`` over real tokens (round half
  to even).
* A ``b``-bit operand is the top ``b`` bits of the INT16 value: ``x16 >> (16 - b)``
  (arithmetic shift, i.e. floor; the uniform -1/2 LSB bias shifts every score of a row by
  the same amount, so it cancels against the max/mean threshold to first order).
* Rounds ``((4, 2), (4, 4))``: INT4 Q x INT2 K, then INT4 x INT4, on the survivors of the
  previous round. Scores are exact int64 dot products.
* Per-row threshold over the current survivors, one ``alpha`` for every round:
  ``theta = alpha*max + (1-alpha)*mean`` for ``alpha >= 0`` and
  ``theta = -alpha*min + (1+alpha)*mean`` for ``alpha < 0``; a key survives iff
  ``score >= theta``. ``alpha = -1`` gives ``theta = min``: keep all. In integers, alpha is
  ``a = round(alpha * 256)`` and the test is exact without division:
  ``256*cnt*S >= a*cnt*max + (256-a)*sum`` (``alpha >= 0``), and
  ``256*cnt*S >= -a*cnt*min + (256+a)*sum`` (``alpha < 0``).
* Survivors are attended exactly (the attention itself is computed from the float inputs;
  the INT16 attention unit has its own golden model).

The float twin runs the same rounds on float64 fake-quantised operands
``floor(x * (32767/max|x|) / 2**(16-b))`` (no intermediate INT16 rounding) and the same
thresholds with float ``alpha``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from golden.errors import UserValueError
from golden.sparse.base import (
    SparseAttentionFilter,
    _default_key_mask,
    check_range,
    ensure_nonempty,
    register_filter,
    valid_pairs,
)

__all__ = ["EnergonFilter", "energon_int16", "energon_round_keep"]

HP_BITS = 16
ALPHA_FRAC_BITS = 8


def energon_int16(x: torch.Tensor, token_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """INT16 codes of ``x`` ``[B, H, L, d]`` and the per-(sequence, head) scale ``32767/max|x|``."""
    top = 2 ** (HP_BITS - 1) - 1
    amax = x.double().abs().masked_fill(~token_mask[:, None, :, None], 0).amax((-1, -2), keepdim=True)
    scale = top / amax.clamp_min(1e-30)
    return torch.round(x.double() * scale).clamp(-top, top).to(torch.int64), scale


def energon_round_keep(scores: torch.Tensor, cand: torch.Tensor, alpha: float, integer: bool
                       ) -> torch.Tensor:
    """One filtering round: keep candidates with ``score >= theta(alpha)`` (module docstring)."""
    cnt = cand.sum(-1, keepdim=True)
    if integer:
        big = 2 ** 62
        s = scores
        mx = s.masked_fill(~cand, -big).amax(-1, keepdim=True)
        mn = s.masked_fill(~cand, big).amin(-1, keepdim=True)
        tot = s.masked_fill(~cand, 0).sum(-1, keepdim=True)
        a = round(alpha * 2 ** ALPHA_FRAC_BITS)
        one = 2 ** ALPHA_FRAC_BITS
        lhs = one * cnt * s
        rhs = a * cnt * mx + (one - a) * tot if a >= 0 else -a * cnt * mn + (one + a) * tot
    else:
        s = scores.double()
        mx = s.masked_fill(~cand, float("-inf")).amax(-1, keepdim=True)
        mn = s.masked_fill(~cand, float("inf")).amin(-1, keepdim=True)
        mean = s.masked_fill(~cand, 0).sum(-1, keepdim=True) / cnt.clamp_min(1)
        lhs = s
        rhs = alpha * mx + (1 - alpha) * mean if alpha >= 0 else -alpha * mn + (1 + alpha) * mean
    return cand & (lhs >= rhs)


@register_filter
class EnergonFilter(SparseAttentionFilter):
    """Energon golden model: ``alpha`` in [-1, 1) (-1 = keep all; larger prunes more) and the
    filtering ``rounds`` as (query bits, key bits) pairs, 1..16 bits each."""

    name = "energon"
    sweep: ClassVar[tuple[dict[str, Any], ...]] = (
        {"alpha": -0.9}, {"alpha": -0.75}, {"alpha": -0.5}, {"alpha": -0.4}, {"alpha": -0.25},
        {"alpha": 0.0},
        {"alpha": 0.25}, {"alpha": 0.5},
    )
    default: ClassVar[dict[str, Any]] = {"alpha": -0.9}

    def __init__(self, *, alpha: float = 0.0, rounds: tuple[tuple[int, int], ...] = ((4, 2), (4, 4)),
                 integer: bool = True) -> None:
        super().__init__(integer=integer)
        self.alpha = check_range("alpha (Energon threshold offset)", alpha, -1.0, 1.0, hi_open=True)
        rounds = tuple(tuple(r) for r in rounds)
        if not rounds:
            raise UserValueError("rounds must hold at least one (query bits, key bits) pair")
        for r in rounds:
            if len(r) != 2 or any(not isinstance(b, int) or not 1 <= b <= HP_BITS for b in r):
                raise UserValueError(f"each round must be (query bits, key bits) with bits in [1, 16], not {r!r}")
        self.rounds = rounds

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def round_scores(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor,
                     bq: int, bk: int) -> torch.Tensor:
        """Scores of one round (integer: INT16 MSBs; float twin: floor fake-quantisation)."""
        q16, sq = energon_int16(q, key_mask)
        k16, sk = energon_int16(k, key_mask)
        if self.integer:
            return (q16 >> (HP_BITS - bq)) @ (k16 >> (HP_BITS - bk)).transpose(-1, -2)
        qf = torch.floor(q.double() * sq / 2 ** (HP_BITS - bq))
        kf = torch.floor(k.double() * sk / 2 ** (HP_BITS - bk))
        return qf @ kf.transpose(-1, -2)

    def mask(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None = None, *,
             layer: int = 0) -> torch.Tensor:
        key_mask = _default_key_mask(k, key_mask)
        valid = valid_pairs(key_mask, q.shape[1], q.shape[2])
        if self.alpha == -1.0:
            return valid.clone()
        cand = valid.clone()
        scores = None
        for bq, bk in self.rounds:
            scores = self.round_scores(q, k, key_mask, bq, bk)
            cand = energon_round_keep(scores, cand, self.alpha, self.integer)
        assert scores is not None
        return ensure_nonempty(cand, scores, valid)
