"""Whole programs on the Verilated fmforge core: :func:`run_core_sim`.

The simulation top (``core_sim_top``, Verilog written here around the Amaranth core's Verilog)
holds everything that runs per cycle, so Python is out of the per-word path:

* a program ROM (256-bit words) and an external memory (bytes) preloaded with ``$readmemh``
  from files named by plusargs;
* a loader that writes the program into the core's instruction memory (one instruction a
  cycle), then pulses ``start``;
* the external-memory model of :class:`hw.core.Core`'s port: requests queue in order (16
  entries, more than the core's ``DMA_OUTSTANDING`` rows); a read's first beat is offered
  ``L = max(latency, 1)`` cycles after its request's transfer and not before the previous
  request's last beat, then one beat of ``B`` bytes a cycle; write beats taken at once (writes
  are posted);
* the testbench's cycle counter (cycle 0 is the cycle after ``start``; it stops when ``done``
  rises, so it equals the core's ``cnt_cycles`` and :func:`hw.core_model.program_timing`);
* on ``done``, ``$writememh`` of the external-memory range the caller reads back.

The design is built once per configuration through :func:`sim.verilator.build` (keyed by a hash
of the Verilog). The cocotb test (:mod:`sim.cocotb_core_sim`) only resets and waits.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from golden.core import INSTR_BYTES, CoreError
from hw.core import Core
from hw.core_model import CoreConfig
from sim.verilator import VerilatorBuild, build, run_cocotb, to_verilog

__all__ = ["CoreSimResult", "build_core_sim", "core_sim_verilog", "run_core_sim"]

_TOP = r"""
module core_sim_top #(parameter EXT_BYTES = 1024, parameter IMEM = 16, parameter B = 4,
                      parameter L = 1) (
  input clk, input rst, output reg finished, output reg [31:0] tb_cycles,
  output [31:0] cnt_cycles, output [31:0] cnt_busy_d, output [31:0] cnt_busy_m,
  output [31:0] cnt_busy_s, output [31:0] cnt_mem_stall, output error, output [15:0] error_pc);
  reg [7:0] ext [0:EXT_BYTES-1];
  reg [255:0] prog [0:IMEM-1];
  integer nprog, lo, hi, i;
  reg [1023:0] f_ext, f_prog, f_dump;
  initial begin
    for (i = 0; i < EXT_BYTES; i = i + 1) ext[i] = 8'h00;
    if ($value$plusargs("EXT=%s", f_ext)) $readmemh(f_ext, ext);
    if ($value$plusargs("PROG=%s", f_prog)) $readmemh(f_prog, prog);
    if (!$value$plusargs("NPROG=%d", nprog)) nprog = 0;
    if (!$value$plusargs("LO=%d", lo)) lo = 0;
    if (!$value$plusargs("HI=%d", hi)) hi = 0;
    if (!$value$plusargs("DUMP=%s", f_dump)) f_dump = "";
  end
  // ---- loader / run control
  reg [1:0] st; reg [31:0] li; reg start;
  wire imem_w_en = (st == 2'd0) && (li < nprog);
  wire done;
  always @(posedge clk) begin
    start <= 1'b0;
    if (rst) begin st <= 2'd0; li <= 0; finished <= 1'b0; tb_cycles <= 0; end
    else case (st)
      2'd0: if (li < nprog) li <= li + 1; else begin start <= 1'b1; st <= 2'd1; end
      2'd1: st <= 2'd2;  // the start pulse
      2'd2: if (done) begin
              if (hi > lo) $writememh(f_dump, ext, lo, hi - 1);
              finished <= 1'b1; st <= 2'd3;
            end else tb_cycles <= tb_cycles + 1;
      default: ;
    endcase
  end
  // ---- external memory model: a queue of QD requests, in order; the head read's first beat
  // is offered L cycles after its request's transfer (and not before the previous request's
  // last beat has gone), then one beat a cycle; write beats are taken at once
  localparam QD = 16;
  wire req_valid; wire [50:0] req;
  wire [8*B-1:0] rsp_data; wire rsp_ready; wire wd_valid; wire [8*B-1:0] wd_data;
  reg [31:0] q_addr [0:QD-1]; reg [17:0] q_len [0:QD-1]; reg q_w [0:QD-1];
  reg [31:0] q_t [0:QD-1];
  reg [4:0] q_n; reg [3:0] q_h; reg [3:0] q_tl; reg [31:0] now; reg pop; reg push;
  wire head_ok = (q_n != 5'd0);
  wire head_w = q_w[q_h];
  wire [31:0] ha = q_addr[q_h];
  wire [17:0] hn = q_len[q_h];
  wire req_ready = (q_n < QD);
  wire rsp_valid = head_ok && !head_w && (now >= q_t[q_h]);
  genvar g;
  generate for (g = 0; g < B; g = g + 1) begin : rd
    assign rsp_data[8*g +: 8] = (ha + g < EXT_BYTES) ? ext[ha + g] : 8'h00;
  end endgenerate
  always @(posedge clk) begin
    if (rst) begin q_n <= 5'd0; q_h <= 4'd0; q_tl <= 4'd0; now <= 0; end
    else begin
      now <= now + 1;
      pop = 1'b0;
      push = req_valid && req_ready;
      if (rsp_valid && rsp_ready) begin
        q_addr[q_h] <= ha + B; q_len[q_h] <= hn - B;
        if (hn <= B) pop = 1'b1;
      end
      if (head_ok && head_w && wd_valid) begin
        for (i = 0; i < B; i = i + 1)
          if (i < hn && ha + i < EXT_BYTES) ext[ha + i] <= wd_data[8*i +: 8];
        q_addr[q_h] <= ha + B; q_len[q_h] <= hn - B;
        if (hn <= B) pop = 1'b1;
      end
      if (push) begin
        q_addr[q_tl] <= req[31:0]; q_len[q_tl] <= req[49:32]; q_w[q_tl] <= req[50];
        q_t[q_tl] <= now + L; q_tl <= q_tl + 4'd1;
      end
      if (pop) q_h <= q_h + 4'd1;
      q_n <= q_n + {4'd0, push} - {4'd0, pop};
    end
  end
  fmforge_core core (
    .clk(clk), .rst(rst), .start(start), .done(done), .error(error), .error_pc(error_pc),
    .imem_w_en(imem_w_en), .imem_w_addr(li[$clog2(IMEM > 1 ? IMEM : 2)-1:0]),
    .imem_w_data(prog[li]),
    .cnt_cycles(cnt_cycles), .cnt_busy_d(cnt_busy_d), .cnt_busy_m(cnt_busy_m),
    .cnt_busy_s(cnt_busy_s), .cnt_mem_stall(cnt_mem_stall),
    .o_req__valid(req_valid), .o_req__ready(req_ready), .o_req__payload(req),
    .i_rsp__valid(rsp_valid), .i_rsp__ready(rsp_ready), .i_rsp__payload(rsp_data),
    .o_wdata__valid(wd_valid), .o_wdata__ready(1'b1), .o_wdata__payload(wd_data));
endmodule
"""


def _ext_size(n: int) -> int:
    size = 1 << 16
    while size < n:
        size <<= 1
    return size


def core_sim_verilog(cfg: CoreConfig, ext_bytes: int, max_row: int = 512) -> str:
    """The Verilog of the simulation top for ``cfg`` and an external memory of ``ext_bytes``
    (deterministic: the build cache key)."""
    core = Core(rows=cfg.rows, cols=cfg.cols, dataflow=cfg.dataflow,
                bytes_per_cycle=cfg.bytes_per_cycle, queue_depth=cfg.queue_depth,
                sp_bytes=cfg.sp_bytes, imem_instrs=cfg.imem_instrs, max_m=cfg.max_m,
                max_k=cfg.max_k, max_n=cfg.max_n, max_row=max_row)
    top = _TOP.replace("parameter EXT_BYTES = 1024", f"parameter EXT_BYTES = {ext_bytes}") \
        .replace("parameter IMEM = 16", f"parameter IMEM = {cfg.imem_instrs}") \
        .replace("parameter B = 4", f"parameter B = {cfg.bytes_per_cycle}") \
        .replace("parameter L = 1", f"parameter L = {max(cfg.latency, 1)}")
    return to_verilog(core, "fmforge_core") + top


def build_core_sim(cfg: CoreConfig, ext_bytes: int, max_row: int = 512,
                   progress: Any = None) -> VerilatorBuild:
    """The Verilated simulation top for ``cfg`` (cached by content hash; ``ext_bytes`` is
    rounded up to a power of two, at least 64 KiB)."""
    return build(core_sim_verilog(cfg, _ext_size(ext_bytes), max_row), "core_sim_top",
                 progress=progress)


class CoreSimResult(dict):
    """``cycles`` (testbench count), the core's counters (``cnt_cycles``, ``cnt_busy_d/m/s``,
    ``cnt_mem_stall``, ``error``, ``error_pc``), ``sim_seconds`` and ``build_seconds``."""


def _hex_lines(data: bytes) -> bytes:
    h = np.frombuffer(data.hex().encode(), dtype=np.uint8).reshape(-1, 2)
    out = np.empty((h.shape[0], 3), dtype=np.uint8)
    out[:, :2] = h
    out[:, 2] = 10
    return out.tobytes()


def run_core_sim(program_bytes: bytes, image_bytes: bytes, inputs: dict[int, bytes],
                 outputs: Sequence[tuple[int, int]], cfg: CoreConfig, *,
                 ext_bytes: int | None = None, max_row: int = 512, progress: Any = None
                 ) -> tuple[list[bytes], int, CoreSimResult]:
    """Run one program on the Verilated core.

    ``program_bytes``: the encoded program (32 bytes an instruction, ``HALT`` included);
    ``image_bytes``: external memory from address 0 (weights, parameters); ``inputs``: more
    bytes written at their addresses; ``outputs``: ``(addr, nbytes)`` ranges read back after the
    run. Returns ``(output bytes per range, cycles counted by the testbench, counters)``.
    ``ext_bytes`` (default: enough for the image, the inputs and the outputs) selects the
    memory model's size; each distinct size and ``cfg`` is its own (cached) build.
    """
    if len(program_bytes) % INSTR_BYTES or not program_bytes:
        raise CoreError(f"a program is a multiple of {INSTR_BYTES} bytes, not {len(program_bytes)}")
    n_instr = len(program_bytes) // INSTR_BYTES
    if n_instr > cfg.imem_instrs:
        raise CoreError(f"program of {n_instr} instructions exceeds the instruction memory "
                        f"({cfg.imem_instrs})")
    need = max([len(image_bytes)] + [a + len(b) for a, b in inputs.items()]
               + [a + n for a, n in outputs])
    size = _ext_size(max(ext_bytes or 0, need))
    t0 = time.perf_counter()
    b = build_core_sim(cfg, size, max_row, progress)
    t1 = time.perf_counter()
    ext = bytearray(need)
    ext[:len(image_bytes)] = image_bytes
    for a, data in inputs.items():
        ext[a:a + len(data)] = data
    lo = min((a for a, _ in outputs), default=0)
    hi = max((a + n for a, n in outputs), default=0)
    with tempfile.TemporaryDirectory(prefix="fmforge-core-sim-") as td:
        d = Path(td)
        (d / "ext.hex").write_bytes(_hex_lines(bytes(ext)))
        words = [int.from_bytes(program_bytes[i:i + INSTR_BYTES], "little")
                 for i in range(0, len(program_bytes), INSTR_BYTES)]
        (d / "prog.hex").write_text("".join(f"{w:064x}\n" for w in words))
        res_file = d / "result.json"
        plus = [f"+EXT={d / 'ext.hex'}", f"+PROG={d / 'prog.hex'}", f"+NPROG={n_instr}",
                f"+LO={lo}", f"+HI={hi}", f"+DUMP={d / 'dump.hex'}"]
        r = run_cocotb(b, "sim.cocotb_core_sim", test_dir=d / "run",
                       extra_env={"FMFORGE_CORE_SIM_RESULT": str(res_file)}, plusargs=plus)
        if r["failed"] or not res_file.exists():
            raise CoreError(f"core simulation failed: {'; '.join(r['failures']) or 'no result'}")
        counters = CoreSimResult(json.loads(res_file.read_text()))
        dump = b""
        if hi > lo:
            text = (d / "dump.hex").read_text().split()
            dump = bytes.fromhex("".join(t for t in text if not t.startswith("//")))
    counters["sim_seconds"] = time.perf_counter() - t1
    counters["build_seconds"] = t1 - t0
    outs = [dump[a - lo:a - lo + n] for a, n in outputs]
    return outs, int(counters["cycles"]), counters
