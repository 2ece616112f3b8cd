"""``fmforge run PLAN --port DEV``: the host runtime over a real tty (a pseudo-terminal whose
other end runs golden.hostproto.DeviceModel as the board), and its one-line errors: no such
device, a device that does not answer."""

from __future__ import annotations

import json
import os
import select
import threading
from pathlib import Path

import pytest

from fmforge.cli import main
from golden.hostproto import DeviceModel

pytest.importorskip("serial")
MODEL = f"{Path(__file__).parents[1] / 'hw' / 'tiny_bert.py'}:two_layers"


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    p = tmp_path_factory.mktemp("plan") / "p.json"
    assert main(["compile", "--model", MODEL, "--devices", "core:rows=4:cols=4:sp_kb=16,cpu",
                 "--objective", "energy", "-o", str(p)]) == 0
    return p


class PtyBoard:
    """A pseudo-terminal; the master side serves ``device`` until stopped."""

    def __init__(self, device: DeviceModel | None) -> None:
        self.master, slave = os.openpty()
        self.path = os.ttyname(slave)
        os.close(slave)
        self.device = device
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.stop.is_set():
            r, _, _ = select.select([self.master], [], [], 0.05)
            if not r:
                out = self.device.idle() if self.device else b""
            else:
                try:
                    data = os.read(self.master, 4096)
                except OSError:
                    continue  # the slave side is closed between sessions
                out = self.device.receive(data) if self.device else b""
            if out:
                os.write(self.master, out)

    def __enter__(self) -> PtyBoard:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(2)
        os.close(self.master)


def _device_for(plan_path: Path) -> DeviceModel:
    from hw.core_model import program_timing
    from hw.core_spec import CoreSpec

    doc = json.loads(plan_path.read_text())
    dev = next(d for d in doc["devices"] if d["kind"] == "core")
    spec = CoreSpec(**{k: v for k, v in dev["params"].items() if k in CoreSpec.__dataclass_fields__})
    prog = dev["hardware"]["programs"][0]

    def counters(instrs):
        t = program_timing(instrs, spec.config())
        return (t.cycles, t.busy["D"], t.busy["M"], t.busy["S"], 0)

    return DeviceModel(ext_bytes=prog["ext_bytes"], imem_instrs=256, max_payload=1024,
                       sp_bytes=spec.sp_bytes, counters=counters)


def test_run_over_a_serial_port(plan, capsys):
    with PtyBoard(_device_for(plan)) as board:
        capsys.readouterr()
        assert main(["run", str(plan), "--port", board.path, "--limit", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["engine"] == "board" and r["bit_exact"] and r["match"]
    assert r["cycles"] == r["predicted_cycles"] > 0
    # the image went over the link once (41 kB), the inputs and outputs per sentence
    assert r["link_bytes"] > 40_000 and r["cosine_mean"] > 0.99


def test_port_errors(plan, capsys):
    capsys.readouterr()
    assert main(["run", str(plan), "--port", "/dev/nonexistent-tty"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fmforge: error: cannot open serial port /dev/nonexistent-tty")
    assert "\n" not in err
    with PtyBoard(None) as board:  # a device that never answers
        assert main(["run", str(plan), "--port", board.path, "--port-timeout", "0.3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("fmforge: error: no answer to INFO within 0.3 s: is the board programmed "
                   "and the port right?")
