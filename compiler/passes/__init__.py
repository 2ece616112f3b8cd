"""Compiler passes over :class:`compiler.ir.Graph`: canonicalize, quantize, sparsify.

Every pass declares the graph properties it ``requires`` and the ones it ``ensures``; running
it checks both (see :class:`compiler.passes.base.Pass`).
"""

from compiler.passes.base import Pass, PassError, run_passes
from compiler.passes.canonicalize import Canonicalize
from compiler.passes.quantize import Quantize, quantize_tensor, quantize_weight
from compiler.passes.sparsify import SparsifyAttention, register_sparse_filter, sparse_filters

__all__ = ["Pass", "PassError", "run_passes", "Canonicalize", "Quantize", "quantize_weight",
           "quantize_tensor", "SparsifyAttention", "register_sparse_filter", "sparse_filters"]
