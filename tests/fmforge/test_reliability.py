"""Bad input a new user gives the CLI: one line ``fmforge: error: ...``, exit 2, nothing written."""

from __future__ import annotations

import copy
import json

import pytest

from fmforge.cli import build_parser, main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the CLI in this process; returns (exit status, stdout, stderr)."""
    try:
        rc = main(list(argv))
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(capsys, *argv: str) -> str:
    rc, out, err = _run(capsys, *argv)
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("fmforge: error: "), err
    assert out == ""
    return lines[0]


@pytest.fixture(scope="module")
def enc_plan(tmp_path_factory):
    """A small valid plan (encoder-tiny on asic + a roofline CPU: no timing cache)."""
    from compiler.driver import compile_model

    plan = compile_model("encoder-tiny", "asic,cpu:mode=roofline").plan
    return plan


def _write(tmp_path, plan, name="p.json"):
    p = tmp_path / name
    p.write_text(json.dumps(plan))
    return str(p)


@pytest.mark.parametrize(("argv", "value", "allowed"), [
    (["verilog", "gelu", "--in-scale", "1e30"], "1e30", "0.001..100"),
    (["verilog", "gelu", "--out-scale", "nan"], "nan", "0.0001..100"),
    (["verilog", "softmax", "--max-length", "-3"], "-3", "1..65536"),
    (["verilog", "gemm", "--rows", "65", "--cols", "2"], "65", "1..64"),
    (["cosim", "gemm", "--rows", "4", "--cols", "4", "--m", "70000", "--k", "3", "--n", "3"],
     "70000", "1..65536"),
    (["cosim", "gemm", "--rows", "4", "--cols", "4", "--m", "3", "--k", "3", "--n", "3",
      "--seed", "-1"], "-1", "0..4294967295"),
    (["sparsity", "--threads", "100000"], "100000", "1.."),
    (["execute", "p.json", "--limit", "0"], "0", "1..1048576"),
    (["build", "gemm", "--board", "ulx3s-85f", "--rows", "2", "--cols", "2",
      "--target-mhz", "1e9"], "1e9", "1..1000"),
])
def test_numeric_options_are_bounded(capsys, argv, value, allowed):
    line = _one_line_error(capsys, *argv)
    assert value in line and allowed in line


def test_every_numeric_option_shows_its_range_in_help():
    import argparse

    from fmforge.commands._args import Bounded

    def walk(parser, where):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    yield from walk(sub, f"{where} {name}")
            elif a.option_strings and a.type in (int, float):
                yield f"{where} {a.option_strings[-1]}: unbounded {a.type.__name__}"
            elif isinstance(a.type, Bounded):
                assert a.type.range_text in a.help, (where, a.option_strings)

    assert list(walk(build_parser(), "fmforge")) == []


def test_gelu_scale_too_coarse_is_a_user_error():
    from golden.errors import UserError
    from golden.gelu import gelu_params

    with pytest.raises(UserError, match=r"1e\+30 is too coarse.*1000"):
        gelu_params(1e30, 0.03)


FACTORIES = '''
import sys
import torch

def wrong_dtype():
    return torch.nn.Linear(4, 4), (torch.ones(1, 4, dtype=torch.int64),)

def leaves():
    sys.exit(3)

def not_a_pair():
    return 42
'''


@pytest.mark.parametrize(("fn", "message"), [
    ("wrong_dtype", "fails on its own example inputs (int64[1, 4]): RuntimeError: mat1 and mat2"),
    ("leaves", "called sys.exit(3)"),
    ("not_a_pair", "must return (torch.nn.Module, example_inputs), not int"),
])
def test_factory_failures_are_the_factory_s(capsys, tmp_path, fn, message):
    f = tmp_path / "m.py"
    f.write_text(FACTORIES)
    line = _one_line_error(capsys, "compile", "--model", f"{f}:{fn}", "-o", str(tmp_path / "p.json"))
    assert message in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.py"]  # nothing written


def test_duplicate_sparsity_methods(capsys):
    assert "'sanger' given more than once" in _one_line_error(
        capsys, "sparsity", "--methods", "sanger,a3,sanger")


def test_waves_need_verilator(capsys):
    line = _one_line_error(capsys, "cosim", "gemm", "--rows", "2", "--cols", "2", "--m", "2",
                           "--k", "2", "--n", "2", "--waves", "--simulator", "amaranth")
    assert "--waves needs --simulator verilator" in line


@pytest.mark.parametrize(("edit", "field"), [
    (lambda p: p["ops"][2].update(seconds=-1.0), "ops[2].seconds"),
    (lambda p: p["ops"][2].update(macs=10**30), "ops[2].macs"),
    (lambda p: p["ops"][2].update(macs=1e30), "ops[2].macs"),
    (lambda p: p["ops"][2].update(op="frobnicate"), "ops[2].op"),
    (lambda p: p["model"].update(seq_len=-5), "model.seq_len"),
    (lambda p: p["totals"].update(energy_j=float("nan")), "totals.energy_j"),
])
def test_plan_values_out_of_range_name_the_field(capsys, tmp_path, enc_plan, edit, field):
    bad = copy.deepcopy(enc_plan)
    edit(bad)
    line = _one_line_error(capsys, "execute", _write(tmp_path, bad), "--limit", "1")
    assert f"field {field}:" in line


def test_sentences_for_a_factory_plan_are_refused(capsys, tmp_path, enc_plan):
    s = tmp_path / "s.txt"
    s.write_text("hello\n")
    line = _one_line_error(capsys, "execute", _write(tmp_path, enc_plan), "--sentences", str(s))
    assert "sentences apply to MiniLM plans only" in line and "encoder-tiny" in line


def test_sentence_longer_than_the_sequence_is_refused():
    """MiniLM plans run at 32 tokens: a longer sentence is an error, not a silent truncation."""
    from compiler.execute import _check_lengths
    from compiler.zoo import _minilm
    from golden.errors import UserError

    _, tok = _minilm()
    _check_lengths(tok, ["a short one"], 32)
    with pytest.raises(UserError, match=r"sentence 2 has \d+ tokens, more than the plan's "
                                        r"sequence length 32 \(allowed 1..32"):
        _check_lengths(tok, ["fine", " ".join(["word"] * 40)], 32)


def test_negative_sequence_length_is_a_user_error():
    from compiler.frontend import load_model
    from golden.errors import UserError

    with pytest.raises(UserError, match=r"sequence length must be an integer in 1..512, not -4"):
        load_model("minilm", -4)


# -- output files -------------------------------------------------------------------------------

def _special(tmp_path, kind):
    import os

    if kind == "device":
        return "/dev/null"
    p = tmp_path / f"out.{kind}"
    if kind == "symlink":
        (tmp_path / "target.json").write_text("keep me\n")
        p.symlink_to(tmp_path / "target.json")
    elif kind == "fifo":
        os.mkfifo(p)
    elif kind == "directory":
        p.mkdir()
    return str(p)


@pytest.mark.parametrize("kind", ["device", "symlink", "fifo", "directory"])
@pytest.mark.parametrize("command", [
    ["compile", "--model", "encoder-tiny", "--devices", "asic,cpu:mode=roofline"],
    ["verilog", "gemm", "--rows", "2", "--cols", "2"],
])
def test_special_outputs_are_refused_before_any_work(capsys, tmp_path, kind, command):
    import stat

    out = _special(tmp_path, kind)
    before = sorted(p.name for p in tmp_path.iterdir())
    line = _one_line_error(capsys, *command, "-o", out)
    assert out in line and ("is a" in line)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing left behind
    if kind == "symlink":
        assert (tmp_path / "target.json").read_text() == "keep me\n"
    if kind == "fifo":
        assert stat.S_ISFIFO((tmp_path / "out.fifo").lstat().st_mode)


def test_compile_refuses_a_plan_named_like_its_timeline(capsys, tmp_path):
    line = _one_line_error(capsys, "compile", "--model", "encoder-tiny", "-o",
                           str(tmp_path / "plan.png"))
    assert "would be overwritten by its PNG timeline" in line
    assert list(tmp_path.iterdir()) == []


def test_compile_writes_plan_and_timeline_with_the_umask(capsys, tmp_path):
    import os

    old = os.umask(0o027)
    try:
        rc, out, err = _run(capsys, "compile", "--model", "encoder-tiny", "--devices",
                            "asic,cpu:mode=roofline", "-o", str(tmp_path / "p.json"), "--json")
    finally:
        os.umask(old)
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json", "p.png"]
    for name in ("p.json", "p.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640


def test_write_errors_name_the_target_not_the_temporary(tmp_path, monkeypatch):
    import os

    from golden.errors import UserError
    from golden.outputs import write_atomic

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(UserError) as e:
        write_atomic(tmp_path / "x.v", "data")
    assert str(e.value) == f"cannot write {str(tmp_path / 'x.v')!r}: No space left on device"
    assert list(tmp_path.iterdir()) == []  # the temporary is gone


def test_build_output_checked_before_any_tool(capsys, tmp_path):
    f = tmp_path / "not_a_dir"
    f.write_text("x")
    line = _one_line_error(capsys, "build", "gemm", "--board", "ulx3s-85f", "--rows", "2",
                           "--cols", "2", "-o", str(f))
    assert "exists and is not a directory" in line
    line = _one_line_error(capsys, "build", "gemm", "--board", "ulx3s-85f", "--rows", "2",
                           "--cols", "2", "-o", str(tmp_path / "no" / "deeper"))
    assert "does not exist" in line


def test_demo_board_checked_first(capsys):
    line = _one_line_error(capsys, "demo", "--board", "nope")
    assert "nope" in line


# -- quiet output -------------------------------------------------------------------------------

def _fmforge(*argv: str, cwd=None, env=None):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "fmforge", *argv], capture_output=True,
                          text=True, cwd=cwd, timeout=300, env=env)


def test_compile_is_quiet_and_verbose_shows_third_party_output(tmp_path):
    """No "Loading weights" bar or torch FutureWarning on stderr; --verbose brings them back."""
    p = _fmforge("compile", "--devices", "asic,cpu:mode=roofline", "-o",
                 str(tmp_path / "p.json"), "--json")
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert set(json.loads(p.stdout)) >= {"plan", "predicted_latency_s"}
    p = _fmforge("compile", "--model", "encoder-tiny", "--devices", "asic,cpu:mode=roofline",
                 "-o", str(tmp_path / "e.json"), "--json", "--verbose")
    assert p.returncode == 0, p.stderr
    assert "FutureWarning" in p.stderr and "LeafSpec" in p.stderr


def test_quiet_filters_only_the_known_warning():
    import warnings

    from compiler.quiet import quiet_export

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_export():
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning,
                          stacklevel=1)
            warnings.warn("something else", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["something else"]


# -- docs ---------------------------------------------------------------------------------------

def _readme_commands():
    import re
    import shlex
    from pathlib import Path

    text = (Path(__file__).parents[2] / "README.md").read_text()
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("fmforge "):
                argv = [a for a in shlex.split(line)[1:] if not a.startswith("[")
                        and not a.endswith("]")]
                yield argv


def test_every_readme_command_line_parses():
    parser = build_parser()
    seen = []
    for argv in _readme_commands():
        parser.parse_args(argv[:argv.index("&&")] if "&&" in argv else argv)
        seen.append(argv[0])
    assert {"compile", "execute", "verilog", "cosim", "build", "sparsity"} <= set(seen)


def test_devices_print_their_parameters(capsys):
    rc, out, _ = _run(capsys, "devices")
    assert rc == 0
    assert "see the module docstring" not in out
    assert "rows=32, cols=32" in out and "dsps=156" in out


# -- published schema ---------------------------------------------------------------------------

def test_shipped_plan_schema_is_the_generated_one():
    from compiler.plan import PLAN_JSON_SCHEMA_PATH, plan_json_schema

    assert json.loads(PLAN_JSON_SCHEMA_PATH.read_text()) == plan_json_schema(), (
        "regenerate compiler/data/plan.schema.json from compiler.plan.plan_json_schema()")


def test_schema_command_prints_a_schema_other_tools_validate_plans_with(capsys, enc_plan):
    import jsonschema

    rc, out, _ = _run(capsys, "schema", "plan")
    assert rc == 0
    schema = json.loads(out)
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(enc_plan, schema)  # a real plan passes
    bad = copy.deepcopy(enc_plan)
    bad["ops"][0]["seconds"] = -1.0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda p: p["ops"][2].pop("seconds"), "field ops[2].seconds: missing"),
    (lambda p: p["ops"][2].update(colour="red"), "field ops[2].colour: unknown field"),
    (lambda p: p["devices"][0].update(kind=3), "field devices[0].kind: 3 is not one of"),
    (lambda p: p["totals"].update(latency_s="fast"), "field totals.latency_s: 'fast' is not of type"),
])
def test_schema_errors_name_the_field(enc_plan, edit, message):
    from compiler.plan import check_plan
    from compiler.schema import SchemaError

    bad = copy.deepcopy(enc_plan)
    edit(bad)
    with pytest.raises(SchemaError) as e:
        check_plan(bad)
    assert str(e.value).startswith(message)


def _sweep_schema(capsys):
    import jsonschema

    from fmforge.sweep_schema import SWEEP_JSON_SCHEMA_PATH, sweep_json_schema

    assert json.loads(SWEEP_JSON_SCHEMA_PATH.read_text()) == sweep_json_schema(), (
        "regenerate fmforge/data/sweep.schema.json from fmforge.sweep_schema.sweep_json_schema()")
    rc, out, _ = _run(capsys, "schema", "sweep")
    assert rc == 0
    schema = json.loads(out)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


#: spec documents the sweep refuses; the published schema refuses them too (the last two the
#: sweep refuses through the schema: a NaN clock, a non-string name)
BAD_SPECS = [{"grid": {"array": ["8"]}}, {"grid": {"array": "0x8"}}, {"grid": {"dataflow": ["xs"]}},
             {"grid": {"sparse": ["topk"]}}, {"grid": {"colour": [1]}}, {"modle": "minilm"},
             {"accuracy": -1}, {"grid": {"lanes": [0]}}, {"grid": {"objective": "speed"}},
             {"grid": {"keep": ["a"]}}, {"grid": {"devices": [" "]}}, {"cosim_ops": [1]},
             {"cosim_stall": "sometimes"}, {"grid": {"clock_mhz": [-5]}}, {"grid": []},
             {"grid": {"array": []}}, {"grid": {"clock_mhz": float("nan")}}, {"name": 3}]


def test_sweep_spec_schema_agrees_with_the_sweep(capsys):
    import tomllib
    from pathlib import Path

    import jsonschema

    from fmforge.sweep import SweepSpecError, parse_spec

    schema = _sweep_schema(capsys)
    example = tomllib.loads(Path("examples/sweep_minilm.toml").read_text())
    jsonschema.validate(example, schema)
    good = [example, {}, {"grid": {"array": "16X16", "sparse": [" Sanger:threshold=0.02",
                                                               "none"], "keep": [None, 0.5],
                                   "clock_mhz": [None, 125.0], "devices": [None, "asic,cpu"]},
                          "devices": "asic:rows={rows}:cols={cols},cpu", "cosim_ops": "all"}]
    for doc in good:
        jsonschema.validate(doc, schema)
        parse_spec(doc)
    validator = jsonschema.Draft202012Validator(schema)
    for doc in BAD_SPECS:
        with pytest.raises(SweepSpecError, match=r"^sweep spec <spec>: "):
            parse_spec(doc)
        nan = doc.get("grid", {}).get("clock_mhz") if isinstance(doc.get("grid"), dict) else None
        if not (isinstance(nan, float) and nan != nan):  # NaN: refused before jsonschema runs
            assert not validator.is_valid(doc), doc


def test_non_utf8_inputs_are_one_line_errors(capsys, tmp_path, enc_plan):
    spec = tmp_path / "s.toml"
    spec.write_bytes(b'name = "x\xff"\n')
    assert "not UTF-8 text" in _one_line_error(capsys, "sweep", str(spec))
    sents = tmp_path / "s.txt"
    sents.write_bytes(b"hello \xfe world\n")
    from compiler.models import load_sentences
    from golden.errors import UserError
    with pytest.raises(UserError, match="s.txt is not UTF-8 text"):
        load_sentences(sents)


# -- interrupts -----------------------------------------------------------------------------------

def _wait_for(cond, timeout=60.0):
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.1)
    return False


def test_sigterm_during_compile_leaves_nothing(tmp_path):
    import signal
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom fmforge.cli import main\n"
                          "import compiler.driver as d\n"
                          "real = d.prepare_graph\n"
                          "def slow(*a, **k):\n    print('ready', flush=True)\n"
                          "    time.sleep(30)\n    return real(*a, **k)\n"
                          "d.prepare_graph = slow\nsys.exit(main(sys.argv[1:]))",
                          "compile", "--model", "encoder-tiny", "-o", str(tmp_path / "p.json")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143 and err.strip().splitlines() == ["fmforge: terminated"], err
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_a_tool_run_stops_the_tool_and_removes_its_directory(tmp_path):
    """The build script (nextpnr stand-in: a shell running a long sleep) is stopped with its
    whole process group, and the temporary build directory is removed."""
    import os
    import signal
    import subprocess
    import sys

    script = f'''
import os, sys, tempfile, time
from pathlib import Path
from fmforge.cli import _on_sigterm, Terminated
from boards.build import _run_plan

class Plan:
    script = "build"
    def extract(self, root):
        Path(root, "build.sh").write_text("sleep 120 & echo $! > {tmp_path}/child.pid; wait")

_on_sigterm()
try:
    with tempfile.TemporaryDirectory(prefix="fmforge-build-", dir="{tmp_path}") as tmp:
        print("ready", flush=True)
        _run_plan(Plan(), Path(tmp), dict(os.environ), "top", "ecp5", lambda m: None)
except Terminated:
    sys.exit(143)
'''
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    pid_file = tmp_path / "child.pid"
    assert _wait_for(lambda: pid_file.exists() and pid_file.read_text().strip())
    child = int(pid_file.read_text())
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 143

    def gone():
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        return False

    assert _wait_for(gone, 10), "the tool process outlived the build"
    assert [x.name for x in tmp_path.iterdir()] == ["child.pid"]  # build directory removed


def _alive(pids):
    import psutil

    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def _interrupt(argv, patch, sig, env, wait_for="ready", stream="stdout"):
    """Run ``fmforge argv`` in a child with ``patch`` (Python source) applied first; send
    ``sig`` when ``wait_for`` appears on ``stream``; returns (status, stderr, descendants)."""
    import subprocess
    import sys

    import psutil

    # SIGINT as in a terminal, even when the suite itself runs as a background job (whose
    # children inherit SIGINT ignored)
    script = ("import signal, sys\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
              f"{patch}\nfrom fmforge.cli import main\nsys.exit(main(sys.argv[1:]))")
    p = subprocess.Popen([sys.executable, "-c", script, *argv], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    pipe = p.stdout if stream == "stdout" else p.stderr
    while True:
        line = pipe.readline()
        assert line, f"{wait_for!r} never came: {p.communicate()}"
        if wait_for in line:
            break
    kids = [c.pid for c in psutil.Process(p.pid).children(recursive=True)]
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    return p.returncode, err, kids


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupted_cosim_leaves_no_directory_and_a_rerun_succeeds(tmp_path, sig):
    """Verilator co-simulation (the cocotb run stood in by a sleep): its temporary directory
    goes; then a real run (Amaranth) interrupted mid-simulation, and a rerun that passes."""
    import os
    import signal

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp))
    status = {"SIGINT": (130, "fmforge: interrupted"), "SIGTERM": (143, "fmforge: terminated")}
    gemm = ["cosim", "gemm", "--rows", "2", "--cols", "2", "--m", "4", "--k", "4", "--n", "4"]
    stand_in = ("import time, sim.cosim as c\n"
                "c.gemm_build = lambda *a, **k: None\n"
                "def run(*a, **k):\n    print('ready', flush=True)\n    time.sleep(60)\n"
                "c.run_cocotb = run")
    rc, err, _ = _interrupt(gemm, stand_in, getattr(signal, sig), env)
    assert (rc, err.strip().splitlines()) == (status[sig][0], [status[sig][1]]), err
    assert list(tmp.iterdir()) == []
    slow = ("import sim.pysim as s\nreal = s.run_gemm_pysim\n"
            "def run(*a, **k):\n    print('ready', flush=True)\n    return real(*a, **k)\n"
            "s.run_gemm_pysim = run")
    rc, err, _ = _interrupt([*gemm, "--simulator", "amaranth"], slow, getattr(signal, sig), env)
    assert (rc, err.strip().splitlines()) == (status[sig][0], [status[sig][1]]), err
    assert list(tmp.iterdir()) == []
    # the signal landing mid-elaboration: the half-built modules must not warn on the way out
    mid = ("import time, hw.gemm as g\nfrom amaranth.hdl import Module\n"
           "def elaborate(self, platform):\n    m = Module()\n"
           "    print('ready', flush=True)\n    time.sleep(60)\n"
           "g.GemmEngine.elaborate = elaborate")
    rc, err, _ = _interrupt([*gemm, "--simulator", "amaranth"], mid, getattr(signal, sig), env)
    assert (rc, err.strip().splitlines()) == (status[sig][0], [status[sig][1]]), err
    done = _fmforge(*gemm, "--simulator", "amaranth", "--json", cwd=tmp_path)
    assert done.returncode == 0 and json.loads(done.stdout)["ok"], done.stderr


SWEEP_SPEC = """name = "tiny"
model = "encoder-tiny"
devices = "asic:rows={rows}:cols={cols},cpu:mode=roofline"
[grid]
array = ["4x4", "8x8"]
"""


@pytest.mark.parametrize(("sig", "when"), [("SIGTERM", "cluster start"),
                                           ("SIGINT", "first result")])
def test_interrupted_sweep_leaves_nothing_and_a_rerun_succeeds(tmp_path, sig, when):
    """No worker process, no output directory, no half-written cache entry, no worker
    directory or its lock in Dask's scratch space; the rerun writes every output."""
    import os
    import signal

    tmp, cache = tmp_path / "tmp", tmp_path / "cache"
    tmp.mkdir()
    spec = tmp_path / "spec.toml"
    spec.write_text(SWEEP_SPEC)
    env = dict(os.environ, TMPDIR=str(tmp), FMFORGE_CACHE=str(cache))
    argv = ["sweep", str(spec), "--workers", "1", "-o", str(tmp_path / "out")]
    if when == "cluster start":  # the signal lands inside LocalCluster's start
        patch = ("import distributed\nReal = distributed.LocalCluster\n"
                 "class Slow(Real):\n    def __init__(self, *a, **k):\n"
                 "        print('ready', flush=True)\n        super().__init__(*a, **k)\n"
                 "distributed.LocalCluster = Slow")
        rc, err, kids = _interrupt(argv, patch, getattr(signal, sig), env)
    else:
        rc, err, kids = _interrupt(argv, "", getattr(signal, sig), env, wait_for="1/2",
                                   stream="stderr")
    want = {"SIGINT": (130, ["fmforge: interrupted"]), "SIGTERM": (143, ["fmforge: terminated"])}
    assert (rc, err.strip().splitlines()[-1:]) == want[sig], err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err  # + progress
    assert _wait_for(lambda: not _alive(kids), 20), "a worker process outlived the sweep"
    assert not (tmp_path / "out").exists()
    left = [p.name for p in cache.rglob("*") if p.is_file()] if cache.exists() else []
    assert all(not n.startswith(".") for n in left), left  # no temporary cache files
    assert len({n.split(".")[0] for n in left}) * 2 == len(left)  # record + plan per point
    scratch = tmp / "dask-scratch-space"
    stale = [p.name for p in scratch.iterdir()] if scratch.exists() else []
    assert set(stale) <= {"global.lock", "purge.lock"}, stale
    done = _fmforge(*argv, "--json", cwd=tmp_path, env=env)
    assert done.returncode == 0 and json.loads(done.stdout)["points"] == 2, done.stderr
    assert (tmp_path / "out" / "results.json").is_file()
