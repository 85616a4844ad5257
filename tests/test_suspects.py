"""Tests for fingermarks.suspects: modules, ONNX files and HTTP endpoints queried for top-1 labels."""

from __future__ import annotations

import functools
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fingermarks.data.digits import load_digits_tensors
from fingermarks.errors import SuspectError
from fingermarks.key import Key
from fingermarks.model_io import export_onnx, save_model
from fingermarks.models import SmallCNN
from fingermarks.suspects import HttpSuspect, ModuleSuspect, OnnxSuspect, check_compatible, open_suspect
from fingermarks.verification import verify_suspect

torch.set_num_threads(1)


def tiny_model(shape: tuple[int, int, int] = (1, 8, 8), num_classes: int = 10, seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(num_classes=num_classes, input_shape=shape, width=4).eval()


@functools.lru_cache(maxsize=1)
def trained_model() -> SmallCNN:
    """A few full-batch steps on digits: an untrained net answers one class for every image."""
    x, y = load_digits_tensors()
    model = tiny_model().train()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(x[:512]), y[:512]).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def model() -> SmallCNN:
    return trained_model()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return load_digits_tensors()[0][1500:1512]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # urllib would send 127.0.0.1 through a proxy configured in the environment
    monkeypatch.setenv("no_proxy", "*")


def test_module_suspect_gives_argmax_labels(model: SmallCNN, images: torch.Tensor) -> None:
    suspect = ModuleSuspect(model, name="tiny")
    with torch.no_grad():
        expected = model(images).argmax(1)
    labels = suspect.labels(images)
    assert labels.dtype == torch.long and torch.equal(labels, expected)
    assert (suspect.name, suspect.input_shape, suspect.num_classes) == ("tiny", (1, 8, 8), 10)
    assert len(set(labels.tolist())) > 1  # a model answering one class would make this test vacuous


def test_onnx_suspect_matches_the_module(model: SmallCNN, images: torch.Tensor, tmp_path: Path) -> None:
    path = export_onnx(model, tmp_path / "model.onnx", model.input_shape)
    suspect = open_suspect(path)
    assert isinstance(suspect, OnnxSuspect)
    assert suspect.input_shape == (1, 8, 8) and suspect.num_classes == 10
    assert torch.equal(suspect.labels(images), ModuleSuspect(model).labels(images))


def test_open_suspect_reads_a_model_file(model: SmallCNN, images: torch.Tensor, tmp_path: Path) -> None:
    suspect = open_suspect(save_model(model, tmp_path / "model.pt"))
    assert isinstance(suspect, ModuleSuspect) and suspect.input_shape == (1, 8, 8)
    assert torch.equal(suspect.labels(images), ModuleSuspect(model).labels(images))


def test_open_suspect_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SuspectError, match="not found"):
        open_suspect(tmp_path / "gone.onnx")


def test_open_suspect_unreadable_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx model")
    with pytest.raises(SuspectError, match="ONNX"):
        open_suspect(junk)
    other = tmp_path / "other.pt"
    torch.save({"w": torch.zeros(1)}, other)
    with pytest.raises(SuspectError, match="not a fingermarks-model file"):
        open_suspect(other)


def test_check_compatible_names_the_mismatch(model: SmallCNN) -> None:
    suspect = ModuleSuspect(model, name="tiny")
    check_compatible(suspect, [1, 8, 8], 10)
    with pytest.raises(SuspectError, match="1x8x8.*1x28x28"):
        check_compatible(suspect, (1, 28, 28), 10)
    with pytest.raises(SuspectError, match="10 classes.*for 100"):
        check_compatible(suspect, (1, 8, 8), 100)
    check_compatible(HttpSuspect("http://127.0.0.1:1/"), (3, 32, 32), 100)  # unknown shape: nothing to check


def test_verify_suspect_refuses_a_suspect_of_another_input_shape() -> None:
    g = torch.Generator().manual_seed(0)
    key = Key(method="fingermarks", triggers=torch.rand(4, 1, 8, 8, generator=g), pairs=torch.tensor([[0, 1]] * 4),
              swap=torch.zeros(4, dtype=torch.bool), host_sha256="0" * 64,
              data={"name": "digits", "num_classes": 10, "input_shape": [1, 8, 8]},
              decision={"match": "pair", "null_rate": 0.2, "alpha": 0.01, "threshold_count": 4, "how": "by hand"})
    with pytest.raises(SuspectError, match="1x28x28"):
        verify_suspect(key, ModuleSuspect(tiny_model((1, 28, 28))))
    report = verify_suspect(key, ModuleSuspect(tiny_model(), name="tiny"))
    assert report.suspect == "tiny" and report.n_queries == 4


# -- HTTP endpoints ---------------------------------------------------------------------


def serve(answer) -> tuple[ThreadingHTTPServer, str]:
    """A local endpoint on a free port; `answer(request_json) -> bytes` builds the response body."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            payload = answer(json.loads(body))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/predict"


@pytest.fixture
def endpoint(request) -> Iterator[str]:
    server, url = serve(request.param)
    yield url
    server.shutdown()
    server.server_close()


def model_answer(request_json) -> bytes:
    x = torch.tensor(request_json["inputs"], dtype=torch.float32)
    return json.dumps({"labels": ModuleSuspect(trained_model()).labels(x).tolist()}).encode()


@pytest.mark.parametrize("endpoint", [model_answer], indirect=True)
def test_http_suspect_returns_the_served_models_labels(endpoint: str, images: torch.Tensor, model: SmallCNN) -> None:
    suspect = open_suspect(endpoint)
    assert isinstance(suspect, HttpSuspect) and suspect.name == endpoint
    labels = suspect.labels(images)
    assert labels.dtype == torch.long and torch.equal(labels, ModuleSuspect(model).labels(images))


def test_http_suspect_unreachable_endpoint_fails_fast(images: torch.Tensor) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(SuspectError, match="unreachable"):
        HttpSuspect(f"http://127.0.0.1:{port}/predict", timeout=2.0).labels(images)
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        (lambda req: b"<html>busy</html>", "did not answer JSON"),
        (lambda req: b"\xff\xfe\xfa garbage", "did not answer JSON"),
        (lambda req: json.dumps({"label": [0] * len(req["inputs"])}).encode(), "must answer"),
        (lambda req: json.dumps({"labels": [0]}).encode(), "must answer"),
        (lambda req: json.dumps([0] * len(req["inputs"])).encode(), "must answer"),
        (lambda req: json.dumps({"labels": ["cat"] * len(req["inputs"])}).encode(), "must answer"),
    ],
    indirect=["endpoint"],
    ids=["html", "not-utf8", "no-labels", "wrong-count", "bare-list", "not-ints"],
)
def test_http_suspect_bad_answers(endpoint: str, message: str, images: torch.Tensor) -> None:
    with pytest.raises(SuspectError, match=message):
        HttpSuspect(endpoint, timeout=5.0).labels(images)
