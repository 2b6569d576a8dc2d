"""Every test process sees 4 virtual CPU devices, so sharded code runs for real on several."""

import atexit
import os
import shutil
import tempfile

# processes the tests start (the CLI, cluster workers) keep compiled programs in a cache of this
# session's own, not the user's (hnn_jax.config.use_compilation_cache)
_CACHE = tempfile.mkdtemp(prefix="hnn-jax-test-cache-")
os.environ.setdefault("HNN_JAX_CACHE", _CACHE)
atexit.register(shutil.rmtree, _CACHE, True)

import jax  # noqa: E402 - after the environment above

jax.config.update("jax_num_cpu_devices", 4)

# converters.canonical checks its invariants after every rewrite pass (and that none edits the
# model the probe runs): a broken pass fails the test that reaches it
os.environ["HNN_CHECK_PASSES"] = "1"
