"""Co-simulation entry points: run GEMM jobs on cocotb + Verilator or the Amaranth simulator.

:func:`run_gemm_verilator` builds the engine's Verilog once (content-keyed cache, see
:mod:`sim.verilator`), runs all jobs in one simulator launch and checks every result against
the golden model. :func:`cosim_gemm` is what ``fmforge cosim gemm`` runs.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from golden.errors import UserValueError
from hw.gemm import GemmSpec
from sim.gemm_bench import (
    GemmJob,
    check_result,
    check_timing,
    job_timings,
    make_stimulus,
)
from sim.verilator import build, run_cocotb, to_verilog

__all__ = ["gemm_build", "run_gemm_verilator", "cosim_gemm", "engine_config_for"]


def _progress(msg: str) -> None:
    print(f"[fmforge] {msg}", file=sys.stderr, flush=True)


def gemm_build(cfg: GemmSpec, *, waves: bool = False, progress=_progress):
    """The (cached) Verilator build of engine ``cfg``."""
    name = "gemm"
    return build(to_verilog(cfg.build(), name), name, waves=waves, progress=progress)


def run_gemm_verilator(cfg: GemmSpec, jobs: Sequence[GemmJob], *, stall: str = "none", seed: int = 0,
                       waves: bool = False, monitor: bool = False, test_dir: Path | None = None,
                       progress=_progress) -> list[dict]:
    """Run ``jobs`` back to back on engine ``cfg`` in cocotb + Verilator and check them.

    Returns one dict per job with ``job``, ``match``, ``mismatches``, ``cycles`` (the engine's
    counter), ``predicted_cycles``, the testbench's own edge counts ``tb_cycles`` (end to end,
    loads included), ``tb_load_cycles``, ``tb_stall_cycles``, ``tb_after_load_cycles`` with
    their check against the models (:func:`sim.gemm_bench.check_timing`:
    ``predicted_total_cycles``, ``predicted_after_load_cycles``, ``timing_ok``,
    ``timing_mismatches``), ``utilization`` (end to end, ``M*K*N / (tb_cycles*R*C)``),
    ``compute_utilization`` (``M*K*N / (cycles*R*C)``), ``sim_seconds`` (wall time from the end
    of the previous job to this job's last row), ``cycles_per_second`` and ``macs_per_second``.
    """
    b = gemm_build(cfg, waves=waves, progress=progress)
    stims = [make_stimulus(cfg, j) for j in jobs]
    own = test_dir is None
    tdir = Path(tempfile.mkdtemp(prefix="fmforge-cosim-")) if own else Path(test_dir)
    tdir.mkdir(parents=True, exist_ok=True)
    spec = {
        "stall": stall, "seed": seed, "monitor": monitor, "out": str(tdir / "out.json"),
        "jobs": [
            {"cmd": s.cmd, "a": s.a, "b": s.b, "chan": s.chan, "n_rows": len(s.expected_rows),
             "timeout_cycles": 20 * (s.predicted_cycles + len(s.a) + len(s.b) + len(s.chan)) + 1000}
            for s in stims
        ],
    }
    spec_path = tdir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    try:
        res = run_cocotb(b, "sim.cocotb_gemm", extra_env={"FMFORGE_BENCH_SPEC": str(spec_path)},
                         test_dir=tdir, waves=waves, seed=seed)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep nothing of this run
        if own:
            shutil.rmtree(tdir, ignore_errors=True)
        raise
    if res["failed"] or not (tdir / "out.json").exists():
        raise AssertionError(f"cocotb run failed ({'; '.join(res['failures']) or 'no results'}); logs in {tdir}")
    doc = json.loads((tdir / "out.json").read_text())
    raw = doc["results"]
    timings = job_timings(doc["edges"]["load"], doc["edges"]["stall"], [r["final_edge"] for r in raw])
    out = []
    for job, st, r, t in zip(jobs, stims, raw, timings, strict=True):
        chk = check_result(cfg, job, st, r["words"])
        secs = max(r["sim_seconds"], 1e-9)
        out.append({
            "job": job.describe(), "match": chk["match"], "mismatches": chk["mismatches"],
            "cycles": r["cycles"], "predicted_cycles": st.predicted_cycles,
            **t, **check_timing(cfg, job, st, t, stall),
            "utilization": job.macs / (t["tb_cycles"] * cfg.rows * cfg.cols),
            "compute_utilization": job.macs / (r["cycles"] * cfg.rows * cfg.cols),
            "sim_seconds": secs, "cycles_per_second": r["cycles"] / secs,
            "macs_per_second": job.macs / secs,
        })
    if own:
        shutil.rmtree(tdir, ignore_errors=True)
    return out


def _pow2_at_least(v: int, floor: int) -> int:
    p = floor
    while p < v:
        p *= 2
    return p


def engine_config_for(rows: int, cols: int, dataflow: str, m: int, k: int, n: int,
                      requant: bool = True) -> GemmSpec:
    """An engine configuration whose buffers take an M x K x N GEMM.

    Buffer limits are rounded up to powers of two (at least 128) so that nearby shapes share one
    Verilator build.
    """
    from hw.gemm import _MAX_DIM, check_gemm_shape

    for name, v in (("m", m), ("k", k), ("n", n)):
        if isinstance(v, int) and v > _MAX_DIM:
            raise UserValueError(f"{name}={v} is larger than the engine supports ({_MAX_DIM})")
    cfg = GemmSpec(rows=rows, cols=cols, dataflow=dataflow, max_m=_pow2_at_least(m, 128),
                     max_k=_pow2_at_least(k, 128), max_n=_pow2_at_least(n, 128), requant=requant)
    check_gemm_shape(m, k, n, max_m=cfg.max_m, max_k=cfg.max_k, max_n=cfg.max_n)
    return cfg


def cosim_gemm(*, rows: int, cols: int, dataflow: str, m: int, k: int, n: int, seed: int = 0,
               stall: str = "none", requant: bool = False, bias: bool = False, waves: bool = False,
               simulator: str = "verilator") -> dict:
    """Random int8 operands through the RTL vs the golden model; the ``fmforge cosim gemm`` result."""
    cfg = engine_config_for(rows, cols, dataflow, m, k, n)
    job = GemmJob(m, k, n, seed=seed, bias=bias, requant=requant)
    if simulator == "verilator":
        tdir = Path(tempfile.mkdtemp(prefix="fmforge-cosim-")) if waves else None
        try:
            r = run_gemm_verilator(cfg, [job], stall=stall, seed=seed, waves=waves,
                                   test_dir=tdir)[0]
        except KeyboardInterrupt:  # no half-written waves directory
            if tdir is not None:
                shutil.rmtree(tdir, ignore_errors=True)
            raise
        if waves:
            r["waves"] = str(tdir / "dump.vcd")
    elif simulator == "amaranth":
        from sim.pysim import run_gemm_pysim

        r = run_gemm_pysim(cfg, [job], stall=stall, seed=seed)[0]
        r["utilization"] = job.macs / (r["tb_cycles"] * rows * cols)
        r["compute_utilization"] = job.macs / (r["cycles"] * rows * cols)
        r["cycles_per_second"] = r["cycles"] / r["sim_seconds"]
        r["macs_per_second"] = job.macs / r["sim_seconds"]
    else:
        raise UserValueError(f"simulator must be 'verilator' or 'amaranth', not {simulator!r}")
    r["match"] = bool(r["match"])
    r.update({"rows": rows, "cols": cols, "dataflow": dataflow, "m": m, "k": k, "n": n,
              "stall": stall, "seed": seed, "requant": requant, "bias": bias, "simulator": simulator})
    return r
