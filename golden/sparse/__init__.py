"""Sparse-attention filter golden models: A^3, ELSA, SpAtten, Energon, Sanger.

Importing the package registers every method in ``FILTERS``; ``make_filter(name, **knobs)``
builds one. See ``golden.sparse.base`` for the interface and ``docs/sparse_attention.md``
for the algorithms as implemented.
"""

from golden.sparse.a3 import A3Filter
from golden.sparse.base import (
    FILTERS,
    AttentionResult,
    DenseFilter,
    IntFilterResult,
    SparseAttentionFilter,
    attend_candidates,
    available_filters,
    make_filter,
    quantize_qk_int8,
)
from golden.sparse.elsa import ElsaFilter
from golden.sparse.energon import EnergonFilter
from golden.sparse.sanger import SangerFilter
from golden.sparse.spatten import SpattenFilter

__all__ = [
    "A3Filter",
    "AttentionResult",
    "DenseFilter",
    "ElsaFilter",
    "EnergonFilter",
    "FILTERS",
    "IntFilterResult",
    "METHODS",
    "SangerFilter",
    "SparseAttentionFilter",
    "SpattenFilter",
    "attend_candidates",
    "available_filters",
    "make_filter",
    "quantize_qk_int8",
]

#: the five sparse methods, in the order tables list them
METHODS = ("a3", "elsa", "spatten", "energon", "sanger")
