"""Golden ReRAM crossbar model: int8 GEMM on bit-sliced cells, bit-serial inputs and column ADCs.

This is the oracle of the in-memory-compute macro (``hw.imc``) and of the compiler's ``imc``
target. It computes ``requant(sat32(x[M,K] @ w[K,N] + bias))`` the way a crossbar does, with
optional device non-idealities; with ideal settings and an ADC that resolves every column sum it
equals :func:`golden.gemm.gemm_int` exactly.

Mapping (what is stored where)
------------------------------
* Weights are stored as unsigned values ``u`` cut into ``S = ceil(8 / cell_bits)`` digits
  ``d_j = (u >> cell_bits*j) & (2**cell_bits - 1)``; digit ``j`` of row ``k`` and column ``n`` is
  one cell of crossbar *slice* ``j``. Two encodings (``CrossbarConfig.differential``):
  *offset binary* (default) stores ``u = w + 128`` (0..255) in one set of ``S`` slices;
  *differential* stores ``u+ = max(w, 0)`` and ``u- = max(-w, 0)`` (0..128) in two sets whose
  column results are subtracted digitally, so that a small weight has zero high digits (off
  cells, which carry far less programming noise). ``A = S`` or ``2S`` *arrays* per tile.
  ``K`` is cut into ``T = ceil(K / rows)`` row tiles of ``rows`` word lines, ``N`` into
  ``ceil(N / cols)`` column tiles of ``cols`` bit lines: a ``K x N`` matrix occupies
  ``T * ceil(N / cols) * A`` crossbars (:func:`crossbar_count`).
* Inputs in offset binary ``xu = x + 128`` are applied bit-serially, ``dac_bits`` per step, most
  significant digit first: ``I = ceil(8 / dac_bits)`` steps per row tile; step ``i`` drives word
  line ``k`` with level ``a = (xu >> dac_bits*(I-1-i)) & (2**dac_bits - 1)``.

Physics (conductances in units of one cell level)
--------------------------------------------------
A cell programmed to digit ``d`` has conductance ``g = d`` in units of ``(G_on - G_off) / L``
(``L = 2**cell_bits - 1``); the off-state current ``G_off * sum(a)`` is assumed cancelled by a
reference column. The bit line of column ``n`` in slice ``j`` and row tile ``t`` carries, for one
step, the current (Kirchhoff; no wire resistance, no sneak paths, linear I-V)::

    c = sum_k a_k * g[k, n] + e_read,      e_read ~ N(0, read_sigma * sqrt(sum_k (a_k g_k)**2))

Non-idealities (:class:`CrossbarNoise`; all off by default; fractions are of the full
conductance range ``L``), drawn from one seeded ``torch.Generator``:

* programming noise: ``g = d + N(0, prog_sigma * L)`` once, when the crossbar is programmed,
  for an off cell (``d = 0``) ``N(0, off_sigma_ratio * prog_sigma * L)``: aihwkit's fit of Wan et
  al. (Nature 2022) ReRAM data gives 0.35 uS at g = 0 against about 2 uS mid-range (ratio 0.17),
  clipped to ``[0, 1.5 L]``;
* conductance drift (power law, as in PCM models, e.g. aihwkit's ``PCMLikeNoiseModel``):
  ``g(t) = g * (t / drift_t0) ** -nu`` for ``t = drift_t > drift_t0``, ``nu ~ N(drift_nu,
  drift_nu_sigma)`` per cell, clipped at 0; with ``drift_compensation`` the ADC reference is
  scaled by the mean decay ``(t / t0) ** -drift_nu`` (a global drift compensation);
* stuck-at faults: each cell independently stuck at ``L`` (stuck-on, low resistance) with
  probability ``stuck_on`` or at 0 (stuck-off) with probability ``stuck_off``; stuck cells
  neither carry programming noise nor drift;
* read noise: a fresh Gaussian per cell and step, ``read_sigma`` times the cell's conductance
  (1/f noise scales with it; for an on cell it is that fraction of ``g_max``), summed on the
  bit line (``e_read``);
* ADC offset: a static per-column offset ``N(0, adc_offset_sigma)`` in ADC LSBs.

ADC and digital recombination
-----------------------------
Every bit line has an ``adc_bits``-bit ADC whose LSB is ``2**adc_shift`` levels, with
``adc_shift`` the smallest shift for which ``adc_range`` (default: the full scale
``rows * (2**dac_bits - 1) * L``) fits ``(2**adc_bits - 1) * 2**adc_shift``
(:meth:`CrossbarConfig.adc_shift`)::

    code = clamp(floor(c / 2**adc_shift + 0.5 + offset), 0, 2**adc_bits - 1)

(round half up; saturating). For integer ``c`` and no offset this is ``(c + 2**(s-1)) >> s``,
``c`` itself when ``s = 0``. The digital periphery recombines (:func:`crossbar_recombine`)::

    acc = sum_{t,i,a} sign_a * code[t,i,a] << (adc_shift + dac_bits*(I-1-i) + cell_bits*j(a))
    dot = acc - 128 * sum_k xu_k - 128 * sum_k wu_k + K * 128**2   # offset binary: correction
    dot = acc - 128 * sum_k w_k                                     # differential: correction
    y   = sat32(dot + bias);   out = requantize(y, mult, shift) or y

(``sign_a`` is -1 for the arrays of ``u-``.) The weight sums are taken from the intended weights
(per-column constants, ``wsum``), ``sum_k xu_k`` from the
digital input. Exactness: with no noise and ``full_scale < 2**adc_bits`` (``adc_shift = 0``, no
clipping) every code equals its column sum and ``out == gemm_int(x, w, bias, mult, shift)``.

Float twin and error bound: the twin is :func:`golden.gemm.gemm_float`. Without noise and with
no code clipped, each code is within ``2**(adc_shift-1)`` levels of its column sum, so
``|dot - x @ w| <= T * P * 2**(adc_shift-1) * sum_{i,j} 2**(dac_bits*i + cell_bits*j)``
(``P`` = 2 differential, else 1)
(:func:`ideal_error_bound`); 0 when ``adc_shift = 0``.

Speed: everything is batched torch (one ``bmm`` over the row tiles, float32 where it is exact);
no Python loop runs over rows, columns, steps or slices.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from golden.errors import UserValueError
from golden.gemm import check_int8, gemm_int
from golden.requant import INT32_MAX, INT32_MIN, requantize, saturate

__all__ = ["CrossbarConfig", "CrossbarNoise", "Programmed", "crossbar_count", "program",
           "input_digits", "crossbar_codes", "crossbar_recombine", "crossbar_linear",
           "ideal_error_bound", "REALISTIC_NOISE"]


def _pos(name: str, v: object, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise UserValueError(f"{name} must be a positive integer, not {v!r}")
    if v > hi:
        raise UserValueError(f"{name} must be at most {hi}, not {v}")
    return v


@dataclasses.dataclass(frozen=True)
class CrossbarConfig:
    """Crossbar geometry and converters (see the module docstring).

    ``rows``/``cols``: word and bit lines of one crossbar; ``cell_bits``: bits per cell;
    ``dac_bits``: input bits per step; ``adc_bits``: ADC resolution; ``adc_range``: the largest
    column sum the ADC converts without clipping (None: the full scale); ``spare_cols``: spare
    bit lines per crossbar for fault remapping (:func:`program`); ``differential``: the weight
    encoding (module docstring).
    """

    rows: int = 128
    cols: int = 128
    cell_bits: int = 2
    dac_bits: int = 1
    adc_bits: int = 9
    adc_range: int | None = None
    spare_cols: int = 0
    differential: bool = False

    def __post_init__(self) -> None:
        _pos("rows", self.rows, 4096)
        _pos("cols", self.cols, 4096)
        _pos("cell_bits", self.cell_bits, 8)
        _pos("dac_bits", self.dac_bits, 8)
        _pos("adc_bits", self.adc_bits, 16)
        if self.adc_range is not None:
            _pos("adc_range", self.adc_range, 2**40)
        if not isinstance(self.spare_cols, int) or isinstance(self.spare_cols, bool) \
                or not 0 <= self.spare_cols <= self.cols:
            raise UserValueError(f"spare_cols must be an integer in [0, cols={self.cols}], "
                                 f"not {self.spare_cols!r}")

    @property
    def slices(self) -> int:
        """Cells per weight, ``S = ceil(8 / cell_bits)``."""
        return math.ceil(8 / self.cell_bits)

    @property
    def arrays(self) -> int:
        """Crossbars per weight tile: ``S``, or ``2S`` for the differential encoding."""
        return self.slices * (2 if self.differential else 1)

    @property
    def steps(self) -> int:
        """Input steps per row tile, ``I = ceil(8 / dac_bits)``."""
        return math.ceil(8 / self.dac_bits)

    @property
    def levels(self) -> int:
        """Top cell level ``L = 2**cell_bits - 1``."""
        return 2**self.cell_bits - 1

    @property
    def full_scale(self) -> int:
        """Largest ideal column sum: ``rows * (2**dac_bits - 1) * L``."""
        return self.rows * (2**self.dac_bits - 1) * self.levels

    @property
    def adc_shift(self) -> int:
        """log2 of the ADC LSB in levels: the smallest ``s`` with
        ``adc_range <= (2**adc_bits - 1) * 2**s``."""
        rng = self.full_scale if self.adc_range is None else self.adc_range
        top = 2**self.adc_bits - 1
        s = 0
        while top << s < rng:
            s += 1
        return s

    @property
    def lossless(self) -> bool:
        """True when every ideal column sum converts exactly (shift 0, no clipping)."""
        return self.adc_shift == 0 and self.full_scale <= 2**self.adc_bits - 1


@dataclasses.dataclass(frozen=True)
class CrossbarNoise:
    """Device non-idealities (module docstring); the defaults are an ideal device."""

    prog_sigma: float = 0.0
    read_sigma: float = 0.0
    drift_t: float = 0.0
    drift_t0: float = 1.0
    drift_nu: float = 0.0
    drift_nu_sigma: float = 0.0
    drift_compensation: bool = True
    stuck_on: float = 0.0
    stuck_off: float = 0.0
    adc_offset_sigma: float = 0.0
    off_sigma_ratio: float = 0.17

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "drift_compensation":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0:
                raise UserValueError(f"{f.name} must be a finite number >= 0, not {v!r}")
        if self.drift_t0 <= 0:
            raise UserValueError(f"drift_t0 must be > 0, not {self.drift_t0!r}")
        if self.stuck_on + self.stuck_off > 1:
            raise UserValueError("stuck_on + stuck_off must be at most 1")

    @property
    def ideal(self) -> bool:
        """True when no non-ideality is on."""
        return (self.prog_sigma == 0 and self.read_sigma == 0 and self.stuck_on == 0
                and self.stuck_off == 0 and self.adc_offset_sigma == 0
                and (self.drift_t <= self.drift_t0 or (self.drift_nu == 0 and self.drift_nu_sigma == 0)))

    def with_(self, **kw: Any) -> CrossbarNoise:
        """A copy with some fields replaced."""
        return dataclasses.replace(self, **kw)


#: "realistic" ReRAM settings used by the benchmarks: programming noise 2% of the conductance
#: range after program-and-verify (aihwkit's ReRamWan2022NoiseModel, a fit to Wan et al., Nature
#: 2022, gives 2.8% at g_max and about 5% mid-range for one-shot analog programming), read noise
#: 1% (the figure aihwkit's ReRAM models suggest for short-term read noise), a 0.1 LSB ADC offset
#: spread (what is left after a per-column offset calibration; an uncalibrated 0.5 LSB spread moves
#: a third of the codes and ruins every result), no faults, read right after programming
REALISTIC_NOISE = CrossbarNoise(prog_sigma=0.02, read_sigma=0.01, adc_offset_sigma=0.1)


def crossbar_count(k: int, n: int, cfg: CrossbarConfig) -> int:
    """Crossbars a ``K x N`` weight matrix occupies: ``ceil(K/rows) * ceil(N/cols) * A``."""
    return math.ceil(k / cfg.rows) * math.ceil(n / cfg.cols) * cfg.arrays


@dataclasses.dataclass
class Programmed:
    """A weight matrix as programmed into crossbars.

    ``g``: effective conductances ``[T, rows, A, N]`` (float; None for an ideal device, whose
    conductances are the digits), ``digits``: the intended digits ``[T, rows, A, N]`` (uint8),
    ``wq``: the intended int8 weights ``[K, N]`` (int64),
    ``wsum``: ``sum_k wu[k, n]`` (offset binary) or ``sum_k w[k, n]`` (differential; int64
    ``[N]``), ``adc_offset``: ``[T, A, N]`` LSB or None,
    ``k``: the real rows, ``remapped``: columns moved onto spares, ``faulty_cells``: stuck cells
    left in the used columns.
    """

    cfg: CrossbarConfig
    noise: CrossbarNoise
    k: int
    n: int
    digits: torch.Tensor
    wq: torch.Tensor
    wsum: torch.Tensor
    g: torch.Tensor | None
    adc_offset: torch.Tensor | None
    remapped: int = 0
    faulty_cells: int = 0


def _digits(wq: torch.Tensor, cfg: CrossbarConfig) -> tuple[torch.Tensor, int]:
    k, n = wq.shape
    t = math.ceil(k / cfg.rows)
    parts = [wq + 128] if not cfg.differential else [wq.clamp(min=0), (-wq).clamp(min=0)]
    sh = torch.arange(cfg.slices, dtype=torch.int64) * cfg.cell_bits
    out = []
    for u in parts:
        up = torch.zeros(t * cfg.rows, n, dtype=torch.int64)
        up[:k] = u  # rows beyond K hold digit 0 (their inputs are 0 too)
        out.append((up[:, None, :] >> sh[None, :, None]) & cfg.levels)  # [Kp, S, N]
    d = torch.cat(out, 1)
    return d.reshape(t, cfg.rows, cfg.arrays, n).to(torch.uint8), t


def _signs(cfg: CrossbarConfig) -> torch.Tensor:
    """+1 per array, -1 for the arrays of ``u-`` (differential)."""
    s = torch.ones(cfg.arrays, dtype=torch.int64)
    if cfg.differential:
        s[cfg.slices:] = -1
    return s


def _stuck(shape: tuple[int, ...], noise: CrossbarNoise, gen: torch.Generator) -> torch.Tensor:
    """Per cell: 0 healthy, 1 stuck-on, 2 stuck-off."""
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    st = torch.zeros(shape, dtype=torch.uint8)
    st[u < noise.stuck_on] = 1
    st[(u >= noise.stuck_on) & (u < noise.stuck_on + noise.stuck_off)] = 2
    return st


def program(wq: torch.Tensor, cfg: CrossbarConfig = CrossbarConfig(),
            noise: CrossbarNoise = CrossbarNoise(), seed: int = 0) -> Programmed:
    """Program int8 weights ``wq[K, N]`` into crossbars (draws the static non-idealities).

    With ``cfg.spare_cols > 0`` a post-programming test is assumed to read the stuck cells of
    every crossbar; in each crossbar the ``spare_cols`` columns with the largest stuck error
    ``sum_k |g_stuck - d|`` are moved onto spare bit lines (which may hold stuck cells of their
    own, drawn from the same rates) when that lowers the error.
    """
    wq = check_int8("w", wq)
    if wq.dim() != 2:
        raise UserValueError(f"weights must be [K, N], not {tuple(wq.shape)}")
    k, n = wq.shape
    digits, t = _digits(wq, cfg)
    wsum = wq.sum(0) if cfg.differential else (wq + 128).sum(0)
    if noise.ideal:
        return Programmed(cfg, noise, k, n, digits, wq, wsum, None, None)
    gen = torch.Generator().manual_seed(int(seed) & (2**63 - 1))
    L = float(cfg.levels)
    d = digits.to(torch.float32)
    g = d.clone()
    if noise.prog_sigma:
        sig = torch.where(digits == 0, noise.off_sigma_ratio, 1.0) * (noise.prog_sigma * L)
        g += torch.randn(g.shape, generator=gen) * sig
        g.clamp_(0.0, L * 1.5)  # a conductance is never negative; over-programming is bounded
    if noise.drift_t > noise.drift_t0 and (noise.drift_nu or noise.drift_nu_sigma):
        nu = (noise.drift_nu + noise.drift_nu_sigma * torch.randn(g.shape, generator=gen)).clamp_(min=0)
        ratio = noise.drift_t / noise.drift_t0
        g *= torch.exp(-nu * math.log(ratio))
        if noise.drift_compensation:
            g *= ratio ** noise.drift_nu
    remapped = faulty = 0
    if noise.stuck_on or noise.stuck_off:
        st = _stuck(tuple(g.shape), noise, gen)
        if cfg.spare_cols:
            st, remapped = _remap(st, digits, cfg, noise, gen)
        g = torch.where(st == 1, torch.full_like(g, L), torch.where(st == 2, torch.zeros_like(g), g))
        faulty = int((st != 0).reshape(t * cfg.rows, cfg.arrays, n)[:k].sum())
    off = None
    if noise.adc_offset_sigma:
        off = torch.randn((t, cfg.arrays, n), generator=gen) * noise.adc_offset_sigma
    return Programmed(cfg, noise, k, n, digits, wq, wsum, g, off, remapped, faulty)


def _remap(st: torch.Tensor, digits: torch.Tensor, cfg: CrossbarConfig, noise: CrossbarNoise,
           gen: torch.Generator) -> tuple[torch.Tensor, int]:
    """Move each crossbar's worst columns onto its spare bit lines (see :func:`program`)."""
    t, r, s, n = st.shape
    c, sp = cfg.cols, cfg.spare_cols
    u = math.ceil(n / c)
    L = cfg.levels

    def err(stk: torch.Tensor, dg: torch.Tensor) -> torch.Tensor:  # [t, r, s, u, c'] -> [t, s, u, c']
        e = torch.where(stk == 1, L - dg.to(torch.int64),
                        torch.where(stk == 2, dg.to(torch.int64), torch.zeros_like(dg, dtype=torch.int64)))
        return e.sum(1)

    pad = u * c - n
    stp = torch.nn.functional.pad(st, (0, pad)).reshape(t, r, s, u, c)
    dgp = torch.nn.functional.pad(digits, (0, pad)).reshape(t, r, s, u, c)
    col_err = err(stp, dgp)  # [t, s, u, c]
    spare = _stuck((t, r, s, u, sp), noise, gen)  # the spares' own faults
    worst = col_err.topk(sp, dim=-1).indices  # [t, s, u, sp]
    idx = worst[:, None].expand(t, r, s, u, sp)
    dig_w = dgp.gather(-1, idx)
    spare_err = err(spare, dig_w)  # [t, s, u, sp]: spare k holding column worst[k]
    better = spare_err < col_err.gather(-1, worst)
    new = stp.gather(-1, idx)
    new = torch.where(better[:, None], spare, new)
    stp = stp.scatter(-1, idx, new)
    return stp.reshape(t, r, s, u * c)[..., :n], int(better.sum())


def input_digits(xq: torch.Tensor, cfg: CrossbarConfig) -> torch.Tensor:
    """DAC levels ``[I, M, T*rows]`` of int8 inputs ``xq[M, K]`` (step 0 = most significant;
    rows beyond K are 0)."""
    xq = check_int8("x", xq)
    m, k = xq.shape
    t = math.ceil(k / cfg.rows)
    xu = torch.zeros(m, t * cfg.rows, dtype=torch.int64)
    xu[:, :k] = xq + 128
    sh = (cfg.steps - 1 - torch.arange(cfg.steps, dtype=torch.int64)) * cfg.dac_bits
    return (xu[None] >> sh[:, None, None]) & (2**cfg.dac_bits - 1)


def _float_codes(xq: torch.Tensor, prog: Programmed, seed: int | None) -> torch.Tensor:
    """ADC codes as floats ``[T, I*M, A*N]`` (the layout of the batched product)."""
    cfg = prog.cfg
    m, k = xq.shape
    if k != prog.k:
        raise UserValueError(f"input has K={k}, the programmed weights K={prog.k}")
    t, r, s, n = prog.digits.shape
    a = input_digits(xq, cfg)  # [I, M, T*R]
    nsteps = cfg.steps
    exact32 = cfg.full_scale < 2**24
    dt = torch.float32 if exact32 or prog.g is not None else torch.float64
    xa = a.to(dt).reshape(nsteps * m, t, r).permute(1, 0, 2)  # [T, I*M, R]
    g = prog.digits.to(dt) if prog.g is None else prog.g.to(dt)
    cur = torch.bmm(xa, g.reshape(t, r, s * n))  # [T, I*M, A*N]
    noise = prog.noise
    if noise.read_sigma:
        if seed is None:
            raise UserValueError("read noise needs a seed")
        gen = torch.Generator().manual_seed(int(seed) & (2**63 - 1))
        sd = torch.bmm(xa * xa, (g * g).reshape(t, r, s * n)).mul_(noise.read_sigma ** 2).sqrt_()
        cur.addcmul_(torch.randn(cur.shape, generator=gen, dtype=dt), sd)
    sh = cfg.adc_shift
    top = 2**cfg.adc_bits - 1
    if prog.g is None and prog.adc_offset is None and sh == 0:
        return cur.clamp_(0, top)  # integers already
    cur.mul_(1.0 / 2**sh).add_(0.5)
    if prog.adc_offset is not None:
        cur.add_(prog.adc_offset.to(dt).reshape(t, 1, s * n))
    return cur.floor_().clamp_(0, top)


def crossbar_codes(xq: torch.Tensor, prog: Programmed, seed: int | None = None) -> torch.Tensor:
    """ADC codes ``[T, I, A, M, N]`` (int64) of ``xq[M, K]`` on ``prog``; ``seed`` seeds the
    read noise (needed when ``read_sigma > 0``)."""
    xq = check_int8("x", xq)
    t, _, a, n = prog.digits.shape
    c = _float_codes(xq, prog, seed)
    return c.to(torch.int64).reshape(t, prog.cfg.steps, xq.shape[0], a, n).permute(0, 1, 3, 2, 4)


def _recombine(per: torch.Tensor, xq: torch.Tensor, prog: Programmed, bias: torch.Tensor | None,
               mult: torch.Tensor | None, shift: torch.Tensor | None) -> torch.Tensor:
    """Shared tail: ``per[I, M, A, N]`` (codes summed over the row tiles, float64)."""
    cfg = prog.cfg
    i_w = (cfg.steps - 1 - torch.arange(cfg.steps, dtype=torch.int64)) * cfg.dac_bits
    j_w = (torch.arange(cfg.arrays, dtype=torch.int64) % cfg.slices) * cfg.cell_bits
    wts = torch.exp2((i_w[:, None] + j_w[None, :] + cfg.adc_shift).to(torch.float64))  # [I, A]
    wts = wts * _signs(cfg).to(torch.float64)
    acc = torch.einsum("iman,ia->mn", per, wts).to(torch.int64)  # exact below 2**53
    dot = acc - 128 * prog.wsum[None, :]
    if not cfg.differential:
        dot = dot - 128 * (xq + 128).sum(1, keepdim=True) + prog.k * 128 * 128
    if bias is not None:
        dot = dot + torch.as_tensor(bias).to(torch.int64)
    y = saturate(dot, INT32_MIN, INT32_MAX)
    if (mult is None) != (shift is None):
        raise UserValueError("requantization needs both mult and shift")
    return y if mult is None else requantize(y, mult, shift)


def crossbar_recombine(codes: torch.Tensor, xq: torch.Tensor, prog: Programmed,
                       bias: torch.Tensor | None = None, mult: torch.Tensor | None = None,
                       shift: torch.Tensor | None = None) -> torch.Tensor:
    """The digital periphery: shift-add of ``codes[T, I, A, M, N]``, offset correction, bias,
    int32 saturation and the optional requantizer (module docstring). Int64 ``[M, N]``."""
    xq = check_int8("x", xq)
    per = codes.sum(0).to(torch.float64).permute(0, 2, 1, 3)  # [I, M, A, N]
    return _recombine(per, xq, prog, bias, mult, shift)


def crossbar_linear(xq: torch.Tensor, wq: torch.Tensor | Programmed,
                    bias: torch.Tensor | None = None, mult: torch.Tensor | None = None,
                    shift: torch.Tensor | None = None, *, cfg: CrossbarConfig = CrossbarConfig(),
                    noise: CrossbarNoise = CrossbarNoise(), seed: int = 0,
                    read_seed: int | None = None, fast: bool = True,
                    chunk: int = 64) -> torch.Tensor:
    """``requant(sat32(xq @ wq + bias))`` on crossbars (int8 in; int8 out, or int32 without
    ``mult``/``shift``), int64 ``[M, N]``.

    ``wq`` is int8 weights (programmed here with ``seed``) or a :class:`Programmed` matrix (then
    ``cfg``/``noise``/``seed`` are its own). ``read_seed`` seeds the read noise (default: derived
    from ``seed``). ``fast``: an ideal, lossless configuration returns :func:`gemm_int` directly
    (the same values; tests check it with ``fast=False``). Rows run ``chunk`` at a time.
    """
    prog = wq if isinstance(wq, Programmed) else program(wq, cfg, noise, seed)
    xq = check_int8("x", xq)
    if fast and prog.g is None and prog.adc_offset is None and prog.cfg.lossless \
            and not prog.noise.read_sigma:
        return gemm_int(xq, prog.wq, bias, mult, shift)
    rs = (seed * 1000003 + 17) if read_seed is None else read_seed
    outs = []
    for c0 in range(0, max(xq.shape[0], 1), chunk):
        xc = xq[c0:c0 + chunk]
        c = _float_codes(xc, prog, rs + c0)  # [T, I*M, A*N]; sums of codes exact in float64
        per = c.to(torch.float64).sum(0).reshape(prog.cfg.steps, xc.shape[0], prog.cfg.arrays, prog.n)
        outs.append(_recombine(per, xc, prog, bias, mult, shift))
    return torch.cat(outs) if outs else torch.zeros(0, prog.n, dtype=torch.int64)


def ideal_error_bound(cfg: CrossbarConfig, k: int) -> int:
    """Largest ``|dot - x @ w|`` of a noise-free crossbar whose codes do not clip
    (module docstring): ``T * P * 2**(s-1) * sum_{i,j} 2**(dac_bits*i + cell_bits*j)``, 0 for
    s = 0."""
    s = cfg.adc_shift
    if s == 0:
        return 0
    t = math.ceil(k / cfg.rows)
    tot = sum(2 ** (cfg.dac_bits * i + cfg.cell_bits * j)
              for i in range(cfg.steps) for j in range(cfg.slices))
    return t * (2 if cfg.differential else 1) * 2 ** (s - 1) * tot
