"""Plan executor: run a plan bit-accurately and compare with the float model.

The graph is rebuilt from the plan's model source (export + canonicalize) and must have the
plan's fingerprint; the quantization scales come from the plan. Each op runs where the plan
placed it:

* cpu / gpu: PyTorch float32 (the ATen op itself; GPU ops run on CUDA when present, else on the
  CPU with the same float semantics);
* fpga / asic ``linear``: activations quantized per tensor, :func:`golden.gemm.gemm_int` with the
  int32 bias and the per-channel requantizer, int8 out; ``matmul``: the same per batch with a
  per-tensor requantizer (a ``linear`` whose weight is computed, ``attrs["transpose_b"]``:
  ``x @ W^T`` with its bias as int32 on the accumulator grid); ``gelu``/``relu``:
  :mod:`golden.gelu`; ``silu``: :mod:`golden.silu`; ``rms_norm``: :mod:`golden.rmsnorm`;
  ``softmax``: :mod:`golden.softmax` (input values at or below the mask
  sentinel, :data:`compiler.passes.quantize.MASK_SENTINEL`, are its mask); ``layer_norm``:
  :mod:`golden.layernorm`; ``layout``: data movement (exact on the int8 grid);
* fpga / asic ``grouped_linear`` (a mixture of experts' expert GEMMs): the router's offsets
  or per-row expert indices (computed on the host) split the rows, and each expert's rows run
  as one GEMM with that expert's int8 weights and requantizer (:func:`_grouped_linear`);
* imc ``linear``: :func:`imc_linear`, the crossbar model (offset-binary weights bit-sliced into
  cells, bit-serial inputs through the DACs, each column's partial sum per crossbar quantized by
  the ADC, shift-add, digital offset correction, bias, requantizer).

Values between ops are float tensors; integer ops quantize their inputs with the calibrated
scale and dequantize their int8 outputs, which is exact whenever producer and consumer share the
scale (they do: both were calibrated on the same tensor). A linear with per-channel output scales
(``quant["out_scales"]``, see :mod:`compiler.passes.quantize`) is dequantized per channel; only
residual adds (float, host) read it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from compiler.frontend import export_graph, load_model
from compiler.interp import float_impl, run_graph
from compiler.ir import Graph, Node
from compiler.passes import Canonicalize, run_passes
from compiler.passes.canonicalize import grouped_offsets, grouped_row_index
from compiler.passes.quantize import (
    expert_rows,
    grouped_qparams,
    grouped_weight,
    linear_qparams,
    linear_weight,
    matmul_qparams,
    quantize_tensor,
    softmax_keep,
)
from compiler.passes.smooth import restore_smoothing
from golden.errors import UserLookupError, UserValueError
from golden.gemm import gemm_int
from golden.requant import INT32_MAX, INT32_MIN

__all__ = ["capture_operands", "execute_plan", "imc_linear", "make_impl", "plan_inputs",
           "rebuild_graph", "split16"]


def imc_linear(xq: torch.Tensor, wq: torch.Tensor, bias: torch.Tensor, mult: torch.Tensor | None,
               shift: torch.Tensor | None, *, xbar: int = 128, cell_bits: int = 2, dac_bits: int = 1,
               adc_bits: int = 9) -> torch.Tensor:
    """Crossbar model of ``requant(xq[M,K] @ wq[K,N] + bias)`` (int8 in, int8 out as int64):
    :func:`golden.imc.crossbar_linear` on ideal ``xbar x xbar`` crossbars (``mult=None``: int32
    out, no requantizer). Offset-binary weights bit-sliced into ``ceil(8/cell_bits)`` cells,
    inputs ``dac_bits`` per step, one ``adc_bits`` ADC per column (exact when its full scale
    ``xbar*(2^dac-1)*(2^cell-1)`` fits, else a power-of-two LSB with round half up), shift-add,
    offset correction, bias and requantizer. Non-idealities: :class:`compiler.imc_run.ImcRun`.
    """
    from golden.imc import CrossbarConfig, crossbar_linear

    cfg = CrossbarConfig(rows=xbar, cols=xbar, cell_bits=cell_bits, dac_bits=dac_bits,
                         adc_bits=adc_bits)
    return crossbar_linear(xq, wq, bias, mult, shift, cfg=cfg)


def rebuild_graph(plan: dict[str, Any]) -> tuple[Graph, Any]:
    """Re-export the plan's model, check the fingerprint, attach the plan's scales."""
    src = plan["model"]["source"]
    lm = load_model(src, plan["model"].get("seq_len"))
    g = export_graph(lm.module, lm.example_inputs, source=lm.name)
    run_passes(g, [Canonicalize()])
    if g.fingerprint() != plan["model"]["graph_fingerprint"]:
        raise UserValueError(f"plan does not match model {src!r}: field model.graph_fingerprint "
                         "differs from the exported graph (recompile the plan)")
    ops = {o["name"]: o for o in plan["ops"]}
    for n in g.nodes:
        o = ops.get(n.name)
        if o is None:
            raise UserValueError(f"plan has no op {n.name!r} (field ops)")
        if o["quant"] is not None:
            n.attrs["quant"] = {"in_scales": list(o["quant"]["in_scales"]),
                                "out_scale": o["quant"]["out_scale"]}
            for k in ("out_scales", "in_bits", "out_bits", "smooth"):
                if o["quant"].get(k):
                    n.attrs["quant"][k] = o["quant"][k]
        if o["sparse_filter"]:
            n.attrs["sparse_filter"] = o["sparse_filter"]
    restore_smoothing(g, plan)  # the plan's folded smoothing, into the rebuilt parameters
    g.properties.add("quantized")
    return g, lm


def _dq(q: torch.Tensor, s: float, shape: Sequence[int]) -> torch.Tensor:
    return (q.to(torch.float64) * s).to(torch.float32).reshape(tuple(shape))


def make_impl(graph: Graph, plan: dict[str, Any], stats: dict[str, int] | None = None,
              capture: dict[str, dict[str, Any]] | None = None, imc: Any = None,
              quantize: bool = True) -> Any:
    """The per-node implementation that follows the plan's placement.

    ``stats`` (optional) accumulates ``kept`` and ``valid`` query-key pairs of sparse attention.
    ``capture`` (optional) receives, per integer accelerator op, the exact integer operands the
    golden unit was given and its integer result (:func:`_record`): what a replay on the RTL
    feeds the op's unit. ``imc`` (optional, a :class:`compiler.imc_run.ImcRun`): crossbar
    non-idealities and seed of the ``imc`` linears (default: ideal crossbars).
    ``quantize=False`` (a test mode, :func:`_unquantized`): every op keeps its placement and
    the executor's reading of its operands, but computes in float64 with no rounding, clamping
    or requantizer, so the result must equal the float model to float precision.
    """
    from compiler.imc_run import ImcRun

    imc = imc if imc is not None else ImcRun()
    devs = {d["name"]: d for d in plan["devices"]}
    place = {o["name"]: devs[o["device"]] for o in plan["ops"]}

    def rec(node: Node, **kw: Any) -> None:
        if capture is not None:
            capture[node.name] = {"op": node.op, **kw}

    def impl(node: Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        dev = place[node.name]
        kind = dev["kind"]
        if node.attrs.get("sparse_filter") and node.op == "attention":
            return _sparse_attention(node, args, kwargs, stats)
        if kind in ("cpu", "gpu") or node.op == "layout":
            return float_impl(node, args, kwargs)
        if not quantize:
            return _unquantized(graph, node, args, kwargs)
        q = node.attrs["quant"]
        shape = node.out[0].shape
        if node.op == "linear":
            ql = linear_qparams(graph, node, host_smooth=True)
            k = node.attrs["k"]
            x = args[node.attrs.get("x_arg", 0)]
            if q.get("in_bits") == 16:
                return _linear16(x, ql, dev, shape, rec=lambda **kw: rec(node, **kw),
                                 imc=lambda v, z: imc.linear(node.name, v, ql.wq, z, None, None,
                                                             dev["params"]))
            xq = ql.quantize_input(x).reshape(-1, k)
            if kind == "imc":
                y = imc.linear(node.name, xq, ql.wq, ql.bias, ql.mult, ql.shift, dev["params"])
            elif q.get("out_bits") == 32:  # engine without requant: int32 out, scaled on the host
                y = gemm_int(xq, ql.wq, ql.bias)
                rec(node, gemms=[(xq, ql.wq, ql.bias, None, None, y)])
                return (y.to(torch.float64) * (ql.in_scale * ql.w_scale)).to(
                    torch.float32).reshape(tuple(shape))
            else:
                y = gemm_int(xq, ql.wq, ql.bias, ql.mult, ql.shift)
                rec(node, gemms=[(xq, ql.wq, ql.bias, ql.mult, ql.shift, y)])
            return ql.dequantize(y).to(torch.float32).reshape(tuple(shape))
        if node.op == "grouped_linear":
            return _grouped_linear(graph, node, args, kwargs,
                                   rec=lambda **kw: rec(node, **kw))
        if node.op == "matmul":
            sa, sb, mult, shift = matmul_qparams(node)
            a, b, bf = _matmul_args(node, args, kwargs)
            bias = None
            if bf is not None:  # int32 on the accumulator's grid s_a * s_b
                bias = torch.clamp(torch.round(bf.detach().to(torch.float64) / (sa * sb)),
                                   INT32_MIN, INT32_MAX).to(torch.int64).reshape(-1)
            batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
            aq = quantize_tensor(a, sa).expand(*batch, *a.shape[-2:]).reshape(-1, *a.shape[-2:])
            bq = quantize_tensor(b, sb).expand(*batch, *b.shape[-2:]).reshape(-1, *b.shape[-2:])
            n = b.shape[-1]
            mv = torch.full((n,), mult, dtype=torch.int64)
            sv = torch.full((n,), shift, dtype=torch.int64)
            ys = [gemm_int(aq[i], bq[i], bias, mv, sv) for i in range(aq.shape[0])]
            rec(node, gemms=[(aq[i], bq[i], bias, mv, sv, ys[i]) for i in range(aq.shape[0])])
            return _dq(torch.stack(ys), float(q["out_scale"]), shape)
        xq = quantize_tensor(args[0], float(q["in_scales"][0]))
        rows = xq.reshape(-1, int(shape[-1])) if len(shape) else xq.reshape(1, -1)
        if node.op == "gelu":
            from golden.gelu import gelu_int, gelu_params
            y = gelu_int(xq, gelu_params(q["in_scales"][0], q["out_scale"]))
            rec(node, x=rows, y=y.reshape(rows.shape))
            return _dq(y, q["out_scale"], shape)
        if node.op == "relu":
            from golden.gelu import relu_int, relu_params
            m, s = relu_params(q["in_scales"][0], q["out_scale"])
            y = relu_int(xq, m, s)
            rec(node, x=rows, y=y.reshape(rows.shape))
            return _dq(y, q["out_scale"], shape)
        if node.op == "softmax":
            from golden.softmax import softmax_int, softmax_params
            dim = int(args[1]) if len(args) > 1 else -1  # the unit works on the last dim
            keep = softmax_keep(args[0]).movedim(dim, -1)  # an additive mask's sentinels
            xl = xq.movedim(dim, -1)
            p = softmax_int(xl, softmax_params(float(q["in_scales"][0])),
                            mask=None if bool(keep.all()) else keep)
            extra = {} if bool(keep.all()) else {"mask": keep.reshape(-1, xl.shape[-1])}
            rec(node, x=xl.reshape(-1, xl.shape[-1]), y=p.reshape(-1, xl.shape[-1]), **extra)
            return _dq(p.movedim(-1, dim), 1 / 256, shape)
        if node.op == "silu":
            from golden.silu import silu_int, silu_params
            y = silu_int(xq, silu_params(q["in_scales"][0], q["out_scale"]))
            rec(node, x=rows, y=y.reshape(rows.shape))
            return _dq(y, q["out_scale"], shape)
        if node.op == "rms_norm":
            from golden.rmsnorm import rmsnorm_int, rmsnorm_params
            n, gamma, eps = _rms_norm_args(args, shape)
            p = rmsnorm_params(n, float(q["in_scales"][0]), gamma, float(q["out_scale"]), eps)
            y = rmsnorm_int(xq.reshape(-1, n), p)
            rec(node, x=xq.reshape(-1, n), y=y)
            return _dq(y, q["out_scale"], shape)
        if node.op == "layer_norm":
            from golden.layernorm import layernorm_int, layernorm_params
            nd, n, gamma, beta, eps = _layer_norm_args(args, shape)
            p = layernorm_params(n, float(q["in_scales"][0]), gamma, beta,
                                 float(q["out_scale"]), eps)
            xr = xq.reshape(*xq.shape[:xq.dim() - nd], n)
            y = layernorm_int(xr, p)
            rec(node, x=xr.reshape(-1, n), y=y.reshape(-1, n))
            return _dq(y, q["out_scale"], shape)
        raise UserValueError(f"op {node.name} ({node.op}) placed on {dev['name']} ({kind}) has no "
                         "integer implementation in the executor")

    return impl


def _matmul_args(node: Node, args: tuple[Any, ...], kwargs: dict[str, Any]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(a, b, bias)`` of a dynamic matmul as the GEMM ``a @ b (+ bias)``: a ``linear`` with a
    computed weight (``attrs["transpose_b"]``) is ``x @ W^T + b``."""
    a, b = args[0], args[1] if len(args) > 1 else args[0]
    if not node.attrs.get("transpose_b"):
        return a, b, None
    bi = node.attrs.get("bias_arg")
    bias = args[bi] if bi is not None and len(args) > bi else None
    if bias is None and bi is not None:
        bias = kwargs.get("bias")
    return a, b.transpose(-1, -2), bias


def _layer_norm_args(args: tuple[Any, ...], shape: Sequence[int]) -> tuple[int, int, Any, Any, float]:
    """``(nd, n, gamma, beta, eps)`` of ``aten.layer_norm``: normalized over the trailing ``nd``
    dims (``args[1]``), flattened into one row of ``n`` values."""
    nd = len(args[1]) if len(args) > 1 else 1
    n = math.prod(int(v) for v in shape[len(shape) - nd:])
    gamma = args[2].reshape(n) if len(args) > 2 and args[2] is not None else 1.0
    beta = args[3].reshape(n) if len(args) > 3 and args[3] is not None else 0.0
    eps = float(args[4]) if len(args) > 4 else 1e-5
    return nd, n, gamma, beta, eps


def _rms_norm_args(args: tuple[Any, ...], shape: Sequence[int]) -> tuple[int, Any, float]:
    """``(n, gamma, eps)`` of ``aten.rms_norm(x, [n], weight, eps)`` (the canonical fused form:
    one trailing dim; no eps means the float32 machine epsilon, as torch does)."""
    n = int(shape[-1])
    gamma = args[2].reshape(n) if len(args) > 2 and args[2] is not None else 1.0
    eps = args[3] if len(args) > 3 and args[3] is not None else torch.finfo(torch.float32).eps
    return n, gamma, float(eps)


def _unquantized(graph: Graph, node: Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """An accelerator op as the executor reads it (the same operands, weights from the same attrs,
    the same axes and mask), in float64 without quantization: the differential test's oracle
    is the float model, so any disagreement is a wrong reading of the op, not rounding."""
    shape = tuple(node.out[0].shape)
    f = torch.float64
    if node.op == "grouped_linear":
        return _grouped_linear(graph, node, args, kwargs, quantize=False)
    if node.op == "linear":
        x = args[node.attrs.get("x_arg", 0)].to(f).reshape(-1, node.attrs["k"])
        y = x @ linear_weight(graph, node).to(f).t()
        if node.attrs.get("bias"):
            y = y + graph.params[node.attrs["bias"]].to(f)
    elif node.op == "matmul":
        a, b, bias = _matmul_args(node, args, kwargs)
        y = torch.matmul(a.to(f), b.to(f))
        if bias is not None:
            y = y + bias.to(f)
    elif node.op == "gelu":
        y = torch.nn.functional.gelu(args[0].to(f), approximate=node.attrs.get("approximate",
                                                                               "none"))
    elif node.op == "relu":
        y = torch.relu(args[0].to(f))
    elif node.op == "silu":
        y = torch.nn.functional.silu(args[0].to(f))
    elif node.op == "rms_norm":
        n, gamma, eps = _rms_norm_args(args, shape)
        x = args[0].to(f)
        g = gamma.to(f) if torch.is_tensor(gamma) else gamma
        y = x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * g
    elif node.op == "softmax":
        dim = int(args[1]) if len(args) > 1 else -1
        x = args[0].to(f)
        y = torch.softmax(torch.where(softmax_keep(x), x, -math.inf), dim).nan_to_num(0.0)
    elif node.op == "layer_norm":
        nd, n, gamma, beta, eps = _layer_norm_args(args, shape)
        xr = args[0].to(f).reshape(*shape[:len(shape) - nd], n)
        mu = xr.mean(-1, keepdim=True)
        var = ((xr - mu) ** 2).mean(-1, keepdim=True)
        g = gamma.to(f) if torch.is_tensor(gamma) else gamma
        b = beta.to(f) if torch.is_tensor(beta) else beta
        y = (xr - mu) / torch.sqrt(var + eps) * g + b
    else:
        raise UserValueError(f"op {node.name} ({node.op}) has no integer implementation in the "
                             "executor")
    return y.to(torch.float32).reshape(shape)


def _grouped_linear(graph: Graph, node: Node, args: tuple[Any, ...], kwargs: dict[str, Any],
                    quantize: bool = True, rec: Any = None) -> torch.Tensor:
    """A mixture of experts' routed GEMMs (``grouped_linear``): the router's offsets split the
    (expert-sorted) input rows, or (a gathered one, transformers' ``batched_mm``) each row's
    expert index picks its expert, and expert ``e``'s rows run through
    :func:`golden.gemm.gemm_int` with that expert's int8 weights and requantizer
    (:func:`compiler.passes.quantize.grouped_qparams`), one engine GEMM per expert that got rows
    (the host gathers them and scatters the results back); rows of no expert are 0.
    ``quantize=False``: the same split in float64 (the differential test's reading)."""
    a = node.attrs
    k, n, experts = int(a["k"]), int(a["n"]), int(a["experts"])
    x = args[0].reshape(-1, k)
    rows = expert_rows(grouped_offsets(node, args, kwargs), experts)
    if any(r < 0 for r in rows) or sum(rows) > x.shape[0]:
        raise UserValueError(f"op {node.name}: expert offsets {rows} do not split its "
                             f"{x.shape[0]} rows")
    index = grouped_row_index(node, args, kwargs, rows)
    shape = tuple(node.out[0].shape)
    if not quantize:
        w = grouped_weight(graph, node).to(torch.float64)
        y = torch.zeros(x.shape[0], n, dtype=torch.float64)
        for e, idx in enumerate(index):
            y[idx] = x[idx].to(torch.float64) @ w[e].t()
        return y.to(torch.float32).reshape(shape)
    qs = grouped_qparams(graph, node)
    xq = quantize_tensor(x, qs[0].in_scale)
    yq = torch.zeros(x.shape[0], n, dtype=torch.int64)
    gemms = []
    for e, idx in enumerate(index):
        if len(idx):
            ql, xe = qs[e], xq[idx]
            ye = gemm_int(xe, ql.wq, ql.bias, ql.mult, ql.shift)
            yq[idx] = ye
            gemms.append((xe, ql.wq, ql.bias, ql.mult, ql.shift, ye))
    if rec is not None:
        rec(gemms=gemms, expert_rows=rows)
    return _dq(yq, qs[0].out_scale, shape)


def split16(x16: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact split of int16 values in [-32640, 32639] into int8 ``(hi, lo)``:
    ``x16 = 256 * hi + lo``, ``lo = ((x16 + 128) mod 256) - 128``."""
    lo = torch.remainder(x16 + 128, 256) - 128
    return (x16 - lo) // 256, lo


def _linear16(x: torch.Tensor, ql: Any, dev: dict[str, Any], shape: Sequence[int],
              rec: Any = None, imc: Any = None) -> torch.Tensor:
    """16-bit-input linear: two int8 passes (high and low bytes), int32 out, exact int64 combine
    and the per-channel scale on the host (see :mod:`compiler.passes.quantize`)."""
    k = ql.wq.shape[0]
    x16 = torch.clamp(torch.round(x.to(torch.float64) / ql.in_scale), -32640, 32639)
    hi, lo = split16(x16.to(torch.int64).reshape(-1, k))
    if dev["kind"] == "imc":  # both bytes through the op's crossbars, int32 out
        zero = torch.zeros_like(ql.bias)
        ah, al = (imc(v, zero) for v in (hi, lo))
    else:
        ah, al = gemm_int(hi, ql.wq, None), gemm_int(lo, ql.wq, None)
        if rec is not None:  # the engine runs both passes as one 2M-row GEMM, int32 out
            rec(gemms=[(torch.cat([hi, lo]), ql.wq, None, None, None, torch.cat([ah, al]))])
    acc = 256 * ah.to(torch.int64) + al.to(torch.int64) + ql.bias
    return (acc.to(torch.float64) * (ql.in_scale * ql.w_scale)).to(torch.float32).reshape(
        tuple(shape))


def _sparse_attention(node: Node, args: tuple[Any, ...], kwargs: dict[str, Any],
                      stats: dict[str, int] | None = None) -> Any:
    """Attention with the op's sparse filter ANDed into its mask (float, on the host)."""
    from compiler.passes.sparsify import attention_masks, sparse_filters
    spec = node.attrs["sparse_filter"]
    fn = sparse_filters().get(spec["name"])
    if fn is None:
        raise UserLookupError(f"op {node.name}: sparse filter {spec['name']!r} is not registered")
    q, k = args[0], args[1]
    shape = (*q.shape[:-1], k.shape[-2])
    allowed, key_mask = attention_masks(q, k, args, kwargs)
    extra = {"layer": int(spec["layer"])} if "layer" in spec else {}
    if spec.get("calibration") is not None:
        extra["calibration"] = spec["calibration"]
    keep = fn(q, k, key_mask, **extra, **spec.get("params", {})).expand(shape) & allowed
    # a row without candidates keeps the model's own mask (no empty softmax); a real query row
    # the filter emptied (a head SpAtten pruned) outputs zero below and counts as nothing kept
    empty = ~keep.any(-1, keepdim=True)
    real = allowed if key_mask is None else allowed & key_mask[:, None, :, None]  # real rows
    pruned = empty & real.any(-1, keepdim=True)
    keep = keep | (allowed & empty)
    if stats is not None:
        stats["kept"] = stats.get("kept", 0) + int((keep & real & ~pruned).sum())
        stats["valid"] = stats.get("valid", 0) + int(real.sum())
    a = list(args)
    if len(a) > 3:
        a[3] = keep
        out = float_impl(node, tuple(a), kwargs)
    else:
        out = float_impl(node, tuple(a), {**kwargs, "attn_mask": keep})
    if bool(pruned.any()):
        out.masked_fill_(pruned, 0.0)  # in place: keeps the layout later views rely on
    return out


def plan_inputs(lm: Any, index: int = 0) -> tuple[torch.Tensor, ...]:
    """Graph inputs number ``index``: MiniLM's shipped sentence ``index`` (tokenized), else the
    model's example inputs (``index`` 0) or a seeded variant (as :func:`execute_plan`)."""
    if index < 0:
        raise UserValueError(f"sentence index must be >= 0, not {index}")
    if lm.name == "minilm":
        from compiler.models import load_sentences
        from compiler.zoo import tokenize

        sents = load_sentences()
        if index >= len(sents):
            raise UserValueError(f"sentence index {index} out of range: {len(sents)} shipped sentences")
        ids, am, tt = tokenize(sents[index:index + 1], lm.seq_len or 32)
        return ids, am, tt
    if index == 0:
        return tuple(lm.example_inputs)
    g = torch.Generator().manual_seed(1234 + index)
    return tuple(torch.randn(t.shape, generator=g).to(t.dtype) * t.float().std()
                 if t.is_floating_point() else t for t in lm.example_inputs)


def capture_operands(plan: dict[str, Any], ops: str | Sequence[str],
                     index: int = 0) -> dict[str, Any]:
    """Run the plan once on input ``index`` and return the integer operands and result of each
    op in ``ops`` (one name, or several: then a dict name -> record; see :func:`make_impl`'s
    ``capture``). ``UserValueError`` for an unknown op or one without an integer unit."""
    names = {o["name"]: o for o in plan["ops"]}
    wanted = [ops] if isinstance(ops, str) else list(ops)
    for op in wanted:
        if op not in names:
            raise UserValueError(f"plan has no op {op!r} (field ops)")
    graph, lm = rebuild_graph(plan)
    cap: dict[str, dict[str, Any]] = {}
    run_graph(graph, plan_inputs(lm, index), impl=make_impl(graph, plan, capture=cap))
    for op in wanted:
        if op not in cap:
            o = names[op]
            raise UserValueError(f"op {op!r} ({o['op']}) runs on {o['device']} without an "
                                 "integer unit: nothing to co-simulate")
    return cap[wanted[0]] if isinstance(ops, str) else {op: cap[op] for op in wanted}


def _check_lengths(tok: Any, sentences: Sequence[str], seq_len: int) -> None:
    """Refuse a sentence longer than the plan's sequence length (it would be truncated)."""
    from compiler.quiet import quiet_transformers

    with quiet_transformers():  # no note about inputs longer than the model's 512
        lengths = [len(ids) for ids in tok(list(sentences), truncation=False)["input_ids"]]
    long = [(i, n) for i, n in enumerate(lengths) if n > seq_len]
    if long:
        i, n = long[0]
        raise UserValueError(
            f"sentence {i + 1} has {n} tokens, more than the plan's sequence length {seq_len} "
            f"(allowed 1..{seq_len} tokens, [CLS] and [SEP] included; {len(long)} sentence(s) too "
            "long): shorten or split it")


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double().flatten()[None],
                                                       b.double().flatten()[None])[0])


_WORK: Any = None  # the forked workers' input runner (fork start: inherited, never pickled)


def _pool_init() -> None:
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _pool_work(chunk: list[int]) -> tuple[list[tuple[float, float]], dict[str, int]]:
    fn, stats = _WORK
    before = dict(stats)
    res = [fn(i) for i in chunk]
    return res, {k: v - before.get(k, 0) for k, v in stats.items() if isinstance(v, int)}


def _map_inputs(one: Any, n: int, jobs: int, stats: dict[str, int]) -> list[tuple[float, float]]:
    """``[one(i) for i in range(n)]``, inputs after the first in ``jobs`` forked processes.

    Input 0 runs here first, so every lazily built state (programmed crossbars, unit tables) is
    built once and inherited; each worker then runs contiguous chunks of the rest with one
    torch thread and reports its results and its additions to the integer ``stats`` counters
    (sparse keep counts), merged here in input order. Every input's numbers depend on the input
    alone (its read-noise seed included: :meth:`compiler.imc_run.ImcRun.begin_input`), so any
    ``jobs`` gives the same results."""
    global _WORK
    if jobs <= 1 or n <= 2:
        return [one(i) for i in range(n)]
    import multiprocessing

    res = [one(0)]
    rest = list(range(1, n))
    jobs = min(jobs, len(rest))
    size = max(1, min(4, len(rest) // jobs))
    chunks = [rest[i:i + size] for i in range(0, len(rest), size)]
    threads = torch.get_num_threads()
    _WORK = (one, stats)
    try:
        torch.set_num_threads(1)
        with multiprocessing.get_context("fork").Pool(jobs, initializer=_pool_init) as pool:
            for part, added in pool.imap(_pool_work, chunks):
                res.extend(part)
                for k, v in added.items():
                    stats[k] = stats.get(k, 0) + v
    finally:
        _WORK = None
        torch.set_num_threads(threads)
    return res


def execute_plan(plan: dict[str, Any], sentences: Sequence[str] | None = None,
                 limit: int | None = None, n_random: int = 4, impl: Any = None,
                 graph: tuple[Graph, Any] | None = None, imc: Any = None,
                 jobs: int = 1) -> dict[str, Any]:
    """Run ``plan`` and compare with the float model.

    MiniLM plans run sentences (default: the shipped set) and compare sentence embeddings (mean
    pooling, L2 norm) with :func:`compiler.models.embed` of the float model; other models run
    their example inputs plus ``n_random - 1`` seeded variants and compare outputs. Returns
    ``cosine_min``, ``cosine_mean``, ``max_abs_err``, ``n_inputs``, per-device op counts and,
    when attention is sparse, ``sparse_keep_ratio`` (kept / allowed query-key pairs of the real
    query rows, over all sparse attention ops and inputs). ``graph`` (the rebuilt graph and model)
    and ``impl`` (a node implementation with an optional ``start(inputs)``) replace the
    defaults: the plan's placement, core regions on the golden core. ``imc`` (a
    :class:`compiler.imc_run.ImcRun`): crossbar non-idealities of the ``imc`` linears; its
    ``stats()`` are returned as ``imc`` when the plan has an imc device. ``jobs`` > 1 runs the
    inputs after the first in that many forked processes (:func:`_map_inputs`); the results are
    the same as with one.
    """
    graph, lm = graph if graph is not None else rebuild_graph(plan)
    stats: dict[str, int] = {}
    if impl is None:
        impl = make_impl(graph, plan, stats, imc=imc)
        if any(d["kind"] == "core" for d in plan["devices"]):  # core regions: the golden core
            from compiler.core_run import core_impl
            impl = core_impl(plan, graph, impl)
    start_impl = getattr(impl, "start", lambda inputs: None)

    def start(inputs: Any, index: int) -> None:
        # every input is a new batch: filters with state across layers (SpAtten) forget it
        from compiler.passes.sparsify import reset_sparse_filters
        reset_sparse_filters()
        if imc is not None:  # read noise seeded per input: the same numbers whatever runs it
            imc.begin_input(index)
        start_impl(inputs)

    if lm.name == "minilm":
        from compiler.models import embed, load_sentences
        from compiler.zoo import _minilm, tokenize
        sents = list(sentences) if sentences is not None else load_sentences()
        if limit:
            sents = sents[:limit]
        model, tok = _minilm()
        _check_lengths(tok, sents, lm.seq_len or 32)
        ref = embed(model, tok, sents)
        ids, am, tt = tokenize(sents, lm.seq_len or 32)
        n_inputs = len(sents)

        def one(i: int) -> tuple[float, float]:
            inp = (ids[i:i + 1], am[i:i + 1], tt[i:i + 1])
            start(inp, i)
            out = run_graph(graph, inp, impl=impl)[0]
            msk = am[i:i + 1].unsqueeze(-1).to(out.dtype)
            pooled = (out * msk).sum(1) / msk.sum(1).clamp_min(1e-9)
            e = torch.nn.functional.normalize(pooled, p=2, dim=-1)[0]
            return _cos(e, ref[i]), float((e - ref[i]).abs().max())
    else:
        if sentences is not None:
            raise UserValueError(f"sentences apply to MiniLM plans only; this plan's model "
                                 f"{lm.name!r} runs its example inputs (leave out --sentences)")
        inputs = [tuple(lm.example_inputs)]
        g = torch.Generator().manual_seed(1234)
        step = getattr(lm.module, "step_inputs", None)  # a decode step: real caches, held out
        for _ in range(max(0, (limit or n_random) - 1)):
            if callable(step):
                inputs.append(tuple(step(g)))
                continue
            inputs.append(tuple(
                torch.randn(t.shape, generator=g).to(t.dtype) * t.float().std() if t.is_floating_point()
                else torch.randint(0, int(t.max()) + 1, t.shape, generator=g).to(t.dtype)
                for t in lm.example_inputs))
        n_inputs = len(inputs)

        def one(i: int) -> tuple[float, float]:
            inp = inputs[i]
            start(inp, i)
            out = run_graph(graph, inp, impl=impl)
            with torch.no_grad():
                ref = lm.module(*inp)
            refs = list(ref) if isinstance(ref, (tuple, list)) else [ref]
            a = torch.cat([o.flatten().double() for o in out])
            b = torch.cat([r.flatten().double() for r in refs])
            return _cos(a, b), float((a - b).abs().max())
    res = _map_inputs(one, n_inputs, jobs, stats)
    cos = [c for c, _ in res]
    err = max(e for _, e in res)
    ops_by = {}
    for o in plan["ops"]:
        ops_by[o["device"]] = ops_by.get(o["device"], 0) + 1
    out = {"cosine_min": min(cos), "cosine_mean": sum(cos) / len(cos), "max_abs_err": err,
           "n_inputs": len(cos), "model": lm.name, "ops_per_device": ops_by}
    if stats.get("valid"):
        out["sparse_keep_ratio"] = stats["kept"] / stats["valid"]
    if imc is not None and any(d["kind"] == "imc" for d in plan["devices"]):
        out["imc"] = imc.stats()
    return out
