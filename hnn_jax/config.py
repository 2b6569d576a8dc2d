"""HasherConfig, the network's shape, and the compilation cache of the processes hnn-jax runs
itself: kept free of JAX imports so `import hnn_jax` stays light."""

import dataclasses
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from hnn_jax.errors import InvalidArgumentError

CACHE_ENV = "HNN_JAX_CACHE"
CACHE_MAX_BYTES = 1 << 30

ALLOWED_BITS = (16, 32, 64, 128, 256)


@dataclasses.dataclass(frozen=True)
class HasherConfig:
    """Shape of the hashing network. Checkpoints store it; changing it changes every code."""

    bits: int = 64
    hidden: int = 128
    layers: int = 4
    # The last `instance_bits` bits are the weight part, not learned: an exact integer SimHash of
    # every parameter tensor's weight fingerprint (hnn_jax.weightcode). They tell
    # initialisations apart and follow copies; the learned bits then see no fingerprints and code
    # the architecture. 0: every bit is learned and sees everything.
    instance_bits: int = 0
    # Networks trained apart (seeds seed, seed+1, ...), each to `learned_bits` bits; the code
    # keeps the first learned_bits / members of each. One network's family retrieval swings with
    # its seed; a splice of several is steadier (docs/previous-releases.md).
    members: int = 1
    # The learned bits read no absolute size: tensor numels and widths (node output, edge, weight
    # numel) and the model's parameter count are zeroed for them, so a family's code does not
    # follow its width; counts, ranks, attributes and structure remain (as WL-subtree reads).
    size_blind: bool = False

    def __post_init__(self):
        if not isinstance(self.bits, int) or self.bits not in ALLOWED_BITS:
            raise InvalidArgumentError(f"bits must be one of {ALLOWED_BITS}, got {self.bits!r}")
        if not isinstance(self.hidden, int) or self.hidden < 2 or self.hidden % 2:
            raise InvalidArgumentError(f"hidden must be an even int >= 2, got {self.hidden!r}")
        if not isinstance(self.layers, int) or self.layers < 1:
            raise InvalidArgumentError(f"layers must be an int >= 1, got {self.layers!r}")
        if not isinstance(self.instance_bits, int) or not 0 <= self.instance_bits < self.bits:
            raise InvalidArgumentError(f"instance_bits must be an int in [0, bits), got {self.instance_bits!r}")
        if (not isinstance(self.members, int) or self.members < 1
                or (self.bits - self.instance_bits) % self.members):
            raise InvalidArgumentError(f"members must be an int >= 1 dividing the {self.bits - self.instance_bits} "
                             f"learned bits, got {self.members!r}")

    @property
    def learned_bits(self) -> int:
        return self.bits - self.instance_bits

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not self.instance_bits:  # checkpoints from before instance bits keep their versions
            del d["instance_bits"]
        if self.members == 1:  # and those from before members
            del d["members"]
        if not self.size_blind:  # and those from before size_blind
            del d["size_blind"]
        return d

    @property
    def member(self) -> "HasherConfig":
        """The config each member network is trained with."""
        return dataclasses.replace(self, members=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HasherConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InvalidArgumentError(f"unknown HasherConfig fields: {sorted(unknown)}")
        return cls(**data)


def use_compilation_cache() -> str | None:
    """Keep compiled hashers on disk between runs (jax's persistent compilation cache): a second
    `hnn-jax hash` loads in about 0.2 s the program the first compiled in 0.8 s. Called by the
    processes hnn-jax owns (the console script, cluster workers) before jax is imported; a library
    caller's jax is left alone. $HNN_JAX_CACHE names the folder (default $XDG_CACHE_HOME/hnn-jax/jax,
    else ~/.cache/hnn-jax/jax; "off" turns it off); jax's own JAX_COMPILATION_CACHE_DIR wins.
    The folder in use, or None. Codes do not depend on it: a cached program is the compiled one."""
    if "jax" in sys.modules or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ.get("JAX_COMPILATION_CACHE_DIR") or None
    folder = os.environ.get(CACHE_ENV, "").strip()
    if folder.lower() in ("off", "0", "false", "no", "none"):
        return None
    if not folder:
        root = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        folder = os.path.join(root, "hnn-jax", "jax")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # each bucket: ~1 s
    if importlib.util.find_spec("filelock"):  # jax's size bound locks the folder with it
        os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(CACHE_MAX_BYTES))  # oldest go first
    return folder
