"""MiniLM on ReRAM crossbars under realistic noise and faults: embedding cosine vs stuck-at rate
and drift time, with and without fault mitigation (table + JSON + PNG).

Every linear of MiniLM runs on an ``imc`` device (``golden.imc`` through the executor); the
rest on the CPU (roofline mode, so that the placement does not depend on this machine's speed).
Each point programs the crossbars with a seeded draw on top of a base noise (``--base``:
golden.imc.REALISTIC_NOISE by default, or ideal) and reports the mean and minimum cosine of the
sentence embeddings against the float model. Stuck cells are split evenly between stuck-on and
stuck-off (``compiler.imc_run.fault_noise``); drift uses ``compiler.imc_run.DRIFT_NU`` with the
global compensation. Mitigations (``--mitigations``, the post-programming test of
``golden.imc.program``):

* ``none``: the device's mapping (differential weights, two-phase sign-magnitude inputs), no
  fault handling;
* ``spares``: ``--spare-cols`` spare bit lines per crossbar, the columns with the largest stuck
  error moved onto them (ATT-style remapping);
* ``fault-aware``: each differential pair re-encoded around its stuck cells;
* ``fault-aware+spares``: both (spares take the columns with the largest residual).

``--baseline`` adds one point with the old mapping (offset-binary weights and inputs) at the base
noise and no faults. The summary gives, per mitigation, the first swept stuck rate (and drift
time) at which the mean cosine falls below 0.95, and the rate where the log-linear
interpolation between the last point above and the first below crosses 0.95.

    python benchmarks/imc_faults.py --sentences 4 -o benchmarks/out/imc_faults
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

__all__ = ["main", "crossing"]

MITIGATIONS = {"none": (False, 0), "spares": (False, None), "fault-aware": (True, 0),
               "fault-aware+spares": (True, None)}


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def crossing(points: list[tuple[float, float]], level: float = 0.95) -> tuple[float | None, float | None]:
    """First swept value whose cosine is below ``level``, and the log-linear interpolation of
    the crossing between it and the point before (None when no point is below; the first value
    when the first point is already below)."""
    pts = sorted(points)
    for i, (x, y) in enumerate(pts):
        if y < level:
            if i == 0 or pts[i - 1][0] <= 0:
                return x, x
            x0, y0 = pts[i - 1]
            f = (y0 - level) / (y0 - y)
            return x, math.exp(math.log(x0) + f * (math.log(x) - math.log(x0)))
    return None, None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="imc", help="the imc device (default: its robust mapping)")
    ap.add_argument("--sentences", type=int, default=4)
    ap.add_argument("--base", choices=("ideal", "realistic"), default="realistic")
    ap.add_argument("--stuck", type=_floats,
                    default=[0, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 5e-2, 0.1])
    ap.add_argument("--drift", type=_floats, default=[1e2, 1e4, 1e6, 1e8])
    ap.add_argument("--mitigations", default="none,spares,fault-aware,fault-aware+spares",
                    help="comma-separated subset of " + ", ".join(MITIGATIONS))
    ap.add_argument("--drift-mitigations", default="none,fault-aware+spares")
    ap.add_argument("--spare-cols", type=int, default=8)
    ap.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-o", "--out", default="benchmarks/out/imc_faults")
    ap.add_argument("--from-json", nargs="+", metavar="JSON",
                    help="run nothing: merge the rows of earlier outputs, summarize and plot")
    a = ap.parse_args(argv)
    mits = [m for m in a.mitigations.split(",") if m]
    dmits = [m for m in a.drift_mitigations.split(",") if m]
    for m in mits + dmits:
        if m not in MITIGATIONS:
            ap.error(f"unknown mitigation {m!r}; choose from {', '.join(MITIGATIONS)}")

    if a.from_json:
        docs = [json.loads(Path(f).read_text()) for f in a.from_json]
        rows = [r for d in docs for r in d["rows"]]
        for k in ("device", "base", "sentences", "seed", "spare_cols"):
            setattr(a, k.replace("-", "_"), docs[0][k])
        mits = list(dict.fromkeys(r["mitigation"] for r in rows if r["sweep"] == "stuck"))
        dmits = list(dict.fromkeys(r["mitigation"] for r in rows if r["sweep"] == "drift"))
        return _report(a, rows, mits, dmits, docs[0]["plan_device_params"])

    import torch

    from compiler.driver import compile_model
    from compiler.execute import execute_plan, rebuild_graph
    from compiler.imc_run import ImcRun, fault_noise
    from golden.imc import REALISTIC_NOISE, CrossbarNoise

    torch.set_num_threads(1)
    plan = compile_model("minilm", f"{a.device},cpu:mode=roofline").plan
    lin = [o for o in plan["ops"] if o["op"] == "linear"]
    on_imc = sum(1 for o in lin if o["device"].split(":")[0] == "imc")
    if on_imc != len(lin):
        raise SystemExit(f"only {on_imc} of {len(lin)} linears were placed on the imc device")
    graph = rebuild_graph(plan)
    base = REALISTIC_NOISE if a.base == "realistic" else CrossbarNoise()
    rows: list[dict] = []

    def point(kind: str, value: float, mit: str, the_plan: dict = plan, the_graph=graph) -> None:
        fa, sp = MITIGATIONS[mit]
        nz = fault_noise(base, value if kind == "stuck" else 0.0, value if kind == "drift" else 0.0)
        t0 = time.perf_counter()
        run = ImcRun(nz, seed=a.seed, spare_cols=a.spare_cols if sp is None else sp, fault_aware=fa)
        r = execute_plan(the_plan, limit=a.sentences, graph=the_graph, imc=run)
        rows.append({"sweep": kind, "value": value, "mitigation": mit,
                     "cosine_mean": r["cosine_mean"], "cosine_min": r["cosine_min"],
                     **run.stats(), "seconds": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    if a.baseline:
        old = compile_model("minilm", "imc:differential=0:signed_inputs=0:fault_aware=0,"
                            "cpu:mode=roofline").plan
        point("baseline", 0.0, "none", old, rebuild_graph(old))
    for mit in mits:
        for v in a.stuck:
            point("stuck", v, mit)
    for mit in dmits:
        for v in a.drift:
            point("drift", v, mit)
    return _report(a, rows, mits, dmits,
                   next(d["params"] for d in plan["devices"] if d["kind"] == "imc"))


def _report(a: argparse.Namespace, rows: list[dict], mits: list[str], dmits: list[str],
            params: dict) -> int:
    """Summary, JSON, table and PNG of the measured rows."""
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict[str, float | None]] = {}
    for kind, ms in (("stuck", mits), ("drift", dmits)):
        for mit in ms:
            pts = [(r["value"], r["cosine_mean"]) for r in rows
                   if r["sweep"] == kind and r["mitigation"] == mit]
            first, interp = crossing(pts)
            summary[f"{kind}:{mit}"] = {"first_below_0.95": first, "interpolated_0.95": interp}
    doc = {"device": a.device, "plan_device_params": params, "base": a.base, "sentences": a.sentences, "seed": a.seed,
           "spare_cols": a.spare_cols, "rows": rows, "summary": summary}
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(out.with_suffix(".json"))
    print(f"{'sweep':8} {'value':>9} {'mitigation':>19} {'cos mean':>9} {'cos min':>9} "
          f"{'stuck used':>10} {'remapped':>8} {'reencoded':>9} {'residual':>8} {'s':>6}")
    for r in rows:
        print(f"{r['sweep']:8} {r['value']:9.3g} {r['mitigation']:>19} {r['cosine_mean']:9.5f} "
              f"{r['cosine_min']:9.5f} {r['faulty_cells']:10d} {r['remapped_columns']:8d} "
              f"{r['reencoded_weights']:9d} {r['residual_weights']:8d} {r['seconds']:6.1f}")
    for k, v in summary.items():
        ip = v["interpolated_0.95"]
        print(f"{k:28} first below 0.95: {v['first_below_0.95']}, interpolated: "
              + ("none" if ip is None else f"{ip:.3g}"))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, kind, ms, label in ((axs[0], "stuck", mits, "stuck-at cell rate"),
                                (axs[1], "drift", dmits, "seconds after programming")):
        mine = [r for r in rows if r["sweep"] == kind]
        pos = [r["value"] for r in mine if r["value"] > 0]
        floor = min(pos) / 3 if pos else 1.0  # where a value of 0 is plotted
        for mit in ms:
            pts = sorted((r["value"] if r["value"] > 0 else floor, r["cosine_mean"]) for r in mine
                         if r["mitigation"] == mit)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=mit)
        ys = [r["cosine_mean"] for r in mine]
        if kind == "stuck":
            for r in rows:
                if r["sweep"] == "baseline":
                    ax.scatter([floor], [r["cosine_mean"]], marker="x", color="red",
                               label="old mapping (offset binary), no faults")
                    ys.append(r["cosine_mean"])
        ax.axhline(0.95, color="grey", ls="--", lw=0.8)
        ax.axhline(0.98, color="grey", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(label + (" (0 plotted at the left edge)" if kind == "stuck" else ""))
        ax.set_ylabel("MiniLM embedding cosine vs float (mean)")
        ax.set_ylim(min(ys + [0.93]) - 0.02, 1.0)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"all linears on {a.device}, base noise {a.base}, {a.sentences} sentences, "
                 f"seed {a.seed}, {a.spare_cols} spare columns")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png.tmp.png"))
    Path(out.with_suffix(".png.tmp.png")).replace(out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
