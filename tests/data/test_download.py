"""Downloads, against a real HTTP server on the loopback interface (no outside network)."""
import hashlib
import http.server
import threading
from functools import partial

import pytest

from relulab.data import DataSpec, load_raw, sources
from relulab.core.errors import UserError

from conftest import write_idx_dataset


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/www over HTTP on 127.0.0.1; yields the base URL."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def _serve_mnist(root, base, monkeypatch, corrupt=None):
    write_idx_dataset(root)
    remotes = []
    for name in sources.IDX_FILES:
        md5 = hashlib.md5((root / name).read_bytes()).hexdigest()
        remotes.append(sources.RemoteFile(base + name, "0" * 32 if name == corrupt else md5))
    monkeypatch.setitem(sources.REMOTE, "mnist", remotes)
    monkeypatch.delenv("RELULAB_OFFLINE")


def test_missing_dataset_is_downloaded_checked_and_cached(server, monkeypatch, tmp_path):
    root, base = server
    _serve_mnist(root, base, monkeypatch)
    monkeypatch.setenv("RELULAB_CACHE", str(tmp_path / "cache"))
    raw = load_raw(DataSpec("mnist"))
    assert raw.source == str(tmp_path / "cache" / "mnist") and raw.x_train.shape == (60, 1, 28, 28)
    assert sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir()) == sorted(sources.IDX_FILES)


def test_a_checksum_mismatch_is_an_error_and_leaves_no_file(server, monkeypatch, tmp_path):
    root, base = server
    _serve_mnist(root, base, monkeypatch, corrupt="t10k-images-idx3-ubyte.gz")
    monkeypatch.setenv("RELULAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.gz: downloaded file fails its MD5 check"):
        load_raw(DataSpec("mnist"))
    left = [p.name for p in (tmp_path / "cache" / "mnist").iterdir()]
    assert "t10k-images-idx3-ubyte.gz" not in left and not any(n.startswith(".part-") for n in left)


def test_no_download_when_offline_or_told_not_to(server, monkeypatch, tmp_path):
    root, base = server
    _serve_mnist(root, base, monkeypatch)
    monkeypatch.setenv("RELULAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="dataset mnist: files not found"):
        load_raw(DataSpec("mnist", download=False))
    monkeypatch.setenv("RELULAB_OFFLINE", "1")
    with pytest.raises(UserError, match="dataset mnist: files not found"):
        load_raw(DataSpec("mnist"))
    assert not (tmp_path / "cache" / "mnist").exists()
