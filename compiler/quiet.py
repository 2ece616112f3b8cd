"""Known third-party noise, silenced where it arises (and shown again with ``--verbose``).

The command line's normal output is fmforge's own: these context managers wrap the few calls
that make third-party libraries print, and filter only what those calls are known to print:

* :func:`quiet_export`: torch.export's ``FutureWarning`` that ``isinstance(treespec, LeafSpec)``
  is deprecated (raised inside torch's own pytree code, nothing we can fix) and torch's log
  records below ERROR (the dumps torch.export/dynamo write while tracing);
* :func:`quiet_transformers`: the transformers "Loading weights" progress bar and its
  info/warning log lines (for example the tokenizer's note about long inputs).

Verbose mode is the standard ``logging`` level of the ``fmforge`` logger: DEBUG (what
``fmforge --verbose`` sets) turns every filter here off.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["LOGGER", "verbose", "quiet_export", "quiet_transformers"]

#: the logger whose DEBUG level means "show third-party output too"
LOGGER = "fmforge"

#: torch.export's deprecation warning from inside torch (torch 2.13), matched exactly
_LEAFSPEC = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


def verbose() -> bool:
    """True when the ``fmforge`` logger is at DEBUG (``--verbose``)."""
    return logging.getLogger(LOGGER).isEnabledFor(logging.DEBUG)


@contextmanager
def _logger_at_least(name: str, level: int) -> Iterator[None]:
    log = logging.getLogger(name)
    old = log.level
    if log.getEffectiveLevel() < level:
        log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(old)


@contextmanager
def quiet_export() -> Iterator[None]:
    """Around torch.export: its known FutureWarning and torch log records below ERROR."""
    if verbose():
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_LEAFSPEC, category=FutureWarning)
        with _logger_at_least("torch", logging.ERROR):
            yield


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Around transformers calls: no progress bars, log records below ERROR only."""
    if verbose():
        yield
        return
    from transformers.utils import logging as tlog

    bars, level = tlog.is_progress_bar_enabled(), tlog.get_verbosity()
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()
    try:
        yield
    finally:
        tlog.set_verbosity(level)
        if bars:
            tlog.enable_progress_bar()
