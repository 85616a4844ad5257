"""The project's Hydra config for benchmark scripts (run from this folder)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig

from fingermarks.hydra_compose import compose_run_config

ROOT = Path(__file__).resolve().parents[1]
logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")


def compose_config(overrides: list[str], output_dir: str | Path) -> DictConfig:
    """The config `train.py` would see for these overrides, with `output_dir` as the run directory."""
    return compose_run_config(ROOT / "conf", overrides, output_dir, job_name="benchmark")


def seed_results(name: str, seeds: list[int], measure: Callable[[int], dict], settings: dict, reuse: bool) -> list[dict]:
    """Each seed's result, written to results/<name>_seed<k>.json as soon as it is measured (with
    `settings` added); with `reuse`, read back from that file instead when it was measured with the
    same settings."""
    from fingermarks.files import save_json

    results = []
    for s in seeds:
        path = ROOT / "benchmarks" / "results" / f"{name}_seed{s}.json"
        if reuse and path.is_file():
            result = json.loads(path.read_text())
            if any(result.get(k) != v for k, v in settings.items()):
                raise SystemExit(f"{path} was measured with other settings; run without --reuse")
        else:
            result = measure(s) | settings
            save_json(result, path)
        results.append(result)
    return results
