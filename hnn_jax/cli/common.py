"""What the `hnn-jax` commands share: exit codes, hashing the models named
on the command line (with their options), and reading a model argument that may be a code."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from hnn_jax.errors import CommandLineError

log = logging.getLogger(__name__)  # main() prints its warnings as "hnn-jax: warning: ..."

PROG = "hnn-jax"

EXIT_OK, EXIT_NO_MATCH, EXIT_BAD_INPUT = 0, 1, 2

PATHS_HELP = ("model files or folders: local paths or fsspec URLs (s3://bucket/models/ needs s3fs, "
              "gs://... gcsfs, http://host/dir/ aiohttp; file:///abs/path)")


def stderr(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def add_hash_inputs(p, *, paths_help: str) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help=paths_help)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--skip-errors", action="store_true",
                   help="skip models that cannot be read or converted (warn on stderr)")


def add_length(p) -> None:
    p.add_argument("--length", type=int, choices=(64, 128, 256), metavar="{64,128,256}",
                   help="code length: the hasher's own (default; 256 for the shipped one, the shortest whose "
                   "weight part keeps chance matches below 1e-6), or a longer one with a longer weight part")


def hash_models(paths, *, progress: bool = True, debug: bool = False, skip_errors: bool = False,
                length: int | None = None):
    """Yield (path, HashCode, probe status) for the models named by `paths` (files.hash_files),
    codes of `length` bits (default the hasher's trained length). Each model skipped
    (skip_errors), each probe that did not run, and with --debug the warnings conversion raised
    are warnings of the hnn_jax logger (main() prints them on stderr). Every model failing is an
    error."""
    from hnn_jax.files import hash_files

    failures = total = 0
    for result in hash_files(paths, skip_errors=skip_errors, progress=progress, bits=length):
        total += 1
        if debug:
            for message in result.warnings:
                log.warning(f"{result.path}: {message}")
        if result.error is not None:
            failures += 1
            log.warning(f"could not hash {result.error} (skipped)")
            continue
        if result.probe != "ok":
            log.warning(f"{result.path}: execution probe {result.probe}; code from static features only")
        yield result.path, result.code, result.probe
    if failures and failures == total:
        raise CommandLineError(f"none of the {total} model{'s' if total != 1 else ''} could be hashed "
                       "(each skipped above)")


def entries(args, length: int | None = None):
    """(ids, codes, metadata) for the models in args.paths, codes of `length` bits."""
    from hnn_jax.files import model_metadata
    ids, codes, metas = [], [], []
    for path, code, probe in hash_models(args.paths, progress=not args.quiet, debug=args.debug,
                                         skip_errors=args.skip_errors, length=length):
        ids.append(str(path))
        codes.append(code)
        metas.append(model_metadata(path, probe))
    if not codes:
        raise CommandLineError("no model could be hashed")
    return ids, codes, metas


def _looks_like_code(text: str) -> bool:
    return text.startswith(("hnn1:", "hnn2:")) and not Path(text).exists()


def code_of(model: str, args, length: int | None = None):
    """HashCode for a model path (a code of `length` bits, default the hasher's) or a code text;
    returns (label, code)."""
    from hnn_jax import HashCode
    if _looks_like_code(model):
        return model, HashCode.from_str(model)
    results = list(hash_models([model], progress=False, debug=args.debug, length=length))
    if len(results) != 1:
        raise CommandLineError(f"{model} holds {len(results)} models; give one model file here")
    return str(results[0][0]), results[0][1]


def example_code() -> str:
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
