"""Models read from fsspec URLs (files.find_models, hash_files, convert_file; cluster.build_index;
the CLI): a real HTTP server on loopback (http.server, walked by fsspec's HTTPFileSystem through
its directory listings), file://, memory:// and a chained zip:// URL. A URL gives the models, order
and codes of the same folder read locally; only the ids and the metadata's path differ."""

import contextlib
import functools
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import onnx
import pytest

from hnn_jax import HNNError, cli
from hnn_jax.cluster import ProcessRunner, RayRunner, build_index, journal_path
from hnn_jax.errors import CorruptFileError, UnsupportedModelError
from hnn_jax.files import convert_file, find_models, hash_files, is_url, model_metadata, url_fingerprint
from hnn_jax.index import HammingIndex

from hnn_jax.testing.models import external_data_mlp, onnx_mlp

pytestmark = pytest.mark.integration

pytest.importorskip("aiohttp")  # fsspec's http:// filesystem (the dev extra installs it)

MODELS = ["a/m0.onnx", "a/m1.onnx", "b/deep/m3.onnx", "b/m2.onnx"]


def write_mlp(path: Path, seed: int, layers: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(onnx_mlp(seed, layers, 16, activation=seed), path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """4 models in subfolders, a file that is not a model and a hidden model file (both skipped)."""
    root = tmp_path_factory.mktemp("url_models")
    for i, name in enumerate(MODELS):
        write_mlp(root / name, seed=i, layers=1 + i % 3)
    (root / "a" / "notes.txt").write_text("not a model")
    write_mlp(root / "b" / ".hidden.onnx", seed=9, layers=1)
    return root


@pytest.fixture(scope="module")
def server(folder):
    """http://127.0.0.1:PORT/ serving the parent of `folder` (directory listings included)."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder.parent)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def url(folder, server):
    return f"{server}{folder.name}/"


@pytest.fixture(scope="module")
def local_codes(folder):
    return {r.path.relative_to(folder).as_posix(): str(r.code) for r in hash_files([folder], progress=False)}


def rel(url_text: str, base: str) -> str:
    assert url_text.startswith(base), (url_text, base)
    return url_text[len(base):]


def test_a_url_is_walked_as_the_local_folder(folder, url):
    local = [p.relative_to(folder).as_posix() for p in find_models([folder])]
    assert local == MODELS
    found = find_models([url])
    assert all(isinstance(u, str) for u in found)
    assert [rel(u, url) for u in found] == MODELS  # same models, same order, hidden + txt skipped
    file_url = folder.as_uri()
    assert [rel(u, file_url + "/") for u in find_models([file_url])] == MODELS
    # a file given by URL is itself; plain paths stay Path objects
    assert find_models([url + "b/m2.onnx", str(folder / "a" / "m0.onnx")]) == [
        url + "b/m2.onnx", folder / "a" / "m0.onnx"]
    assert is_url("s3://b/x") and not is_url(str(folder)) and not is_url("C://x") and not is_url(folder)


def test_savedmodel_and_snapshot_folders_are_single_models_over_urls(tmp_path):
    """The walk itself (no conversion): SavedModel folders are one model and not searched inside,
    a snapshot folder given by name is one model, hidden files are skipped."""
    root = tmp_path / "walk"
    for name in ("x/saved/saved_model.pb", "x/saved/inner/m.onnx", "x/saved/variables/v.data",
                 "x/z.keras", "x/.h.pt2", "y.pt2", "snap/config.json", "snap/model.safetensors"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    local = [p.relative_to(root).as_posix() for p in find_models([root])]
    assert local == ["x/saved", "x/z.keras", "y.pt2"]
    base = root.as_uri() + "/"
    assert [rel(u, base) for u in find_models([base])] == local
    assert find_models([base + "snap"]) == [base + "snap"]
    assert find_models([root / "snap"]) == [root / "snap"]
    # index metadata names the format alike, locally and by URL
    for x, snap in ((root / "x", root / "snap"), (base + "x", base + "snap")):
        found = find_models([x, snap])
        assert [model_metadata(m, "ok")["format"] for m in found] == ["savedmodel", "keras", "snapshot"]


def test_hash_files_over_http_gives_the_local_codes(url, local_codes, capsys):
    got = {rel(str(r.path), url): str(r.code) for r in hash_files([url], progress=False)}
    assert list(got) == list(local_codes) and got == local_codes
    # the CLI prints the URL as the name
    assert cli.main(["hash", url + "a/", "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[1] for line in lines] == [url + "a/m0.onnx", url + "a/m1.onnx"]
    assert [line.split("  ")[0] for line in lines] == [local_codes["a/m0.onnx"], local_codes["a/m1.onnx"]]


def test_memory_zip_and_external_data_urls(folder, server, local_codes, tmp_path):
    import fsspec

    # memory:// (in this process only)
    mem = fsspec.filesystem("memory")
    mem.pipe("/hnn-url-test/sub/m.onnx", (folder / "a" / "m1.onnx").read_bytes())
    try:
        [r] = hash_files(["memory://hnn-url-test/"], progress=False)
        assert r.path == "memory:///hnn-url-test/sub/m.onnx" and str(r.code) == local_codes["a/m1.onnx"]
    finally:
        mem.rm("/hnn-url-test", recursive=True)

    # chained: a zip file read through file://
    archive = tmp_path / "models.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in MODELS:
            z.write(folder / name, "zoo/" + name)
    chained = f"zip://zoo::{archive.as_uri()}"
    found = find_models([chained])
    assert found == [f"zip://zoo/{name}::{archive.as_uri()}" for name in MODELS]
    assert [str(r.code) for r in hash_files([chained], progress=False)] == list(local_codes.values())

    # an ONNX file whose weights lie in an external data file beside it
    ext = external_data_mlp(folder.parent / "ext", layers=2, width=16)
    [want] = hash_files([ext], progress=False)
    [got] = hash_files([f"{server}ext/model.onnx"], progress=False)
    assert str(got.code) == str(want.code)


def test_missing_urls_protocols_and_packages_are_hnn_errors(url, tmp_path):
    with pytest.raises(CorruptFileError, match="no such file or folder: .*/nope/"):
        find_models([url + "nope/"])
    with pytest.raises(CorruptFileError, match="no such file or folder"):
        find_models([(tmp_path / "nope").as_uri()])
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(HNNError, match=rf"http://127.0.0.1:{port}/m/: cannot read \(Client.*Error"):
        find_models([f"http://127.0.0.1:{port}/m/"])
    graph, probe, _, error = convert_file(url + "nope.onnx")
    assert graph is None and isinstance(error, CorruptFileError) and url + "nope.onnx" in str(error)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(UnsupportedModelError, match="no model files"):
        find_models([(tmp_path / "empty").as_uri()])
    # a file that is not a model: the error names the URL, not the temporary copy
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07 not a protobuf at all" * 20)
    [r] = hash_files([bad.as_uri()], progress=False, skip_errors=True)
    assert bad.as_uri() in str(r.error) and "hnn-jax-" not in str(r.error)

    with pytest.raises(HNNError, match="unknown URL protocol 'nosuchproto'"):
        find_models(["nosuchproto://bucket/models/"])
    missing = next((p for p, pkg in (("s3", "s3fs"), ("gs", "gcsfs"), ("abfs", "adlfs"))
                    if importlib.util.find_spec(pkg) is None), None)
    if missing is None:
        pytest.skip("s3fs, gcsfs and adlfs are all installed: no missing package to name")
    package = {"s3": "s3fs", "gs": "gcsfs", "abfs": "adlfs"}[missing]
    with pytest.raises(HNNError, match=f"{missing}:// URLs needs .*pip install {package}"):
        find_models([f"{missing}://bucket/models/"])
    assert cli.main(["hash", f"{missing}://bucket/models/", "-q"]) == 2


def test_url_fingerprints_follow_the_file(folder, url, tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes((folder / "a" / "m0.onnx").read_bytes())
    first = url_fingerprint(path.as_uri())
    assert first["size"] == path.stat().st_size and "mtime" in first
    assert url_fingerprint(path.as_uri()) == first
    path.write_bytes((folder / "a" / "m1.onnx").read_bytes())
    assert url_fingerprint(path.as_uri()) != first
    http = url_fingerprint(url + "a/m0.onnx")
    assert http["size"] == (folder / "a" / "m0.onnx").stat().st_size and "Last-Modified" in http


def test_index_builds_over_urls_equal_the_local_build_and_resume(folder, url, tmp_path, capsys):
    local = tmp_path / "local.hnnidx"
    assert cli.main(["index", "build", str(folder), "-o", str(local), "-q"]) == 0
    want = HammingIndex.load(local)
    assert [Path(i).relative_to(folder).as_posix() for i in want.ids] == MODELS

    def same(index_path, base):
        got = HammingIndex.load(index_path)
        assert got.ids == [base + name for name in MODELS]
        for gid, wid in zip(got.ids, want.ids):
            (gcode, gmeta), (wcode, wmeta) = got.get(gid), want.get(wid)
            assert str(gcode) == str(wcode)
            assert gmeta == {**wmeta, "path": gid}  # format and probe as the local build's

    # single process (the CLI without --workers)
    single = tmp_path / "single.hnnidx"
    assert cli.main(["index", "build", url, "-o", str(single), "-q"]) == 0
    same(single, url)

    # local worker processes, killed after the first batch, then resumed from the journal
    out = tmp_path / "workers.hnnidx"

    def stop(summary):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt, match="^$"):
        build_index([url], out, runner=ProcessRunner(2), batch=1, progress=False, on_batch=stop)
    done = len(journal_path(out).read_text().splitlines()) - 1
    assert 1 <= done < len(MODELS)
    summary = build_index([url], out, runner=ProcessRunner(2), batch=1, progress=False)
    assert summary.resumed == done and summary.converted == len(MODELS) - done
    assert summary.indexed == len(MODELS) and not summary.errors
    same(out, url)
    assert not journal_path(out).exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_pids(sid: int) -> set[int]:
    psutil = pytest.importorskip("psutil")
    pids = set()
    for p in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(p.pid) == sid:
                pids.add(p.pid)
    return pids


@pytest.fixture
def ray_head(monkeypatch):
    """`ray start --head` of 2 CPUs on loopback, in a session of its own with its own temp dir (so
    no other Ray on this machine is touched or pointed at it), killed by session at the end. Token
    authentication (on by default since Ray 2.5x) is disabled for it and its client. Its first
    client's server can fail to start (Ray's proxy forks it among gRPC threads): the build then
    connects again (hnn_jax.cluster.RayRunner._connect), about 30 s later."""
    pytest.importorskip("ray")
    psutil = pytest.importorskip("psutil")
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every Ray port on loopback
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    port, client_port = _free_port(), _free_port()
    temp = tempfile.mkdtemp(prefix="hnnray")  # short: Ray's unix sockets live under it
    head = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--block",
         "--node-ip-address", "127.0.0.1", "--port", str(port), "--ray-client-server-port", str(client_port),
         "--num-cpus", "2", "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", temp],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", client_port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None and time.monotonic() < deadline, "ray start --head failed"
                time.sleep(0.2)
        pids = _session_pids(head.pid)
        listening = [c.laddr.ip for c in psutil.net_connections("inet")
                     if c.status == psutil.CONN_LISTEN and c.pid in pids]
        assert listening and all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for ip in listening), listening
        yield f"ray://127.0.0.1:{client_port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)  # the head's session: gcs, raylet, workers, client server
        head.wait(30)
        for pid in _session_pids(head.pid):  # any that left the process group
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def test_a_ray_client_address_builds_the_local_index_from_a_url(url, ray_head, local_codes, tmp_path):
    out = tmp_path / "ray.hnnidx"
    summary = build_index([url], out, runner=RayRunner(ray_head, workers=2), batch=1, progress=False)
    assert summary.backend == "Ray workers" and summary.workers == 2 and summary.indexed == len(MODELS)
    got = HammingIndex.load(out)
    assert got.ids == [url + name for name in MODELS]
    assert [str(got.get(i)[0]) for i in got.ids] == list(local_codes.values())
