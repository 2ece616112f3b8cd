"""MiniLM on ReRAM crossbars under faults: embedding cosine vs stuck-at rate and drift time,
with and without spare-column remapping (table + PNG).

Every linear of MiniLM runs on an ``imc`` device (``golden.imc`` through the executor); the
rest on the CPU. Each point programs the crossbars with a seeded draw on top of a base noise
(``--base``: ideal or golden.imc.REALISTIC_NOISE) and reports the mean and minimum cosine of
the sentence embeddings against the float model. Mitigation: ``spare_cols`` spare bit lines per
crossbar onto which the post-programming test moves the columns with the largest stuck error
(golden.imc.program). The report gives, per mitigation, the first stuck rate at which the mean
cosine falls below 0.95.

    python benchmarks/imc_faults.py --sentences 4 --device imc:differential=1:crossbars=8192 \\
        --stuck 0,1e-4,1e-3,3e-3,1e-2 --drift 0,1e4,1e8 --spares 0,8 -o benchmarks/out/imc_faults
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="imc:differential=1:crossbars=8192")
    ap.add_argument("--sentences", type=int, default=4)
    ap.add_argument("--base", choices=("ideal", "realistic"), default="ideal")
    ap.add_argument("--stuck", type=_floats, default=[0, 1e-4, 1e-3, 3e-3, 1e-2])
    ap.add_argument("--drift", type=_floats, default=[0, 1e4, 1e8])
    ap.add_argument("--spares", type=lambda t: [int(v) for v in t.split(",")], default=[0, 8])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-o", "--out", default="benchmarks/out/imc_faults")
    a = ap.parse_args(argv)

    import torch

    from compiler.driver import compile_model
    from compiler.execute import execute_plan, rebuild_graph
    from compiler.imc_run import ImcRun, fault_noise
    from golden.imc import REALISTIC_NOISE, CrossbarNoise

    torch.set_num_threads(1)
    plan = compile_model("minilm", f"{a.device},cpu:mode=roofline").plan
    graph = rebuild_graph(plan)
    base = REALISTIC_NOISE if a.base == "realistic" else CrossbarNoise()
    rows = []

    def point(kind: str, value: float, spares: int) -> None:
        nz = fault_noise(base, value if kind == "stuck" else 0.0, value if kind == "drift" else 0.0)
        t0 = time.perf_counter()
        run = ImcRun(nz, seed=a.seed, spare_cols=spares)
        r = execute_plan(plan, limit=a.sentences, graph=graph, imc=run)
        rows.append({"sweep": kind, "value": value, "spare_cols": spares,
                     "cosine_mean": r["cosine_mean"], "cosine_min": r["cosine_min"],
                     **run.stats(), "seconds": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    for sp in a.spares:
        for v in a.stuck:
            point("stuck", v, sp)
        for v in a.drift:
            point("drift", v, sp)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {}
    for sp in a.spares:
        below = [r["value"] for r in rows if r["sweep"] == "stuck" and r["spare_cols"] == sp
                 and r["cosine_mean"] < 0.95]
        summary[f"stuck_rate_below_0.95_spares_{sp}"] = min(below) if below else None
    doc = {"device": a.device, "base": a.base, "sentences": a.sentences, "seed": a.seed,
           "rows": rows, "summary": summary}
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(out.with_suffix(".json"))
    print(f"{'sweep':6} {'value':>9} {'spares':>6} {'cos mean':>9} {'cos min':>9} {'stuck used':>10} "
          f"{'remapped':>8}")
    for r in rows:
        print(f"{r['sweep']:6} {r['value']:9.3g} {r['spare_cols']:6d} {r['cosine_mean']:9.5f} "
              f"{r['cosine_min']:9.5f} {r['faulty_cells']:10d} {r['remapped_columns']:8d}")
    print(json.dumps(summary))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind, label in ((axs[0], "stuck", "stuck-at cell rate"), (axs[1], "drift", "seconds after programming")):
        for sp in a.spares:
            pts = [(r["value"], r["cosine_mean"]) for r in rows if r["sweep"] == kind and r["spare_cols"] == sp]
            pts = [(max(x, 1e-6 if kind == "stuck" else 1.0), y) for x, y in pts]
            ax.plot(*zip(*pts, strict=True), marker="o", label=f"{sp} spare columns")
        ax.axhline(0.95, color="grey", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("MiniLM embedding cosine (mean)")
        ax.legend()
    fig.suptitle(f"{a.device}, base noise {a.base}, {a.sentences} sentences, seed {a.seed}")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png.tmp.png"))
    Path(out.with_suffix(".png.tmp.png")).replace(out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
