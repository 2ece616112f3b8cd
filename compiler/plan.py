"""The plan: a versioned, schema-validated JSON document (see :data:`PLAN_SCHEMA`).

It records the model it was compiled from (with the graph fingerprint the executor checks), the
devices with the hardware to build on each (units, parameters, predicted resources and clock),
the placement, lowering, quantization scales and predicted cost of every op, the schedule, per
device totals, the ops no accelerator could take (with the reasons) and the assumptions behind the
numbers. :func:`dumps_plan` is deterministic (sorted keys); :func:`load_plan` validates and
raises :class:`compiler.schema.SchemaError` naming the bad field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compiler.frontend import MAX_SEQ_LEN
from compiler.ir import OP_KINDS
from compiler.schema import SchemaError, to_json_schema, validate_json_schema
from golden.errors import UserFileNotFoundError, UserValueError
from golden.outputs import write_atomic

__all__ = ["PLAN_FORMAT", "PLAN_VERSION", "PLAN_SCHEMA", "PLAN_JSON_SCHEMA_PATH", "UNIT_KINDS",
           "check_plan", "dumps_plan", "load_plan", "plan_json_schema", "shipped_plan_schema",
           "timeline_png", "TIMELINE_COLORS", "write_timeline"]

PLAN_FORMAT = "fmforge-plan"
PLAN_VERSION = 2

_NUM = {"range": "number", "min": 0, "max": 1e12}  # seconds, joules: never negative
#: the largest MAC count of one op a plan may state (far above any model we compile)
MAX_MACS = 2**53
_MACS = {"range": "integer", "min": 0, "max": MAX_MACS}
_SCALE = {"range": "number", "min": 1e-30, "max": 1e30}
_TENSOR = {"object": {"shape": {"array": "integer"}, "dtype": "string"}}
_LINK = {"object": {"name": "string", "bandwidth_bytes_s": ("number", "null"),
                    "latency_s": "number", "power_w": "number"}}
_RES = {"object": {}, "extra": ("integer", "number", "null")}
#: a linear's activation smoothing (compiler.passes.smooth): factors per input channel, the form
#: (folded into the producer's parameters, or a per-channel quantizer on the host with its own
#: input scale), the calibration metric with and without it
_SMOOTH = {"object": {"alpha": {"range": "number", "min": 0, "max": 1},
                      "form": {"enum": ["fold", "host"]},
                      "factors": {"array": _SCALE, "min": 1},
                      "error": {"range": "number", "min": 0, "max": 1e30},
                      "error_off": {"range": "number", "min": 0, "max": 1e30}},
           "optional": {"into": "string", "in_scale": _SCALE}}
PLAN_SCHEMA: dict[str, Any] = {"object": {
    "format": {"enum": [PLAN_FORMAT]},
    "version": {"enum": [PLAN_VERSION]},
    "model": {"object": {"source": "string",
                         "seq_len": {"nullable": {"range": "integer", "min": 1,
                                                  "max": MAX_SEQ_LEN}},
                         "graph_fingerprint": "string",
                         "inputs": {"array": {"object": {"name": "string", "shape": {"array": "integer"},
                                                         "dtype": "string"}}},
                         "nodes": "integer"}},
    "objective": {"enum": ["latency", "energy"]},
    "devices": {"array": {"object": {
        "name": "string", "kind": {"enum": ["fpga", "asic", "imc", "core", "cpu", "gpu"]},
        "params": {"object": {}, "extra": "any"},
        "link": {"nullable": _LINK},
        "hardware": {"object": {"units": {"array": {"object": {
            "id": "string", "unit": "string", "module": "string",
            "params": {"object": {}, "extra": "any"}, "ops": {"array": "string"},
            "predicted": {"object": {}, "extra": "any"}}}},
            "resources_used": _RES, "resources_available": _RES},
            "optional": {"clock_mhz": "number", "model": "any", "board": "string",
                         "weight_load": {"object": {"bytes": "integer", "seconds": _NUM,
                                                    "note": "string"}},
                         "programs": {"array": {"object": {
                "ops": {"array": "string"}, "instructions": "integer",
                "predicted_cycles": "integer", "busy_cycles": {"object": {}, "extra": "integer"},
                "program_sha256": "string", "image_sha256": "string", "image_bytes": "integer",
                "ext_bytes": "integer", "inputs": {"object": {}, "extra": "any"},
                "outputs": {"object": {}, "extra": "any"}}}}}},
        "spec": "string"}}, "min": 1},
    "ops": {"array": {"object": {
        "name": "string", "op": {"enum": list(OP_KINDS)}, "target": "string", "module": "string",
        "device": "string", "inputs": {"array": "string"}, "out": {"array": _TENSOR},
        "macs": _MACS, "cycles": {"nullable": _MACS}, "seconds": _NUM, "energy_j": _NUM,
        "lowering": {"object": {"unit": "string", "impl": "string"},
                     # a grouped_linear: the rows per expert it was priced with, per sample
                     "optional": {"expert_rows": {"array": {"array": "integer"}}}},
        "quant": {"nullable": {"object": {"in_scales": {"array": _SCALE, "min": 1},
                                           "out_scale": _SCALE},
                               "optional": {"out_scales": {"array": _SCALE, "min": 1},
                                            "in_bits": {"enum": [8, 16]},
                                            "out_bits": {"enum": [8, 32]},
                                            "smooth": _SMOOTH}}},
        "sparse_filter": {"nullable": {"object": {"name": "string"}, "extra": "any"}}}}},
    "schedule": {"array": {"object": {"op": "string", "device": "string", "transfer_in_s": _NUM,
                                      "start_s": _NUM, "end_s": _NUM, "energy_j": _NUM}}},
    "totals": {"object": {"latency_s": _NUM, "energy_j": _NUM,
                          "per_device": {"object": {}, "extra": {"object": {
                              "ops": "integer", "macs": _MACS, "seconds": _NUM,
                              "energy_j": _NUM}}}}},
    "partition": {"object": {"algorithm": "string", "exact": "boolean", "states": "integer",
                             "greedy_objective": _NUM, "objective_value": _NUM}},
    "fallback_ops": {"array": {"object": {"op": "string", "kind": "string", "device": "string",
                                          "reason": "string"}}},
    "assumptions": {"array": "string"},
}, "optional": {
    # per accelerator, the plan priced with every op it supports moved onto it (driver)
    "alternatives": {"array": {"object": {
        "device": "string", "ops": "integer", "ops_moved": "integer", "feasible": "boolean",
        "plan_latency_s": _NUM, "plan_energy_j": _NUM}, "extra": "any"}},
    # the accuracy budget (compiler.accuracy): present when the compile measured it
    "accuracy": {"object": {
        "min_cosine": {"range": "number", "min": -1, "max": 1},
        "expected_cosine": {"range": "number", "min": -1, "max": 1},
        "samples": {"range": "integer", "min": 0, "max": 1_000_000}, "method": "string",
        "groups": {"array": {"object": {
            "group": "string", "kind": "string", "numerics": "string", "devices": {"array": "string"},
            "ops": {"range": "integer", "min": 0, "max": MAX_MACS},
            "cosine": {"nullable": {"range": "number", "min": -1, "max": 1}},
            "cosine_drop": {"nullable": {"range": "number", "min": 0, "max": 2}},
            "integer": "boolean"}}}}},
}}


#: the plan format as a JSON Schema document, shipped with the package (``fmforge schema plan``)
PLAN_JSON_SCHEMA_PATH = Path(__file__).parent / "data" / "plan.schema.json"


def plan_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of :data:`PLAN_SCHEMA` (what the shipped file holds)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": f"{PLAN_FORMAT} version {PLAN_VERSION}",
            "description": "A compiled fmforge plan: model, devices and the hardware each builds, "
                           "placed and lowered ops with quantization and cost, schedule, totals. "
                           "Beyond this schema, loading checks cross references (op devices, "
                           "unit ids) and that every unit's params build it.",
            **to_json_schema(PLAN_SCHEMA)}


_SHIPPED: dict[str, Any] = {}


def shipped_plan_schema() -> dict[str, Any]:
    """The shipped JSON Schema document (read once)."""
    if not _SHIPPED:
        _SHIPPED.update(json.loads(PLAN_JSON_SCHEMA_PATH.read_text(encoding="utf-8")))
    return _SHIPPED


#: device kinds whose ops run on units of hw/ (each such op names its unit id)
UNIT_KINDS = ("fpga", "asic", "core")


def _check_units(plan: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Every ``hardware.units`` entry rebuilds from its params (registry-validated); ids unique."""
    from hw.registry import UNITS, spec_from_json
    from hw.spec import UnitParamError

    units: dict[str, dict[str, dict[str, Any]]] = {}
    for di, d in enumerate(plan["devices"]):
        ids: dict[str, dict[str, Any]] = {}
        for ui, u in enumerate(d["hardware"]["units"]):
            where = f"devices[{di}].hardware.units[{ui}]"
            if u["id"] in ids:
                raise SchemaError(f"{where}.id", f"duplicate unit id {u['id']!r}")
            if u["unit"] not in UNITS:
                raise SchemaError(f"{where}.unit", f"unknown unit {u['unit']!r}; units: "
                                                   f"{', '.join(UNITS)}")
            cls = UNITS[u["unit"]]
            if u["module"] != cls.component:
                raise SchemaError(f"{where}.module", f"unit {u['unit']} is {cls.component}, "
                                                     f"not {u['module']!r}")
            try:
                spec_from_json(u["unit"], u["params"])
            except UnitParamError as e:
                raise SchemaError(f"{where}.params", str(e).removeprefix("params: ")) from None
            ids[u["id"]] = u
        units[d["name"]] = ids
    return units


def check_plan(plan: Any) -> dict[str, Any]:
    """Validate a plan document (schema plus cross references); returns it.

    Beyond the schema: every unit entry is validated against :mod:`hw.registry` (its params
    must build the unit), and every op placed on an fpga/asic device names in
    ``lowering.unit`` a unit id of that device whose ``ops`` list it, of a kind that computes
    the op.
    """
    from hw.registry import UNITS

    validate_json_schema(plan, shipped_plan_schema())
    names = {d["name"] for d in plan["devices"]}
    kinds = {d["name"]: d["kind"] for d in plan["devices"]}
    units = _check_units(plan)
    ops = set()
    for i, op in enumerate(plan["ops"]):
        if op["device"] not in names:
            raise SchemaError(f"ops[{i}].device", f"device {op['device']!r} is not in devices")
        if kinds[op["device"]] in UNIT_KINDS:
            uid = op["lowering"]["unit"]
            u = units[op["device"]].get(uid)
            if u is None:
                raise SchemaError(f"ops[{i}].lowering.unit", f"op {op['name']!r} runs on unit "
                                  f"{uid!r}, which device {op['device']!r} does not list")
            if op["op"] not in UNITS[u["unit"]].ops or op["name"] not in u["ops"]:
                raise SchemaError(f"ops[{i}].lowering.unit", f"unit {uid!r} ({u['unit']}) does "
                                  f"not run op {op['name']!r} ({op['op']})")
        ops.add(op["name"])
    for i, s in enumerate(plan["schedule"]):
        if s["op"] not in ops:
            raise SchemaError(f"schedule[{i}].op", f"unknown op {s['op']!r}")
        if s["device"] not in names:
            raise SchemaError(f"schedule[{i}].device", f"device {s['device']!r} is not in devices")
    if len(plan["schedule"]) != len(plan["ops"]):
        raise SchemaError("schedule", "must list every op exactly once")
    return plan


def dumps_plan(plan: dict[str, Any]) -> str:
    """Deterministic JSON text of a plan."""
    return json.dumps(plan, sort_keys=True, indent=1) + "\n"


def load_plan(path: str | Path) -> dict[str, Any]:
    """Read and validate a plan file (errors name the file and the field)."""
    p = Path(path)
    if not p.is_file():
        raise UserFileNotFoundError(f"plan file not found: {p}")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserValueError(f"plan {p} is not JSON: {e}") from None
    except RecursionError:
        raise UserValueError(f"plan {p} is nested too deeply to be a plan") from None
    except OSError as e:
        raise UserValueError(f"plan {p} cannot be read: {e.strerror or e}") from None
    try:
        return check_plan(doc)
    except SchemaError as e:
        raise SchemaError(e.path, f"{str(e).split(': ', 1)[1]} (in plan {p})") from None


TIMELINE_COLORS = {"linear": "tab:blue", "matmul": "tab:cyan", "attention": "tab:orange",
                   "layer_norm": "tab:green", "softmax": "tab:red", "gelu": "tab:purple",
                   "layout": "lightgray"}


def timeline_png(plan: dict[str, Any], draw_bars: Any = None) -> bytes:
    """The schedule as PNG bytes: one lane per device, transfers hatched. ``draw_bars(ax, plan,
    lane, kinds, scale)`` draws the bars (default: :func:`_timeline_bars`)."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devs = [d["name"] for d in plan["devices"]]
    lane = {d: i for i, d in enumerate(devs)}
    kinds = {o["name"]: o["op"] for o in plan["ops"]}
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.6 * len(devs)))
    scale, unit = (1e3, "ms") if plan["totals"]["latency_s"] < 10 else (1.0, "s")
    (draw_bars or _timeline_bars)(ax, plan, lane, kinds, scale)
    ax.set_yticks(range(len(devs)), devs)
    ax.set_xlabel(f"time ({unit}); hatched: transfers")
    ax.set_title(f"{plan['model']['source']}: predicted {plan['totals']['latency_s'] * 1e3:.3f} ms, "
                 f"{plan['totals']['energy_j'] * 1e3:.3f} mJ ({plan['objective']})")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in TIMELINE_COLORS.values()]
    ax.legend(handles, list(TIMELINE_COLORS), loc="upper right", fontsize=7, ncol=4)
    fig.tight_layout()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    finally:
        plt.close(fig)
    return buf.getvalue()


def _timeline_bars(ax: Any, plan: dict[str, Any], lane: dict[str, int], kinds: dict[str, str],
                   scale: float) -> None:
    """The bars barh would draw, added as plain rectangles in the same order with the data
    limits updated once (barh updated them bar by bar: 1.3 s for GPT-2-small's 523 ops)."""
    from matplotlib.patches import Rectangle

    rects, corners = [], []
    for s in plan["schedule"]:
        y = lane[s["device"]] - 0.3
        bars = [((s["end_s"] - s["start_s"]) * scale, s["start_s"] * scale,
                 {"facecolor": TIMELINE_COLORS.get(kinds[s["op"]], "tab:brown"), "linewidth": 0})]
        if s["transfer_in_s"] > 0:
            bars.insert(0, (s["transfer_in_s"] * scale, (s["start_s"] - s["transfer_in_s"]) * scale,
                            {"facecolor": "white", "edgecolor": "black", "hatch": "//",
                             "linewidth": 0.3}))
        for width, left, style in bars:
            r = Rectangle((left, y), width, 0.6, label="_nolegend_", **style)
            r.sticky_edges.x.append(left)
            rects.append(r)
            corners += [(left, y), (left + width, y + 0.6)]
    for r in rects:
        ax.add_artist(r)
    if corners:
        ax.update_datalim(corners)
        ax.autoscale_view()


def write_timeline(plan: dict[str, Any], path: str | Path) -> Path:
    """Plot the schedule (one lane per device, transfers hatched) to a PNG, atomically."""
    return write_atomic(path, timeline_png(plan))
