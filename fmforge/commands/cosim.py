"""``fmforge cosim UNIT``: random stimulus through the RTL vs the bit-exact golden model."""

from __future__ import annotations

import argparse
from typing import Any

from fmforge.commands._args import SEED, add_json, int_range
from golden.errors import UserValueError

__all__ = ["register", "UNITS", "replay_plan_op", "replay_plan_ops"]


def _gemm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int_range(1, 64), required=True, help="array rows R")
    p.add_argument("--cols", type=int_range(1, 64), required=True, help="array columns C")
    p.add_argument("--dataflow", default="os", help="os or ws")
    p.add_argument("--m", type=int_range(1, 2**16), required=True, help="rows of A and C")
    p.add_argument("--k", type=int_range(1, 2**16), required=True, help="reduction length")
    p.add_argument("--n", type=int_range(1, 2**16), required=True, help="columns of B and C")
    p.add_argument("--requant", action="store_true", help="requantize the output to int8")
    p.add_argument("--bias", action="store_true", help="add a per-channel int32 bias")


def _check_waves(args: argparse.Namespace) -> None:
    if args.waves and args.simulator != "verilator":
        raise UserValueError(f"--waves needs --simulator verilator (the {args.simulator} "
                             "simulator writes no VCD here)")


def _gemm_run(args: argparse.Namespace) -> dict:
    from sim.cosim import cosim_gemm

    _check_waves(args)

    return cosim_gemm(rows=args.rows, cols=args.cols, dataflow=args.dataflow, m=args.m, k=args.k,
                      n=args.n, seed=args.seed, stall=args.stall, requant=args.requant,
                      bias=args.bias, waves=args.waves, simulator=args.simulator)


def _verdict(r: dict, what: str) -> None:
    """The first two report lines every unit shares: golden verdict, cycles vs the model."""
    verdict = "MATCH" if r["match"] else "MISMATCH"
    cyc = "exact" if r["cycles"] == r["predicted_cycles"] else "MODEL MISMATCH"
    print(f"{what} ({r['simulator']}, stall={r['stall']}, seed={r['seed']}): {verdict} vs golden")
    print(f"  cycles       {r['cycles']:>12,d}  predicted {r['predicted_cycles']:,d} ({cyc})")


def _gemm_report(r: dict) -> None:
    _verdict(r, f"GEMM {r['m']}x{r['k']}x{r['n']} on {r['rows']}x{r['cols']} {r['dataflow']}")
    tb = "exact" if r["timing_ok"] else "MODEL MISMATCH"
    print(f"  end to end   {r['tb_cycles']:>12,d}  testbench-counted: {r['tb_load_cycles']:,d} load, "
          f"{r['tb_stall_cycles']:,d} refused; predicted {r['predicted_total_cycles']:,d} without "
          f"stalls ({tb})")
    print(f"  utilization  {100 * r['utilization']:>11.2f}%  end to end, loads included "
          f"({100 * r['compute_utilization']:.2f}% of the compute cycles)")
    print(f"  sim speed    {r['cycles_per_second']:>12,.0f} cycles/s  {r['macs_per_second']:,.0f} MACs/s "
          f"({r['sim_seconds']:.2f} s)")
    for m in (r["mismatches"] + r["timing_mismatches"])[:3]:
        print(f"  ! {m}")
    if r.get("waves"):
        print(f"  waves: {r['waves']}")


def _nl_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--len", type=int_range(1, 2**16), required=True, help="row length L")
    p.add_argument("--rows", type=int_range(1, 2**16), required=True, help="number of rows")
    p.add_argument("--lanes", type=int_range(1, 64), default=1, help="elements per cycle P (default 1)")


def _nl_run(unit: str):
    def run(args: argparse.Namespace) -> dict:
        from sim.nonlinear_bench import cosim_unit

        if args.waves:
            raise UserValueError(f"--waves is not supported for {unit} (only for gemm with "
                                 "--simulator verilator)")
        return cosim_unit(unit, length=args.len, rows=args.rows, lanes=args.lanes, seed=args.seed,
                          stall=args.stall, simulator=args.simulator)
    return run


def _nl_report(r: dict) -> None:
    _verdict(r, f"{r['unit']} {r['rows']} rows x {r['len']} on {r['lanes']} lanes")
    if r.get("tb_cycles") is not None:
        tb = "exact" if r["tb_cycles"] == r["tb_predicted_cycles"] else "MODEL MISMATCH"
        print(f"  tb edges     {r['tb_cycles']:>12,d}  predicted {r['tb_predicted_cycles']:,d} ({tb}; "
              f"model + {r['tb_sink_stalls']} sink + {r['tb_source_stalls']} source stall edges)")
    print(f"  golden vs float  max {r['max_abs_err_lsb']:.3f} LSB;  sim {r['sim_seconds']:.2f} s")
    if r["error"]:
        print("  ! the unit flagged a framing error")
    for m in r["mismatches"][:3]:
        print(f"  ! {m}")


#: unit name -> (help, add_arguments, run, report)
UNITS: dict[str, tuple[str, Any, Any, Any]] = {
    "gemm": ("GEMM engine vs golden.gemm", _gemm_args, _gemm_run, _gemm_report),
    "requant": ("requantizer vs golden.requant", _nl_args, _nl_run("requant"), _nl_report),
    "gelu": ("integer GELU vs golden.gelu", _nl_args, _nl_run("gelu"), _nl_report),
    "relu": ("ReLU (requantized) vs golden.gelu.relu_int", _nl_args, _nl_run("relu"), _nl_report),
    "softmax": ("row softmax vs golden.softmax", _nl_args, _nl_run("softmax"), _nl_report),
    "layernorm": ("layer norm vs golden.layernorm", _nl_args, _nl_run("layernorm"), _nl_report),
    "rmsnorm": ("RMSNorm vs golden.rmsnorm", _nl_args, _nl_run("rmsnorm"), _nl_report),
    "silu": ("integer SiLU (table) vs golden.silu", _nl_args, _nl_run("silu"), _nl_report),
}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("cosim", help="co-simulate a unit against its golden model",
                              description="Drive random stimulus through a unit's RTL (cocotb + Verilator by "
                                          "default) and compare bit for bit with its golden model and cycle model.")
    p.add_argument("--plan", metavar="PLAN", help="replay an op of a compiled plan on its unit's RTL "
                   "(with --op; instead of UNIT)")
    p.add_argument("--op", metavar="NAME", help="the plan op to replay (with --plan)")
    p.add_argument("--sentence", type=int_range(0, 2**20), default=0, metavar="I",
                   help="input to record the op's operands on: shipped sentence I for MiniLM, "
                        "else example input / seeded variant I (default 0)")
    p.add_argument("--seed", type=SEED, default=0, help="stall seed (with --plan; default 0)")
    p.add_argument("--stall", default="none", choices=("none", "idle", "backpressure", "both"),
                   help="who inserts bubbles (with --plan)")
    p.add_argument("--simulator", default="verilator", choices=("verilator", "amaranth"),
                   help="cocotb + Verilator (default) or the Amaranth simulator (with --plan)")
    add_json(p)
    p.set_defaults(func=_plan_runner)
    units = p.add_subparsers(dest="unit", metavar="UNIT")
    units.required = False
    for name, (help_, add_args, run, report) in UNITS.items():
        u = units.add_parser(name, help=help_, description=help_)
        add_args(u)
        u.add_argument("--seed", type=SEED, default=0, help="stimulus and stall seed (default 0)")
        u.add_argument("--stall", default="none", choices=("none", "idle", "backpressure", "both"),
                       help="who inserts bubbles: the source (idle), the sink (backpressure), both")
        u.add_argument("--waves", action="store_true", help="write a VCD of the run")
        u.add_argument("--simulator", default="verilator", choices=("verilator", "amaranth"),
                       help="cocotb + Verilator (default) or the Amaranth simulator")
        add_json(u)
        u.set_defaults(func=_make_runner(run, report))


def _ok(r: dict) -> bool:
    """Bit-exact, the design's counter equal to its model, and the testbench's own edge count
    equal to its model (GEMM: ``timing_ok``; streaming units: ``tb_cycles``)."""
    ok = bool(r["match"]) and r["cycles"] == r["predicted_cycles"] and bool(r.get("timing_ok", True))
    if "tb_predicted_cycles" in r:
        ok = ok and r["tb_cycles"] is not None and r["tb_cycles"] == r["tb_predicted_cycles"]
    if "routed_plan_cycles" in r:  # a grouped_linear: the plan's model of this routing
        ok = ok and r["routed_plan_cycles"] == r["predicted_cycles"] + r["load_cycles"]
    return ok


def _make_runner(run, report):
    def func(args: argparse.Namespace) -> dict:
        r = run(args)
        r["ok"] = _ok(r)
        if not args.json:
            report(r)
        return r
    return func


def _plan_runner(args: argparse.Namespace) -> dict:
    """``fmforge cosim --plan PLAN --op NAME``: the executor's operands of one op on its RTL."""
    from golden.errors import UserError

    if not args.plan or not args.op:
        raise UserError("cosim needs a UNIT, or --plan PLAN --op NAME")
    r = replay_plan_op(args.plan, args.op, sentence=args.sentence, stall=args.stall,
                       seed=args.seed, simulator=args.simulator)
    r["ok"] = _ok(r)
    if not args.json:
        _verdict(r, f"op {r['op']} ({r['kind']}) on unit {r['unit']} ({r['unit_kind']}) of "
                    f"{r['device']}, input {r['sentence']}")
        if "commands" in r:
            print(f"  commands     {r['commands']:>12,d}  load cycles {r['load_cycles']:,d}; plan "
                  f"prices {r['plan_cycles']:,d} (compute + loads)")
        for e in r.get("experts", []):
            print(f"  expert {e['expert']:>3}   {e['rows']:>5,d} rows  " + (
                f"{e['commands']} command(s), cycles {e['cycles']:,d} (model "
                f"{e['predicted_cycles']:,d}), loads {e['load_cycles']:,d}, "
                f"{'match' if e['match'] else 'MISMATCH'}" if e["rows"] else "no rows: not run"))
        if "routed_plan_cycles" in r:
            print(f"  routing      this input's rows per expert priced by the plan's model: "
                  f"{r['routed_plan_cycles']:,d} cycles (compute + loads); the plan's "
                  f"{r['plan_cycles']:,d} is the mean over {r['plan_routings']} calibration "
                  f"routing(s)" + (f" (recomputed: {r['plan_cycles_from_routings']:,d})"
                                   if "plan_cycles_from_routings" in r else "")
                  + (", this routing among them" if r["routing_in_calibration"] else ""))
        for m in r["mismatches"][:3]:
            print(f"  ! {m}")
    return r


def replay_plan_op(plan_path: str, op: str, *, sentence: int = 0, stall: str = "none",
                   seed: int = 0, simulator: str = "verilator") -> dict:
    """Record ``op``'s integer operands in the executor and run them through its unit."""
    return replay_plan_ops(plan_path, [op], sentence=sentence, stall=stall, seed=seed,
                           simulator=simulator)[0]


def replay_plan_ops(plan_path: str, ops: list[str], *, sentence: int = 0, stall: str = "none",
                    seed: int = 0, simulator: str | dict[str, str] = "verilator") -> list[dict]:
    """:func:`replay_plan_op` for several ops, recorded in one executor run. ``simulator`` may
    map unit kinds to simulators (``{"gemm": "verilator", "layernorm": "amaranth"}``)."""
    from compiler.execute import capture_operands
    from compiler.plan import load_plan
    from golden.errors import UserValueError
    from hw.registry import spec_from_json
    from sim.replay import replay_gemm_ops, replay_stream

    plan = load_plan(plan_path)
    by_name = {x["name"]: x for x in plan["ops"]}
    jobs = []
    for op in ops:
        o = by_name.get(op)
        if o is None:
            raise UserValueError(f"plan {plan_path} has no op {op!r}")
        dev = next(d for d in plan["devices"] if d["name"] == o["device"])
        u = next((x for x in dev["hardware"]["units"] if x["id"] == o["lowering"].get("unit")),
                 None)
        if u is None:
            raise UserValueError(f"op {op!r} ({o['op']}) runs on {dev['name']} ({dev['kind']}), "
                                 "which builds no unit for it: nothing to co-simulate")
        jobs.append((o, dev, u, spec_from_json(u["unit"], u["params"])))
    recs = capture_operands(plan, list(ops), sentence)

    def sim_of(u: dict) -> str:
        return simulator if isinstance(simulator, str) else simulator.get(u["unit"], "verilator")

    # the GEMM ops of one engine run in one simulation (one launch, one build)
    results: dict[str, dict] = {}
    engines: dict[tuple[str, str], list] = {}
    for o, dev, u, spec in jobs:
        if "gemms" in recs[o["name"]]:
            engines.setdefault((dev["name"], u["id"]), []).append((o, u, spec))
    for group in engines.values():
        spec, u = group[0][2], group[0][1]
        rs = replay_gemm_ops(spec, [recs[o["name"]]["gemms"] for o, _, _ in group], stall=stall,
                             seed=seed, simulator=sim_of(u))
        results.update({o["name"]: r for (o, _, _), r in zip(group, rs, strict=True)})
    out = []
    for o, dev, u, spec in jobs:
        rec = recs[o["name"]]
        sim = sim_of(u)
        r = results.get(o["name"]) or replay_stream(spec, rec["x"], rec["y"], stall=stall,
                                                    seed=seed, simulator=sim)
        r.update({"op": o["name"], "kind": o["op"], "unit": u["id"], "unit_kind": u["unit"],
                  "device": dev["name"], "sentence": sentence, "plan_cycles": o["cycles"],
                  "stall": stall, "seed": seed, "simulator": sim, "match": bool(r["match"])})
        if o["op"] == "grouped_linear":
            r.update(_grouped_report(o, spec, rec, r))
        out.append(r)
    return out


def _grouped_report(o: dict, spec: Any, rec: dict, r: dict) -> dict:
    """A ``grouped_linear``'s replay per expert, and the plan's price against it: the plan
    prices the op as one engine GEMM per expert that got rows, averaged over the calibration
    samples' routing (``lowering.expert_rows``); this input's routing priced by the same model
    (``routed_plan_cycles``) must equal the engine's measured compute plus loads, and the mean
    over the plan's routings must give the plan's cycles (``plan_cycles_from_routings``)."""
    from compiler.ir import Node
    from compiler.targets.gemm_common import node_cycles

    rows = [int(v) for v in rec["expert_rows"]]
    k, n = (r["gemms"][0]["k"], r["gemms"][0]["n"]) if r["gemms"] else (0, 0)

    def price(samples: list[list[int]]) -> int:
        node = Node(o["name"], "grouped_linear", o["target"], (), {}, (), attrs={
            "experts": len(rows), "m": sum(rows), "k": k, "n": n, "expert_rows": samples})
        return sum(node_cycles(spec, node)[:2])

    gemms, experts = iter(r["gemms"]), []
    for e, v in enumerate(rows):  # the recorded GEMMs: one per expert that got rows, in order
        x = {"expert": e, "rows": v, "commands": 0}
        if v:
            g = next(gemms)
            x.update({key: g[key] for key in ("commands", "match", "cycles", "predicted_cycles",
                                              "load_cycles")})
        experts.append(x)
    seen = [list(x) for x in o["lowering"].get("expert_rows") or []]
    out = {"expert_rows": rows, "experts": experts,
           "routed_plan_cycles": price([rows]) if r["gemms"] else 0,
           "plan_routings": len(seen), "routing_in_calibration": rows in seen}
    if seen:
        out["plan_cycles_from_routings"] = price(seen)
    return out
