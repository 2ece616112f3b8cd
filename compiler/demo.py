"""The main job end to end: compile all-MiniLM-L6-v2 for devices, execute the plan, report."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

__all__ = ["run_demo", "DEMO_DEVICE_SETS"]

#: the device sets the demo compiles for (the FPGA over its UART, and an ASIC card)
DEMO_DEVICE_SETS = ("ulx3s-85f,cpu", "asic,cpu")


def run_demo(out_dir: str | None = None, sentences: int = 64, verbose: bool = True) -> dict[str, Any]:
    """Compile MiniLM for each of :data:`DEMO_DEVICE_SETS`, execute each plan on ``sentences``
    shipped sentences, print both reports; returns ``{device_set: {compile, execute}}``."""
    import torch

    from compiler.driver import compile_model
    from compiler.execute import execute_plan
    from compiler.plan import dumps_plan, write_timeline
    from fmforge.commands._args import write_atomic
    from fmforge.commands.compile import report, summarize

    torch.set_num_threads(1)
    base = Path(out_dir or tempfile.mkdtemp(prefix="fmforge-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for devs in DEMO_DEVICE_SETS:
        c = compile_model("minilm", devs)
        path = base / f"plan-{devs.replace(',', '_')}.json"
        write_atomic(path, dumps_plan(c.plan))
        png = write_timeline(c.plan, path.with_suffix(".png"))
        comp = summarize(c.plan, str(path), c.compile_seconds)
        comp["timeline"] = str(png)
        ex = execute_plan(c.plan, limit=sentences)
        results[devs] = {"compile": comp, "execute": ex}
        if verbose:
            print(f"== minilm on {devs}")
            print(report(comp))
            print(f"execute: {ex['n_inputs']} sentences, cosine vs float min "
                  f"{ex['cosine_min']:.5f} mean {ex['cosine_mean']:.5f}")
    return results
