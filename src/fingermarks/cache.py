"""A content-addressed cache for trained models: same recipe and seed, same file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


def recipe_hash(recipe: Any) -> str:
    """Stable hash of a (possibly OmegaConf) recipe: keys sorted, interpolations resolved."""
    if isinstance(recipe, DictConfig):
        recipe = OmegaConf.to_container(recipe, resolve=True)
    text = json.dumps(recipe, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path(cache_dir: str | Path | None, kind: str, recipe: Any, suffix: str = ".ckpt") -> Path | None:
    if cache_dir is None:
        return None
    return Path(cache_dir) / kind / f"{recipe_hash(recipe)}{suffix}"
