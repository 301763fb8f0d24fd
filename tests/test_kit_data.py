"""Data and weights loading, tested against a local HTTP server on loopback.

The real hosts (share.deel.ai, download.pytorch.org) are not reachable from CI; the code
paths that talk to them are the same ones exercised here.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import threading
import time

import numpy as np
import pytest
import torch

import craftlab

FIXTURE_N = 6


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


GOOD = npz_bytes(arr_0=craftlab.make_fixture(FIXTURE_N))


class Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}
    hits: dict = {}

    def log_message(self, *args):  # keep pytest output clean
        pass

    def send_body(self, body: bytes, length: int | None = None, status: int = 200):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        name = self.path.strip("/")
        Handler.hits[name] = Handler.hits.get(name, 0) + 1
        route = Handler.routes.get(name)
        if route is None:
            self.send_error(404, "no such file")
            return
        route(self, Handler.hits[name])


def corrupt(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64]) + data[middle + 64:]


Handler.routes = {
    "ok": lambda h, n: h.send_body(GOOD),
    # announces the full size, sends half, closes the connection
    "truncated": lambda h, n: h.send_body(GOOD[: len(GOOD) // 2], length=len(GOOD)),
    # right size, flipped bytes inside the array: only the zip CRC can tell
    "corrupt": lambda h, n: h.send_body(corrupt(GOOD)),
    # fails twice, then works: retries must get it
    "flaky": lambda h, n: h.send_error(503, "busy") if n <= 2 else h.send_body(GOOD),
    "slow": lambda h, n: (time.sleep(3), h.send_body(GOOD)),
    "html": lambda h, n: h.send_body(b"<html><body>Please log in</body></html>"),
    "wrong_shape": lambda h, n: h.send_body(npz_bytes(arr_0=np.zeros((2, 32, 32, 3), np.uint8))),
    "wrong_key": lambda h, n: h.send_body(npz_bytes(images=craftlab.make_fixture(2))),
    "empty": lambda h, n: h.send_body(b""),
}


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def reset_hits():
    Handler.hits.clear()


def online(tmp_path, url, **env):
    values = {"CRAFT_LAB_DATA_DIR": str(tmp_path), "CRAFT_LAB_RABBIT_URL": url, **env}
    settings = craftlab.Settings.from_env(values)
    return craftlab.Settings(**{**settings.__dict__, "timeout": 1.0, "retries": 3})


def test_download_and_cache(server, tmp_path, capsys):
    images = craftlab.load_rabbits(online(tmp_path, f"{server}/ok"))
    assert images.shape == (FIXTURE_N, 224, 224, 3) and images.dtype == np.uint8
    assert (tmp_path / "rabbit.npz").read_bytes() == GOOD
    assert not list(tmp_path.glob("*.part"))
    again = craftlab.load_rabbits(online(tmp_path, f"{server}/ok"))
    assert Handler.hits == {"ok": 1}, "the second load must use the cached file"
    assert np.array_equal(images, again)
    out = capsys.readouterr().out
    assert "Downloading rabbit.npz" in out and "Using the cached" in out
    assert "OFFLINE" not in out


def test_n_images_limits_the_images(server, tmp_path):
    images = craftlab.load_rabbits(online(tmp_path, f"{server}/ok", CRAFT_LAB_N_IMAGES="4"))
    assert images.shape[0] == 4


def test_retries_get_through_a_flaky_server(server, tmp_path):
    path = craftlab.download(f"{server}/flaky", tmp_path / "r.npz", retries=3, backoff=0.01, quiet=True)
    assert path.read_bytes() == GOOD
    assert Handler.hits["flaky"] == 3


@pytest.mark.parametrize("route, reason", [
    ("truncated", "the server announced"),
    ("missing", "404"),
    ("slow", "timed out"),
    ("empty", "empty file"),
])
def test_failed_downloads_leave_nothing_and_say_what_to_do(server, tmp_path, route, reason):
    dest = tmp_path / "rabbit.npz"
    with pytest.raises(craftlab.LabDataError) as err:
        craftlab.download(f"{server}/{route}", dest, timeout=1.0, retries=2, backoff=0.01, quiet=True)
    message = str(err.value)
    assert reason in message
    assert f"{server}/{route}" in message and "after 2 attempts" in message
    assert "CRAFT_LAB_OFFLINE=1" in message and str(dest) in message
    assert not dest.exists() and not list(tmp_path.glob("*.part"))
    assert Handler.hits.get(route, 0) == 2 or route == "missing"


@pytest.mark.parametrize("route, reason", [
    ("corrupt", "not a readable .npz"),
    ("html", "not a readable .npz"),
    ("wrong_shape", "expected uint8 (N, 224, 224, 3)"),
    ("wrong_key", "expected one named 'arr_0'"),
])
def test_bad_content_is_refused_with_a_fix(server, tmp_path, route, reason):
    with pytest.raises(craftlab.LabDataError) as err:
        craftlab.load_rabbits(online(tmp_path, f"{server}/{route}"))
    assert reason in str(err.value)
    assert "Delete" in str(err.value) and "CRAFT_LAB_OFFLINE=1" in str(err.value)


def test_sha256_is_checked_when_given(server, tmp_path):
    good = hashlib.sha256(GOOD).hexdigest()
    assert craftlab.load_rabbits(online(tmp_path, f"{server}/ok", CRAFT_LAB_RABBIT_SHA256=good)).shape[0] == FIXTURE_N
    with pytest.raises(craftlab.LabDataError, match="SHA-256"):
        craftlab.load_rabbits(online(tmp_path, f"{server}/ok", CRAFT_LAB_RABBIT_SHA256="0" * 64))


def test_offline_mode_says_so_and_never_downloads(server, tmp_path, capsys):
    settings = craftlab.Settings.from_env({"CRAFT_LAB_OFFLINE": "1", "CRAFT_LAB_N_IMAGES": "3",
                                           "CRAFT_LAB_RABBIT_URL": f"{server}/ok",
                                           "CRAFT_LAB_DATA_DIR": str(tmp_path)})
    images = craftlab.load_rabbits(settings)
    assert images.shape == (3, 224, 224, 3) and images.dtype == np.uint8
    assert Handler.hits == {} and not list(tmp_path.iterdir())
    assert "OFFLINE MODE" in capsys.readouterr().out


def test_fixture_has_the_real_shape_and_is_deterministic():
    a, b = craftlab.make_fixture(4), craftlab.make_fixture(4)
    assert a.shape == (4, 224, 224, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a[0], a[1]), "images must differ from each other"
    assert a.std() > 10, "images must have structure for the NMF to find"


@pytest.mark.parametrize("value", ["0", "-3", "ten", "2.5"])
def test_bad_n_images_is_a_clear_error(value):
    with pytest.raises(ValueError, match="CRAFT_LAB_N_IMAGES"):
        craftlab.Settings.from_env({"CRAFT_LAB_N_IMAGES": value})


# ----------------------------------------------------------------------------- weights

@pytest.fixture(scope="module")
def served_weights(server, tmp_path_factory):
    """A random ResNet50 state dict served under a torch-hub style name (hash prefix in it)."""
    from torchvision import models

    torch.manual_seed(123)
    state = models.resnet50(weights=None).state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    name = f"resnet50-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    Handler.routes[name] = lambda h, n: h.send_body(data)
    Handler.routes["resnet50-00000000.pth"] = lambda h, n: h.send_body(data)
    yield name, state
    del Handler.routes[name], Handler.routes["resnet50-00000000.pth"]


def test_pretrained_weights_are_pinned_to_v1():
    from torchvision import models

    assert craftlab.WEIGHTS_NAME == "IMAGENET1K_V1"
    assert models.ResNet50_Weights[craftlab.WEIGHTS_NAME].url.endswith("resnet50-0676ba61.pth")
    assert models.ResNet50_Weights.DEFAULT is not models.ResNet50_Weights[craftlab.WEIGHTS_NAME]


def test_weights_download_through_the_pinned_enum(server, served_weights, tmp_path, monkeypatch, capsys):
    from torchvision import models

    name, state = served_weights
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(models.ResNet50_Weights.IMAGENET1K_V1.value, "url", f"{server}/{name}")
    model = craftlab.load_resnet50(craftlab.Settings.from_env({}))
    assert Handler.hits == {name: 1}
    assert model.training, "the loader must leave the mode to the student"
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key
    assert "IMAGENET1K_V1" in capsys.readouterr().out


def test_weights_with_a_wrong_hash_are_refused(server, served_weights, tmp_path, monkeypatch):
    from torchvision import models

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(models.ResNet50_Weights.IMAGENET1K_V1.value, "url",
                        f"{server}/resnet50-00000000.pth")
    with pytest.raises(RuntimeError, match="invalid hash"):
        craftlab.load_resnet50(craftlab.Settings.from_env({}))


def test_offline_weights_are_seeded_and_announced(capsys):
    settings = craftlab.Settings.from_env({"CRAFT_LAB_OFFLINE": "1"})
    a, b = craftlab.load_resnet50(settings), craftlab.load_resnet50(settings)
    assert torch.equal(a.fc.weight, b.fc.weight)
    assert "OFFLINE MODE" in capsys.readouterr().out
