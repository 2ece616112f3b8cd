"""Simulator-independent stream helpers: stall modes, word packing, scoreboard.

A *stall mode* says who inserts bubbles into a valid/ready stream:

``none``          the source offers a word every cycle and the sink is always ready;
``idle``          the source randomly leaves cycles idle (valid low);
``backpressure``  the sink randomly refuses words (ready low);
``both``          both at once.

Randomness is seeded (``random.Random(seed)``) so a failing run reproduces from its seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from golden.errors import UserValueError

__all__ = [
    "STALL_MODES",
    "IDLE_PROBABILITY",
    "BACKPRESSURE_PROBABILITY",
    "StallPattern",
    "stall_pattern",
    "pack_lanes",
    "unpack_lanes",
    "Scoreboard",
]

STALL_MODES = ("none", "idle", "backpressure", "both")
IDLE_PROBABILITY = 0.3
BACKPRESSURE_PROBABILITY = 0.3


@dataclass
class StallPattern:
    """Seeded source/sink stall generators for one stall mode."""

    mode: str
    seed: int
    idle_p: float = 0.0
    backpressure_p: float = 0.0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def source_idle(self) -> bool:
        """True if the source should leave this cycle idle."""
        return self.idle_p > 0 and self._rng.random() < self.idle_p

    def sink_ready(self) -> bool:
        """True if the sink accepts a word this cycle."""
        return not (self.backpressure_p > 0 and self._rng.random() < self.backpressure_p)

    def idle_run(self) -> int:
        """Number of idle cycles before the next word (geometric)."""
        n = 0
        while self.source_idle():
            n += 1
        return n

    def fork(self, salt: int) -> StallPattern:
        """An independent pattern of the same mode (one per stream)."""
        return StallPattern(self.mode, self.seed * 1000003 + salt, self.idle_p, self.backpressure_p)


def stall_pattern(mode: str, seed: int) -> StallPattern:
    """The :class:`StallPattern` for ``mode`` (one of :data:`STALL_MODES`)."""
    if mode not in STALL_MODES:
        raise UserValueError(f"stall mode must be one of {', '.join(STALL_MODES)}, not {mode!r}")
    idle = IDLE_PROBABILITY if mode in ("idle", "both") else 0.0
    bp = BACKPRESSURE_PROBABILITY if mode in ("backpressure", "both") else 0.0
    return StallPattern(mode, seed, idle, bp)


def pack_lanes(values: Iterable[int], width: int) -> int:
    """Pack integers (two's complement, ``width`` bits each) into one word, lane 0 lowest."""
    word = 0
    mask = (1 << width) - 1
    for i, v in enumerate(values):
        word |= (int(v) & mask) << (i * width)
    return word


def unpack_lanes(word: int, width: int, count: int, signed: bool = True) -> list[int]:
    """Inverse of :func:`pack_lanes`."""
    mask = (1 << width) - 1
    half = 1 << (width - 1)
    out = []
    for i in range(count):
        v = (word >> (i * width)) & mask
        if signed and v >= half:
            v -= 1 << width
        out.append(v)
    return out


class Scoreboard:
    """Compares a received sequence with the expected one, in order, and checks nothing is left.

    ``expect()`` queues expected items; ``receive()`` checks one received item against the head
    of the queue; ``check_done()`` raises if items are still expected. Mismatches are collected
    (with their index) rather than raised at once, so a report shows the first few.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._expected: list[object] = []
        self._pos = 0
        self.mismatches: list[tuple[int, object, object]] = []
        self.received = 0

    def expect(self, items: Sequence[object]) -> None:
        self._expected.extend(items)

    def receive(self, item: object) -> None:
        if self._pos >= len(self._expected):
            self.mismatches.append((self.received, None, item))
        else:
            exp = self._expected[self._pos]
            if exp != item:
                self.mismatches.append((self.received, exp, item))
            self._pos += 1
        self.received += 1

    @property
    def pending(self) -> int:
        return len(self._expected) - self._pos

    @property
    def ok(self) -> bool:
        return not self.mismatches and self.pending == 0

    def report(self, limit: int = 3) -> str:
        parts = [f"{self.name}: {self.received} received, {self.pending} still expected"]
        for idx, exp, got in self.mismatches[:limit]:
            parts.append(f"item {idx}: expected {exp!r}, got {got!r}")
        if len(self.mismatches) > limit:
            parts.append(f"... {len(self.mismatches) - limit} more mismatches")
        return "; ".join(parts)

    def check_done(self) -> None:
        if not self.ok:
            raise AssertionError(self.report())
