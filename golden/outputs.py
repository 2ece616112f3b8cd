"""Writing output files safely: checked before any work, written atomically, with the umask.

Every package that writes a user-named file goes through here (it lives in ``golden/``, the
bottom layer, so that ``compiler/`` and the command line share it). :func:`check_output_file`
refuses, before minutes of work, an output path that is a directory, a symlink, a device node,
a FIFO or a socket, or whose directory does not exist. :func:`write_atomic` writes to a hidden
temporary file in the same directory and renames it over the target, so a reader never sees a
half-written file; the file gets the mode a plain ``open()`` would give (``0o666`` less the
umask), and a failure is reported against the target path, never the temporary name.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from golden.errors import UserError, UserFileNotFoundError, UserValueError

__all__ = ["check_output_file", "check_output_dir", "write_atomic", "umask_mode"]


def umask_mode(base: int = 0o666) -> int:
    """``base`` less the process umask (what ``open()``/``mkdir()`` would create)."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_output_file(path: str | os.PathLike[str], what: str = "output") -> Path:
    """``path`` as a Path if it may be written: absent, or an existing regular file (not a
    symlink), in an existing directory; else :class:`UserValueError` (one line)."""
    p = Path(path)
    if str(path) == "" or p.name in ("", ".", ".."):
        raise UserValueError(f"{what} {str(path)!r} is not a file name")
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise UserValueError(f"{what} {str(p)!r} cannot be used: {e.strerror}") from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise UserValueError(f"{what} {str(p)!r} is a symbolic link; give the real file "
                                 "(fmforge replaces outputs, it does not write through links)")
        if not stat.S_ISREG(st.st_mode):
            raise UserValueError(f"{what} {str(p)!r} is {_kind(st.st_mode)}; give a regular "
                                 "file name")
    parent = p.parent
    if not parent.is_dir():
        raise UserFileNotFoundError(f"output directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserValueError(f"output directory {str(parent)!r} is not writable")
    return p


def check_output_dir(path: str | os.PathLike[str], what: str = "output directory") -> Path:
    """``path`` as a Path if it may be used as an output directory: an existing directory, or
    absent with an existing parent; else :class:`UserValueError`."""
    p = Path(path)
    if p.is_symlink() and not p.is_dir():
        raise UserValueError(f"{what} {str(p)!r} is a dangling symbolic link")
    if p.exists():
        if not p.is_dir():
            raise UserValueError(f"{what} {str(p)!r} exists and is not a directory")
        if not os.access(p, os.W_OK | os.X_OK):
            raise UserValueError(f"{what} {str(p)!r} is not writable")
    elif not p.parent.is_dir():
        raise UserFileNotFoundError(f"{what} {str(p)!r}: its parent {str(p.parent)!r} does not exist")
    return p


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` through a temporary file in the same
    directory, then rename it into place; mode ``0o666`` less the umask. Checks ``path`` with
    :func:`check_output_file` first. Errors name ``path``; the temporary file never survives."""
    p = check_output_file(path)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.chmod(tmp, umask_mode())
        os.replace(tmp, p)
        tmp = None
    except OSError as e:
        raise UserError(f"cannot write {str(p)!r}: {e.strerror or e}") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return p
