"""The `hnn-jax` command line: hash models, compare them, build and search Hamming indexes.

Exit codes: 0 success; 1 nothing matched where a match was asked for (e.g. `search --radius`);
2 bad input (missing or corrupt file, unsupported model, mismatched index, bad arguments), reported
as one line `hnn-jax: error: ...` on stderr; `--debug` adds the traceback.

Subcommands from other modules (zoo, train, eval, ...) are registered in EXTRA_COMMANDS as
`name: (module, one-line help)`. The module defines

    def add_arguments(parser):               # the `hnn-jax NAME` subparser, already created
        parser.add_argument(...)              # or parser.add_subparsers(...) for nested commands
        parser.set_defaults(func=run)         # run(args) -> int exit code (None means 0)

The module is imported only when its command is used (or its own --help asked for), so heavy
top-level imports there do not slow down the other commands or `hnn-jax --help`; a command is
listed once its module exists and defines add_arguments. Parsers get `--debug` and the one-line error style
automatically. Handlers signal bad input by raising hnn_jax.HNNError (exit 2) and "no match" by
returning 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
import warnings
from pathlib import Path

PROG = "hnn-jax"

EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "zoo": ("hnn_jax.training.zoo", "build and inspect the training model zoo"),
    "train": ("hnn_jax.training.train", "train the hashing network"),
    "eval": ("hnn_jax.training.evaluate", "retrieval metrics of a hasher and the baselines"),
}
"""Subcommands defined in other modules: name -> (module with add_arguments(parser), help)."""

EXIT_OK, EXIT_NO_MATCH, EXIT_BAD_INPUT = 0, 1, 2

_EPILOG = """\
examples:
  hnn-jax demo                                  hash the example models bundled with hnn-jax
  hnn-jax hash model.onnx                       print the code of one model
  hnn-jax hash models/ --json                   every .onnx/.keras/.tflite/.gguf/.pt2/SavedModel under models/
  hnn-jax compare a.onnx b.keras                Hamming distance and what it suggests
  hnn-jax lineage models/                       each model's likely parent, as trees
  hnn-jax index build models/ -o models.hnnidx  hash a folder into an index file
  hnn-jax index add models.hnnidx new.onnx      add models to an existing index
  hnn-jax search models.hnnidx query.onnx -k 5  the 5 indexed models nearest to query.onnx
  hnn-jax search models.hnnidx query.onnx --radius 4 || echo "no near copy"

A model is a path to a .onnx, .keras, .tflite, .gguf or torch.export .pt2 file, or a TensorFlow SavedModel folder;
files and folders can be fsspec URLs too (s3://bucket/models/, gs://..., http://host/dir/, file:///abs),
given the protocol's fsspec package (s3fs, gcsfs, aiohttp for http).
Wherever a single model is expected, a code printed by `hnn-jax hash` (hnn2:...) works too.
Pickled PyTorch files (.pt/.pth) are refused: export with torch.onnx.export or torch.export.

exit status: 0 ok, 1 no match found where one was asked for, 2 bad input.
"""


class _Formatter(argparse.HelpFormatter):
    """Wraps one-paragraph descriptions; keeps multi-line text (examples) as written."""

    def _fill_text(self, text, width, indent):
        if "\n" in text.strip():
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class _Parser(argparse.ArgumentParser):
    """ArgumentParser with a shared --debug flag and one-line errors, exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help="show warnings and full tracebacks")

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


class _CLIError(Exception):
    """Bad command-line input found after parsing (exit 2)."""


# ------------------------------------------------------------------------------- helpers
def _stderr(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def hash_models(paths, *, progress: bool = True, debug: bool = False, skip_errors: bool = False,
                length: int | None = None):
    """Yield (path, HashCode, probe status) for the models named by `paths` (files.hash_files),
    codes of `length` bits (default the hasher's trained length),
    reporting on stderr each model skipped (skip_errors), each probe that did not run, and with
    --debug the warnings conversion raised. Every model failing is an error."""
    from tqdm import tqdm

    from hnn_jax.files import hash_files

    failures = total = 0
    for result in hash_files(paths, skip_errors=skip_errors, progress=progress, bits=length):
        total += 1
        if debug:
            for message in result.warnings:
                tqdm.write(f"{PROG}: warning: {result.path}: {message}", file=sys.stderr)
        if result.error is not None:
            failures += 1
            tqdm.write(f"{PROG}: warning: could not hash {result.error} (skipped)", file=sys.stderr)
            continue
        if result.probe != "ok":
            tqdm.write(f"{PROG}: warning: {result.path}: execution probe {result.probe}; code from static "
                       "features only", file=sys.stderr)
        yield result.path, result.code, result.probe
    if failures and failures == total:
        raise _CLIError(f"none of the {total} model{'s' if total != 1 else ''} could be hashed "
                        "(each skipped above)")


def _example_code() -> str:
    """A code of the shipped hasher's version for --help examples (read from its hasher.json,
    so --help does not load JAX)."""
    from hnn_jax.hashcode import SHIPPED_META
    try:
        meta = json.loads(SHIPPED_META.read_text())
        version, weights = meta["version"], meta["config"]["instance_bits"]
        nbits = meta["bits"]
    except (OSError, ValueError, KeyError):
        version, nbits, weights = "VERSION", 256, 208
    return f"hnn2:{version}:{nbits - weights}+{weights}:" + "0f" * (nbits // 8)


def _looks_like_code(text: str) -> bool:
    return text.startswith(("hnn1:", "hnn2:")) and not Path(text).exists()


def _code_of(model: str, args, length: int | None = None):
    """HashCode for a model path (a code of `length` bits, default the hasher's) or a code text;
    returns (label, code)."""
    from hnn_jax import HashCode
    if _looks_like_code(model):
        return model, HashCode.from_str(model)
    results = list(hash_models([model], progress=False, debug=args.debug, length=length))
    if len(results) != 1:
        raise _CLIError(f"{model} holds {len(results)} models; give one model file here")
    return str(results[0][0]), results[0][1]


def _bits_text(code) -> str:
    return "".join(map(str, code.bits.tolist()))


# ------------------------------------------------------------------------------- commands
def _cmd_demo(args) -> int:
    from hnn_jax import demo
    return demo.main()


def _cmd_hash(args) -> int:
    results = []
    for path, code, probe in hash_models(args.paths, progress=not args.quiet, debug=args.debug,
                                         skip_errors=args.skip_errors, length=args.length):
        if args.json:
            entry = {"path": str(path), "code": str(code), "nbits": len(code),
                     "version": code.version, "probe": probe}
            if args.bits:
                entry["bits"] = _bits_text(code)
            results.append(entry)
        else:
            print(f"{_bits_text(code) if args.bits else code}  {path}", flush=True)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    return EXIT_OK


def _cmd_compare(args) -> int:
    from hnn_jax.hashcode import RELATIONS, NoThresholdsError, format_chance
    label_a, a = _code_of(args.a, args, args.length)
    label_b, b = _code_of(args.b, args, len(a))
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


def _cmd_lineage(args) -> int:
    from hnn_jax import lineage
    from hnn_jax.hashcode import format_chance
    if len(args.paths) == 1 and str(args.paths[0]).endswith(".hnnidx"):
        from hnn_jax.index import HammingIndex
        index = HammingIndex.load(args.paths[0])
        ids = index.ids
        codes = [index.get(i)[0] for i in ids]
    else:
        ids, codes, _ = _entries(args, args.length)
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


def _entries(args, length: int | None = None):
    """(ids, codes, metadata) for the models in args.paths, codes of `length` bits."""
    from hnn_jax.files import model_metadata
    ids, codes, metas = [], [], []
    for path, code, probe in hash_models(args.paths, progress=not args.quiet, debug=args.debug,
                                         skip_errors=args.skip_errors, length=length):
        ids.append(str(path))
        codes.append(code)
        metas.append(model_metadata(path, probe))
    if not codes:
        raise _CLIError("no model could be hashed")
    return ids, codes, metas


def _cmd_index_build(args) -> int:
    from hnn_jax.index import HammingIndex
    if args.ray is not None or args.workers is not None:  # hnn_jax.cluster: workers, resumable
        from hnn_jax.cluster import build_index
        if args.batch < 1 or (args.workers is not None and args.workers < 1):
            raise _CLIError("--batch and --workers must be at least 1")
        summary = build_index(args.paths, args.output, ray_address=args.ray, workers=args.workers,
                              batch=args.batch, bits=args.length, resume=not args.no_resume,
                              progress=not args.quiet, debug=args.debug,
                              refresh=60 * args.refresh if args.refresh > 0 else None)
        failed = f", {len(summary.errors)} failed" if summary.errors else ""
        resumed = f", {summary.resumed} from the journal of an earlier run" if summary.resumed else ""
        backend = summary.backend or "workers"
        if summary.workers == 1:
            backend = {"Ray workers": "Ray worker", "local processes": "local process"}.get(backend, backend)
        _stderr(f"indexed {summary.indexed} models{failed}{resumed} in {args.output} "
                f"({summary.workers} {backend}, {summary.seconds:.1f} s)")
        return EXIT_OK
    ids, codes, metas = _entries(args, args.length)
    index = HammingIndex()
    index.add_many(codes, ids, metas)
    index.save(args.output)
    _stderr(f"indexed {len(index)} models ({index.nbits}-bit codes) in {args.output}")
    return EXIT_OK


def _cmd_index_add(args) -> int:
    from hnn_jax.index import HammingIndex
    index = HammingIndex.load(args.index)
    ids, codes, metas = _entries(args, index.nbits)
    present = [i for i in ids if i in index]
    if present and not args.replace:
        raise _CLIError(f"{present[0]} is already in {args.index} (use --replace to update it)")
    index.remove_many(present)
    index.add_many(codes, ids, metas)
    index.save(args.index)
    _stderr(f"added {len(ids)} model{'s' if len(ids) != 1 else ''} to {args.index} ({len(index)} in all)")
    return EXIT_OK


def _cmd_index_info(args) -> int:
    from hnn_jax.index import FORMAT_VERSION, HammingIndex
    index = HammingIndex.load(args.index)
    info = {"path": args.index, "count": len(index), "nbits": index.nbits,
            "arch_bits": index.arch_bits, "code_version": index.version, "format_version": FORMAT_VERSION}
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        print()
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return EXIT_OK


def _cmd_search(args) -> int:
    from hnn_jax.index import HammingIndex
    if args.k < 1:
        raise _CLIError(f"-k must be at least 1, got {args.k}")
    if args.radius is not None and args.radius < 0:
        raise _CLIError(f"--radius must be >= 0, got {args.radius}")
    from hnn_jax.hashcode import NoThresholdsError, format_chance
    index = HammingIndex.load(args.index)  # a bad index fails before the model is hashed
    label, query = _code_of(args.model, args, index.nbits)  # codes as long as the index's
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
        _stderr(f"no match {where}")
        return EXIT_NO_MATCH
    return EXIT_OK


# ------------------------------------------------------------------------------- parser
PATHS_HELP = ("model files or folders: local paths or fsspec URLs (s3://bucket/models/ needs s3fs, "
              "gs://... gcsfs, http://host/dir/ aiohttp; file:///abs/path)")


def _add_hash_inputs(p, *, paths_help: str) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help=paths_help)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--skip-errors", action="store_true",
                   help="skip models that cannot be read or converted (warn on stderr)")


def _add_length(p) -> None:
    p.add_argument("--length", type=int, choices=(64, 128, 256), metavar="{64,128,256}",
                   help="code length: the hasher's own (default; 256 for the shipped one, the shortest whose "
                   "weight part keeps chance matches below 1e-6), or a longer one with a longer weight part")


def _add_builtin_commands(sub) -> None:
    p = sub.add_parser("demo", help="hash the example models bundled with hnn-jax",
                       description="Hash the example ONNX models bundled with hnn-jax and print "
                       "their codes, the Hamming-distance table and each model's nearest "
                       "neighbours (same as `python -m hnn_jax.demo`).")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "hash", help="print the code of each model",
        description="Print one line per model: its code (hnn2:<version>:<arch>+<weights>:<hex>) and its "
        "path. Folders are searched recursively for .onnx, .keras, .tflite, .gguf, .pt2 files and SavedModel "
        "folders. A progress bar goes to stderr when it is a terminal.",
        epilog="examples:\n  hnn-jax hash model.onnx\n  hnn-jax hash models/ --json > codes.json"
               "\n  hnn-jax hash a.onnx b.pt2 --bits        # 0/1 bits instead of hex"
               "\n  hnn-jax hash model.onnx --length 256     # a lineage code\n")
    _add_hash_inputs(p, paths_help=PATHS_HELP)
    _add_length(p)
    p.add_argument("--json", action="store_true",
                   help="print a JSON list of {path, code, nbits, version, probe}")
    p.add_argument("--bits", action="store_true", help="print the bits as 0/1 characters")
    p.set_defaults(func=_cmd_hash)

    p = sub.add_parser(
        "lineage", help="the family trees of a folder of models (or an index)",
        description="Hash the models (or read an index file's codes) and print their lineage trees: "
        "models are linked when their architecture parts agree and their weight parts are closer "
        "than the measured chance allows; each tree is the minimum spanning tree of those links, "
        "rooted at its medoid, with the weight distance and the chance of each edge.",
        epilog="examples:\n  hnn-jax lineage models/\n  hnn-jax lineage models.hnnidx --json\n")
    _add_hash_inputs(p, paths_help=PATHS_HELP + " Or one index file (.hnnidx).")
    _add_length(p)
    p.add_argument("--max-chance", type=float, default=1e-6,
                   help="link two models when the measured chance of their weight parts being this close "
                        "is at most this (default 1e-6)")
    p.add_argument("--json", action="store_true", help="print a JSON list of {model, parent, distances, chance}")
    p.set_defaults(func=_cmd_lineage)

    p = sub.add_parser(
        "compare", help="Hamming distance between two models and what it suggests",
        description="Hash two models (or take their codes) and print the Hamming distance of the "
        "whole code and of each part (architecture, weights), the relation it suggests from the bands "
        "measured for the codes' hasher (its hasher.json), and the measured chance that two "
        "independent models of one architecture have weight parts this close.",
        epilog="examples:\n  hnn-jax compare resnet.onnx resnet_int8.onnx\n"
               f"  hnn-jax compare model.onnx {_example_code()} --json\n")
    p.add_argument("a", metavar="A", help="model path or code")
    p.add_argument("b", metavar="B", help="model path or code")
    _add_length(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("index", help="build, extend or describe an index file",
                       description="Hamming index files: one file holding the codes, ids "
                       "(model paths) and metadata of many models.",
                       epilog="examples:\n  hnn-jax index build models/ -o models.hnnidx\n"
                              "  hnn-jax index add models.hnnidx new/ other.onnx\n"
                              "  hnn-jax index info models.hnnidx\n")
    isub = p.add_subparsers(dest="index_command", metavar="COMMAND", required=True)
    q = isub.add_parser("build", help="hash models into a new index file",
                        description="Hash every model under the given paths into a new index "
                        "file (overwritten if it exists). Each entry's id is the model's path as "
                        "found from the arguments; its metadata holds the absolute path, the "
                        "format and the probe status.",
                        epilog="example:\n  hnn-jax index build models/ extra.onnx -o models.hnnidx\n")
    _add_hash_inputs(q, paths_help=PATHS_HELP)
    q.add_argument("-o", "--output", required=True, metavar="FILE", help="index file to write")
    _add_length(q)
    w = q.add_argument_group(
        "workers", "Convert and hash on a Ray cluster or in local processes: the same index, a model "
        "that fails is recorded and skipped (as --skip-errors), and a killed job rerun with the same "
        "-o resumes from FILE.journal. Model paths must be readable at the same path on every node, or "
        "be URLs every node can reach (s3://bucket/models/, with s3fs installed on each).")
    w.add_argument("--ray", metavar="ADDRESS", help="run on Ray: auto (the running cluster), "
                   "HOST:PORT, ray://HOST:PORT, or local (start one on this machine, loopback only); "
                   "needs pip install 'hnn-jax[ray]'")
    w.add_argument("--workers", type=int, metavar="N",
                   help="worker count (default: one per CPU of the cluster); without --ray, N local processes")
    w.add_argument("--batch", type=int, default=32, metavar="N",
                   help="models per task, hashed in one call (default 32)")
    w.add_argument("--no-resume", action="store_true", help="ignore the journal of an earlier run")
    w.add_argument("--refresh", type=float, default=10, metavar="MIN",
                   help="rewrite FILE with the models done so far every MIN minutes while the job "
                        "runs, so it can be searched before the end (default 10; 0: only at the end)")
    q.set_defaults(func=_cmd_index_build)
    q = isub.add_parser("add", help="add models to an existing index file",
                        description="Hash models and add them to an index file made by "
                        "`index build`. The codes must come from the same hasher as the index.",
                        epilog="example:\n  hnn-jax index add models.hnnidx new_model.onnx\n")
    q.add_argument("index", metavar="FILE", help="index file")
    _add_hash_inputs(q, paths_help=PATHS_HELP.replace("folders", "folders to add", 1))
    q.add_argument("--replace", action="store_true",
                   help="re-hash models already in the index instead of refusing")
    q.set_defaults(func=_cmd_index_add)
    q = isub.add_parser("info", help="size, code length and hasher version of an index",
                        epilog="example:\n  hnn-jax index info models.hnnidx\n")
    q.add_argument("index", metavar="FILE", help="index file")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=_cmd_index_info)

    p = sub.add_parser(
        "search", help="nearest models in an index",
        description="Print the k indexed models nearest to MODEL by Hamming distance (nearest "
        "first, ties in insertion order), each with its architecture and weight distances, the "
        "relation they suggest and the chance that independent models lie that close. With "
        "--radius, only those within R bits; exit status 1 when there are none.",
        epilog="examples:\n  hnn-jax search models.hnnidx query.onnx -k 5\n"
               "  hnn-jax search models.hnnidx query.onnx --radius 0   # exact duplicates\n"
               "  hnn-jax search models.hnnidx query.onnx --order weights   # copies and derivatives first\n"
               f"  hnn-jax search models.hnnidx {_example_code()} --json\n")
    p.add_argument("index", metavar="FILE", help="index file (from `hnn-jax index build`)")
    p.add_argument("model", metavar="MODEL", help="model path or code")
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--radius", "-r", type=int, metavar="R",
                   help="only results within R bits (of the distance ranked first)")
    p.add_argument("--order", choices=("total", "architecture", "weights"), default="total",
                   help="rank by the whole code (default), by the architecture part then the weights "
                        "(relatives), or by the weights then the architecture (copies)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_search)


def _command_word(argv) -> str | None:
    """The subcommand named in argv (the first word not starting with '-'), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def _defines_add_arguments(module_name: str) -> bool:
    """Whether the module exists and its source defines add_arguments, without importing it."""
    import importlib.util
    try:
        spec = importlib.util.find_spec(module_name)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            return spec is not None and spec.origin is not None  # compiled: assume so
        return "def add_arguments(" in Path(spec.origin).read_text(encoding="utf-8")
    except (ImportError, ValueError, OSError):
        return False


def _add_extra_commands(sub, argv) -> None:
    import importlib
    wanted = _command_word(argv)
    for name, (module_name, help_text) in EXTRA_COMMANDS.items():
        if not _defines_add_arguments(module_name):
            continue  # not written yet
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name != wanted:
            continue  # configured only when used: importing the module may be slow
        try:
            module = importlib.import_module(module_name)
            add_arguments = module.add_arguments
        except Exception as e:  # noqa: BLE001 - a broken module must not break other commands
            error = (f"'{name}' is unavailable: {module_name} failed to load "
                     f"({type(e).__name__}: {e})")
            p.set_defaults(func=lambda args, error=error: _raise(_CLIError(error)))
            continue
        add_arguments(p)


def _raise(error):
    raise error


def build_parser(argv=()) -> argparse.ArgumentParser:
    """The `hnn-jax` parser: built-in commands plus EXTRA_COMMANDS (only the one named in argv
    is fully configured)."""
    from hnn_jax import __version__
    parser = _Parser(
        prog=PROG, epilog=_EPILOG,
        description="hnn-jax: a perceptual hash for neural networks. Related models get nearby "
        "binary codes; the Hamming distance between codes (number of differing bits) tells how "
        "related two models are.")
    parser.set_defaults(debug=False)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_Parser)
    _add_builtin_commands(sub)
    _add_extra_commands(sub, argv)
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit status (the console script exits with it)."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    from hnn_jax.errors import HNNError, first_line
    try:
        with warnings.catch_warnings():
            if not args.debug:
                warnings.simplefilter("ignore")
            func = getattr(args, "func", None)
            if func is None:
                raise _CLIError(f"'{args.command}' has no handler (its add_arguments must call "
                                "parser.set_defaults(func=...))")
            status = func(args)
    except KeyboardInterrupt:
        _stderr("interrupted")
        return 130
    except (HNNError, _CLIError, OSError) as e:
        if args.debug:
            traceback.print_exc()
        _stderr(f"error: {first_line(e)}")
        return EXIT_BAD_INPUT
    except Exception as e:  # noqa: BLE001 - converters can meet anything in a foreign file
        if args.debug:
            traceback.print_exc()
        first = first_line(e) if str(e).strip() else ""
        _stderr(f"error: unexpected {type(e).__name__}: {first} (rerun with --debug for details)")
        return EXIT_BAD_INPUT
    return EXIT_OK if status is None else int(status)


def run() -> None:
    """The console script: main() in a process of its own, which keeps compiled hashers on disk
    between runs (config.use_compilation_cache; HNN_JAX_CACHE=off turns it off)."""
    from hnn_jax.config import use_compilation_cache
    use_compilation_cache()
    sys.exit(main())


if __name__ == "__main__":
    run()
