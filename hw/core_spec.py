"""``CoreSpec``: the registry entry of the fmforge core (:class:`hw.core.Core`).

The core runs programs of the ISA in docs/isa.md; its parameters are those of
:class:`hw.core_model.CoreConfig` plus the GEMM engine's buffer limits. Its cycle model is
:func:`hw.core_model.program_timing` (a program, not a shape: :meth:`CoreSpec.cycles` takes the
instructions); its golden reference is :func:`golden.core.run_program`.

Resources on ECP5 are :func:`hw.core_area.core_area_ecp5`: multipliers and block RAMs counted
from the core's structure, LUTs and flip-flops fitted to packed builds of the board SoC.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from hw.core_area import core_area_ecp5, core_memories
from hw.core_model import CoreConfig, program_timing
from hw.gelu import GeluSpec
from hw.gemm import GemmSpec
from hw.layernorm import LayerNormSpec
from hw.softmax import SoftmaxSpec
from hw.spec import UnitParamError, UnitSpec, check_int

__all__ = ["CORE_UNIT_OPS", "CoreSpec"]

CORE_UNIT_OPS = ("linear", "attention", "gelu", "add", "layer_norm", "layout")
"""IR ops the core computes (through the program the compiler backend writes)."""


@dataclasses.dataclass(frozen=True)
class CoreSpec(UnitSpec):
    """Parameters of one core (see the module docstring)."""

    rows: int = 8
    cols: int = 8
    dataflow: str = "os"
    latency: int = 8
    bytes_per_cycle: int = 4
    queue_depth: int = 4
    sp_bytes: int = 256 * 1024
    imem_instrs: int = 4096
    max_m: int = 128
    max_k: int = 1536
    max_n: int = 128

    kind: ClassVar[str] = "core"
    summary: ClassVar[str] = ("instruction-driven core: DMA, GEMM engine and special-function "
                              "queues with dependency tokens (docs/isa.md)")
    ops: ClassVar[tuple[str, ...]] = CORE_UNIT_OPS
    golden: ClassVar[str] = "golden.core.run_program"
    component: ClassVar[str] = "hw.core.Core"
    composite: ClassVar[bool] = True

    def __post_init__(self) -> None:
        try:
            self.config()
        except Exception as e:  # CoreError is a UserValueError: name the field as units do
            raise UnitParamError(str(e)) from None
        for name, hi in (("rows", 64), ("cols", 64), ("max_m", 1 << 16), ("max_k", 1 << 16),
                         ("max_n", 1 << 16)):
            check_int(name, getattr(self, name), 1, hi)

    def config(self) -> CoreConfig:
        """The timing/lowering configuration: the same parameters, one list (CoreConfig's)."""
        return CoreConfig(**{f: getattr(self, f) for f in CoreConfig.__dataclass_fields__})

    def build(self) -> Any:
        from hw.core import Core
        return Core(rows=self.rows, cols=self.cols, dataflow=self.dataflow,
                    bytes_per_cycle=self.bytes_per_cycle, queue_depth=self.queue_depth,
                    sp_bytes=self.sp_bytes, imem_instrs=self.imem_instrs, max_m=self.max_m,
                    max_k=self.max_k, max_n=self.max_n)

    def cycles(self, **shape: Any) -> int:
        """Exact cycles of a program: ``cycles(program=[Instr, ...])``."""
        prog = shape.get("program")
        if prog is None:
            raise UnitParamError("core cycles take program=[instructions]")
        return program_timing(prog, self.config()).cycles

    def reference(self, *operands: Any) -> Any:
        """``reference(program, memory)``: :func:`golden.core.run_program` (in place)."""
        from golden.core import run_program
        prog, mem = operands
        return run_program(prog, mem)

    def area_params(self, max_row: int = 512) -> dict[str, Any]:
        """The keyword arguments of :class:`hw.core.Core` this spec builds (and
        :func:`hw.core_area.core_area_ecp5` prices), with the S-queue row limit ``max_row``."""
        return {"rows": self.rows, "cols": self.cols, "dataflow": self.dataflow,
                "bytes_per_cycle": self.bytes_per_cycle, "queue_depth": self.queue_depth,
                "sp_bytes": self.sp_bytes, "imem_instrs": self.imem_instrs, "max_m": self.max_m,
                "max_k": self.max_k, "max_n": self.max_n, "max_row": max_row}

    def resources(self, family: str) -> dict[str, Any]:
        out: dict[str, Any]
        if family == "ecp5":  # counted and fitted from the RTL as built (hw/core_area.py)
            out = dict(core_area_ecp5(**self.area_params()))
            basis = ("DSPs and block RAMs counted from the core's structure (every memory as "
                     "Yosys maps it); LUTs and FFs fitted to packed builds of the board SoC: "
                     "python benchmarks/core_area.py")
        else:
            gemm = GemmSpec(rows=self.rows, cols=self.cols, dataflow=self.dataflow,
                            max_m=self.max_m, max_k=self.max_k, max_n=self.max_n,
                            requant=True).resources(family)
            sfu = [SoftmaxSpec(lanes=1, max_length=512, scale=0.01).resources(family),
                   LayerNormSpec(lanes=1, n=384, in_shift=0, eps_int=1, g_shift=8,
                                 gamma_int=(1,) * 384, beta_int=(0,) * 384).resources(family),
                   GeluSpec(lanes=1, in_scale=0.1, out_scale=0.1).resources(family)]
            out = {k: gemm[k] + sum(int(s[k]) for s in sfu) for k in ("dsps", "luts", "ffs")}
            basis = ("sum of the GEMM engine (GemmSpec) and one lane each of softmax, layer norm "
                     "and GELU; the scratchpad and control are not counted (on ECP5 they are "
                     "most of the core: hw/core_area.py)")
        out["buffer_bits"] = sum(m.width * m.depth for m in core_memories(**self.area_params()))
        out["estimated"] = True
        out["basis"] = basis
        return out
