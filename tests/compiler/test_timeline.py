"""The plan's PNG timeline (compiler.plan.write_timeline): the same picture as one ``barh`` per
bar drew, byte for byte."""

from __future__ import annotations

import pytest

from compiler.plan import TIMELINE_COLORS, timeline_png, write_timeline


def _barh(ax, plan: dict, lane: dict, kinds: dict, scale: float) -> None:
    """The bars as they were drawn before: one ``barh`` per transfer and per op."""
    for s in plan["schedule"]:
        y = lane[s["device"]]
        if s["transfer_in_s"] > 0:
            ax.barh(y, s["transfer_in_s"] * scale, left=(s["start_s"] - s["transfer_in_s"]) * scale,
                    height=0.6, color="white", edgecolor="black", hatch="//", linewidth=0.3)
        ax.barh(y, (s["end_s"] - s["start_s"]) * scale, left=s["start_s"] * scale, height=0.6,
                color=TIMELINE_COLORS.get(kinds[s["op"]], "tab:brown"), linewidth=0)


@pytest.mark.parametrize("model, devices, transfers", [
    ("encoder-tiny", "asic,cpu:mode=roofline", False),
    ("gpt2-tiny", "asic,imc,cpu,gpu-a100", True)])
def test_timeline_is_the_barh_picture(model, devices, transfers, tmp_path):
    from compiler.driver import compile_model

    plan = compile_model(model, devices).plan
    assert any(s["transfer_in_s"] > 0 for s in plan["schedule"]) == transfers
    out = write_timeline(plan, tmp_path / "t.png")
    assert out.read_bytes() == timeline_png(plan, _barh)
