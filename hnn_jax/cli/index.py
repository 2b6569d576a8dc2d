"""`hnn-jax index build|add|info`: index files. `build` runs hnn_jax.cluster.build_index, in this
process or on workers, and prints its summary."""

from __future__ import annotations

import json
import sys

from hnn_jax.cli.common import EXIT_OK, PATHS_HELP, add_hash_inputs, add_length, entries, stderr
from hnn_jax.errors import CommandLineError


def add_arguments(parser) -> None:
    parser.description = ("Hamming index files: one file holding the codes, ids (model paths) and metadata "
                          "of many models.")
    parser.epilog = ("examples:\n  hnn-jax index build models/ -o models.hnnidx\n"
                     "  hnn-jax index add models.hnnidx new/ other.onnx\n"
                     "  hnn-jax index info models.hnnidx\n")
    sub = parser.add_subparsers(dest="index_command", metavar="COMMAND", required=True)
    q = sub.add_parser("build", help="hash models into a new index file",
                       description="Hash every model under the given paths into a new index "
                       "file (overwritten if it exists). Each entry's id is the model's path as "
                       "found from the arguments; its metadata holds the absolute path, the "
                       "format and the probe status.",
                       epilog="example:\n  hnn-jax index build models/ extra.onnx -o models.hnnidx\n")
    add_hash_inputs(q, paths_help=PATHS_HELP)
    q.add_argument("-o", "--output", required=True, metavar="FILE", help="index file to write")
    add_length(q)
    w = q.add_argument_group(
        "workers and resuming", "Every build keeps FILE.journal, so a killed build rerun with the same -o "
        "resumes. --ray or --workers convert and hash on a Ray cluster or in local processes: the same "
        "index, and a model that fails is recorded and skipped (as --skip-errors). Model paths must be "
        "readable at the same path on every node, or be URLs every node can reach (s3://bucket/models/, "
        "with s3fs installed on each).")
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
    q.set_defaults(func=run_build)
    q = sub.add_parser("add", help="add models to an existing index file",
                       description="Hash models and add them to an index file made by "
                       "`index build`. The codes must come from the same hasher as the index.",
                       epilog="example:\n  hnn-jax index add models.hnnidx new_model.onnx\n")
    q.add_argument("index", metavar="FILE", help="index file")
    add_hash_inputs(q, paths_help=PATHS_HELP.replace("folders", "folders to add", 1))
    q.add_argument("--replace", action="store_true",
                   help="re-hash models already in the index instead of refusing")
    q.set_defaults(func=run_add)
    q = sub.add_parser("info", help="size, code length and hasher version of an index",
                       epilog="example:\n  hnn-jax index info models.hnnidx\n")
    q.add_argument("index", metavar="FILE", help="index file")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=run_info)


def run_build(args) -> int:
    from hnn_jax.cluster import ProcessRunner, RayRunner, SerialRunner, build_index
    if args.batch < 1 or (args.workers is not None and args.workers < 1):
        raise CommandLineError("--batch and --workers must be at least 1")
    if args.ray is not None:
        runner = RayRunner(args.ray, args.workers)
    elif args.workers is not None:
        runner = ProcessRunner(args.workers)
    else:
        runner = SerialRunner()
    serial = isinstance(runner, SerialRunner)
    summary = build_index(args.paths, args.output, runner=runner, batch=args.batch, bits=args.length,
                          resume=not args.no_resume, progress=not args.quiet, debug=args.debug,
                          skip_errors=args.skip_errors or not serial,  # workers: as --skip-errors
                          refresh=60 * args.refresh if args.refresh > 0 else None)
    resumed = f", {summary.resumed} from the journal of an earlier run" if summary.resumed else ""
    if serial:
        stderr(f"indexed {summary.indexed} models{resumed} ({summary.nbits}-bit codes) in {args.output}")
        return EXIT_OK
    failed = f", {len(summary.errors)} failed" if summary.errors else ""
    backend = summary.backend or "workers"
    if summary.workers == 1:
        backend = {"Ray workers": "Ray worker", "local processes": "local process"}.get(backend, backend)
    stderr(f"indexed {summary.indexed} models{failed}{resumed} in {args.output} "
           f"({summary.workers} {backend}, {summary.seconds:.1f} s)")
    return EXIT_OK


def run_add(args) -> int:
    from hnn_jax.index import HammingIndex
    index = HammingIndex.load(args.index)
    ids, codes, metas = entries(args, index.nbits)
    present = [i for i in ids if i in index]
    if present and not args.replace:
        raise CommandLineError(f"{present[0]} is already in {args.index} (use --replace to update it)")
    index.remove_many(present)
    index.add_many(codes, ids, metas)
    index.save(args.index)
    stderr(f"added {len(ids)} model{'s' if len(ids) != 1 else ''} to {args.index} ({len(index)} in all)")
    return EXIT_OK


def run_info(args) -> int:
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
