"""The one base class of errors a user causes and can fix.

Every package raises subclasses of :class:`UserError` (or :class:`UserValueError`) for bad input:
an unsupported operator, a unit parameter out of range, a malformed plan, a unit that does not
fit a board, a missing tool. The command line prints those as one line and exits with status
2; any other exception is a bug, shown with its traceback (exit status 1). It lives in
``golden/`` because that is the bottom layer: every other package may import it.
"""

from __future__ import annotations

__all__ = ["UserError", "UserValueError", "UserLookupError", "UserFileNotFoundError"]


class UserError(Exception):
    """An error the user caused and can fix; its message says what, where and what to do."""


class UserValueError(UserError, ValueError):
    """A bad value given by the user (also a ``ValueError``)."""


class UserLookupError(UserError, LookupError):
    """Something the user named does not exist (also a ``LookupError``)."""


class UserFileNotFoundError(UserError, FileNotFoundError):
    """A file or tool the user named or needs is not there (also a ``FileNotFoundError``)."""
