"""Sanger (Lu et al., MICRO 2021): 4-bit quantised Q/K score prediction, probability
threshold -> mask.

Prediction (as in the authors' code, ``normalize_qk = inner_product``): rows of Q and K are
L2-normalised, fake-quantised symmetrically to ``bits`` bits with
``q = clamp(round(x * (2**(b-1)-1) / clip), +-(2**(b-1)-1))`` (round half to even), and
``s_hat = (q_q . k_q) / scale_q / scale_k * |q| * |k| / sqrt(d)``; ``P_hat`` = softmax of
``s_hat`` over real keys; key j is a candidate iff ``P_hat_j > threshold``. The clip values
(``clip``, an EMA of max|x| in the authors' training) are the maxima of ``|x|/|x|_row`` over
the calibration data per layer, for Q and K separately; without calibration the maximum of
the current sequence and head is used.

Integer model (``integer=True``): the 4-bit codes and their dot product ``D`` are int64;
row norms are unsigned fixed point with 8 fraction bits (``round(|x| * 256)``); the base-2
logit with 8 fraction bits is ``z = floor(D * nq * nk * c / 2**(cf + 8))`` with
``c = round(log2(e) * 2**cf / (scale_q * scale_k * sqrt(d)))``, ``cf = 16 + 2 * max(0, bits -
4)`` (more fraction bits for wider codes, whose larger scales would round ``c`` to a few
levels), the shift being ``cf + 8``; ``e_j = 2**-(max z - z_j)``
from ``exp2_neg_fixed`` (64-entry LUT, 15 fraction bits); key j is a candidate iff
``e_j * 2**16 > round(threshold * 2**16) * sum_j e_j`` (no division). ``threshold = 0``
keeps every real key.

The float twin computes ``P_hat`` in float64 from the same fake-quantised codes.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from golden.errors import UserValueError
from golden.sparse.base import (
    SparseAttentionFilter,
    _default_key_mask,
    check_range,
    ensure_nonempty,
    exp2_neg_fixed,
    register_filter,
    valid_pairs,
)

__all__ = ["SangerFilter", "sanger_quantize"]

ALLOWED_BITS = (2, 4, 6, 8)
NORM_FRAC_BITS = 8
LOGIT_FRAC_BITS = 8
THRESH_FRAC_BITS = 16


def sanger_quantize(x: torch.Tensor, bits: int, clip: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric ``bits``-bit codes (int64) of ``x`` with clip value ``clip``, and the scale."""
    top = 2 ** (bits - 1) - 1
    scale = top / torch.as_tensor(clip, dtype=torch.float64).clamp_min(1e-30)
    return torch.round(x.double() * scale).clamp(-top, top).to(torch.int64), scale


@register_filter
class SangerFilter(SparseAttentionFilter):
    """Sanger golden model: ``threshold`` in [0, 1) on the predicted probability (0 = keep
    all); ``bits`` of the prediction in {2, 4, 6, 8}; ``layer_thresholds`` (one per layer,
    each in [0, 1)) overrides ``threshold`` per layer. Per-layer thresholds are our
    extension (the authors' configs use one threshold for the whole model); they are meant
    to be chosen on calibration data (``benchmarks/sparse_attention_accuracy.py``)."""

    name = "sanger"
    needs_calibration = True
    sweep: ClassVar[tuple[dict[str, Any], ...]] = (
        {"threshold": 0.002}, {"threshold": 0.005}, {"threshold": 0.01},
        {"threshold": 0.02}, {"threshold": 0.03}, {"threshold": 0.0325}, {"threshold": 0.04},
        {"threshold": 0.08},
    )
    default: ClassVar[dict[str, Any]] = {"threshold": 0.01}

    def __init__(self, *, threshold: float = 0.002, bits: int = 4,
                 layer_thresholds: list[float] | tuple[float, ...] | None = None,
                 integer: bool = True) -> None:
        super().__init__(integer=integer)
        self.threshold = check_range("threshold (Sanger probability threshold)", threshold, 0.0, 1.0,
                                     hi_open=True)
        if bits not in ALLOWED_BITS:
            raise UserValueError(f"bits must be one of {ALLOWED_BITS}, not {bits!r}")
        self.bits = bits
        self.layer_thresholds = None if layer_thresholds is None else tuple(
            check_range(f"layer_thresholds[{i}] (Sanger probability threshold)", t, 0.0, 1.0, hi_open=True)
            for i, t in enumerate(layer_thresholds))
        if self.layer_thresholds is not None and not self.layer_thresholds:
            raise UserValueError("layer_thresholds must hold one threshold per layer, not an empty list")
        self.clips: list[tuple[float, float]] | None = None

    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = {"threshold": self.threshold}
        if self.bits != 4:
            p["bits"] = self.bits
        if self.layer_thresholds is not None:
            p = {"layers": "/".join(f"{t:g}" for t in self.layer_thresholds), **p}
            del p["threshold"]
        return p

    def threshold_at(self, layer: int) -> float:
        """The probability threshold used at ``layer``."""
        if self.layer_thresholds is None:
            return self.threshold
        if not 0 <= layer < len(self.layer_thresholds):
            raise UserValueError(f"layer {layer} has no Sanger threshold ({len(self.layer_thresholds)} given)")
        return self.layer_thresholds[layer]

    def calibrate(self, samples: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]) -> None:
        clips = []
        for layer in samples:
            cq = ck = 0.0
            for q, k, key_mask in layer:
                m = key_mask[:, None, :, None]
                cq = max(cq, float((q.double() / q.double().norm(dim=-1, keepdim=True).clamp_min(1e-30))
                                   .abs().masked_fill(~m, 0).amax()))
                ck = max(ck, float((k.double() / k.double().norm(dim=-1, keepdim=True).clamp_min(1e-30))
                                   .abs().masked_fill(~m, 0).amax()))
            clips.append((cq, ck))
        self.clips = clips

    def _clip(self, xn: torch.Tensor, key_mask: torch.Tensor, layer: int, which: int) -> torch.Tensor:
        if self.clips is not None:
            if not 0 <= layer < len(self.clips):
                raise UserValueError(f"layer {layer} has no Sanger calibration ({len(self.clips)} layers)")
            return torch.tensor(self.clips[layer][which], dtype=torch.float64)
        return xn.abs().masked_fill(~key_mask[:, None, :, None], 0).amax((-1, -2), keepdim=True)

    def predicted_logits(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor, layer: int
                         ) -> torch.Tensor:
        """Predicted scores: int64 base-2 logits (8 fraction bits) or float64 natural logits."""
        d = q.shape[-1]
        qd, kd = q.double(), k.double()
        nq, nk = qd.norm(dim=-1, keepdim=True), kd.norm(dim=-1, keepdim=True)
        qn, kn = qd / nq.clamp_min(1e-30), kd / nk.clamp_min(1e-30)
        qc, sq = sanger_quantize(qn, self.bits, self._clip(qn, key_mask, layer, 0))
        kc, sk = sanger_quantize(kn, self.bits, self._clip(kn, key_mask, layer, 1))
        if not self.integer:
            dots = qc.double() @ kc.double().transpose(-1, -2)
            return dots / (sq * sk) * nq * nk.transpose(-1, -2) / math.sqrt(d)
        dot = qc @ kc.transpose(-1, -2)
        nq8 = torch.round(nq * 2 ** NORM_FRAC_BITS).to(torch.int64)
        nk8 = torch.round(nk * 2 ** NORM_FRAC_BITS).to(torch.int64).transpose(-1, -2)
        sc = sq * sk
        cf = 16 + 2 * max(0, self.bits - 4)      # c keeps ~7 significant bits for every width
        c = torch.round(math.log2(math.e) * 2 ** cf / (sc * math.sqrt(d))).to(torch.int64)
        shift = 2 * NORM_FRAC_BITS + cf - LOGIT_FRAC_BITS
        return (dot * nq8 * nk8 * c) >> shift

    def mask(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None = None, *,
             layer: int = 0) -> torch.Tensor:
        key_mask = _default_key_mask(k, key_mask)
        valid = valid_pairs(key_mask, q.shape[1], q.shape[2])
        thr = self.threshold_at(layer)
        if thr == 0:
            return valid.clone()
        z = self.predicted_logits(q, k, key_mask, layer)
        if self.integer:
            zm = z.masked_fill(~valid, -(2 ** 62))
            x = zm.amax(-1, keepdim=True) - zm
            e = exp2_neg_fixed(x, LOGIT_FRAC_BITS).masked_fill(~valid, 0)
            tq = round(thr * 2 ** THRESH_FRAC_BITS)
            cand = (e << THRESH_FRAC_BITS) > tq * e.sum(-1, keepdim=True)
        else:
            p = torch.softmax(z.masked_fill(~valid, float("-inf")), -1)
            cand = torch.nan_to_num(p, nan=0.0) > thr
        return ensure_nonempty(cand & valid, z, valid)
