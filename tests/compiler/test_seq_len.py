"""MiniLM at sequence length 128 on the asic: the accuracy budget applies by default.

Before: ``compile_model`` placed ops on cost alone unless ``min_cosine`` was given, so when the
cost model preferred the asic's layer-norm unit (at seq 128 with a host whose measured layer
norm was slow, or under the energy objective) all 13 int8 layer norms went there and the
executed cosine was 0.694 (0.99 at seq 32 only because the host won the layer norms there).
``fmforge compile`` had no ``--seq-len``.
"""

import pytest

from compiler.driver import DEFAULT_MIN_COSINE, compile_model
from compiler.execute import execute_plan
from compiler.frontend import MAX_SEQ_LEN
from fmforge import cli
from fmforge.commands._args import SEQ_LEN
from golden.errors import UserValueError


def _cli(argv):
    saved = cli.COMMAND_MODULES
    cli.COMMAND_MODULES = tuple(dict.fromkeys((*saved, "compile")))
    try:
        return cli.main(argv)
    finally:
        cli.COMMAND_MODULES = saved


def test_minilm_seq128_asic_keeps_layer_norms_in_float():
    # energy: the asic's layer-norm unit is the cheaper placement (as the measured seq-128 host
    # cost made it under latency); no min_cosine given: the default budget applies
    c = compile_model("minilm", "asic,cpu:mode=roofline", "energy", seq_len=128, calib=4)
    plan = c.plan
    assert plan["model"]["seq_len"] == 128 and plan["model"]["inputs"][0]["shape"] == [1, 128]
    where: dict[str, set[str]] = {}
    for o in plan["ops"]:
        where.setdefault(o["op"], set()).add(o["device"])
    assert where["linear"] == {"asic"} and "asic" not in where["layer_norm"]
    groups = {g["group"]: g for g in plan["accuracy"]["groups"]}
    # the optimum wanted the layer norms on the asic: measured, too lossy, kept in float
    assert groups["layer_norm"]["cosine"] < 0.9 and not groups["layer_norm"]["integer"]
    assert plan["accuracy"]["expected_cosine"] >= DEFAULT_MIN_COSINE
    r = execute_plan(plan, limit=2)
    assert r["n_inputs"] == 2 and r["cosine_mean"] >= 0.98  # was 0.69 with int8 layer norms


def test_cli_seq_len_reaches_compile_model(tmp_path, monkeypatch, capsys):
    import compiler.driver

    def stub(*args, **kw):
        raise UserValueError(f"stub seq_len={kw.get('seq_len')!r}")

    monkeypatch.setattr(compiler.driver, "compile_model", stub)
    out = str(tmp_path / "p.json")
    assert _cli(["compile", "--seq-len", "128", "-o", out]) == 2
    assert "stub seq_len=128" in capsys.readouterr().err
    assert _cli(["compile", "-o", out]) == 2  # absent: the model's own default
    assert "stub seq_len=None" in capsys.readouterr().err


def test_compile_model_applies_the_cli_budget_by_default():
    c = compile_model("encoder-tiny", "asic,cpu:mode=roofline")
    assert c.plan["accuracy"]["min_cosine"] == DEFAULT_MIN_COSINE
    assert "accuracy" not in compile_model("encoder-tiny", "asic,cpu:mode=roofline",
                                           min_cosine=None).plan


@pytest.mark.parametrize("bad", ["0", "513", "x"])
def test_seq_len_option_bounded(bad, capsys):
    assert (SEQ_LEN.lo, SEQ_LEN.hi) == (1, MAX_SEQ_LEN)
    with pytest.raises(SystemExit) as e:
        _cli(["compile", "--seq-len", bad, "-o", "/nonexistent/p.json"])
    assert e.value.code == 2
    assert "--seq-len" in capsys.readouterr().err
