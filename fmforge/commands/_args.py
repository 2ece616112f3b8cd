"""Argument helpers shared by the CLI command modules.

Numeric options take a bounded type (:func:`int_range`, :func:`float_range`): a value outside
its range is a one-line usage error that names the value and the range, and
:func:`annotate_ranges` appends every range to the option's ``--help`` text.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

__all__ = ["Bounded", "int_range", "float_range", "positive_int", "annotate_ranges", "add_verbose", "add_json",
           "write_atomic", "check_output_file", "check_output_dir", "SEED", "SEQ_LEN", "MAX_THREADS"]


class Bounded:
    """An argparse ``type``: an integer or a finite float in ``lo..hi`` (both included)."""

    def __init__(self, kind: type, lo: float, hi: float) -> None:
        self.kind, self.lo, self.hi = kind, lo, hi
        self.__name__ = "integer" if kind is int else "number"  # argparse names the type by it

    @property
    def range_text(self) -> str:
        return f"{self.lo:g}..{self.hi:g}" if self.kind is float else f"{self.lo}..{self.hi}"

    def __call__(self, text: str) -> int | float:
        what = "an integer" if self.kind is int else "a number"
        try:
            v = self.kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(
                f"expected {what} in {self.range_text}, not {text!r}") from None
        if isinstance(v, float) and not math.isfinite(v) or not self.lo <= v <= self.hi:
            raise argparse.ArgumentTypeError(f"{text} is out of range: expected {what} in "
                                             f"{self.range_text}")
        return v

    def __repr__(self) -> str:
        return f"{self.__name__} in {self.range_text}"


def int_range(lo: int, hi: int) -> Bounded:
    """argparse type: an integer in ``lo..hi``."""
    return Bounded(int, lo, hi)


def float_range(lo: float, hi: float) -> Bounded:
    """argparse type: a finite number in ``lo..hi``."""
    return Bounded(float, lo, hi)


#: seeds: any 32-bit unsigned value
SEED = int_range(0, 2**32 - 1)
#: model sequence lengths: compiler.frontend.MAX_SEQ_LEN (the plan schema's cap; repeated here
#: so the CLI parser needs no torch import, a test checks they agree)
SEQ_LEN = int_range(1, 512)
#: torch CPU threads: at most four per core, never more than 256
MAX_THREADS = max(1, min(256, 4 * (os.cpu_count() or 1)))


def positive_int(text: str) -> int:
    """argparse type: a positive integer, with a one-line error otherwise."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {v}")
    return v


def annotate_ranges(parser: argparse.ArgumentParser) -> None:
    """Append ``[allowed lo..hi]`` to the help of every bounded option of ``parser`` and of
    its subcommands (recursively)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                annotate_ranges(sub)
        elif isinstance(action.type, Bounded) and action.help is not argparse.SUPPRESS:
            note = f"[allowed {action.type.range_text}]"
            if note not in (action.help or ""):
                action.help = f"{action.help} {note}" if action.help else note


def add_verbose(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and every subcommand parser a ``--verbose`` flag (third-party warnings,
    progress bars and logs shown; see :mod:`compiler.quiet`). Absent means not verbose."""
    if "--verbose" not in parser._option_string_actions:
        parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                            help="also show third-party warnings, progress bars and logs")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                add_verbose(sub)


def add_json(parser: argparse.ArgumentParser) -> None:
    """Add the common ``--json`` flag."""
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a report")


def check_output_file(path: str | Path, what: str = "output") -> Path:
    """Refuse (one-line error) an output path that is not a new or regular file in an existing
    directory; call before any work. See :func:`golden.outputs.check_output_file`."""
    from golden.outputs import check_output_file as check

    return check(path, what)


def check_output_dir(path: str | Path, what: str = "output directory") -> Path:
    """Refuse an output directory that exists as something else or whose parent is missing."""
    from golden.outputs import check_output_dir as check

    return check(path, what)


def write_atomic(path: str | Path, text: str | bytes) -> Path:
    """Write ``text`` to ``path`` atomically with the user's umask (see
    :func:`golden.outputs.write_atomic`)."""
    from golden.outputs import write_atomic as write

    return write(path, text)
