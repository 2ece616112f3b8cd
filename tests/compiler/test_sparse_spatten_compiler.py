"""SpAtten through the compiler: ``--sparse spatten:...`` prunes tokens and heads (its state
advances in ``mask`` and restarts with every input)."""

from __future__ import annotations

from compiler.driver import compile_model
from compiler.execute import execute_plan
from compiler.passes.sparsify import reset_sparse_filters, sparse_filters


def test_spatten_through_the_compiler_prunes():
    c = compile_model("minilm", "asic,cpu:mode=roofline",
                      sparse="spatten:token_keep=0.5:head_keep=0.5")
    att = [o for o in c.plan["ops"] if o["op"] == "attention"]
    assert len(att) == 6 and all(o["sparse_filter"]["name"] == "spatten" for o in att)
    sent = "the cat sat on the mat while the dog slept by the door"
    r1 = execute_plan(c.plan, sentences=[sent])
    # layer 0 dense, layers 1-5 keep 75 %..25 % of the tokens, heads halved from layer 2:
    # about 0.4 of the real pairs; keep 1.0 was the bug (the state never advanced in mask)
    assert 0.15 < r1["sparse_keep_ratio"] < 0.6, r1["sparse_keep_ratio"]
    # the same sentence twice: the state restarts with every input, so the ratio is the same
    r2 = execute_plan(c.plan, sentences=[sent, sent])
    assert r2["sparse_keep_ratio"] == r1["sparse_keep_ratio"]
    assert callable(getattr(sparse_filters()["spatten"], "reset", None))
    reset_sparse_filters()
