"""``fmforge verilog UNIT``: write a unit's Verilog (deterministic: ``emit_src=False``)."""

from __future__ import annotations

import argparse
import hashlib
import sys
from typing import Any

from fmforge.commands._args import (
    SEED,
    add_json,
    check_output_dir,
    check_output_file,
    float_range,
    int_range,
    write_atomic,
)

__all__ = ["register", "UNITS", "CLI_UNITS", "add_gemm_args", "gemm_from_args", "gemm_spec_from_args"]


def add_gemm_args(p: argparse.ArgumentParser, *, buffers: int = 128) -> None:
    """Elaboration arguments of the GEMM engine."""
    p.add_argument("--rows", type=int_range(1, 64), required=True, help="array rows R")
    p.add_argument("--cols", type=int_range(1, 64), required=True, help="array columns C")
    p.add_argument("--dataflow", default="os", help="os (output-stationary) or ws (weight-stationary)")
    for dim in ("m", "k", "n"):
        p.add_argument(f"--max-{dim}", type=int_range(1, 2**16), default=buffers,
                       help=f"largest {dim.upper()} the on-chip buffers take (default {buffers})")
    p.add_argument("--requant", action=argparse.BooleanOptionalAction, default=True,
                   help="include the int8 requantizer (default: yes)")


def gemm_from_args(args: argparse.Namespace):
    return gemm_spec_from_args(args).build()


def gemm_spec_from_args(args: argparse.Namespace):
    from hw.gemm import GemmSpec

    return GemmSpec(rows=args.rows, cols=args.cols, dataflow=args.dataflow, max_m=args.max_m,
                    max_k=args.max_k, max_n=args.max_n, requant=args.requant)


def _requant_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lanes", type=int_range(1, 64), default=1, help="elements per cycle P (default 1)")
    p.add_argument("--channels", type=int_range(1, 2**16), required=True, help="row length N (P must divide it)")


def _requant_spec(args: argparse.Namespace):
    from hw.requant import RequantSpec

    return RequantSpec(lanes=args.lanes, channels=args.channels)


def _gelu_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lanes", type=int_range(1, 64), default=1, help="elements per cycle P (default 1)")
    p.add_argument("--mode", default="gelu", choices=("gelu", "relu"), help="I-BERT GELU or ReLU")
    p.add_argument("--in-scale", type=float_range(1e-3, 100), default=0.05, help="real scale of the int8 input")
    p.add_argument("--out-scale", type=float_range(1e-4, 100), default=0.03, help="real scale of the int8 output")


def _gelu_spec(args: argparse.Namespace):
    from hw.gelu import GeluSpec

    return GeluSpec(lanes=args.lanes, in_scale=args.in_scale, out_scale=args.out_scale, mode=args.mode)


def _softmax_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lanes", type=int_range(1, 64), default=1, help="logits per word P (default 1)")
    p.add_argument("--max-length", type=int_range(1, 2**16), default=128,
                   help="longest row the buffers take (default 128)")
    p.add_argument("--scale", type=float_range(1e-6, 100), default=1 / 16, help="real scale of the logits (default 1/16)")


def _softmax_spec(args: argparse.Namespace):
    from hw.softmax import SoftmaxSpec

    return SoftmaxSpec(lanes=args.lanes, max_length=args.max_length, scale=args.scale)


def _layernorm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lanes", type=int_range(1, 64), default=1, help="values per word P (default 1)")
    p.add_argument("--length", type=int_range(1, 4096), required=True, help="row length N (P must divide it)")
    p.add_argument("--in-bits", type=int_range(2, 32), default=8, help="significant input bits (default 8)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the example gamma/beta (default 0)")


def _layernorm_spec(args: argparse.Namespace):
    from sim.nonlinear_bench import LayerNormConfig

    return LayerNormConfig(lanes=args.lanes, length=args.length, in_bits=args.in_bits,
                           seed=args.seed).spec()  # seeded example gamma/beta


def _rmsnorm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lanes", type=int_range(1, 64), default=1, help="values per word P (default 1)")
    p.add_argument("--length", type=int_range(1, 4096), required=True, help="row length N (P must divide it)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the example gamma (default 0)")


def _rmsnorm_spec(args: argparse.Namespace):
    from sim.nonlinear_bench import RmsNormConfig

    return RmsNormConfig(lanes=args.lanes, length=args.length, seed=args.seed).spec()  # seeded gamma


def _silu_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lanes", type=int_range(1, 64), default=1, help="elements per cycle P (default 1)")
    p.add_argument("--in-scale", type=float_range(1e-6, 100), default=0.05, help="real scale of the int8 input")
    p.add_argument("--out-scale", type=float_range(1e-6, 100), default=0.03, help="real scale of the int8 output")


def _silu_spec(args: argparse.Namespace):
    from hw.silu import SiluSpec

    return SiluSpec(lanes=args.lanes, in_scale=args.in_scale, out_scale=args.out_scale)


def _core_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int_range(1, 64), default=8, help="array rows (default 8)")
    p.add_argument("--cols", type=int_range(1, 64), default=8, help="array columns (default 8)")
    p.add_argument("--dataflow", choices=("os", "ws"), default="os", help="GEMM dataflow")
    p.add_argument("--bytes-per-cycle", type=int_range(1, 64), default=4,
                   help="external-memory bytes per beat (default 4)")
    p.add_argument("--queue-depth", type=int_range(1, 1024), default=4,
                   help="instruction queue entries (default 4)")
    p.add_argument("--sp-kb", type=int_range(1, 16384), default=256,
                   help="scratchpad KiB (default 256)")
    p.add_argument("--imem-instrs", type=int_range(1, 65536), default=4096,
                   help="instruction memory entries (default 4096)")


def _core_spec(args: argparse.Namespace):
    from hw.core_spec import CoreSpec

    return CoreSpec(rows=args.rows, cols=args.cols, dataflow=args.dataflow,
                    bytes_per_cycle=args.bytes_per_cycle, queue_depth=args.queue_depth,
                    sp_bytes=1024 * args.sp_kb, imem_instrs=args.imem_instrs)


def _imc_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int_range(1, 1024), default=128, help="word lines per row tile (default 128)")
    p.add_argument("--cols", type=int_range(1, 1024), default=8, help="bit lines = output lanes (default 8)")
    p.add_argument("--tiles", type=int_range(1, 64), default=1, help="row tiles per token (default 1)")
    p.add_argument("--k", type=int_range(1, 65536), help="rows in use (default rows * tiles)")
    p.add_argument("--cell-bits", type=int_range(1, 8), default=2, help="bits per cell (default 2)")
    p.add_argument("--dac-bits", type=int_range(1, 8), default=1, help="input bits per step (default 1)")
    p.add_argument("--adc-bits", type=int_range(1, 16), default=9, help="ADC bits (default 9)")
    p.add_argument("--adc-shift", type=int_range(0, 16), default=0, help="log2 of the ADC LSB (default 0)")
    p.add_argument("--differential", action="store_true", help="differential weight encoding")
    p.add_argument("--requant", action=argparse.BooleanOptionalAction, default=True,
                   help="int8 output through the requantizer (default: yes)")


def _imc_spec(args: argparse.Namespace):
    from hw.imc import ImcSpec

    return ImcSpec(rows=args.rows, cols=args.cols, tiles=args.tiles,
                   k=args.k or args.rows * args.tiles, cell_bits=args.cell_bits,
                   dac_bits=args.dac_bits, adc_bits=args.adc_bits, adc_shift=args.adc_shift,
                   differential=args.differential, requant=args.requant)


def _spatten_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lanes", type=int_range(1, 64), default=4, help="probability codes per word (default 4)")
    p.add_argument("--max-tokens", type=int_range(1, 4096), default=128,
                   help="longest sequence (default 128)")
    p.add_argument("--max-heads", type=int_range(1, 256), default=12, help="most heads (default 12)")
    p.add_argument("--token-bits", type=int_range(1, 64), default=24,
                   help="token importance accumulator bits (default 24)")
    p.add_argument("--head-bits", type=int_range(1, 64), default=20,
                   help="head importance accumulator bits (default 20)")


def _spatten_spec(args: argparse.Namespace):
    from hw.sparse_spatten import SpattenSpec

    return SpattenSpec(lanes=args.lanes, max_tokens=args.max_tokens, max_heads=args.max_heads,
                       token_bits=args.token_bits, head_bits=args.head_bits)


#: registry unit kind -> (CLI flags, spec from the parsed flags); help comes from the spec class
CLI_UNITS: dict[str, tuple[Any, Any]] = {
    "gemm": (add_gemm_args, gemm_spec_from_args),
    "requant": (_requant_args, _requant_spec),
    "gelu": (_gelu_args, _gelu_spec),
    "softmax": (_softmax_args, _softmax_spec),
    "layernorm": (_layernorm_args, _layernorm_spec),
    "rmsnorm": (_rmsnorm_args, _rmsnorm_spec),
    "silu": (_silu_args, _silu_spec),
    "core": (_core_args, _core_spec),
    "imc": (_imc_args, _imc_spec),
    "sparse_spatten": (_spatten_args, _spatten_spec),
}


def _field_cli(cls: Any) -> tuple[Any, Any] | None:
    """CLI flags made from a spec's dataclass fields when every one is an int or a bool with a
    default (``--max-keys 128``); the spec's own checks give the range errors. None otherwise."""
    import dataclasses

    fields = dataclasses.fields(cls)
    if not all(f.default is not dataclasses.MISSING and type(f.default) in (int, bool)
               for f in fields):
        return None

    def add_args(p: argparse.ArgumentParser) -> None:
        for f in fields:
            flag = "--" + f.name.replace("_", "-")
            if type(f.default) is bool:
                p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                               help=f"{f.name} (default: {f.default})")
            else:
                p.add_argument(flag, type=int_range(0, 1 << 30), default=f.default,
                               help=f"{f.name} (default {f.default})")

    def spec(args: argparse.Namespace) -> Any:
        return cls(**{f.name: getattr(args, f.name) for f in fields})

    return add_args, spec


def _units() -> dict[str, tuple[str, Any, Any]]:
    """unit name -> (help, add_arguments, make_component), for every unit of the registry."""
    from hw.registry import UNITS as REGISTRY

    cli = dict(CLI_UNITS)
    for kind, cls in REGISTRY.items():
        if kind not in cli and (made := _field_cli(cls)) is not None:
            cli[kind] = made
    missing = set(REGISTRY) - set(cli)
    assert not missing, f"registry units without CLI flags: {missing}"
    out = {}
    for kind, cls in REGISTRY.items():
        add_args, spec = cli[kind]
        out[kind] = (cls.summary, add_args,
                     lambda a, spec=spec: spec(a).build())
    return out


UNITS = _units()


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("verilog", help="write a unit's Verilog",
                              description="Convert an accelerator unit to Verilog (deterministic output).")
    p.add_argument("--plan", metavar="PLAN", help="write the Verilog of every unit of a plan's device "
                   "(with --device and -o DIR; instead of UNIT)")
    p.add_argument("--device", metavar="NAME", help="the plan device (with --plan)")
    p.add_argument("-o", "--output", metavar="DIR", dest="plan_output",
                   help="directory for the units' Verilog (with --plan)")
    add_json(p)
    p.set_defaults(func=_run_plan)
    units = p.add_subparsers(dest="unit", metavar="UNIT")
    units.required = False
    for name, (help_, add_args, make) in UNITS.items():
        u = units.add_parser(name, help=help_, description=help_)
        add_args(u)
        u.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
        add_json(u)
        u.set_defaults(func=_run, make=make, unit_name=name)


def _run(args: argparse.Namespace) -> dict:
    from amaranth.back import verilog

    if args.output:  # refused before elaboration
        check_output_file(args.output, "Verilog output")
    component = args.make(args)
    text = verilog.convert(component, name=args.unit_name, emit_src=False)
    out = {"unit": args.unit_name, "bytes": len(text.encode()),
           "sha256": hashlib.sha256(text.encode()).hexdigest(), "verilog": None}
    if args.output:
        out["verilog"] = str(write_atomic(args.output, text))
        if not args.json:
            print(f"wrote {out['verilog']} ({out['bytes']} bytes, sha256 {out['sha256'][:16]})", file=sys.stderr)
    elif not args.json:
        sys.stdout.write(text)
    return out


def _run_plan(args: argparse.Namespace) -> dict:
    """``fmforge verilog --plan PLAN --device NAME -o DIR``: one ``<unit id>.v`` per unit."""

    from compiler.plan import load_plan
    from golden.errors import UserValueError
    from hw.registry import spec_from_json

    if not (args.plan and args.device and args.plan_output):
        raise UserValueError("verilog needs a UNIT, or --plan PLAN --device NAME -o DIR")
    out = check_output_dir(args.plan_output)
    plan = load_plan(args.plan)
    dev = next((d for d in plan["devices"] if d["name"] == args.device), None)
    if dev is None:
        raise UserValueError(f"plan {args.plan} has no device {args.device!r}; devices: "
                             f"{', '.join(d['name'] for d in plan['devices'])}")
    units = dev["hardware"]["units"]
    if not units:
        raise UserValueError(f"device {args.device!r} of plan {args.plan} builds no units")
    texts = []
    for u in units:  # elaborate everything before writing anything
        spec = spec_from_json(u["unit"], u["params"])
        name = u["id"].replace(".", "_")
        texts.append((u, name, spec.verilog(name)))
    for _, name, _ in texts:
        if out.is_dir():
            check_output_file(out / f"{name}.v", "Verilog output")
    out.mkdir(exist_ok=True)
    files = []
    for u, name, text in texts:
        path = write_atomic(out / f"{name}.v", text)
        files.append({"id": u["id"], "unit": u["unit"], "verilog": str(path),
                      "bytes": len(text.encode()), "sha256": hashlib.sha256(text.encode()).hexdigest()})
        if not args.json:
            print(f"wrote {path} ({u['unit']}, {len(text.encode())} bytes)", file=sys.stderr)
    return {"plan": str(args.plan), "device": args.device, "units": files}
