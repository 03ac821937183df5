"""Download, verify, convert and cache, against a local HTTP server on 127.0.0.1."""

import dataclasses
import hashlib
import http.server
import io
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import mnasnet
from mnasnet.checkpoint import read_checkpoint
from mnasnet.data.labels import imagenet_labels
from mnasnet.errors import CheckpointError, MnasNetError
from mnasnet.weights import download, get_weights, load_weights, registry
from mnasnet.weights.download import DownloadError, cache_dir, download_file

from conftest import randomize_bn
from oracles import import_timm


class _Server:
    """Serves ``files`` (path -> bytes); ``/short/...`` announces the full size but sends half."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                truncate = self.path.startswith("/short/")
                body = server.files.get(self.path.removeprefix("/short") if truncate else self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if truncate else body)
                if truncate:
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _free_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/weights.pth"  # nothing listens there any more


def _test_entry(base: str, **changes) -> registry.Weights:
    return dataclasses.replace(get_weights(base), aliases=(), mirrors=(), **changes)


def _leftovers(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MNASNET_HOME", str(tmp_path / "home"))
    # test entries must not leak into the real registry
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_ALIASES", dict(registry._ALIASES))
    return tmp_path / "home"


PAYLOAD = bytes(range(256)) * 1000


def test_download_success_and_hash_prefix(home):
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    with _Server({"/w.pth": PAYLOAD}) as server:
        target = home / "downloads" / "w.pth"
        assert download_file(f"{server.url}/w.pth", target, sha256=digest[:10], progress=False) == digest
    assert target.read_bytes() == PAYLOAD
    assert _leftovers(home) == [target]


def test_hash_mismatch_leaves_no_file(home):
    with _Server({"/w.pth": PAYLOAD}) as server:
        target = home / "downloads" / "w.pth"
        with pytest.raises(DownloadError, match="sha256 .* publisher gives deadbeef; the download was discarded"):
            download_file(f"{server.url}/w.pth", target, sha256="deadbeef", progress=False)
    assert _leftovers(home) == []


def test_interrupted_transfer_leaves_no_file(home):
    with _Server({"/w.pth": PAYLOAD}) as server:
        target = home / "downloads" / "w.pth"
        with pytest.raises(DownloadError, match="interrupted|stopped after"):
            download_file(f"{server.url}/short/w.pth", target, progress=False)
    assert _leftovers(home) == []


def test_http_404_is_one_clear_error(home):
    with _Server({}) as server, pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{server.url}/missing.pth", home / "x.pth", progress=False)
    assert _leftovers(home) == []


def test_no_network_says_what_to_download_and_where(home):
    entry = _test_entry("mnasnet1_0", name="b1_100.offline_in1k", publisher_name="offline", url=_free_port_url())
    registry.register_weights(entry)
    with pytest.raises(DownloadError) as info:
        load_weights("b1_100.offline_in1k", progress=False)
    message = str(info.value)
    expected_place = home / "downloads" / "weights.pth"
    assert f"download {entry.url} yourself and put it at {expected_place}" in message
    assert "path of a converted .safetensors checkpoint" in message
    assert _leftovers(home) == []


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("MNASNET_HOME", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("MNASNET_HOME")
    assert cache_dir() == tmp_path / "b" / "mnasnet"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir().name == "mnasnet"


@pytest.fixture(scope="module")
def timm_small_file():
    """timm's mnasnet_small with random weights and realistic BN statistics, as a state-dict file."""
    timm = import_timm()
    torch.manual_seed(0)
    model = randomize_bn(timm.create_model("mnasnet_small", pretrained=False), seed=1).eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return model, buffer.getvalue()


@pytest.mark.slow
def test_registry_name_downloads_converts_once_and_reuses(home, timm_small_file):
    timm_model, payload = timm_small_file
    digest = hashlib.sha256(payload).hexdigest()
    with _Server({"/mnasnet_small_test-12345678.pth": payload}) as server:
        entry = _test_entry(
            "mnasnet_small.lamb_in1k",
            name="small_100.test_in1k",
            publisher_name="small-test",
            url=f"{server.url}/short/mnasnet_small_test-12345678.pth",
            sha256=digest[:8],
        )
        # the first URL breaks off mid-transfer: the mirror serves the file
        entry = dataclasses.replace(entry, mirrors=(f"{server.url}/mnasnet_small_test-12345678.pth",))
        registry.register_weights(entry)
        model = mnasnet.create_model(weights="small_100.test_in1k")
        assert len(server.requests) == 2
        again = load_weights("small-test", progress=False)  # the publisher's name works too
        assert len(server.requests) == 2  # converted file reused, nothing downloaded

    converted = home / "converted" / "small_100.test_in1k.safetensors"
    assert _leftovers(home) == [converted, home / "downloads" / "mnasnet_small_test-12345678.pth"]
    checkpoint = read_checkpoint(converted)
    assert checkpoint.preprocess == entry.preprocess
    assert checkpoint.labels == imagenet_labels()
    assert checkpoint.extra["source_sha256"] == digest and checkpoint.extra["source"] == "timm"
    assert model.preprocess == again.preprocess == entry.preprocess

    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = timm_model(x)
        np.testing.assert_allclose(model(x).numpy(), expected.numpy(), atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(again(x).numpy(), expected.numpy(), atol=1e-4, rtol=1e-4)

    # a damaged converted file is converted again from the verified download
    converted.write_bytes(b"garbage")
    with _Server({}) as server:
        repaired = load_weights("small_100.test_in1k", progress=False)
    with torch.no_grad():
        np.testing.assert_allclose(repaired(x).numpy(), expected.numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_publisher_file_by_hand_and_local_paths(home, timm_small_file, tmp_path):
    _, payload = timm_small_file
    entry = _test_entry(
        "mnasnet_small.lamb_in1k",
        name="small_100.byhand_in1k",
        publisher_name="small-byhand",
        url=_free_port_url().replace("weights.pth", "small_byhand-0123abcd.pth"),
        sha256=hashlib.sha256(payload).hexdigest()[:8],
    )
    registry.register_weights(entry)
    # offline: the user put the publisher's file where the error message said
    manual = home / "downloads" / entry.file_name
    manual.parent.mkdir(parents=True)
    manual.write_bytes(payload)
    model = load_weights("small_100.byhand_in1k", progress=False)
    assert model.labels == imagenet_labels()
    # a local checkpoint path always works
    local = load_weights(home / "converted" / "small_100.byhand_in1k.safetensors")
    assert local.preprocess == entry.preprocess
    # so does the publisher's file itself, checked against its hash
    elsewhere = tmp_path / entry.file_name
    corrupted = bytearray(payload)
    corrupted[len(payload) // 2] ^= 0xFF
    elsewhere.write_bytes(bytes(corrupted))
    with pytest.raises(DownloadError, match="sha256"):
        load_weights(elsewhere)


def test_missing_local_path_and_unknown_name(home):
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(home / "nope.safetensors")
    with pytest.raises(CheckpointError, match="is a folder; convert"):
        load_weights(home.parent)
    with pytest.raises(ValueError, match="unknown weights"):
        load_weights("b1_100.nowhere")
    assert issubclass(DownloadError, MnasNetError)
    assert download.__name__ == "mnasnet.weights.download"


def test_google_tf_entry_downloads_converts_and_matches_tensorflow(home):
    # Google's entries are TF checkpoint tarballs with no published hash; serve the
    # TensorFlow-written fixture under such an entry and check TF's own logits.
    fixtures = Path(__file__).parent / "fixtures" / "tf"
    payload = (fixtures / "mnasnet-a1-0.2.tar.gz").read_bytes()
    with _Server({"/mnasnet-a1-test.tgz": payload}) as server:
        entry = _test_entry(
            "a1_100.google_in1k",
            name="a1_020.test_google",
            publisher_name="mnasnet-a1-test",
            url=f"{server.url}/mnasnet-a1-test.tgz",
            width_multiplier=0.2,
            num_classes=10,
            labels="",
        )
        assert entry.sha256 is None and entry.source == "tf"
        registry.register_weights(entry)
        model = load_weights("a1_020.test_google", progress=False)
        # the same file named as ImageNet weights has the wrong class count: one clear error
        registry.register_weights(
            dataclasses.replace(entry, name="a1_020.bad_google", publisher_name="bad", labels="imagenet-1k")
        )
        with pytest.raises(CheckpointError, match="has 10 classes"):
            load_weights("a1_020.bad_google", progress=False)
    assert model.config.padding == "same" and model.preprocess == entry.preprocess
    with np.load(fixtures / "logits.npz") as data:
        pixels, expected = data["input_224"], data["a1_logits_224"]
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255
    images = torch.from_numpy(((pixels.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        np.testing.assert_allclose(model(images).numpy(), expected, atol=1e-4)
    assert not (home / "converted" / "a1_020.bad_google.safetensors").exists()


@pytest.mark.slow
def test_cached_files_that_do_not_match_the_registry_hash_are_never_used(home, timm_small_file):
    timm_model, payload = timm_small_file
    digest = hashlib.sha256(payload).hexdigest()
    entry = _test_entry(
        "mnasnet_small.lamb_in1k", name="small_100.stale_in1k", publisher_name="small-stale", sha256=digest[:8]
    )
    # a truncated download left in the cache (by an older version, or by hand) is replaced
    stale = home / "downloads" / entry.file_name
    stale.parent.mkdir(parents=True)
    stale.write_bytes(payload[:1000])
    with _Server({f"/{entry.file_name}": payload}) as server:
        registry.register_weights(dataclasses.replace(entry, url=f"{server.url}/{entry.file_name}"))
        model = load_weights("small_100.stale_in1k", progress=False)
        assert len(server.requests) == 1
    assert hashlib.sha256(stale.read_bytes()).hexdigest() == digest
    # a converted file made from another source file is converted again, not used
    converted = home / "converted" / "small_100.stale_in1k.safetensors"
    other = mnasnet.create_model("small", num_classes=1000)
    from mnasnet.checkpoint import save_checkpoint

    save_checkpoint(other, converted, extra={"source_sha256": "0" * 64})
    again = load_weights("small_100.stale_in1k", progress=False)
    assert read_checkpoint(converted).extra["source_sha256"] == digest
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = timm_model(x).numpy()
        np.testing.assert_allclose(model(x).numpy(), expected, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(again(x).numpy(), expected, atol=1e-4, rtol=1e-4)
