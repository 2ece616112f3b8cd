"""Unit parameter classes: the one description of a hardware unit that everything else reads.

Each unit module in ``hw/`` exports one frozen :class:`UnitSpec` subclass (``GemmSpec`` in
:mod:`hw.gemm`, ``RequantSpec`` in :mod:`hw.requant`, ...). A spec

* holds every elaboration parameter of the unit, validated on construction (a bad value raises
  :class:`UnitParamError` naming the field);
* serializes to JSON (:meth:`UnitSpec.to_json`) and back (:meth:`UnitSpec.from_json`, which
  rejects unknown and missing fields): this is what a plan's ``hardware.units[].params`` holds;
* builds its Amaranth Component (:meth:`UnitSpec.build`) and its Verilog
  (:meth:`UnitSpec.verilog`, deterministic);
* gives its exact cycle model (:meth:`UnitSpec.cycles`);
* gives its resources per FPGA family (:meth:`UnitSpec.resources`), from real builds recorded
  with the command that measured them, or marked ``estimated`` with the rule used;
* names the golden function it matches (``golden``) and the IR ops it computes (``ops``).

:mod:`hw.registry` lists the spec classes in one place.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, ClassVar

from golden.errors import UserValueError

__all__ = ["UnitParamError", "UnitSpec", "Measured"]


class UnitParamError(UserValueError):
    """A unit parameter is missing, unknown or out of range (the message names it)."""


@dataclasses.dataclass(frozen=True)
class Measured:
    """Resources of one real build: what was built, the numbers, and the command."""

    family: str
    config: dict[str, Any]
    luts: int
    ffs: int
    dsps: int
    brams: int
    fmax_mhz: float
    command: str


class UnitSpec:
    """Base of the unit parameter classes (frozen dataclasses; see the module docstring)."""

    #: registry name of the unit kind (``"gemm"``, ``"softmax"``, ...)
    kind: ClassVar[str] = ""
    #: one line describing the unit
    summary: ClassVar[str] = ""
    #: IR ops the unit computes
    ops: ClassVar[tuple[str, ...]] = ()
    #: dotted name of the golden function the unit matches bit for bit
    golden: ClassVar[str] = ""
    #: dotted name of the Amaranth Component the spec builds
    component: ClassVar[str] = ""
    #: real builds of this unit (see :class:`Measured`)
    measured: ClassVar[tuple[Measured, ...]] = ()
    #: True for a unit composed of others that runs programs (the core): per-op unit lookup
    #: (:func:`hw.registry.unit_for_op`) skips it; a core device uses it whole
    composite: ClassVar[bool] = False

    # ---------------------------------------------------------------- JSON

    def to_json(self) -> dict[str, Any]:
        """The parameters as a JSON-ready dict (field name -> value)."""
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_json(cls, doc: Any, where: str = "params") -> UnitSpec:
        """Build a spec from :meth:`to_json` output; errors name ``where`` and the field."""
        if not isinstance(doc, dict):
            raise UnitParamError(f"{where}: {cls.kind} parameters must be an object, not "
                                 f"{type(doc).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(doc) - set(names))
        if unknown:
            raise UnitParamError(f"{where}: unknown {cls.kind} parameter(s) {', '.join(unknown)}; "
                                 f"parameters: {', '.join(names)}")
        kw = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in doc:
                v = doc[f.name]
                kw[f.name] = tuple(v) if isinstance(v, list) else v
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise UnitParamError(f"{where}: missing {cls.kind} parameter {f.name!r}")
        try:
            return cls(**kw)
        except UnitParamError as e:
            raise UnitParamError(f"{where}: {e}") from None

    # ---------------------------------------------------------------- hardware

    def build(self) -> Any:  # pragma: no cover - abstract
        """The Amaranth Component with these parameters."""
        raise NotImplementedError

    def verilog(self, name: str | None = None) -> str:
        """Deterministic Verilog of :meth:`build` (``emit_src=False``)."""
        from amaranth.back import verilog

        return verilog.convert(self.build(), name=name or self.kind, emit_src=False)

    def cycles(self, **shape: int) -> int:  # pragma: no cover - abstract
        """Exact cycles of one job of the given shape (see each unit's cycle model)."""
        raise NotImplementedError

    def reference(self, *operands: Any) -> Any:  # pragma: no cover - abstract
        """The golden function (``golden``) on ``operands`` with these parameters: what the
        unit must output."""
        raise NotImplementedError

    def resources(self, family: str) -> dict[str, Any]:  # pragma: no cover - abstract
        """Resources on an FPGA ``family`` (``ecp5``, ``ice40``) or an ASIC (``asic``).

        Keys: ``dsps`` (hard multipliers; for ``asic`` 18x18-multiplier equivalents),
        ``luts``, ``ffs``, ``buffer_bits`` (on-chip memory), ``basis`` (the build or the rule
        the numbers come from) and ``estimated`` (True unless the very configuration was built).
        """
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Short content hash of the parameters (stable across runs)."""
        import json

        text = json.dumps({"kind": self.kind, **self.to_json()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def check_int(name: str, value: object, lo: int | None = None, hi: int | None = None) -> int:
    """An integer parameter within ``[lo, hi]`` (:class:`UnitParamError` naming it)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise UnitParamError(f"{name} must be an integer, not {value!r}")
    if lo is not None and value < lo:
        raise UnitParamError(f"{name} must be at least {lo}, not {value}")
    if hi is not None and value > hi:
        raise UnitParamError(f"{name} must be at most {hi}, not {value}")
    return value


def scaled_resources(measured: tuple[Measured, ...], family: str, config: dict[str, Any],
                     buffer_bits: int) -> dict[str, Any]:
    """Resources of a P-lane streaming unit (``config["lanes"]``) from its measured builds.

    A build of the same family and the very same ``config`` is reported as measured. Otherwise
    the build of the family (else the ECP5 one) with the nearest lane count is scaled linearly
    in lanes (each lane has its own datapath: multipliers and logic grow per lane), rounded up,
    and marked ``estimated``. ``family`` ``asic`` reads the ECP5 builds (18x18 multipliers).
    """
    fam = [m for m in measured if m.family == family] or [m for m in measured if m.family == "ecp5"]
    if not fam:
        raise UnitParamError(f"no measured build of this unit to estimate {family} resources from")
    lanes = int(config.get("lanes", 1))
    best = min(fam, key=lambda m: abs(m.config.get("lanes", 1) - lanes))
    base = int(best.config.get("lanes", 1))

    def sc(v: int) -> int:
        return -(-int(v) * lanes // base)

    exact = best.family == family and best.config == config
    return {"dsps": sc(best.dsps), "luts": sc(best.luts), "ffs": sc(best.ffs),
            "brams": best.brams if exact else None, "buffer_bits": buffer_bits,
            "estimated": not exact,
            "basis": (f"measured: {best.command}" if exact else
                      f"scaled x{lanes}/{base} lanes from {best.family} {best.config}: {best.command}")}
