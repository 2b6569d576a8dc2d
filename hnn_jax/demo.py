"""`python -m hnn_jax.demo`: hash the example models bundled with the package, print their codes,
the table of Hamming distances and each model's nearest neighbours (from a HammingIndex)."""

from __future__ import annotations

import sys
import warnings
from importlib.resources import files
from pathlib import Path

from tqdm import tqdm


def example_paths() -> list[Path]:
    return sorted(Path(str(files("hnn_jax") / "examples")).glob("*.onnx"))


def main() -> int:
    import hnn_jax
    from hnn_jax import converters
    from hnn_jax.index import HammingIndex

    paths = example_paths()
    graphs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in tqdm(paths, desc="converting", unit="model", file=sys.stderr):
            graphs.append(converters.from_file(path))
    codes = hnn_jax.hash(graphs)
    names = [p.stem for p in paths]
    width = max(map(len, names))
    print(f"\n{len(codes[0])}-bit codes ({codes[0].version}):")
    for name, code in zip(names, codes):
        print(f"  {name:<{width}}  {code}")
    print("\nHamming distances:")
    print(" " * (width + 2) + "".join(f"{i:>4d}" for i in range(len(names))))
    for i, (name, a) in enumerate(zip(names, codes)):
        print(f"  {name:<{width}}" + "".join(f"{a - b:>4d}" for b in codes) + f"   [{i}]")
    print("\nNearest neighbours:")
    index = HammingIndex()
    index.add_many(codes, names)
    for name, code in zip(names, codes):
        # ties come back in insertion order (names are sorted); the model itself is among them
        (d1, n1), (d2, n2) = [(m.distance, m.id) for m in index.search(code, k=3)
                              if m.id != name][:2]
        print(f"  {name:<{width}}  -> {n1} ({d1} bits), then {n2} ({d2} bits)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
