"""Golden ReRAM crossbar model: int8 GEMM on bit-sliced cells, bit-serial inputs and column ADCs.

This is the oracle of the in-memory-compute macro (``hw.imc``) and of the compiler's ``imc``
target. It computes ``requant(sat32(x[M,K] @ w[K,N] + bias))`` the way a crossbar does, with
optional device non-idealities; with ideal settings and an ADC that resolves every column sum it
equals :func:`golden.gemm.gemm_int` exactly, whatever the encodings below.

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
* Inputs, *offset binary* (default): ``xu = x + 128`` is applied bit-serially, ``dac_bits`` per
  step, most significant digit first: ``I = ceil(8 / dac_bits)`` steps per row tile; step ``i``
  drives word line ``k`` with level ``a = (xu >> dac_bits*(I-1-i)) & (2**dac_bits - 1)``.
* Inputs, *sign-magnitude in two phases* (``signed_inputs``, needs the differential encoding):
  phase + drives the digits of ``x+ = max(x, 0)``, phase - those of ``x- = max(-x, 0)`` (both
  0..128, so a small ``|x|`` leaves its high steps without current), and in phase - the code
  lanes of every ``u+`` array and its ``u-`` array are swapped (a 2:1 multiplexer per ADC lane in
  the array interface), which multiplies the phase's products by -1. The periphery (``hw.imc``)
  is unchanged: it sees ``T' = 2T`` row tiles (phase-major: tile ``p*T + t``) holding ``[W; -W]``
  and the input words ``[x+ ; x-]`` in offset binary (:func:`macro_inputs`), with a zero weight
  sum register (the column sums of ``[W; -W]`` cancel) and ``k' = T*rows + K``
  (:meth:`CrossbarConfig.macro_k`); the result is ``x+ @ W - x- @ W = x @ W`` exactly.

Why the default offset-binary input fails under noise (measured on MiniLM's linears, whose int8
activations have standard deviations of 1.4 to 10 LSB): the error a code carries is
``sum_k xu_k * (g_k - d_k)`` over the rows its step drives, and ``xu = x + 128`` drives the most
significant step (weight ``2**7``) on every row with ``x >= 0`` and nearly every lower step on a
row with ``x < 0``, whatever ``|x|``; each code's analog error near half an LSB flips its ADC code
by one LSB, which the shift-add multiplies by ``2**(dac_bits*i + cell_bits*j)`` (up to ``2**13``).
The signal ``x @ w`` scales with ``|x|`` (small); the error with 128. With sign-magnitude inputs
the error scales with ``|x|`` too: MiniLM's per-linear relative error under
:data:`REALISTIC_NOISE` drops from 1.3..25 (offset binary in and out) to 0.01..0.04 (two-phase
inputs, differential weights). Cost: two conversions per step instead of one (twice the ADC
energy and time per MVM) and the differential weights' twice the crossbars.

Physics (conductances in units of one cell level)
--------------------------------------------------
A cell programmed to digit ``d`` has conductance ``g = d`` in units of ``(G_on - G_off) / L``
(``L = 2**cell_bits - 1``); the off-state current ``G_off * sum(a)`` is assumed cancelled by a
reference column. The bit line of column ``n`` in slice ``j`` and row tile ``t`` carries, for one
step, the current (Kirchhoff; no wire resistance, no sneak paths, linear I-V)
``c = sum_k a_k * g[k, n]``.

Non-idealities (:class:`CrossbarNoise`; all off by default; fractions are of the full
conductance range ``L``), drawn from one seeded ``torch.Generator``:

* programming noise: ``g = d + N(0, prog_sigma * L)`` once, when the crossbar is programmed,
  for an off cell (``d = 0``) ``N(0, off_sigma_ratio * prog_sigma * L)``: aihwkit's fit of Wan et
  al. (Nature 2022) ReRAM data gives 0.35 uS at g = 0 against about 2 uS mid-range (ratio 0.17),
  clipped to ``[0, 1.5 L]``; the deviation ``g - d`` is held in bfloat16 (a relative rounding of
  2**-9 of a random draw);
* conductance drift (power law, as in PCM models, e.g. aihwkit's ``PCMLikeNoiseModel``):
  ``g(t) = g * (t / drift_t0) ** -nu`` for ``t = drift_t > drift_t0``, ``nu ~ N(drift_nu,
  drift_nu_sigma)`` per cell, clipped at 0; with ``drift_compensation`` the ADC reference is
  scaled by the mean decay ``(t / t0) ** -drift_nu`` (a global drift compensation);
* stuck-at faults: each cell independently stuck at ``L`` (stuck-on, low resistance) with
  probability ``stuck_on`` or at 0 (stuck-off) with probability ``stuck_off``; stuck cells
  neither carry programming noise nor drift;
* read noise: a conductance fluctuation of every on cell (``g >= 0.5`` level),
  ``g * max(0, 1 + read_sigma * z)``, ``z ~ N(0, 1)`` clipped to +-8, drawn afresh for every call
  (one batch of MVMs, the tokens of one input: about 100 us of macro time) and frozen within it,
  as aihwkit's inference tiles redraw their weight read noise once per forward pass (an
  assumption: the cells' random-telegraph and 1/f fluctuations are slow against one call);
  an off cell's 1% of a conductance below 0.05 level is neglected;
* ADC offset: a static per-column offset ``N(0, adc_offset_sigma)`` in ADC LSBs.

Fault mitigation (post-programming test)
----------------------------------------
Real macros verify every write (program-and-verify); a cell that does not move under
SET/RESET pulses is reported stuck, so after programming the host knows the stuck map. Two
remedies, both run by :func:`program`:

* ``fault_aware`` (differential encoding only; the default of the compiler's ``imc`` target):
  a weight ``w`` only needs ``u+ - u- = w``, and a pair of ``S``-digit magnitudes (each up to
  ``2**(cell_bits*S) - 1``, 255 for 2-bit cells) has many such pairs. Each weight whose plain
  digits disagree with a stuck cell of its ``2S`` cells is re-encoded as the pair that keeps
  every stuck cell at its stuck level and minimizes first ``|u+ - u- - w|``, then the programming
  noise variance of the pair (on cells weigh ``16**j``, off cells ``0.17**2 * 16**j``): a
  stuck-on top digit of ``u+`` (``u+ >= 192``) is cancelled by ``u- = u+ - w`` for every
  ``w >= -63``. Cost: one re-write of the re-encoded pairs and a table search on the host per
  distinct stuck pattern; the periphery's weight-sum register holds the sums of the encoded
  values (exact). Weights no pair can represent keep the nearest value (``Programmed.encoded``).
* ``spare_cols`` spare bit lines per crossbar: without ``fault_aware`` (ATT-style remapping), in
  each crossbar the ``spare_cols`` columns with the largest stuck error ``sum_k |g_stuck - d|``
  move onto spare bit lines (which have stuck cells of their own, drawn from the same rates)
  when that lowers the error; with ``fault_aware``, per row tile and column tile the
  ``spare_cols`` logical columns with the largest residual ``sum_k |encoded - w|`` move, in all
  ``A`` arrays at once, onto the spares and are re-encoded around the spares' faults, when that
  lowers the residual. Cost: ``spare_cols`` extra bit lines and ADC lanes per crossbar and a
  column multiplexer.

ADC and digital recombination
-----------------------------
Every bit line has an ``adc_bits``-bit ADC whose LSB is ``2**adc_shift`` levels, with
``adc_shift`` the smallest shift for which ``adc_range`` (default: the full scale
``rows * (2**dac_bits - 1) * L``) fits ``(2**adc_bits - 1) * 2**adc_shift``
(:meth:`CrossbarConfig.adc_shift`)::

    code = clamp(floor(c / 2**adc_shift + 0.5 + offset), 0, 2**adc_bits - 1)

(round half up; saturating). With ``adc_shift = 0`` the current splits into the ideal integer
column sum ``c0 = sum_k a_k d_k`` and the error ``e = sum_k a_k (g_k - d_k)``, so
``code = clamp(c0 + floor(e + 0.5 + offset))``; ``e + 0.5 + offset`` is evaluated as one
bfloat16 matrix product (float32 accumulation; a resolution of 2**-8 LSB next to the decision
threshold, far below the analog noise). The digital periphery recombines
(:func:`crossbar_recombine`)::

    acc = sum_{t,i,a} sign_a * code[t,i,a] << (adc_shift + dac_bits*(I-1-i) + cell_bits*j(a))
    dot = acc - 128 * sum_k xu_k - 128 * sum_k wu_k + K * 128**2   # offset binary: correction
    dot = acc - 128 * sum_k w_k                                     # differential: correction
    y   = sat32(dot + bias);   out = requantize(y, mult, shift) or y

(``sign_a`` is -1 for the arrays of ``u-``.) The weight sums (``Programmed.wsum``, 0 for
two-phase inputs) are those of the encoded weights, ``sum_k xu_k`` is taken from the digital
input. Exactness: with no noise and ``full_scale < 2**adc_bits`` (``adc_shift = 0``, no
clipping) every code equals its column sum and ``out == gemm_int(x, w, bias, mult, shift)``.

Float twin and error bound: the twin is :func:`golden.gemm.gemm_float`. Without noise and with
no code clipped, each code is within ``2**(adc_shift-1)`` levels of its column sum, so
``|dot - x @ w| <= T' * P * 2**(adc_shift-1) * sum_{i,j} 2**(dac_bits*i + cell_bits*j)``
(``P`` = 2 differential, else 1; ``T'`` the macro's row tiles)
(:func:`ideal_error_bound`); 0 when ``adc_shift = 0``.

Speed: everything is batched torch with no Python loop over rows, columns, steps or slices (one
loop over row tiles). With ``adc_shift = 0`` and no code able to clip, :func:`crossbar_linear`
never materializes the codes: ``dot = x @ encoded + sum(weights * floor(e + 0.5 + offset))``,
one bfloat16 product over the driven (step, token) rows per tile and one float32 product with
the rows' shift weights; a step with no driven row carries no current and is skipped.
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
           "input_digits", "macro_inputs", "crossbar_codes", "crossbar_recombine",
           "crossbar_linear", "ideal_error_bound", "REALISTIC_NOISE"]

_BF = torch.bfloat16
#: read-noise draws are clipped to this many standard deviations (the clip keeps the no-clipping
#: check of the fast path a guarantee; a |z| > 8 draw has probability 1.2e-15)
_Z_CLIP = 8.0


def _pos(name: str, v: object, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise UserValueError(f"{name} must be a positive integer, not {v!r}")
    if v > hi:
        raise UserValueError(f"{name} must be at most {hi}, not {v}")
    return v


@dataclasses.dataclass(frozen=True)
class CrossbarConfig:
    """Crossbar geometry, converters and mapping (see the module docstring).

    ``rows``/``cols``: word and bit lines of one crossbar; ``cell_bits``: bits per cell;
    ``dac_bits``: input bits per step; ``adc_bits``: ADC resolution; ``adc_range``: the largest
    column sum the ADC converts without clipping (None: the full scale); ``spare_cols``: spare
    bit lines per crossbar for fault remapping (:func:`program`); ``differential``: the weight
    encoding; ``signed_inputs``: sign-magnitude inputs in two phases; ``fault_aware``: re-encode
    the differential pairs around the stuck cells found after programming (the last two need
    ``differential``).
    """

    rows: int = 128
    cols: int = 128
    cell_bits: int = 2
    dac_bits: int = 1
    adc_bits: int = 9
    adc_range: int | None = None
    spare_cols: int = 0
    differential: bool = False
    signed_inputs: bool = False
    fault_aware: bool = False

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
        for f in ("signed_inputs", "fault_aware"):
            if getattr(self, f) and not self.differential:
                raise UserValueError(f"{f} needs the differential weight encoding "
                                     "(differential=True)")

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
        """Input steps per row tile and phase, ``I = ceil(8 / dac_bits)``."""
        return math.ceil(8 / self.dac_bits)

    @property
    def phases(self) -> int:
        """Input phases: 2 for sign-magnitude inputs, else 1."""
        return 2 if self.signed_inputs else 1

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

    def macro_tiles(self, k: int) -> int:
        """Row tiles the macro (``hw.imc``) steps through for ``K = k``: ``phases * T``."""
        return self.phases * math.ceil(k / self.rows)

    def macro_k(self, k: int) -> int:
        """The macro's ``k`` (rows in use): ``k``, or ``T*rows + k`` for two-phase inputs."""
        return math.ceil(k / self.rows) * self.rows + k if self.signed_inputs else k


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
                and not self.drifts)

    @property
    def drifts(self) -> bool:
        """True when the conductances drift (``drift_t > drift_t0`` and a nonzero exponent)."""
        return self.drift_t > self.drift_t0 and (self.drift_nu > 0 or self.drift_nu_sigma > 0)

    def with_(self, **kw: Any) -> CrossbarNoise:
        """A copy with some fields replaced."""
        return dataclasses.replace(self, **kw)


#: "realistic" ReRAM settings used by the benchmarks: programming noise 2% of the conductance
#: range after program-and-verify (aihwkit's ReRamWan2022NoiseModel, a fit to Wan et al., Nature
#: 2022, gives 2.8% at g_max and about 5% mid-range for one-shot analog programming; iterating
#: write pulses with a verify read tightens the spread to the verify window), read noise
#: 1% (the figure aihwkit's ReRAM models suggest for short-term read noise), a 0.1 LSB ADC offset
#: spread (what is left after a per-column offset calibration; an uncalibrated 0.5 LSB spread moves
#: a third of the codes), no faults, read right after programming
REALISTIC_NOISE = CrossbarNoise(prog_sigma=0.02, read_sigma=0.01, adc_offset_sigma=0.1)


def crossbar_count(k: int, n: int, cfg: CrossbarConfig) -> int:
    """Crossbars a ``K x N`` weight matrix occupies: ``ceil(K/rows) * ceil(N/cols) * A``."""
    return math.ceil(k / cfg.rows) * math.ceil(n / cfg.cols) * cfg.arrays


@dataclasses.dataclass
class Programmed:
    """A weight matrix as programmed into crossbars.

    ``digits``: the intended digits ``[T, rows, A, N]`` (uint8), ``dg``: the deviation of the
    effective conductances from them, ``g - digits`` (bfloat16, same shape; None for an ideal
    device), ``wq``: the int8 weights ``[K, N]`` (int64), ``encoded``: the weights the digits
    encode (``wq`` unless a fault-aware encoding could not represent a weight),
    ``wsum``: the weight-sum register of the periphery, ``sum_k (encoded + 128)`` (offset binary),
    ``sum_k encoded`` (differential) or 0 (two-phase inputs; int64 ``[N]``), ``adc_offset``:
    ``[T, A, N]`` LSB or None, ``k``: the real rows, ``remapped``: columns moved onto spares,
    ``faulty_cells``: stuck cells left in the used rows, ``reencoded``: weights given a
    fault-aware encoding.
    """

    cfg: CrossbarConfig
    noise: CrossbarNoise
    k: int
    n: int
    digits: torch.Tensor
    wq: torch.Tensor
    wsum: torch.Tensor
    dg: torch.Tensor | None
    adc_offset: torch.Tensor | None
    remapped: int = 0
    faulty_cells: int = 0
    encoded: torch.Tensor | None = None
    reencoded: int = 0
    _cache: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.encoded is None:
            self.encoded = self.wq

    @property
    def g(self) -> torch.Tensor | None:
        """Effective conductances ``[T, rows, A, N]`` (float32; None for an ideal device)."""
        return None if self.dg is None else self.digits.to(torch.float32) + self.dg.to(torch.float32)

    @property
    def residual(self) -> int:
        """Weights whose encoding differs from the intended value."""
        return int((self.encoded != self.wq).sum())


def _split(v: torch.Tensor, cfg: CrossbarConfig) -> list[torch.Tensor]:
    """The stored unsigned values of weights ``v``: ``[v + 128]`` or ``[v+, v-]``."""
    return [v + 128] if not cfg.differential else [v.clamp(min=0), (-v).clamp(min=0)]


def _digit_planes(parts: list[torch.Tensor], cfg: CrossbarConfig) -> torch.Tensor:
    """Digits ``[..., A, C]`` of stored values ``parts`` (each ``[..., C]``)."""
    sh = torch.arange(cfg.slices, dtype=torch.int64) * cfg.cell_bits
    return torch.cat([(u.unsqueeze(-2) >> sh[:, None]) & cfg.levels for u in parts], -2)


def _pad_rows(v: torch.Tensor, cfg: CrossbarConfig) -> torch.Tensor:
    """``v[K, ...]`` padded with zeros to ``T * rows`` and viewed ``[T, rows, ...]``."""
    k = v.shape[0]
    t = math.ceil(k / cfg.rows)
    out = torch.zeros((t * cfg.rows, *v.shape[1:]), dtype=v.dtype)
    out[:k] = v
    return out.reshape(t, cfg.rows, *v.shape[1:])


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


def _stuck_level(st: torch.Tensor, cfg: CrossbarConfig) -> torch.Tensor:
    """The digit a stuck cell holds (int64; 0 where healthy: read only where ``st != 0``)."""
    return torch.where(st == 1, cfg.levels, 0).to(torch.int64)


# ----------------------------------------------------------------------------- fault-aware pairs

def _pair_tables(cfg: CrossbarConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Per magnitude ``u`` in ``0..U-1`` its digits ``[U, S]`` and its noise variance proxy
    (on cells ``16**j``, off cells ``0.17**2 * 16**j``, relative to ``cell_bits = 2``)."""
    s, cb = cfg.slices, cfg.cell_bits
    top = min(2 ** (cb * s), 512)
    u = torch.arange(top, dtype=torch.int64)
    dig = (u[:, None] >> (cb * torch.arange(s))) & cfg.levels
    sig = torch.where(dig > 0, 1.0, 0.17**2) * (2.0 ** (2 * cb * torch.arange(s)))[None, :]
    return dig, sig.sum(1)


#: solved stuck patterns, ``(cell_bits, key) -> [256, 2]`` (patterns recur across matrices)
_PAIRS: dict[tuple[int, int], torch.Tensor] = {}


def _solve_patterns(sp: torch.Tensor, sm: torch.Tensor, cfg: CrossbarConfig) -> torch.Tensor:
    """Best pairs ``[P, 256, 2]`` (``u+``, ``u-`` for ``w = -128..127``) for stuck patterns
    ``sp``, ``sm`` (``[P, S]``, states 0/1/2 of the ``u+`` and ``u-`` digits).

    Every feasible pair (stuck digits at their levels) is binned by its difference; each bin keeps
    its lowest-variance pair; ``w`` takes its own bin, or the nearest nonempty one."""
    dig, var = _pair_tables(cfg)
    top = dig.shape[0]
    lv = torch.tensor([0, cfg.levels, 0])
    u = torch.arange(top, dtype=torch.int64)
    nb = 2 * top - 1
    bins = (u[:, None] - u[None, :] + top - 1).reshape(-1)  # difference u+ - u-, shifted
    cost = torch.round((var[:, None] + var[None, :]) * 1000).to(torch.int64)  # < 2**24
    key = ((cost << 18) | (u[:, None] * top + u[None, :])).reshape(-1)  # pair index < 2**18
    big = torch.iinfo(torch.int64).max
    want = torch.arange(-128, 128, dtype=torch.int64) + top - 1  # the bin of each w
    idx = torch.arange(nb)
    out = []
    for c0 in range(0, sp.shape[0], 32):
        a, b = sp[c0:c0 + 32].long(), sm[c0:c0 + 32].long()
        fp = ((a[:, None, :] == 0) | (dig[None] == lv[a][:, None, :])).all(-1)  # [P, U]
        fm = ((b[:, None, :] == 0) | (dig[None] == lv[b][:, None, :])).all(-1)
        ok = (fp[:, :, None] & fm[:, None, :]).reshape(fp.shape[0], -1)
        k = torch.where(ok, key[None, :], big)
        best = torch.full((fp.shape[0], nb), big).scatter_reduce_(1, bins.expand_as(k), k, "amin")
        valid = best < big
        nxt = torch.where(valid, idx, nb).flip(-1).cummin(-1).values.flip(-1)[:, want]
        prv = torch.where(valid, idx, -1).cummax(-1).values[:, want]
        dn = torch.where(nxt < nb, nxt - want, nb)
        dp = torch.where(prv >= 0, want - prv, nb)
        pick = torch.where(dn < dp, nxt, torch.where(dp < dn, prv, torch.where(
            best.gather(1, nxt.clamp(max=nb - 1)) <= best.gather(1, prv.clamp(min=0)), nxt, prv)))
        pair = best.gather(1, pick) & (2**18 - 1)
        out.append(torch.stack([pair // top, pair % top], -1))
    return torch.cat(out) if out else torch.zeros(0, 256, 2, dtype=torch.int64)


def _pairs_for(keys: torch.Tensor, cfg: CrossbarConfig) -> torch.Tensor:
    """Solved pairs ``[P, 256, 2]`` of pattern keys (cached in :data:`_PAIRS`)."""
    s = cfg.slices
    new = [int(k) for k in keys.tolist() if (cfg.cell_bits, int(k)) not in _PAIRS]
    if new:
        nk = torch.tensor(new, dtype=torch.int64)
        sp = torch.stack([(nk // 3**s // 3**j) % 3 for j in range(s)], 1)
        sm = torch.stack([(nk % 3**s // 3**j) % 3 for j in range(s)], 1)
        if len(_PAIRS) + len(new) > 200_000:
            _PAIRS.clear()
        for kk, tab in zip(new, _solve_patterns(sp, sm, cfg), strict=True):
            _PAIRS[(cfg.cell_bits, kk)] = tab
    return torch.stack([_PAIRS[(cfg.cell_bits, int(k))] for k in keys.tolist()])


def _fault_aware(w: torch.Tensor, st: torch.Tensor,
                 cfg: CrossbarConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits ``[T, R, A, C]`` and encoded weights ``[T, R, C]`` of weights ``w[T, R, C]`` with
    stuck map ``st[T, R, A, C]`` (module docstring)."""
    s = cfg.slices
    digits = _digit_planes(_split(w, cfg), cfg)  # [T, R, A, C]
    enc = w.clone()
    clash = ((st != 0) & (_stuck_level(st, cfg) != digits)).any(-2)  # [T, R, C]
    if not bool(clash.any()):
        return digits, enc
    sel = clash.nonzero(as_tuple=True)
    pat = st.permute(0, 1, 3, 2)[sel].long()  # [F, A]
    p3 = 3 ** torch.arange(s, dtype=torch.int64)
    key = (pat[:, :s] * p3).sum(1) * 3**s + (pat[:, s:] * p3).sum(1)
    uk, inv = torch.unique(key, return_inverse=True)
    table = _pairs_for(uk, cfg)  # [P, 256, 2]
    pair = table[inv, w[sel] + 128]  # [F, 2]
    new = _digit_planes([pair[:, 0:1], pair[:, 1:2]], cfg)[..., 0]  # [F, A]
    d = digits.permute(0, 1, 3, 2).clone()
    d[sel] = new
    digits = d.permute(0, 1, 3, 2).contiguous()
    enc[sel] = pair[:, 0] - pair[:, 1]
    return digits, enc


# ----------------------------------------------------------------------------- programming

def program(wq: torch.Tensor, cfg: CrossbarConfig = CrossbarConfig(),
            noise: CrossbarNoise = CrossbarNoise(), seed: int = 0) -> Programmed:
    """Program int8 weights ``wq[K, N]`` into crossbars (draws the static non-idealities).

    Draws from ``seed``: the programming noise, the drift exponents and the ADC offsets from one
    stream, the stuck map and the spares' stuck maps (``spare_cols``) from another (so a seed's
    analog draw is the same at every fault rate, and a cell stuck at one rate is stuck at every
    higher rate of the same kind). With stuck cells, ``fault_aware``
    and ``spare_cols`` apply the mitigations of the module docstring (a post-programming test is
    assumed to report every stuck cell).
    """
    wq = check_int8("w", wq)
    if wq.dim() != 2:
        raise UserValueError(f"weights must be [K, N], not {tuple(wq.shape)}")
    k, n = wq.shape
    wp = _pad_rows(wq, cfg)  # [T, R, N]
    t = wp.shape[0]
    digits = _digit_planes(_split(wp, cfg), cfg)  # [T, R, A, N]
    enc = wp
    remapped = faulty = reenc = 0
    off = dg = None
    if not noise.ideal:
        gen = torch.Generator().manual_seed(int(seed) & (2**63 - 1))
        # faults from their own stream: the programming noise, drift and offsets of a seed do not
        # depend on the fault rates, and the stuck cells of a rate include those of lower rates
        fgen = torch.Generator().manual_seed((int(seed) * 0x9E3779B97F4A7C15 + 1) & (2**63 - 1))
        L = float(cfg.levels)
        st = None
        if noise.stuck_on or noise.stuck_off:
            st = _stuck(tuple(digits.shape), noise, fgen)
            used = _pad_rows(torch.ones(k, dtype=torch.bool), cfg)[:, :, None, None]
            st.masked_fill_(~used, 0)  # rows beyond K are never driven
            plain = digits
            if cfg.fault_aware:
                digits, enc = _fault_aware(wp, st, cfg)
            if cfg.spare_cols:
                st, digits, enc, remapped = _remap(st, digits, enc, wp, cfg, noise, fgen)
            faulty = int((st != 0).sum())
            reenc = int((digits != plain).any(2).sum())
        d = digits.to(torch.float32)
        g = d.clone()
        if noise.prog_sigma:
            sig = torch.where(digits == 0, noise.off_sigma_ratio, 1.0) * (noise.prog_sigma * L)
            g += torch.randn(g.shape, generator=gen) * sig
            g.clamp_(0.0, L * 1.5)  # a conductance is never negative; over-programming is bounded
        if noise.drifts:
            nu = (noise.drift_nu + noise.drift_nu_sigma * torch.randn(g.shape, generator=gen)).clamp_(min=0)
            ratio = noise.drift_t / noise.drift_t0
            g *= torch.exp(-nu * math.log(ratio))
            if noise.drift_compensation:
                g *= ratio ** noise.drift_nu
        if st is not None:
            g = torch.where(st == 1, torch.full_like(g, L), torch.where(st == 2, torch.zeros_like(g), g))
        if noise.adc_offset_sigma:
            off = torch.randn((t, cfg.arrays, n), generator=gen) * noise.adc_offset_sigma
        packed = torch.empty(t, cfg.rows + 1, cfg.arrays * n, dtype=_BF)
        packed[:, :cfg.rows] = (g - d).reshape(t, cfg.rows, -1)
        packed[:, cfg.rows] = 0.5 if off is None else (off + 0.5).reshape(t, -1)
        dg = packed[:, :cfg.rows].view(t, cfg.rows, cfg.arrays, n)
    enc = enc.reshape(-1, n)[:k].contiguous()
    if cfg.signed_inputs:
        wsum = torch.zeros(n, dtype=torch.int64)
    else:
        wsum = enc.sum(0) if cfg.differential else (enc + 128).sum(0)
    prog = Programmed(cfg, noise, k, n, digits.to(torch.uint8), wq, wsum, dg, off, remapped,
                      faulty, enc, reenc)
    if dg is not None:
        prog._cache["packed"] = packed
    return prog


def _remap(st: torch.Tensor, digits: torch.Tensor, enc: torch.Tensor, wp: torch.Tensor,
           cfg: CrossbarConfig, noise: CrossbarNoise, gen: torch.Generator
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Move the worst columns onto spare bit lines (module docstring); returns the stuck map,
    digits, encoded weights and the count of moved columns."""
    t, r, a, n = st.shape
    c, sp = cfg.cols, min(cfg.spare_cols, cfg.cols)
    u = math.ceil(n / c)
    pad = u * c - n

    def cols(x: torch.Tensor) -> torch.Tensor:  # [..., N] -> [..., u, c]
        return torch.nn.functional.pad(x, (0, pad)).reshape(*x.shape[:-1], u, c)

    def back(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*x.shape[:-2], u * c)[..., :n]

    if not cfg.fault_aware:  # ATT-style: per crossbar, by stuck error of its own cells
        lvl = _stuck_level(st, cfg)
        e = torch.where(st != 0, (lvl - digits.long()).abs(), 0)
        col_err = cols(e).sum(1)  # [t, a, u, c]
        spare = _stuck((t, r, a, u, sp), noise, gen)
        worst = col_err.topk(sp, dim=-1).indices  # [t, a, u, sp]
        idx = worst[:, None].expand(t, r, a, u, sp)
        dw = cols(digits).gather(-1, idx).long()
        spare_err = torch.where(spare != 0, (_stuck_level(spare, cfg) - dw).abs(), 0).sum(1)
        better = spare_err < col_err.gather(-1, worst)
        new = torch.where(better[:, None], spare, cols(st).gather(-1, idx))
        return back(cols(st).scatter(-1, idx, new)), digits, enc, int(better.sum())
    # fault-aware: whole logical columns (all A arrays), by residual |encoded - w|
    res = cols((enc - wp).abs()).sum(1)  # [t, u, c]
    spare = _stuck((t, r, a, u, sp), noise, gen)
    worst = res.topk(sp, dim=-1).indices  # [t, u, sp]
    wi = worst[:, None].expand(t, r, u, sp)
    w_sub = cols(wp).gather(-1, wi).reshape(t, r, u * sp)
    d2, e2 = _fault_aware(w_sub, spare.reshape(t, r, a, u * sp), cfg)
    res2 = (e2 - w_sub).abs().sum(1).reshape(t, u, sp)
    better = res2 < res.gather(-1, worst)  # [t, u, sp]
    b_r = better[:, None].expand(t, r, u, sp)
    new_enc = torch.where(b_r, e2.reshape(t, r, u, sp), cols(enc).gather(-1, wi))
    enc = back(cols(enc).scatter(-1, wi, new_enc))
    ia = worst[:, None, None].expand(t, r, a, u, sp)
    b_a = better[:, None, None].expand(t, r, a, u, sp)
    new_st = torch.where(b_a, spare, cols(st).gather(-1, ia))
    new_d = torch.where(b_a, d2.reshape(t, r, a, u, sp), cols(digits).gather(-1, ia))
    st = back(cols(st).scatter(-1, ia, new_st))
    digits = back(cols(digits).scatter(-1, ia, new_d))
    return st, digits, enc, int(better.sum())


# ----------------------------------------------------------------------------- inputs

def macro_inputs(xq: torch.Tensor, cfg: CrossbarConfig) -> torch.Tensor:
    """The int8 words the macro receives for ``xq[M, K]``: ``[M, T'*rows]`` (rows beyond ``K``
    hold -128, i.e. offset-binary 0); with two-phase inputs the offset-binary words of
    ``[x+ ; x-]`` (``x+ - 128`` and ``x- - 128``), each half padded to ``T*rows``."""
    xq = check_int8("x", xq)
    m, k = xq.shape
    t = math.ceil(k / cfg.rows)
    out = torch.full((m, cfg.phases, t * cfg.rows), -128, dtype=torch.int64)
    if cfg.signed_inputs:
        out[:, 0, :k] = xq.clamp(min=0) - 128
        out[:, 1, :k] = (-xq).clamp(min=0) - 128
    else:
        out[:, 0, :k] = xq
    return out.reshape(m, -1)


def _levels(xq: torch.Tensor, cfg: CrossbarConfig) -> torch.Tensor:
    """DAC levels ``[I, M, T'*rows]`` (uint8) of the macro's words (step 0 = most significant)."""
    xu = (macro_inputs(xq, cfg) + 128).to(torch.uint8)
    sh = (cfg.steps - 1 - torch.arange(cfg.steps, dtype=torch.int64)) * cfg.dac_bits
    return torch.stack([(xu >> int(s)) & (2**cfg.dac_bits - 1) for s in sh.tolist()])


def input_digits(xq: torch.Tensor, cfg: CrossbarConfig) -> torch.Tensor:
    """DAC levels ``[I, M, T'*rows]`` of int8 inputs ``xq[M, K]`` (step 0 = most significant;
    rows beyond K are 0; two-phase inputs: phase + in the first ``T*rows``)."""
    return _levels(check_int8("x", xq), cfg).to(torch.int64)


def _tile_rows(xq: torch.Tensor, cfg: CrossbarConfig, nt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per physical row tile, the levels of its (phase, step, token) rows ``[T, P*I*M, rows]``
    (uint8; flat row ``p*I*M + i*M + m``) and whether each row drives any word line."""
    levels = _levels(xq, cfg)
    steps, m = levels.shape[:2]
    lv = levels.reshape(steps, m, cfg.phases, nt, cfg.rows).permute(3, 2, 0, 1, 4)
    lv = lv.reshape(nt, cfg.phases * steps * m, cfg.rows)
    return lv, lv.any(-1)


# ----------------------------------------------------------------------------- the array

_SCRATCH: dict[tuple[str, torch.dtype], torch.Tensor] = {}


def _scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A reused work buffer of ``shape`` (contents undefined; valid until the next request of
    ``name``): a fresh multi-megabyte tensor per tile costs more in page faults than the
    arithmetic done in it."""
    n = math.prod(shape)
    t = _SCRATCH.get((name, dtype))
    if t is None or t.numel() < n:
        t = _SCRATCH[(name, dtype)] = torch.empty(n, dtype=dtype)
    return t[:n].view(shape)


def _read_state(prog: Programmed) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """On cells of the packed matrix: flat indices, their deviations and read-noise standard
    deviations ``read_sigma * g`` (float32), cached."""
    c = prog._cache.get("read")
    if c is None:
        pk = prog._cache["packed"]
        r = prog.cfg.rows
        g = torch.zeros(pk.shape, dtype=torch.float32)
        g[:, :r] = prog.g.reshape(pk.shape[0], r, -1)
        idx = (g.view(-1) >= 0.5).nonzero().squeeze(1)
        c = prog._cache["read"] = (idx, pk.view(-1)[idx].to(torch.float32),
                                   g.view(-1)[idx] * prog.noise.read_sigma)
    return c


def _call_mat(prog: Programmed, read_seed: int | None) -> torch.Tensor | None:
    """This call's packed matrix ``[T, rows + 1, A*N]`` (bfloat16): the conductance deviations
    ``g - d`` plus a fresh read-noise draw (module docstring) and the threshold row
    ``offset + 0.5``; None for an ideal array. A shared buffer: valid until the next call."""
    if prog.dg is None:
        return None
    pk = prog._cache["packed"]
    rs = prog.noise.read_sigma
    if not rs:
        return pk
    if read_seed is None:
        raise UserValueError("read noise needs a seed")
    idx, base, gsig = _read_state(prog)
    gen = torch.Generator().manual_seed(int(read_seed) & (2**63 - 1))
    z = torch.randn(idx.shape, generator=gen, out=_scratch("z", tuple(idx.shape), torch.float32))
    z.clamp_(max(-_Z_CLIP, -1.0 / rs), _Z_CLIP)
    # one buffer per matrix, reused: every call overwrites all of its noisy cells
    mat = prog._cache.get("call_mat")
    if mat is None:
        mat = prog._cache["call_mat"] = pk.clone()
    # g_call = g * max(0, 1 + read_sigma * z): the deviation grows by g * read_sigma * z, z >= -1/rs
    g_call = torch.addcmul(base, gsig, z, out=z)
    mat.view(-1).put_(idx, g_call.to(_BF))
    return mat


def _no_clip(prog: Programmed) -> bool:
    """True when no code of ``prog`` can clip: ``adc_shift = 0``, every ADC offset above -0.5
    LSB (a current is never negative) and the largest column current, all rows driven at the top
    level, read noise at its clip, plus offset and rounding, below the top code."""
    cfg = prog.cfg
    if cfg.adc_shift:
        return False
    c = prog._cache.get("no_clip")
    if c is None:
        top = 2**cfg.adc_bits - 1
        if prog.dg is None:
            c = cfg.full_scale <= top and prog.adc_offset is None
        else:
            off_lo = float(prog.adc_offset.min()) if prog.adc_offset is not None else 0.0
            off_hi = float(prog.adc_offset.max()) if prog.adc_offset is not None else 0.0
            colmax = float(prog.g.sum(1).max()) * (2**cfg.dac_bits - 1)
            colmax *= 1 + _Z_CLIP * prog.noise.read_sigma
            c = off_lo > -0.5 and colmax + off_hi + 0.5 < top + 1
        prog._cache["no_clip"] = c
    return c


def _tile_m(lv: torch.Tensor, act: torch.Tensor, mat: torch.Tensor, t: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``m = e + offset + 0.5`` of the driven rows of physical row tile ``t`` (``adc_shift = 0``),
    one bfloat16 product; the rounding error of a code is ``floor(m)``.

    ``lv``, ``act``: :func:`_tile_rows` of tile ``t``. Returns the driven rows (flat indices),
    their ``m`` ``[rows, A*N]`` (bfloat16) and the rounding error of a row that drives nothing
    (``floor(offset + 0.5)``, float32 ``[A*N]``); ``m`` is a work buffer, valid until the
    next call."""
    r = lv.shape[1]
    rows = act.nonzero().squeeze(1)
    q0 = torch.floor(mat[t, r].to(torch.float32))
    x = torch.ones(rows.numel(), r + 1, dtype=_BF)
    x[:, :r] = lv[rows]
    prod = _scratch("prod", (rows.numel(), mat.shape[2]), _BF)
    return rows, torch.mm(x, mat[t], out=prod), q0


def _row_weights(rows: torch.Tensor, cfg: CrossbarConfig, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token index and signed shift weight ``(-1)**p * 2**(dac_bits*(I-1-i))`` of flat rows."""
    steps = cfg.steps
    p = rows // (steps * m)
    i = (rows // m) % steps
    w = torch.exp2(((steps - 1 - i) * cfg.dac_bits).to(torch.float64)) * (1 - 2 * p).to(torch.float64)
    return rows % m, w


def _array_weights(cfg: CrossbarConfig) -> torch.Tensor:
    """``sign_a * 2**(cell_bits*j(a))`` per array (float64)."""
    j = torch.arange(cfg.arrays, dtype=torch.int64) % cfg.slices
    return torch.exp2((j * cfg.cell_bits).to(torch.float64)) * _signs(cfg).to(torch.float64)


def _error_dot(xq: torch.Tensor, prog: Programmed, mat: torch.Tensor) -> torch.Tensor:
    """``dot - x @ encoded`` (float64 ``[M, N]``) when no code can clip (module docstring)."""
    cfg = prog.cfg
    m = xq.shape[0]
    nt = prog.digits.shape[0]
    lv, drive = _tile_rows(xq, cfg, nt)
    a, n = cfg.arrays, prog.n
    y = torch.zeros(m, a * n, dtype=torch.float32)  # exact: small integers times powers of 2
    allrows = torch.arange(cfg.phases * cfg.steps * m)
    for t in range(nt):
        act, mm, q0 = _tile_m(lv[t], drive[t], mat, t)
        if act.numel():
            tok, w = _row_weights(act, cfg, m)
            pm = torch.zeros(m, act.numel())
            pm[tok, torch.arange(act.numel())] = w.to(torch.float32)
            y.addmm_(pm, _scratch("floor", tuple(mm.shape), torch.float32).copy_(mm).floor_())
        if bool(q0.any()):  # rows that drive nothing still convert floor(0.5 + offset)
            idle = torch.ones(allrows.numel(), dtype=torch.bool)
            idle[act] = False
            tok, w = _row_weights(allrows[idle], cfg, m)
            per_tok = torch.zeros(m, dtype=torch.float64).index_add_(0, tok, w)
            y += (per_tok[:, None] * q0[None, :]).to(torch.float32)
    return torch.einsum("man,a->mn", y.to(torch.float64).reshape(m, a, n), _array_weights(cfg))


def _codes(xq: torch.Tensor, prog: Programmed, mat: torch.Tensor | None) -> torch.Tensor:
    """ADC codes ``[T', I, A, M, N]`` (int64, macro tile order, phase - lanes swapped)."""
    cfg = prog.cfg
    m = xq.shape[0]
    if xq.shape[1] != prog.k:
        raise UserValueError(f"input has K={xq.shape[1]}, the programmed weights K={prog.k}")
    nt, r, a, n = prog.digits.shape
    ph, steps = cfg.phases, cfg.steps
    lv, drive = _tile_rows(xq, cfg, nt)  # [T, P*I*M, R]
    top = 2**cfg.adc_bits - 1
    if cfg.adc_shift == 0:  # ideal column sums (exact in float32: below 2**24) + rounding errors
        c0 = torch.bmm(lv.to(torch.float32), prog.digits.to(torch.float32).reshape(nt, r, a * n))
        for t in range(nt if mat is not None else 0):
            act, mm, q0 = _tile_m(lv[t], drive[t], mat, t)
            c0[t] += q0
            c0[t, act] += torch.floor(mm.to(torch.float32)) - q0
        codes = c0.round_().clamp_(0, top)
    else:
        g = prog.digits.to(torch.float64)
        if mat is not None:
            g = g + mat[:, :r].to(torch.float64).reshape(nt, r, a, n)
        cur = torch.bmm(lv.to(torch.float64), g.reshape(nt, r, a * n))
        cur.mul_(1.0 / 2**cfg.adc_shift).add_(0.5)
        if prog.adc_offset is not None:
            cur.add_(prog.adc_offset.to(torch.float64).reshape(nt, 1, a * n))
        codes = cur.floor_().clamp_(0, top)
    codes = codes.to(torch.int64).reshape(nt, ph, steps, m, a, n).permute(1, 0, 2, 4, 3, 5)
    if ph == 2:  # phase -: the u+ and u- lanes swapped
        s = cfg.slices
        codes = torch.stack([codes[0], torch.cat([codes[1][:, :, s:], codes[1][:, :, :s]], 2)])
    return codes.reshape(ph * nt, steps, a, m, n)


def crossbar_codes(xq: torch.Tensor, prog: Programmed, seed: int | None = None) -> torch.Tensor:
    """ADC codes ``[T', I, A, M, N]`` (int64) of ``xq[M, K]`` on ``prog`` as the macro receives
    them (``T' = phases * T``; phase - with the ``u+``/``u-`` lanes swapped); ``seed`` seeds the
    read noise (needed when ``read_sigma > 0``)."""
    xq = check_int8("x", xq)
    return _codes(xq, prog, _call_mat(prog, seed))


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
    if not cfg.differential:  # offset-binary input correction
        dot = dot - 128 * (xq + 128).sum(1, keepdim=True) + prog.k * 128 * 128
    return _finish(dot, bias, mult, shift)


def _finish(dot: torch.Tensor, bias: torch.Tensor | None, mult: torch.Tensor | None,
            shift: torch.Tensor | None) -> torch.Tensor:
    """Bias, int32 saturation, requantizer."""
    if bias is not None:
        dot = dot + torch.as_tensor(bias).to(torch.int64)
    y = saturate(dot, INT32_MIN, INT32_MAX)
    if (mult is None) != (shift is None):
        raise UserValueError("requantization needs both mult and shift")
    return y if mult is None else requantize(y, mult, shift)


def crossbar_recombine(codes: torch.Tensor, xq: torch.Tensor, prog: Programmed,
                       bias: torch.Tensor | None = None, mult: torch.Tensor | None = None,
                       shift: torch.Tensor | None = None) -> torch.Tensor:
    """The digital periphery: shift-add of ``codes[T', I, A, M, N]``, offset correction, bias,
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
    ``cfg``/``noise``/``seed`` are its own). ``read_seed`` seeds this call's read noise (default:
    derived from ``seed``). ``fast``: an ideal, lossless configuration returns :func:`gemm_int`
    directly, and a configuration whose codes cannot clip adds the rounding errors to
    ``x @ encoded`` without materializing the codes (the same values; tests check both against
    ``fast=False``, which recombines the codes of :func:`crossbar_codes`). Rows run ``chunk``
    at a time (the read noise of a call is one draw).
    """
    prog = wq if isinstance(wq, Programmed) else program(wq, cfg, noise, seed)
    xq = check_int8("x", xq)
    if xq.shape[1] != prog.k:
        raise UserValueError(f"input has K={xq.shape[1]}, the programmed weights K={prog.k}")
    if fast and prog.dg is None and prog.adc_offset is None and prog.cfg.lossless:
        return gemm_int(xq, prog.encoded, bias, mult, shift)
    rs = (seed * 1000003 + 17) if read_seed is None else read_seed
    mat = _call_mat(prog, rs)
    outs = []
    no_clip = fast and mat is not None and _no_clip(prog)
    for c0 in range(0, max(xq.shape[0], 1), chunk):
        xc = xq[c0:c0 + chunk]
        if no_clip:
            enc = prog._cache.get("enc64")
            if enc is None:
                enc = prog._cache["enc64"] = prog.encoded.to(torch.float64)
            ideal = xc.to(torch.float64) @ enc  # exact below 2**53
            dot = (ideal + _error_dot(xc, prog, mat)).round_().to(torch.int64)
            outs.append(_finish(dot, bias, mult, shift))
        else:
            codes = _codes(xc, prog, mat)
            per = codes.sum(0).to(torch.float64).permute(0, 2, 1, 3)
            outs.append(_recombine(per, xc, prog, bias, mult, shift))
    return torch.cat(outs) if outs else torch.zeros(0, prog.n, dtype=torch.int64)


def ideal_error_bound(cfg: CrossbarConfig, k: int) -> int:
    """Largest ``|dot - x @ w|`` of a noise-free crossbar whose codes do not clip
    (module docstring): ``T' * P * 2**(s-1) * sum_{i,j} 2**(dac_bits*i + cell_bits*j)``, 0 for
    s = 0."""
    s = cfg.adc_shift
    if s == 0:
        return 0
    tot = sum(2 ** (cfg.dac_bits * i + cfg.cell_bits * j)
              for i in range(cfg.steps) for j in range(cfg.slices))
    return cfg.macro_tiles(k) * (2 if cfg.differential else 1) * 2 ** (s - 1) * tot
