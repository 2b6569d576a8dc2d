"""The ONNX backend test models of the installed onnx package: what from_onnx and hash make of them.

    python benchmarks/bench_backend_suite.py [--json out.json] [--only SUBSTRING]

Prints one table: models total, coded, refused (HNNError, by kind of message), other exceptions
(bugs), probe ran / static features only, and, among the models onnxruntime runs on their own
test inputs (test_data_set_0; zeros for the light models, as onnx's runner does), the share the
probe runs on. --json writes one row per model (outcome, probe reason, onnxruntime's verdict).
The models and the conversion are those of tests/test_backend_suite.py.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np
import onnx

import hnn_jax
from hnn_jax.converters.probe import _ort_feed
from test_backend_suite import Case, backend_cases, convert_case, hash_outcomes


def message_kind(error: BaseException) -> str:
    """The error's class and the first clause of its message, names and numbers blanked."""
    text = str(error).splitlines()[0] if str(error) else ""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    text = re.sub(r"\[[^\]]*\]", "[…]", text)
    text = re.sub(r"\d+", "N", text)
    text = re.split(r"[:;(]", text)[0].strip()
    return f"{type(error).__name__}: {text[:90]}"


def ort_runs_own_inputs(case: Case, timeout_s: float = 20.0) -> tuple[bool, str]:
    """Whether onnxruntime builds the original model and runs it on its own test inputs."""
    import onnxruntime as ort

    if case.inputs is None:
        return False, "no test inputs"
    model = case.model()
    initializers = {t.name for t in model.graph.initializer}
    graph_inputs = [v for v in model.graph.input if v.name not in initializers]
    if len(case.inputs) > len(graph_inputs):
        graph_inputs = list(model.graph.input)
    # as the probe feeds its own: numpy scalars as arrays, bfloat16/float8/int4 as OrtValues
    feeds = {v.name: _ort_feed(np.asarray(x) if isinstance(x, np.generic) else x, v.type)
             for v, x in zip(graph_inputs, case.inputs) if v.name}
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        run_options = ort.RunOptions()
        timer = threading.Timer(timeout_s, lambda: setattr(run_options, "terminate", True))
        timer.start()
        try:
            known = {i.name for i in session.get_inputs()}
            session.run(None, {n: v for n, v in feeds.items() if n in known}, run_options)
        finally:
            timer.cancel()
    except Exception as e:  # noqa: BLE001 - any failure is the verdict
        return False, f"{type(e).__name__}: {e}".splitlines()[0][:200]
    return True, ""


def probe_reason(warnings_: tuple[str, ...]) -> str:
    for w in warnings_:
        m = re.match(r"execution probe did not run \((.*)\); using static features only", w, re.S)
        if m:
            return m.group(1)
    return ""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write one row per model here")
    parser.add_argument("--only", default="", help="only models whose name contains this")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    cases = [c for c in backend_cases(with_inputs=True) if args.only in c.name]
    load_s = time.perf_counter() - start
    outcomes, bugs = [], {}
    start = time.perf_counter()
    for case in cases:
        try:
            outcomes.append(convert_case(case))
        except Exception as e:  # noqa: BLE001 - a bug, counted and named
            bugs[case.name] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
    convert_s = time.perf_counter() - start
    start = time.perf_counter()
    codes = hash_outcomes(outcomes)
    hash_s = time.perf_counter() - start
    by_name = {o.name: o for o in outcomes}
    rows = []
    for case in cases:
        ort_ok, ort_why = ort_runs_own_inputs(case)
        o = by_name.get(case.name)
        code = codes.get(case.name)
        if case.name in bugs:
            outcome, detail = "bug", bugs[case.name]
        elif o.error is not None:
            outcome, detail = "refused", message_kind(o.error)
        elif not isinstance(code, hnn_jax.HashCode):
            outcome, detail = "refused", message_kind(code)
        else:
            outcome, detail = "coded", ""
        rows.append({"name": case.name, "outcome": outcome, "detail": detail,
                     "message": str(o.error) if o is not None and o.error is not None else "",
                     "probed": bool(o is not None and outcome == "coded" and o.probed),
                     "probe_reason": probe_reason(o.warnings) if o is not None else "",
                     "seconds": round(o.seconds, 3) if o is not None else None,
                     "ort_own_inputs": ort_ok, "ort_reason": ort_why})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))

    coded = [r for r in rows if r["outcome"] == "coded"]
    refused = [r for r in rows if r["outcome"] == "refused"]
    probed = [r for r in coded if r["probed"]]
    ort_ok = [r for r in rows if r["ort_own_inputs"]]
    ort_coded = [r for r in ort_ok if r["outcome"] == "coded"]
    ort_probed = [r for r in ort_coded if r["probed"]]

    def pct(a, b):
        return f"{100 * a / b:5.1f}%" if b else "   -  "

    print(f"{'ONNX backend test models (onnx ' + onnx.__version__ + ')':<72}{'count':>7}  share")
    print(f"{'models total':<72}{len(rows):>7}")
    for kind, n in sorted(collections.Counter(r["name"].split("/")[0] for r in rows).items()):
        print(f"{'  ' + kind:<72}{n:>7}")
    print(f"{'coded (graph and HashCode)':<72}{len(coded):>7}  {pct(len(coded), len(rows))}")
    print(f"{'refused with an HNNError':<72}{len(refused):>7}  {pct(len(refused), len(rows))}")
    for kind, n in collections.Counter(r["detail"] for r in refused).most_common():
        print(f"{'  ' + kind:<72.72}{n:>7}")
    print(f"{'other exceptions (bugs)':<72}{len(bugs):>7}")
    for name, why in sorted(bugs.items()):
        print(f"  {name}: {why}"[:110])
    print(f"{'coded, probe ran':<72}{len(probed):>7}  {pct(len(probed), len(coded))} of coded")
    print(f"{'coded, static features only':<72}{len(coded) - len(probed):>7}  "
          f"{pct(len(coded) - len(probed), len(coded))} of coded")
    print(f"{'onnxruntime runs the model on its own test inputs':<72}{len(ort_ok):>7}  {pct(len(ort_ok), len(rows))}")
    print(f"{'  of these coded':<72}{len(ort_coded):>7}  {pct(len(ort_coded), len(ort_ok))}")
    print(f"{'  of these coded and probed (target >= 95% of the coded)':<72}{len(ort_probed):>7}  "
          f"{pct(len(ort_probed), len(ort_coded))} of coded, {pct(len(ort_probed), len(ort_ok)).strip()} of all")
    reasons = collections.Counter(re.sub(r"\d+", "N", r["probe_reason"])[:90]
                                  for r in ort_coded if not r["probed"])
    if reasons:
        print("  why the probe did not run on the rest (first line of the reason):")
        for why, n in reasons.most_common(12):
            print(f"    {n:>4}  {why}")
    print(f"time: loading the cases {load_s:.1f} s, from_onnx {convert_s:.1f} s, hash {hash_s:.1f} s")


if __name__ == "__main__":
    main()
