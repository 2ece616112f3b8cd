"""The package layers: who may import whom (checked on the source, every import statement).

golden/ imports nothing of ours; hw/ only golden/; sim/ only hw/ and golden/; compiler/ only
hw/, golden/ and boards.catalog; boards/ only hw/, golden/ (and itself); the CLI package
(fmforge/) imports everyone and nobody imports it.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("golden", "hw", "sim", "compiler", "boards", "fmforge")
#: package -> what it may import (besides itself); entries with a dot allow one module
ALLOWED = {
    "golden": (),
    "hw": ("golden",),
    "sim": ("hw", "golden", "compiler.models"),  # real MiniLM Q/K for the sparse benches
    "compiler": ("hw", "golden", "boards.catalog", "boards.soc", "boards.soc_build"),  # the
    # board SoC device prices and fit-checks the SoC that `fmforge build` makes
    "boards": ("hw", "golden"),
    "fmforge": OURS,
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def _allowed(pkg: str, mod: str) -> bool:
    top = mod.split(".")[0]
    if top not in OURS or top == pkg:
        return True
    return any(mod == a or mod.startswith(a + ".") or ("." not in a and top == a)
               for a in ALLOWED[pkg])


@pytest.mark.parametrize("pkg", OURS)
def test_package_imports_follow_the_layers(pkg):
    bad = []
    files = sorted((ROOT / pkg).rglob("*.py"))
    assert files
    for f in files:
        for line, mod in _imports(f):
            if not _allowed(pkg, mod):
                bad.append(f"{f.relative_to(ROOT)}:{line} imports {mod}")
    assert not bad, "layer violations:\n" + "\n".join(bad)


def test_the_rules_catch_a_violation(tmp_path):
    assert not _allowed("golden", "compiler.models")
    assert not _allowed("compiler", "fmforge.commands._args")
    assert not _allowed("compiler", "boards.build")
    assert _allowed("compiler", "boards.catalog")
    assert not _allowed("sim", "compiler.execute")
    assert _allowed("fmforge", "sim.cosim")
