"""Atomic file writes: every artifact lands whole or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], overwrite: bool = True) -> Path:
    """Call `write(tmp_path)` then move the temporary file onto `path` in one step."""
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_torch(obj: Any, path: str | os.PathLike, overwrite: bool = True) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp), overwrite=overwrite)


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, default=_jsonable)
            fh.write("\n")

    return atomic_write(path, write)


def write_csv(rows: list[dict[str, Any]], path: str | os.PathLike, columns: list[str] | None = None) -> Path:
    """A tidy table (one dict per row) as CSV, atomically; `columns` fixes the column order."""
    import csv

    fields = columns if columns is not None else (list(rows[0]) if rows else [])

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    return atomic_write(path, write)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
