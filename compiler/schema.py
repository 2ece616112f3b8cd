"""A small JSON-schema-like validator (no dependency): types, required/optional keys, items, enums.

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

__all__ = ["SchemaError", "validate"]


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
