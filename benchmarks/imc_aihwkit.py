"""Noise statistics of our ReRAM crossbar model (``golden.imc``) side by side with IBM aihwkit's
inference tile, on the same int8 weight matrices and inputs (table + JSON + PNG).

Two interpreters: this script runs in the project venv (our model, the data, the table) and
calls itself with ``--worker DIR`` in a separate venv that holds aihwkit (which is never a
dependency of the project: nothing in ``make test`` imports it). They exchange ``.npz`` files
under the output folder. Setting up that venv (git-ignored, under ``benchmarks/out/``)::

    python -m venv benchmarks/out/aihwkit-venv
    benchmarks/out/aihwkit-venv/bin/pip install torch==2.13.0
    benchmarks/out/aihwkit-venv/bin/pip install aihwkit==1.1.0 torch==2.13.0

(``--setup`` runs these three.) aihwkit 1.2.0 is published as a source archive only and does not
build here (pip: "Failed building wheel for aihwkit"); 1.1.0 has a CPython 3.11 wheel whose compiled tiles want
torch 2.10, but its pure-PyTorch tiles (``TorchInferenceRPUConfig``) run with torch 2.13, and only
those are used. Repeating ``torch==2.13.0`` in the second command keeps pip from upgrading torch
to a CUDA build for torchvision's sake. Then::

    .venv/bin/python benchmarks/imc_aihwkit.py --minilm -o benchmarks/out/imc_aihwkit

Data: ``y = x @ W^T`` with ``W`` ``[N, K]`` for ``(K, N) = (384, 384)`` and ``(384, 1536)`` (the
MiniLM attention and FFN-up shapes), random Gaussian weights and inputs, and with ``--minilm``
MiniLM layer 0's query and FFN-up weights with their real inputs (hooked on ``--sentences``
sentences). Weights are quantized as the compiler does (symmetric int8 per output channel,
``compiler.passes.quantize.quantize_weight``), inputs symmetric per tensor (abs-max). Both models
get exactly these int8 values; errors are against the exact int GEMM (and, one column, against
the float product of the unquantized operands, dequantized).

Our model: the ``imc`` device's mapping (128x128 crossbars, 2-bit cells, 1-bit DAC steps, 9-bit
ADC per bit line, differential weights, two-phase sign-magnitude inputs), ``REALISTIC_NOISE``
(programming noise 2% of a cell's range, read noise 1%, ADC offset 0.1 LSB) and drift with
``compiler.imc_run.DRIFT_NU`` (nu ~ N(0.02, 0.01), t0 = 1 s, global compensation by the mean
decay), each source also alone.

aihwkit (``TorchInferenceRPUConfig``, ``AnalogLinear``, one differential pair per weight,
``SinglePairConductanceConverter``: ``|w| = 127`` at ``g_max = 25 uS``), three noise models:

* ``matched``: ``StateIndependentNoiseModel`` with our parameters mapped to one pair per weight:
  its programming-noise polynomial ``sigma(g) = c0 + c1 g/g_max + c2 (g/g_max)**2`` is a least-
  squares fit to the weight-level standard deviation our bit-sliced cells give (8 cells per
  weight, ``sigma_w**2 = sum_j 16**j sigma_cell(d_j)**2`` for both halves of the pair, on cells
  ``0.02 * 3`` levels, off cells 0.17 of that), with ``c0`` so that a zero weight (two off devices)
  has ours; read noise: their accumulated 1/f term, drawn once per drift call as ours once per
  call, with ``read_noise_scale`` set per time point so that its standard deviation is ``r * g``,
  ``r`` the least-squares slope of our weight-level read noise ``0.01 * sqrt(sum_j 16**j d_j**2)``
  against ``|w|`` (their 1/f term grows with ``sqrt(log t)``; ours does not grow); drift: their
  power law with nu ~ |N(0.02, 0.01)|, ``t_0 = 1 s``, evaluated at ``t_inference = t - 1 s`` (their
  clock starts ``t_0`` after programming, ours at programming), their ``GlobalDriftCompensation``
  (a measured read-out of one-hot inputs, against our exact mean decay). No ADC offset (the torch
  tile has none);
* ``pcm``: their ``PCMLikeNoiseModel`` as shipped (PCM data of Nandakumar et al. 2019: state-
  dependent programming noise, 1/f read noise, drift nu ~ 0.05-0.1 with t0 = 20 s), global drift
  compensation: a different device, for scale;
* ``reram-wan``: their ``ReRamWan2022NoiseModel`` as shipped (Wan et al., Nature 2022, one-shot
  programming, fitted at 1 s, 1 day and 2 days only, so no 1 h / 1 month points).

Converters: the DAC is 8 bits on the int8 grid (``inp_res = 1/256``, ``inp_bound = 128``, no noise
management: their inputs are our integers exactly, applied as one analog level where ours are
16 one-bit steps); the ADC is ideal (``out_res`` off, no output noise or bound), the counterpart
of our 9-bit ADC per bit line, which resolves every column sum exactly. One extra row gives
aihwkit with a 9-bit ADC on the whole output (``out_res = 1/510``, bound = max |exact output|),
which is what one conversion per dot product would cost.

Statistics per (case, model, setting, time), error ``e = y - y_int`` over all outputs:
mean and std of ``e`` as % of ``rms(y_int)``, relative RMS error ``rms(e) / rms(y_int)``,
SNR ``20 log10(rms(y_int) / rms(e))`` dB, and the relative RMS error of the dequantized output
against the float product (includes the int8 quantization error, the same for both models).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["main", "weight_sigma_curves", "fit_matched"]

#: drift times (s) of the table: 1 s, 1 h, 1 day, 1 month (30 days)
TIMES = [1.0, 3600.0, 86400.0, 2592000.0]
TIME_NAMES = {1.0: "1 s", 3600.0: "1 h", 86400.0: "1 day", 2592000.0: "1 month"}
G_MAX = 25.0  # uS, aihwkit's default
VENV = Path("benchmarks/out/aihwkit-venv")


# ----------------------------------------------------------------------------- the mapping

def _digits(u: int, cell_bits: int = 2, slices: int = 4) -> list[int]:
    return [(u >> (cell_bits * j)) & (2**cell_bits - 1) for j in range(slices)]


def weight_sigma_curves(prog_sigma: float, read_sigma: float, off_ratio: float,
                        cell_bits: int = 2) -> tuple[list[float], list[float]]:
    """Our weight-level programming- and read-noise standard deviations (weight LSB) for
    ``|w| = 0..127`` under the differential bit-sliced encoding (before clipping at 0)."""
    levels = 2**cell_bits - 1
    slices = math.ceil(8 / cell_bits)
    on, off = prog_sigma * levels, off_ratio * prog_sigma * levels
    prog, read = [], []
    for a in range(128):
        d = _digits(a, cell_bits, slices)  # u+ = |w|, u- = 0 (or the other way round)
        var = 0.0
        rvar = 0.0
        for j in range(slices):
            w = float(2 ** (cell_bits * j))
            var += (w * (on if d[j] else off)) ** 2 + (w * off) ** 2
            rvar += (w * read_sigma * d[j]) ** 2
        prog.append(math.sqrt(var))
        read.append(math.sqrt(rvar))
    return prog, read


def fit_matched(prog_sigma: float, read_sigma: float, off_ratio: float) -> dict[str, float]:
    """aihwkit ``StateIndependentNoiseModel`` parameters that reproduce our weight-level noise on
    one differential pair per weight (module docstring): ``prog_coeff`` in uS and the read-noise
    slope ``r`` (std per unit of conductance)."""
    import numpy as np

    prog, read = weight_sigma_curves(prog_sigma, read_sigma, off_ratio)
    to_us = G_MAX / 127.0
    sp = np.array(prog) * to_us
    c0 = float(sp[0] / math.sqrt(2.0))  # a zero weight: two off devices
    a = np.arange(1, 128, dtype=np.float64)
    x = a / 127.0
    dev = np.sqrt(np.maximum(sp[1:] ** 2 - c0**2, 0.0))  # the driven device of the pair
    c1, c2 = np.linalg.lstsq(np.stack([x, x * x], 1), dev - c0, rcond=None)[0]
    r = float(np.dot(a, np.array(read[1:])) / np.dot(a, a))
    return {"c0": c0, "c1": float(c1), "c2": float(c2), "read_slope": r}


# ----------------------------------------------------------------------------- data (project venv)

def _quantize(xf, wf):
    import torch

    from compiler.passes.quantize import quantize_weight

    wq, ws = quantize_weight(wf.to(torch.float64))  # [N, K], per output channel
    sx = float(xf.abs().max()) / 127.0
    xq = torch.clamp(torch.round(xf.to(torch.float64) / sx), -127, 127).to(torch.int64)
    return xq, wq, sx, ws


def _cases(args) -> list[dict]:
    import torch

    out = []
    gen = torch.Generator().manual_seed(args.seed)
    for k, n in ((384, 384), (384, 1536)):
        wf = torch.randn(n, k, generator=gen, dtype=torch.float64) / math.sqrt(k)
        xf = torch.randn(args.tokens, k, generator=gen, dtype=torch.float64)
        out.append({"name": f"gauss {k}x{n}", "xf": xf, "wf": wf})
    if args.minilm:
        from compiler.models import load_minilm, load_sentences

        model, tok = load_minilm()
        layer = model.encoder.layer[0]
        mods = {"minilm L0 query 384x384": layer.attention.self.query,
                "minilm L0 ffn-up 384x1536": layer.intermediate.dense}
        seen: dict[str, list] = {k: [] for k in mods}
        hooks = [m.register_forward_hook(lambda _m, inp, _o, k=k: seen[k].append(inp[0].detach()))
                 for k, m in mods.items()]
        sents = load_sentences()[: args.sentences]
        with torch.no_grad():
            for s in sents:
                model(**tok(s, return_tensors="pt"))
        for h in hooks:
            h.remove()
        for name, m in mods.items():
            xf = torch.cat([v[0] for v in seen[name]])[: args.tokens].to(torch.float64)
            out.append({"name": name, "xf": xf, "wf": m.weight.detach().to(torch.float64)})
    for c in out:
        c["xq"], c["wq"], c["sx"], c["ws"] = _quantize(c["xf"], c["wf"])
        c["y_int"] = (c["xq"].to(torch.float64) @ c["wq"].to(torch.float64).T)
        c["y_float"] = c["xf"] @ c["wf"].T
    return out


def _ours(c: dict, args) -> list[dict]:
    """Our crossbar model's outputs for one case: list of {model, setting, t, y}."""
    import torch

    from compiler.imc_run import DRIFT_NU, DRIFT_NU_SIGMA
    from golden.imc import REALISTIC_NOISE, CrossbarConfig, CrossbarNoise, crossbar_linear

    cfg = CrossbarConfig(rows=128, cols=128, cell_bits=2, dac_bits=1, adc_bits=9,
                         differential=True, signed_inputs=True, fault_aware=True)
    xq, wkn = c["xq"], c["wq"].T.contiguous()
    rn = REALISTIC_NOISE
    drift = {"drift_nu": DRIFT_NU, "drift_nu_sigma": DRIFT_NU_SIGMA}
    runs = [("ideal", 1.0, CrossbarNoise()),
            ("programming", 1.0, CrossbarNoise(prog_sigma=rn.prog_sigma)),
            ("read", 1.0, CrossbarNoise(read_sigma=rn.read_sigma)),
            ("ADC offset", 1.0, CrossbarNoise(adc_offset_sigma=rn.adc_offset_sigma)),
            ("drift", TIMES[-1], CrossbarNoise(drift_t=TIMES[-1], **drift))]
    runs += [("realistic", t, rn.with_(drift_t=t, **drift)) for t in TIMES]
    res = []
    for setting, t, nz in runs:
        t0 = time.process_time()
        y = crossbar_linear(xq, wkn, cfg=cfg, noise=nz, seed=args.seed)
        res.append({"model": "ours (ReRAM)", "setting": setting, "t": t,
                    "y": y.to(torch.float64), "cpu_s": time.process_time() - t0})
    return res


# ----------------------------------------------------------------------------- aihwkit (its venv)

def _worker(folder: Path) -> int:
    """Runs in the aihwkit venv: reads ``job.json`` and ``case*.npz``, writes ``aihwkit*.npz``."""
    import aihwkit
    import numpy as np
    import torch
    from aihwkit.inference.compensation.drift import GlobalDriftCompensation
    from aihwkit.inference.noise.custom import StateIndependentNoiseModel
    from aihwkit.inference.noise.pcm import PCMLikeNoiseModel
    from aihwkit.inference.noise.reram import ReRamWan2022NoiseModel
    from aihwkit.nn import AnalogLinear
    from aihwkit.simulator.configs import TorchInferenceRPUConfig
    from aihwkit.simulator.parameters.enums import BoundManagementType, NoiseManagementType

    job = json.loads((folder / "job.json").read_text())
    fit, seed = job["fit"], job["seed"]
    torch.set_num_threads(job.get("threads", 2))

    def rpu(noise_model, adc_bound: float | None = None) -> TorchInferenceRPUConfig:
        cfg = TorchInferenceRPUConfig()
        f = cfg.forward
        f.inp_res, f.inp_bound = 1 / 256, 128.0  # the int8 grid exactly
        f.noise_management = NoiseManagementType.NONE
        f.bound_management = BoundManagementType.NONE
        f.out_noise = 0.0
        f.out_res, f.out_bound = (-1.0, -1.0) if adc_bound is None else (1 / (2**9 - 2), adc_bound)
        cfg.noise_model = noise_model
        cfg.drift_compensation = GlobalDriftCompensation()
        return cfg

    def matched(prog: bool, read: bool, drift: bool, t: float):
        s = math.sqrt(math.log((t + 250e-9) / (2 * 250e-9)))  # their 1/f growth at t
        return StateIndependentNoiseModel(
            g_max=G_MAX, prog_coeff=[fit["c0"], fit["c1"], fit["c2"]],
            prog_noise_scale=1.0 if prog else 0.0,
            drift_nu_mean=job["drift_nu"], drift_nu_std=job["drift_nu_sigma"],
            drift_scale=1.0 if drift else 0.0, t_0=1.0,
            read_noise_scale=fit["read_slope"] * G_MAX / s if read else 0.0)

    runs = []  # (model, setting, t, noise model factory, t_inference, adc bound?)
    for t in job["times"]:
        runs.append(("aihwkit matched", "realistic", t, lambda t=t: matched(True, True, True, t),
                     t - 1.0, False))
    runs += [("aihwkit matched", "programming", 1.0, lambda: matched(True, False, False, 1.0), 0.0, False),
             ("aihwkit matched", "read", 1.0, lambda: matched(False, True, False, 1.0), 0.0, False),
             ("aihwkit matched", "drift", job["times"][-1],
              lambda: matched(False, False, True, job["times"][-1]), job["times"][-1] - 1.0, False),
             ("aihwkit matched", "realistic, 9-bit ADC per output", 1.0,
              lambda: matched(True, True, True, 1.0), 0.0, True)]
    for t in job["times"]:
        runs.append(("aihwkit PCM", "PCMLikeNoiseModel", t, lambda: PCMLikeNoiseModel(g_max=G_MAX),
                     t, False))
    for t in job["times"]:
        if t in (1.0, 86400.0):
            runs.append(("aihwkit ReRAM", "ReRamWan2022NoiseModel", t,
                         lambda: ReRamWan2022NoiseModel(g_max=G_MAX), t, False))
    info = {"aihwkit": aihwkit.__version__, "torch": torch.__version__, "runs": []}
    for i, path in enumerate(sorted(folder.glob("case*.npz"))):
        d = np.load(path)
        xq = torch.from_numpy(d["xq"]).to(torch.float32)
        wq = torch.from_numpy(d["wq"]).to(torch.float32)  # [N, K]
        bound = float(np.abs(d["y_int"]).max())
        ys = {}
        for j, (model, setting, t, nm, t_inf, adc) in enumerate(runs):
            t0 = time.process_time()
            torch.manual_seed(seed * 1000 + i * 100 + j)
            lin = AnalogLinear(wq.shape[1], wq.shape[0], bias=False,
                               rpu_config=rpu(nm(), bound if adc else None))
            lin.set_weights(wq)
            lin.eval()
            lin.program_analog_weights()
            lin.drift_analog_weights(t_inf)
            with torch.no_grad():
                y = lin(xq)
            ys[f"y{j}"] = y.to(torch.float64).numpy()
            if i == 0:
                info["runs"].append({"model": model, "setting": setting, "t": t})
            info.setdefault("cpu_s", {})[f"{path.stem}/{j}"] = time.process_time() - t0
        np.savez(folder / f"aihwkit_{path.stem}.npz", **ys)
    (folder / "aihwkit.json").write_text(json.dumps(info, indent=1))
    return 0


# ----------------------------------------------------------------------------- statistics

def stats(y, y_int, y_float, sx: float, ws) -> dict[str, float]:
    """Error statistics of ``y`` (int-dot units) against the exact int and float products."""
    import torch

    e = y - y_int
    ref = float(y_int.pow(2).mean().sqrt())
    rms = float(e.pow(2).mean().sqrt())
    yd = y * sx * ws[None, :]
    ef = float((yd - y_float).pow(2).mean().sqrt()) / float(y_float.pow(2).mean().sqrt())
    return {"mean_pct": 100 * float(e.mean()) / ref, "std_pct": 100 * float(e.std()) / ref,
            "rel_rms": rms / ref,
            "snr_db": 20 * math.log10(ref / rms) if rms > 0 else float("inf"),
            "rel_rms_float": ef, "n": int(torch.numel(e))}


def _plot(rows: list[dict], cases: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, len(cases), figsize=(4.2 * len(cases), 4), squeeze=False)
    styles = {"ours (ReRAM)": ("C0", "o"), "aihwkit matched": ("C1", "s"),
              "aihwkit PCM": ("C3", "^"), "aihwkit ReRAM": ("C2", "D")}
    for ax, case in zip(axs[0], cases, strict=True):
        for model, (col, mk) in styles.items():
            setting = {"ours (ReRAM)": "realistic", "aihwkit matched": "realistic"}.get(model)
            pts = sorted((r["t"], r["rel_rms"]) for r in rows if r["case"] == case
                         and r["model"] == model and (setting is None or r["setting"] == setting))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=mk, color=col, label=model)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("time after programming (s)")
        ax.set_title(case, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axs[0][0].set_ylabel("relative RMS error vs int GEMM")
    axs[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)


def _setup() -> int:
    cmds = [[sys.executable, "-m", "venv", str(VENV)],
            [str(VENV / "bin" / "pip"), "install", "torch==2.13.0"],
            [str(VENV / "bin" / "pip"), "install", "aihwkit==1.1.0", "torch==2.13.0"]]
    for c in cmds:
        print("+", " ".join(c), file=sys.stderr)
        subprocess.run(c, check=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", metavar="DIR", help=argparse.SUPPRESS)
    ap.add_argument("--setup", action="store_true", help="create the aihwkit venv and exit")
    ap.add_argument("--venv", default=str(VENV), help="the aihwkit venv (default: %(default)s)")
    ap.add_argument("--minilm", action="store_true", help="add MiniLM layer 0 query and FFN-up")
    ap.add_argument("--sentences", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64, help="input rows per case")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-o", "--out", default="benchmarks/out/imc_aihwkit")
    a = ap.parse_args(argv)
    if a.worker:
        return _worker(Path(a.worker))
    if a.setup:
        return _setup()
    import numpy as np
    import torch

    from compiler.imc_run import DRIFT_NU, DRIFT_NU_SIGMA
    from golden.imc import REALISTIC_NOISE

    py = Path(a.venv) / "bin" / "python"
    if not py.exists():
        print(f"no aihwkit venv at {a.venv}: run with --setup first (module docstring)", file=sys.stderr)
        return 2
    out = Path(a.out)
    work = out / "exchange"
    work.mkdir(parents=True, exist_ok=True)
    for f in work.glob("*.npz"):
        f.unlink()
    rn = REALISTIC_NOISE
    fit = fit_matched(rn.prog_sigma, rn.read_sigma, rn.off_sigma_ratio)
    cases = _cases(a)
    for i, c in enumerate(cases):
        np.savez(work / f"case{i}.npz", xq=c["xq"].numpy(), wq=c["wq"].numpy(),
                 y_int=c["y_int"].numpy())
    (work / "job.json").write_text(json.dumps({
        "fit": fit, "seed": a.seed, "times": TIMES, "drift_nu": DRIFT_NU,
        "drift_nu_sigma": DRIFT_NU_SIGMA, "cases": [c["name"] for c in cases]}))
    t0 = time.time()
    subprocess.run([str(py), str(Path(__file__).resolve()), "--worker", str(work)], check=True)
    t_aihw = time.time() - t0
    info = json.loads((work / "aihwkit.json").read_text())
    rows = []
    t0 = time.time()
    for i, c in enumerate(cases):
        results = _ours(c, a)
        d = np.load(work / f"aihwkit_case{i}.npz")
        for j, r in enumerate(info["runs"]):
            results.append({**r, "y": torch.from_numpy(d[f"y{j}"])})
        for r in results:
            rows.append({"case": c["name"], "model": r["model"], "setting": r["setting"],
                         "t": r["t"], **stats(r["y"], c["y_int"], c["y_float"], c["sx"], c["ws"])})
    t_ours = time.time() - t0
    # the mapping check: weight-level programming noise of ours against the matched polynomial
    prog, read = weight_sigma_curves(rn.prog_sigma, rn.read_sigma, rn.off_sigma_ratio)
    chk = []
    for c in cases:
        aw = c["wq"].abs().flatten()
        ours_w = math.sqrt(float(torch.tensor(prog)[aw].pow(2).mean()))
        x = aw.to(torch.float64) / 127
        dev = fit["c0"] + fit["c1"] * x + fit["c2"] * x * x
        theirs_w = math.sqrt(float((dev.pow(2) + fit["c0"] ** 2).mean())) * 127 / G_MAX
        chk.append((c["name"], ours_w, theirs_w))

    print(f"aihwkit {info['aihwkit']} (torch {info['torch']}), {a.tokens} input rows per case, "
          f"seed {a.seed}; wall time ours {t_ours:.0f} s, aihwkit {t_aihw:.0f} s")
    print(f"matched StateIndependentNoiseModel: prog_coeff = [{fit['c0']:.4f}, {fit['c1']:.4f}, "
          f"{fit['c2']:.4f}] uS (g_max {G_MAX} uS), read std = {fit['read_slope']:.5f} * g, "
          f"drift nu ~ |N({DRIFT_NU}, {DRIFT_NU_SIGMA})|, t_0 = 1 s")
    for name, o, t in chk:
        print(f"  weight-level programming std on {name}: ours {o:.3f} LSB, matched fit {t:.3f} LSB")
    hdr = ("| case | model | setting | t | mean err % | std err % | rel. RMS err | SNR dB "
           "| rel. RMS vs float |\n|---|---|---|---|---|---|---|---|---|")
    print(hdr)
    for r in rows:
        snr = "inf" if math.isinf(r["snr_db"]) else f"{r['snr_db']:.1f}"
        print(f"| {r['case']} | {r['model']} | {r['setting']} | {TIME_NAMES.get(r['t'], r['t'])} "
              f"| {r['mean_pct']:+.3f} | {r['std_pct']:.3f} | {r['rel_rms']:.4f} | {snr} "
              f"| {r['rel_rms_float']:.4f} |")
    (out.parent / (out.name + ".json")).write_text(json.dumps(
        {"fit": fit, "aihwkit": info, "rows": rows, "weight_check": chk}, indent=1))
    _plot(rows, [c["name"] for c in cases], out.parent / (out.name + ".png"))
    print(f"wrote {out}.json and {out}.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
