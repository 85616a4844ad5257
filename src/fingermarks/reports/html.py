"""The evidence page: one self-contained HTML file per verification, for a person who will not read JSON.

No network is needed to open it (inline CSS, pictures as data: URIs, no script). By default it holds no
key material: the statistic, the threshold, the false-claim probability, the agreement with each registered
ID (distances only), the digests, the software and the command. The bits read against the IDs, the trigger
images and the suspect's answers are added only with `key_material=True` (the page then says so on top).
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from fingermarks.files import atomic_write
from fingermarks.key import Key
from fingermarks.reports import figures
from fingermarks.reports.record import Verification, fmt_p

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1000px; color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.verdict { font-size: 1.15em; padding: 0.8em 1em; border-radius: 6px; border-left: 6px solid; }
.owned { background: #fbe9e7; border-color: #b2182b; } .not-owned { background: #e8f0fb; border-color: #2166ac; }
.incomplete { background: #fff6d5; border-color: #c49a00; }
.warning { background: #fde0dc; border: 2px solid #b2182b; padding: 0.6em 1em; font-weight: bold; }
.note { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; width: 100%; font-size: 0.92em; }
th, td { text-align: left; vertical-align: top; padding: 0.35em 0.6em; border-bottom: 1px solid #eee; }
th { width: 13em; color: #444; font-weight: 600; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace; font-size: 0.88em; word-break: break-all; }
img { max-width: 100%; }
"""


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def rows(pairs: list[tuple[str, object]], mono: tuple[str, ...] = ()) -> str:
    out = []
    for name, value in pairs:
        cell = f'<span class="mono">{esc(value)}</span>' if name in mono else esc(value)
        out.append(f"<tr><th>{esc(name)}</th><td>{cell}</td></tr>")
    return "<table>" + "".join(out) + "</table>"


def image(png: bytes, alt: str) -> str:
    return f'<img src="{figures.data_uri(png)}" alt="{esc(alt)}">'


def render_html(v: Verification, key: Key | None = None, key_material: bool = False) -> str:
    """The page for one verification; `key` is needed only for the key-material sections."""
    r = v.report
    css = {"owned": "owned", "not owned": "not-owned", "incomplete": "incomplete"}[v.verdict]
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>Verification of {esc(v.suspect)}: {esc(v.verdict)}</title><style>{STYLE}</style></head><body>"]
    parts.append(f"<h1>Ownership verification: {esc(v.verdict.upper())}</h1>")
    parts.append(f'<p class="note">Suspect <span class="mono">{esc(v.suspect)}</span>, checked {esc(v.started)} '
                 f"in {v.seconds:.2f} s.</p>")
    if key_material:
        parts.append('<p class="warning" id="key-material">This page holds KEY MATERIAL (the registered IDs\' bits, the '
                     "trigger images and the suspect's answers to them). Keep it with the key; do not share it.</p>")
    parts.append(f'<p class="verdict {css}" id="verdict">{esc(v.sentence())}</p>')
    if r is not None:
        parts.append("<h2>The statistic</h2>")
        stats = [("question", r.question), ("decision rule", r.rule), ("method", r.method),
                 ("statistic", f"{r.match_rate:.3f} ({r.matches} of {r.n_queries} queries)"),
                 ("threshold", f"{r.threshold:.3f}"), ("how the threshold was set", r.threshold_how),
                 ("false-claim probability (p-value)", fmt_p(r.p_value)), ("what the p-value assumes", r.p_value_how),
                 ("alpha", f"{r.alpha:g}"), ("verdict", "owned" if r.owned else "not owned")]
        if r.distances:
            stats += [("traced user", r.traced_user if r.traced_user is not None else "nobody"),
                      ("Hamming distance to the nearest ID", r.hamming), ("margin to the runner-up", r.margin),
                      ("runner-up", r.runner_up), ("tracing p-value", fmt_p(r.trace_p_value)),
                      ("readable triggers", r.valid_bits)]
            if r.rule == "code" or r.accused:  # collusion: every user named on their own score
                p = r.evidence.get("accusation_p_values", {})
                stats.append(("accused users (each on their own score; the chance that any innocent is accused is "
                              f"<= {r.evidence.get('accusation_alpha', r.alpha):g})",
                              ", ".join(f"{u} (p {fmt_p(p[u])})" if u in p else u for u in r.accused) or "nobody"))
        parts.append(rows(stats))
        if "combination" in r.evidence:  # a combined verdict: each key's own word, with its own bound
            parts.append("<h2>Each key</h2>")
            parts.append(rows([(k["key"], f"{'owned' if k['owned'] else 'not owned'} ({k['question']}, "
                                          f"{k['evidence'].get('mode', 'labels')} mode): statistic {k['match_rate']:.3f} vs "
                                          f"threshold {k['threshold']:.3f}, p-value {fmt_p(k['p_value'])} (Holm "
                                          f"{fmt_p(h)}), alpha {k['alpha']:g}")
                               for k, h in zip(r.evidence["keys"], r.evidence["combination"]["holm_p_values"])]))
        parts.append("<h2>Agreement with the registered IDs</h2>")
        parts.append('<p class="note">Distances only: how many readable triggers agree with each registered ID (and with '
                     "the host's own answer pattern). A model made without the key agrees with any ID on about half.</p>")
        parts.append(image(figures.statistic_figure(r), "the statistic against its threshold and the agreement with each ID"))
        if key_material and key is not None and v.labels is not None:
            import torch

            labels = torch.tensor(v.labels, dtype=torch.long)
            parts.append("<h2>Bits read against the registered IDs (key material)</h2>")
            parts.append(image(figures.bits_figure(key.read_bits(labels), key.users, r.traced_user),
                               "bits read from the suspect against every registered ID"))
            parts.append("<h2>Trigger images and the suspect's answers (key material)</h2>")
            parts.append('<p class="note">Above each image: trigger number, the suspect\'s answer, and the trigger\'s pair (i/j); '
                         "green where the answer is one of the pair.</p>")
            parts.append(image(figures.triggers_figure(key.triggers, v.labels, key.pairs), "trigger images with answers"))
            parts.append(f'<p class="mono" id="answers">answers: {esc(" ".join(map(str, v.labels)))}</p>')
    parts.append("<h2>Provenance</h2>")
    provenance = [("suspect", v.suspect), ("suspect kind", v.kind + (f" ({v.protocol} protocol)" if v.protocol else "")),
                  ("suspect SHA-256", v.sha256 or ("n/a: the weights sit on a server" if v.kind == "server" else "n/a")),
                  ("key digest (SHA-256)", v.key_digest), ("key file", v.key_path or "n/a"),
                  ("software", ", ".join(f"{k} {val}" for k, val in v.software.items())),
                  ("command", v.command or "n/a"), ("started (UTC)", v.started), ("seconds", f"{v.seconds:.2f}")]
    if v.error:
        provenance.insert(0, ("error", v.error))
    parts.append(rows(provenance, mono=("suspect", "suspect SHA-256", "key digest (SHA-256)", "command", "key file")))
    if not key_material:
        parts.append('<p class="note" id="no-key-material">This page holds no key material: no trigger image, no '
                     "registered ID's bits, no answer of the suspect to the triggers.</p>")
    parts.append("</body></html>\n")
    return "".join(parts)


def write_html(v: Verification, path: str | os.PathLike, key: Key | None = None, key_material: bool = False) -> Path:
    page = render_html(v, key, key_material)

    def write(tmp: str) -> None:
        Path(tmp).write_text(page, encoding="utf-8")

    return atomic_write(path, write)
