"""``fmforge execute``: run a plan bit-accurately and compare with the float model."""

from __future__ import annotations

import argparse
from typing import Any

from fmforge.commands._args import SEED, add_json, float_range, int_range

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``execute`` command to the CLI."""
    p = subparsers.add_parser("execute", help="run a plan bit-accurately and compare with float",
                              description="Run every op where the plan placed it (golden integer "
                                          "models on accelerators, PyTorch on CPU/GPU) and report "
                                          "the cosine similarity with the float model.")
    p.add_argument("plan", help="plan JSON written by 'fmforge compile'")
    p.add_argument("--sentences", help="text file, one sentence per line (MiniLM plans; default: "
                   "the shipped set)")
    p.add_argument("--limit", type=int_range(1, 2**20), help="run at most this many inputs")
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

    plan = load_plan(args.plan)
    torch.set_num_threads(1)
    sents = load_sentences(args.sentences) if args.sentences else None
    base = REALISTIC_NOISE if args.imc_noise == "realistic" else CrossbarNoise()
    imc = ImcRun(fault_noise(base, args.imc_stuck_rate, args.imc_drift_s), seed=args.seed,
                 spare_cols=args.imc_spare_cols)
    r = execute_plan(plan, sentences=sents, limit=args.limit, imc=imc)
    if not args.json:
        print(f"{r['model']}: {r['n_inputs']} inputs, cosine vs float min {r['cosine_min']:.5f} "
              f"mean {r['cosine_mean']:.5f}, max abs err {r['max_abs_err']:.4g}; ops per device "
              + ", ".join(f"{k} {v}" for k, v in sorted(r["ops_per_device"].items()))
              + (f"; crossbars: {r['imc']['faulty_cells']} stuck cells in use, "
                 f"{r['imc']['remapped_columns']} columns on spares" if "imc" in r else ""))
    return r
