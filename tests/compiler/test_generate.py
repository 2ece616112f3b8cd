"""Greedy generation through a decode-step plan (``fmforge execute PLAN --generate N``,
:func:`compiler.generate.generate_plan`): prefill and decode steps through the executor with its
own KV cache, against the float model's own incremental greedy generation.

Without quantization the executor must reproduce the float model's tokens, logits and hidden
states to float precision at every step: the reference is transformers' own cache (no slots, no
mask), so a cache slot written wrong, a position off by one, a mask that lets an empty slot in
or a chunk's pad row leaking into a real row shows up at once. With quantization the numbers
must move (and stay close)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from compiler.driver import compile_model
from compiler.execute import make_impl, rebuild_graph
from compiler.generate import (
    StaticKVCache,
    cache_slots_needed,
    fill_cosines,
    float_greedy,
    generate_plan,
    load_prompts,
    random_prompts,
)
from compiler.interp import run_graph
from fmforge.cli import main
from golden.errors import UserValueError


def _compile(spec, seq_len=None):
    """The plan (every GEMM on the asic under the energy objective; no accuracy budget and 8
    calibration samples keep the compile short) and its rebuilt graph."""
    plan = compile_model(spec, "asic,cpu:mode=roofline", "energy", seq_len=seq_len,
                         min_cosine=None, calib=8).plan
    return plan, rebuild_graph(plan)


@pytest.fixture(scope="module")
def gpt2():
    """gpt2-tiny's decode step, one token a run, 8 cache slots."""
    return _compile("gpt2-tiny/decode@8")


@pytest.fixture(scope="module")
def llama():
    """llama-tiny's decode step, 2 tokens a run (chunked prefill, padded decode), 8 slots."""
    return _compile("llama-tiny/decode@8", 2)


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_without_quantization_generation_is_the_float_models(which, request):
    plan, graph = request.getfixturevalue(which)
    prompts = random_prompts(1000, 2, 5, seed=3)
    r = generate_plan(plan, 4, prompts, quantize=False, graph=graph)
    assert r["token_agreement"] == 1.0 and r["teacher_forced_agreement"] == 1.0
    assert r["exact_sequences"] == 2 and r["first_divergence"] == [None, None]
    assert r["logits_cosine_min"] > 1 - 1e-9 and r["hidden_cosine_min"] > 1 - 1e-9
    assert r["logits_max_abs_err_mean"] < 1e-5 and r["margin_exceeds_error"] == 1.0
    for p in r["prompts"]:
        assert p["tokens"] == p["float_tokens"] == float_greedy(graph[1].module, p["prompt"], 4)[0]
    # runs: the prompt in chunks of the plan's seq_len, then one run per decode step
    chunk = plan["model"]["seq_len"]
    assert r["chunk"] == chunk and r["graph_runs"] == 2 * (-(-5 // chunk) + 3)


def test_quantized_generation_on_the_accelerator(gpt2):
    plan, graph = gpt2
    r = generate_plan(plan, 4, random_prompts(1000, 3, 5), graph=graph)
    assert r["lm_head"] == {"op": r["lm_head"]["op"], "device": "asic", "k": 128, "n": 1000}
    assert r["gemms_per_device"] == {"asic": 9}  # 8 layer GEMVs and the LM head
    # quantization is real: the logits move, but stay close
    assert 0.9 < r["logits_cosine_min"] < 1 - 1e-6 and 0.9 < r["hidden_cosine_mean"] < 1 - 1e-6
    assert 0.5 <= r["teacher_forced_agreement"] <= 1.0
    assert r["float_margin_mean"] > 0 and len(r["steps"]) == 4
    # a step whose float margin exceeds twice the logit error cannot have flipped
    assert r["margin_exceeds_error"] <= r["teacher_forced_agreement"]
    assert r["logits_max_abs_err_mean"] > 1e-4
    for p in r["prompts"]:
        d = p["first_divergence"]
        n = 4 if d is None else d
        assert p["tokens"][:n] == p["float_tokens"][:n]
        assert d is None or p["tokens"][d] != p["float_tokens"][d]


def test_quantized_step_is_accurate_at_low_cache_fills(gpt2):
    """A prompt's first tokens run on an (almost) empty cache: the attention output is one or
    two value rows, not an average, and the output projections' values are several times those
    of a full cache. Calibration at fills spread over 0..T (more of them low) and per-channel
    output scales pooled over channels (few rows per sample) keep those steps accurate; with
    the earlier calibration (half the samples on a full cache, each channel its own maximum of
    8 rows) fill 0 reached logits cosine 0.871 here, with only the fills changed 0.967, with
    only the pooled scales 0.930."""
    plan, graph = gpt2
    step = graph[1].module
    assert step.calibration_fills(8) == [0, 0, 1, 1, 3, 4, 6, 8]
    r = fill_cosines(plan, [0, 1, 2, 8], steps=2, graph=graph)
    for f, c in r.items():
        assert min(c["logits_min"], c["hidden_min"]) >= 0.98, (f, c)
        assert c["logits_min"] < 1 - 1e-6  # quantized
    # the empty cache is no longer far behind the full one
    assert r[0]["logits_mean"] >= r[8]["logits_mean"] - 0.015


def test_free_running_and_teacher_forced_tokens_are_the_executors_greedy_chains(gpt2):
    """A coarse LM-head input scale makes the executor's tokens diverge; the free-running tokens
    must then be a plain greedy loop of the executor, and the teacher-forced ones its argmax with
    the float model's tokens fed."""
    plan, graph = gpt2
    plan = copy.deepcopy(plan)
    head = next(o for o in plan["ops"] if o["name"] == graph[0].outputs[0].name)
    head["quant"]["in_scales"] = [s * 24 for s in head["quant"]["in_scales"]]
    g, lm = rebuild_graph(plan)
    prompts = random_prompts(1000, 3, 4, seed=1)
    r = generate_plan(plan, 5, prompts, graph=(g, lm))
    assert any(d is not None for d in r["first_divergence"]), "no divergence to check"
    assert r["teacher_forced_agreement"] < 1.0
    impl = make_impl(g, plan)

    def run(inputs):
        return run_graph(g, inputs, impl=impl)

    for p in r["prompts"]:
        free = StaticKVCache(run, lm.example_inputs, 1)
        toks = [int(free.feed(p["prompt"])[0][-1].argmax())]
        for _ in range(4):
            toks.append(int(free.feed([toks[-1]])[0][-1].argmax()))
        assert toks == p["tokens"]
        tf = StaticKVCache(run, lm.example_inputs, 1)
        forced = [int(tf.feed([t])[0][-1].argmax()) for t in p["prompt"] + p["float_tokens"][:4]]
        assert forced[len(p["prompt"]) - 1:] == p["teacher_forced_tokens"]


def test_static_cache_with_the_float_step_is_the_models_incremental_forward(llama):
    """The runtime with the float module as the step equals transformers' own greedy run;
    forgetting the cache (a cleared mask) does not."""
    plan, (g, lm) = llama
    step = lm.module
    prompt = random_prompts(1000, 1, 5, seed=7)[0]
    toks, logits, _ = float_greedy(step, prompt, 3)

    def run(inputs):
        with torch.no_grad():
            return step(*inputs)

    c = StaticKVCache(run, lm.example_inputs, 2)
    lg, _ = c.feed(prompt)
    assert c.filled == 5 and c.mask.tolist() == [[1] * 5 + [0] * 3]
    assert torch.allclose(lg[-1], logits[0], atol=1e-5)
    lg, _ = c.feed([toks[0]])
    assert torch.allclose(lg[-1], logits[1], atol=1e-5)
    c.mask.zero_()  # a runtime that loses its cache
    lg, _ = c.feed([toks[1]])
    assert not torch.allclose(lg[-1], logits[2], atol=1e-3)


def test_cache_capacity_and_prompt_errors(gpt2, tmp_path):
    plan, graph = gpt2
    assert cache_slots_needed(5, 4, 1) == 7 and cache_slots_needed(5, 1, 2) == 4
    with pytest.raises(UserValueError, match="need a KV cache of 9 slots.*has 8"):
        generate_plan(plan, 4, [[1] * 7], graph=graph)
    with pytest.raises(UserValueError, match="outside the model's vocabulary"):
        generate_plan(plan, 2, [[1, 1000]], graph=graph)
    f = tmp_path / "p.txt"
    f.write_text("# two prompts\n1 2 3\n\n4, 5\n")
    assert load_prompts(f, 1000) == [[1, 2, 3], [4, 5]]
    f.write_text("1 two 3\n")
    with pytest.raises(UserValueError, match="line 1: 'two' is not a token id"):
        load_prompts(f, 1000)


def _cli(capsys, *argv):
    try:
        rc = main(list(argv))
    except SystemExit as e:
        rc = e.code
    return rc, *capsys.readouterr()


def test_cli_generate(gpt2, tmp_path, capsys):
    plan, _ = gpt2
    p = tmp_path / "d.json"
    p.write_text(json.dumps(plan))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("5 6 7\n8 9 10 11\n")
    rc, out, _ = _cli(capsys, "execute", str(p), "--generate", "3", "--prompts", str(prompts),
                      "--json")
    assert rc == 0
    r = json.loads(out)
    assert r["n_prompts"] == 2 and r["prompt_lens"] == [3, 4] and r["n_tokens"] == 3
    assert [len(x["tokens"]) for x in r["prompts"]] == [3, 3]
    rc, out, _ = _cli(capsys, "execute", str(p), "--generate", "2", "--n-prompts", "1",
                      "--prompt-len", "3")
    assert rc == 0 and "token agreement with the float model" in out and "on asic" in out
    for argv, msg in [(["--generate", "9"], "need a KV cache of 15 slots"),
                      (["--prompt-len", "3"], "--prompt-len applies to --generate only"),
                      (["--generate", "2", "--prompts", str(prompts), "--n-prompts", "2"],
                       "--prompts FILE gives the prompts")]:
        rc, out, err = _cli(capsys, "execute", str(p), *argv)
        lines = err.strip().splitlines()
        assert rc == 2 and out == "" and len(lines) == 1 and msg in lines[0], err


def test_cli_generate_needs_a_decode_plan(tmp_path, capsys):
    plan = compile_model("encoder-tiny", "asic,cpu:mode=roofline").plan
    p = tmp_path / "e.json"
    p.write_text(json.dumps(plan))
    rc, out, err = _cli(capsys, "execute", str(p), "--generate", "2")
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == [
        "fmforge: error: --generate needs a decode-step plan (fmforge compile --model "
        "<decoder> --phase decode --context T); this plan's model is 'encoder-tiny', not a "
        "decode step"]
