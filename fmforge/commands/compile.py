"""``fmforge compile``: compile a model into a partitioned accelerator plan (JSON + PNG timeline)."""

from __future__ import annotations

import argparse
from typing import Any

from fmforge.commands._args import (
    SEQ_LEN,
    Bounded,
    add_json,
    check_output_file,
    float_range,
    int_range,
    write_atomic,
)
from golden.errors import UserValueError

__all__ = ["register", "run", "report"]


class _Smooth(Bounded):
    """argparse type of ``--smooth``: ``auto``, ``off`` or an alpha in 0..1 (a bounded number)."""

    def __init__(self) -> None:
        super().__init__(float, 0.0, 1.0)
        self.__name__ = "smoothing"

    def __call__(self, text: str) -> str | float:  # type: ignore[override]
        if text.strip().lower() in ("auto", "off"):
            return text.strip().lower()
        try:
            return super().__call__(text)
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"expected auto, off or an alpha: {e}") from None


def register(subparsers: Any) -> None:
    """Add the ``compile`` command to the CLI."""
    p = subparsers.add_parser("compile", help="compile a model into a heterogeneous accelerator plan",
                              description="Export, quantize and partition a model across devices; "
                                          "write the plan and a PNG timeline next to it.")
    p.add_argument("--model", default="minilm", help="minilm, gpt2-small, gpt2-tiny, encoder-tiny, "
                   "bert-/opt-/t5-/llama-/mistral-/qwen2-/vit-/wav2vec2-tiny "
                   "or path/to/file.py:factory (default minilm)")
    p.add_argument("--devices", default="ulx3s-85f,cpu", help="comma-separated devices "
                   "(see 'fmforge devices'; default ulx3s-85f,cpu)")
    p.add_argument("--objective", choices=("latency", "energy"), default="latency")
    p.add_argument("--phase", choices=("prefill", "decode"), default="prefill",
                   help="prefill: the model on --seq-len tokens (default); decode: one step of a "
                   "built-in decoder (gpt2-*, llama/mistral/qwen2/mixtral-tiny) on --seq-len new "
                   "tokens (default 1) after a KV cache of --context tokens")
    p.add_argument("--context", type=int_range(1, 512), default=None, metavar="T",
                   help="KV-cache length of a decode step (with --phase decode)")
    p.add_argument("--seq-len", type=SEQ_LEN, default=None, metavar="N",
                   help="sequence length the model is compiled for (its example and calibration "
                   "inputs; fmforge execute pads to it): token models of the zoo, minilm and "
                   "gpt2-small (default 32), gpt2-tiny and the transformers *-tiny models "
                   "(default 16, at most 128); ignored by encoder-tiny, vit-tiny, wav2vec2-tiny "
                   "and FILE.py models")
    p.add_argument("--ffn-down", choices=("int16", "int8", "float"), default="int16",
                   help="FFN down-projection (linear reading the GELU output): int16 input as two "
                   "int8 passes (default), plain int8, or float on the host")
    p.add_argument("--float-ffn-down", action="store_true",
                   help="same as --ffn-down float")
    p.add_argument("--sparse", metavar="METHOD[:knob=value]", default=None,
                   help="attach a golden.sparse filter to every attention op, e.g. "
                   "sanger:threshold=0.02 (a3, elsa, spatten, energon, sanger)")
    p.add_argument("--min-cosine", type=float_range(-1.0, 1.0), default=0.99, metavar="C",
                   help="accuracy budget: the plan's estimated output cosine against the float "
                   "model (each op kind's integer cost measured on the calibration samples) must "
                   "stay >= C; op kinds that would break it stay in float (default 0.99; -1 "
                   "turns the budget off)")
    p.add_argument("--smooth", type=_Smooth(), default="auto", metavar="auto|off|ALPHA",
                   help="SmoothQuant-style activation smoothing of the int8 linears: auto (default) "
                   "picks, per group of linears reading one value, no smoothing or an alpha in "
                   "0.3..0.8 by their int8 output error on the calibration samples; ALPHA smooths "
                   "every group with that alpha; off disables it (docs/compiler.md)")
    p.add_argument("--calib", type=int_range(1, 256), default=16, metavar="N",
                   help="calibration samples (default 16): held-out shipped sentences for minilm; "
                   "else the example input and random inputs of its shapes (token ids over the "
                   "model's vocabulary, noise with the example's mean and std for float inputs)")
    p.add_argument("-o", "--output", default="plan.json", help="plan file (default plan.json)")
    add_json(p)
    p.set_defaults(func=run)


def report(result: dict[str, Any]) -> str:
    """Human-readable report of a compile result dict."""
    lines = [f"plan {result['plan']}: predicted latency {result['predicted_latency_s'] * 1e3:.3f} ms, "
             f"energy {result['predicted_energy_j'] * 1e3:.3f} mJ, compiled in "
             f"{result['compile_seconds']:.2f} s",
             f"{'device':<14}{'kind':<6}{'ops':>5}{'MMACs':>9}{'time ms':>10}{'energy mJ':>11}  resources used/available"]
    for name, d in result["devices"].items():
        res = ", ".join(f"{k} {d['resources_used'].get(k)}/{v}" for k, v in
                        d["resources_available"].items()) or "-"
        lines.append(f"{name:<14}{d['kind']:<6}{d['ops']:>5}{d['macs'] / 1e6:>9.1f}"
                     f"{d['predicted_seconds'] * 1e3:>10.3f}{d['energy_j'] * 1e3:>11.3f}  {res}")
    acc = result.get("accuracy")
    if acc:
        parts = []
        for g in acc["groups"]:
            if g["cosine"] is None:
                parts.append(f"{g['group']} x{g['ops']} not needed")
            else:
                where = "integer" if g["integer"] else "kept in float"
                parts.append(f"{g['group']} x{g['ops']} {g['cosine']:.4f} ({where})")
        lines.append(f"expected cosine {acc['expected_cosine']:.4f} (budget >= "
                     f"{acc['min_cosine']:g}); measured cosine with only that op kind in "
                     f"integer, {acc['samples']} calibration samples: "
                     + ("; ".join(parts) or "no integer op kinds"))
    fb = result["fallback_ops"]
    if fb:
        kinds: dict[str, int] = {}
        for f in fb:
            kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
        lines.append("fallback ops (no accelerator can run them): "
                     + ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items()))
                     + f"; e.g. {fb[0]['op']}: {fb[0]['reason']}")
    for a in result.get("alternatives", []):
        if not a["feasible"]:
            lines.append(f"{a['device']}: the {a['ops']} ops it can run do not fit it together")
            continue
        lat_w = "faster" if a["plan_latency_s"] <= a["latency_s"] else "slower"
        en_w = "less" if a["plan_energy_j"] <= a["energy_j"] else "more"
        lines.append(f"why not more on {a['device']}: all {a['ops']} ops it can run there "
                     f"({a['ops_moved']} moved) would take {a['latency_s'] * 1e3:.3f} ms (link "
                     f"transfers {a['transfer_s'] * 1e3:.3f} ms) and {a['energy_j'] * 1e3:.3f} mJ;"
                     f" the plan is {lat_w} and uses {en_w} energy "
                     f"({a['plan_latency_s'] * 1e3:.3f} ms, {a['plan_energy_j'] * 1e3:.3f} mJ)")
    lines.append(f"timeline: {result['timeline']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Compile, write the plan (atomically) and the timeline; return the JSON result."""
    import torch

    from compiler.driver import compile_model
    from compiler.plan import dumps_plan, write_timeline

    out = check_output_file(args.output, "plan file")  # refused before any work
    png = check_output_file(out.with_suffix(".png"), "timeline")
    if png.resolve() == out.resolve():
        raise UserValueError(f"plan file {str(out)!r} would be overwritten by its PNG timeline "
                             f"({png.name}): give the plan a .json name")
    torch.set_num_threads(1)
    model = args.model
    if args.phase == "decode":
        if args.context is None:
            raise UserValueError("--phase decode needs --context T (the KV-cache length)")
        model = f"{args.model}/decode@{args.context}"
    elif args.context is not None:
        raise UserValueError("--context applies to --phase decode only")
    c = compile_model(model, args.devices, args.objective, seq_len=args.seq_len,
                      ffn_down="float" if args.float_ffn_down else args.ffn_down,
                      sparse=args.sparse, min_cosine=args.min_cosine, calib=args.calib,
                      smooth=args.smooth)
    text = dumps_plan(c.plan)
    write_timeline(c.plan, png)
    core_files = []
    if c.core_programs:  # programs and weight images beside the plan, referenced by hash
        from compiler.core_run import write_program_files
        core_files = write_program_files(out, c.core_programs)
    write_atomic(out, text)
    result = summarize(c.plan, str(out), c.compile_seconds)
    result["timeline"] = str(png)
    if core_files:
        result["core_files"] = core_files
    if not args.json:
        print(report(result))
    return result


def summarize(plan: dict[str, Any], path: str, seconds: float) -> dict[str, Any]:
    """The JSON result of a compile from its plan."""
    devices = {}
    for d in plan["devices"]:
        t = plan["totals"]["per_device"][d["name"]]
        devices[d["name"]] = {"kind": d["kind"], "ops": t["ops"], "macs": t["macs"],
                              "predicted_seconds": t["seconds"], "energy_j": t["energy_j"],
                              "resources_used": d["hardware"]["resources_used"],
                              "resources_available": d["hardware"]["resources_available"]}
    return {"plan": path, "predicted_latency_s": plan["totals"]["latency_s"],
            "predicted_energy_j": plan["totals"]["energy_j"], "compile_seconds": seconds,
            "devices": devices, "fallback_ops": plan["fallback_ops"],
            "partition": plan["partition"],
            **({"alternatives": plan["alternatives"]} if "alternatives" in plan else {}),
            "expected_cosine": (plan.get("accuracy") or {}).get("expected_cosine"),
            **({"accuracy": plan["accuracy"]} if "accuracy" in plan else {})}
