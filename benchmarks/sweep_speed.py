"""Speed of ``fmforge sweep`` on Dask: the 12-point compile-only MiniLM sweep
(``examples/sweep_minilm.toml``) on a LocalCluster of 1 worker and of 2 workers, side by side in
one run, without the result cache (target on a 2-core machine: >= 1.6x on 2 workers, overhead
per task < 0.5 s).

Per configuration: startup (cluster start plus each worker importing the compiler and loading
the model, once per worker process), run (first submission to last result), the sum of the
points' own work (``task_seconds``, measured inside the tasks), and the overhead per task =
(workers x run - sum of task seconds) / tasks: the worker time a point costs beyond its own work
(scheduling, transfers, result handling, idle workers at the tail). ``cpu share`` = CPU time
/ wall time inside the tasks: below 1 when something else (another user) ran on the same
cores, which makes the numbers of that row unfit for comparison. Speedup = run on 1 worker /
run on N workers (and the same with the startup included). ``--json`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from fmforge.sweep import load_spec, run_sweep

__all__ = ["main", "measure"]

SPEC = Path(__file__).resolve().parents[1] / "examples" / "sweep_minilm.toml"


def measure(spec_path: str | os.PathLike[str], workers: int) -> dict:
    """Run the sweep once on ``workers`` local workers, no cache; return its timings."""
    spec = load_spec(spec_path)
    res = run_sweep(spec, workers=workers, out_dir=None, cache=None, progress=None)
    bad = [r for r in res.records if r["status"] != "ok"]
    if bad:
        raise SystemExit(f"{len(bad)} points did not finish: {bad[0]['reason']}")
    n = len(res.records)
    work = sum(r["task_seconds"] for r in res.records)
    cpu = sum(r["task_cpu_seconds"] for r in res.records)
    return {"workers": res.workers, "points": n, "startup_s": res.startup_seconds,
            "run_s": res.run_seconds, "task_s_sum": work, "task_cpu_s_sum": cpu,
            "cpu_share": cpu / work, "load_after": os.getloadavg()[0],
            "overhead_per_task_s": (res.workers * res.run_seconds - work) / n}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(SPEC), help="sweep spec (default: the MiniLM example)")
    ap.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = [measure(args.spec, int(w)) for w in args.workers.split(",")]
    base = rows[0]
    for r in rows:
        r["speedup"] = base["run_s"] / r["run_s"]
        r["speedup_with_startup"] = (base["run_s"] + base["startup_s"]) / (r["run_s"] + r["startup_s"])
    out = {"spec": args.spec, "cpus": os.cpu_count(), "rows": rows}
    if args.json:
        print(json.dumps(out, sort_keys=True))
    else:
        print(f"{args.spec}: {base['points']} points, compile only, no cache, {os.cpu_count()} CPUs")
        print(f"{'workers':>7}{'startup s':>11}{'run s':>8}{'task s sum':>12}{'speedup':>9}"
              f"{'w/ startup':>12}{'overhead/task s':>17}{'cpu share':>11}{'load':>6}")
        for r in rows:
            print(f"{r['workers']:>7}{r['startup_s']:>11.2f}{r['run_s']:>8.2f}{r['task_s_sum']:>12.2f}"
                  f"{r['speedup']:>8.2f}x{r['speedup_with_startup']:>11.2f}x"
                  f"{r['overhead_per_task_s']:>17.3f}{r['cpu_share']:>11.2f}{r['load_after']:>6.2f}")
    return out


if __name__ == "__main__":
    main()
