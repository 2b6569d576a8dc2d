"""`python -m hnn_jax.cli`: the `hnn-jax` command."""

from hnn_jax.cli import run

run()
