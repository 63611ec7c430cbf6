"""Merge methods: pure functions on tensors, one module per paper, found by spec name.

>>> from traitgraph.linker.merging import ties, get_method
>>> delta = ties([tau_a, tau_b], weights=[1.0, -0.5], density=0.2)   # doctest: +SKIP
>>> get_method("dare_ties").paper
'Yu et al. 2023, arXiv 2311.03099'

Every function returns the merged *delta* in float32: W = W_base + delta.
"""

from traitgraph.linker.merging.breadcrumbs import breadcrumbs, breadcrumbs_ties, outlier_trim
from traitgraph.linker.merging.dare import dare_linear, dare_ties, derive_seed, keep_mask
from traitgraph.linker.merging.della import della, magprune
from traitgraph.linker.merging.iso import iso_c, iso_cts
from traitgraph.linker.merging.registry import (
    METHODS,
    MergeMethod,
    MergeOptions,
    TensorMerge,
    get_method,
    merge_whole,
)
from traitgraph.linker.merging.task_arithmetic import task_arithmetic
from traitgraph.linker.merging.ties import DisjointMerge, MagnitudeTrim, keep_count, ties, trim
from traitgraph.linker.merging.tsv import tsv_m

__all__ = [
    "METHODS",
    "DisjointMerge",
    "MagnitudeTrim",
    "MergeMethod",
    "MergeOptions",
    "TensorMerge",
    "breadcrumbs",
    "breadcrumbs_ties",
    "dare_linear",
    "dare_ties",
    "della",
    "derive_seed",
    "get_method",
    "iso_c",
    "iso_cts",
    "keep_count",
    "keep_mask",
    "magprune",
    "merge_whole",
    "outlier_trim",
    "task_arithmetic",
    "ties",
    "trim",
    "tsv_m",
]
