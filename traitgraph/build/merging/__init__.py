"""Merge methods: pure functions on tensors, one module per paper, found by spec name.

>>> from traitgraph.build.merging import ties, get_method
>>> delta = ties([tau_a, tau_b], weights=[1.0, -0.5], density=0.2)   # doctest: +SKIP
>>> get_method("dare_ties").paper
'Yu et al. 2023, arXiv 2311.03099'

Every function returns the merged *delta* in float32: W = W_base + delta.
"""

from traitgraph.build.merging.dare import dare_linear, dare_ties, derive_seed, keep_mask
from traitgraph.build.merging.registry import METHODS, MergeMethod, MergeOptions, TensorMerge, get_method
from traitgraph.build.merging.task_arithmetic import task_arithmetic
from traitgraph.build.merging.ties import DisjointMerge, MagnitudeTrim, keep_count, ties, trim

__all__ = [
    "METHODS",
    "DisjointMerge",
    "MagnitudeTrim",
    "MergeMethod",
    "MergeOptions",
    "TensorMerge",
    "dare_linear",
    "dare_ties",
    "derive_seed",
    "get_method",
    "keep_count",
    "keep_mask",
    "task_arithmetic",
    "ties",
    "trim",
]
