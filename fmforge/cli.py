"""The ``fmforge`` command line.

Every command prints a human-readable report, or with ``--json`` exactly one JSON object on
stdout. Errors a user can cause (bad parameters, unknown boards, missing tools, malformed
files: :class:`golden.errors.UserError` and its subclasses) print one line
``fmforge: error: ...`` on stderr and exit with status 2, without a traceback; any other
exception is a bug and propagates with its traceback (exit status 1). Commands live in ``fmforge.commands``; each module there exposes
``register(subparsers)`` and sets ``func`` on its parser: ``func(args) -> dict`` returns the
JSON result and may print the human report itself when ``args.json`` is false.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import warnings
from typing import Any

from fmforge import __version__
from fmforge.commands._args import add_verbose, annotate_ranges
from golden.errors import UserError

__all__ = ["main", "build_parser", "one_line", "UserError", "COMMAND_MODULES"]

#: command modules under fmforge.commands, in the order they appear in --help
COMMAND_MODULES = ("demo", "compile", "execute", "run", "devices", "verilog", "cosim", "build", "boards",
                   "sparsity", "sweep", "schema")


#: exception types whose message is shown to the user as a one-line error
USER_ERRORS: tuple[type[BaseException], ...] = (UserError,)


def one_line(text: str) -> str:
    """``text`` on one printable line: line breaks and other control characters escaped."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (subcommand parsers inherit it)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"fmforge: error: {one_line(message)} (see '{self.prog} --help')\n")


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: unwinds like Ctrl-C, so every ``finally`` and cleanup handler runs
    (temporary files and directories removed, child tool processes stopped)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def _on_sigterm() -> Any:
    """Turn SIGTERM into :class:`Terminated` (main thread only); returns the old handler."""
    try:
        return signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        return None


def _interrupted(message: str, status: int) -> int:
    """One line for an interrupt, and nothing else: a design whose elaboration the signal cut
    short would otherwise warn, as its half-built modules are collected, that they went unused."""
    amaranth = sys.modules.get("amaranth.hdl")
    if amaranth is not None:
        warnings.filterwarnings("ignore", category=amaranth.UnusedElaboratable)
    print(message, file=sys.stderr)
    return status


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fmforge",
        description="Design, verify and build transformer accelerators.",
    )
    parser.add_argument("--version", action="version", version=f"fmforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"fmforge.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"fmforge.commands.{name}":
                continue  # command not part of this build
            raise
        mod.register(sub)
    annotate_ranges(parser)
    add_verbose(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    old_term = _on_sigterm()  # before the command modules load: an early signal is one line too
    try:
        return _main(argv)
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


def _main(argv: list[str] | None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except Terminated:
        return _interrupted("fmforge: terminated", 143)
    except KeyboardInterrupt:
        return _interrupted("fmforge: interrupted", 130)
    log = logging.getLogger("fmforge")
    level = log.level
    if getattr(args, "verbose", False):  # compiler.quiet reads this level
        log.setLevel(logging.DEBUG)
    try:
        result = args.func(args)
    except USER_ERRORS as e:
        print(f"fmforge: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except Terminated:
        return _interrupted("fmforge: terminated", 143)
    except KeyboardInterrupt:
        return _interrupted("fmforge: interrupted", 130)
    except BrokenPipeError:  # the reader went away (`fmforge ... | head`): stop quietly
        _silence_stdout()
        return 1
    finally:
        log.setLevel(level)
    if getattr(args, "json", False):
        try:
            print(json.dumps(result, sort_keys=True), flush=True)
        except BrokenPipeError:
            _silence_stdout()
            return 1
    ok = result.get("ok", True) if isinstance(result, dict) else True
    return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
