"""hw.core_area: the core's memories as the RTL elaborates them, mapped to block RAM as Yosys
maps them; multipliers counted from the structure; the packed-build check is a bitstream test."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from amaranth.back import rtlil

from hw.core import Core
from hw.core_area import CoreMemory, core_area_ecp5, core_memories, ecp5_block_rams
from hw.core_spec import CoreSpec

_MEM_RE = re.compile(r"^\s*memory width (\d+) size (\d+) ", re.M)


@pytest.mark.parametrize("params", [
    dict(rows=2, cols=2, sp_bytes=128, imem_instrs=8, max_m=4, max_k=4, max_n=4, queue_depth=2),
    dict(rows=4, cols=2, dataflow="ws", bytes_per_cycle=8, sp_bytes=200, imem_instrs=16,
         max_m=8, max_k=12, max_n=6, queue_depth=3, max_row=64),
])
def test_memories_are_those_the_rtl_elaborates(params):
    text = rtlil.convert(Core(**params), name="core")
    found = Counter((int(w), int(d)) for w, d in _MEM_RE.findall(text))
    model = Counter((m.width, m.depth) for m in core_memories(**params))
    assert found == model


def test_block_ram_mapping():
    # the configuration needing the fewest DP16KD, from 16384x1 to 512x36
    assert ecp5_block_rams(CoreMemory("imem", 256, 2048)) == 29      # 2048 x 9
    assert ecp5_block_rams(CoreMemory("a", 16, 24576)) == 24         # 1024 x 18 (or 2048 x 9)
    assert ecp5_block_rams(CoreMemory("t", 24, 512)) == 1            # 512 x 36
    assert ecp5_block_rams(CoreMemory("x", 132, 128)) == 4
    assert ecp5_block_rams(CoreMemory("c", 140, 16)) == 0            # LUT RAM
    assert ecp5_block_rams(CoreMemory("r", 16, 256, rom=True)) == 0  # logic
    assert ecp5_block_rams(CoreMemory("s", 8, 4096, ff=True)) == 0   # the scratchpad's banks


def test_counts_follow_the_structure():
    base = dict(bytes_per_cycle=2, sp_bytes=128, imem_instrs=2048, max_m=32, max_k=1536,
                max_n=32)
    # measured (Yosys 0.70 synth_ecp5, per submodule): 2x2 71 MULT18X18D and 91 DP16KD, 4x4 99
    two = core_area_ecp5(rows=2, cols=2, **base)
    assert (two["dsps"], two["brams"]) == (71, 91)
    assert core_area_ecp5(rows=4, cols=4, **base)["dsps"] == 99
    # LUTs grow with the scratchpad (flip-flop banks behind 13 ports) far faster than with the
    # array: the bytes, not the MACs, are what limit a board core
    more_sp = core_area_ecp5(rows=2, cols=2, **{**base, "sp_bytes": 1024})
    assert more_sp["luts"] - two["luts"] > 50 * (1024 - 128)
    spec = CoreSpec(rows=2, cols=2, bytes_per_cycle=2, sp_bytes=128, imem_instrs=2048, max_m=32,
                    max_k=1536, max_n=32)
    r = spec.resources("ecp5")
    assert {k: r[k] for k in two} == two and r["estimated"]
