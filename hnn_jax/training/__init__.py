"""Research code, apart from the hashing runtime: the model zoo (zoo), training the hashing
network (train, losses), evaluation and baselines (evaluate, baselines), the derivatives the zoo
and benchmarks make (variants: fp16, int8, pruning; derivatives: fine-tunes, LoRA merges,
renumbered units). The runtime (hnn_jax's other modules and the converters) imports nothing from
here; this package imports the runtime. Its extra dependencies: `pip install "hnn-jax[train]"`.
"""
