"""Argument helpers shared by the CLI command modules."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from golden.errors import UserFileNotFoundError

__all__ = ["positive_int", "add_json", "write_atomic"]


def positive_int(text: str) -> int:
    """argparse type: a positive integer, with a one-line error otherwise."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {v}")
    return v


def add_json(parser: argparse.ArgumentParser) -> None:
    """Add the common ``--json`` flag."""
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a report")


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same directory, then rename."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise UserFileNotFoundError(f"output directory {str(path.parent)!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
