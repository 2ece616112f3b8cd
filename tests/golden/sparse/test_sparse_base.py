"""Shared helpers and the keep-all / invalid-knob contract of every sparse filter."""

from __future__ import annotations

import math

import pytest
import torch

import golden.sparse as gs
from golden.sparse.base import (
    attend_candidates,
    exp2_neg_fixed,
    make_filter,
    quantize_fixed,
    stable_topk_mask,
)


def _inputs(seed: int, b: int = 2, h: int = 3, n: int = 9, d: int = 32, pad: int = 3):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=g) * 2
    k = torch.randn(b, h, n, d, generator=g) * 2
    v = torch.randn(b, h, n, d, generator=g)
    km = torch.ones(b, n, dtype=torch.bool)
    km[-1, n - pad:] = False
    return q, k, v, km


def _reference(q, k, v, km):
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~km[:, None, None, :], float("-inf"))
    return torch.softmax(s, -1) @ v


def test_quantize_fixed_rounds_half_even_and_saturates():
    x = torch.tensor([0.03125, 0.09375, -0.03125, 100.0, -100.0, 15.9375])
    # 1 sign + 4 int + 4 frac: LSB 1/16; 0.5 LSB -> 0, 1.5 LSB -> 2 (half even)
    assert quantize_fixed(x, 4, 4).tolist() == [0, 2, 0, 255, -256, 255]


def test_stable_topk_keeps_first_of_ties_in_input_order():
    s = torch.tensor([[3, 5, 5, 1, 5, 0]])
    assert stable_topk_mask(s, 2).tolist() == [[False, True, True, False, False, False]]
    assert stable_topk_mask(s, 4).tolist() == [[True, True, True, False, True, False]]
    elig = torch.tensor([[True, False, True, True, True, True]])
    assert stable_topk_mask(s, 2, elig).tolist() == [[False, False, True, False, True, False]]


def test_exp2_neg_fixed_error_bound():
    x = torch.arange(0, 12 * 256, dtype=torch.int64)
    got = exp2_neg_fixed(x, 8).double() / 2 ** 15
    want = torch.pow(2.0, -x.double() / 256)
    # LUT error (2^-6 ln2 relative) plus the floor of the shift (2^-15 absolute)
    assert bool(((got - want).abs() <= want * 2 ** -6 * math.log(2) + 2 ** -15).all())


def test_candidate_denominator_is_over_candidates_only():
    q, k, v, km = _inputs(1)
    g = torch.Generator().manual_seed(5)
    mask = (torch.rand(q.shape[0], q.shape[1], q.shape[2], k.shape[2], generator=g) < 0.5)
    mask[..., 0] = True
    out = attend_candidates(q, k, v, mask)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    for b, h, i in [(0, 0, 0), (1, 2, 4), (0, 1, 8)]:
        idx = mask[b, h, i].nonzero().flatten()
        p = torch.softmax(s[b, h, i, idx], -1)
        torch.testing.assert_close(out[b, h, i], p @ v[b, h, idx], rtol=1e-5, atol=1e-6)


KEEP_ALL = {
    "a3": {"m": None, "T": 0.0},
    "elsa": {"p": 0.0},
    "spatten": {"token_keep": 1.0, "head_keep": 1.0},
    "energon": {"alpha": -1.0},
    "sanger": {"threshold": 0.0},
}


@pytest.mark.parametrize("integer", [True, False])
@pytest.mark.parametrize("name", gs.METHODS)
def test_keep_all_setting_is_dense_attention(name, integer):
    q, k, v, km = _inputs(2)
    knobs = dict(KEEP_ALL[name])
    if name == "spatten" and integer:
        knobs["tau"] = 1.0  # every row refetches its LSBs: full 12-bit scores
    f = make_filter(name, integer=integer, **knobs)
    f.reset(km)
    res = f.attend(q, k, v, km, layer=0)
    dense = gs.DenseFilter().attend(q, k, v, km)
    assert torch.equal(res.mask, dense.mask)
    ref = _reference(q, k, v, km)
    real = km[:, None, :, None].expand_as(ref)
    if name == "spatten" and integer:
        # 12-bit Q, K (7 fraction bits): scores within a few 2^-7 of exact
        torch.testing.assert_close(res.out[real], ref[real], rtol=0, atol=0.02)
        return
    if name != "spatten":
        assert torch.equal(res.out, dense.out)
    torch.testing.assert_close(res.out[real], ref[real], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,knobs,needle", [
    ("a3", {"T": -1.0}, "T (post-scoring threshold, percent) must be in [0, 100]"),
    ("a3", {"T": 150.0}, "T (post-scoring"),
    ("a3", {"m": 0.0}, "m (candidate-search"),
    ("elsa", {"p": -0.5}, "p (ELSA relevance factor) must be in [0, inf)"),
    ("elsa", {"hash_bits": 12}, "hash_bits must be a power of two"),
    ("spatten", {"token_keep": 0.0}, "token_keep (SpAtten token keep ratio) must be in (0, 1]"),
    ("spatten", {"token_keep": 1.5}, "token_keep"),
    ("spatten", {"head_keep": -0.1}, "head_keep"),
    ("spatten", {"tau": -0.1}, "tau"),
    ("spatten", {"msb_bits": 6, "lsb_bits": 4}, "msb_bits + lsb_bits must be 12"),
    ("energon", {"alpha": 1.0}, "alpha (Energon threshold offset) must be in [-1, 1)"),
    ("energon", {"alpha": -1.5}, "alpha"),
    ("energon", {"rounds": ((4, 0),)}, "bits in [1, 8]"),
    ("sanger", {"threshold": -0.01}, "threshold (Sanger probability threshold) must be in [0, 1)"),
    ("sanger", {"threshold": 1.0}, "threshold"),
    ("sanger", {"bits": 3}, "bits must be one of"),
])
def test_invalid_knobs_raise_naming_the_parameter(name, knobs, needle):
    with pytest.raises(ValueError) as e:
        make_filter(name, **knobs)
    assert needle in str(e.value)


def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError, match="valid: a3, dense, elsa, energon, sanger, spatten"):
        make_filter("reformer")


@pytest.mark.parametrize("name", gs.METHODS)
def test_every_real_query_keeps_a_key_and_padding_is_never_kept(name):
    q, k, v, km = _inputs(3)
    f = make_filter(name, **{"a3": {"m": 0.125, "T": 20.0}, "elsa": {"p": 4.0, "thresholds": [0.9]},
                             "spatten": {"token_keep": 0.2}, "energon": {"alpha": 0.9},
                             "sanger": {"threshold": 0.5}}[name])
    f.reset(km)
    m = f.mask(q, k, km)
    assert not m[~gs.DenseFilter().mask(q, k, km)].any()
    assert bool(m[km[:, None, :].expand(m.shape[:3])].any(-1).all())
