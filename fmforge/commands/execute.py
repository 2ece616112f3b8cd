"""``fmforge execute``: run a plan bit-accurately and compare with the float model."""

from __future__ import annotations

import argparse
import os
from typing import Any

from fmforge.commands._args import SEED, add_json, float_range, int_range
from golden.errors import UserValueError

__all__ = ["generation_report", "register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``execute`` command to the CLI."""
    p = subparsers.add_parser("execute", help="run a plan bit-accurately and compare with float",
                              description="Run every op where the plan placed it (golden integer "
                                          "models on accelerators, PyTorch on CPU/GPU) and report "
                                          "the cosine similarity with the float model.")
    p.add_argument("plan", help="plan JSON written by 'fmforge compile'")
    p.add_argument("--sentences", help="text file, one sentence per line (MiniLM plans; default: "
                   "the shipped set)")
    p.add_argument("--limit", type=int_range(1, 2**20), help="run at most this many inputs "
                   "(with --generate: prompts)")
    gen = p.add_argument_group("greedy generation (decode-step plans: fmforge compile --phase "
                               "decode; compiler.generate)")
    gen.add_argument("--generate", type=int_range(1, 513), metavar="N",
                     help="run the prompts (prefill) and greedy decode steps through the plan's "
                     "decode step with its KV cache, N generated tokens per prompt, and report "
                     "token agreement with the float model's greedy tokens (free-running and "
                     "teacher-forced), logits/hidden cosine per step and the float top-1 margin")
    gen.add_argument("--prompts", metavar="FILE", help="token ids, one prompt a line (spaces or "
                     "commas between ids; default: random prompts)")
    gen.add_argument("--n-prompts", type=int_range(1, 4096), default=None, metavar="K",
                     help="random prompts to draw (default 8)")
    gen.add_argument("--prompt-len", type=int_range(1, 512), default=None, metavar="P",
                     help="tokens per random prompt (default 8)")
    gen.add_argument("--prompt-seed", type=SEED, default=None,
                     help="seed of the random prompts (default 0)")
    p.add_argument("--jobs", type=int_range(1, 256), default=None, metavar="N",
                   help="processes running the inputs (default: the CPUs this process may use); "
                        "the results do not depend on it")
    g = p.add_argument_group("crossbar non-idealities (imc devices; golden.imc)")
    g.add_argument("--imc-noise", choices=("ideal", "realistic"), default="ideal",
                   help="programming/read noise and ADC offset: ideal (default) or realistic "
                        "(golden.imc.REALISTIC_NOISE)")
    g.add_argument("--imc-stuck-rate", type=float_range(0, 0.5), default=0.0,
                   help="fraction of cells stuck (half on, half off; default 0)")
    g.add_argument("--imc-drift-s", type=float_range(0, 1e10), default=0.0,
                   help="seconds since programming (power-law drift, compensated; default 0)")
    g.add_argument("--imc-spare-cols", type=int_range(0, 1024),
                   help="spare columns per crossbar for fault remapping (default: the device's)")
    g.add_argument("--seed", type=SEED, default=0, help="seed of the non-ideality draw (default 0)")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Execute the plan; return cosine_min, cosine_mean, max_abs_err, n_inputs."""
    import torch

    from compiler.execute import execute_plan
    from compiler.imc_run import ImcRun, fault_noise
    from compiler.models import load_sentences
    from compiler.plan import load_plan
    from golden.imc import REALISTIC_NOISE, CrossbarNoise

    gen_opts = [o for o, v in (("--prompts", args.prompts), ("--n-prompts", args.n_prompts),
                               ("--prompt-len", args.prompt_len),
                               ("--prompt-seed", args.prompt_seed)) if v is not None]
    if args.generate is None and gen_opts:
        raise UserValueError(f"{gen_opts[0]} applies to --generate only")
    if args.generate is not None and args.sentences:
        raise UserValueError("--sentences applies to MiniLM plans, not to --generate (use "
                             "--prompts FILE of token ids)")
    if args.prompts and (args.n_prompts is not None or args.prompt_len is not None
                         or args.prompt_seed is not None):
        raise UserValueError("--prompts FILE gives the prompts: leave out --n-prompts, "
                             "--prompt-len and --prompt-seed")
    plan = load_plan(args.plan)
    torch.set_num_threads(1)
    sents = load_sentences(args.sentences) if args.sentences else None
    base = REALISTIC_NOISE if args.imc_noise == "realistic" else CrossbarNoise()
    imc = ImcRun(fault_noise(base, args.imc_stuck_rate, args.imc_drift_s), seed=args.seed,
                 spare_cols=args.imc_spare_cols)
    if args.generate is not None:
        return _generate(args, plan, imc)
    jobs = args.jobs if args.jobs is not None else len(os.sched_getaffinity(0))
    r = execute_plan(plan, sentences=sents, limit=args.limit, imc=imc, jobs=jobs)
    if not args.json:
        print(f"{r['model']}: {r['n_inputs']} inputs, cosine vs float min {r['cosine_min']:.5f} "
              f"mean {r['cosine_mean']:.5f}, max abs err {r['max_abs_err']:.4g}; ops per device "
              + ", ".join(f"{k} {v}" for k, v in sorted(r["ops_per_device"].items()))
              + (f"; crossbars: {r['imc']['faulty_cells']} stuck cells in use, "
                 f"{r['imc']['remapped_columns']} columns on spares" if "imc" in r else ""))
    return r


def _generate(args: argparse.Namespace, plan: dict[str, Any], imc: Any) -> dict[str, Any]:
    """``--generate N``: greedy generation through a decode-step plan."""
    from compiler.execute import rebuild_graph
    from compiler.generate import (
        DEFAULT_PROMPT_LEN,
        DEFAULT_PROMPTS,
        decode_plan_shape,
        generate_plan,
        load_prompts,
        random_prompts,
    )

    decode_plan_shape(plan)  # refused before the graph is rebuilt
    graph = rebuild_graph(plan)
    vocab = int(graph[1].module.vocab)
    if args.prompts:
        prompts = load_prompts(args.prompts, vocab)
    else:
        prompts = random_prompts(vocab, args.n_prompts or DEFAULT_PROMPTS,
                                 args.prompt_len or DEFAULT_PROMPT_LEN, args.prompt_seed or 0)
    if args.limit:
        prompts = prompts[:args.limit]
    r = generate_plan(plan, args.generate, prompts, imc=imc, graph=graph)
    if not args.json:
        print(generation_report(r))
    return r


def generation_report(r: dict[str, Any]) -> str:
    """Human-readable report of :func:`compiler.generate.generate_plan`'s result."""
    lens = "/".join(str(n) for n in r["prompt_lens"])
    div = [d for d in r["first_divergence"] if d is not None]
    head = r["lm_head"]
    margin = r["float_margin_at_mismatch_mean"]
    lines = [
        f"{r['model']}: greedy generation, {r['n_prompts']} prompts of {lens} tokens, "
        f"{r['n_tokens']} tokens each; prefill and decode through the decode step "
        f"({r['chunk']} token(s) a run, KV cache of {r['context']} slots), "
        f"{r['graph_runs']} graph runs",
        f"token agreement with the float model: {r['token_agreement']:.3f} free-running "
        f"({r['exact_sequences']}/{r['n_prompts']} sequences identical"
        + (f"; first divergence at step {', '.join(str(d) for d in sorted(div))}" if div else "")
        + f"), {r['teacher_forced_agreement']:.3f} teacher-forced",
        f"teacher-forced cosine vs float: logits min {r['logits_cosine_min']:.5f} mean "
        f"{r['logits_cosine_mean']:.5f}, hidden min {r['hidden_cosine_min']:.5f} mean "
        f"{r['hidden_cosine_mean']:.5f}; float top-1 margin mean {r['float_margin_mean']:.4g}"
        + (f" ({margin:.4g} where the teacher-forced token differs)" if margin is not None
           else "")
        + f", largest logit error mean {r['logits_max_abs_err_mean']:.4g}; margin above twice "
        f"the error (argmax safe) at {100 * r['margin_exceeds_error']:.0f}% of the steps",
        f"LM head {head['op']} ({head['k']}x{head['n']}) on {head['device']}; GEMMs per device: "
        + ", ".join(f"{k} {v}" for k, v in sorted(r["gemms_per_device"].items())),
        "per step (free-running / teacher-forced agreement, teacher-forced logits cosine mean): "
        + "  ".join(f"{s['step']}: {s['agreement']:.2f}/{s['teacher_forced_agreement']:.2f}/"
                    f"{s['logits_cosine_mean']:.4f}" for s in r["steps"]),
    ]
    return "\n".join(lines)
