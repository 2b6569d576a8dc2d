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
    from hnn_jax.hashcode import RELATIONS, format_chance
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
    arch_bits, nbits = codes[0].arch_bits, len(codes[0])
    print(f"\n{nbits}-bit codes ({codes[0].version}): {arch_bits} architecture bits, then {nbits - arch_bits} "
          "weight bits")
    for name, code in zip(names, codes):
        print(f"  {name:<{width}}  {code.to_bytes().hex()}  {EXAMPLES.get(name, '')}")
    print("\nHamming distances, architecture part / weight part:")
    print(" " * (width + 2) + "".join(f"{i:>8d}" for i in range(len(names))))
    for i, (name, a) in enumerate(zip(names, codes)):
        cells = (a.distances(b) for b in codes)
        print(f"  {name:<{width}}" + "".join(f"{f'{d.architecture}/{d.weights}':>8}" for d in cells) + f"   [{i}]")
    print("\nNearest neighbours (index search by architecture, then weights):")
    index = HammingIndex()
    index.add_many(codes, names)
    for name, code in zip(names, codes):
        # ties come back in insertion order (names are sorted); the model itself is among them
        m1, m2 = [m for m in index.search(code, k=3, order="architecture") if m.id != name][:2]
        print(f"  {name:<{width}}  -> {_describe(m1, format_chance)}, then {_describe(m2, format_chance)}")
    measured = codes[0].bands
    arch = measured.architecture
    same_model = measured.weights_band(nbits - arch_bits)
    print(f"\nBands (measured for this hasher; its hasher.json): {RELATIONS[0][0]} when the architecture part "
          f"differs in <= {arch[0]} bits and the weights in <= {same_model.same_model} of {nbits - arch_bits} "
          f"(independent models of one architecture land there with chance <= 1e-6, measured on "
          f"{same_model.pairs:,} pairs); {RELATIONS[1][0]} when the architecture differs in <= {arch[1]} bits; "
          f"{RELATIONS[2][0]} in <= {arch[2]}; more: unrelated. The architecture part reads no sizes, so "
          "cnn_wide, another width of cnn_a, reads as the same architecture with other weights.")
    return 0


def _describe(match, format_chance) -> str:
    d = match.distances
    return (f"{match.id} ({d.architecture}/{d.weights} bits: {match.relation()[0]}, "
            f"chance {format_chance(match.chance)})")


if __name__ == "__main__":
    from hnn_jax.config import use_compilation_cache
    use_compilation_cache()  # a process of its own, as the console script's (docs/network.md, "Compilation cache")
    sys.exit(main())
