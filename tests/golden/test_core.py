"""The golden core: encodings, every instruction against the unit golden models, tokens, races."""

from __future__ import annotations

import pytest
import torch

from golden.core import (
    INSTR_BYTES,
    CoreError,
    CoreMemory,
    Instr,
    check_races,
    decode,
    decode_program,
    encode,
    encode_program,
    gelu_block,
    layernorm_block,
    run_program,
    schedule,
    softmax_block,
)
from golden.gelu import gelu_int, gelu_params, gelu_poly_float
from golden.gemm import gemm_int
from golden.layernorm import layernorm_int, layernorm_params
from golden.softmax import softmax_int, softmax_params

HALT = Instr("HALT")


def _i8(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randint(-128, 128, shape, generator=g, dtype=torch.int64)


def test_encode_decode_roundtrip():
    ins = Instr("GEMM", frozenset("D"), frozenset("S"),
                {"a": 1, "b": 4096, "c": 70000, "m": 128, "k": 384, "n": 64, "bias": 1,
                 "requant": 1, "bias_addr": 9000, "qp": 12000})
    raw = encode(ins)
    assert len(raw) == INSTR_BYTES
    assert decode(raw) == ins
    prog = [ins, Instr("LOAD", f={"ext": 5, "sp": 7, "rows": 2, "cols": 3, "ext_rs": 3,
                                  "sp_rs": 3, "sp_cs": 1}), HALT]
    assert decode_program(encode_program(prog)) == prog


@pytest.mark.parametrize("bad, msg", [
    (Instr("GEMM", f={"m": 1 << 16}), "field m = 65536 does not fit 16"),
    (Instr("GEMM", frozenset("M")), "cannot wait for or signal itself"),
    (Instr("GEMM", f={"zz": 1}), "unknown field 'zz'"),
    (Instr("HALT", frozenset("D")), "takes no tokens"),
])
def test_encode_errors(bad, msg):
    with pytest.raises(CoreError, match=msg):
        encode(bad)


def test_decode_illegal_opcode_names_pc():
    with pytest.raises(CoreError, match="pc 3: illegal opcode 0x1f"):
        decode(bytes([0x1F]) + bytes(31), 3)
    with pytest.raises(CoreError, match="must end with HALT"):
        encode_program([Instr("GEMM")])


def test_dma_transpose_and_head_split():
    g = torch.Generator().manual_seed(1)
    x = _i8(g, 6, 8)  # [S=6, H*d] with 2 heads of d=4
    mem = CoreMemory(1024, 1024)
    mem.write("ext", 100, x.to(torch.int8))
    # head 1 transposed into the scratchpad: sp[c * 6 + r] = x[r, 4 + c]
    prog = [Instr("LOAD", f={"ext": 104, "sp": 0, "rows": 6, "cols": 4, "ext_rs": 8,
                             "sp_rs": 1, "sp_cs": 6}),
            Instr("STORE", frozenset(), frozenset(), {"ext": 500, "sp": 0, "rows": 4, "cols": 6,
                                                      "ext_rs": 6, "sp_rs": 6, "sp_cs": 1}),
            HALT]
    run_program(prog, mem)
    assert torch.equal(mem.tensor("sp", 0, (4, 6)), x[:, 4:].T)
    assert torch.equal(mem.tensor("ext", 500, (4, 6)), x[:, 4:].T)


def test_dma_int32_elements_and_bounds():
    mem = CoreMemory(256, 64)
    v = torch.tensor([[-2**31, 5], [7, 2**31 - 1]])
    mem.write("ext", 0, v.to(torch.int32))
    run_program([Instr("LOAD", f={"ext": 0, "sp": 8, "rows": 2, "cols": 2, "esz": 2,
                                  "ext_rs": 8, "sp_rs": 4, "sp_cs": 8}), HALT], mem)
    assert torch.equal(mem.tensor("sp", 8, (2, 2), 4), v.T)
    with pytest.raises(CoreError, match=r"pc 0 \(LOAD\).*outside the scratchpad"):
        run_program([Instr("LOAD", f={"ext": 0, "sp": 60, "rows": 1, "cols": 8, "ext_rs": 8,
                                      "sp_rs": 8, "sp_cs": 1}), HALT], mem)


def _gemm_setup(g, m, k, n):
    a, b = _i8(g, m, k), _i8(g, k, n)
    bias = torch.randint(-2**20, 2**20, (n,), generator=g)
    mult = torch.randint(2**30, 2**31 - 1, (n,), generator=g)
    shift = torch.randint(30, 44, (n,), generator=g)
    mem = CoreMemory(64, 8192)
    mem.write("sp", 0, a.to(torch.int8))
    mem.write("sp", 1024, b.to(torch.int8))
    mem.write("sp", 2048, bias.to(torch.int32))
    mem.write("sp", 2304, torch.stack([mult, shift]).to(torch.int32))
    return mem, a, b, bias, mult, shift


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (5, 17, 9), (16, 33, 20)])
def test_gemm_matches_gemm_int(m, k, n):
    g = torch.Generator().manual_seed(m * 100 + k)
    mem, a, b, bias, mult, shift = _gemm_setup(g, m, k, n)
    base = {"a": 0, "b": 1024, "m": m, "k": k, "n": n, "bias_addr": 2048, "qp": 2304}
    run_program([Instr("GEMM", f={**base, "c": 4096}),
                 Instr("GEMM", f={**base, "c": 6144, "bias": 1, "requant": 1}), HALT], mem)
    assert torch.equal(mem.tensor("sp", 4096, (m, n), 4), gemm_int(a, b))
    assert torch.equal(mem.tensor("sp", 6144, (m, n)), gemm_int(a, b, bias, mult, shift))


def test_gemm_two_pass_int16_accumulate():
    g = torch.Generator().manual_seed(7)
    m, k, n = 4, 24, 6
    mem, hi, w, bias, *_ = _gemm_setup(g, m, k, n)
    lo = _i8(g, m, k)
    mem.write("sp", 512, lo.to(torch.int8))
    run_program([Instr("GEMM", f={"a": 0, "b": 1024, "c": 4096, "m": m, "k": k, "n": n}),
                 Instr("GEMM", f={"a": 512, "b": 1024, "c": 4096, "m": m, "k": k, "n": n,
                                  "acc": 1, "acc_shift": 8, "bias": 1, "bias_addr": 2048}),
                 HALT], mem)
    want = (256 * hi + lo) @ w + bias
    assert torch.equal(mem.tensor("sp", 4096, (m, n), 4), want)


def test_gemm_accumulate_saturates_int32():
    mem = CoreMemory(64, 256)
    mem.write("sp", 0, torch.tensor([127], dtype=torch.int8))
    mem.write("sp", 8, torch.tensor([127], dtype=torch.int8))
    mem.write("sp", 16, torch.tensor([2**30], dtype=torch.int32))
    run_program([Instr("GEMM", f={"a": 0, "b": 8, "c": 16, "m": 1, "k": 1, "n": 1, "acc": 1,
                                  "acc_shift": 4}), HALT], mem)
    assert mem.tensor("sp", 16, (1,), 4).item() == 2**31 - 1


def test_add_per_channel():
    g = torch.Generator().manual_seed(3)
    rows, cols = 3, 5
    a32 = torch.randint(-2**20, 2**20, (rows, cols), generator=g)
    b = _i8(g, rows, cols)
    ma = torch.randint(-2**22, 2**22, (cols,), generator=g)
    mb = torch.randint(-2**22, 2**22, (cols,), generator=g)
    mem = CoreMemory(64, 1024)
    mem.write("sp", 0, a32.to(torch.int32))
    mem.write("sp", 100, b.to(torch.int8))
    mem.write("sp", 200, torch.stack([ma, mb]).to(torch.int32))
    run_program([Instr("ADD", f={"a": 0, "b": 100, "y": 300, "rows": rows, "cols": cols,
                                 "mp": 200, "a32": 1, "shift": 30}), HALT], mem)
    acc = a32 * ma + b * mb
    want = torch.clamp(torch.floor(acc.double() / 2**30 + 0.5), -128, 127).long()
    assert torch.equal(mem.tensor("sp", 300, (rows, cols)), want)
    mem.write("sp", 200, torch.tensor([2**23, 0], dtype=torch.int32))
    with pytest.raises(CoreError, match="multipliers must be below"):
        run_program([Instr("ADD", f={"a": 0, "b": 100, "y": 300, "rows": 1, "cols": 1,
                                     "mp": 200}), HALT], mem)


def test_layernorm_runtime_params():
    g = torch.Generator().manual_seed(4)
    n, rows = 24, 3
    gamma = torch.rand(n, generator=g) + 0.5
    beta = torch.randn(n, generator=g)
    p = layernorm_params(n, 0.05, gamma, beta, 0.03, 1e-5)
    x = _i8(g, rows, n)
    mem = CoreMemory(64, 4096)
    mem.write("sp", 0, x.to(torch.int8))
    mem.write("sp", 512, layernorm_block(p))
    run_program([Instr("LAYERNORM", f={"x": 0, "y": 256, "rows": rows, "cols": n, "pp": 512}),
                 HALT], mem)
    assert torch.equal(mem.tensor("sp", 256, (rows, n)), layernorm_int(x, p))
    with pytest.raises(CoreError, match="block is for rows of 24, not 12"):
        run_program([Instr("LAYERNORM", f={"x": 0, "y": 256, "rows": 1, "cols": 12, "pp": 512}),
                     HALT], mem)


@pytest.mark.parametrize("half", [0, 1])
def test_softmax_runtime_scale_and_key_mask(half):
    g = torch.Generator().manual_seed(5)
    rows, n = 4, 10
    x = torch.randint(-5000, 5000, (rows, n), generator=g)
    km = torch.tensor([1, 1, 0, 1, 1, 1, 0, 0, 1, 1])
    p = softmax_params(0.004)
    mem = CoreMemory(64, 1024)
    mem.write("sp", 0, x.to(torch.int32))
    mem.write("sp", 200, km.to(torch.int8))
    mem.write("sp", 220, softmax_block(p))
    run_program([Instr("SOFTMAX", f={"x": 0, "y": 300, "rows": rows, "cols": n, "km": 200,
                                     "pp": 220, "x32": 1, "mask": 1, "half": half}), HALT], mem)
    want = softmax_int(x, p, (km != 0).expand(rows, n))
    if half:
        want = torch.clamp((want + 1) >> 1, max=127)
    got = mem.tensor("sp", 300, (rows, n)) & 0xFF  # uint8 probabilities (half: 0..127)
    assert torch.equal(got, want)
    assert int(got[:, [2, 6, 7]].abs().sum()) == 0


def test_gelu_int8_and_split16():
    x = torch.arange(-128, 128)
    p8 = gelu_params(0.05, 0.04)
    p16 = gelu_params(0.05, 0.04 / 256)
    mem = CoreMemory(64, 2048)
    mem.write("sp", 0, x.to(torch.int8))
    mem.write("sp", 256, gelu_block(p8))
    mem.write("sp", 288, gelu_block(p16))
    run_program([Instr("GELU", f={"x": 0, "y": 512, "count": 256, "pp": 256}),
                 Instr("GELU", f={"x": 0, "y": 1024, "y_lo": 1280, "count": 256, "pp": 288,
                                  "split16": 1}), HALT], mem)
    assert torch.equal(mem.tensor("sp", 512, (256,)), gelu_int(x, p8))
    y16 = 256 * mem.tensor("sp", 1024, (256,)) + mem.tensor("sp", 1280, (256,))
    poly = gelu_poly_float(x.double() * 0.05) / (0.04 / 256)  # I-BERT's polynomial, float
    assert float((y16 - poly.clamp(-32640, 32639)).abs().max()) <= 2.0
    # the 8-bit GELU is the 16-bit one seen through a coarser requantizer
    assert float((y16.double() / 256 - gelu_int(x, p8)).abs().max()) <= 1.0


def test_tokens_order_and_deadlock():
    load = Instr("LOAD", frozenset(), frozenset("M"), {"ext": 0, "sp": 0, "rows": 1, "cols": 4,
                                                       "ext_rs": 4, "sp_rs": 4, "sp_cs": 1})
    gemm = Instr("GEMM", frozenset("D"), frozenset(), {"a": 0, "b": 0, "c": 8, "m": 1, "k": 1,
                                                       "n": 1})
    assert schedule([gemm, load, HALT]) == [1, 0]
    with pytest.raises(CoreError, match="deadlocks.*pc 0"):
        schedule([gemm, HALT])


def test_race_check():
    load = Instr("LOAD", f={"ext": 0, "sp": 0, "rows": 1, "cols": 4, "ext_rs": 4, "sp_rs": 4,
                            "sp_cs": 1})
    gemm = Instr("GEMM", f={"a": 0, "b": 0, "c": 8, "m": 1, "k": 1, "n": 1})
    with pytest.raises(CoreError, match="race: pc 1 .*pc 0"):
        check_races([load, gemm, HALT])
    ok = [Instr("LOAD", frozenset(), frozenset("M"), load.f),
          Instr("GEMM", frozenset("D"), frozenset(), gemm.f), HALT]
    check_races(ok)
    # a later load into the GEMM's operand, not ordered after the GEMM: write-after-read race
    with pytest.raises(CoreError, match="race"):
        check_races([*ok[:2], load, HALT])


def test_layernorm_wide_twin_and_add_int16():
    g = torch.Generator().manual_seed(9)
    n, rows = 16, 2
    p = layernorm_params(n, 0.05, torch.rand(n, generator=g) + 0.5, torch.randn(n, generator=g),
                         0.03, 1e-5)
    x = _i8(g, rows, n)
    mem = CoreMemory(64, 4096)
    mem.write("sp", 0, x.to(torch.int8))
    mem.write("sp", 512, layernorm_block(p))
    mem.write("sp", 1536, torch.tensor([[3] * n, [-5] * n], dtype=torch.int32))
    prog = [Instr("LAYERNORM", f={"x": 0, "y": 256, "rows": rows, "cols": n, "pp": 512,
                                  "out16": 1, "y16": 1024}),
            Instr("ADD", f={"a": 0, "b": 1024, "y": 2048, "rows": rows, "cols": n, "mp": 1536,
                            "b16": 1, "out32": 1, "shift": 2}), HALT]
    run_program(prog, mem)
    y8 = mem.tensor("sp", 256, (rows, n))
    y16 = mem.tensor("sp", 1024, (rows, n), 2)
    assert torch.equal(y8, layernorm_int(x, p))
    # the twin is the same accumulator rounded 8 bits later: y8 is y16 rounded by 256
    assert int((torch.floor(y16.double() / 256 + 0.5) - y8).abs().max()) <= 1
    assert int((y16 - 256 * y8).abs().max()) <= 128
    want = torch.floor((3 * x - 5 * y16).double() / 4 + 0.5).long()
    assert torch.equal(mem.tensor("sp", 2048, (rows, n), 4), want)
