"""SpAtten's integer contract (``int_params``, ``mask_int``) and its top-k engine golden."""

from __future__ import annotations

import math

import pytest
import torch

from golden.softmax import softmax_int, softmax_params
from golden.sparse.base import quantize_qk_int8, stable_topk_mask
from golden.sparse.spatten import (
    SpattenFilter,
    SpattenIntState,
    keep_q16,
    spatten_keep_count,
    spatten_radix_select,
    spatten_step_int,
)


def _codes(seed: int, b: int = 2, h: int = 3, n: int = 10, d: int = 16, pad: int = 3):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=g) * 2
    k = torch.randn(b, h, n, d, generator=g) * 2
    km = torch.ones(b, n, dtype=torch.bool)
    km[-1, n - pad:] = False
    return q, k, km


def _reference_layer(q8, k8, km, mult, shift, state, k_t, k_h):
    """Direct loops: per (b, h, i) softmax row over the candidates, importance sums, top-k by
    sorting (-value, index)."""
    b, h, lq, _ = q8.shape
    n = k8.shape[2]
    s_t, s_h = state.s_t.clone(), state.s_h.clone()
    sm = softmax_params(1.0)
    sm = type(sm)(mult, shift, sm.frac_bits, sm.table, sm.d_zero, 0.0)
    mask = torch.zeros(b, h, lq, n, dtype=torch.bool)
    for bb in range(b):
        for hh in range(h):
            if not state.heads[bb, hh]:
                continue
            for i in range(lq):
                if not km[bb, i]:
                    continue
                cand = [j for j in range(n) if km[bb, j] and state.tokens[bb, j]]
                mask[bb, hh, i, cand] = True
                x = torch.tensor([int((q8[bb, hh, i] * k8[bb, hh, j]).sum()) for j in cand])
                p = softmax_int(x, sm).tolist()
                for j, pj in zip(cand, p, strict=True):
                    s_t[bb, j] += pj
                s_h[bb, hh] += max(p)

    def topk(vals, alive, kk):
        idx = [j for j in range(len(vals)) if alive[j]]
        best = sorted(idx, key=lambda j: (-int(vals[j]), j))[:kk]
        return torch.tensor([j in best for j in range(len(vals))])

    tok = torch.stack([topk(s_t[bb], state.tokens[bb], int(k_t[bb])) for bb in range(b)])
    hed = torch.stack([topk(s_h[bb], state.heads[bb], int(k_h[bb])) for bb in range(b)])
    return mask, s_t, s_h, tok, hed


def test_int_params_are_the_softmax_constants_and_the_next_layers_keep():
    f = SpattenFilter(token_keep=0.5, head_keep=0.5, num_layers=6, msb_bits=6, lsb_bits=6, tau=0.2)
    p = f.int_params(0.05, 0.04, 32, layer=2)
    sm = softmax_params(0.05 * 0.04 / math.sqrt(32))
    assert (p["sm_mult"], p["sm_shift"]) == (sm.mult, sm.shift)
    assert p["token_keep_q16"] == keep_q16(f.token_keep_at(3)) == math.floor(0.5 * 65536) + 1
    assert p["head_keep_q16"] == keep_q16(0.5)
    assert p["msb_drop"] == 2 and p["tau_code"] == 51
    p0 = f.int_params(0.05, 0.04, 32, layer=0)        # layer 1: tokens pruned, heads not yet
    assert p0["token_keep_q16"] == keep_q16(0.75) and p0["head_keep_q16"] == 1 << 16
    assert all(isinstance(v, int) for v in p.values())
    with pytest.raises(ValueError, match="scale_q"):
        f.int_params(0.0, 0.04, 32)
    with pytest.raises(ValueError, match="d must be"):
        f.int_params(0.05, 0.04, 0)


def test_keep_count_is_floor_of_n_times_keep():
    f = SpattenFilter(token_keep=0.3, num_layers=12)
    keeps = {f.token_keep_at(layer) for layer in range(12)} | {0.5, 0.7, 0.35, 0.1, 1.0, 0.0}
    for keep in keeps:
        q16 = keep_q16(keep)
        n = torch.arange(0, 513)
        want = torch.clamp(torch.floor(n.double() * keep + 1e-9).to(torch.int64), min=1)
        assert torch.equal(spatten_keep_count(n, q16), want), keep


@pytest.mark.parametrize("seed", range(6))
def test_radix_select_is_the_stable_topk_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    bits = [3, 8, 12, 20, 5, 16][seed]
    for trial in range(60):
        n = int(torch.randint(1, 40, (1,), generator=g))
        levels = int(torch.randint(1, 6, (1,), generator=g))     # few distinct values: ties
        base = torch.randint(0, 1 << bits, (levels,), generator=g)
        v = base[torch.randint(0, levels, (n,), generator=g)]
        el = torch.rand(n, generator=g) < 0.8
        k = int(torch.randint(0, n + 2, (1,), generator=g))
        keep, passes = spatten_radix_select(v, el, k, bits)
        assert torch.equal(keep, stable_topk_mask(v, k, el)), (trial, v.tolist(), el.tolist(), k)
        assert 0 <= passes <= bits
        if k >= int(el.sum()):
            assert passes == 0
    # all tied: every bit is searched, then the first k in input order
    keep, passes = spatten_radix_select(torch.full((7,), 5), torch.ones(7, dtype=torch.bool), 3, 10)
    assert keep.tolist() == [True] * 3 + [False] * 4 and passes == 10
    # a unique top element: the search stops as soon as the prefix isolates it
    keep, passes = spatten_radix_select(torch.tensor([1, 2, 900, 3]), torch.ones(4, dtype=torch.bool), 1, 10)
    assert keep.tolist() == [False, False, True, False] and passes == 1
    with pytest.raises(ValueError, match="2\\*\\*4"):
        spatten_radix_select(torch.tensor([16]), torch.tensor([True]), 1, 4)


def test_mask_int_equals_direct_loops_over_three_layers():
    q, k, km = _codes(1)
    q8, sq = quantize_qk_int8(q, km)
    k8, sk = quantize_qk_int8(k, km)
    f = SpattenFilter(token_keep=0.4, head_keep=0.5, num_layers=3)
    state = None
    for layer in range(3):
        prm = f.int_params(sq, sk, q.shape[-1], layer=layer)
        res = f.mask_int(q8, k8, km, prm, state)
        ref_state = state if state is not None else SpattenIntState(
            torch.zeros(2, 10, dtype=torch.int64), torch.zeros(2, 3, dtype=torch.int64), km.clone(),
            torch.ones(2, 3, dtype=torch.bool))
        k_t = torch.clamp((km.sum(-1) * prm["token_keep_q16"]) >> 16, min=1)
        k_h = torch.clamp((torch.full((2,), 3) * prm["head_keep_q16"]) >> 16, min=1)
        mask, s_t, s_h, tok, hed = _reference_layer(q8, k8, km, prm["sm_mult"], prm["sm_shift"],
                                                   ref_state, k_t, k_h)
        assert torch.equal(res.mask, mask), layer
        assert torch.equal(res.state.s_t, s_t) and torch.equal(res.state.s_h, s_h), layer
        assert torch.equal(res.state.tokens, tok) and torch.equal(res.state.heads, hed), layer
        assert res.state.s_t.dtype == torch.int64 and res.state.s_h.dtype == torch.int64
        # surviving tokens and heads of this layer: ascending indices, -1 padded
        for bb in range(2):
            t = [int(x) for x in res.tokens[bb] if x >= 0]
            assert t == ref_state.tokens[bb].nonzero().flatten().tolist()
            hh = [int(x) for x in res.heads[bb] if x >= 0]
            assert hh == ref_state.heads[bb].nonzero().flatten().tolist()
        state = res.state
    # the cascade pruned: layer 2 ran on fewer tokens and heads than layer 0
    assert int(state.tokens.sum()) < int(km.sum()) and int(state.heads.sum()) < 6


def test_integer_mask_is_the_contract_and_advances_the_state():
    q, k, km = _codes(2, n=12)
    f = SpattenFilter(token_keep=0.5, head_keep=0.5, num_layers=4)
    masks = [f.mask(q * (1 + 0.1 * layer), k, km, layer=layer) for layer in range(4)]
    g = SpattenFilter(token_keep=0.5, head_keep=0.5, num_layers=4)
    state = None
    for layer in range(4):
        q8, sq = quantize_qk_int8(q * (1 + 0.1 * layer), km)
        k8, sk = quantize_qk_int8(k, km)
        res = g.mask_int(q8, k8, km, g.int_params(sq, sk, 16, layer=layer), state)
        assert torch.equal(res.mask, masks[layer]), layer
        state = res.state
    kept = [int(m.sum()) for m in masks]
    assert kept == sorted(kept, reverse=True) and kept[-1] < kept[0] / 2
    # layer 0 starts a new batch: the same layer again gives the same (dense) mask
    again = f.mask(q, k, km, layer=0)
    assert torch.equal(again, masks[0])
    assert len(f.trace.tokens) == 1


def test_state_of_pruned_heads_and_tokens_does_not_grow():
    g = torch.Generator().manual_seed(3)
    b, h, lq, n = 1, 4, 5, 6
    st = SpattenIntState(torch.tensor([[7, 0, 3, 9, 9, 1]]), torch.tensor([[5, 5, 0, 2]]),
                         torch.tensor([[True, False, True, True, True, False]]),
                         torch.tensor([[True, False, True, True]]))
    p = torch.randint(0, 256, (b, h, lq, n), generator=g)
    nxt = spatten_step_int(st, p, 2, 2)
    gate_t = st.tokens[0]
    assert torch.equal(nxt.s_t[0, ~gate_t], st.s_t[0, ~gate_t])
    assert int(nxt.s_h[0, 1]) == 5
    want = st.s_t[0] + (p[0, st.heads[0]].sum((0, 1)) * gate_t)
    assert torch.equal(nxt.s_t[0], want)
    assert not (nxt.tokens & ~st.tokens).any() and not (nxt.heads & ~st.heads).any()
    with pytest.raises(ValueError, match="probs"):
        spatten_step_int(st, p + 1000, 2, 2)


def test_mask_int_rejects_bad_inputs_naming_them():
    q, k, km = _codes(4)
    q8, sq = quantize_qk_int8(q, km)
    k8, sk = quantize_qk_int8(k, km)
    f = SpattenFilter()
    prm = f.int_params(sq, sk, 16)
    with pytest.raises(ValueError, match="q must be an integer tensor"):
        f.mask_int(q, k8, km, prm)
    with pytest.raises(ValueError, match="k codes"):
        f.mask_int(q8, k8 * 2, km, prm)
    with pytest.raises(ValueError, match="token_keep_q16"):
        f.mask_int(q8, k8, km, {**prm, "token_keep_q16": 70000})
    with pytest.raises(ValueError, match="sm_mult"):
        f.mask_int(q8, k8, km, {kk: v for kk, v in prm.items() if kk != "sm_mult"})
    with pytest.raises(ValueError, match="state.s_t"):
        f.mask_int(q8, k8, km, prm, SpattenIntState(torch.zeros(1, 1, dtype=torch.int64),
                                                    torch.zeros(2, 3, dtype=torch.int64),
                                                    torch.ones(1, 1, dtype=torch.bool),
                                                    torch.ones(2, 3, dtype=torch.bool)))


def test_msb_pass_statistic():
    b, h, n, d = 1, 1, 20, 16
    km = torch.ones(b, n, dtype=torch.bool)
    q = torch.zeros(b, h, n, d)
    q[0, 0, :10, 0] = 6.0
    k = torch.zeros(b, h, n, d)
    k[0, 0, 3, 0] = 6.0
    for msb in (8, 4):
        f = SpattenFilter(token_keep=1.0, tau=0.1, msb_bits=msb, lsb_bits=12 - msb)
        f.mask(q, k, km)
        assert f.trace.lsb_refetch == [0.5]   # the 10 zero queries: uniform rows, 13/256 < 0.1
    f = SpattenFilter(token_keep=1.0, tau=1.0)
    f.mask(q, k, km)
    assert f.trace.lsb_refetch == [1.0]


def test_integer_and_float_twin_prune_alike_on_minilm():
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from compiler.models import capture_qk

    layers = capture_qk(2)
    fi = SpattenFilter(token_keep=0.5, head_keep=0.5, num_layers=len(layers))
    ff = SpattenFilter(token_keep=0.5, head_keep=0.5, num_layers=len(layers), integer=False)
    agree = total = 0
    for layer, (q, k, km) in enumerate(layers):
        mi, mf = fi.mask(q, k, km, layer=layer), ff.mask(q, k, km, layer=layer)
        agree += int((mi == mf).sum())
        total += mi.numel()
    # same algorithm; the uint8 probabilities move a few near-tied tokens or heads
    assert agree / total > 0.95
    ti, tf = fi.trace.tokens[-1], ff.trace.tokens[-1]
    assert torch.equal(ti.sum(-1), tf.sum(-1))                 # same k per sequence
    assert (ti & tf).sum() >= 0.8 * ti.sum()
