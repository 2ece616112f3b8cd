"""Document schemas: a compact Python notation, its JSON Schema translation, and validation.

The compact notation below is the one source of truth; :func:`to_json_schema` translates it into
a JSON Schema (draft 2020-12) document that is shipped with the package (other tools validate
plans with it, ``fmforge schema plan`` prints it), and :func:`validate_json_schema` checks a
document with the ``jsonschema`` library, raising :class:`SchemaError` with the field path.
:func:`validate` is the original dependency-free checker of the same notation.

Schemas are plain Python values:

* ``"string" | "number" | "integer" | "boolean" | "null" | "any"``, or a tuple of those (union);
* ``{"enum": [...]}``; ``{"nullable": schema}`` (null or the schema);
* ``{"object": {key: schema}, "optional": {key: schema}, "extra": schema | None}`` (``extra``
  types additional keys; without it unknown keys are errors);
* ``{"array": schema, "min": n}``;
* ``{"range": "number" | "integer", "min": lo, "max": hi}`` (bounds included, either may be None).

:func:`validate` raises :class:`SchemaError` whose message names the field path
(``ops[3].device``).
"""

from __future__ import annotations

import math
from typing import Any

from golden.errors import UserValueError

__all__ = ["SchemaError", "validate", "to_json_schema", "validate_json_schema", "field_path"]


class SchemaError(UserValueError):
    """A document does not match its schema; ``path`` names the field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"field {path or '<root>'}: {message}")
        self.path = path


def _type_ok(t: str, v: Any) -> bool:
    if t == "any":
        return True
    if t == "string":
        return isinstance(v, str)
    if t == "boolean":
        return isinstance(v, bool)
    if t == "null":
        return v is None
    if t == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    if t == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    raise UserValueError(f"bad schema type {t!r}")


def _name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def validate(doc: Any, schema: Any, path: str = "") -> None:
    """Check ``doc`` against ``schema`` (see the module docstring)."""
    if isinstance(schema, str):
        if not _type_ok(schema, doc):
            raise SchemaError(path, f"expected {schema}, got {_name(doc)}")
        return
    if isinstance(schema, tuple):
        if not any(_type_ok(t, doc) for t in schema):
            raise SchemaError(path, f"expected {' or '.join(schema)}, got {_name(doc)}")
        return
    if "range" in schema:  # {"range": "number"|"integer", "min": lo, "max": hi}
        validate(doc, schema["range"], path)
        lo, hi = schema.get("min"), schema.get("max")
        if (lo is not None and doc < lo) or (hi is not None and doc > hi):
            raise SchemaError(path, f"{doc!r} is out of range: expected "
                                    f"{schema['range']} in [{lo}, {hi}]")
        return
    if "nullable" in schema:
        if doc is not None:
            validate(doc, schema["nullable"], path)
        return
    if "enum" in schema:
        if doc not in schema["enum"]:
            raise SchemaError(path, f"expected one of {schema['enum']}, got {doc!r}")
        return
    if "array" in schema:
        if not isinstance(doc, list):
            raise SchemaError(path, f"expected an array, got {_name(doc)}")
        if len(doc) < schema.get("min", 0):
            raise SchemaError(path, f"expected at least {schema['min']} items, got {len(doc)}")
        for i, item in enumerate(doc):
            validate(item, schema["array"], f"{path}[{i}]")
        return
    if "object" in schema:
        if not isinstance(doc, dict):
            raise SchemaError(path, f"expected an object, got {_name(doc)}")
        req, opt, extra = schema["object"], schema.get("optional", {}), schema.get("extra")
        for k, sub in req.items():
            if k not in doc:
                raise SchemaError(f"{path}.{k}" if path else k, "missing")
            validate(doc[k], sub, f"{path}.{k}" if path else k)
        for k, v in doc.items():
            p = f"{path}.{k}" if path else k
            if k in req:
                continue
            if k in opt:
                validate(v, opt[k], p)
            elif extra is not None:
                validate(v, extra, p)
            else:
                raise SchemaError(p, "unknown field")
        return
    raise UserValueError(f"bad schema {schema!r}")


_JSON_TYPES = {"string": "string", "number": "number", "integer": "integer",
               "boolean": "boolean", "null": "null"}


def _json_type(t: str) -> dict[str, Any]:
    return {} if t == "any" else {"type": _JSON_TYPES[t]}


def to_json_schema(schema: Any) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) equivalent of a compact ``schema``."""
    if isinstance(schema, str):
        return _json_type(schema)
    if isinstance(schema, tuple):
        if "any" in schema:
            return {}
        return {"type": [_JSON_TYPES[t] for t in schema]}
    if "range" in schema:
        out = _json_type(schema["range"])
        if schema.get("min") is not None:
            out["minimum"] = schema["min"]
        if schema.get("max") is not None:
            out["maximum"] = schema["max"]
        return out
    if "nullable" in schema:
        return {"anyOf": [{"type": "null"}, to_json_schema(schema["nullable"])]}
    if "enum" in schema:
        return {"enum": list(schema["enum"])}
    if "array" in schema:
        out = {"type": "array", "items": to_json_schema(schema["array"])}
        if schema.get("min"):
            out["minItems"] = schema["min"]
        return out
    if "object" in schema:
        req, opt, extra = schema["object"], schema.get("optional", {}), schema.get("extra")
        props = {k: to_json_schema(v) for k, v in {**req, **opt}.items()}
        out = {"type": "object", "properties": props, "required": list(req)}
        out["additionalProperties"] = False if extra is None else to_json_schema(extra)
        return out
    raise UserValueError(f"bad schema {schema!r}")


def field_path(parts: Any) -> str:
    """``ops[3].device`` from a sequence of keys and indices."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _non_finite(doc: Any, path: tuple = ()) -> tuple | None:
    """Path of the first NaN or infinity in ``doc`` (JSON has neither), or None."""
    stack = [(doc, path)]
    while stack:
        v, p = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return p
        if isinstance(v, dict):
            stack.extend((x, (*p, k)) for k, x in reversed(list(v.items())))
        elif isinstance(v, list):
            stack.extend((x, (*p, i)) for i, x in reversed(list(enumerate(v))))
    return None


#: JSON Schema keywords :func:`_conforms` understands (annotations, and those the compact
#: notation translates to); a schema with any other keyword goes to ``jsonschema`` alone
_FAST_KEYWORDS = frozenset({"$schema", "title", "description", "type", "enum", "minimum",
                            "maximum", "properties", "required", "additionalProperties",
                            "items", "minItems", "anyOf"})

_FAST_TYPES: dict[str, Any] = {
    "string": lambda v: type(v) is str,
    "integer": lambda v: type(v) is int,
    "number": lambda v: type(v) is int or type(v) is float,
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
    "object": lambda v: type(v) is dict,
    "array": lambda v: type(v) is list,
}


def _conforms(doc: Any, schema: Any) -> bool:
    """Whether ``doc`` certainly satisfies the JSON Schema ``schema`` (draft 2020-12): a fast
    check of the keywords in :data:`_FAST_KEYWORDS`, never more lenient than ``jsonschema``
    (stricter where that is simpler: an ``integer`` must be a Python int, not ``1.0``; an
    ``enum`` value must have its member's type, so ``True`` is not ``1``; an unknown keyword
    answers False). False means "ask ``jsonschema``", which then finds the error or accepts."""
    if schema is True or schema == {}:
        return True
    if type(schema) is not dict or not _FAST_KEYWORDS.issuperset(schema):
        return False
    t = schema.get("type")
    if t is not None:
        checks = [_FAST_TYPES.get(x) for x in ([t] if type(t) is str else t)]
        if None in checks or not any(c(doc) for c in checks):
            return False
    if "enum" in schema and not any(type(doc) is type(e) and doc == e
                                    for e in schema["enum"]):
        return False
    if "anyOf" in schema and not any(_conforms(doc, s) for s in schema["anyOf"]):
        return False
    if type(doc) in (int, float):
        if "minimum" in schema and not doc >= schema["minimum"]:
            return False
        if "maximum" in schema and not doc <= schema["maximum"]:
            return False
    elif type(doc) is list:
        if len(doc) < schema.get("minItems", 0):
            return False
        items = schema.get("items")
        if items is not None:
            return _all_conform(doc, items)
    elif type(doc) is dict:
        if not all(k in doc for k in schema.get("required", ())):
            return False
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for k, v in doc.items():
            sub = props.get(k, extra)
            if sub is False or not _conforms(v, sub):
                return False
    return True


def _all_conform(items: list[Any], schema: Any) -> bool:
    """:func:`_conforms` of every item (a list of plain numbers checked in one pass)."""
    if type(schema) is dict and schema.keys() <= {"type", "minimum", "maximum"} \
            and schema.get("type") in ("number", "integer"):
        ok = (int,) if schema["type"] == "integer" else (int, float)
        lo, hi = schema.get("minimum"), schema.get("maximum")
        return all(type(v) in ok for v in items) \
            and (lo is None or all(v >= lo for v in items)) \
            and (hi is None or all(v <= hi for v in items))
    return all(_conforms(v, schema) for v in items)


def validate_json_schema(doc: Any, schema: dict[str, Any]) -> None:
    """Check ``doc`` against a JSON Schema with ``jsonschema``; :class:`SchemaError` names the
    field of the most relevant error. NaN and infinities are refused as well.

    A document that :func:`_conforms` (every keyword checked, in a fraction of the time) is
    accepted without ``jsonschema``, which is asked only when that fast check fails: a 2 MB
    GPT-2-small plan took 0.9 s there, 0.07 s here."""
    bad = _non_finite(doc)
    if bad is not None:
        raise SchemaError(field_path(bad), "expected a finite number, got "
                                           f"{_lookup(doc, bad)!r}")
    if _conforms(doc, schema):
        return
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    try:
        err = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    except RecursionError:
        raise SchemaError("", "document nested too deeply") from None
    if err is None:
        return
    parts = list(err.absolute_path)
    msg = err.message
    if err.validator == "required":  # name the missing field itself
        missing = [k for k in err.validator_value if isinstance(err.instance, dict)
                   and k not in err.instance]
        if missing:
            parts.append(missing[0])
            msg = "missing"
    elif err.validator == "additionalProperties" and isinstance(err.instance, dict):
        known = err.schema.get("properties", {})
        extra = [k for k in err.instance if k not in known]
        if extra:
            parts.append(extra[0])
            msg = "unknown field"
    if len(msg) > 300:
        msg = msg[:300] + "..."
    raise SchemaError(field_path(parts), msg)


def _lookup(doc: Any, path: tuple) -> Any:
    for p in path:
        doc = doc[p]
    return doc
