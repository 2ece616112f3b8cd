"""``CoreSpec``: the registry entry of the fmforge core (:class:`hw.core.Core`).

The core runs programs of the ISA in docs/isa.md; its parameters are those of
:class:`hw.core_model.CoreConfig` plus the GEMM engine's buffer limits. Its cycle model is
:func:`hw.core_model.program_timing` (a program, not a shape: :meth:`CoreSpec.cycles` takes the
instructions); its golden reference is :func:`golden.core.run_program`.

Resources are estimated, not measured (no build of the whole core yet): the GEMM engine with its
requantizer as :class:`hw.gemm.GemmSpec` reports it, plus one lane each of the softmax, layer
norm and GELU units from their measured builds, plus the scratchpad and instruction memory.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from golden.core import INSTR_BYTES
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

    def resources(self, family: str) -> dict[str, Any]:
        gemm = GemmSpec(rows=self.rows, cols=self.cols, dataflow=self.dataflow,
                        max_m=self.max_m, max_k=self.max_k, max_n=self.max_n,
                        requant=True).resources(family)
        sfu = [SoftmaxSpec(lanes=1, max_length=512, scale=0.01).resources(family),
               LayerNormSpec(lanes=1, n=384, in_shift=0, eps_int=1, g_shift=8,
                             gamma_int=(1,) * 384, beta_int=(0,) * 384).resources(family),
               GeluSpec(lanes=1, in_scale=0.1, out_scale=0.1).resources(family)]
        out = {k: gemm[k] + sum(int(s[k]) for s in sfu) for k in ("dsps", "luts", "ffs")}
        out["buffer_bits"] = (gemm["buffer_bits"] + sum(int(s["buffer_bits"]) for s in sfu)
                              + 8 * self.sp_bytes + 8 * INSTR_BYTES * self.imem_instrs)
        out["estimated"] = True
        out["basis"] = ("sum of the GEMM engine (GemmSpec), one lane each of softmax, layer norm "
                        "and GELU (their measured builds), scratchpad and instruction memory; "
                        "an underestimate: the first real build of a small SoC (4x4 core, 256 B "
                        "scratchpad, buffers of 8) placed at 58,070 LUTs and 99 DSPs on ECP5-85F "
                        "(31.2 MHz after placement, not routed) against 7,672 LUTs and 56 DSPs "
                        "predicted: the multi-ported scratchpad and control are not yet counted")
        return out
