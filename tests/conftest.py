"""Every test process sees 4 virtual CPU devices, so sharded code runs for real on several."""

import os

import jax

jax.config.update("jax_num_cpu_devices", 4)

# converters.canonical checks its invariants after every rewrite pass (and that none edits the
# model the probe runs): a broken pass fails the test that reaches it
os.environ["HNN_CHECK_PASSES"] = "1"
