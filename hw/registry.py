"""The unit registry: every hardware unit of ``hw/``, in one place.

``UNITS`` maps a unit kind to its parameter class (a :class:`hw.spec.UnitSpec`). Compiler
targets, board builds, simulation benches and the ``verilog`` / ``cosim`` / ``build`` commands
read units from here; adding a unit means one module with its spec class and one entry below.
"""

from __future__ import annotations

from typing import Any

from hw.core_spec import CoreSpec
from hw.gelu import GeluSpec
from hw.gemm import GemmSpec
from hw.imc import ImcSpec
from hw.layernorm import LayerNormSpec
from hw.requant import RequantSpec
from hw.rmsnorm import RmsNormSpec
from hw.silu import SiluSpec
from hw.softmax import SoftmaxSpec
from hw.sparse_a3 import SparseA3Spec
from hw.sparse_elsa import SparseElsaSpec
from hw.sparse_energon import SparseEnergonSpec
from hw.sparse_sanger import SparseSangerSpec
from hw.sparse_spatten import SpattenSpec
from hw.spec import UnitParamError, UnitSpec

__all__ = ["UNITS", "spec_class", "spec_from_json", "unit_for_op"]

#: unit kind -> parameter class
UNITS: dict[str, type[UnitSpec]] = {
    cls.kind: cls for cls in (GemmSpec, RequantSpec, GeluSpec, SoftmaxSpec, LayerNormSpec,
                              RmsNormSpec, SiluSpec, CoreSpec, ImcSpec, SparseA3Spec, SparseElsaSpec,
                              SparseEnergonSpec, SpattenSpec, SparseSangerSpec)
}
# the sparse-attention filters (hw/sparse_*.py) compute ``sparse_filter``: the keep mask of an
# attention op's query-key pairs from its int8 Q and K, not an IR op of their own
# ImcSpec also computes ``linear`` (on crossbars): it comes after GemmSpec, so that per-op lookup
# (unit_for_op, the fpga/asic targets) keeps the GEMM engine; the imc target names it itself


def spec_class(kind: str) -> type[UnitSpec]:
    """The parameter class of unit ``kind`` (:class:`UnitParamError` naming the known ones)."""
    try:
        return UNITS[kind]
    except KeyError:
        raise UnitParamError(f"unknown unit {kind!r}; units: {', '.join(UNITS)}") from None


def spec_from_json(kind: str, params: Any, where: str = "params") -> UnitSpec:
    """Validate and build the spec of unit ``kind`` from its JSON parameters."""
    return spec_class(kind).from_json(params, where)


def unit_for_op(op: str) -> type[UnitSpec] | None:
    """The (single-function) unit class that computes IR op ``op``, or None when hw/ has none;
    composite units (the core) are not looked up per op."""
    for cls in UNITS.values():
        if op in cls.ops and not cls.composite:
            return cls
    return None
