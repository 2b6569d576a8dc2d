"""`hnn-jax search`: the models of an index nearest to a model (or a code)."""

from __future__ import annotations

import json
import sys

from hnn_jax.cli.common import EXIT_NO_MATCH, EXIT_OK, code_of, example_code, stderr
from hnn_jax.errors import CommandLineError


def add_arguments(parser) -> None:
    parser.description = (
        "Print the k indexed models nearest to MODEL by Hamming distance (nearest "
        "first, ties in insertion order), each with its architecture and weight distances, the "
        "relation they suggest and the chance that independent models lie that close. With "
        "--radius, only those within R bits; exit status 1 when there are none.")
    parser.epilog = ("examples:\n  hnn-jax search models.hnnidx query.onnx -k 5\n"
                     "  hnn-jax search models.hnnidx query.onnx --radius 0   # exact duplicates\n"
                     "  hnn-jax search models.hnnidx query.onnx --order weights   # copies and derivatives first\n"
                     f"  hnn-jax search models.hnnidx {example_code()} --json\n")
    parser.add_argument("index", metavar="FILE", help="index file (from `hnn-jax index build`)")
    parser.add_argument("model", metavar="MODEL", help="model path or code")
    parser.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    parser.add_argument("--radius", "-r", type=int, metavar="R",
                        help="only results within R bits (of the distance ranked first)")
    parser.add_argument("--order", choices=("total", "architecture", "weights"), default="total",
                        help="rank by the whole code (default), by the architecture part then the weights "
                             "(relatives), or by the weights then the architecture (copies)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    from hnn_jax.index import HammingIndex
    if args.k < 1:
        raise CommandLineError(f"-k must be at least 1, got {args.k}")
    if args.radius is not None and args.radius < 0:
        raise CommandLineError(f"--radius must be >= 0, got {args.radius}")
    from hnn_jax.hashcode import NoThresholdsError, format_chance
    index = HammingIndex.load(args.index)  # a bad index fails before the model is hashed
    label, query = code_of(args.model, args, index.nbits)  # codes as long as the index's
    matches = index.search(query, k=args.k, radius=args.radius, order=args.order)
    try:
        relations = [(m.relation()[0], m.chance) for m in matches]
    except NoThresholdsError:
        relations = [(None, None)] * len(matches)
    if args.json:
        json.dump({"query": label, "code": str(query), "index": args.index, "order": args.order,
                   "results": [{"rank": r, "id": m.id, "distance": m.distance,
                                "architecture_distance": m.distances.architecture,
                                "weights_distance": m.distances.weights, "relation": rel, "chance": chance,
                                "code": str(m.code), "metadata": m.metadata}
                               for r, (m, (rel, chance)) in enumerate(zip(matches, relations), 1)]},
                  sys.stdout, indent=2)
        print()
    else:
        if matches:
            print(f"{'rank':>4}  {'distance':>8}  {'arch':>4}  {'weights':>7}  {'relation':<17}  {'chance':>8}  id")
        for r, (m, (rel, chance)) in enumerate(zip(matches, relations), 1):
            shown = "" if chance is None else format_chance(chance)
            print(f"{r:>4}  {m.distance:>8}  {m.distances.architecture:>4}  {m.distances.weights:>7}  "
                  f"{rel or 'unknown':<17}  {shown:>8}  {m.id}")
    if not matches:
        where = (f"within {args.radius} bits of {label}" if args.radius is not None
                 else f"for {label} (the index is empty)")
        stderr(f"no match {where}")
        return EXIT_NO_MATCH
    return EXIT_OK
