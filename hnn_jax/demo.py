"""`python -m hnn_jax.demo`: hash the example models bundled with the package, print their codes,
the table of Hamming distances and each model's nearest neighbours (from a HammingIndex)."""

from __future__ import annotations

import sys
import warnings
from importlib.resources import files
from pathlib import Path

from tqdm import tqdm


EXAMPLES = {  # what each bundled example is (examples/make_examples.py builds them)
    "cnn_a": "a small PyTorch CNN, TorchScript export",
    "cnn_a_dynamo": "cnn_a, dynamo export: the same model",
    "cnn_a_fp16": "cnn_a, weights rounded to fp16: a near copy",
    "cnn_a_int8": "cnn_a, onnxruntime int8 quantisation: a near copy",
    "cnn_a_pruned": "cnn_a, 30% of weights pruned: a near copy",
    "cnn_b": "cnn_a's architecture, another initialisation",
    "cnn_wide": "cnn_a's family, twice as wide",
    "keras_cnn": "a Keras CNN of another layout",
    "mlp": "an MLP: unrelated",
    "transformer": "a transformer encoder: unrelated",
}


def example_paths() -> list[Path]:
    return sorted(Path(str(files("hnn_jax") / "examples")).glob("*.onnx"))


def main() -> int:
    import hnn_jax
    from hnn_jax import converters
    from hnn_jax.hashcode import relation, relation_bands, relation_thresholds
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
        print(f"  {name:<{width}}  {code}  {EXAMPLES.get(name, '')}")
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
        print(f"  {name:<{width}}  -> {n1} ({d1} bits: {relation(d1, len(code), code.version)[0]}), "
              f"then {n2} ({d2} bits: {relation(d2, len(code), code.version)[0]})")
    nbits = len(codes[0])
    bands = [f"{low}-{high} {key}"
             for key, low, high in relation_bands(relation_thresholds(codes[0].version, nbits), nbits)[:3]]
    print(f"\nRelations (measured for this hasher at {nbits} bits, its hasher.json): "
          f"{', '.join(bands)}, more: unrelated. Expect cnn_a's copies in the first band, and cnn_b "
          "and cnn_wide nearer to it than the MLP and the transformer; another initialisation and another "
          "width of a family lie about equally far, so which of the middle bands they land in varies.")
    return 0


if __name__ == "__main__":
    from hnn_jax.config import use_compilation_cache
    use_compilation_cache()  # a process of its own, as the console script's (README, "Compilation cache")
    sys.exit(main())
