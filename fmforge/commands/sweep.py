"""``fmforge sweep SPEC.toml``: a design-space sweep on Dask distributed (see :mod:`fmforge.sweep`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fmforge.commands._args import add_json, positive_int
from golden.errors import UserFileNotFoundError

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``sweep`` command to the CLI."""
    p = subparsers.add_parser(
        "sweep", help="sweep a design space (compile, build, co-simulate) on a Dask cluster",
        description="Compile (and optionally build and co-simulate) every point of a parameter "
                    "grid on Dask distributed: a local cluster by default, or a running one with "
                    "--scheduler. Results are cached by content hash; a rerun or an interrupted "
                    "sweep only runs what is missing. Writes a table, CSV, JSON, the Pareto front "
                    "and PNG plots into -o DIR.")
    p.add_argument("spec", metavar="SPEC.toml", help="the sweep spec (see examples/sweep_minilm.toml)")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="address of a running Dask scheduler (tcp://host:8786); default: start a "
                        "local cluster")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="worker processes of the local cluster (default: the CPU count)")
    p.add_argument("-o", "--output", metavar="DIR", default=None,
                   help="output directory (default: sweep-<spec name>)")
    p.add_argument("--cache", metavar="DIR", default=None,
                   help="result cache (default: $FMFORGE_CACHE/sweep or ~/.cache/fmforge/sweep)")
    p.add_argument("--no-cache", action="store_true", help="run every point, cache nothing")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the sweep; return the JSON result (``ok`` false when a point failed)."""
    from fmforge.sweep import load_spec, run_sweep, table

    spec = load_spec(args.spec)
    out = Path(args.output or f"sweep-{spec.name}")
    if not out.parent.exists():
        raise UserFileNotFoundError(f"output directory {str(out.parent)!r} does not exist")
    cache: Any = None if args.no_cache else (args.cache or "default")
    kw: dict[str, Any] = {}
    if args.quiet:
        kw["progress"] = None
    res = run_sweep(spec, scheduler=args.scheduler, workers=args.workers, out_dir=out,
                    cache=cache, **kw)
    if not args.json:
        print(table(res))
        print("files: " + ", ".join(f"{v}" for v in res.files.values()))
    return {"ok": res.ok, "spec": spec.path, "name": spec.name, "points": len(res.records),
            "cached": res.cached, "failed": sum(r["status"] != "ok" for r in res.records),
            "workers": res.workers, "scheduler": res.scheduler,
            "startup_seconds": res.startup_seconds, "run_seconds": res.run_seconds,
            "wall_seconds": res.wall_seconds,
            "pareto": [res.records[i]["id"] for i in res.front], "results": res.records,
            "files": res.files}
