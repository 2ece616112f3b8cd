"""The board's LiteDRAM SDRAM path in Verilator with the chip model: :func:`run_sdram_ops`.

The design is :func:`boards.sdram_sim.sdram_sim_verilog` (the LiteDRAM controller generated for
the board and clock, :func:`boards.litedram.generate`), compiled once per content hash by
:func:`sim.verilator.build`; the cocotb test :mod:`sim.cocotb_sdram` runs a list of memory ops
through the core's streams with :class:`sim.sdram_chip.SdrSdramChip` on the SDRAM pins.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from boards.litedram import generate
from boards.sdram_sim import PIN_FIELDS, sdram_sim_verilog
from hw.core import mem_request_layout
from sim.verilator import VerilatorBuild, build, run_cocotb

__all__ = ["run_sdram_ops", "sdram_sim_build"]

_TOP = "sdram_sim_top"


def sdram_sim_build(board: str, clock_hz: float, *, bytes_per_cycle: int = 2,
                    progress: Any = None) -> VerilatorBuild:
    """The Verilated SDRAM path of ``board`` at ``clock_hz`` (cached by content hash)."""
    core = generate(board, clock_hz)
    return build(sdram_sim_verilog(core, bytes_per_cycle=bytes_per_cycle, name=_TOP), _TOP,
                 progress=progress)


def run_sdram_ops(ops: list[dict], *, board: str = "ulx3s-85f", clock_hz: float = 25e6,
                  bytes_per_cycle: int = 2, dump_mem: bool = False, strict: bool = True,
                  timeout_cycles: int | None = None, trace: bool = False,
                  progress: Any = None) -> dict:
    """Run ``ops`` (see :mod:`sim.cocotb_sdram`: ``{"write": addr, "data": hex}``,
    ``{"read": addr, "length": n}``, ``{"idle": cycles}``) after the initialisation, back to
    back, and return the test's results (``ready_at``, ``cycles``, ``ops``, ``chip``, ``mem``
    with ``dump_mem``). Raises AssertionError with the log directory when the run fails (a
    protocol violation of the chip model included)."""
    layout = mem_request_layout()
    req_fields = [[name, field.offset, field.width] for name, field in layout]
    widths = {name: w for name, _, w in req_fields}
    for op in ops:
        n = len(op["data"]) // 2 if "write" in op else int(op.get("length", 0))
        addr = int(op.get("write", op.get("read", 0)))
        if n >> widths["length"] or addr >> widths["addr"] or addr < 0:
            raise ValueError(f"op {op!r} does not fit a memory request (length below "
                             f"{1 << widths['length']}, {widths['addr']}-bit address)")
    b = sdram_sim_build(board, clock_hz, bytes_per_cycle=bytes_per_cycle, progress=progress)
    if timeout_cycles is None:
        moved = sum(len(op.get("data", "")) // 2 + int(op.get("length", 0))
                    + int(op.get("idle", 0)) for op in ops)
        timeout_cycles = 60000 + 40 * len(ops) + 8 * moved
    tdir = Path(tempfile.mkdtemp(prefix="fmforge-sdram-"))
    out = tdir / "out.json"
    spec = {"clock_hz": clock_hz, "bytes_per_cycle": bytes_per_cycle,
            "pin_fields": [list(p) for p in PIN_FIELDS], "req_fields": req_fields, "ops": ops,
            "timeout_cycles": timeout_cycles, "dump_mem": dump_mem, "strict": strict, "trace": trace,
            "out": str(out)}
    (tdir / "spec.json").write_text(json.dumps(spec))
    res = run_cocotb(b, "sim.cocotb_sdram", test_dir=tdir,
                     extra_env={"FMFORGE_SDRAM_SPEC": str(tdir / "spec.json")})
    doc = json.loads(out.read_text()) if out.exists() else None
    if res["failed"] or doc is None or doc.get("failure"):
        why = (doc or {}).get("failure") or "; ".join(res["failures"]) or "no results"
        raise AssertionError(f"SDRAM simulation failed: {why} (logs in {tdir})")
    shutil.rmtree(tdir, ignore_errors=True)
    return doc
