"""Property-based fuzzing (hypothesis, bounded example counts): the plan loader under random
mutations of a valid plan raises nothing but UserError, and option parsing over random argument
vectors never shows a traceback."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from golden.errors import UserError

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])


@pytest.fixture(scope="module")
def plan():
    from compiler.driver import compile_model

    return compile_model("encoder-tiny", "asic:rows=4:cols=4,cpu:mode=roofline").plan


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:3]):
            yield from _paths(v, (*prefix, i))


def _nest(depth):
    v = 0
    for _ in range(depth):
        v = [v]
    return v


WEIRD = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.just(_nest(3000)), st.just({"unit": "warp-drive", "params": {}}),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(),
                                                         max_size=2))


@FUZZ
@given(data=st.data())
def test_plan_loader_raises_only_user_errors(plan, tmp_path_factory, data):
    from compiler.plan import check_plan, load_plan

    doc = copy.deepcopy(plan)
    paths = [p for p in _paths(doc) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent = doc
        try:
            for k in path[:-1]:
                parent = parent[k]
            action = data.draw(st.sampled_from(["delete", "replace"]))
            if action == "delete" and isinstance(parent, dict):
                del parent[path[-1]]
            else:
                parent[path[-1]] = data.draw(WEIRD)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed this path
    try:
        check_plan(doc)
    except UserError:
        pass
    f = tmp_path_factory.mktemp("fuzz") / "p.json"
    try:
        f.write_text(json.dumps(doc))
    except (ValueError, RecursionError):
        return
    try:
        load_plan(f)
    except UserError:
        pass


TOKENS = ["verilog", "cosim", "build", "compile", "execute", "sparsity", "devices", "boards",
          "schema", "plan", "gemm", "gelu", "softmax", "layernorm", "requant", "relu", "--rows",
          "--cols", "--lanes", "--len", "--m", "--k", "--n", "--seed", "--threads", "--limit",
          "--in-scale", "--scale", "--max-length", "--target-mhz", "--board", "--methods",
          "--dataflow", "--stall", "-o", "--json", "--verbose", "--help", "-1", "0", "65",
          "1e30", "nan", "x", "", "--", "-", "/dev/null"]


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(argv=st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=6)), max_size=7))
def test_option_parsing_never_shows_a_traceback(argv):
    """Parsing alone (the commands do not run): a usage error is SystemExit(2) with one line."""
    import contextlib
    import io

    from fmforge.cli import build_parser

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(argv)
        except SystemExit as e:
            assert e.code in (0, 2)
            if e.code == 2:
                lines = err.getvalue().strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("fmforge: error:"), lines


@pytest.mark.parametrize("text", ["[" * 100_000, '{"format": ' * 50_000, "\x00\xff", "", "nul"])
def test_unparseable_plans_are_user_errors(tmp_path, text):
    from compiler.plan import load_plan

    f = tmp_path / "p.json"
    f.write_text(text, encoding="latin-1")
    with pytest.raises(UserError):
        load_plan(f)
