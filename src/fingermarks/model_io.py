"""Model files: the project's self-describing checkpoint and the ONNX export.

A model file holds the architecture name, its constructor arguments and the
weights, nothing else: no trigger, label pair, encoding or user registry ever goes
in (the key stays with the owner). `load_model` gives the `nn.Module` back for
anyone who wants to attack or study a distributed model.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from fingermarks.errors import CheckpointError
from fingermarks.files import atomic_write, save_torch
from fingermarks.models import build_model

MODEL_FORMAT = "fingermarks-model"
MODEL_FORMAT_VERSION = 1


def save_model(model: nn.Module, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write `model` (an `ImageClassifier`) as a self-describing checkpoint, atomically."""
    payload = {
        "format": MODEL_FORMAT,
        "version": MODEL_FORMAT_VERSION,
        "arch": model.arch_name,
        "arch_kwargs": dict(model.arch_kwargs),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    return save_torch(payload, path)


def read_model_file(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or not a torch file at all
        raise CheckpointError(f"cannot read model file {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{path} is not a {MODEL_FORMAT} file (see fingermarks.model_io.save_model)")
    if payload.get("version") != MODEL_FORMAT_VERSION:
        raise CheckpointError(f"{path} has model format version {payload.get('version')}, expected {MODEL_FORMAT_VERSION}")
    return payload


def load_model(
    path: str | os.PathLike,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
) -> nn.Module:
    """Load a model file written by `save_model` as an `nn.Module` in eval mode.

    The optional `arch`, `num_classes` and `input_shape` are what the caller
    expects; a file that disagrees raises `CheckpointError` naming the mismatch.
    """
    payload = read_model_file(path)
    kwargs = payload["arch_kwargs"]
    found = {"arch": payload["arch"], "num_classes": kwargs.get("num_classes"), "input_shape": list(kwargs.get("input_shape", []))}
    wanted = {"arch": arch, "num_classes": num_classes, "input_shape": None if input_shape is None else list(input_shape)}
    for name, want in wanted.items():
        if want is not None and found[name] != want:
            raise CheckpointError(
                f"{path} holds a {found['arch']} for {found['num_classes']} classes of input "
                f"{'x'.join(map(str, found['input_shape']))}; expected {name}={want}"
            )
    model = build_model(payload["arch"], **kwargs)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit a {payload['arch']} built from its own arguments: {exc}") from None
    return model.eval()


def export_onnx(model: nn.Module, path: str | os.PathLike, input_shape: Sequence[int]) -> Path:
    """Export `model` to ONNX with a dynamic batch axis: input `pixels` in [0, 1], output `logits`."""
    model = model.eval()
    example = torch.rand(1, *input_shape)

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated but needs no onnxscript and handles every model here.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example,), tmp, dynamo=False, input_names=["pixels"], output_names=["logits"],
                dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
            )

    return atomic_write(path, write)
