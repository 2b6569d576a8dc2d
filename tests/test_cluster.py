"""`hnn-jax index build` on workers (hnn_jax.cluster): a real Ray cluster started here on loopback
only, and local processes. The index built on workers must equal the single-process one, entry
for entry and in order, whatever order the batches finish in, a worker killed mid-job included."""

import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from hnn_jax import HNNError, cli
from hnn_jax.cluster import ProcessRunner, RayRunner, build_index, journal_path
from hnn_jax.index import HammingIndex

from hnn_jax.testing.models import onnx_mlp

pytestmark = pytest.mark.integration

# Ray reads this when first imported: with it, the node address is 127.0.0.1 (not the machine's
# network address) and every Ray process listens on loopback only
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

N_MODELS = 12


def write_models(folder, n: int, *, depth: int = 3, width: int = 24, seed: int = 0,
                 uniform: bool = False) -> list[Path]:
    """`n` small MLP ONNX files (MatMul, Add, an activation per layer; 1 to `depth` layers, or
    `depth` each when `uniform`; widths up to `width`), weights from seeds: distinct models,
    milliseconds each to write."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        layers, w = depth if uniform else 1 + i % depth, max(4, width - 8 * ((i // depth) % 3))
        path = folder / f"m{i:04d}.onnx"
        onnx.save(onnx_mlp(seed * 100_003 + i, layers, w, activation=i), path)
        paths.append(path)
    return paths


def index_arrays(path) -> dict:
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


def assert_same_index(path, reference) -> None:
    """Ids, packed codes, metadata, header: equal arrays, in the same order."""
    got, want = index_arrays(path), index_arrays(reference)
    assert sorted(got) == sorted(want)
    for key in want:
        assert np.array_equal(got[key], want[key]), key


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """12 generated models and a file that is not a model (recorded as failed, not fatal)."""
    root = tmp_path_factory.mktemp("cluster_models")
    write_models(root / "a", N_MODELS // 2)
    write_models(root / "b", N_MODELS - N_MODELS // 2, seed=1)
    (root / "a" / "broken.onnx").write_bytes(b"\x08\x07 not a protobuf at all" * 20)
    return root


@pytest.fixture(scope="module")
def reference(models, tmp_path_factory):
    """The single-process build (`hnn-jax index build --skip-errors`)."""
    out = tmp_path_factory.mktemp("reference") / "ref.hnnidx"
    assert cli.main(["index", "build", str(models), "-o", str(out), "-q", "--skip-errors"]) == 0
    return out


@pytest.fixture(scope="module")
def cluster():
    """A Ray cluster of this machine with 2 CPUs, every port on loopback only (checked)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    try:
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        listening = [c.laddr.ip for c in psutil.net_connections("inet")
                     if c.status == psutil.CONN_LISTEN and c.pid in _ray_pids()]
        assert listening and all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for ip in listening), listening
        yield
    finally:
        ray.shutdown()


def _ray_pids() -> set[int]:
    """This test's Ray processes: children of this process (gcs, raylet, workers)."""
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _busy_worker_pids() -> list[int]:
    """hnn-jax Ray workers (actors) in the middle of a batch (Ray sets the process title)."""
    pids = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.cmdline()[:1] and p.cmdline()[0].startswith("ray::_Worker.hash_batch"):
                pids.append(p.pid)
        except psutil.Error:
            continue
    return pids


def test_ray_build_equals_single_process_with_a_worker_killed_mid_job(cluster, models, reference, tmp_path):
    killed = []

    def kill_a_busy_worker():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            pids = _busy_worker_pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.01)

    killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
    killer.start()
    out = tmp_path / "ray.hnnidx"
    summary = build_index([models], out, runner=RayRunner("auto", workers=2), batch=2, progress=False)
    killer.join()
    assert killed, "no busy worker was seen to kill"
    assert summary.retries >= 1  # the killed worker's batch was sent again
    assert summary.backend == "Ray workers" and summary.workers == 2
    assert summary.models == N_MODELS + 1 and summary.indexed == N_MODELS
    assert [Path(i).name for i, _ in summary.errors] == ["broken.onnx"]
    assert "not a valid ONNX model" in summary.errors[0][1]
    assert_same_index(out, reference)  # nothing lost, nothing twice, same order
    assert not journal_path(out).exists()


def test_a_killed_job_resumes_from_its_journal(cluster, models, reference, tmp_path, capsys):
    out = tmp_path / "resumed.hnnidx"

    def stop_after_two_batches(summary):
        if summary.converted >= 4:
            raise KeyboardInterrupt  # the job is killed (the journal is all that is left)

    with pytest.raises(KeyboardInterrupt, match="^$"):
        build_index([models], out, runner=RayRunner("auto", workers=2), batch=2, progress=False,
                    on_batch=stop_after_two_batches)
    assert not out.exists()
    lines = journal_path(out).read_text().splitlines()
    done = len(lines) - 1  # the header, then one line per model done
    assert 4 <= done < N_MODELS + 1

    # the CLI reruns it: only what is missing is converted
    assert cli.main(["index", "build", str(models), "-o", str(out), "--ray", "auto", "--workers", "2",
                     "--batch", "2", "-q"]) == 0
    err = capsys.readouterr().err
    assert f"{done} from the journal of an earlier run" in err, err
    assert "could not hash" in err and "broken.onnx" in err
    assert_same_index(out, reference)
    assert not journal_path(out).exists()


def test_local_processes_build_the_same_index_searchable_while_it_runs(models, reference, tmp_path):
    """refresh=0: the index file is rewritten after every batch with the models done so far, in
    the final order; the last write is the single-process index."""
    out = tmp_path / "procs.hnnidx"
    want = HammingIndex.load(reference)
    seen = []

    def check_partial(summary):
        if out.exists():
            partial = HammingIndex.load(out)
            ids = partial.ids
            assert ids == [i for i in want.ids if i in set(ids)]  # a subset, in the final order
            assert all(partial.get(i) == want.get(i) for i in ids)  # codes and metadata
            seen.append(len(ids))

    summary = build_index([models], out, runner=ProcessRunner(2), batch=3, progress=False, refresh=0,
                          on_batch=check_partial)
    assert summary.backend == "local processes" and summary.workers == 2
    assert summary.converted == N_MODELS + 1 and summary.resumed == 0
    assert seen and seen == sorted(seen) and 0 < seen[0] < N_MODELS  # it grew batch by batch
    assert_same_index(out, reference)


def test_every_model_failing_is_an_error_and_ray_missing_says_how_to_install(tmp_path, monkeypatch):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.onnx").write_bytes(b"junk")
    with pytest.raises(HNNError, match="none of the 1 model could be hashed"):
        build_index([bad], tmp_path / "x.hnnidx", runner=ProcessRunner(1), progress=False)
    assert not journal_path(tmp_path / "x.hnnidx").exists()
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    with pytest.raises(HNNError, match=r"pip install 'hnn-jax\[ray\]'"):
        build_index([bad], tmp_path / "y.hnnidx", runner=RayRunner("auto"), progress=False)
