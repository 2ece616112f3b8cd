"""Accuracy vs keep ratio of the sparse-attention filters on all-MiniLM-L6-v2.

Every attention layer of MiniLM is replaced by A^3, ELSA, SpAtten, Energon or Sanger (the
bit-accurate integer golden models in ``golden.sparse``), each method's knob is swept, and
the shipped sentences are embedded. Per setting: keep ratio (query-key pairs computed
exactly / real pairs), attention-output relative error, sentence-embedding cosine vs dense
(mean, min) and nearest-neighbour agreement. No fine-tuning (the papers fine-tune).

Usage: ``python benchmarks/sparse_attention_accuracy.py [--out DIR] [--methods a3,elsa]
[--holdout] [--threads N]``. Writes ``sparse_attention_accuracy.json`` and
``sparse_attention_accuracy.png`` in DIR (default: the current directory). About 3 minutes
with one thread on a shared 2-core machine (``docs/sparse_attention.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from compiler.models import load_sentences
from compiler.sparsity import (
    NO_FINETUNE_NOTE,
    choose_sanger_layer_thresholds,
    evaluate,
    format_table,
)

__all__ = ["main", "plot"]


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def plot(result: dict, path: Path) -> None:
    """Cosine (mean) and nearest-neighbour agreement vs keep ratio, all methods, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    def series(r: dict) -> str:     # A^3 without candidate search is its own curve
        return "a3 (post-scoring only)" if r["method"] == "a3" and r["setting"].startswith("m=off") \
            else r["method"]

    methods = sorted({series(r) for r in result["results"]})
    for m in methods:
        rows = sorted((r for r in result["results"] if series(r) == m), key=lambda r: r["keep_ratio"])
        x = [r["keep_ratio"] for r in rows]
        axes[0].plot(x, [r["cosine_mean"] for r in rows], "o-", label=m)
        axes[1].plot(x, [r["nn_agreement"] for r in rows], "o-", label=m)
    axes[0].axhline(0.99, color="grey", lw=0.8, ls="--")
    axes[1].axhline(0.95, color="grey", lw=0.8, ls="--")
    axes[0].set_ylabel("embedding cosine vs dense (mean)")
    axes[1].set_ylabel("nearest-neighbour agreement")
    for ax in axes:
        ax.set_xlabel("keep ratio (query-key pairs computed)")
        ax.grid(alpha=0.3)
        ax.legend()
    split = " (held out from calibration)" if result.get("holdout") else ""
    fig.suptitle(f"all-MiniLM-L6-v2, {result['n_sentences']} sentences{split}, no fine-tuning")
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".", help="output directory (default: .)")
    ap.add_argument("--methods", default=None, help="comma-separated subset (default: all five)")
    ap.add_argument("--holdout", action="store_true",
                    help="evaluate only on the sentences not used for calibration (every 5th "
                         "sentence calibrates; default: evaluate on all)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on a shared 2-core machine one thread "
                         "measured 2-3x faster than two)")
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error(f"--threads must be a positive integer, not {args.threads}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    result = evaluate(args.methods, sweep=True, holdout=args.holdout,
                      progress=lambda s: print(f"[{time.time() - t0:5.0f}s] {s}", file=sys.stderr,
                                               flush=True))
    if args.holdout and (args.methods is None or "sanger" in args.methods):
        # per-layer Sanger thresholds: chosen on the calibration split, run on the held-out rest
        choice = choose_sanger_layer_thresholds(load_sentences()[::5], progress=lambda s: print(
            f"[{time.time() - t0:5.0f}s] {s}", file=sys.stderr, flush=True))
        extra = evaluate(["sanger"], settings={"sanger": [{"layer_thresholds": choice["layer_thresholds"]}]},
                         holdout=True)
        for r in extra["results"]:
            r["method"] = "sanger-layer"
            result["results"].append(r)
        result["sanger_layer_choice"] = choice
    print(format_table(result))
    result["note"] = NO_FINETUNE_NOTE
    result["seconds"] = round(time.time() - t0, 1)
    _atomic_write(out / "sparse_attention_accuracy.json",
                  json.dumps(result, indent=1, sort_keys=True).encode())
    plot(result, out / "sparse_attention_accuracy.png")
    print(f"wrote {out / 'sparse_attention_accuracy.json'} and {out / 'sparse_attention_accuracy.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
