"""The board SoC's resources measured beside the plan's prediction.

For each core configuration the SoC (:class:`boards.soc.SocTop`: core, host link, UARTs, the
board's SDRAM through LiteDRAM) is synthesised for the ULX3S-85F and packed by nextpnr
(:func:`boards.build.pack_unit`: the cells ``fmforge build`` would place, without the hour of
place and route), and the counts are printed beside :func:`boards.soc_build.predict_resources`.

    python benchmarks/core_area.py                 # the default list (about 3 minutes each)
    python benchmarks/core_area.py --configs 2x2:256 4x4:1024 --json out.json

A configuration is ``RxC:SP`` (array rows x cols, scratchpad bytes); the other parameters are
a board core's (:func:`compiler.targets.core.core_spec`: SDRAM latency and width,
2048-instruction memory, GEMM limits 32 x 1536 x 32).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from boards.build import pack_unit  # noqa: E402
from boards.soc import SocConfig, SocTop  # noqa: E402
from boards.soc_build import predict_resources  # noqa: E402
from compiler.targets.core import core_spec  # noqa: E402

DEFAULT = ("2x2:128", "2x2:512", "4x4:256", "8x8:256", "4x4:1024")
RES = ("luts", "ffs", "dsps", "brams")


def soc_config(text: str, board: str = "ulx3s-85f") -> SocConfig:
    arr, _, sp = text.partition(":")
    rows, _, cols = arr.partition("x")
    spec = core_spec({"rows": int(rows), "cols": int(cols), "sp_bytes": int(sp or 256)},
                     on_board=True)
    return SocConfig(core=spec, ext_bytes=32 << 20, clock_hz=25e6, memory="sdram", board=board)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=list(DEFAULT), metavar="RxC:SP")
    ap.add_argument("--board", default="ulx3s-85f")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--logs", help="keep each build's log in this directory")
    args = ap.parse_args(argv)
    rows = []
    head = f"{'config':>10} " + " ".join(f"{r + ' meas':>11} {r + ' pred':>11} {'err':>6}"
                                         for r in RES) + f" {'s':>5}"
    print(head)
    for text in args.configs:
        cfg = soc_config(text, args.board)
        pred = predict_resources(cfg, "ecp5")
        t0 = time.monotonic()
        meas, cells = pack_unit(SocTop(cfg), args.board, log_dir=args.logs,
                                name="soc_" + text.replace(":", "_"))
        secs = time.monotonic() - t0
        row = {"config": text, "measured": meas, "predicted": {r: pred[r] for r in RES},
               "cells": cells, "seconds": round(secs, 1)}
        rows.append(row)
        print(f"{text:>10} " + " ".join(
            f"{meas[r]:>11} {pred[r]:>11} {100 * (pred[r] - meas[r]) / max(meas[r], 1):>+5.1f}%"
            for r in RES) + f" {secs:>5.0f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
