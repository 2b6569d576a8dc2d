"""The `hnn-jax` command line: hash models, compare them, build and search Hamming indexes.

Exit codes: 0 success; 1 nothing matched where a match was asked for (e.g. `search --radius`);
2 bad input (missing or corrupt file, unsupported model, mismatched index, bad arguments), reported
as one line `hnn-jax: error: ...` on stderr; `--debug` adds the traceback, `-v` / `-vv` the
library's INFO / DEBUG log (the "hnn_jax" logger: sizes, timings, which exporter ran).

Each command is a module registered in COMMANDS as `name: (module, one-line help)`. The module
defines

    def add_arguments(parser):               # the `hnn-jax NAME` subparser, already created
        parser.add_argument(...)              # or parser.add_subparsers(...) for nested commands
        parser.set_defaults(func=run)         # run(args) -> int exit code (None means 0)

The module is imported only when its command is used (or its own --help asked for), so heavy
top-level imports there (the research commands' hnn_jax.training) do not slow down the other
commands or `hnn-jax --help`. Parsers get `--debug`, `-v` and the one-line error style
automatically.
Handlers signal bad input by raising an HNNError (CommandLineError for a bad option; exit 2) and
"no match" by returning 1. What several commands share is in common.py.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import traceback
import warnings

from hnn_jax.cli.common import EXIT_BAD_INPUT, EXIT_OK, PROG, stderr
from hnn_jax.errors import CommandLineError, HNNError, first_line

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("hnn_jax.cli.demo", "hash the example models bundled with hnn-jax"),
    "hash": ("hnn_jax.cli.hash", "print the code of each model"),
    "lineage": ("hnn_jax.cli.lineage", "the family trees of a folder of models (or an index)"),
    "compare": ("hnn_jax.cli.compare", "Hamming distance between two models and what it suggests"),
    "index": ("hnn_jax.cli.index", "build, extend or describe an index file"),
    "search": ("hnn_jax.cli.search", "nearest models in an index"),
    "zoo": ("hnn_jax.training.zoo", "build and inspect the training model zoo"),
    "train": ("hnn_jax.training.train", "train the hashing network"),
    "eval": ("hnn_jax.training.evaluate", "retrieval metrics of a hasher and the baselines"),
}
"""The commands, in --help order: name -> (module with add_arguments(parser), one-line help)."""

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
    """ArgumentParser with shared --debug and -v flags and one-line errors, exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help="show warnings and full tracebacks")
        self.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                          help="log what hnn-jax does to stderr (-v: steps, -vv: sizes and timings too)")

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def _command_word(argv) -> str | None:
    """The subcommand named in argv (the first word not starting with '-'), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def _add_commands(sub, argv) -> None:
    import importlib
    wanted = _command_word(argv)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name != wanted:
            continue  # configured only when used: importing the module may be slow
        try:
            add_arguments = importlib.import_module(module_name).add_arguments
        except Exception as e:  # noqa: BLE001 - a broken module must not break other commands
            error = (f"'{name}' is unavailable: {module_name} failed to load "
                     f"({type(e).__name__}: {e})")
            p.set_defaults(func=lambda args, error=error: _raise(CommandLineError(error)))
            continue
        add_arguments(p)


def _raise(error):
    raise error


def build_parser(argv=()) -> argparse.ArgumentParser:
    """The `hnn-jax` parser: every command of COMMANDS listed, only the one named in argv
    configured (its module imported)."""
    from hnn_jax import __version__
    parser = _Parser(
        prog=PROG, epilog=_EPILOG,
        description="hnn-jax: a perceptual hash for neural networks. Related models get nearby "
        "binary codes; the Hamming distance between codes (number of differing bits) tells how "
        "related two models are.")
    parser.set_defaults(debug=False, verbose=0)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_Parser)
    _add_commands(sub, argv)
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit status (the console script exits with it)."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings(), _logging_to_stderr(args.verbose):
            if not args.debug:
                warnings.simplefilter("ignore")
            func = getattr(args, "func", None)
            if func is None:
                raise CommandLineError(f"'{args.command}' has no handler (its add_arguments must call "
                               "parser.set_defaults(func=...))")
            status = func(args)
    except KeyboardInterrupt:
        stderr("interrupted")
        return 130
    except (HNNError, OSError) as e:
        if args.debug:
            traceback.print_exc()
        stderr(f"error: {first_line(e)}")
        return EXIT_BAD_INPUT
    except Exception as e:  # noqa: BLE001 - converters can meet anything in a foreign file
        if args.debug:
            traceback.print_exc()
        first = first_line(e) if str(e).strip() else ""
        stderr(f"error: unexpected {type(e).__name__}: {first} (rerun with --debug for details)")
        return EXIT_BAD_INPUT
    return EXIT_OK if status is None else int(status)


class _StderrHandler(logging.Handler):
    """Log records on stderr as the command's own lines ("hnn-jax: warning: ..."), through
    tqdm.write so that a progress bar stays whole."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        where = "warning" if record.levelno >= logging.WARNING else record.name
        tqdm.write(f"{PROG}: {where}: {record.getMessage()}", file=sys.stderr)


@contextlib.contextmanager
def _logging_to_stderr(verbose: int):
    """The "hnn_jax" logger's warnings (say, a build's skipped models) on stderr while a command
    runs, and its INFO (-v) or DEBUG (-vv) records too."""
    logger = logging.getLogger("hnn_jax")
    handler = _StderrHandler()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if not verbose else logging.INFO if verbose == 1 else logging.DEBUG)
    logger.propagate = False  # a root handler that a dependency configured would print them twice
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def run() -> None:
    """The console script: main() in a process of its own, which keeps compiled hashers on disk
    between runs (config.use_compilation_cache; HNN_JAX_CACHE=off turns it off)."""
    from hnn_jax.config import use_compilation_cache
    use_compilation_cache()
    sys.exit(main())
