"""ELSA (Ham, Lee et al., ISCA 2021): sign-random-projection hashes with orthogonal
projections, Hamming-distance angle estimate, norm-scaled threshold learned per layer.

Projection: ``A`` is the first ``k`` rows of a Kronecker product of seeded orthogonal
factors (4x4 factors, and one 2x2 when ``log2 d`` is odd; each factor is a Gaussian matrix
orthogonalised by modified Gram-Schmidt), so the cheap Kronecker hashing of the paper
applies. ``d`` and ``k`` must be powers of two, ``k <= d``. Hash bit i = 1 iff
``(A x)_i >= 0``.

Integer model (``integer=True``, the paper's formats): Q, K 9-bit (1 sign + 5 integer + 3
fraction bits); factor entries 1 sign + 5 fraction bits (``round(a*32)`` saturated to
[-32, 31]), ``A_int`` = the Kronecker product of the integer factors, hash = sign of the
exact int64 ``A_int x``. Angle LUT (k+1 entries): ``round(256*cos(max(0, pi*H/k -
theta_bias)))``, signed with 8 fraction bits. Key norm: 8 bits relative to the largest key
norm of the sequence and head, ``norm8 = isqrt(255**2 * |K_y|^2 // max|K|^2)`` (all exact
integers). Key y is a candidate iff ``norm8_y * LUT[H] > floor(t * 255 * 256)``, i.e. the
paper's "skip iff t*|K_max| >= |K_y| cos(theta)".

Float twin: float A (unquantised), float Q, K, float norms, float cosine.

``theta_bias``: the 80th percentile of ``pi*H/k - theta`` over 4096 seeded pairs of standard
normal vectors (0.127 rad for d = k = 64 in the paper; recomputed for the actual d, k).

Threshold t per layer, learned from ``p`` on calibration data (paper 2.3): per real query,
``P`` = exact attention row over the n real keys; ``j* = argmin_{P_j > p/n} P_j`` (lowest
index on ties), or ``argmax P`` when that set is empty; the sample is
``q.k_{j*} / (|q| * max_j |k_j|)`` on raw (unscaled) dots; ``t`` = the mean over all real
queries of all calibration sequences and heads. ``p = 0`` means exact attention.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, ClassVar

import torch

from golden.errors import UserValueError
from golden.sparse.base import (
    SparseAttentionFilter,
    _default_key_mask,
    check_range,
    ensure_nonempty,
    quantize_fixed,
    register_filter,
    valid_pairs,
)

__all__ = ["ElsaFilter", "elsa_calibrate_layer", "elsa_projection", "elsa_theta_bias", "isqrt_tensor"]

INT_BITS = 5
FRAC_BITS = 3
HASH_FRAC_BITS = 5
LUT_FRAC_BITS = 8
NORM_MAX = 255


def _is_pow2(x: int) -> bool:
    return isinstance(x, int) and x > 0 and (x & (x - 1)) == 0


def _gram_schmidt(a: torch.Tensor) -> torch.Tensor:
    """Modified Gram-Schmidt on the rows of ``a`` (float64)."""
    rows = []
    for i in range(a.shape[0]):
        v = a[i].clone()
        for u in rows:
            v = v - (v @ u) * u
        rows.append(v / v.norm())
    return torch.stack(rows)


@lru_cache(maxsize=16)
def elsa_projection(d: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A_float [k, d], A_int [k, d])``; ``A_int`` has ``5 * n_factors`` fraction bits."""
    g = torch.Generator().manual_seed(seed)
    sizes = [4] * (int(math.log2(d)) // 2) + ([2] if int(math.log2(d)) % 2 else [])
    af = torch.ones(1, 1, dtype=torch.float64)
    ai = torch.ones(1, 1, dtype=torch.int64)
    for s in sizes:
        f = _gram_schmidt(torch.randn(s, s, generator=g, dtype=torch.float64))
        fi = torch.round(f * 2 ** HASH_FRAC_BITS).clamp(-(2 ** HASH_FRAC_BITS), 2 ** HASH_FRAC_BITS - 1)
        af = torch.kron(af, f)
        ai = torch.kron(ai, fi.to(torch.int64))
    return af[:k].contiguous(), ai[:k].contiguous()


@lru_cache(maxsize=16)
def elsa_theta_bias(d: int, k: int, seed: int = 0, samples: int = 4096) -> float:
    """80th-percentile error of the Hamming angle estimator on standard normal pairs."""
    a, _ = elsa_projection(d, k, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(samples, d, generator=g, dtype=torch.float64)
    y = torch.randn(samples, d, generator=g, dtype=torch.float64)
    hx, hy = (x @ a.T) >= 0, (y @ a.T) >= 0
    est = math.pi / k * (hx != hy).sum(-1).double()
    cos = (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))
    err = est - torch.arccos(cos.clamp(-1, 1))
    return float(torch.quantile(err, 0.8))


def isqrt_tensor(n: torch.Tensor) -> torch.Tensor:
    """Exact floor square root of a non-negative int64 tensor (float estimate, then fixed)."""
    r = torch.sqrt(n.double()).floor().to(torch.int64)
    r = torch.where(r * r > n, r - 1, r)
    r = torch.where((r + 1) * (r + 1) <= n, r + 1, r)
    return r


def elsa_calibrate_layer(samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], p: float
                         ) -> float:
    """Mean threshold sample of one layer (module docstring); ``samples``: (q, k, key_mask)."""
    total, count = 0.0, 0
    for q, k, key_mask in samples:
        q, k = q.double(), k.double()
        d = q.shape[-1]
        valid = valid_pairs(key_mask, q.shape[1], q.shape[2])
        dots = q @ k.transpose(-1, -2)
        prob = torch.softmax((dots / math.sqrt(d)).masked_fill(~valid, float("-inf")), -1)
        prob = torch.nan_to_num(prob, nan=0.0)
        n = key_mask.sum(1).double()[:, None, None, None]
        rel = valid & (prob > p / n)
        inf = torch.tensor(float("inf"), dtype=torch.float64)
        j_min = torch.where(rel, prob, inf).argmin(-1, keepdim=True)
        j_max = prob.masked_fill(~valid, -1.0).argmax(-1, keepdim=True)
        j = torch.where(rel.any(-1, keepdim=True), j_min, j_max)
        kn = k.norm(dim=-1).masked_fill(~key_mask[:, None, :], 0.0).amax(-1)[:, :, None, None]
        sample = dots.gather(-1, j) / (q.norm(dim=-1, keepdim=True) * kn).clamp_min(1e-30)
        real_q = key_mask[:, None, :, None].expand_as(sample)
        total += float(sample[real_q].sum())
        count += int(real_q.sum())
    if count == 0:
        raise UserValueError("ELSA calibration data holds no real query")
    return total / count


@register_filter
class ElsaFilter(SparseAttentionFilter):
    """ELSA golden model: ``p`` (>= 0; 0 = exact) sets the learned per-layer threshold;
    ``hash_bits`` (power of two <= d; None = d); ``thresholds`` sets t per layer directly."""

    name = "elsa"
    needs_calibration = True
    sweep: ClassVar[tuple[dict[str, Any], ...]] = (
        {"p": 0.04}, {"p": 0.1}, {"p": 0.25}, {"p": 0.5}, {"p": 1.0}, {"p": 2.0}, {"p": 4.0},
    )
    default: ClassVar[dict[str, Any]] = {"p": 0.04}   # measured: NN >= 95 %

    def __init__(self, *, p: float = 1.0, hash_bits: int | None = None,
                 thresholds: list[float] | None = None, seed: int = 0, integer: bool = True) -> None:
        super().__init__(integer=integer)
        self.p = check_range("p (ELSA relevance factor)", p, 0.0, None)
        if hash_bits is not None and not _is_pow2(hash_bits):
            raise UserValueError(f"hash_bits must be a power of two in [1, d], not {hash_bits!r}")
        self.hash_bits = hash_bits
        self.seed = int(seed)
        self.thresholds = None if thresholds is None else [float(t) for t in thresholds]

    def params(self) -> dict[str, Any]:
        return {"p": self.p}

    def calibrate(self, samples: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]) -> None:
        self.thresholds = [elsa_calibrate_layer(layer, self.p) for layer in samples]

    def _k(self, d: int) -> int:
        if not _is_pow2(d):
            raise UserValueError(f"ELSA needs a power-of-two head dimension, not d={d}")
        k = d if self.hash_bits is None else self.hash_bits
        if k > d:
            raise UserValueError(f"hash_bits must be a power of two in [1, {d}], not {k}")
        return k

    def hashes(self, x: torch.Tensor) -> torch.Tensor:
        """Hash bits bool ``[..., k]`` of vectors ``x`` ``[..., d]`` (integer or float path)."""
        d = x.shape[-1]
        k = self._k(d)
        af, ai = elsa_projection(d, k, self.seed)
        if self.integer:
            return (quantize_fixed(x, INT_BITS, FRAC_BITS) @ ai.T) >= 0
        return (x.double() @ af.T) >= 0

    def mask(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None = None, *,
             layer: int = 0) -> torch.Tensor:
        key_mask = _default_key_mask(k, key_mask)
        valid = valid_pairs(key_mask, q.shape[1], q.shape[2])
        if self.p == 0:
            return valid.clone()
        if self.thresholds is None:
            raise UserValueError("ELSA threshold not calibrated: call calibrate() or pass thresholds=")
        if not 0 <= layer < len(self.thresholds):
            raise UserValueError(f"layer {layer} has no ELSA threshold ({len(self.thresholds)} calibrated)")
        t = self.thresholds[layer]
        d = q.shape[-1]
        kb = self._k(d)
        theta_bias = elsa_theta_bias(d, kb, self.seed)
        ham = (self.hashes(q)[..., :, None, :] != self.hashes(k)[..., None, :, :]).sum(-1)
        hh = torch.arange(kb + 1, dtype=torch.float64)
        cos_lut = torch.cos((math.pi / kb * hh - theta_bias).clamp_min(0))
        km = key_mask[:, None, :]
        if self.integer:
            lut = torch.round(cos_lut * 2 ** LUT_FRAC_BITS).to(torch.int64)
            n2 = (quantize_fixed(k, INT_BITS, FRAC_BITS) ** 2).sum(-1).masked_fill(~km, 0)
            n2max = n2.amax(-1, keepdim=True).clamp_min(1)
            norm8 = isqrt_tensor((NORM_MAX ** 2 * n2) // n2max)             # [B,H,Lk]
            sim = norm8[:, :, None, :] * lut[ham]
            thr = math.floor(t * NORM_MAX * 2 ** LUT_FRAC_BITS)
            cand = sim > thr
        else:
            kn = k.double().norm(dim=-1).masked_fill(~km, 0.0)
            sim = kn[:, :, None, :] * cos_lut[ham]
            cand = sim > t * kn.amax(-1)[:, :, None, None]
        return ensure_nonempty(cand & valid, sim, valid)
