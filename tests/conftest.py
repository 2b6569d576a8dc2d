"""Every test process sees 4 virtual CPU devices, so sharded code runs for real on several."""

import jax

jax.config.update("jax_num_cpu_devices", 4)
