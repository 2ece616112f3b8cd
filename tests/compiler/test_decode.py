"""Decode steps (``fmforge compile --phase decode --context T``): a built-in decoder's step on new
tokens with its KV cache as inputs, equal to the model's own incremental forward, compiled with
its GEMVs on the accelerator and executed against float on held-out caches."""

from __future__ import annotations

import pytest
import torch

from compiler.driver import compile_model
from compiler.execute import execute_plan
from compiler.frontend import load_model
from fmforge.cli import main


def test_decode_step_equals_the_full_forward():
    lm = load_model("llama-tiny/decode@7", 2)
    step = lm.module
    ids, pos, *kv = lm.example_inputs
    assert ids.shape == (1, 2) and pos.tolist() == [[7, 8]] and len(kv) == 4
    assert kv[0].shape == (1, 2, 7, 16)  # grouped-query attention: 2 key/value heads
    # the step after a prefill of prompt P == the last rows of the forward over P + new tokens
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(0, step.vocab, (1, 7), generator=g)
    with torch.no_grad():
        cache = step.m(input_ids=prompt, use_cache=True).past_key_values
        kv = [t for layer in cache.layers for t in (layer.keys, layer.values)]
        got = step(ids, pos, *kv)
        full = step.m(input_ids=torch.cat([prompt, ids], 1), use_cache=False).last_hidden_state
    assert torch.allclose(got, full[:, -2:], atol=1e-5)


def test_decode_plan_puts_the_gemvs_on_the_accelerator_and_executes():
    c = compile_model("llama-tiny/decode@15", "asic,cpu:mode=roofline", "energy")
    assert c.plan["model"]["source"] == "llama-tiny/decode@15" and c.plan["model"]["seq_len"] == 1
    lin = [o for o in c.plan["ops"] if o["op"] == "linear"]
    assert len(lin) == 14 and all(o["device"] == "asic" for o in lin)
    r = execute_plan(c.plan, limit=3)  # held-out steps: real caches of other random prompts
    assert r["n_inputs"] == 3 and r["cosine_min"] > 0.99


@pytest.mark.parametrize(("argv", "message"), [
    (["--phase", "decode"], "--phase decode needs --context T"),
    (["--context", "8"], "--context applies to --phase decode only"),
    (["--model", "minilm", "--phase", "decode", "--context", "8"],
     "a decode step needs a built-in decoder"),
    (["--phase", "decode", "--context", "0"], "--context"),
])
def test_decode_cli_errors(argv, message, tmp_path, capsys):
    base = ["compile", "--model", "gpt2-tiny", "--devices", "cpu", "-o", str(tmp_path / "p.json")]
    args = base + argv
    if "--model" in argv:
        args = ["compile", *argv, "--devices", "cpu", "-o", str(tmp_path / "p.json")]
    try:
        rc = main(args)
    except SystemExit as e:  # argparse's own range check
        rc = e.code
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()
