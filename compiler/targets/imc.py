"""IMC target: ReRAM crossbar tiles for static-weight linears (costmodels.md 4.2, ISAAC/PUMA).

Parameters (``imc:xbar=128:cell_bits=2:dac_bits=1:adc_bits=9:crossbars=8192:dynamic=0:
differential=1:signed_inputs=1:fault_aware=1:spare_cols=N``; flags take 0 or 1).

Mapping (``golden.imc``; the defaults are the noise-robust mapping, measured in
``benchmarks/imc_faults.py``): ``differential=1`` stores weights as two magnitude arrays (small
weights leave their high cells off; twice the crossbars); ``signed_inputs=1`` applies inputs in
sign-magnitude, a phase for ``max(x, 0)`` and one for ``max(-x, 0)`` with the pair's code lanes
swapped (needs ``differential``; the macro sees ``2T`` row tiles; twice the conversions per MVM):
with offset-binary inputs ``x + 128`` every row drives the top input bit whatever ``|x|``, so the
array's analog errors scale with 128 instead of ``|x|`` and MiniLM's embedding collapses under
realistic noise; ``fault_aware=1`` re-encodes each differential pair around the stuck cells the
post-programming test reports (needs ``differential``; host work and a re-write of the affected
pairs at deployment, no area); ``spare_cols`` spare bit lines per crossbar onto which that test
remaps the worst columns (the crossbar count is unchanged: spares are extra bit lines of the
same arrays, each with its ADC lane). Old plans without the keys run with offset-binary inputs
and no fault-aware encoding (``compiler.imc_run``).

Numerics: :func:`golden.imc.crossbar_linear` (via :class:`compiler.imc_run.ImcRun`). Timing: the
macro's exact cycle model :func:`hw.imc.imc_cycles` for one row tile and its phases
(``tokens * phases * I + latency`` steps; assumption: the ``T`` row tiles and the
``xbar``-column tiles of an op run as parallel macros, each crossbar with its own ADCs, and an
adder tree of ``ceil(log2 T)`` stages combines the row tiles' partial sums), each step lasting
``t_step = t_xbar + xbar * t_adc`` (the periphery is assumed clocked at the step rate). Energy per
MAC (assumption, ISAAC/PUMA 32 nm constants of shared/reference/costmodels.md 4.2):
``e_mvm_per_crossbar * A / xbar**2``, about 0.84 pJ per MAC for 2-bit cells, a 1-bit DAC, a
9-bit ADC, offset-binary weights and one phase; the default mapping's two arrays per slice and
two phases make it four times that (3.4 pJ).
The plan lists one ``imc`` unit per linear (``hardware.units``, id ``imc.<op>``) with its
``ImcSpec`` params (``tiles`` and ``k`` as the macro sees them: ``2T`` and ``T*xbar + K`` with
two-phase inputs), its instance count and the weight-to-crossbar mapping.
The default ADC has 9 bits: the full scale of a 128-row column with 2-bit cells and 1-bit
inputs is 384, so 9 bits convert it exactly (ISAAC gets by with 8 through its flipped weight
encoding, which this model does not implement); ``adc_bits=8`` shows the quantization error.
A linear ``K x N`` with int8 weights occupies ``ceil(K/xbar) * ceil(N/xbar) * A`` crossbars
(``A = ceil(8/cell_bits)`` bit-sliced cells per weight, twice that differential). Per input row
(token) one MVM: ``t_MVM = phases * (8/dac_bits) * (t_xbar + xbar/adcs_per_xbar * t_adc)`` with
t_xbar = 100 ns, t_adc = 0.78 ns (1.28 GS/s), one ADC per crossbar; all crossbars of an op work in
parallel and the M rows are pipelined one MVM apart. Energy per MVM and crossbar:
``phases * (8/dac_bits) * (E_xbar + xbar*E_ADC + xbar*E_DAC)`` with E_xbar = 30 pJ,
E_ADC = 1.56 pJ at 8 bits (scaled by ``2**(adc_bits-8)``), E_DAC = 0.0004 pJ; plus 0.54 pJ/B of
eDRAM buffer traffic (17.2 pJ per 32 B). Programming a crossbar takes 10.97 us and ~48.7 nJ
(10.97 us at 4.44 mW): for static weights once at deployment (reported, not per inference).
Dynamic matmuls (QK^T, AV) would need a write per inference and are refused unless
``dynamic=1``, which prices those writes. The total crossbars of the ops placed here is limited
by ``crossbars`` (the partitioner enforces it); the default 8192 holds MiniLM's linears in the
default mapping (5184) and is about half an ISAAC chip (168 tiles x 12 IMAs x 8 crossbars of
128 x 128 = 16128). Host link (assumed): 8 GB/s, 2 us, 0.5 W.
"""

from __future__ import annotations

import math
from typing import Any

from compiler.ir import Graph, Node
from compiler.targets.base import LinkSpec, OpCost, Support, Target, parse_params
from golden.errors import UserValueError
from hw.imc import imc_cycles

__all__ = ["ImcTarget", "T_XBAR_S", "T_ADC_S", "E_XBAR_J", "E_ADC8_J", "E_DAC_J",
           "T_WRITE_S", "E_WRITE_J"]

T_XBAR_S = 100e-9
T_ADC_S = 0.78e-9
E_XBAR_J = 30e-12
E_ADC8_J = 1.56e-12
E_DAC_J = 0.05e-12 / 128
E_BUF_J_PER_B = 17.2e-12 / 32
T_WRITE_S = 10.97e-6
E_WRITE_J = 10.97e-6 * 4.44e-3


def _flag(v: str) -> bool:
    if v not in ("0", "1"):
        raise ValueError(v)
    return v == "1"


_flag.__name__ = "0 or 1"
_PARAMS = {"xbar": int, "cell_bits": int, "dac_bits": int, "adc_bits": int, "crossbars": int,
           "dynamic": _flag, "differential": _flag, "signed_inputs": _flag, "fault_aware": _flag,
           "spare_cols": int}


class ImcTarget(Target):
    """ReRAM crossbar accelerator (see the module docstring)."""

    kind = "imc"
    integer = True

    def __init__(self, name: str = "imc", param_text: str = "") -> None:
        super().__init__(name)
        p = parse_params(param_text, _PARAMS, name)
        self.xbar = p.get("xbar", 128)
        self.cell_bits = p.get("cell_bits", 2)
        self.dac_bits = p.get("dac_bits", 1)
        self.adc_bits = p.get("adc_bits", 9)
        self.crossbars = p.get("crossbars", 8192)
        self.dynamic = bool(p.get("dynamic", False))
        self.differential = bool(p.get("differential", True))
        self.signed_inputs = bool(p.get("signed_inputs", self.differential))
        self.fault_aware = bool(p.get("fault_aware", self.differential))
        self.spare_cols = p.get("spare_cols", 0)
        for f in ("signed_inputs", "fault_aware"):
            if getattr(self, f) and not self.differential:
                raise UserValueError(f"device {name!r}: {f}=1 needs differential=1")
        if not 0 <= self.spare_cols <= self.xbar:
            raise UserValueError(f"device {name!r}: spare_cols must be in [0, xbar={self.xbar}], "
                                 f"not {self.spare_cols}")
        for k, v, hi in (("cell_bits", self.cell_bits, 8), ("dac_bits", self.dac_bits, 8),
                         ("adc_bits", self.adc_bits, 16)):
            if v > hi:
                raise UserValueError(f"device {name!r}: {k} must be <= {hi}, not {v}")
        self.link = LinkSpec("on-package 8 GB/s", 8e9, 2e-6, 0.5)
        self.capacity = {"crossbars": self.crossbars}

    @property
    def slices(self) -> int:
        """Crossbars per weight block (8-bit weights over ``cell_bits`` cells)."""
        return math.ceil(8 / self.cell_bits) * (2 if self.differential else 1)

    def crossbar_config(self) -> Any:
        """The :class:`golden.imc.CrossbarConfig` of this device."""
        from golden.imc import CrossbarConfig
        return CrossbarConfig(rows=self.xbar, cols=self.xbar, cell_bits=self.cell_bits,
                              dac_bits=self.dac_bits, adc_bits=self.adc_bits,
                              spare_cols=self.spare_cols, differential=self.differential,
                              signed_inputs=self.signed_inputs, fault_aware=self.fault_aware)

    @property
    def phases(self) -> int:
        """Input phases per MVM: 2 for sign-magnitude inputs, else 1."""
        return 2 if self.signed_inputs else 1

    def macro(self, node: Node) -> Any:
        """The :class:`hw.imc.ImcSpec` of one column tile of linear ``node``."""
        from hw.imc import ImcSpec
        k = int(node.attrs["k"])
        q = node.attrs.get("quant") or {}
        cfg = self.crossbar_config()
        return ImcSpec(rows=self.xbar, cols=self.xbar, tiles=cfg.macro_tiles(k), k=cfg.macro_k(k),
                       cell_bits=self.cell_bits, dac_bits=self.dac_bits, adc_bits=self.adc_bits,
                       adc_shift=self.crossbar_config().adc_shift, differential=self.differential,
                       requant=not (q.get("in_bits") == 16 or q.get("out_bits") == 32))

    @property
    def t_step(self) -> float:
        """Seconds per macro step (one input digit on one row tile)."""
        return T_XBAR_S + self.xbar * T_ADC_S

    @property
    def e_mac(self) -> float:
        """Joules per int8 MAC (a full ``xbar x xbar`` block)."""
        return self.e_mvm_xbar * self.slices / (self.xbar * self.xbar)

    def crossbars_for(self, k: int, n: int) -> int:
        """Crossbars a ``K x N`` weight matrix occupies."""
        return math.ceil(k / self.xbar) * math.ceil(n / self.xbar) * self.slices

    @property
    def t_mvm(self) -> float:
        """Seconds per MVM (8-bit inputs, bit-serial over the DACs)."""
        return self.phases * math.ceil(8 / self.dac_bits) * (T_XBAR_S + self.xbar * T_ADC_S)

    @property
    def e_mvm_xbar(self) -> float:
        """Joules per MVM per crossbar."""
        e_adc = E_ADC8_J * 2.0 ** (self.adc_bits - 8)
        return self.phases * math.ceil(8 / self.dac_bits) * (E_XBAR_J + self.xbar * e_adc
                                                             + self.xbar * E_DAC_J)

    def supports(self, node: Node) -> Support:
        if node.attrs.get("keep_float"):
            return Support(False, f"kept in float: {node.attrs['keep_float']}")
        if node.op == "layout":
            return Support(True)
        if node.op == "linear":
            need = self.crossbars_for(node.attrs["k"], node.attrs["n"])
            if need > self.crossbars:
                return Support(False, f"needs {need} crossbars, {self.name} has {self.crossbars}")
            return Support(True)
        if node.op == "matmul":
            if not self.dynamic:
                return Support(False, "dynamic matmul would rewrite crossbars every inference "
                                      "(enable with dynamic=1)")
            return Support(True)
        return Support(False, f"crossbars run static-weight linears only, not {node.op}")

    def cost(self, node: Node, graph: Graph) -> OpCost:
        if node.op == "layout":  # one buffer cycle (1 ns)
            return OpCost(1e-9, 0.0, None)
        a = node.attrs
        batch = int(a.get("batch", 1))
        xb = self.crossbars_for(a["k"], a["n"])
        mvms = batch * a["m"]
        if (a.get("quant") or {}).get("in_bits") == 16:  # two 8-bit input passes
            mvms *= 2
        if node.op == "linear":  # the macro's exact cycles, one step per cycle
            spec = self.macro(node)
            # row tiles run side by side (each crossbar has its ADCs): one tile's steps, plus an
            # adder tree over the T partial sums
            t_row = math.ceil(int(a["k"]) / self.xbar)
            cyc = imc_cycles(mvms, self.phases, spec.steps, spec.requant) + math.ceil(math.log2(t_row))
            t = cyc * self.t_step
        else:
            cyc = None
            t = mvms * self.t_mvm + self.t_mvm  # pipelined rows + one MVM of drain/shift-add
        e = mvms * xb * self.e_mvm_xbar + batch * (a["m"] * a["k"] + a["m"] * a["n"]) * E_BUF_J_PER_B
        res = {"crossbars": xb} if node.op == "linear" else {}
        if node.op == "matmul":  # write B into crossbars per batch, sequentially
            t += batch * xb * T_WRITE_S
            e += batch * xb * E_WRITE_J
            res = {"crossbars": xb}
        return OpCost(t, e, cyc, res)

    def lowering(self, node: Node) -> dict[str, Any]:
        if node.op == "layout":
            return {"unit": "buffer", "impl": "tile input buffer layout"}
        if node.op == "linear":
            return {"unit": f"imc.{node.name}",
                    "impl": "golden.imc.crossbar_linear (hw.imc.ImcMacro periphery)"}
        return {"unit": "crossbar", "impl": "golden.imc.crossbar_linear (weights written per batch)"}

    def params(self) -> dict[str, Any]:
        return {"xbar": self.xbar, "cell_bits": self.cell_bits, "dac_bits": self.dac_bits,
                "adc_bits": self.adc_bits, "crossbars": self.crossbars, "dynamic": self.dynamic,
                "differential": int(self.differential), "signed_inputs": int(self.signed_inputs),
                "fault_aware": int(self.fault_aware), "spare_cols": self.spare_cols,
                "t_step_s": self.t_step, "e_mac_j": self.e_mac,
                "t_mvm_s": self.t_mvm, "e_mvm_per_crossbar_j": self.e_mvm_xbar,
                "t_write_s": T_WRITE_S, "e_write_j": E_WRITE_J, "link": self.link.to_json()}

    def hardware(self, nodes: list[Node]) -> dict[str, Any]:
        lin = [n for n in nodes if n.op == "linear"]
        used = sum(self.crossbars_for(n.attrs["k"], n.attrs["n"]) for n in lin)
        units = []
        for n in lin:
            spec = self.macro(n)
            k, nn = int(n.attrs["k"]), int(n.attrs["n"])
            u = math.ceil(nn / self.xbar)
            pred = dict(spec.resources("asic"))
            pred.update({
                "instances": u, "crossbars": self.crossbars_for(k, nn),
                "mapping": {"row_tiles": math.ceil(k / self.xbar), "macro_tiles": spec.tiles,
                            "col_tiles": u, "arrays": spec.arrays,
                            "encoding": "differential" if self.differential else "offset binary",
                            "inputs": "sign-magnitude, two phases (phase - swaps the u+/u- "
                                      "code lanes)" if self.signed_inputs else "offset binary",
                            "fault_aware": self.fault_aware,
                            "rule": "crossbar (t, u, a) holds W[t*xbar:(t+1)*xbar, "
                                    "u*xbar:(u+1)*xbar], cell digit a mod S of the stored value "
                                    "(a >= S: the negative magnitudes); timing assumes the T row "
                                    "tiles of column tile u run in parallel", "spare_cols": self.spare_cols},
                "e_mac_j": self.e_mac})
            units.append({"id": f"imc.{n.name}", "unit": spec.kind, "module": spec.component,
                          "params": spec.to_json(), "ops": [n.name], "predicted": pred})
        model = {"name": "ReRAM crossbars (golden.imc; periphery hw.imc.ImcMacro)",
                 "rtl": "hw.imc.ImcMacro",
                 "params": {"xbar": self.xbar, "cell_bits": self.cell_bits,
                            "dac_bits": self.dac_bits, "adc_bits": self.adc_bits,
                            "differential": int(self.differential),
                            "signed_inputs": int(self.signed_inputs),
                            "fault_aware": int(self.fault_aware),
                            "spare_cols": self.spare_cols},
                 "predicted": {"crossbars": used, "program_seconds": used * T_WRITE_S,
                               "program_energy_j": used * E_WRITE_J,
                               "e_mac_j": self.e_mac}} if used else None
        return {"units": units, "model": model, "resources_used": {"crossbars": used},
                "resources_available": {"crossbars": self.crossbars}}
