"""The fast JSON Schema check that lets a valid plan skip ``jsonschema`` (compiler.schema)."""

from __future__ import annotations

import copy
import random

import jsonschema
import pytest

from compiler.schema import _conforms

WEIRD = [None, True, False, 0, 1, -1, 1.0, 2.5, -3.5, 1e40, 2**70, "", "x", "fpga", "asic",
         [], [1], [1.5], ["a"], [None], {}, {"a": 1}, {"unit": "gemm", "params": {}}, 8, 16, 32]


@pytest.fixture(scope="module")
def plan_and_schema():
    from compiler.driver import compile_model
    from compiler.plan import shipped_plan_schema

    return compile_model("encoder-tiny", "asic,cpu:mode=roofline").plan, shipped_plan_schema()


def _paths(doc, path=()):
    yield path
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*path, i))


def test_a_compiled_plan_takes_the_fast_path(plan_and_schema):
    plan, schema = plan_and_schema
    assert _conforms(plan, schema)
    jsonschema.validate(plan, schema)


def test_fast_check_never_accepts_what_jsonschema_refuses(plan_and_schema):
    """Random edits of a real plan (deleted fields, values of other types and ranges, unknown
    keys): whatever the fast check accepts, ``jsonschema`` accepts too; and it accepts most of
    what ``jsonschema`` accepts (else every plan would pay for ``jsonschema`` again)."""
    plan, schema = plan_and_schema
    validator = jsonschema.Draft202012Validator(schema)
    paths = [p for p in _paths(plan) if p]
    rng = random.Random(0)
    agree = both_ok = 0
    for _ in range(600):
        doc = copy.deepcopy(plan)
        for _ in range(rng.randint(1, 2)):
            path = rng.choice(paths)
            parent = doc
            try:
                for k in path[:-1]:
                    parent = parent[k]
                action = rng.choice(["delete", "replace", "add"])
                if action == "delete" and isinstance(parent, dict):
                    del parent[path[-1]]
                elif action == "add" and isinstance(parent, dict):
                    parent["colour_" + str(rng.randint(0, 3))] = rng.choice(WEIRD)
                else:
                    parent[path[-1]] = copy.deepcopy(rng.choice(WEIRD))
            except (KeyError, IndexError, TypeError):
                continue
        fast = _conforms(doc, schema)
        slow = validator.is_valid(doc)
        assert slow or not fast, f"fast check accepted an invalid plan: {path}"
        agree += fast == slow
        both_ok += fast and slow
    assert agree >= 550 and both_ok > 0


@pytest.mark.parametrize(("doc", "schema", "ok"), [
    (True, {"type": "integer"}, False),
    (1.0, {"type": "integer"}, False),  # jsonschema accepts it; the fast check asks it
    (1, {"type": "number", "minimum": 0, "maximum": 1}, True),
    (2, {"type": "number", "minimum": 0, "maximum": 1}, False),
    (True, {"enum": [1]}, False),
    (None, {"anyOf": [{"type": "null"}, {"type": "string"}]}, True),
    ([1, 2.5], {"type": "array", "items": {"type": "number", "minimum": 1}}, True),
    ([1, 0.5], {"type": "array", "items": {"type": "number", "minimum": 1}}, False),
    ([1, True], {"type": "array", "items": {"type": "number"}}, False),
    ([], {"type": "array", "items": {}, "minItems": 1}, False),
    ({"a": 1}, {"type": "object", "properties": {}, "additionalProperties": False}, False),
    ({"a": 1}, {"type": "object", "required": ["b"]}, False),
    ("x", {"type": "string", "pattern": "y"}, False),  # unknown keyword: ask jsonschema
])
def test_fast_check_cases(doc, schema, ok):
    assert _conforms(doc, schema) is ok
    if ok:
        jsonschema.validate(doc, schema)
