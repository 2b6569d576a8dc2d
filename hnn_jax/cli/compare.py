"""`hnn-jax compare`: the Hamming distance between two models (or codes) and what it suggests."""

from __future__ import annotations

import json
import sys

from hnn_jax.cli.common import EXIT_OK, add_length, code_of, example_code


def add_arguments(parser) -> None:
    parser.description = (
        "Hash two models (or take their codes) and print the Hamming distance of the "
        "whole code and of each part (architecture, weights), the relation it suggests from the bands "
        "measured for the codes' hasher (its hasher.json), and the measured chance that two "
        "independent models of one architecture have weight parts this close.")
    parser.epilog = ("examples:\n  hnn-jax compare resnet.onnx resnet_int8.onnx\n"
                     f"  hnn-jax compare model.onnx {example_code()} --json\n")
    parser.add_argument("a", metavar="A", help="model path or code")
    parser.add_argument("b", metavar="B", help="model path or code")
    add_length(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    from hnn_jax.hashcode import RELATIONS, NoThresholdsError, format_chance
    label_a, a = code_of(args.a, args, args.length)
    label_b, b = code_of(args.b, args, len(a))
    distances = a.distances(b)
    try:
        found = a.compare(b)
        key, description, chance = found.relation, found.description, found.chance
        measured = a.bands_for(b)
        weight_band = measured.weights_band(len(a) - a.arch_bits).same_model
    except NoThresholdsError as e:
        key, description, chance, measured, weight_band = None, str(e), None, None, None
    if args.json:
        json.dump({"a": label_a, "b": label_b, "code_a": str(a), "code_b": str(b),
                   "distance": distances.total, "architecture_distance": distances.architecture,
                   "weights_distance": distances.weights, "nbits": len(a), "arch_bits": a.arch_bits,
                   "relation": key, "description": description, "chance": chance,
                   "thresholds": None if measured is None else {
                       "architecture": list(measured.architecture), "weights_same_model": weight_band}},
                  sys.stdout, indent=2)
        print()
    else:
        print(f"distance: {distances.total} of {len(a)} bits (architecture {distances.architecture} of "
              f"{a.arch_bits}, weights {distances.weights} of {len(a) - a.arch_bits})")
        print(f"relation: {key} ({description})" if key else f"relation: unknown ({description})")
        if measured is not None:
            print(f"chance: {format_chance(chance)} that two independent models of one architecture have "
                  "weight parts this close (measured null, hasher.json)")
            text = ", ".join(f"<= {b} {k}" for b, (k, _) in zip(measured.architecture, RELATIONS))
            print(f"bands: architecture {text}; same model also needs weights <= {weight_band} "
                  "(measured for this hasher; hasher.json)")
    return EXIT_OK
