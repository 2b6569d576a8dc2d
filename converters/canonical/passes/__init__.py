"""The rewrites of the merge operation other than region fusion, one module per family:
`constants` (constant folding, shapes re-inferred, shape arithmetic dropped), `cleanup` (dead
nodes, no-ops, duplicates, NaN guards and a classifier's packaging removed), `quantization` (int8
patterns undone), `layout` (padding made explicit, layout transposes dropped), `normalise` (one
spelling for Slices/Split, division, nested Concats and global pools) and `linear` (`linear`
layers, and BatchNorms and per-channel affines folded into them). Each pass takes the Work graph
and rewrites it in place; the order they run in is `canonical.PASSES`."""

from hnn_jax.converters.canonical.passes.cleanup import (drop_dead, drop_nan_guards, drop_packaging, merge_duplicates,
                                                         remove_noops)
from hnn_jax.converters.canonical.passes.constants import (DATA_SLOTS, drop_shape_arithmetic, fold_constants,
                                                           reinfer_shapes)
from hnn_jax.converters.canonical.passes.layout import drop_layout_transposes, explicit_pads, fold_pads
from hnn_jax.converters.canonical.passes.linear import fold_into_producers, form_linear, linear_heads
from hnn_jax.converters.canonical.passes.normalise import (canonical_pools, divide_as_multiply, flatten_concats,
                                                           merge_slices)
from hnn_jax.converters.canonical.passes.quantization import dequantize

__all__ = ["DATA_SLOTS", "canonical_pools", "dequantize", "divide_as_multiply", "drop_dead", "drop_layout_transposes",
           "drop_nan_guards", "drop_packaging", "drop_shape_arithmetic", "explicit_pads", "flatten_concats",
           "fold_constants", "fold_into_producers", "fold_pads", "form_linear", "linear_heads", "merge_duplicates",
           "merge_slices", "reinfer_shapes", "remove_noops"]
