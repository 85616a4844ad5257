"""What `verify.py` does with its config: one suspect (`suspect=`) or many (`suspects=`)."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from fingermarks.errors import ConfigError
from fingermarks.key import load_key
from fingermarks.reports.batch import collect_suspects, file_names, verify_many, write_one, write_table
from fingermarks.reports.html import write_html
from fingermarks.reports.record import Verification, check_combinable, current_command, verify_one
from fingermarks.suspects import is_remote


def http_node(cfg: DictConfig) -> dict | None:
    node = cfg.get("http")
    return None if node is None else OmegaConf.to_container(node, resolve=True)


def verify_command(cfg: DictConfig, argv: list[str] | None = None) -> int:
    """Run verify.py's config; the exit status: 0 when every verification completed (owned or not),
    1 when one or more are incomplete (each error printed as one line). Bad input raises (one line, status 2)."""
    single, many = cfg.get("suspect"), cfg.get("suspects")
    if not cfg.get("key") or bool(single) == bool(many):
        raise ConfigError("give key=<key file> and either suspect=<model file | .onnx | URL> or "
                          "suspects=<folder | [list] | file of URLs> report=<out dir>")
    key_material = bool(cfg.get("report_key_material", False))
    protocol = str(cfg.get("protocol") or "auto")
    # key=[a.pt,b.pt]: several keys of one host, one combined verdict (evidence.combine)
    key_paths = [str(k) for k in cfg.key] if isinstance(cfg.key, (list, tuple, ListConfig)) else [str(cfg.key)]
    keys = [load_key(k) for k in key_paths]
    if len(keys) > 1:
        check_combinable(keys)
    key = keys[0] if len(keys) == 1 else keys
    key_path = key_paths[0] if len(keys) == 1 else key_paths
    page_key = keys[0] if len(keys) == 1 else None  # the key-material sections show one key's triggers
    command = current_command(argv)
    if single:
        v = verify_one(key, str(single), http=http_node(cfg), protocol=protocol, key_path=key_path,
                       command=command, catch=False)
        for k, part in enumerate(v.parts):  # a combined verdict: each key's own word first
            print(f"key {k + 1} ({part.report.method}, {part.mode} mode): {part.report.summary()}")
        print(("combined: " if v.parts else "") + v.report.summary())
        if cfg.get("report"):
            from fingermarks.files import save_json

            save_json(v.to_dict(key_material=key_material), cfg.report)
            print(f"report written to {cfg.report}")
        if cfg.get("html"):
            write_html(v, cfg.html, key=page_key, key_material=key_material)
            print(f"evidence page written to {cfg.html}")
        return 0
    if not cfg.get("report"):
        raise ConfigError("suspects= needs report=<out dir> for the per-suspect reports and the table")
    spec = list(many) if isinstance(many, (list, tuple, ListConfig)) else str(many)
    suspects = collect_suspects(spec, skip=key_paths)
    out_dir = Path(cfg.report)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"report={out_dir} is a file; with suspects= it is the folder for the reports")
    base = spec if isinstance(spec, str) and Path(spec).is_dir() else None
    stems = file_names(suspects, base)
    workers = int(cfg.get("workers") or 8)
    print(f"verifying {len(suspects)} suspects ({sum(map(is_remote, suspects))} on servers, {workers} at a time)")

    def done(k: int, v: Verification) -> None:  # reports land as each verification ends
        write_one(v, out_dir, stems[k], key=page_key, key_material=key_material)
        line = v.report.summary() if v.complete else v.error
        print(f"[{v.verdict:>10}] {v.suspect}: {line}", flush=True)
        if not v.complete:
            print(f"error: {v.suspect}: {v.error}", file=sys.stderr, flush=True)

    results = verify_many(key, suspects, http=http_node(cfg), protocol=protocol, workers=workers,
                          key_path=key_path, command=command, on_done=done)
    csv_path, md_path = write_table(results, out_dir, stems)
    incomplete = sum(not v.complete for v in results)
    owned = sum(v.verdict == "owned" for v in results)
    print(f"{len(results)} suspects: {owned} owned, {len(results) - owned - incomplete} not owned, {incomplete} incomplete; "
          f"table: {csv_path} and {md_path}")
    return 1 if incomplete else 0
