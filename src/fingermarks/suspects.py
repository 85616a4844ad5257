"""Suspect models, queried for top-1 labels only: a module, a model file, an ONNX file, or an HTTP endpoint."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Protocol, Sequence

import torch
from torch import nn

from fingermarks.errors import CheckpointError, SuspectError
from fingermarks.metrics import predict_labels


class Suspect(Protocol):
    """Anything that answers a batch of images (N, C, H, W) in [0, 1] with top-1 labels."""

    name: str
    input_shape: tuple[int, ...] | None
    num_classes: int | None

    def labels(self, x: torch.Tensor) -> torch.Tensor: ...


class ModuleSuspect:
    """A model in memory (PyTorch module)."""

    def __init__(self, model: nn.Module, name: str = "module") -> None:
        self.model, self.name = model, name
        self.input_shape = tuple(getattr(model, "input_shape", ())) or None
        self.num_classes = getattr(model, "num_classes", None)

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        return predict_labels(self.model, x)


class OnnxSuspect:
    """An ONNX file run by onnxruntime, e.g. a distributed model found on an edge device."""

    def __init__(self, path: str | os.PathLike) -> None:
        import onnxruntime as ort

        self.name = str(path)
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise SuspectError(f"cannot load ONNX model {path}: {exc}") from None
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name = inp.name
        dims = [d if isinstance(d, int) else None for d in inp.shape[1:]]
        self.input_shape = tuple(dims) if dims and all(d is not None for d in dims) else None
        last = out.shape[-1] if out.shape else None
        self.num_classes = last if isinstance(last, int) else None

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        try:
            logits = self.session.run(None, {self.input_name: x.numpy().astype("float32")})[0]
        except Exception as exc:
            raise SuspectError(f"ONNX model {self.name} rejected the query: {exc}") from None
        return torch.as_tensor(logits).argmax(1).long()


class HttpSuspect:
    """A remote classifier: POST {"inputs": [[...image...], ...]} -> {"labels": [int, ...]}."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.name, self.url, self.timeout = url, url, timeout
        self.input_shape = None
        self.num_classes = None

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        body = json.dumps({"inputs": x.tolist()}).encode()
        request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # reached, but it refused the query
            raise SuspectError(f"endpoint {self.url} answered HTTP {exc.code}: {exc.reason}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise SuspectError(f"endpoint {self.url} unreachable: {getattr(exc, 'reason', exc)}") from None
        except ValueError:  # JSONDecodeError, or a body that is not even UTF-8 text
            raise SuspectError(f"endpoint {self.url} did not answer JSON") from None
        labels = answer.get("labels") if isinstance(answer, dict) else None
        if (not isinstance(labels, list) or len(labels) != len(x)
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in labels)):
            raise SuspectError(f"endpoint {self.url} must answer {{\"labels\": [{len(x)} ints]}}")
        return torch.tensor(labels, dtype=torch.long)


def open_suspect(spec: str | os.PathLike | nn.Module) -> Suspect:
    """A suspect from a module, an `http(s)://` URL, an `.onnx` file, or a project model file."""
    if isinstance(spec, nn.Module):
        return ModuleSuspect(spec)
    text = str(spec)
    if text.startswith(("http://", "https://")):
        return HttpSuspect(text)
    path = Path(text)
    if not path.is_file():
        raise SuspectError(f"suspect not found: {path}")
    if path.suffix.lower() == ".onnx":
        return OnnxSuspect(path)
    from fingermarks.model_io import load_model

    try:
        return ModuleSuspect(load_model(path), name=str(path))
    except CheckpointError as exc:
        raise SuspectError(str(exc)) from None


def check_compatible(suspect: Suspect, input_shape: Sequence[int], num_classes: int) -> None:
    """Fail early, with the reason, when a suspect cannot be queried with these triggers."""
    if suspect.input_shape is not None and tuple(suspect.input_shape) != tuple(input_shape):
        raise SuspectError(
            f"suspect {suspect.name} takes input {'x'.join(map(str, suspect.input_shape))}, "
            f"but the key's triggers are {'x'.join(map(str, input_shape))}: it cannot be this key's model"
        )
    if suspect.num_classes is not None and suspect.num_classes != num_classes:
        raise SuspectError(
            f"suspect {suspect.name} has {suspect.num_classes} classes, the key is for {num_classes}: "
            "it cannot be this key's model"
        )
