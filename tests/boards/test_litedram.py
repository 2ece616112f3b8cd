"""boards.litedram: the controller generated and cached by content hash, its initialisation
sequence read from the generated PHY header, and the SoC's sequencer replaying it on Wishbone."""

from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from boards.litedram import (
    DFII_CONTROL_SEL,
    SdramInit,
    WbWrite,
    generate,
    init_sequence,
    litedram_config,
)
from golden.errors import UserValueError

pytest.importorskip("litedram")


def test_config():
    c = litedram_config("ulx3s-85f", 50e6)
    assert c["device"] == "LFE5U-85F-6BG381C" and c["memtype"] == "SDR"
    assert c["sdram_phy"] == "GENSDRPHY" and c["cpu"] == "None" and c["sys_clk_freq"] == 50e6
    with pytest.raises(UserValueError, match="icebreaker has no SDR SDRAM"):
        litedram_config("icebreaker", 12e6)


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("FMFORGE_CACHE", str(tmp_path_factory.mktemp("cache")))
    first = generate("ulx3s-85f", 25e6)
    yield first
    mp.undo()


def test_generate_and_cache(core):
    assert not core.cached
    text = core.verilog.read_text()
    assert "module litedram_core" in text
    for port in ("user_port_native_0_cmd_addr", "user_port_native_0_wdata_we", "wb_ctrl_adr",
                 "init_done", "sdram_dq"):
        assert port in text
    again = generate("ulx3s-85f", 25e6)
    assert again.cached and again.key == core.key and again.verilog == core.verilog
    assert generate("ulx3s-85f", 25e6, use_cache=False).verilog.read_text() == text  # deterministic


def test_init_sequence(core):
    seq = init_sequence(core)
    csr = core.csr()
    ctl, cmd, issue = (csr[f"sdram_dfii_{n}"] for n in ("control", "pi0_command",
                                                        "pi0_command_issue"))
    assert seq[0].addr == csr["sdram_dfii_pi0_address"]
    cke = next(w for w in seq if w.addr == ctl)
    assert cke.value == 0x0E and cke.delay >= 20000     # CKE | ODT | RESET_N, then the wait
    cmds = [w.value for w in seq if w.addr == cmd]
    assert cmds[0] == 0x0B                               # precharge all: RAS | WE | CS
    assert cmds.count(0x0D) == 2                         # two auto refreshes: RAS | CAS | CS
    assert sum(w.addr == issue for w in seq) == len(cmds)
    assert seq[-2] == WbWrite(ctl, DFII_CONTROL_SEL)
    assert seq[-1] == WbWrite(csr["ddrctrl_init_done"], 1)  # opens the native user port


def test_sequencer_replays_on_wishbone():
    seq = [WbWrite(0x800, 0x0E, 7), WbWrite(0x804, 0x0B), WbWrite(0x808, 1, 3),
           WbWrite(0x800, DFII_CONTROL_SEL)]
    dut = SdramInit(seq, delay_scale=2)
    rng = random.Random(3)
    seen: list[tuple[int, int, int]] = []

    async def slave(ctx):
        cyc = 0
        while True:
            ack = ctx.get(dut.cyc & dut.stb) and rng.random() < 0.5
            ctx.set(dut.ack, ack)
            _, _, a, d, we, sel = await ctx.tick().sample(dut.adr, dut.dat_w, dut.we, dut.sel)
            if ack:
                assert we and sel == 0xF
                seen.append((a << 2, d, cyc))
            cyc += 1

    async def bench(ctx):
        n = 0
        while not ctx.get(dut.done):
            await ctx.tick()
            n += 1
            assert n < 500, "timeout"
        for _ in range(5):
            assert ctx.get(dut.done) and not ctx.get(dut.cyc)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(slave, background=True)
    sim.add_testbench(bench)
    sim.run()
    assert [(a, d) for a, d, _ in seen] == [(w.addr, w.value) for w in seq]
    for (_, _, t0), (_, _, t1), w in zip(seen, seen[1:], seq, strict=False):
        assert t1 - t0 >= 2 * w.delay + 1


def test_sequencer_errors():
    with pytest.raises(UserValueError, match="at least one write"):
        SdramInit([])


def test_sdram_soc_elaborates_for_the_board(core):
    """The SoC with the SDRAM: config checks, the prediction without memory BRAMs, and a build
    plan (Amaranth elaboration for the ULX3S pins, no tools) that carries the LiteDRAM Verilog."""
    from boards.build import _platform_at
    from boards.catalog import get_board
    from boards.soc import SocConfig, SocTop
    from boards.soc_build import predict_resources
    from hw.core_spec import CoreSpec

    spec = CoreSpec(rows=2, cols=2, sp_bytes=256, imem_instrs=16, max_m=8, max_k=8, max_n=8)
    with pytest.raises(UserValueError, match="memory must be 'bram' or 'sdram'"):
        SocConfig(core=spec, memory="ddr")
    with pytest.raises(UserValueError, match="cannot preload an image"):
        SocConfig(core=spec, memory="sdram", image=b"x")
    cfg = SocConfig(core=spec, ext_bytes=32 << 20, memory="sdram", max_row=16)
    bram = SocConfig(core=spec.__class__(**{**spec.__dict__, "latency": 2}), ext_bytes=65536,
                     max_row=16)
    assert predict_resources(cfg)["brams"] < predict_resources(bram)["brams"]
    plan = _platform_at(get_board("ulx3s-85f"), 100).build(SocTop(cfg), name="sd",
                                                          do_build=False)
    assert "module litedram_core" in plan.files["litedram_core.v"]
    rtlil = plan.files["sd.il"]
    assert "cell \\litedram_core" in rtlil and "cell \\ODDRX1F" in rtlil
