"""``fmforge sweep``: the spec, the grid, the Pareto front, and sweeps on a real LocalCluster
(2 worker processes): every result, a worker killed mid-sweep, a crashing point retried once
and reported, the cache hit on a rerun. The points compile ``encoder-tiny`` (about a second)."""

from __future__ import annotations

import csv
import json
import os
import signal
import textwrap
from pathlib import Path

import pytest

from fmforge.cli import main
from fmforge.sweep import (
    KEEP_KNOBS,
    SweepSpecError,
    expand,
    load_spec,
    pareto_front,
    parse_spec,
    point_key,
    run_sweep,
)

TINY_HEAD = """
name = "tiny"
model = "encoder-tiny"
devices = "asic:rows={rows}:cols={cols}:dataflow={dataflow},cpu:mode=roofline"
"""
TINY = TINY_HEAD + """
[grid]
array = ["4x4", "8x8"]
dataflow = ["os", "ws"]
objective = ["latency"]
"""


def _spec(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


# --------------------------------------------------------------------------- spec and grid

def test_grid_expands_to_the_product_and_fills_the_device_template():
    spec = parse_spec({"grid": {"array": ["8x8", "16x32"], "dataflow": ["os", "ws"],
                                "lanes": [1, 2], "objective": ["latency", "energy"]}})
    pts = expand(spec)
    assert len(pts) == 16
    assert pts[0].task["devices"] == "asic:rows=8:cols=8:dataflow=os:lanes=1:mhz=1000,cpu"
    assert pts[-1].task["devices"] == "asic:rows=16:cols=32:dataflow=ws:lanes=2:mhz=1000,cpu"
    assert [p.labels["objective"] for p in pts[:2]] == ["latency", "energy"]
    assert len({p.key or point_key(p.task, "x") for p in pts}) == 16


def test_dense_points_do_not_repeat_over_keep_and_keep_sets_the_methods_knob():
    spec = parse_spec({"grid": {"sparse": ["none", "spatten", "sanger:threshold=0.02"],
                                "keep": [0.5, 0.7]}})
    pts = expand(spec)
    assert [p.task["sparse"] for p in pts] == [None, "spatten:token_keep=0.5",
                                               "spatten:token_keep=0.7", "sanger:threshold=0.02"]
    assert [p.labels["keep"] for p in pts] == [None, 0.5, 0.7, None]
    assert KEEP_KNOBS["spatten"] == "token_keep"


def test_build_keys_depend_on_the_clock_target_but_compile_only_keys_do_not():
    g = {"grid": {"clock_mhz": [100, 125]}, "devices": "ulx3s-85f,cpu"}
    assert len(expand(parse_spec(g))) == 1
    built = expand(parse_spec({**g, "build": True}))
    assert [p.task["target_mhz"] for p in built] == [100, 125]


@pytest.mark.parametrize("doc, words", [
    ({"grid": {"array": ["8"]}}, "grid.array entries are 'RxC'"),
    ({"grid": {"dataflow": ["xs"]}}, "grid.dataflow"),
    ({"grid": {"sparse": ["topk"]}}, "unknown method 'topk'"),
    ({"grid": {"colour": [1]}}, "unknown grid axis 'colour'"),
    ({"modle": "minilm"}, "unknown key 'modle'"),
    ({"devices": "asic:rows={r},cpu"}, "unknown placeholder"),
    ({"devices": "asic,cpu", "grid": {"array": ["8x8", "16x16"]}},
     "grid.array has 2 values but the device template"),
    ({"accuracy": -1}, "accuracy"),
    ({"build": True, "board": "nope"}, "board"),
])
def test_bad_specs_name_the_key(doc, words):
    with pytest.raises(SweepSpecError, match="sweep spec <spec>") as e:
        parse_spec(doc)
    assert words in str(e.value)


def test_cli_bad_spec_is_one_line_exit_2(tmp_path, capsys):
    p = _spec(tmp_path, 'model = "encoder-tiny"\n[grid]\nobjective = ["speed"]\n')
    assert main(["sweep", str(p), "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "grid.objective" in err[0] and err[0].startswith("fmforge: error:")
    assert main(["sweep", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_pareto_front_is_exact():
    def r(lat, e, status="ok", acc=None):
        return {"status": status, "predicted_latency_s": lat, "predicted_energy_j": e,
                "measured_latency_s": None, "cosine_mean": acc}
    recs = [r(1, 5), r(2, 2), r(3, 1), r(2, 3), r(4, 4), r(0.5, 0.5, "failed"), r(1, 5)]
    assert pareto_front(recs) == [0, 1, 2, 6]
    # with accuracy on every ok point it becomes a third objective
    recs = [r(1, 1, acc=0.90), r(2, 2, acc=0.99), r(2, 2, acc=0.95)]
    assert pareto_front(recs) == [0, 1]


# --------------------------------------------------------------------------- on a LocalCluster

def test_an_interrupted_sweep_continues_and_a_rerun_hits_the_cache(tmp_path):
    spec = load_spec(_spec(tmp_path, TINY.replace("[grid]", "accuracy = 2\n[grid]")))
    cache = tmp_path / "cache"
    seen: list[str] = []

    def interrupt_after_two(client, point, rec):
        seen.append(point.id)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, workers=2, out_dir=tmp_path / "out", cache=cache, progress=None,
                  on_result=interrupt_after_two)
    assert len(list(cache.glob("*.plan.json"))) == 2

    # the restart runs only the two points that are missing
    res = run_sweep(spec, workers=2, out_dir=tmp_path / "out", cache=cache, progress=None)
    assert res.workers == 2 and res.cached == 2
    assert sorted(r["id"] for r in res.records if r["cached"]) == sorted(seen)
    assert [r["status"] for r in res.records] == ["ok"] * 4, [r["reason"] for r in res.records]
    # every result is the compiler's own for that point
    from compiler.driver import compile_model

    c = compile_model("encoder-tiny", res.points[3].task["devices"], "latency")
    assert res.records[3]["predicted_latency_s"] == c.plan["totals"]["latency_s"]
    assert res.records[3]["gemm"]["rows"] == 8 and res.records[3]["gemm"]["dataflow"] == "ws"
    assert all(r["accuracy_inputs"] == 2 and 0.9 < r["cosine_mean"] <= 1.0 + 1e-9
               for r in res.records)
    assert res.front and all(res.records[i]["pareto"] for i in res.front)
    rows = list(csv.DictReader(open(res.files["csv"])))
    assert [x["id"] for x in rows] == ["p000", "p001", "p002", "p003"]
    doc = json.loads(Path(res.files["json"]).read_text())
    assert doc["points"] == 4 and doc["ok"] and doc["pareto"] == [rows[i]["id"] for i in res.front]
    for k in ("latency_energy", "resources_fmax", "accuracy_keep"):
        assert Path(res.files[k]).read_bytes()[:4] == b"\x89PNG"
    assert len(list((tmp_path / "out" / "plans").glob("p00*.json"))) == 4
    assert len(list(cache.glob("*.plan.json"))) == 4

    # the rerun starts no cluster and runs nothing: every point comes from the cache
    again = run_sweep(spec, workers=2, out_dir=tmp_path / "out2", cache=cache, progress=None)
    assert again.cached == 4 and again.workers == 0
    assert all(r["cached"] for r in again.records)
    assert [r["predicted_latency_s"] for r in again.records] == \
        [r["predicted_latency_s"] for r in res.records]
    assert len(list((tmp_path / "out2" / "plans").glob("*.json"))) == 4


def test_a_worker_killed_mid_sweep_loses_no_point(tmp_path):
    spec = load_spec(_spec(tmp_path, TINY.replace('["latency"]', '["latency", "energy"]')))
    killed: list[str] = []

    def kill_a_busy_worker(client, point, rec):
        if killed:
            return
        busy = [w for w, keys in client.processing().items() if keys]
        if busy:
            pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
            os.kill(pid, signal.SIGKILL)
            killed.append(busy[0])

    res = run_sweep(spec, workers=2, out_dir=None, cache=None, progress=None,
                    on_result=kill_a_busy_worker)
    assert killed, "no worker was busy after the first result"
    assert len(res.records) == 8
    assert [r["status"] for r in res.records] == ["ok"] * 8, [r["reason"] for r in res.records]
    assert len({r["id"] for r in res.records}) == 8


CRASH = """
import os

def factory():
    with open({count!r}, "a") as f:
        f.write("x\\n")
    os._exit(3)  # the worker process dies
"""


def test_a_point_that_kills_its_worker_is_retried_once_then_reported(tmp_path, capsys):
    count = tmp_path / "calls.txt"
    model = tmp_path / "crash.py"
    model.write_text(CRASH.format(count=str(count)), encoding="utf-8")
    p = _spec(tmp_path, f'model = "{model}:factory"\n[grid]\narray = ["4x4"]\n')
    out = tmp_path / "out"
    code = main(["sweep", str(p), "--workers", "2", "-o", str(out), "--cache",
                 str(tmp_path / "cache"), "--json", "--quiet"])
    assert code == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["failed"] == 1 and not doc["ok"]
    rec = doc["results"][0]
    assert rec["status"] == "failed" and "died twice" in rec["reason"]
    assert count.read_text().count("x") == 2  # the first try and one retry
    assert not list((tmp_path / "cache").glob("*.json"))  # failures are not cached
    assert "failed" in (out / "table.txt").read_text()


def test_a_point_cosimulates_its_units_and_a_build_that_cannot_fit_is_an_error():
    """One point in this process: the first op of each unit kind replayed on the Amaranth
    simulator (bit-exact, cycles = plan), then a GEMM build refused before any tool runs."""
    from fmforge.sweep import run_point

    task = {"model": "encoder-tiny", "devices": "asic:rows=4:cols=4,cpu:mode=roofline",
            "objective": "energy", "sparse": None, "accuracy": 0, "build": False, "board": None,
            "target_mhz": None, "cosim": True, "cosim_simulator": "amaranth",
            "cosim_ops": "first", "cosim_stall": "none"}
    r = run_point(task)
    assert r["status"] == "ok", r["reason"]
    kinds = [c["unit_kind"] for c in r["cosim"]]
    assert "gemm" in kinds and len(kinds) == len(set(kinds))
    assert all(c["match"] and c["cycles"] == c["plan_cycles"] for c in r["cosim"])
    assert r["cosim_match"] and r["measured_latency_s"] == r["predicted_latency_s"]

    task.update(cosim=False, build=True, board="icebreaker", target_mhz=30.0)
    r = run_point(task)
    assert r["status"] == "error" and r["reason"].startswith("build: ")
    assert "DSP" in r["reason"] and "icebreaker" in r["reason"]
