"""Fuzz the converters by hand: N mutated ONNX models through from_onnx + hash, outcomes counted.

Every case must end in a HashCode or an HNNError; anything else (another exception, a case past
hnn_jax/testing/fuzzing.CASE_TIME_LIMIT_S, an allocation beyond fuzzing.MEMORY_HEADROOM) is listed with a
reproducer shrunk to the fewest mutations that still fail the same way. Same mutators and
harness as tests/test_fuzz.py (hnn_jax/testing/fuzzing.py); cases are drawn by hypothesis from --seed.

    python benchmarks/fuzz.py [--cases 2000] [--seed 0] [--family all|bytes|structure|graphs] [--trace]
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import resource
import sys
import time
import traceback
from pathlib import Path


from hnn_jax.errors import first_line
from hnn_jax.testing import fuzzing
import onnxruntime
from hypothesis import HealthCheck, Phase, given, seed, settings


def signature(error: BaseException) -> str:
    """Exception type and the innermost frame outside site-packages and the harness: one line per
    distinct bug."""
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if "site-packages" not in f.filename and not f.filename.endswith("fuzzing.py")] or \
        [f for f in traceback.extract_tb(error.__traceback__) if "site-packages" not in f.filename]
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno} ({frames[-1].name})" if frames else "?"
    return f"{type(error).__name__} at {where}"


def attempt(case) -> tuple[str, BaseException | None]:
    try:
        return fuzzing.run_case(case), None
    except (Exception, fuzzing.HugeAllocation) as e:  # noqa: BLE001 - that is what we are looking for
        return "unexpected", e


def shrink(case, sig: str):
    """Drop mutations one at a time while the same failure remains."""
    family, name, mutations, where = case
    changed = True
    while changed and len(mutations) > 1:
        changed = False
        for i in range(len(mutations)):
            smaller = (family, name, mutations[:i] + mutations[i + 1:], where)
            _, error = attempt(smaller)
            if error is not None and signature(error) == sig:
                case, mutations, changed = smaller, smaller[2], True
                break
    return case


def run(family: str, n: int, seed_value: int, trace: bool, records: list) -> None:
    @seed(seed_value)
    @settings(max_examples=n, phases=[Phase.generate], deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=fuzzing.cases(family))
    def one(case):
        if trace:
            print(fuzzing.describe(case), file=sys.stderr, flush=True)
        start = time.perf_counter()
        faulthandler.dump_traceback_later(3 * fuzzing.CASE_TIME_LIMIT_S, exit=True)  # a hang in C code
        try:
            outcome, error = attempt(case)
        finally:
            faulthandler.cancel_dump_traceback_later()
        records.append((family, case, outcome, error, time.perf_counter() - start))
        if len(records) % 250 == 0:
            print(f"  {len(records)} cases", file=sys.stderr, flush=True)

    one()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--family", choices=["all", *fuzzing.FAMILIES], default="all")
    parser.add_argument("--trace", action="store_true", help="print each case before running it")
    args = parser.parse_args()
    onnxruntime.set_default_logger_severity(4)  # the probe's failures are expected: no log lines

    for name in fuzzing.SEEDS:  # build the seeds (and warm the hasher) outside the timing
        assert fuzzing.run_case(("bytes", name, [], fuzzing.IN_MEMORY)) == "HashCode", name
    families = list(fuzzing.FAMILIES) if args.family == "all" else [args.family]
    records: list = []
    start = time.perf_counter()
    for i, family in enumerate(families):
        share = args.cases // len(families) + (i < args.cases % len(families))
        run(family, share, args.seed, args.trace, records)
    elapsed = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    outcomes = sorted({r[2] for r in records}, key=lambda o: (o == "unexpected", o != "HashCode", o))
    counts = collections.Counter((r[0], r[2]) for r in records)
    print(f"\nFuzzing from_onnx + hash: {len(records)} cases, seed {args.seed}, "
          f"{elapsed:.1f} s ({1000 * elapsed / max(len(records), 1):.0f} ms a case), peak RSS {peak_mb:.0f} MB\n")
    print("| family | cases | " + " | ".join(outcomes) + " |")
    print("|---|---|" + "---|" * len(outcomes))
    for family in families + ["all"]:
        rows = [r for r in records if family in ("all", r[0])]
        cells = [str(sum(counts[(f, o)] for f in families if family in ("all", f))) for o in outcomes]
        print(f"| {family} | {len(rows)} | " + " | ".join(cells) + " |")
    times = sorted(r[4] for r in records)
    print(f"\ncase time: median {1000 * times[len(times) // 2]:.0f} ms, max {times[-1]:.2f} s")

    bugs: dict[str, list] = collections.defaultdict(list)
    for _family, case, _outcome, error, _ in records:
        if error is not None:
            bugs[signature(error)].append((case, error))
    print(f"\nunexpected outcomes: {sum(len(v) for v in bugs.values())} cases, {len(bugs)} distinct")
    for sig, found in sorted(bugs.items(), key=lambda kv: -len(kv[1])):
        case = shrink(min(found, key=lambda f: len(f[0][2]))[0], sig)
        message = first_line(found[0][1])[:200]
        print(f"- {len(found)}x {sig}: {message}\n    reproducer: fuzzing.run_case({fuzzing.describe(case)})")


if __name__ == "__main__":
    main()
