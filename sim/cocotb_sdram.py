"""cocotb test: the LiteDRAM SDR SDRAM path (:class:`boards.sdram_sim.SdramSimTop`) with the chip
model :class:`sim.sdram_chip.SdrSdramChip` on its pins, driven through the core's memory
streams.

``$FMFORGE_SDRAM_SPEC`` names a JSON file: ``clock_hz``, ``bytes_per_cycle``, ``pin_fields``
(the packing of ``sd_pins``: name and width from bit 0 up), ``req_fields`` (the request
payload's fields: name, lowest bit, width), ``ops`` (each ``{"write": addr,
"data": hex}``, ``{"read": addr, "length": n}`` or ``{"idle": cycles}``), ``timeout_cycles``,
``dump_mem`` and ``out`` (the results file). Two Python steps a clock cycle: at the falling edge
the chip model sees the pins the controller's output registers hold, as the chip does on the
board (its clock is the inverted system clock) and drives ``dq`` until the next falling edge
(the controller's input registers sample it at the rising edge between); at the rising edge
the streams' handshakes are read (values read then are those the design sampled at that edge)
and the next cycle's are offered.

The ops run back to back: an op's request is offered as soon as the previous one's request has
been taken (the bridge takes the next one when it is idle again); a write's data beats are
offered from its request on. Recorded per op (cycles counted from the first edge): ``req_at``
(request taken), ``first_at``/``last_at`` (first and last data beat: read response or write
data), ``free_at`` (the port ready for the next request), the chip's command counts over the
op (``refreshes``, ``activates``), and a read's data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge

from sim.sdram_chip import SdramProtocolError, SdrSdramChip

__all__ = ["sdram_path"]

RESET_CYCLES = 4


def _fields(spec_fields) -> dict[str, tuple[int, int]]:
    out, lo = {}, 0
    for name, width in spec_fields:
        out[name] = (lo, (1 << width) - 1)
        lo += width
    return out


@cocotb.test()
async def sdram_path(dut):
    spec = json.loads(Path(os.environ["FMFORGE_SDRAM_SPEC"]).read_text())
    clock_hz = float(spec["clock_hz"])
    B = int(spec["bytes_per_cycle"])
    f = _fields(spec["pin_fields"])
    chip = SdrSdramChip(clock_hz, strict=spec.get("strict", True))
    if spec.get("trace"):
        chip.trace = []
    period_ps = round(1e12 / clock_hz)
    cocotb.start_soon(Clock(dut.clk, period_ps, unit="ps").start())
    dut.rst.value = 1
    dut.i_req__valid.value = 0
    dut.i_wdata__valid.value = 0
    dut.o_rsp__ready.value = 1
    dut.sd_dq_i.value = 0

    ops = spec["ops"]
    results: list[dict] = [{} for _ in ops]
    cyc = -1
    ready_at = None
    k = 0                 # the op whose request is offered (or waited for)
    wq: list[tuple[int, list[int]]] = []   # writes taken: (op, beats left)
    rq: list[tuple[int, int]] = []         # reads taken: (op, beats left)
    rdata: dict[int, list[int]] = {}
    idle_until = -1
    busy: list[int] = []  # ops taken whose free_at is not known yet
    dq_last = 0
    timeout = int(spec["timeout_cycles"])
    req = {name: lo for name, lo, _ in spec["req_fields"]}  # the request's bit offsets
    failure = None

    def offer() -> None:
        """Drive the request and write-data streams for the next cycle."""
        nonlocal idle_until
        if k < len(ops) and "idle" in ops[k] and idle_until < 0 and not (wq or rq or busy):
            idle_until = cyc + int(ops[k]["idle"])  # counted once the path is quiet
        if k < len(ops) and "idle" not in ops[k]:
            op = ops[k]
            if "write" in op:
                addr, n, w = int(op["write"]), len(bytes.fromhex(op["data"])), 1
            else:
                addr, n, w = int(op["read"]), int(op["length"]), 0
            dut.i_req__payload.value = (addr << req["addr"] | n << req["length"]
                                        | w << req["write"])
            dut.i_req__valid.value = 1
        else:
            dut.i_req__valid.value = 0
        if wq:
            dut.i_wdata__payload.value = wq[0][1][0]
            dut.i_wdata__valid.value = 1
        else:
            dut.i_wdata__valid.value = 0

    try:
        while True:
            # ---- the chip, at its clock edge: the pins the controller's registers hold
            await FallingEdge(dut.clk)
            pins = int(dut.sd_pins.value)

            def fld(name: str, pins: int = pins) -> int:
                lo, mask = f[name]
                return pins >> lo & mask
            out = chip.edge(cke=fld("cke"), cs_n=fld("cs_n"), ras_n=fld("ras_n"),
                            cas_n=fld("cas_n"), we_n=fld("we_n"), ba=fld("ba"), a=fld("a"),
                            dqm=fld("dm"), dq=fld("dq"), dq_oe=fld("dq_oe"))
            v = 0 if out is None else out
            if v != dq_last:
                dut.sd_dq_i.value = v
                dq_last = v
            await RisingEdge(dut.clk)
            cyc += 1
            if cyc == RESET_CYCLES:
                dut.rst.value = 0
            if cyc < RESET_CYCLES:
                continue
            if ready_at is None:
                if int(dut.ready.value):
                    ready_at = cyc
                    offer()
                elif cyc > timeout:
                    raise AssertionError(f"the SDRAM path was not ready after {cyc} cycles")
                continue
            # ---- the streams: what transferred at this edge
            req_ready = int(dut.i_req__ready.value)
            if busy and req_ready:
                for i in busy:
                    r = results[i]
                    r["free_at"] = cyc
                    r["refreshes"] = chip.stats.get("AUTO REFRESH", 0) - r.pop("_ref0")
                    r["activates"] = chip.stats.get("ACTIVE", 0) - r.pop("_act0")
                busy = []
            if int(dut.i_req__valid.value) and req_ready:
                op = ops[k]
                r = results[k]
                r.update(req_at=cyc, _ref0=chip.stats.get("AUTO REFRESH", 0),
                         _act0=chip.stats.get("ACTIVE", 0))
                busy.append(k)
                if "write" in op:
                    data = bytes.fromhex(op["data"])
                    beats = [int.from_bytes(data[j:j + B], "little")
                             for j in range(0, len(data), B)]
                    if beats:
                        wq.append((k, beats))
                else:
                    n = -(-int(op["length"]) // B)
                    if n:
                        rq.append((k, n))
                        rdata[k] = []
                k += 1
            if int(dut.i_wdata__valid.value) and int(dut.i_wdata__ready.value):
                i, beats = wq[0]
                r = results[i]
                r.setdefault("first_at", cyc)
                r["last_at"] = cyc
                beats.pop(0)
                if not beats:
                    wq.pop(0)
            if int(dut.o_rsp__valid.value):
                if not rq:
                    raise AssertionError(f"cycle {cyc}: a read beat with no read outstanding")
                i, left = rq[0]
                r = results[i]
                r.setdefault("first_at", cyc)
                r["last_at"] = cyc
                rdata[i].append(int(dut.o_rsp__payload.value))
                if left == 1:
                    rq.pop(0)
                else:
                    rq[0] = (i, left - 1)
            if k < len(ops) and "idle" in ops[k] and idle_until >= 0 and cyc >= idle_until:
                idle_until = -1
                k += 1
            if k == len(ops) and not wq and not rq and not busy:
                break
            if cyc > timeout:
                raise AssertionError(f"timeout after {cyc} cycles: op {k} of {len(ops)}, "
                                     f"{len(wq)} writes and {len(rq)} reads unfinished")
            offer()
    except (AssertionError, SdramProtocolError) as e:
        failure = str(e)

    for i, op in enumerate(ops):
        if i in rdata:
            n = int(op["length"])
            raw = b"".join(w.to_bytes(B, "little") for w in rdata[i])
            results[i]["data"] = raw[:n].hex()
    doc = {
        "ready_at": ready_at, "cycles": cyc, "ops": results, "failure": failure,
        "chip": {"cl": chip.cl, "bl": chip.bl, "mode": chip.mode, "stats": chip.stats,
                 "violations": chip.violations, "uninitialised_reads": chip.uninitialised_reads,
                 "refresh_intervals": chip.refresh_intervals,
                 "min_cycles": chip.ck},
    }
    if chip.trace is not None:
        doc["trace"] = chip.trace
    if spec.get("dump_mem"):
        doc["mem"] = [[b, r, c, v] for (b, r, c), v in sorted(chip.mem.items())]
    Path(spec["out"]).write_text(json.dumps(doc))
    if failure:
        raise AssertionError(failure)
