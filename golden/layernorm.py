"""Golden integer layer norm (``hw.layernorm``): int8/int32 row -> int8 row, per-channel gamma/beta.

Number formats
--------------
* input ``x``: integer values (int8, or int32 holding at most ``in_bits`` significant bits),
  real value ``x * in_scale``; normalization over the last dimension, length
  ``1 <= N <= 4096`` (:data:`MAX_N`).
* output: int8 (int64 in [-128, 127]), real value ``out * out_scale``.
* per channel: ``gamma`` and ``beta`` (real) become a 16-bit signed multiplier ``G[i]`` with a
  common shift and a 48-bit signed bias ``B[i]``.

The float twin is :func:`layernorm_float`: ``(x - mean) / sqrt(var + eps) * gamma + beta`` in
float64 with the biased variance (``torch.nn.functional.layer_norm``).

Compile time: :func:`layernorm_params`
--------------------------------------
::

    in_shift = max(0, in_bits - 16)                   # core works on 16-bit values
    S        = in_scale * 2**in_shift                 # scale of the core input
    eps_int  = min(floor(N*N * eps * 2**8 / S**2 + 0.5), 2**61)   # 4 fraction bits of sqrt
    g_shift  = the largest integer with max_i |gamma_i / out_scale| * 2**g_shift <= 2**15 - 1
    G[i]     = floor(gamma_i / out_scale * 2**g_shift + 0.5)        # |G| <= 2**15 - 1
    B[i]     = floor(beta_i / out_scale * 2**(14 + g_shift) + 0.5)  # |B| < 2**47
    out_shift = 14 + g_shift                                         # <= 62

Layer norm does not depend on the input scale except through ``eps``.

Run time: :func:`layernorm_int`, per row of ``N`` values
--------------------------------------------------------
Pass 1 (statistics; one pass, two accumulators)::

    q  = sat16(round_half_up(x / 2**in_shift))        # identity for int8 input (in_shift = 0)
    S1 = sum q                                         # |S1| <= 2**27         (28-bit signed)
    S2 = sum q*q                                       # S2 <= 2**42           (43-bit unsigned)

Once per row (exact: ``V = N*N * variance``)::

    V  = N*S2 - S1*S1                                 # 0 <= V <= 2**54
    D  = (V << 8) + eps_int                           # 256*N*N*(var + eps)/S**2; D < 2**63
    z  = bit_length(D)                                # leading-one detect, 0..63
    k  = (40 - z) >> 1                                # arithmetic: k in [-12, 19] (20 if D = 0)
    D' = D << 2k  if k >= 0 else  D >> -2k            # D' in [2**38, 2**40) (or 0)
    s  = isqrt_floor(D')                              # 20 steps; s in [2**19, 2**20)
    r  = floor(2**40 / s)                             # restoring division; r in (2**20, 2**21]

so that ``1 / sqrt(D) ~= r * 2**(k - 40)``. The 8-bit left shift of ``V`` gives ``eps`` 8 fraction
bits (4 of the square root) so that a small ``eps`` is not rounded away on short rows. Pass 2, per
element::

    c   = N*q - S1                                    # N*(q - mean), exact; |c| <= 2**28
    y   = round_half_up(c * r / 2**(22 - k))          # (q-mean)/sqrt(var+eps) * 2**14;
                                                      # shift in [3, 34]; |c*r| < 2**50
    acc = y * G[i] + B[i]                             # |y| <= sqrt(N-1) * 2**14 + 1 < 2**20
    out = sat8(round_half_up(acc / 2**out_shift))

All rounding is half up (``golden.requant.round_shift_right``); ``sat`` clamps. A row whose
values are all equal has ``V = 0`` and ``c = 0`` everywhere, so its output is
``sat8(round_half_up(B / 2**out_shift))`` (the quantized beta) whatever ``r`` is; with
``eps_int = 0`` its ``D`` is 0 and the divider's defined result for a zero divisor
(``golden.intmath.div_floor``) is used without harm. ``N = 1`` is such a row.

Overflow bounds (``N <= 4096``, core input 16-bit): ``|S1| <= 2**27``, ``S2 <= 2**42``,
``N*S2 <= 2**54``, ``D < 2**63``, ``|c * r| <= 2**28 * 2**21 = 2**49``, ``|y*G| < 2**35``, ``|acc| < 2**48``:
all fit 64-bit (int64) and the stated widths. For int8 input the statistics are far smaller
(``|S1| <= 2**19``, ``S2 <= 2**26``, ``V <= 2**38``, ``D < 2**46 + eps_int``).

Error bound: the normalized value ``y`` carries a relative error below ``2**-18`` (``s`` and
``r`` are 20-bit exact floors) plus ``2**-15`` absolute, and ``G`` is exact to
``2**-(g_shift+1)``; after the final half-up rounding the output is within 1 LSB of the float
twin's output quantized with the same scale (``clamp(floor(y_float / out_scale + 0.5))``), and
within ``0.51`` LSB of the unrounded float output for 16-bit-or-narrower input. With ``in_shift > 0``
(int32 input wider than 16 bits) the core's rounding of the input to 16 bits adds a little
(measured: at most 0.56 LSB from the unrounded float output on MiniLM with 24-bit input), still
within 1 LSB of the rounded float output. Measured by ``tests/golden/test_layernorm.py`` on random rows and
by ``benchmarks/nonlinear_accuracy.py`` on MiniLM (mean below 0.01 LSB).

References: the structure (mean, variance, integer square root, reciprocal, scale and shift)
follows I-BERT's integer LayerNorm (Kim et al., ICML 2021); the exact ``N*S2 - S1**2`` variance,
the normalized 20-bit bit-by-bit square root and the single reciprocal are this design's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from golden.errors import UserValueError
from golden.intmath import bit_length, isqrt_floor, reciprocal_floor
from golden.requant import INT8_MAX, INT8_MIN, INT32_MAX, INT32_MIN, round_shift_right, saturate

__all__ = [
    "MAX_N",
    "CORE_BITS",
    "SQRT_BITS",
    "Y_FRAC",
    "GAMMA_BITS",
    "BIAS_BITS",
    "EPS_FRAC_BITS",
    "LayerNormParams",
    "layernorm_params",
    "layernorm_acc",
    "layernorm_int",
    "layernorm_float",
]

MAX_N = 4096
"""Longest supported row."""
CORE_BITS = 16
"""Signed width of the values the statistics see (after ``in_shift``)."""
SQRT_BITS = 20
"""``s = isqrt(D')`` has this many bits; ``D'`` has ``2 * SQRT_BITS``."""
RECIP_K = 2 * SQRT_BITS
"""``r = floor(2**RECIP_K / s)``."""
Y_FRAC = 14
"""Fraction bits of the normalized value ``y``."""
GAMMA_BITS = 16
"""Signed width of ``G``."""
BIAS_BITS = 48
"""Signed width of ``B`` (and of the accumulator ``acc``)."""
EPS_FRAC_BITS = 8
"""``D = (V << EPS_FRAC_BITS) + eps_int``: fraction bits of ``eps_int``."""
EPS_MAX = 2**61


@dataclass(frozen=True, eq=False)
class LayerNormParams:
    """Integer constants of one layer norm (see the module docstring).

    ``n`` (row length), ``in_shift``, ``eps_int``, ``gamma_int`` (``G``, int64 ``[n]``),
    ``beta_int`` (``B``, int64 ``[n]``), ``g_shift`` and ``out_shift = 14 + g_shift``.
    """

    n: int
    in_shift: int
    eps_int: int
    g_shift: int
    gamma_int: torch.Tensor = field(repr=False)
    beta_int: torch.Tensor = field(repr=False)

    @property
    def out_shift(self) -> int:
        """Right shift of the final rounding: ``Y_FRAC + g_shift``."""
        return Y_FRAC + self.g_shift


def _real_vector(name: str, v: torch.Tensor | float, n: int) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=torch.float64)
    if t.dim() == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise UserValueError(f"layernorm {name} must have shape ({n},), not {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise UserValueError(f"layernorm {name} must be finite")
    return t


def _positive(name: str, v: float) -> float:
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
        raise UserValueError(f"layernorm {name} must be a positive finite number, not {v!r}")
    return float(v)


def layernorm_params(
    n: int,
    in_scale: float,
    gamma: torch.Tensor | float,
    beta: torch.Tensor | float,
    out_scale: float,
    eps: float = 1e-5,
    in_bits: int = 8,
) -> LayerNormParams:
    """Compile real layer-norm parameters into :class:`LayerNormParams`.

    ``n`` is the row length; ``gamma`` and ``beta`` are length-``n`` vectors (or scalars);
    ``in_bits`` is how many signed bits the input values occupy (8 for int8; for int32 input the
    calibrated range, at most 32). Raises ``ValueError`` on a bad argument, naming it.
    """
    if not (isinstance(n, int) and 1 <= n <= MAX_N):
        raise UserValueError(f"layernorm row length must be an integer in [1, {MAX_N}], not {n!r}")
    if not (isinstance(in_bits, int) and 2 <= in_bits <= 32):
        raise UserValueError(f"layernorm in_bits must be an integer in [2, 32], not {in_bits!r}")
    in_scale = _positive("in_scale", in_scale)
    out_scale = _positive("out_scale", out_scale)
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise UserValueError(f"layernorm eps must be a non-negative finite number, not {eps!r}")
    g = _real_vector("gamma", gamma, n) / out_scale
    b = _real_vector("beta", beta, n) / out_scale
    in_shift = max(0, in_bits - CORE_BITS)
    s_core = in_scale * 2.0**in_shift
    eps_real = n * n * float(eps) * 2.0**EPS_FRAC_BITS / (s_core * s_core)
    eps_int = EPS_MAX if eps_real >= EPS_MAX else min(math.floor(eps_real + 0.5), EPS_MAX)
    gmax = float(g.abs().max())
    g_limit = 2 ** (GAMMA_BITS - 1) - 1
    if gmax == 0.0:
        g_shift = 62 - Y_FRAC
    else:
        g_shift = math.floor(math.log2(g_limit / gmax))
        while gmax * 2.0**g_shift > g_limit:
            g_shift -= 1
        while gmax * 2.0 ** (g_shift + 1) <= g_limit:
            g_shift += 1
        g_shift = min(g_shift, 62 - Y_FRAC)
    if g_shift < 0:
        raise UserValueError(
            f"layernorm |gamma / out_scale| = {gmax:.6g} does not fit the {GAMMA_BITS}-bit multiplier"
            " (must be below 2**15): use a larger out_scale"
        )
    g_int = torch.floor(g * 2.0**g_shift + 0.5).to(torch.int64)
    b_int = torch.floor(b * 2.0 ** (Y_FRAC + g_shift) + 0.5)
    if float(b_int.abs().max()) >= 2.0 ** (BIAS_BITS - 1):
        raise UserValueError(
            f"layernorm |beta / out_scale| does not fit the {BIAS_BITS}-bit bias at g_shift {g_shift}"
        )
    return LayerNormParams(n, in_shift, eps_int, g_shift, g_int, b_int.to(torch.int64))


def layernorm_acc(x: torch.Tensor, params: LayerNormParams) -> torch.Tensor:
    """The accumulator ``acc = y * G + B`` of :func:`layernorm_int` (int64, before its final
    rounding by ``out_shift``)."""
    x = torch.as_tensor(x)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise UserValueError(f"layernorm input must be an integer tensor, not {x.dtype}")
    x = x.to(torch.int64)
    if x.dim() == 0 or x.shape[-1] != params.n:
        raise UserValueError(
            f"layernorm input rows must have length {params.n}, got shape {tuple(x.shape)}"
        )
    if x.numel() and (int(x.min()) < INT32_MIN or int(x.max()) > INT32_MAX):
        raise UserValueError("layernorm input must hold int8 or int32 values")
    n = params.n
    q = saturate(
        round_shift_right(x, params.in_shift), -(2 ** (CORE_BITS - 1)), 2 ** (CORE_BITS - 1) - 1
    )
    s1 = q.sum(dim=-1, keepdim=True)
    s2 = (q * q).sum(dim=-1, keepdim=True)
    d = ((n * s2 - s1 * s1) << EPS_FRAC_BITS) + params.eps_int
    k = (RECIP_K - bit_length(d)) >> 1
    d_norm = torch.where(k >= 0, d << k.clamp(min=0) * 2, d >> (-k).clamp(min=0) * 2)
    s = isqrt_floor(d_norm, 2 * SQRT_BITS)
    r = reciprocal_floor(s, RECIP_K)
    c = n * q - s1
    y = round_shift_right(c * r, RECIP_K - Y_FRAC - EPS_FRAC_BITS // 2 - k)
    return y * params.gamma_int + params.beta_int


def layernorm_int(x: torch.Tensor, params: LayerNormParams) -> torch.Tensor:
    """Bit-exact integer layer norm over the last dimension; returns int8 values as int64."""
    return saturate(round_shift_right(layernorm_acc(x, params), params.out_shift), INT8_MIN,
                    INT8_MAX)


def layernorm_float(
    x: torch.Tensor,
    gamma: torch.Tensor | float,
    beta: torch.Tensor | float,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Float twin: float64 ``layer_norm`` of the real input ``x`` (e.g. ``x_int * in_scale``)."""
    xf = torch.as_tensor(x, dtype=torch.float64)
    n = xf.shape[-1]
    g = _real_vector("gamma", gamma, n)
    b = _real_vector("beta", beta, n)
    return torch.nn.functional.layer_norm(xf, (n,), g, b, eps)
