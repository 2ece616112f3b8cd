"""Running ``imc`` linears in the executor: the golden crossbar model, programmed once per op.

:class:`ImcRun` holds what a run of a plan on crossbars needs beyond the plan: the device
non-idealities (:class:`golden.imc.CrossbarNoise`, ideal by default), a seed, and optionally
overrides of the device's fault mitigations (``spare_cols`` spare columns per crossbar,
``fault_aware`` re-encoding of the differential pairs around stuck cells; default: the device's).
Each op's weights are programmed once (:func:`golden.imc.program`, seeded by the run seed and
the op's name, so a draw does not depend on which other ops are on crossbars) and reused for
every input; every call (the tokens of one input) draws fresh read noise, seeded by the op's name,
the run seed, the input's index (:meth:`ImcRun.begin_input`) and the call's count within that
input. The numbers are therefore the same whatever order the inputs run in, and whichever
process runs them (``compiler.execute.execute_plan(jobs=...)``).

The mapping comes from the plan's device parameters (:func:`crossbar_config`): plans written
before the noise-robust mapping (no ``signed_inputs`` / ``fault_aware`` keys) run as they were
compiled, with offset-binary inputs. Why the robust mapping is the default, and what each part
costs, is in :mod:`golden.imc` and :mod:`compiler.targets.imc`.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import torch

from golden.imc import CrossbarConfig, CrossbarNoise, Programmed, crossbar_linear, program

__all__ = ["ImcRun", "crossbar_config", "fault_noise", "DRIFT_NU", "DRIFT_NU_SIGMA"]

#: drift exponent assumed for the ReRAM cells (mean, spread): a PCM-like power law scaled down,
#: since filamentary ReRAM relaxes far less than PCM drifts (an assumption, not a fit)
DRIFT_NU, DRIFT_NU_SIGMA = 0.02, 0.01


def fault_noise(base: CrossbarNoise, stuck_rate: float = 0.0, drift_s: float = 0.0) -> CrossbarNoise:
    """``base`` plus stuck cells at ``stuck_rate`` (split evenly between stuck-on and stuck-off)
    and conductance drift ``drift_s`` seconds after programming (:data:`DRIFT_NU`, compensated)."""
    kw: dict[str, Any] = {"stuck_on": stuck_rate / 2, "stuck_off": stuck_rate / 2}
    if drift_s:
        kw.update(drift_t=drift_s, drift_nu=DRIFT_NU, drift_nu_sigma=DRIFT_NU_SIGMA)
    return base.with_(**kw)


def crossbar_config(params: dict[str, Any], spare_cols: int | None = None,
                    fault_aware: bool | None = None) -> CrossbarConfig:
    """The crossbar geometry and mapping of an ``imc`` device's plan parameters (``spare_cols``
    and ``fault_aware`` override the device's when given)."""
    diff = bool(params.get("differential", 0))
    return CrossbarConfig(rows=int(params["xbar"]), cols=int(params["xbar"]),
                          cell_bits=int(params["cell_bits"]), dac_bits=int(params["dac_bits"]),
                          adc_bits=int(params["adc_bits"]),
                          spare_cols=int(params.get("spare_cols", 0) if spare_cols is None
                                         else spare_cols),
                          differential=diff,
                          signed_inputs=bool(params.get("signed_inputs", 0)),
                          fault_aware=diff and bool(params.get("fault_aware", 0) if fault_aware is None
                                                    else fault_aware))


@dataclasses.dataclass
class ImcRun:
    """Non-idealities, seed and programmed weights of one executor run (module docstring)."""

    noise: CrossbarNoise = dataclasses.field(default_factory=CrossbarNoise)
    seed: int = 0
    spare_cols: int | None = None
    fault_aware: bool | None = None
    _progs: dict[str, Programmed] = dataclasses.field(default_factory=dict, repr=False)
    _calls: dict[str, int] = dataclasses.field(default_factory=dict, repr=False)
    _input: int = dataclasses.field(default=0, repr=False)

    def begin_input(self, index: int) -> None:
        """The calls that follow belong to input ``index``: their read noise is drawn from
        ``(op, seed, index, call within the input)`` (without it: input 0, calls counted on)."""
        self._input = int(index)
        self._calls.clear()

    def programmed(self, name: str, wq: torch.Tensor, params: dict[str, Any]) -> Programmed:
        """Op ``name``'s weights on crossbars (programmed on first use)."""
        p = self._progs.get(name)
        if p is None:
            op_seed = (self.seed * 2654435761 + zlib.crc32(name.encode())) % 2**62
            cfg = crossbar_config(params, self.spare_cols, self.fault_aware)
            p = program(wq, cfg, self.noise, op_seed)
            self._progs[name] = p
        return p

    def linear(self, name: str, xq: torch.Tensor, wq: torch.Tensor, bias: torch.Tensor | None,
               mult: torch.Tensor | None, shift: torch.Tensor | None,
               params: dict[str, Any]) -> torch.Tensor:
        """``requant(xq @ wq + bias)`` of op ``name`` on its crossbars (int64 ``[M, N]``)."""
        prog = self.programmed(name, wq, params)
        n = self._calls.get(name, 0)
        self._calls[name] = n + 1
        read_seed = (zlib.crc32(name.encode()) * 1000003 + self.seed * 7919 + n * 104729
                     + self._input * 15485863) % 2**62
        return crossbar_linear(xq, prog, bias, mult, shift, read_seed=read_seed)

    def stats(self) -> dict[str, int]:
        """Programmed ops, stuck cells left in use, columns moved onto spares, weights given a
        fault-aware encoding and weights no encoding could represent exactly."""
        progs = self._progs.values()
        return {"ops": len(self._progs),
                "faulty_cells": sum(p.faulty_cells for p in progs),
                "remapped_columns": sum(p.remapped for p in progs),
                "reencoded_weights": sum(p.reencoded for p in progs),
                "residual_weights": sum(p.residual for p in progs)}
