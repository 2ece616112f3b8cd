"""Design-space sweeps on Dask distributed: a parameter grid compiled, built and co-simulated.

A sweep spec (TOML, see :func:`load_spec` and ``examples/sweep_minilm.toml``) names a model, a
device template and a grid (array R x C, dataflow, nonlinear lanes, clock target, sparse method
and keep, objective, device lists). Every grid point becomes one task:

1. compile the model for the point's devices (:func:`compiler.driver.compile_model`);
2. optionally execute the plan on ``accuracy`` inputs (cosine against the float model and the
   measured keep ratio of sparse attention);
3. optionally co-simulate (``cosim = true``) the first op of every unit kind on the accelerator
   on its RTL with the executor's own operands (:func:`fmforge.commands.cosim.replay_plan_ops`);
4. optionally build (``build = true``) the accelerator's GEMM engine into a bitstream with the
   boards flow (:func:`boards.build.build_unit`) and read back Fmax and utilisation.

Tasks run on a Dask cluster: a ``LocalCluster`` of ``workers`` single-threaded processes by
default, or a running scheduler given by address. Results are cached by a content hash of the
point (its resolved work description plus a fingerprint of the source code of every package
the work runs), on the client side, as soon as each arrives: the same point is never run twice,
whichever worker ran it, and a sweep that was interrupted continues where it stopped. Errors a
user can fix (a unit that does not fit, a bad device parameter) are reported at once; any other
failure (an exception, a worker that died) is retried once by Dask and then reported with its
reason. Nothing is lost silently: every point ends as ``ok``, ``error`` or ``failed``.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from golden.errors import UserError, UserFileNotFoundError, UserValueError

__all__ = ["SweepSpec", "SweepSpecError", "Point", "SweepResult", "DEFAULT_DEVICES", "KEEP_KNOBS",
           "load_spec", "parse_spec", "expand", "code_fingerprint", "point_key", "run_point",
           "ResultCache", "run_sweep", "pareto_front", "write_outputs", "table", "cache_dir"]

#: format tag of the results JSON and of every cache entry (bump when a record changes)
SWEEP_FORMAT = "fmforge-sweep/1"
#: the device template when the spec gives none: an ASIC accelerator next to the host CPU
DEFAULT_DEVICES = "asic:rows={rows}:cols={cols}:dataflow={dataflow}:lanes={lanes}:mhz={clock_mhz},cpu"
#: the knob of each sparse-attention method that a grid ``keep`` value sets
KEEP_KNOBS = {"a3": "m", "elsa": "p", "energon": "alpha", "sanger": "threshold",
              "spatten": "token_keep"}
#: grid axes, their defaults when absent, and the template placeholders they fill
_AXES: dict[str, list[Any]] = {"array": ["32x32"], "dataflow": ["os"], "lanes": [1],
                               "clock_mhz": [None], "sparse": ["none"], "keep": [None],
                               "objective": ["latency"], "devices": [None]}
_TOP_KEYS = {"model", "devices", "build", "cosim", "accuracy", "board", "cosim_simulator",
             "cosim_ops", "cosim_stall", "name", "grid"}
_PLACEHOLDERS = ("rows", "cols", "dataflow", "lanes", "clock_mhz")


class SweepSpecError(UserValueError):
    """A malformed sweep spec (the message names the file and the key)."""


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep spec: settings shared by every point and the grid axes."""

    path: str
    name: str
    model: str
    devices: str
    build: bool
    cosim: bool
    accuracy: int
    board: str
    cosim_simulator: str
    cosim_ops: str | tuple[str, ...]
    cosim_stall: str
    grid: dict[str, list[Any]]


@dataclass
class Point:
    """One grid point: its labels (the grid values) and the work a worker does (``task``)."""

    index: int
    labels: dict[str, Any]
    task: dict[str, Any]
    key: str = ""

    @property
    def id(self) -> str:
        return f"p{self.index:03d}"


@dataclass
class SweepResult:
    """What :func:`run_sweep` returns: one record per point, in grid order."""

    spec: SweepSpec
    points: list[Point]
    records: list[dict[str, Any]]
    front: list[int]
    workers: int
    scheduler: str
    startup_seconds: float
    wall_seconds: float
    cached: int
    #: seconds from the first submission to the last result (0 when nothing ran)
    run_seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r["status"] == "ok" for r in self.records)


# --------------------------------------------------------------------------- the spec

def _err(path: str, msg: str) -> SweepSpecError:
    return SweepSpecError(f"sweep spec {path}: {msg}")


def load_spec(path: str | os.PathLike[str]) -> SweepSpec:
    """Read and validate a sweep spec (TOML). Errors name the file and the key."""
    p = Path(path)
    if not p.is_file():
        raise UserFileNotFoundError(f"sweep spec {str(p)!r} does not exist")
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise _err(str(p), f"not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise _err(str(p), f"not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise _err(str(p), f"cannot be read: {e.strerror or e}") from None
    return parse_spec(doc, str(p))


def _typed(path: str, doc: dict[str, Any], key: str, typ: type | tuple[type, ...], default: Any) -> Any:
    v = doc.get(key, default)
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise _err(path, f"{key} must be a {names}, not {v!r}")
    return v


def parse_spec(doc: dict[str, Any], path: str = "<spec>") -> SweepSpec:
    """Validate a spec document (the parsed TOML) into a :class:`SweepSpec`."""
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise _err(path, f"unknown key {unknown[0]!r}; keys: {', '.join(sorted(_TOP_KEYS))}")
    grid_doc = doc.get("grid", {})
    if not isinstance(grid_doc, dict):
        raise _err(path, "[grid] must be a table")
    bad = sorted(set(grid_doc) - set(_AXES))
    if bad:
        raise _err(path, f"unknown grid axis {bad[0]!r}; axes: {', '.join(_AXES)}")
    grid: dict[str, list[Any]] = {}
    for axis, default in _AXES.items():
        vals = grid_doc.get(axis, default)
        if not isinstance(vals, list):
            vals = [vals]
        if not vals:
            raise _err(path, f"grid.{axis} is empty")
        grid[axis] = list(vals)
    for a in grid["array"]:
        if not isinstance(a, str) or not _parse_array(a):
            raise _err(path, f"grid.array entries are 'RxC' strings such as '8x8', not {a!r}")
    for d in grid["dataflow"]:
        if d not in ("os", "ws"):
            raise _err(path, f"grid.dataflow entries are 'os' or 'ws', not {d!r}")
    for n in grid["lanes"]:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise _err(path, f"grid.lanes entries are positive integers, not {n!r}")
    for c in grid["clock_mhz"]:
        if c is not None and (not isinstance(c, (int, float)) or isinstance(c, bool) or c <= 0):
            raise _err(path, f"grid.clock_mhz entries are positive numbers (MHz), not {c!r}")
    for o in grid["objective"]:
        if o not in ("latency", "energy"):
            raise _err(path, f"grid.objective entries are 'latency' or 'energy', not {o!r}")
    for s in grid["sparse"]:
        if not isinstance(s, str) or not s.strip():
            raise _err(path, f"grid.sparse entries are method names ('none', "
                             f"{', '.join(KEEP_KNOBS)}) or specs such as 'sanger:threshold=0.02', "
                             f"not {s!r}")
        method = s.split(":")[0].strip().lower()
        if method != "none" and method not in KEEP_KNOBS:
            raise _err(path, f"grid.sparse: unknown method {method!r}; methods: none, "
                             f"{', '.join(KEEP_KNOBS)}")
    for k in grid["keep"]:
        if k is not None and (not isinstance(k, (int, float)) or isinstance(k, bool)):
            raise _err(path, f"grid.keep entries are numbers, not {k!r}")
    for d in grid["devices"]:
        if d is not None and (not isinstance(d, str) or not d.strip()):
            raise _err(path, f"grid.devices entries are device lists such as 'asic,cpu', not {d!r}")
    ops = doc.get("cosim_ops", "first")
    if isinstance(ops, list):
        if not all(isinstance(o, str) for o in ops):
            raise _err(path, "cosim_ops must be 'first', 'all' or a list of op names")
        ops = tuple(ops)
    elif ops not in ("first", "all"):
        raise _err(path, f"cosim_ops must be 'first', 'all' or a list of op names, not {ops!r}")
    sim = _typed(path, doc, "cosim_simulator", str, "verilator")
    if sim not in ("verilator", "amaranth"):
        raise _err(path, f"cosim_simulator must be 'verilator' or 'amaranth', not {sim!r}")
    stall = _typed(path, doc, "cosim_stall", str, "none")
    if stall not in ("none", "idle", "backpressure", "both"):
        raise _err(path, f"cosim_stall must be none, idle, backpressure or both, not {stall!r}")
    accuracy = _typed(path, doc, "accuracy", int, 0)
    if accuracy < 0:
        raise _err(path, f"accuracy (inputs to execute each plan on) must be >= 0, not {accuracy}")
    from fmforge.sweep_schema import check_spec_doc
    check_spec_doc(doc, path)  # the published schema (fmforge schema sweep): what remains
    spec = SweepSpec(
        path=path, name=_typed(path, doc, "name", str, Path(path).stem),
        model=_typed(path, doc, "model", str, "minilm"),
        devices=_typed(path, doc, "devices", str, DEFAULT_DEVICES),
        build=_typed(path, doc, "build", bool, False), cosim=_typed(path, doc, "cosim", bool, False),
        accuracy=accuracy, board=_typed(path, doc, "board", str, "ulx3s-85f"),
        cosim_simulator=sim, cosim_ops=ops, cosim_stall=stall, grid=grid)
    if spec.build:
        from boards.catalog import get_board
        try:
            get_board(spec.board)
        except UserError as e:
            raise _err(path, f"board: {e}") from None
    expand(spec)  # template errors surface here, before any cluster starts
    return spec


def _parse_array(text: str) -> tuple[int, int] | None:
    r, sep, c = text.lower().partition("x")
    if not sep or not r.isdigit() or not c.isdigit() or int(r) < 1 or int(c) < 1:
        return None
    return int(r), int(c)


def _fmt_num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _sparse_spec(entry: str, keep: Any) -> tuple[str | None, str | None, Any]:
    """(compiler sparse spec or None, method or None, keep value used or None)."""
    text = entry.strip()
    method = text.split(":")[0].strip().lower()
    if method == "none":
        return None, None, None
    if ":" in text or keep is None:
        return text, method, None
    return f"{method}:{KEEP_KNOBS[method]}={_fmt_num(keep)}", method, keep


def expand(spec: SweepSpec) -> list[Point]:
    """Every grid point, in grid order (axes in the order of :data:`_AXES`); points whose
    work is identical (an axis the template does not use, dense points over ``keep``) appear
    once."""
    axes = list(_AXES)
    points: list[Point] = []
    seen: set[str] = set()
    for combo in itertools.product(*(spec.grid[a] for a in axes)):
        v = dict(zip(axes, combo, strict=True))
        rows, cols = _parse_array(v["array"])  # type: ignore[misc]
        template = v["devices"] or spec.devices
        clock = v["clock_mhz"]
        fill = {"rows": rows, "cols": cols, "dataflow": v["dataflow"], "lanes": v["lanes"],
                "clock_mhz": _fmt_num(clock if clock is not None else 1000.0)}
        try:
            devices = template.format(**fill)
        except (KeyError, IndexError, ValueError) as e:
            raise _err(spec.path, f"device template {template!r}: unknown placeholder {e}; "
                                  f"placeholders: {', '.join('{' + p + '}' for p in _PLACEHOLDERS)}"
                       ) from None
        used = {p for p in _PLACEHOLDERS if "{" + p + "}" in template}
        for axis, names in (("array", {"rows", "cols"}), ("dataflow", {"dataflow"}),
                            ("lanes", {"lanes"})):
            if len(spec.grid[axis]) > 1 and not names & used:
                raise _err(spec.path, f"grid.{axis} has {len(spec.grid[axis])} values but the "
                                      f"device template {template!r} does not use "
                                      f"{' / '.join('{' + n + '}' for n in sorted(names))}")
        sparse, method, keep = _sparse_spec(v["sparse"], v["keep"])
        task = {"model": spec.model, "devices": devices, "objective": v["objective"],
                "sparse": sparse, "accuracy": spec.accuracy, "build": spec.build,
                "board": spec.board if spec.build else None,
                "target_mhz": clock if spec.build else None, "cosim": spec.cosim,
                "cosim_simulator": spec.cosim_simulator if spec.cosim else None,
                "cosim_ops": (list(spec.cosim_ops) if isinstance(spec.cosim_ops, tuple)
                              else spec.cosim_ops) if spec.cosim else None,
                "cosim_stall": spec.cosim_stall if spec.cosim else None}
        ident = json.dumps(task, sort_keys=True)
        if ident in seen:
            continue
        seen.add(ident)
        labels = {"array": f"{rows}x{cols}" if used & {"rows", "cols"} else None,
                  "dataflow": v["dataflow"] if "dataflow" in used else None,
                  "lanes": v["lanes"] if "lanes" in used else None,
                  "clock_mhz": clock, "sparse": method or "none", "keep": keep,
                  "objective": v["objective"], "devices": devices}
        points.append(Point(len(points), labels, task))
    return points


# --------------------------------------------------------------------------- content hashes

_FINGERPRINT: str | None = None


def code_fingerprint() -> str:
    """sha256 over the source of every package a point's work runs (compiler, hw, golden, sim,
    boards and this module) and the model files they ship: a cached result is reused only by
    the code that made it."""
    global _FINGERPRINT
    if _FINGERPRINT is None:
        import boards
        import compiler
        import golden
        import hw
        import sim
        h = hashlib.sha256(SWEEP_FORMAT.encode())
        files: list[Path] = [Path(__file__)]
        for pkg in (boards, compiler, golden, hw, sim):
            root = Path(pkg.__file__).parent
            files += [f for f in root.rglob("*") if f.suffix in (".py", ".json", ".txt")]
        base = Path(__file__).resolve().parents[1]
        for f in sorted(files, key=lambda f: str(f.resolve())):
            try:
                rel = str(f.resolve().relative_to(base))
            except ValueError:
                rel = str(f)
            h.update(rel.encode() + b"\0" + f.read_bytes() + b"\0")
        _FINGERPRINT = h.hexdigest()
    return _FINGERPRINT


def point_key(task: dict[str, Any], fingerprint: str | None = None) -> str:
    """The content hash of one point: its work description, the code fingerprint and, for a
    model given as ``file.py:factory``, that file's bytes."""
    h = hashlib.sha256(json.dumps(task, sort_keys=True).encode())
    h.update((fingerprint or code_fingerprint()).encode())
    model = str(task.get("model", ""))
    path = model.rpartition(":")[0] if model.count(":") else ""
    if path.endswith(".py") and Path(path).is_file():
        h.update(Path(path).read_bytes())
    return h.hexdigest()


def cache_dir() -> Path:
    """Default result cache: ``$FMFORGE_CACHE/sweep`` or ``~/.cache/fmforge/sweep``."""
    base = os.environ.get("FMFORGE_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "fmforge") / "sweep"


def _write_atomic(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ResultCache:
    """Finished points by content hash: ``<key>.json`` (the record) and ``<key>.plan.json``.

    Written by the client as each result arrives (temporary name, then rename), so workers need
    no shared file system, and a point is never run again once one run finished it. Only
    ``ok`` records are kept: errors and failures are retried by the next run.
    """

    def __init__(self, root: str | os.PathLike[str] | None) -> None:
        self.root = Path(root) if root is not None else None

    def get(self, key: str) -> tuple[dict[str, Any], str | None] | None:
        if self.root is None:
            return None
        f = self.root / f"{key}.json"
        try:
            rec = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if rec.get("format") != SWEEP_FORMAT or rec.get("key") != key or rec.get("status") != "ok":
            return None
        plan_f = self.root / f"{key}.plan.json"
        plan = plan_f.read_text(encoding="utf-8") if plan_f.is_file() else None
        return rec, plan

    def put(self, key: str, record: dict[str, Any], plan: str | None) -> None:
        if self.root is None or record.get("status") != "ok":
            return
        if plan is not None:
            _write_atomic(self.root / f"{key}.plan.json", plan)
        _write_atomic(self.root / f"{key}.json", json.dumps(record, sort_keys=True))


# --------------------------------------------------------------------------- one point (worker)

def _accelerator(plan: dict[str, Any]) -> dict[str, Any] | None:
    """The first accelerator device (fpga, asic, imc) of a plan."""
    return next((d for d in plan["devices"] if d["kind"] in ("fpga", "asic", "imc")), None)


def _cosim_ops(plan: dict[str, Any], dev: dict[str, Any], which: Any) -> list[str]:
    if isinstance(which, list):
        return list(which)
    units = {u["id"]: u for u in dev["hardware"]["units"]}
    ops = [o for o in plan["ops"] if o["device"] == dev["name"]
           and o["lowering"].get("unit") in units]
    if which == "all":
        return [o["name"] for o in ops]
    first: dict[str, str] = {}
    for o in ops:
        first.setdefault(units[o["lowering"]["unit"]]["unit"], o["name"])
    return list(first.values())


def _warm(model: str) -> float:
    """Import the compile path and load a built-in ``model`` on a worker (its weights stay
    cached in the process); a model file is left to the tasks (its code runs there only)."""
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(1)
    from compiler.frontend import MODELS, load_model
    if model in MODELS:
        try:
            load_model(model)
        except Exception:  # noqa: BLE001 - the task itself reports the error
            pass
    return time.perf_counter() - t0


def run_point(task: dict[str, Any]) -> dict[str, Any]:
    """Do one point's work (runs on a worker). Returns a JSON-ready record, the plan text under
    ``plan_text``. Errors a user can fix end the point with ``status = "error"`` and the reason;
    anything else raises (and is retried by the caller)."""
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    c0 = time.process_time()
    rec: dict[str, Any] = {"status": "ok", "reason": None, "stage": None}
    try:
        from compiler.driver import compile_model
        from compiler.plan import dumps_plan

        rec["stage"] = "compile"
        c = compile_model(task["model"], task["devices"], task["objective"], sparse=task["sparse"])
        plan = c.plan
        rec["plan_text"] = dumps_plan(plan)
        rec.update(_predicted(plan))
        rec["compile_seconds"] = c.compile_seconds
        acc = _accelerator(plan)
        if task["accuracy"]:
            rec["stage"] = "accuracy"
            from compiler.execute import execute_plan

            r = execute_plan(plan, limit=task["accuracy"])
            rec.update(cosine_mean=r["cosine_mean"], cosine_min=r["cosine_min"],
                       accuracy_inputs=r["n_inputs"],
                       keep_ratio=r.get("sparse_keep_ratio", 1.0 if not task["sparse"] else None))
        if task["cosim"] and acc is not None:
            rec["stage"] = "cosim"
            rec.update(_cosim(plan, rec["plan_text"], acc, task))
        if task["build"] and acc is not None:
            rec["stage"] = "build"
            rec.update(_build(acc, task))
        rec["measured_latency_s"] = _measured_latency(plan, acc, rec)
        rec["stage"] = None
    except UserError as e:
        rec.update(status="error", reason=f"{rec['stage']}: {e}")
    rec["task_seconds"] = time.perf_counter() - t0
    rec["task_cpu_seconds"] = time.process_time() - c0  # below task_seconds: the CPU was shared
    return rec


def _predicted(plan: dict[str, Any]) -> dict[str, Any]:
    acc = _accelerator(plan)
    out: dict[str, Any] = {"predicted_latency_s": plan["totals"]["latency_s"],
                           "predicted_energy_j": plan["totals"]["energy_j"],
                           "accelerator": acc["name"] if acc else None,
                           "accelerator_kind": acc["kind"] if acc else None,
                           "accelerator_ops": 0, "predicted_fmax_mhz": None,
                           "resources_used": {}, "resources_available": {}, "gemm": None}
    if acc is not None:
        out["accelerator_ops"] = plan["totals"]["per_device"][acc["name"]]["ops"]
        out["predicted_fmax_mhz"] = acc["params"].get("clock_mhz")
        out["resources_used"] = dict(acc["hardware"]["resources_used"])
        out["resources_available"] = dict(acc["hardware"]["resources_available"])
        out["gemm"] = acc["params"].get("gemm")
    return out


def _cosim(plan: dict[str, Any], text: str, acc: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    from fmforge.commands.cosim import replay_plan_ops

    ops = _cosim_ops(plan, acc, task["cosim_ops"])
    if not ops:
        return {"cosim": []}
    with tempfile.TemporaryDirectory(prefix="fmforge-sweep-") as d:
        f = Path(d) / "plan.json"
        f.write_text(text, encoding="utf-8")
        rs = replay_plan_ops(str(f), ops, stall=task["cosim_stall"],
                             simulator=task["cosim_simulator"])
    out = []
    for r in rs:
        measured = int(r["cycles"]) + int(r.get("load_cycles", 0))
        out.append({"op": r["op"], "unit": r["unit"], "unit_kind": r["unit_kind"],
                    "match": bool(r["match"]), "cycles": measured,
                    "plan_cycles": int(r["plan_cycles"]),
                    "cycles_exact": int(r["cycles"]) == int(r["predicted_cycles"])})
    return {"cosim": out, "cosim_match": all(x["match"] and x["cycles_exact"] for x in out)}


def _build(acc: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    from boards.build import build_unit
    from boards.units import check_gemm_fits
    from hw.registry import spec_from_json

    board = acc["params"]["board"] if acc["kind"] == "fpga" else task["board"]
    unit = next((u for u in acc["hardware"]["units"] if u["unit"] == "gemm"), None)
    if unit is None:
        raise UserValueError(f"{acc['name']} builds no GEMM engine for this model: nothing to build")
    p = unit["params"]
    check_gemm_fits(board, rows=p["rows"], cols=p["cols"], requant=p.get("requant", True))
    spec = spec_from_json("gemm", p)
    name = f"sweep_gemm_{p['rows']}x{p['cols']}_{p['dataflow']}"
    r = build_unit(spec.build(), board, name=name, target_mhz=task["target_mhz"],
                   progress=lambda _msg: None)
    return {"build": {"board": r.board, "bitstream": r.bitstream, "target_mhz": r.target_mhz,
                      "cached": r.cached, "seconds": r.seconds, "timing_met": r.timing_met},
            "measured_fmax_mhz": r.fmax_mhz,
            "measured_resources": {"luts": r.luts, "ffs": r.ffs, "dsps": r.dsps, "brams": r.brams,
                                   "luts_total": r.luts_total, "dsps_total": r.dsps_total,
                                   "brams_total": r.brams_total, "ffs_total": r.ffs_total}}


def _measured_latency(plan: dict[str, Any], acc: dict[str, Any] | None,
                      rec: dict[str, Any]) -> float | None:
    """The plan latency with the accelerator's ops re-timed by what was measured: co-simulated
    ops at their measured cycles, and (an FPGA accelerator that was built) every accelerator op
    at the measured Fmax when it is below the plan's clock. None when nothing was measured."""
    if acc is None or ("cosim" not in rec and "measured_fmax_mhz" not in rec):
        return None
    clock = float(acc["params"].get("clock_mhz") or 0.0)
    if clock <= 0:
        return None
    f_eff = clock
    if acc["kind"] == "fpga" and rec.get("measured_fmax_mhz"):
        f_eff = min(clock, float(rec["measured_fmax_mhz"]))
    measured = {c["op"]: c["cycles"] for c in rec.get("cosim", [])}
    lat = float(plan["totals"]["latency_s"])
    for o in plan["ops"]:
        if o["device"] != acc["name"] or not o.get("cycles"):
            continue
        cyc = measured.get(o["name"], o["cycles"])
        lat += cyc / (f_eff * 1e6) - o["cycles"] / (clock * 1e6)
    return lat


# --------------------------------------------------------------------------- the sweep (client)

def _progress_stderr(done: int, total: int, point: Point, rec: dict[str, Any], elapsed: float) -> None:
    lab = point.labels
    what = " ".join(str(x) for x in (lab["array"], lab["dataflow"],
                                     f"lanes={lab['lanes']}" if lab["lanes"] else None,
                                     f"{lab['clock_mhz']:g}MHz" if lab["clock_mhz"] else None,
                                     lab["sparse"] if lab["sparse"] != "none" else None,
                                     f"keep={lab['keep']}" if lab["keep"] is not None else None,
                                     lab["objective"]) if x)
    if rec["status"] == "ok":
        res = f"{rec['predicted_latency_s'] * 1e3:.3f} ms {rec['predicted_energy_j'] * 1e3:.3f} mJ"
    else:
        res = f"{rec['status'].upper()}: {rec['reason']}"
    src = "cache" if rec.get("cached") else f"{rec.get('task_seconds', 0.0):.1f} s"
    width = len(str(total))
    bar = "#" * int(20 * done / total)
    print(f"fmforge sweep [{bar:<20}] {done:>{width}}/{total} {elapsed:6.1f}s  {point.id} {what}: "
          f"{res} ({src})", file=sys.stderr, flush=True)


def _finish(point: Point, rec: dict[str, Any], cached: bool) -> dict[str, Any]:
    rec = {k: v for k, v in rec.items() if k != "plan_text"}
    rec.update(id=point.id, key=point.key, format=SWEEP_FORMAT, labels=dict(point.labels),
               cached=cached)
    return rec


def _failure(point: Point, exc: BaseException | None, reason: str | None = None) -> dict[str, Any]:
    if reason is None:
        name = type(exc).__name__
        if name == "KilledWorker":
            reason = "the worker running it died twice (KilledWorker); see the worker logs"
        else:
            reason = f"{name}: {exc}"
    return _finish(point, {"status": "failed", "reason": f"failed twice: {reason}",
                           "stage": None}, False)


@contextlib.contextmanager
def _signals_held() -> Any:
    """Hold SIGINT and SIGTERM while a Dask cluster starts or closes, and deliver them after.

    An interrupted ``LocalCluster`` start leaves its half-started workers' directories and
    ``.dirlock`` files in the scratch space and a traceback from distributed's exit hook; once
    the start returns, the caller's ``finally`` closes the cluster cleanly. Main thread only
    (elsewhere Python delivers no signals).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: held.append(signum))
           for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if held:
            signal.raise_signal(held[0])


def run_sweep(spec: SweepSpec, *, scheduler: str | None = None, workers: int | None = None,
              out_dir: str | os.PathLike[str] | None = None,
              cache: str | os.PathLike[str] | None = "default",
              progress: Callable[[int, int, Point, dict[str, Any], float], None] | None = _progress_stderr,
              on_result: Callable[[Any, Point, dict[str, Any]], None] | None = None,
              cluster_kwargs: dict[str, Any] | None = None) -> SweepResult:
    """Run every point of ``spec`` on Dask and write the outputs to ``out_dir`` (if given).

    ``scheduler``: address of a running scheduler (``tcp://host:8786``); default: a
    ``LocalCluster`` of ``workers`` (default: the CPU count) single-threaded worker processes.
    ``cache``: the result cache directory (``"default"``: :func:`cache_dir`; None: no cache).
    ``progress(done, total, point, record, elapsed)`` is called as each point finishes;
    ``on_result(client, point, record)`` too (tests use it to kill a worker mid-sweep).
    """
    import dask
    from distributed import Client, LocalCluster, as_completed

    points = expand(spec)
    fp = code_fingerprint()
    for p in points:
        p.key = point_key(p.task, fp)
    store = ResultCache(cache_dir() if cache == "default" else cache)
    plans_dir = Path(out_dir) / "plans" if out_dir is not None else None
    if out_dir is not None and not Path(out_dir).parent.exists():
        raise UserFileNotFoundError(f"output directory {str(Path(out_dir).parent)!r} does not exist")
    records: dict[int, dict[str, Any]] = {}
    plan_texts: dict[int, str | None] = {}
    t_start = time.perf_counter()
    n_cached = 0
    for p in points:
        hit = store.get(p.key)
        if hit is not None:
            rec, plan = hit
            records[p.index] = _finish(p, rec, True)
            plan_texts[p.index] = plan
            n_cached += 1
            if progress:
                progress(len(records), len(points), p, records[p.index], 0.0)
    todo = [p for p in points if p.index not in records]
    cluster = None
    client = None
    n_workers = 0
    address = scheduler or "local"
    startup = 0.0
    run_seconds = 0.0
    try:
        if todo:
            t0 = time.perf_counter()
            if scheduler:
                try:
                    client = Client(scheduler, timeout="10s")
                except (OSError, TimeoutError) as e:
                    raise UserError(f"cannot reach the Dask scheduler at {scheduler!r} ({e}); start "
                                    "one with 'dask scheduler' and workers with "
                                    f"'dask worker {scheduler}'") from None
            else:
                n = workers or os.cpu_count() or 1
                import logging
                with dask.config.set({"distributed.scheduler.allowed-failures": 1}), \
                        _signals_held():
                    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                           dashboard_address=None, memory_limit=0,
                                           silence_logs=logging.ERROR,
                                           **(cluster_kwargs or {}))
                client = Client(cluster)
                address = cluster.scheduler_address
            n_workers = len(client.scheduler_info()["workers"])
            if n_workers == 0:
                client.wait_for_workers(1, timeout=60)
                n_workers = len(client.scheduler_info()["workers"])
            try:
                client.run(_warm, spec.model)
            except Exception:  # noqa: BLE001 - a worker that cannot warm up fails its tasks,
                pass  # which report the reason point by point
            startup = time.perf_counter() - t0
            t_run = time.perf_counter()
            futs = {client.submit(run_point, p.task, key=f"fmforge-sweep-{p.key}", pure=False,
                                  retries=1): p for p in todo}
            ac = as_completed(futs)
            for fut in ac:
                p = futs[fut]
                if fut.status == "finished":
                    rec = fut.result()
                    plan = rec.get("plan_text")
                    records[p.index] = _finish(p, rec, False)
                    plan_texts[p.index] = plan
                    store.put(p.key, records[p.index], plan)
                else:
                    try:
                        exc = fut.exception()
                    except Exception as e:  # noqa: BLE001 - cancelled futures raise here
                        exc = e
                    records[p.index] = _failure(p, exc)
                    plan_texts[p.index] = None
                fut.release()
                if progress:
                    progress(len(records), len(points), p, records[p.index],
                             time.perf_counter() - t_run)
                if on_result:
                    on_result(client, p, records[p.index])
            run_seconds = time.perf_counter() - t_run
    finally:
        with _signals_held():
            if client is not None:
                client.close()
            if cluster is not None:
                cluster.close()
    ordered = [records[p.index] for p in points]
    front = pareto_front(ordered)
    for i, r in enumerate(ordered):
        r["pareto"] = i in front
    result = SweepResult(spec, points, ordered, front, n_workers, address, startup,
                         time.perf_counter() - t_start, n_cached, run_seconds)
    if out_dir is not None:
        Path(out_dir).mkdir(exist_ok=True)
        assert plans_dir is not None
        for p in points:
            text = plan_texts.get(p.index)
            if text:
                f = plans_dir / f"{p.id}_{p.key[:12]}.json"
                _write_atomic(f, text)
                ordered[p.index]["plan"] = str(f)
        result.files = write_outputs(result, Path(out_dir))
    return result


# --------------------------------------------------------------------------- analysis, outputs

def _latency(r: dict[str, Any]) -> float:
    m = r.get("measured_latency_s")
    return float(m if m is not None else r["predicted_latency_s"])


def pareto_front(records: list[dict[str, Any]]) -> list[int]:
    """Indices of the ``ok`` records no other ``ok`` record dominates on latency (measured when
    there is a measurement, else predicted), predicted energy and, when every ok record has
    one, accuracy (cosine mean, higher is better). Ties: identical objective vectors all stay."""
    ok = [i for i, r in enumerate(records) if r["status"] == "ok"]
    with_acc = bool(ok) and all(records[i].get("cosine_mean") is not None for i in ok)

    def vec(r: dict[str, Any]) -> tuple[float, ...]:
        v = (_latency(r), float(r["predicted_energy_j"]))
        return v + (-float(r["cosine_mean"]),) if with_acc else v

    vs = {i: vec(records[i]) for i in ok}
    front = []
    for i in ok:
        a = vs[i]
        dominated = any(all(x <= y for x, y in zip(vs[j], a, strict=True)) and vs[j] != a
                        for j in ok if j != i)
        if not dominated:
            front.append(i)
    return front


def _resource(r: dict[str, Any]) -> tuple[float | None, str]:
    """One resource number per point: measured LUTs when built, else the predicted DSPs (FPGA)
    or MACs (ASIC) or crossbars (IMC)."""
    m = r.get("measured_resources")
    if m:
        return float(m["luts"]), "LUTs (measured)"
    used = r.get("resources_used") or {}
    for k, label in (("dsps", "DSPs (predicted)"), ("macs", "MACs (predicted)"),
                     ("crossbars", "crossbars (predicted)")):
        if k in used:
            return float(used[k]), label
    return None, ""


def _fmax(r: dict[str, Any]) -> float | None:
    return r.get("measured_fmax_mhz") or r.get("predicted_fmax_mhz")


#: CSV / table columns: (header, function of a record)
def _columns() -> list[tuple[str, Callable[[dict[str, Any]], Any]]]:
    lab = lambda k: (lambda r: r["labels"].get(k))  # noqa: E731
    get = lambda k: (lambda r: r.get(k))  # noqa: E731
    return [
        ("id", get("id")), ("array", lab("array")), ("dataflow", lab("dataflow")),
        ("lanes", lab("lanes")), ("clock_mhz", lab("clock_mhz")), ("sparse", lab("sparse")),
        ("keep", lab("keep")), ("objective", lab("objective")), ("devices", lab("devices")),
        ("status", get("status")), ("pareto", get("pareto")),
        ("predicted_latency_s", get("predicted_latency_s")),
        ("measured_latency_s", get("measured_latency_s")),
        ("predicted_energy_j", get("predicted_energy_j")),
        ("predicted_fmax_mhz", get("predicted_fmax_mhz")),
        ("measured_fmax_mhz", get("measured_fmax_mhz")),
        ("accelerator_ops", get("accelerator_ops")),
        ("resources_used", lambda r: ";".join(f"{k}={v}" for k, v in
                                              sorted((r.get("resources_used") or {}).items()))),
        ("measured_luts", lambda r: (r.get("measured_resources") or {}).get("luts")),
        ("measured_dsps", lambda r: (r.get("measured_resources") or {}).get("dsps")),
        ("measured_brams", lambda r: (r.get("measured_resources") or {}).get("brams")),
        ("cosine_mean", get("cosine_mean")), ("keep_ratio", get("keep_ratio")),
        ("cosim_match", get("cosim_match")), ("task_seconds", get("task_seconds")),
        ("cached", get("cached")), ("reason", get("reason")), ("key", get("key")),
    ]


def _csv(records: list[dict[str, Any]]) -> str:
    cols = _columns()
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([c for c, _ in cols])
    for r in records:
        w.writerow(["" if (v := f(r)) is None else v for _, f in cols])
    return buf.getvalue()


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v * 1e3:.4f}"


def table(result: SweepResult) -> str:
    """The human-readable table of a sweep (one line per point, ``*`` on the Pareto front)."""
    head = (f"{'':1}{'id':<5}{'array':>6}{'df':>4}{'lanes':>6}{'MHz':>6}{'sparse':>9}{'keep':>6}"
            f"{'obj':>8}{'lat ms':>10}{'meas ms':>10}{'mJ':>9}{'Fmax':>7}{'res':>9}{'acc':>8}"
            f"{'s':>6}  status")
    lines = [head]
    for r in result.records:
        lb = r["labels"]
        res, _ = _resource(r) if r["status"] == "ok" else (None, "")
        fmax = _fmax(r) if r["status"] == "ok" else None
        status = r["status"] + (" (cached)" if r.get("cached") else "")
        if r["status"] != "ok":
            status += f": {r['reason']}"
        acc = r.get("cosine_mean")
        lines.append(
            f"{'*' if r.get('pareto') else ' '}{r['id']:<5}{lb['array'] or '-':>6}"
            f"{lb['dataflow'] or '-':>4}{lb['lanes'] or '-':>6}"
            f"{_fmt_num(lb['clock_mhz']) if lb['clock_mhz'] else '-':>6}{lb['sparse']:>9}"
            f"{_fmt_num(lb['keep']) if lb['keep'] is not None else '-':>6}{lb['objective']:>8}"
            f"{_ms(r.get('predicted_latency_s')):>10}{_ms(r.get('measured_latency_s')):>10}"
            f"{_ms(r.get('predicted_energy_j')):>9}{f'{fmax:.0f}' if fmax else '-':>7}"
            f"{f'{res:.0f}' if res is not None else '-':>9}"
            f"{f'{acc:.4f}' if acc is not None else '-':>8}"
            f"{r.get('task_seconds') or 0.0:>6.1f}  {status}")
    n_ok = sum(r["status"] == "ok" for r in result.records)
    lines.append(f"{len(result.records)} points: {n_ok} ok ({result.cached} from the cache), "
                 f"{len(result.records) - n_ok} not; Pareto front (*): "
                 f"{', '.join(result.records[i]['id'] for i in result.front) or '-'}; "
                 f"{result.workers} worker(s) on {result.scheduler}, {result.wall_seconds:.1f} s")
    return "\n".join(lines)


def _save_png(fig: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _scatter(ax: Any, pts: list[tuple[float, float, str, bool]], xlabel: str, ylabel: str,
             title: str, logx: bool = False, logy: bool = False) -> None:
    if not pts:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    else:
        rest = [p for p in pts if not p[3]]
        front = [p for p in pts if p[3]]
        if rest:
            ax.scatter([p[0] for p in rest], [p[1] for p in rest], c="tab:blue", s=30,
                       label="point")
        if front:
            fs = sorted(front)
            ax.scatter([p[0] for p in fs], [p[1] for p in fs], c="tab:red", s=60, marker="*",
                       label="Pareto front", zorder=3)
            ax.plot([p[0] for p in fs], [p[1] for p in fs], c="tab:red", lw=0.8, ls="--")
        at: dict[tuple[str, str], list[str]] = {}
        for x, y, name, _ in pts:  # points that coincide share one label
            at.setdefault((f"{x:.4g}", f"{y:.4g}"), []).append(name)
        for (x, y), names in at.items():
            ax.annotate(",".join(names), (float(x), float(y)), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        ax.legend(fontsize=7)
        if logx and all(p[0] > 0 for p in pts):
            ax.set_xscale("log")
        if logy and all(p[1] > 0 for p in pts):
            ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)


def write_outputs(result: SweepResult, out: Path) -> dict[str, str]:
    """Write ``results.csv``, ``results.json``, ``table.txt`` and the three PNG plots into
    ``out`` (each through a temporary name); returns name -> path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    recs = result.records
    files = {"csv": out / "results.csv", "json": out / "results.json", "table": out / "table.txt",
             "latency_energy": out / "latency_energy.png",
             "resources_fmax": out / "resources_fmax.png",
             "accuracy_keep": out / "accuracy_keep.png"}
    _write_atomic(files["csv"], _csv(recs))
    _write_atomic(files["table"], table(result) + "\n")
    ok = [r for r in recs if r["status"] == "ok"]
    name = lambda r: r["id"]  # noqa: E731

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    _scatter(ax, [(_latency(r) * 1e3, r["predicted_energy_j"] * 1e3, name(r), r["pareto"])
                  for r in ok], "latency (ms; measured where measured)", "energy (mJ, predicted)",
             f"{result.spec.name}: latency vs energy", logx=True, logy=True)
    fig.tight_layout()
    _save_png(fig, files["latency_energy"])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    pts, labels = [], set()
    for r in ok:
        v, lab = _resource(r)
        f = _fmax(r)
        if v is not None and f:
            pts.append((v, float(f), name(r), r["pareto"]))
            labels.add(lab)
    _scatter(ax, pts, " / ".join(sorted(labels)) or "resources", "Fmax / clock (MHz)",
             f"{result.spec.name}: resources vs Fmax (measured where built)", logx=True)
    fig.tight_layout()
    _save_png(fig, files["resources_fmax"])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    pts = []
    for r in ok:
        if r.get("cosine_mean") is None:
            continue
        k = r.get("keep_ratio")
        if k is None:
            k = r["labels"].get("keep") if r["labels"].get("keep") is not None else 1.0
        pts.append((float(k), float(r["cosine_mean"]), name(r), r["pareto"]))
    _scatter(ax, pts, "keep ratio (kept / allowed query-key pairs, measured)",
             "cosine vs float model (mean)", f"{result.spec.name}: accuracy vs keep ratio")
    if not pts:
        ax.texts[0].set_text("no accuracy measured (set accuracy = N in the spec)")
    fig.tight_layout()
    _save_png(fig, files["accuracy_keep"])
    plt.close(fig)

    doc = {"format": SWEEP_FORMAT, "spec": result.spec.path, "name": result.spec.name,
           "points": len(recs), "ok": result.ok, "cached": result.cached,
           "failed": sum(r["status"] != "ok" for r in recs), "workers": result.workers,
           "scheduler": result.scheduler, "startup_seconds": result.startup_seconds,
           "run_seconds": result.run_seconds, "wall_seconds": result.wall_seconds,
           "pareto": [recs[i]["id"] for i in result.front], "results": recs,
           "files": {k: str(v) for k, v in files.items()}}
    _write_atomic(files["json"], json.dumps(doc, indent=1, sort_keys=True, default=_json_default))
    return {k: str(v) for k, v in files.items()}


def _json_default(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return str(v)
