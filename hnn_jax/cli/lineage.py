"""`hnn-jax lineage`: the family trees of a folder of models (or of an index's codes)."""

from __future__ import annotations

import json
import sys

from hnn_jax.cli.common import EXIT_OK, PATHS_HELP, add_hash_inputs, add_length, entries


def add_arguments(parser) -> None:
    parser.description = (
        "Hash the models (or read an index file's codes) and print their lineage trees: "
        "models are linked when their architecture parts agree and their weight parts are closer "
        "than the measured chance allows; each tree is the minimum spanning tree of those links, "
        "rooted at its medoid, with the weight distance and the chance of each edge.")
    parser.epilog = "examples:\n  hnn-jax lineage models/\n  hnn-jax lineage models.hnnidx --json\n"
    add_hash_inputs(parser, paths_help=PATHS_HELP + " Or one index file (.hnnidx).")
    add_length(parser)
    parser.add_argument("--max-chance", type=float, default=1e-6,
                        help="link two models when the measured chance of their weight parts being this close "
                             "is at most this (default 1e-6)")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list of {model, parent, distances, chance}")
    parser.set_defaults(func=run)


def run(args) -> int:
    from hnn_jax import lineage
    from hnn_jax.hashcode import format_chance
    if len(args.paths) == 1 and str(args.paths[0]).endswith(".hnnidx"):
        from hnn_jax.index import HammingIndex
        index = HammingIndex.load(args.paths[0])
        ids = index.ids
        codes = [index.get(i)[0] for i in ids]
    else:
        ids, codes, _ = entries(args, args.length)
    edges, roots = lineage.forest(codes, args.max_chance)
    parent_of = {e.child: e for e in edges}
    children: dict[int, list] = {}
    for e in edges:
        children.setdefault(e.parent, []).append(e)
    if args.json:
        json.dump([{"model": ids[i], "parent": ids[parent_of[i].parent] if i in parent_of else None,
                    **({"architecture_distance": parent_of[i].architecture, "weights_distance": parent_of[i].weights,
                        "chance": parent_of[i].chance} if i in parent_of else {})} for i in range(len(ids))],
                  sys.stdout, indent=2)
        print()
        return EXIT_OK

    def show(i: int, depth: int) -> None:
        e = parent_of.get(i)
        link = "" if e is None else f"   (weights {e.weights} bits, chance {format_chance(e.chance)})"
        print(f"{'    ' * depth}{'└── ' if depth else ''}{ids[i]}{link}")
        for child in sorted(children.get(i, []), key=lambda c: c.weights):
            show(child.child, depth + 1)

    for root in sorted(roots, key=lambda r: (-len(children.get(r, [])), ids[r])):
        show(root, 0)
    print(f"{len(roots)} tree{'s' if len(roots) != 1 else ''} over {len(ids)} models; an edge links models whose "
          f"architecture parts agree and whose weight parts are closer than chance allows (<= {args.max_chance:g}); "
          "each tree is rooted at its medoid (which way an edge points, codes cannot tell)")
    return EXIT_OK
