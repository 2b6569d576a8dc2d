"""`hnn-jax demo`: hash the example models bundled with hnn-jax (hnn_jax.demo)."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.description = ("Hash the example ONNX models bundled with hnn-jax and print their codes, the "
                          "Hamming-distance table and each model's nearest neighbours (same as "
                          "`python -m hnn_jax.demo`).")
    parser.set_defaults(func=run)


def run(args) -> int:
    from hnn_jax import demo
    return demo.main()
