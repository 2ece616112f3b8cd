"""Partitioner at scale: the exact DP (``compiler.partition_exact``) against the classic DP it
replaced, on GPT-2-small, the zoo's decoder / encoder models and 12-layer Llama, Mixtral, T5 and
DeBERTa-v2 built from their ``transformers`` configs (random weights, hidden 64, sequence 16).

Per model and device set: ops, compile time (export -> plan, the CLI's default accuracy budget),
the search time (wall and CPU seconds: the CPU time is what to compare on a shared machine) of
the final placement problem (``partition_dp`` on the compiled problem, with
its budget), whether it is exact, its states and objective, and the same for the classic DP
(``partition_dp_classic``, 50000 states per op as before: a beam and ``exact: False`` past them)
and the greedy baseline. ``--compile-before`` also compiles with the classic DP in the driver
(the compile time before). ``--json`` prints one object.

    python -m benchmarks.partition_scale [--devices asic,imc,cpu,gpu-a100] [--models a,b]
        [--objective latency|energy] [--smooth auto|off|ALPHA] [--no-classic]
        [--compile-before] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch

import compiler.driver as driver
import compiler.partition as partition
from compiler.frontend import LoadedModel, load_model
from compiler.zoo import MODELS

__all__ = ["DEEP", "main", "measure"]

DEFAULT_DEVICES = "asic,imc,cpu,gpu-a100"
SEQ = 16


class _Hidden(torch.nn.Module):
    """``input_ids -> last_hidden_state`` of a ``transformers`` model."""

    def __init__(self, m: torch.nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        kw = {"use_cache": False} if hasattr(self.m.config, "num_key_value_heads") else {}
        return self.m(input_ids=input_ids, **kw).last_hidden_state


def _deep(arch: str, layers: int = 12) -> LoadedModel:
    """A ``layers``-deep random-initialised ``arch`` (hidden 64, 4 heads, FFN 128)."""
    import transformers as tr

    logging.getLogger("transformers").setLevel(logging.ERROR)
    small = {"hidden_size": 64, "num_hidden_layers": layers, "num_attention_heads": 4,
             "intermediate_size": 128, "vocab_size": 1000, "max_position_embeddings": 128}
    if arch == "llama":
        cfg, cls = tr.LlamaConfig(**small, num_key_value_heads=2), tr.LlamaModel
    elif arch == "mixtral":
        cfg, cls = (tr.MixtralConfig(**small, num_key_value_heads=2, num_local_experts=4,
                                     num_experts_per_tok=2), tr.MixtralModel)
    elif arch == "t5":
        cfg, cls = (tr.T5Config(d_model=64, d_kv=16, d_ff=128, num_layers=layers, num_heads=4,
                                vocab_size=1000), tr.T5EncoderModel)
    elif arch == "deberta":
        cfg, cls = (tr.DebertaV2Config(**small, relative_attention=True,
                                       pos_att_type=["p2c", "c2p"], position_buckets=32),
                    tr.DebertaV2Model)
    else:
        raise KeyError(arch)
    torch.manual_seed(0)
    m = cls(cfg).eval()
    x = torch.randint(0, 1000, (1, SEQ), generator=torch.Generator().manual_seed(0))
    return LoadedModel(f"{arch}-{layers}l", _Hidden(m).eval(), (x,), SEQ)


#: the 12-layer models built here (not in the zoo)
DEEP: dict[str, Callable[[], LoadedModel]] = {
    f"{a}-12l": (lambda a=a: _deep(a)) for a in ("llama", "mixtral", "t5", "deberta")}
#: zoo models measured by default (those the zoo has)
ZOO = ("gpt2-small", "llama-tiny", "mistral-tiny", "qwen2-tiny", "mixtral-tiny", "t5-tiny",
       "deberta-tiny")


def default_models() -> list[str]:
    return [m for m in ZOO if m in MODELS] + list(DEEP)


@contextmanager
def _classic_in_driver() -> Any:
    """Compile with the classic DP (the driver and the accuracy budget both call
    ``partition_dp``)."""
    saved = driver.partition_dp, partition.partition_dp

    def classic(p: partition.Problem, max_states: int = 50000, **_: Any) -> partition.Result:
        return partition.partition_dp_classic(p, max_states)

    driver.partition_dp = partition.partition_dp = classic  # type: ignore[assignment]
    try:
        yield
    finally:
        driver.partition_dp, partition.partition_dp = saved


def _load(name: str) -> LoadedModel:
    return DEEP[name]() if name in DEEP else load_model(name)


def measure(name: str, devices: str = DEFAULT_DEVICES, classic: bool = True,
            compile_before: bool = False, **compile_kw: Any) -> dict[str, Any]:
    """One row (see the module docstring); ``error`` set when the model does not compile.
    ``compile_kw`` go to :func:`compiler.driver.compile_model` (objective, smooth, ...)."""
    try:
        lm = _load(name)
        t, cpu = time.perf_counter(), time.process_time()
        c = driver.compile_model(lm, devices, **compile_kw)
        compile_s, compile_cpu = time.perf_counter() - t, time.process_time() - cpu
    except Exception as e:  # a model the frontend cannot export: reported, not fatal
        return {"model": name, "devices": devices, "error": f"{type(e).__name__}: {e}"[:200]}
    p = c.problem
    t, cpu = time.perf_counter(), time.process_time()
    new = partition.partition_dp(p)
    row: dict[str, Any] = {
        "model": name, "devices": devices, "ops": len(p.ops), "compile_s": compile_s,
        "compile_cpu_s": compile_cpu, "partition_s": c.timings["partition_s"],
        "search_s": time.perf_counter() - t, "search_cpu_s": time.process_time() - cpu,
        "exact": new.exact, "states": new.states, "objective": new.objective_value,
        "gap": new.gap, "algorithm": new.algorithm, "objective_kind": p.objective,
        "greedy": c.greedy.objective_value}
    assert c.plan["partition"]["exact"] == new.exact
    if classic:
        t, cpu = time.perf_counter(), time.process_time()
        old = partition.partition_dp_classic(p)
        row.update({"classic_s": time.perf_counter() - t,
                    "classic_cpu_s": time.process_time() - cpu, "classic_exact": old.exact,
                    "classic_states": old.states, "classic_objective": old.objective_value})
    if compile_before:
        with _classic_in_driver():
            lb = _load(name)
            t, cpu = time.perf_counter(), time.process_time()
            cb = driver.compile_model(lb, devices, **compile_kw)
            row["compile_before_s"] = time.perf_counter() - t
            row["compile_before_cpu_s"] = time.process_time() - cpu
            row["partition_before_s"] = cb.timings["partition_s"]
    return row


def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", default=DEFAULT_DEVICES)
    ap.add_argument("--objective", default="latency", choices=("latency", "energy"))
    ap.add_argument("--smooth", default=None, help="compile --smooth (default: the driver's)")
    ap.add_argument("--models", default=None, help="comma-separated (default: "
                    + ",".join(default_models()) + ")")
    ap.add_argument("--no-classic", action="store_true", help="skip the classic DP")
    ap.add_argument("--compile-before", action="store_true",
                    help="also compile with the classic DP in the driver")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    models = args.models.split(",") if args.models else default_models()
    rows = []
    if not args.json:
        print(f"{'model':<14}{'ops':>5}{'compile':>9}{'cpu':>7}{'search':>8}{'exact':>7}"
              f"{'states':>8}{'objective':>12}{'classic':>9}{'c.exact':>8}{'c.states':>9}"
              f"{'vs old':>10}{'greedy':>12}{'before':>8}{'cpu':>7}", flush=True)
    for m in models:
        kw: dict[str, Any] = {"objective": args.objective}
        if args.smooth is not None:
            kw["smooth"] = float(args.smooth) if args.smooth[:1].isdigit() else args.smooth
        r = measure(m, args.devices, not args.no_classic, args.compile_before, **kw)
        rows.append(r)
        if args.json:
            continue
        if "error" in r:
            print(f"{m:<14} does not compile: {r['error']}", flush=True)
            continue
        rel = (r["objective"] / r["classic_objective"] - 1 if r.get("classic_objective")
               else None)
        print(f"{m:<14}{r['ops']:>5}{r['compile_s']:>9.2f}{r['compile_cpu_s']:>7.1f}"
              f"{r['search_cpu_s']:>8.2f}{str(r['exact']):>7}{r['states']:>8}"
              f"{r['objective']:>12.6g}{_fmt(r.get('classic_cpu_s'), '9.2f'):>9}"
              f"{str(r.get('classic_exact', '-')):>8}{_fmt(r.get('classic_states'), '9d'):>9}"
              f"{_fmt(rel, '+10.1e'):>10}{r['greedy']:>12.6g}"
              f"{_fmt(r.get('compile_before_s'), '8.2f'):>8}"
              f"{_fmt(r.get('compile_before_cpu_s'), '7.1f'):>7}", flush=True)
    if args.json:
        print(json.dumps({"devices": args.devices, "rows": rows}, sort_keys=True))
    else:
        print(f"devices {args.devices}; objective: {rows[0].get('objective_kind', 'latency')}; "
              "compile: wall s, cpu: its CPU s; search, classic: CPU s of partition_dp and "
              "partition_dp_classic on the compiled problem; vs old: objective / classic "
              "objective - 1; before (cpu): compile with the classic DP (--compile-before)")
    return {"rows": rows}


if __name__ == "__main__":
    main()
