"""Feature layout of the graphs the converters build and the hasher reads.

Bump SCHEMA_VERSION whenever the meaning of any column or the vocabulary changes: checkpoints
record the version they were trained on and refuse graphs of another one.
"""

SCHEMA_VERSION = 5  # 2: weight projections normalised per output channel; 3: constant weights project to 0, ties in
#                     canonical order broken by what is downstream before weight values (instance columns
#                     and node order only: the learned network reads neither, so schema-2 weights serve 3);
#                     4: onnxruntime's fused / QOperator ops spelled back and NHWC transposes sunk (graphs
#                     of such files change), instance bits read the weights of parameter ops only;
#                     5: columns 48-64 hold each weight read as a set of units (features.unit_sets),
#                     which renumbering hidden units leaves, instead of activation projections (the
#                     learned network reads neither, so schema-4 network weights serve 5)
# Bump CONVERTER_REVISION when a converter change moves the graphs (and so the codes) of files
# that converted before while every column keeps its meaning: the code version includes it, so
# codes from before refuse to compare, and graphs stored by earlier revisions stay readable (the
# learned part reads the same columns). 1: code v2 as first released; 2: onnxruntime.transformers'
# attention / embedding / rotary / MatMulNBits ops spelled, If branches written into the graph,
# TFLite's unit-axis reshapes read as transposes, weight projections of constant-valued nodes 0.
CONVERTER_REVISION = 2

# Canonical op vocabulary. Index 0 is the bucket for every op not listed here.
OPS = (
    "unknown", "input",
    # linear algebra
    "conv", "conv_transpose", "linear", "matmul", "einsum", "embedding",
    # normalisation
    "batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm", "lp_norm",
    # activations
    "relu", "relu6", "leaky_relu", "prelu", "elu", "selu", "celu", "gelu", "gelu_tanh", "silu",
    "sigmoid", "hard_sigmoid", "hard_swish", "tanh", "softplus", "softsign", "mish",
    "softmax", "log_softmax", "elementwise",
    # pooling
    "max_pool", "avg_pool", "lp_pool", "global_avg_pool", "global_max_pool",
    # arithmetic
    "add", "sub", "mul", "div", "pow", "sqrt", "exp", "log", "neg", "abs", "reciprocal",
    "erf", "erfc", "min", "max", "clip", "floor", "ceil", "round", "sign", "sin", "cos",
    "equal", "less", "greater", "not", "and", "or", "where", "cast",
    # reductions
    "reduce_mean", "reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_l2",
    "argmax", "argmin", "topk", "cumsum",
    # layout and indexing
    "reshape", "transpose", "concat", "split", "slice", "gather", "gather_nd", "scatter",
    "pad", "resize", "expand", "tile", "depth_to_space", "space_to_depth", "range",
    "constant_of_shape", "shape", "nonzero", "one_hot", "trilu",
    # recurrent and attention
    "lstm", "gru", "rnn", "attention",
)
OP_INDEX = {name: i for i, name in enumerate(OPS)}
VOCAB_SIZE = 128  # room to grow the vocabulary without changing embedding tables
assert len(OPS) <= VOCAB_SIZE

# Node features: float32 [n_node, NODE_WIDTH]. Column 0 holds the op id (an integer as float);
# every other column is a log-scaled figure (slog(x) = sign(x) * log1p(|x|)).
NODE_OP = 0
NODE_SHAPE = slice(1, 7)         # output: log numel, #non-1 dims, log of up to 4 non-1 dims
NODE_DEGREE = slice(7, 10)       # #data inputs, #consumers, #outputs
NODE_ATTRS = slice(10, 18)       # kernel numel, stride, groups, dilation, pads, axis, eps, alpha
NODE_WEIGHT_STATS = slice(18, 26)  # #params, #tensors, primary: log numel, rms, mean, |mean|, has bias, bias rms
NODE_WEIGHT_PROJ = slice(26, 42)   # 16 fixed random projections of the primary weight, each row rms-normalised
NODE_ACT_STATS = slice(42, 48)     # probe activation: mean, std, min, max, fraction > 0, probed flag
NODE_UNIT_PROJ = slice(48, 64)     # 16 numbers of the primary weight as a set of units (features.unit_sets)
NODE_WIDTH = 64

# Edge features: float32 [n_edge, EDGE_WIDTH]; edges point along the data flow (sender -> receiver).
EDGE_WIDTH = 8  # log numel, #non-1 dims, log last dim, receiver input slot, sender output slot,
                # dtype kind (1 float, 2 int, 3 bool, 0 other), is-float, reserved

# Global features: float32 [1, GLOBAL_WIDTH].
GLOBAL_SCHEMA = 0   # SCHEMA_VERSION of this graph
GLOBAL_PROBE = 1    # probe status, one of PROBE_* below
GLOBAL_WIDTH = 8    # + log #nodes, log #edges, log #params, #inputs, #outputs, reserved

PROBE_OK = 1.0        # the model ran on the probe inputs; activation columns are filled
PROBE_FAILED = -1.0   # onnxruntime could not build or run it: static features only
PROBE_TIMEOUT = -2.0  # it ran past the time limit: static features only
PROBE_SKIPPED = -3.0  # too large to run, or probing was turned off: static features only


def graph_schema_version(graph) -> int:
    """The schema version a GraphsTuple was built with (read from its globals)."""
    return int(round(float(graph.globals[0, GLOBAL_SCHEMA])))
