"""The host runtime (golden.hostproto.Host) against the Verilated SoC through its UART pins
(fmforge.board_sim): a GEMM with one operand preloaded through the back door and one written
over the link, the result and the counters read back; a refused frame answered as the golden
device model answers it. Timeouts: the host's (60 s an answer) and the connection's."""

from __future__ import annotations

import pytest
import torch

from boards.soc import SocConfig
from fmforge.board_sim import BoardSim
from golden.core import Instr, encode_program
from golden.hostproto import E_BAD_ADDRESS, HostLinkError
from hw.core_model import program_timing
from hw.core_spec import CoreSpec
from hw.extmem import BRAM_LATENCY

SPEC = CoreSpec(rows=2, cols=2, latency=BRAM_LATENCY, sp_bytes=128, imem_instrs=8, max_m=4,
                max_k=4, max_n=4, queue_depth=2)


def _prog() -> list[Instr]:
    d = {"rows": 4, "cols": 4, "ext_rs": 4, "sp_rs": 4, "sp_cs": 1}
    return [Instr("LOAD", f={"ext": 0, "sp": 0, **d}),
            Instr("LOAD", signal=frozenset("M"), f={"ext": 16, "sp": 16, **d}),
            Instr("GEMM", wait=frozenset("D"), signal=frozenset("D"),
                  f={"a": 0, "b": 16, "c": 32, "m": 4, "k": 4, "n": 4}),
            Instr("STORE", wait=frozenset("M"),
                  f={"ext": 256, "sp": 32, "rows": 4, "cols": 16, "ext_rs": 16, "sp_rs": 16,
                     "sp_cs": 1}),
            Instr("HALT")]


@pytest.mark.slow
def test_gemm_on_the_verilated_soc_over_the_uart():
    g = torch.Generator().manual_seed(3)
    a = torch.randint(-128, 128, (4, 4), generator=g)
    b = torch.randint(-128, 128, (4, 4), generator=g)
    a_bytes = a.to(torch.int8).numpy().tobytes()
    cfg = SocConfig(core=SPEC, ext_bytes=1024, clock_hz=4e6, baud=1e6, max_payload=128,
                    max_row=8, image=a_bytes)                       # A through the back door
    prog = _prog()
    sim = BoardSim(cfg, timeout=300)  # a hang guard: simulated bytes are slow on a loaded machine
    with sim as host:
        assert host.info() == {"version": 1, "max_payload": 128, "imem_instrs": 8,
                               "ext_bytes": 1024}
        host.write_mem(16, b.to(torch.int8).numpy().tobytes())     # B over the UART
        host.load_program(encode_program(prog))
        st = host.run()
        assert st.done and not st.error
        c = torch.frombuffer(bytearray(host.read_mem(256, 64)), dtype=torch.int32)
        counters = host.counters()
        with pytest.raises(HostLinkError, match="address out of range") as e:
            host.read_mem(1020, 8)
        assert e.value.code == E_BAD_ADDRESS
        sent, received = host.bytes_sent, host.bytes_received
    assert torch.equal(c.reshape(4, 4).to(torch.int64), a @ b)
    t = program_timing(prog, SPEC.config())
    assert counters["cycles"] == t.cycles and counters["busy_m"] == t.busy["M"]
    assert sent > 16 + 5 * 32 and received > 64
    assert sim.result["passed"] == 1


@pytest.mark.slow
def test_run_board_sim_tiny_encoder(tmp_path, capsys):
    """``fmforge run PLAN --board-sim``: a compiled two-layer encoder's core program through the
    host runtime on the Verilated SoC; outputs equal the golden core's, cycles the timing
    model's (latency 2), bytes counted on the link."""
    import json
    from pathlib import Path

    from fmforge.cli import main

    model = f"{Path(__file__).parents[1] / 'hw' / 'tiny_bert.py'}:two_layers"
    plan = tmp_path / "p.json"
    assert main(["compile", "--model", model, "--devices", "core:rows=4:cols=4:sp_kb=16,cpu",
                 "--objective", "energy", "-o", str(plan)]) == 0
    capsys.readouterr()
    assert main(["run", str(plan), "--board-sim", "--limit", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["engine"] == "board-sim" and r["bit_exact"] and r["match"]
    assert r["cycles"] == r["predicted_cycles"] > 0
    assert r["link_bytes"] > 1000 and r["link_seconds"] == pytest.approx(r["link_bytes"] * 1e-5)
    assert r["cosine_mean"] > 0.99 and not r["board_errors"]
