"""Frontend: a ``torch.nn.Module`` and example inputs -> :class:`compiler.ir.Graph` via torch.export.

``load_model(spec)`` resolves a model spec: a built-in name (``minilm``, see
:mod:`compiler.zoo`) or ``path/to/file.py:factory`` where ``factory()`` returns
``(module, example_inputs)``. ``export_graph(module, inputs)`` runs ``torch.export.export``
and ``run_decompositions`` with ``linear``, ``layer_norm``, ``scaled_dot_product_attention``,
``gelu``, ``silu``, ``softmax`` and ``matmul`` kept whole (popped from the decomposition
table), then translates the ATen graph into typed IR nodes, weights by reference.
"""

from __future__ import annotations

import importlib.util
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compiler.ir import Graph, Node, Param, Ref, TensorType
from compiler.quiet import quiet_export
from compiler.zoo import DEFAULT_SEQ_LEN, MODELS
from golden.errors import UserFileNotFoundError, UserLookupError, UserValueError

__all__ = ["LoadedModel", "export_graph", "load_model", "resolve_target", "KEEP_WHOLE",
           "MAX_SEQ_LEN", "ModelFactoryError"]

#: ATen ops kept whole through the decompositions (the units our hardware implements)
KEEP_WHOLE = ("linear", "layer_norm", "scaled_dot_product_attention", "gelu", "matmul",
              "_softmax", "softmax", "silu")


@dataclass
class LoadedModel:
    """A model ready to export: the module, its example inputs and where it came from."""

    name: str
    module: torch.nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    seq_len: int | None = None


class ModelFactoryError(UserValueError, TypeError):
    """A model factory returned something other than ``(module, example_inputs)``."""


#: longest sequence a model is exported at (BERT-style position tables hold 512)
MAX_SEQ_LEN = 512


def _one_line(e: BaseException) -> str:
    """``Type: first line of the message`` of a user code exception (at most 300 characters)."""
    first = (str(e).strip().splitlines() or [""])[0][:300]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _describe(inputs: Any) -> str:
    return ", ".join(f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}" for t in inputs)


def _load_factory_file(spec: str) -> tuple[Any, str]:
    path_s, sep, fn = spec.rpartition(":")
    if not sep or not path_s.endswith(".py") or not fn:
        raise UserValueError(f"model {spec!r}: expected a built-in name ({', '.join(MODELS)}) or "
                         "path/to/file.py:factory")
    path = Path(path_s)
    if not path.is_file():
        raise UserFileNotFoundError(f"model file not found: {path_s} (give path/to/file.py:factory)")
    mod_spec = importlib.util.spec_from_file_location(f"fmforge_user_model_{path.stem}", path)
    if mod_spec is None or mod_spec.loader is None:
        raise UserValueError(f"model file {path_s} cannot be imported as a Python module")
    mod = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(mod)
    except SystemExit as e:  # user code calling sys.exit(): its failure, not ours
        raise UserValueError(f"model file {path_s} called sys.exit({e.code!r}) while importing") from None
    except Exception as e:  # user code: report it as one line
        raise UserValueError(f"model file {path_s} failed to import: {_one_line(e)}") from None
    factory = getattr(mod, fn, None)
    if not callable(factory):
        raise UserLookupError(f"model file {path_s} has no callable {fn!r}")
    return factory, f"{path_s}:{fn}"


def load_model(spec: str = "minilm", seq_len: int | None = None) -> LoadedModel:
    """Resolve a model spec to a module and example inputs (see the module docstring).

    Raises LookupError for an unknown name, FileNotFoundError for a missing file and
    TypeError when a factory does not return ``(module, example_inputs)``.
    """
    spec = str(spec).strip()
    if seq_len is not None and (isinstance(seq_len, bool) or not isinstance(seq_len, int)
                                or not 1 <= seq_len <= MAX_SEQ_LEN):
        raise UserValueError(f"sequence length must be an integer in 1..{MAX_SEQ_LEN}, "
                             f"not {seq_len!r}")
    base, phase, ctx = spec.partition("/decode@")
    if phase:  # a decode step: <decoder>/decode@<context>
        from compiler.zoo import DECODERS, MAX_CONTEXT, decode_step
        if base not in DECODERS:
            raise UserValueError(f"model {spec!r}: a decode step needs a built-in decoder "
                                 f"({', '.join(DECODERS)}), not {base!r}")
        if not ctx.isdigit() or not 1 <= int(ctx) <= MAX_CONTEXT:
            raise UserValueError(f"model {spec!r}: the context (KV-cache length) must be an "
                                 f"integer in 1..{MAX_CONTEXT}, not {ctx!r}")
        module, inputs = decode_step(base, seq_len or 1, int(ctx))
        return LoadedModel(name=spec, module=module, example_inputs=inputs, seq_len=seq_len or 1)
    if spec in MODELS:
        kw: dict[str, Any] = {}
        if seq_len is not None and spec != "encoder-tiny":
            kw["seq_len"] = seq_len
        factory, name = MODELS[spec], spec
        if spec == "minilm":
            seq_len = seq_len or DEFAULT_SEQ_LEN
        result = factory(**kw)
    elif ":" in spec or spec.endswith(".py"):
        factory, name = _load_factory_file(spec)
        try:
            result = factory()
        except SystemExit as e:
            raise UserValueError(f"model factory {name} called sys.exit({e.code!r})") from None
        except Exception as e:
            raise UserValueError(f"model factory {name} raised {_one_line(e)}") from None
    else:
        raise UserLookupError(f"unknown model {spec!r}; built-in models: {', '.join(MODELS)}, or "
                          "path/to/file.py:factory")
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.nn.Module)):
        raise ModelFactoryError(f"model factory {name} must return (torch.nn.Module, example_inputs), "
                        f"not {type(result).__name__}")
    module, inputs = result
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if not (isinstance(inputs, (tuple, list)) and inputs
            and all(isinstance(t, torch.Tensor) for t in inputs)):
        raise ModelFactoryError(f"model factory {name}: example_inputs must be a tensor or a "
                             "non-empty tuple of tensors")
    if spec not in MODELS:  # user code: its module must run on its own example inputs
        try:
            with torch.no_grad():
                module.eval()(*inputs)
        except SystemExit as e:
            raise UserValueError(f"model {name} called sys.exit({e.code!r}) on its example "
                                 "inputs") from None
        except Exception as e:
            raise UserValueError(f"model {name} fails on its own example inputs "
                                 f"({_describe(inputs)}): {_one_line(e)}") from None
    return LoadedModel(name=name, module=module.eval(), example_inputs=tuple(inputs),
                       seq_len=seq_len)


def resolve_target(target: str) -> Any:
    """The callable of an IR target string (``aten.linear.default`` -> the OpOverload)."""
    if target == "getitem":
        return operator.getitem
    parts = target.split(".")
    if len(parts) != 3:
        raise UserLookupError(f"cannot resolve operator {target!r}")
    try:  # aten, or a custom operator a library registered (torch.library), run as it is
        return getattr(getattr(getattr(torch.ops, parts[0]), parts[1]), parts[2])
    except (AttributeError, RuntimeError):
        raise UserLookupError(f"cannot resolve operator {target!r}: no such torch operator "
                              "(is the library that registers it imported?)") from None


def _target_name(t: Any) -> str:
    if t is operator.getitem:
        return "getitem"
    if isinstance(t, torch._ops.OpOverload):
        return str(t)
    raise UserLookupError(f"operator {t!r} is not an ATen operator")


def _source_line(n: Any) -> str:
    """``, at FILE:LINE`` of the model code that made fx node ``n`` (torch.export's stack trace
    of it, innermost frame), or "" when export recorded none."""
    import re
    trace = str(n.meta.get("stack_trace") or "")
    hits = re.findall(r'File "([^"]+)", line (\d+)', trace)
    if not hits:
        return ""
    f, line = hits[-1]
    return f", at {f.rsplit('/', 1)[-1]}:{line}"


def _failing_call(msg: str) -> str:
    """``; raised by FILE:LINE `code``` of the model code torch.export names in its error (a
    data-dependent guard, such as a Python loop over the experts an eager MoE's router hit),
    or ""."""
    import re
    m = re.search(r'following call raised this error:\s*File "([^"]+)", line (\d+), in \S+\s*\n'
                  r'\s*(.+)', msg)
    if not m:
        return ""
    code = m.group(3).strip()[:120]
    return (f"; raised by {m.group(1).rsplit('/', 1)[-1]}:{m.group(2)} `{code}` (a value that "
            "depends on the input decides control flow or a shape there: the compiler needs "
            "static shapes)")


def _dtype_name(d: torch.dtype) -> str:
    return str(d).removeprefix("torch.")


def _types(val: Any, where: str) -> tuple[tuple[TensorType, ...], bool]:
    if isinstance(val, torch.Tensor):
        shape = []
        for s in val.shape:
            if not isinstance(s, int):
                raise UserValueError(f"{where}: dynamic dimension {s}: its size depends on the "
                                     "input values (nonzero, torch.where or boolean-mask "
                                     "indexing, e.g. the tokens a MoE router sent to one "
                                     "expert); the compiler needs static shapes (give every "
                                     "expert a fixed capacity, or run it on every token and "
                                     "weight the result)")
            shape.append(int(s))
        return (TensorType(tuple(shape), _dtype_name(val.dtype)),), False
    if isinstance(val, (tuple, list)):
        out: list[TensorType] = []
        for v in val:
            if isinstance(v, torch.Tensor):
                out.extend(_types(v, where)[0])
            else:
                out.append(TensorType((), "float32"))
        return tuple(out), True
    return (), False


def export_graph(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], *,
                 source: str = "") -> Graph:
    """Export ``module`` with ``inputs`` and translate it to IR (see the module docstring).

    Raises ValueError naming the model and the first line of torch's reason when torch.export
    cannot export it.
    """
    try:
        with quiet_export():
            ep = torch.export.export(module.eval(), tuple(inputs))
            table = torch.export.default_decompositions()
            for name in KEEP_WHOLE:
                packet = getattr(torch.ops.aten, name)
                for ov in packet.overloads():
                    table.pop(getattr(packet, ov), None)
            ep = ep.run_decompositions(table)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserValueError(f"torch.export cannot export model {source or type(module).__name__}: "
                         f"{type(e).__name__}: {first[:300]}{_failing_call(str(e))}") from None

    sig = ep.graph_signature
    kinds = {s.arg.name: (s.kind.name, s.target) for s in sig.input_specs
             if hasattr(s.arg, "name")}
    state = dict(ep.state_dict)
    state.update({k: v for k, v in ep.constants.items() if isinstance(v, torch.Tensor)})
    params: dict[str, torch.Tensor] = {}
    placeholder_param: dict[str, str] = {}
    g_inputs: list[tuple[str, TensorType]] = []
    nodes: list[Node] = []
    outputs: list[Ref] = []
    multi_out = False

    def conv(a: Any) -> Any:
        if isinstance(a, torch.fx.Node):
            if a.name in placeholder_param:
                return Param(placeholder_param[a.name])
            return Ref(a.name)
        if isinstance(a, (list, tuple)):
            return type(a)(conv(x) for x in a)
        if isinstance(a, dict):
            return {k: conv(v) for k, v in a.items()}
        return a

    for n in ep.graph.nodes:
        if n.op == "placeholder":
            kind, fqn = kinds.get(n.name, ("USER_INPUT", None))
            if kind == "USER_INPUT":
                g_inputs.append((n.name, _types(n.meta["val"], f"input {n.name}")[0][0]))
            else:
                if fqn not in state:
                    raise UserValueError(f"export of {source}: {kind} {fqn!r} has no value")
                params[fqn] = state[fqn].detach()
                placeholder_param[n.name] = fqn
        elif n.op == "call_function":
            target = _target_name(n.target)
            if target == "aten._assert_tensor_metadata.default":
                continue
            stack = n.meta.get("nn_module_stack") or {}
            owner = list(stack.values())[-1][0] if stack else ""
            try:
                resolve_target(target)
            except UserLookupError as e:
                raise UserLookupError(f"model {source}: op {n.name} ({target}, from "
                                      f"{owner or 'the model'}{_source_line(n)}): {e}; register "
                                      "the operator before compiling, or rewrite that code with "
                                      "ATen operators") from None
            out, multi = _types(n.meta.get("val"), f"op {n.name} ({target}, from "
                                f"{owner or 'the model'}{_source_line(n)})")
            node = Node(name=n.name, op="other", target=target, args=conv(tuple(n.args)),
                        kwargs=conv(dict(n.kwargs)), out=out, module=str(owner), multi=multi)
            where = _source_line(n)
            if where:
                node.attrs["source"] = where.removeprefix(", at ")
            nodes.append(node)
        elif n.op == "output":
            res = n.args[0]
            if isinstance(res, (tuple, list)):
                multi_out = len(res) != 1
                outputs = [conv(r) for r in res]
            else:
                outputs = [conv(res)]
    if any(not isinstance(r, Ref) for r in outputs):
        raise UserValueError(f"model {source}: every output must be a computed tensor")
    g = Graph(inputs=g_inputs, nodes=nodes, outputs=outputs, params=params, source=source,
              multi_output=multi_out)
    g.validate()
    return g
