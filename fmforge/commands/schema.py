"""``fmforge schema plan|sweep``: print the JSON Schema of a file format fmforge reads.

plan: the document shipped in the package (``compiler/data/plan.schema.json``, JSON Schema draft
2020-12); ``fmforge execute``/``cosim --plan``/``verilog --plan`` validate plans with it (and
then check cross references), so other tools can validate plans the same way.

sweep: the sweep spec (``fmforge/data/sweep.schema.json``), describing the parsed TOML document;
``fmforge sweep`` validates specs with it (and then checks the device template and the board).

Sentence files (``--sentences``) are plain UTF-8 text, one sentence per line: no schema.
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from typing import Any

__all__ = ["register", "run", "SCHEMAS"]

#: schema name -> (package, resource) of its shipped JSON Schema document
SCHEMAS: dict[str, tuple[str, str]] = {
    "plan": ("compiler", "data/plan.schema.json"),
    "sweep": ("fmforge", "data/sweep.schema.json"),
}


def register(subparsers: Any) -> None:
    """Add the ``schema`` command to the CLI."""
    p = subparsers.add_parser("schema", help="print the JSON Schema of a file format",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(SCHEMAS), help="the format: plan (compiled plans) or sweep (sweep specs)")
    p.add_argument("--json", action="store_true",
                   help="print the schema as one line (it is JSON either way)")
    p.set_defaults(func=run)


def load(name: str) -> dict[str, Any]:
    """The shipped JSON Schema document ``name``."""
    package, resource = SCHEMAS[name]
    return json.loads(resources.files(package).joinpath(resource).read_text(encoding="utf-8"))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Return the schema document; print it indented unless ``--json`` (then the CLI prints it)."""
    doc = load(args.name)
    if not args.json:
        print(json.dumps(doc, indent=1, sort_keys=True))
    return doc
