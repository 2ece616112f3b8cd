"""The plan's PNG timeline (compiler.plan.write_timeline): the same picture as one ``barh`` per
bar drew, byte for byte."""

from __future__ import annotations

import io

import pytest

from compiler.plan import write_timeline


def _barh_timeline(plan: dict) -> bytes:
    """The timeline as it was drawn before: one ``barh`` per transfer and per op."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devs = [d["name"] for d in plan["devices"]]
    lane = {d: i for i, d in enumerate(devs)}
    colors = {"linear": "tab:blue", "matmul": "tab:cyan", "attention": "tab:orange",
              "layer_norm": "tab:green", "softmax": "tab:red", "gelu": "tab:purple",
              "layout": "lightgray"}
    kinds = {o["name"]: o["op"] for o in plan["ops"]}
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.6 * len(devs)))
    scale, unit = (1e3, "ms") if plan["totals"]["latency_s"] < 10 else (1.0, "s")
    for s in plan["schedule"]:
        y = lane[s["device"]]
        if s["transfer_in_s"] > 0:
            ax.barh(y, s["transfer_in_s"] * scale, left=(s["start_s"] - s["transfer_in_s"]) * scale,
                    height=0.6, color="white", edgecolor="black", hatch="//", linewidth=0.3)
        ax.barh(y, (s["end_s"] - s["start_s"]) * scale, left=s["start_s"] * scale, height=0.6,
                color=colors.get(kinds[s["op"]], "tab:brown"), linewidth=0)
    ax.set_yticks(range(len(devs)), devs)
    ax.set_xlabel(f"time ({unit}); hatched: transfers")
    ax.set_title(f"{plan['model']['source']}: predicted {plan['totals']['latency_s'] * 1e3:.3f} ms, "
                 f"{plan['totals']['energy_j'] * 1e3:.3f} mJ ({plan['objective']})")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    ax.legend(handles, list(colors), loc="upper right", fontsize=7, ncol=4)
    fig.tight_layout()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    finally:
        plt.close(fig)
    return buf.getvalue()


@pytest.mark.parametrize("model, devices, transfers", [
    ("encoder-tiny", "asic,cpu:mode=roofline", False),
    ("gpt2-tiny", "asic,imc,cpu,gpu-a100", True)])
def test_timeline_is_the_barh_picture(model, devices, transfers, tmp_path):
    from compiler.driver import compile_model

    plan = compile_model(model, devices).plan
    assert any(s["transfer_in_s"] > 0 for s in plan["schedule"]) == transfers
    out = write_timeline(plan, tmp_path / "t.png")
    assert out.read_bytes() == _barh_timeline(plan)
