"""`hnn-jax index build`: one resumable build of an index file, whose batches a runner hashes in
this process (SerialRunner), in local processes (ProcessRunner, `--workers N`) or on a Ray
cluster (RayRunner, `--ray ADDRESS`); the index is the same, entry for entry, whichever runs it.

The models (files.find_models order) are cut into batches of `batch` files. Each worker (this
process, a Ray actor, or a process of a local pool) converts its batch (converters.from_file) and
hashes it in one hnn_jax.hash call, so the jit cache of each worker is reused batch after batch.
Finished batches stream, as they come in, into a journal next to the output (`OUTPUT.journal`,
one JSON line per model, flushed and fsync'd per batch), and every `refresh` seconds the index
file is rewritten with the models done so far (searchable while the job runs). When every model
is done the index is assembled in find_models order from the journal, saved, and the journal
removed. A killed job rerun with the same output reads the journal and converts only what is
missing (a model whose file changed since is redone).

A model that fails is recorded with its error and the job goes on (without skip_errors, the
first one stops the build). A batch whose worker dies (killed, out of memory, a crash in native
code) is sent again, up to `attempts` times, then split into single models, so one model that
crashes its worker is recorded as an error, not the job.

Ray is an optional extra (`pip install 'hnn-jax[ray]'`); the models must be readable at the same
path on every Ray node (a shared filesystem), or be given as a URL every node can reach
(`s3://bucket/models/`, any fsspec URL: files.find_models; each node needs the protocol's fsspec
package, s3fs for s3://). Cost model: docs/usage.md, "Building on a cluster".
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from hnn_jax.errors import HNNError, InvalidArgumentError, first_line

log = logging.getLogger(__name__)

JOURNAL_SUFFIX = ".journal"
JOURNAL_FORMAT = "hnn-jax index build journal"
JOURNAL_VERSION = 2  # 2: records hold the model's format
DEFAULT_BATCH = 32
ATTEMPTS = 3          # tries of one batch before it is split into single models
IN_FLIGHT = 2         # batches queued per worker, so a worker never waits for the driver
DEFAULT_REFRESH = 600.0  # seconds between rewrites of the index file while a job runs
RAY_CONNECT_ATTEMPTS = 4  # tries of a ray:// connection whose client server failed to start
RAY_HINT = "pip install 'hnn-jax[ray]'"


@dataclass
class BuildSummary:
    """What build_index did: models found, indexed (in codes of `nbits` bits), done before
    (resumed), converted now, failed (with their errors, in find_models order), batches sent
    again after a worker died, and the runner's workers and backend."""
    output: Path
    models: int = 0
    indexed: int = 0
    nbits: int = 0
    resumed: int = 0
    converted: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (id, error text)
    retries: int = 0
    workers: int = 0
    backend: str = ""
    seconds: float = 0.0


# ----------------------------------------------------------------------------- worker side
def _worker_setup() -> None:
    """Before jax is first imported in a worker process: one core per worker (several workers
    share a machine, so none spreads over all its cores), and the on-disk compilation cache, so a
    worker loads the programs another has compiled (config.use_compilation_cache)."""
    from hnn_jax.config import use_compilation_cache
    use_compilation_cache()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "jax" not in sys.modules and "intra_op_parallelism_threads" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                                   "intra_op_parallelism_threads=1").strip()


def hash_batch(paths: list[str], bits: int | None = None) -> list[dict]:
    """Convert and hash the models at `paths` in one hnn_jax.hash call. One dict per path:
    {"code": str, "probe": str, "format": str, "warnings": [...]} or {"error": str, "warnings":
    [...]}: the format (files.model_format) is found here, as a URL folder's costs a request.
    Never raises for a bad model: its error text is returned (files.named_error)."""
    import hnn_jax
    from hnn_jax.files import convert_file, model_format, model_path, named_error

    out: list[dict] = []
    graphs, rows = [], []
    for text in paths:
        path = model_path(text)
        graph, probe, messages, exc = convert_file(path)
        if exc is not None:
            out.append({"error": str(named_error(path, exc)), "warnings": messages})
            continue
        out.append({"probe": probe, "format": model_format(path), "warnings": messages})
        graphs.append(graph)
        rows.append(len(out) - 1)
    if not graphs:
        return out
    try:
        codes = hnn_jax.hash(graphs, bits=bits)
    except Exception:  # noqa: BLE001 - one bad graph: hash one by one to name it
        codes = []
        for row, graph in zip(rows, graphs):
            try:
                codes.append(hnn_jax.hash(graph, bits=bits))
            except Exception as e:  # noqa: BLE001
                out[row] = {"error": str(named_error(paths[row], e)), "warnings": out[row]["warnings"]}
                codes.append(None)
    for row, code in zip(rows, codes):
        if code is not None:
            out[row]["code"] = str(code)
    return out


class _Worker:
    """The Ray actor: one per worker slot, holding its process's jit cache between batches."""

    def __init__(self):
        _worker_setup()
        from hnn_jax.hasher import default_hasher
        default_hasher()  # import and load the hasher once, before the first batch

    def pid(self) -> int:
        return os.getpid()

    def hash_batch(self, paths, bits):
        return hash_batch(paths, bits)


def _process_init() -> None:
    _worker_setup()
    warnings.simplefilter("ignore")


# ----------------------------------------------------------------------------- runners
class _Lost(Exception):
    """A batch's worker died (or the pool broke) before it answered: send the batch again."""


class Runner:
    """Where build_index's batches are hashed (hash_batch), in one interface: build_index calls
    start() once there is work (so a missing Ray or a cluster out of reach fails before anything is
    written), then submit(key, paths, bits) while free(), wait() -> [(key, hash_batch's result or
    _Lost)] for the batches that finished (blocking until one does) while any are pending(), and
    close() at the end. `workers` and `backend` (known after start) go into the BuildSummary."""

    backend = ""
    workers = 0


class SerialRunner(Runner):
    """Each batch in this process, when waited for (the plain `hnn-jax index build`)."""

    backend = "this process"
    workers = 1

    def __init__(self):
        self.queued: list[tuple] = []  # (key, paths, bits): one at most

    def start(self) -> None:
        pass

    def free(self) -> bool:
        return not self.queued

    def submit(self, key, paths, bits) -> None:
        self.queued.append((key, paths, bits))

    def wait(self):
        key, paths, bits = self.queued.pop()
        return [(key, hash_batch(paths, bits))]

    def pending(self) -> int:
        return len(self.queued)

    def close(self) -> None:
        self.queued.clear()


def _check_workers(workers: int | None) -> None:
    if workers is not None and workers < 1:
        raise InvalidArgumentError(f"workers must be at least 1, got {workers}")


class RayRunner(Runner):
    """One Ray actor per worker slot (`workers`, default one per CPU of the cluster); each holds
    at most IN_FLIGHT batches. `address`: "auto" (the running cluster), "local" (start one on this
    machine, loopback only), "HOST:PORT" or "ray://HOST:PORT"; an already initialised Ray is used
    as it is."""

    backend = "Ray workers"

    def __init__(self, address: str, workers: int | None = None):
        _check_workers(workers)
        self.address, self.workers = address, workers
        self.ray = None
        self.started = False  # Ray initialised here, shut down by close()
        self.actors: list = []
        self.load: list[int] = []
        self.refs: dict = {}  # ObjectRef -> (key, actor slot)

    def start(self) -> None:
        address, workers = self.address, self.workers
        if address == "local" and "ray" not in sys.modules:  # read by Ray on import: a node of
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # 127.0.0.1, loopback only
        try:
            import ray
        except ImportError:
            raise HNNError(f"--ray needs Ray: {RAY_HINT}") from None
        self.ray = ray
        if not ray.is_initialized():
            if address == "local":  # a cluster of this machine alone
                ray.init(address="local", include_dashboard=False, log_to_driver=False,
                         num_cpus=workers or None, logging_level=logging.ERROR)
            else:
                try:
                    self._connect(address)
                except ConnectionError as e:
                    raise HNNError(
                        f"cannot reach the Ray cluster at {address} ({e}). Is it running and "
                        "reachable? A cluster with token authentication (the default of `ray start` "
                        "in recent Ray) needs its token here too: RAY_AUTH_TOKEN or "
                        "RAY_AUTH_TOKEN_PATH") from None
            self.started = True
        if workers is None:
            workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        actor = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=0)(_Worker)
        self.actors = [actor.remote() for _ in range(workers)]
        try:  # every worker up (hnn_jax importable there) before any batch is sent
            ray.get([a.pid.remote() for a in self.actors])
        except ray.exceptions.RayError as e:
            self.close()
            first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise HNNError(f"the Ray workers could not start hnn-jax ({first}); is hnn-jax installed "
                           "on every node?") from None
        self.load = [0] * workers
        self.workers = workers

    def _connect(self, address: str) -> None:
        """ray.init(address), asked again when the head's client server fails to start this
        client's own server (ConnectionAbortedError: Ray's proxy forks it while gRPC threads run, and
        the child can die at once; seen on about one first connection in three here, each costing
        the client about 30 s). Other connection errors (a cluster out of reach) are not retried."""
        for attempt in range(RAY_CONNECT_ATTEMPTS):
            try:
                self.ray.init(address=address, log_to_driver=False)
                return
            except ConnectionAbortedError:
                if attempt + 1 == RAY_CONNECT_ATTEMPTS:
                    raise
                time.sleep(2)

    def free(self) -> bool:
        return min(self.load) < IN_FLIGHT

    def submit(self, key, paths, bits) -> None:
        slot = min(range(self.workers), key=self.load.__getitem__)
        self.load[slot] += 1
        self.refs[self.actors[slot].hash_batch.remote(paths, bits)] = (key, slot)

    def wait(self):
        done, _ = self.ray.wait(list(self.refs), num_returns=1, timeout=None)
        done, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=0) if done else (done, None)
        out = []
        for ref in done:
            key, slot = self.refs.pop(ref)
            self.load[slot] -= 1
            try:
                out.append((key, self.ray.get(ref)))
            except self.ray.exceptions.RayError as e:  # actor died, task crashed: retry
                out.append((key, _Lost(f"{type(e).__name__}: {first_line(e)}")))
        return out

    def pending(self) -> int:
        return len(self.refs)

    def close(self) -> None:
        for actor in self.actors:
            try:
                self.ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if self.started:
            self.ray.shutdown()


class ProcessRunner(Runner):
    """A pool of `workers` local processes (default one per CPU; spawned: jax does not survive
    fork); a broken pool (a process killed) is replaced and its batches sent again."""

    backend = "local processes"

    def __init__(self, workers: int | None = None):
        _check_workers(workers)
        self.workers = workers or os.cpu_count() or 1
        self.futures: dict = {}
        self.pool = None

    def start(self) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_process_init)

    def free(self) -> bool:
        return len(self.futures) < IN_FLIGHT * self.workers

    def submit(self, key, paths, bits) -> None:
        self.futures[self.pool.submit(hash_batch, paths, bits)] = key

    def wait(self):
        from concurrent.futures import FIRST_COMPLETED
        from concurrent.futures import wait as wait_futures
        from concurrent.futures.process import BrokenProcessPool
        done, _ = wait_futures(list(self.futures), return_when=FIRST_COMPLETED)
        out, broken = [], False
        for future in done:
            key = self.futures.pop(future)
            try:
                out.append((key, future.result()))
            except BrokenProcessPool as e:
                broken = True
                out.append((key, _Lost(f"worker process died ({e})")))
            except Exception as e:  # noqa: BLE001 - e.g. a result that did not pickle
                out.append((key, _Lost(f"{type(e).__name__}: {e}")))
        if broken:  # every batch still queued in the dead pool is lost too
            for future, key in self.futures.items():
                future.cancel()
                out.append((key, _Lost("worker process died")))
            self.futures.clear()
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.start()
        return out

    def pending(self) -> int:
        return len(self.futures)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------- journal
def journal_path(output) -> Path:
    output = Path(output)
    return output.with_name(output.name + JOURNAL_SUFFIX)


def _fingerprint(path) -> list[int] | dict:
    """What tells whether a model changed since it was journaled: size and mtime of a local path,
    what fs.info says of a URL (files.url_fingerprint)."""
    if isinstance(path, str):
        from hnn_jax.files import url_fingerprint
        return url_fingerprint(path)
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _fingerprints(models) -> dict:
    """id -> _fingerprint for each model; URLs asked in parallel (one request or more each)."""
    urls = [p for p in models if isinstance(p, str)]
    remote = {}
    if urls:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(min(32, len(urls))) as pool:
            remote = dict(zip(urls, pool.map(_fingerprint, urls)))
    return {str(p): remote[p] if isinstance(p, str) else _fingerprint(p) for p in models}


def _read_journal(path: Path, bits: int | None) -> dict[str, dict]:
    """id -> last record of a journal written for codes of `bits` bits (else nothing). A torn
    last line (a job killed while writing) is ignored."""
    if not path.is_file():
        return {}
    done: dict[str, dict] = {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except ValueError:
        header = {}
    if (header.get("journal"), header.get("version"), header.get("bits")) != (JOURNAL_FORMAT, JOURNAL_VERSION, bits):
        return {}
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("id"), str):
            done[record["id"]] = record
    return done


class _Journal:
    def __init__(self, path: Path, bits: int | None, fresh: bool):
        self.path = path
        if fresh or not path.is_file():
            with open(path, "w", encoding="utf-8") as f:
                f.write(json.dumps({"journal": JOURNAL_FORMAT, "version": JOURNAL_VERSION, "bits": bits}) + "\n")
                f.flush()
                os.fsync(f.fileno())
        self.file = open(path, "a", encoding="utf-8")  # closed by close()

    def write(self, records: list[dict]) -> None:
        self.file.write("".join(json.dumps(r) + "\n" for r in records))
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


# ----------------------------------------------------------------------------- driver
class _Batches:
    """The build's batches of model ids, sent in order (`queue`: keys still to send). A batch whose
    worker died is sent again in front, up to `attempts` times, then split into single models, so
    one model that crashes its worker is recorded as failed, not the job."""

    def __init__(self, todo: list[str], size: int, attempts: int):
        self.ids = {i: todo[s:s + size] for i, s in enumerate(range(0, len(todo), size))}
        self.tries = dict.fromkeys(self.ids, 0)
        self.queue = list(self.ids)
        self.attempts = attempts

    def lost(self, key, lost: _Lost) -> list[dict] | None:
        """Send batch `key` again, split it, or give its one model up: None, or the hash_batch
        result that records it as failed."""
        names = self.ids[key]
        self.tries[key] += 1
        if self.tries[key] < self.attempts:
            log.warning(f"a worker died ({lost}); sending its batch of {len(names)} again")
            self.queue.insert(0, key)
        elif len(names) > 1:  # isolate the model that kills its worker
            log.warning(f"a batch failed {self.tries[key]} times; sending its models one by one")
            for name in reversed(names):
                new = max(self.ids) + 1
                self.ids[new], self.tries[new] = [name], 0
                self.queue.insert(0, new)
        else:
            return [{"error": f"{names[0]}: its worker died {self.tries[key]} times while converting it "
                     f"({lost})", "warnings": []}]
        return None


def build_index(paths, output, *, runner: Runner | None = None, batch: int = DEFAULT_BATCH,
                bits: int | None = None, resume: bool = True, skip_errors: bool = True,
                progress: bool = True, debug: bool = False, attempts: int = ATTEMPTS,
                refresh: float | None = DEFAULT_REFRESH, on_batch=None) -> BuildSummary:
    """Hash every model under `paths` into a new index file `output`, in batches of `batch` that
    `runner` hashes (default SerialRunner(): this process; ProcessRunner, RayRunner). A model that
    fails is recorded and skipped; every model failing is an error; without `skip_errors` the first
    model that fails (a journaled failure is tried again) stops the build with its error. `resume`:
    reuse OUTPUT.journal of a job that did not finish. `refresh`: while the job runs, `output` is
    rewritten every that many seconds with the models done so far (in the same order), so a long
    job can be searched before it ends, and at least 10x as long apart as a rewrite takes (about
    6 s per 100,000 models), so refreshes cost at most a tenth of the driver's time; None: only at
    the end. `on_batch(summary)` is called after each batch is journaled (and the index refreshed,
    when due)."""
    from tqdm import tqdm

    from hnn_jax.files import find_models

    runner = SerialRunner() if runner is None else runner
    if batch < 1:
        raise InvalidArgumentError(f"batch must be at least 1, got {batch}")
    start = time.perf_counter()
    output = Path(output)
    models = find_models(paths)
    summary = BuildSummary(output=output, models=len(models))
    jpath = journal_path(output)
    done = _read_journal(jpath, bits) if resume else {}
    prints = _fingerprints(models)
    done = {k: r for k, r in done.items()  # changed files, and failures to stop at: redo
            if prints.get(k) == r.get("fp") and (skip_errors or "error" not in r)}
    todo = list(dict.fromkeys(str(p) for p in models if str(p) not in done))
    summary.resumed = len(set(prints) - set(todo))
    batches = _Batches(todo, batch, attempts)
    if todo:  # first: a missing Ray or a cluster out of reach fails before anything is written
        runner.start()
        summary.workers, summary.backend = runner.workers, runner.backend
    journal = _Journal(jpath, bits, fresh=not done)
    errors = sum(1 for r in done.values() if "error" in r)
    bar = tqdm(total=len(prints), initial=summary.resumed, desc="hashing", unit="model",
               disable=None if progress else True, leave=False, smoothing=0.1)
    bar.set_postfix(errors=errors)
    refreshed, refresh_cost = time.perf_counter(), 0.0
    try:
        while batches.queue or runner.pending():
            while batches.queue and runner.free():
                key = batches.queue.pop(0)
                runner.submit(key, batches.ids[key], bits)
            for key, result in runner.wait():
                if isinstance(result, _Lost):
                    summary.retries += 1
                    result = batches.lost(key, result)
                    if result is None:
                        continue
                records = _records(batches.ids[key], result, prints, debug)
                failed = [r["error"] for r in records if "error" in r]
                if failed and not skip_errors:
                    raise HNNError(failed[0])
                journal.write(records)
                done.update((r["id"], r) for r in records)
                errors += len(failed)
                summary.converted += len(records)
                bar.update(len(records))
                bar.set_postfix(errors=errors)
                if refresh is not None and time.perf_counter() - refreshed >= max(refresh, 10 * refresh_cost):
                    began = time.perf_counter()
                    partial = _journal_entries(models, done)
                    if partial[0]:
                        _save_index(*partial[:3], output)
                    refreshed = time.perf_counter()
                    refresh_cost = refreshed - began  # the driver hands out no batch meanwhile
                if on_batch is not None:
                    on_batch(summary)
    finally:
        bar.close()
        journal.close()
        if todo:
            runner.close()

    ids, codes, metas, summary.errors = _journal_entries(models, done)
    for name, meta in zip(ids, metas):
        if meta["probe"] != "ok":
            log.warning(f"{name}: execution probe {meta['probe']}; code from static features only")
    for _, error in summary.errors:
        log.warning(f"could not hash {error} (skipped)")
    if not codes:
        jpath.unlink(missing_ok=True)
        n = len(models)
        raise HNNError(f"none of the {n} model{'s' if n != 1 else ''} could be hashed (each skipped above)")
    summary.indexed, summary.nbits = _save_index(ids, codes, metas, output), len(codes[0])
    jpath.unlink(missing_ok=True)
    summary.seconds = time.perf_counter() - start
    return summary


def _records(names: list[str], result: list[dict], prints: dict, debug: bool) -> list[dict]:
    """The journal records of one batch's hash_batch result (its conversion warnings logged with
    `debug`)."""
    records = []
    for name, r in zip(names, result):
        if debug:
            for message in r.get("warnings", ()):
                log.warning(f"{name}: {message}")
        record = {"id": name, "fp": prints[name]}
        if "code" in r:
            record.update(code=r["code"], probe=r["probe"], format=r["format"])
        else:
            record["error"] = r["error"]
        records.append(record)
    return records


def _journal_entries(models, done: dict):
    """(ids, codes, metadata, [(id, error)]) of the models in `done` (journal records), in
    find_models order whatever order the batches finished in."""
    from hnn_jax.files import model_metadata
    from hnn_jax.hashcode import HashCode

    ids, codes, metas, errors = [], [], [], []
    for path in models:
        record = done.get(str(path))
        if record is None:
            continue
        if "error" in record:
            errors.append((str(path), record["error"]))
            continue
        ids.append(str(path))
        codes.append(HashCode.from_str(record["code"]))
        metas.append(model_metadata(path, record["probe"], record["format"]))
    return ids, codes, metas, errors


def _save_index(ids, codes, metas, output: Path) -> int:
    """Write the index of these entries to `output` (atomically: a search never reads half a
    file); its size."""
    from hnn_jax.index import HammingIndex

    index = HammingIndex()
    index.add_many(codes, ids, metas)
    index.save(output)
    return len(index)
