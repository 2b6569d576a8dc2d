"""`hnn-jax hash`: print the code of each model."""

from __future__ import annotations

import json
import sys

from hnn_jax.cli.common import EXIT_OK, PATHS_HELP, add_hash_inputs, add_length, hash_models


def add_arguments(parser) -> None:
    parser.description = (
        "Print one line per model: its code (hnn2:<version>:<arch>+<weights>:<hex>) and its "
        "path. Folders are searched recursively for .onnx, .keras, .tflite, .gguf, .pt2 files and SavedModel "
        "folders. A progress bar goes to stderr when it is a terminal.")
    parser.epilog = ("examples:\n  hnn-jax hash model.onnx\n  hnn-jax hash models/ --json > codes.json"
                     "\n  hnn-jax hash a.onnx b.pt2 --bits        # 0/1 bits instead of hex"
                     "\n  hnn-jax hash model.onnx --length 256     # a lineage code\n")
    add_hash_inputs(parser, paths_help=PATHS_HELP)
    add_length(parser)
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list of {path, code, nbits, version, probe}")
    parser.add_argument("--bits", action="store_true", help="print the bits as 0/1 characters")
    parser.set_defaults(func=run)


def _bits_text(code) -> str:
    return "".join(map(str, code.bits.tolist()))


def run(args) -> int:
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
