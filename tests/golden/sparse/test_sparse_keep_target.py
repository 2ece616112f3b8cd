"""Sanger's golden-only mass rule (``mass`` / ``layer_masses``): a plain-Python reference on
small integer rows, its properties, the float twin, and the refusal on the RTL-bound path."""

from __future__ import annotations

import pytest
import torch

from golden.errors import UserValueError
from golden.sparse.base import quantize_qk_int8, valid_pairs
from golden.sparse.sanger import SangerFilter, sanger_mass_keep, sanger_mass_keep_int


def _qk(seed: int, b: int = 2, h: int = 3, n: int = 9, d: int = 16):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(b, h, n, d, generator=g) * 2, torch.randn(b, h, n, d, generator=g) * 2
    km = torch.ones(b, n, dtype=torch.bool)
    km[-1, n - 3:] = False
    return q, k, km


def test_mass_rule_matches_a_plain_reference():
    g = torch.Generator().manual_seed(3)
    for _ in range(60):
        n = int(torch.randint(1, 10, (1,), generator=g))
        valid = torch.rand(4, n, generator=g) > 0.25
        e = (torch.randint(0, 5, (4, n), generator=g) * int(torch.randint(1, 9000, (1,), generator=g))
             ).masked_fill(~valid, 0)                                  # small alphabets: ties
        m = int(torch.randint(0, 2 ** 16, (1,), generator=g))
        got = sanger_mass_keep_int(e, valid, m)
        for r in range(4):
            s = int(e[r].sum())
            for j in range(n):
                above = sum(int(e[r, i]) for i in range(n) if valid[r, i] and e[r, i] > e[r, j])
                assert bool(got[r, j]) == (bool(valid[r, j]) and above * 2 ** 16 < (2 ** 16 - m) * s)


def test_mass_masks_nest_keep_the_row_maximum_and_skip_padding():
    q, k, km = _qk(1)
    valid = valid_pairs(km, q.shape[1])
    prev = None
    for mass in (0.0, 0.05, 0.15, 0.3, 0.6, 0.95):
        m = SangerFilter(mass=mass).mask(q, k, km)
        assert not (m & ~valid).any()
        assert bool(m[valid.any(-1)].any(-1).all())               # every real row keeps a key
        if mass == 0.0:
            assert torch.equal(m, valid)
        if prev is not None:
            assert not (m & ~prev).any()                           # more mass out: a subset
        prev = m
    assert int(prev.sum()) < int(valid.sum())


def test_integer_path_is_mask_mass_int_and_the_rtl_contract_refuses_it():
    q, k, km = _qk(2)
    f = SangerFilter(mass=0.2)
    q8, sq = quantize_qk_int8(q, km)
    k8, sk = quantize_qk_int8(k, km)
    prm = f.int_params(sq, sk, q.shape[-1])
    assert prm["mass"] == round(0.2 * 2 ** 16) and prm["keep_all"] == 0
    assert torch.equal(f.mask(q, k, km), f.mask_mass_int(q8, k8, km, prm).mask)
    with pytest.raises(UserValueError, match="golden-only"):
        f.mask_int(q8, k8, km, prm)
    # the threshold path's constants are unchanged (what the RTL unit takes)
    assert set(SangerFilter(threshold=0.03).int_params(sq, sk, q.shape[-1])) == {
        "keep_all", "thr", "mult", "shift"}


def test_float_twin_keeps_the_most_probable_keys_up_to_the_mass():
    g = torch.Generator().manual_seed(4)
    p = torch.softmax(torch.randn(5, 12, generator=g) * 2, -1).double()
    valid = torch.ones_like(p, dtype=torch.bool)
    for mass in (0.05, 0.2, 0.5):
        keep = sanger_mass_keep(p, valid, mass)
        for r in range(5):
            order = torch.argsort(p[r], descending=True)
            cum, want = 0.0, torch.zeros(12, dtype=torch.bool)
            for j in order.tolist():
                if cum < 1 - mass:
                    want[j] = True
                cum += float(p[r, j])
            assert torch.equal(keep[r], want)
    q, k, km = _qk(5)
    ff, fi = SangerFilter(mass=0.2, integer=False), SangerFilter(mass=0.2)
    agree = (ff.mask(q, k, km) == fi.mask(q, k, km))[valid_pairs(km, 3)].double().mean()
    assert agree > 0.85                                            # different 4-bit grids


def test_layer_masses_and_knob_errors():
    q, k, km = _qk(6)
    lm = SangerFilter(layer_masses=[0.0, 0.25])
    assert torch.equal(lm.mask(q, k, km, layer=1), SangerFilter(mass=0.25).mask(q, k, km, layer=1))
    assert lm.setting() == "mass_layers=0/0.25" and SangerFilter(mass=0.1).setting() == "mass=0.1"
    with pytest.raises(UserValueError, match="layer 2 has no Sanger mass"):
        lm.mask(q, k, km, layer=2)
    with pytest.raises(UserValueError, match="not both"):
        SangerFilter(threshold=0.01, mass=0.1)
    with pytest.raises(UserValueError, match="not both"):
        SangerFilter(layer_thresholds=[0.01], layer_masses=[0.1])
    with pytest.raises(UserValueError, match=r"mass .* must be in \[0, 1\)"):
        SangerFilter(mass=1.0)
    with pytest.raises(UserValueError, match="layer_masses\\[1\\]"):
        SangerFilter(layer_masses=[0.1, -0.1])
