"""Many suspects in one call: collect them (a folder, a list, a file of URLs), verify them (servers in
parallel on a thread pool, files one after another meanwhile), write one JSON and one HTML page per
suspect and one table of verdicts (CSV and Markdown)."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from fingermarks.errors import ConfigError
from fingermarks.files import atomic_write, save_json, write_csv
from fingermarks.key import Key
from fingermarks.reports.html import write_html
from fingermarks.reports.record import Verification, check_combinable, fmt_p, verify_one
from fingermarks.suspects import is_remote

MODEL_SUFFIXES = (".onnx", ".ckpt", ".pt", ".pth")
TABLE_COLUMNS = ["suspect", "verdict", "traced_user", "accused", "statistic", "matches", "n_queries", "threshold",
                 "p_value", "hamming", "margin", "protocol", "sha256", "seconds", "error", "json", "html"]


def collect_suspects(spec: str | os.PathLike | Sequence[str], skip: Iterable[str | os.PathLike] = ()) -> list[str]:
    """Suspects from a folder (every model file under it, sorted), a list or comma list, or a text file
    with one suspect per line (URLs or paths; blank lines, `#` lines and ` # comments` skipped). `skip`: paths to
    leave out (the key file, when a run folder is given)."""
    skipped = {Path(p).resolve() for p in skip}
    if isinstance(spec, (list, tuple)) or (not isinstance(spec, (str, os.PathLike)) and hasattr(spec, "__iter__")):
        items = [str(s).strip() for s in spec]
    else:
        text = str(spec).strip()
        path = Path(text)
        if not is_remote(text) and path.is_dir():
            items = [str(p) for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES]
            if not items:
                raise ConfigError(f"no model file ({', '.join(MODEL_SUFFIXES)}) under {path}")
        elif not is_remote(text) and path.is_file() and path.suffix.lower() not in MODEL_SUFFIXES:
            lines = [re.sub(r"\s+#.*$", "", line).strip() for line in path.read_text().splitlines()]
            items = [line for line in lines if line and not line.startswith("#")]
        else:
            items = [s.strip() for s in text.split(",")]
    items = [s for s in items if s and (is_remote(s) or Path(s).resolve() not in skipped)]
    if not items:
        raise ConfigError(f"no suspect in {spec!r}")
    return list(dict.fromkeys(items))  # in order, each once


def slug(text: str) -> str:
    text = re.sub(r"^[a-z0-9+]+://", "", text)
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")
    return (text[-80:] if len(text) > 80 else text) or "suspect"


def file_names(suspects: Sequence[str], base: str | None = None) -> list[str]:
    """A distinct, readable file stem per suspect (relative to `base` for the files under it)."""
    names, seen = [], set()
    for s in suspects:
        shown = s
        if base is not None and not is_remote(s):
            try:
                shown = str(Path(s).resolve().relative_to(Path(base).resolve()))
            except ValueError:
                pass
        stem, k = slug(shown), 2
        while stem.lower() in seen:
            stem, k = f"{slug(shown)}-{k}", k + 1
        seen.add(stem.lower())
        names.append(stem)
    return names


def verify_many(key: Key | Sequence[Key], suspects: Sequence[str], *, http: Mapping | None = None, protocol: str = "auto",
                workers: int = 8, key_path: str | Sequence[str] | None = None, command: str | None = None,
                on_done: Callable[[int, Verification], None] | None = None) -> list[Verification]:
    """Verify every suspect; servers go to a pool of `workers` threads while files are verified here.
    Nothing raises for one suspect: a failure is an incomplete Verification. Results keep the input order.
    Several keys (a list) give each suspect one combined verdict (reports.record.verify_combined)."""
    if not isinstance(key, Key):
        check_combinable(list(key))  # bad input fails once, before any suspect is queried
    results: list[Verification | None] = [None] * len(suspects)
    remote = [k for k, s in enumerate(suspects) if is_remote(s)]
    local = [k for k in range(len(suspects)) if k not in set(remote)]

    def run(k: int) -> Verification:
        return verify_one(key, suspects[k], http=http, protocol=protocol, key_path=key_path, command=command)

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(remote) or 1))) as pool:
        futures = {k: pool.submit(run, k) for k in remote}
        for k in local:
            results[k] = run(k)
            if on_done:
                on_done(k, results[k])
        for k, future in futures.items():
            results[k] = future.result()
            if on_done:
                on_done(k, results[k])
    return results  # type: ignore[return-value]


def table_row(v: Verification, stem: str | None = None) -> dict:
    r = v.report
    return {
        "suspect": v.suspect, "verdict": v.verdict, "traced_user": (r.traced_user or "") if r else "",
        "accused": ";".join(r.accused) if r else "",
        "statistic": f"{r.match_rate:.3f}" if r else "", "matches": r.matches if r else "",
        "n_queries": r.n_queries if r else "", "threshold": f"{r.threshold:.3f}" if r else "",
        "p_value": fmt_p(r.p_value) if r else "", "hamming": "" if r is None or r.hamming is None else r.hamming,
        "margin": "" if r is None or r.margin is None else r.margin, "protocol": v.protocol or "",
        "sha256": v.sha256 or "", "seconds": f"{v.seconds:.2f}", "error": v.error or "",
        "json": f"{stem}.json" if stem else "", "html": f"{stem}.html" if stem else "",
    }


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table(verifications: Sequence[Verification], out_dir: str | os.PathLike, stems: Sequence[str] | None = None,
                name: str = "verdicts") -> tuple[Path, Path]:
    """`verdicts.csv` and `verdicts.md`: one row per suspect, in order (the SHA-256 shortened in Markdown)."""
    out_dir = Path(out_dir)
    rows = [table_row(v, stems[k] if stems else None) for k, v in enumerate(verifications)]
    csv_path = write_csv(rows, out_dir / f"{name}.csv", columns=TABLE_COLUMNS)
    md_rows = [{**row, "sha256": row["sha256"][:12]} for row in rows]
    owned = sum(v.verdict == "owned" for v in verifications)
    incomplete = sum(v.verdict == "incomplete" for v in verifications)
    text = (f"# Verdicts\n\n{len(rows)} suspects: {owned} owned, {len(rows) - owned - incomplete} not owned, "
            f"{incomplete} incomplete.\n\n" + markdown_table(md_rows, TABLE_COLUMNS))

    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    md_path = atomic_write(out_dir / f"{name}.md", write)
    return csv_path, md_path


def write_reports(verifications: Sequence[Verification], out_dir: str | os.PathLike, *, key: Key | None = None,
                  key_material: bool = False, base: str | None = None) -> list[str]:
    """One JSON and one HTML page per verification, then the table; returns the file stems, in order."""
    out_dir = Path(out_dir)
    stems = file_names([v.suspect for v in verifications], base)
    for v, stem in zip(verifications, stems):
        write_one(v, out_dir, stem, key=key, key_material=key_material)
    write_table(verifications, out_dir, stems)
    return stems


def write_one(v: Verification, out_dir: str | os.PathLike, stem: str, *, key: Key | None = None,
              key_material: bool = False) -> None:
    save_json(v.to_dict(key_material=key_material), Path(out_dir) / f"{stem}.json")
    write_html(v, Path(out_dir) / f"{stem}.html", key=key, key_material=key_material)
