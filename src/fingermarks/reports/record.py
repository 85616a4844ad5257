"""One verification with its provenance: the verdict (`Report`), or the one-line error that left it
incomplete, plus what a reader needs to trust it (key digest, suspect digest, software, command, time)."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from fingermarks.errors import ConfigError, FingermarksError
from fingermarks.evidence.report import HOST, Report
from fingermarks.key import Key
from fingermarks.suspects import HttpSuspect, ModuleSuspect, Suspect, is_remote, one_line, open_suspect

SECRET_ARGUMENT = re.compile(r"(?i)(headers\.[^=]*|password|token|secret[^=]*)=(.*)")


def software_versions() -> dict[str, str]:
    """Versions of what produced a verdict: this package, Python, torch, onnxruntime (when installed)."""
    from fingermarks import __version__

    versions = {"fingermarks": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for package in ("onnxruntime",):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def current_command(argv: list[str] | None = None) -> str:
    """The command line that is running, with secret values (request headers, tokens) redacted."""
    args = list(sys.argv if argv is None else argv)
    shown = [SECRET_ARGUMENT.sub(lambda m: f"{m.group(1)}=<redacted>", a) for a in args]
    program = "python" if shown and shown[0].endswith(".py") else None
    return shlex.join(([program] if program else []) + shown)


@dataclass
class Verification:
    """A suspect's verdict and where it came from; `report` is None when the verification is incomplete."""

    suspect: str
    report: Report | None = None
    error: str | None = None
    kind: str = "file"  # file | server | module
    protocol: str | None = None
    sha256: str | None = None
    key_digest: str = ""
    key_path: str | None = None
    started: str = ""
    seconds: float = 0.0
    command: str | None = None
    software: dict[str, str] = field(default_factory=software_versions)
    #: the suspect's top-1 answers to the key's queries: key material, written only when asked
    labels: list[int] | None = None
    #: how the suspect was asked: "outputs" (scores, for a rule that reads them) or "labels" (top-1 only)
    mode: str | None = None
    #: a combined verdict (several keys): each key's own verification, in the keys' order
    parts: list["Verification"] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.report is not None and self.error is None

    @property
    def verdict(self) -> str:
        if not self.complete:
            return "incomplete"
        return "owned" if self.report.owned else "not owned"

    def sentence(self) -> str:
        """The verdict in one sentence a person reads."""
        return verdict_sentence(self)

    def to_dict(self, key_material: bool = False) -> dict[str, Any]:
        """The JSON report: the Report's fields at the top level (as `verify.py report=` always wrote them),
        then the completeness, the error and the provenance; the answers only with `key_material`."""
        data: dict[str, Any] = self.report.to_dict() if self.report is not None else {"suspect": self.suspect}
        data["suspect"] = self.suspect
        data.update(complete=self.complete, verdict=self.verdict, error=self.error, sentence=self.sentence())
        data["provenance"] = {"suspect_kind": self.kind, "protocol": self.protocol, "suspect_sha256": self.sha256,
                              "key_digest": self.key_digest, "key_path": self.key_path, "started": self.started,
                              "seconds": round(self.seconds, 3), "command": self.command, "software": self.software,
                              "mode": self.mode}
        if self.parts:  # a combined verdict: where each key's evidence came from
            data["provenance"]["keys"] = [{"key_digest": p.key_digest, "key_path": p.key_path, "mode": p.mode,
                                           "seconds": round(p.seconds, 3), "error": p.error} for p in self.parts]
        if key_material and self.labels is not None:
            data["answers"] = self.labels
        if key_material and self.parts:
            data["answers"] = [p.labels for p in self.parts]
        return data


def describe(suspect: Suspect) -> tuple[str, str | None]:
    """(kind, protocol) of an opened suspect."""
    if isinstance(suspect, HttpSuspect):
        return "server", suspect.protocol
    if isinstance(suspect, ModuleSuspect) and suspect.sha256 is None:
        return "module", None
    return "file", None


def suspect_name(spec) -> str:
    if isinstance(spec, nn.Module):
        return "module"
    return str(spec if isinstance(spec, str) else getattr(spec, "name", None) or spec)


def one_line_error(exc: Exception) -> str:
    text = str(exc) if isinstance(exc, FingermarksError) else f"{type(exc).__name__}: {exc}"
    return one_line(text) or type(exc).__name__


def verify_one(key: Key | Sequence[Key], spec: str | os.PathLike | nn.Module | Suspect, *, http: Mapping | None = None,
               protocol: str = "auto", expected_user: str | None = None, key_path: str | Sequence[str] | None = None,
               command: str | None = None, catch: bool = True) -> Verification:
    """Open and verify one suspect; with `catch`, a failure (unreachable server, garbage answer, unreadable
    file) becomes an incomplete Verification carrying the one-line error instead of an exception.
    Several keys (a list) give one combined verdict (`verify_combined`)."""
    from fingermarks.verification import answer_labels, query_suspect, verify_answers

    if not isinstance(key, Key):
        keys = list(key)
        if len(keys) != 1:
            return verify_combined(keys, spec, http=http, protocol=protocol, expected_user=expected_user,
                                   key_paths=key_path, command=command, catch=catch)
        key, key_path = keys[0], (key_path[0] if isinstance(key_path, (list, tuple)) else key_path)
    record = new_record(spec, key.digest(), key_path, command)
    start = time.perf_counter()
    try:
        suspect = opened(spec, http, protocol)
        record.kind, record.protocol = describe(suspect)
        record.sha256 = getattr(suspect, "sha256", None)
        answers, record.mode = query_suspect(key, suspect)  # scores where the key's rule reads them
        record.labels = [int(v) for v in answer_labels(answers, record.mode).tolist()]
        record.report = verify_answers(key, answers, record.mode, expected_user)
        record.report.suspect = record.suspect
    except Exception as exc:
        if not catch:
            raise
        record.error = one_line_error(exc)
    record.seconds = time.perf_counter() - start
    return record


def new_record(spec, key_digest: str, key_path: str | None, command: str | None) -> Verification:
    """An empty record of one verification, started now."""
    return Verification(suspect=suspect_name(spec), key_digest=key_digest, key_path=key_path, command=command,
                        started=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                        kind="server" if is_remote(spec) else "file")


def opened(spec, http: Mapping | None, protocol: str) -> Suspect:
    """A suspect object as given, else opened from its path or URL."""
    return spec if hasattr(spec, "labels") and not isinstance(spec, nn.Module) else open_suspect(spec, http, protocol)


def check_combinable(keys: Sequence[Key]) -> None:
    """Refuse, in one line, keys that cannot share one ownership verdict: none, another host, or a key
    that answers another question (integrity)."""
    from fingermarks.evidence.combine import COMBINABLE
    from fingermarks.evidence.rules import rule_for

    if not keys:
        raise ConfigError("no key given")
    hosts = {k.host_sha256 for k in keys}
    if len(hosts) > 1:
        raise ConfigError(f"the keys were made for different hosts ({', '.join(sorted(h[:12] for h in hosts))}); "
                          "a combined verdict needs keys of one host")
    for k, key in enumerate(keys):
        question = rule_for(key).question
        if question not in COMBINABLE:
            raise ConfigError(f"key {k + 1} ({key.method}) answers '{question}', not ownership: verify it on its own")


def verify_combined(keys: Sequence[Key], spec: str | os.PathLike | nn.Module | Suspect, *, http: Mapping | None = None,
                    protocol: str = "auto", expected_user: str | None = None,
                    key_paths: str | Sequence[str] | None = None, command: str | None = None,
                    catch: bool = True) -> Verification:
    """One suspect against several keys of one host (e.g. FingerMarks for tracing, UAP for distilled copies):
    each key's own verification (in `parts`), and one combined report (evidence.combine): owned when any
    key says owned, Holm's p-value over the keys, the user from the tracing key."""
    from fingermarks.evidence.combine import combine_reports

    check_combinable(keys)  # bad input: raises even with `catch`
    paths = list(key_paths) if isinstance(key_paths, (list, tuple)) else [key_paths] * len(keys)
    names = [f"key {k + 1} ({key.method})" for k, key in enumerate(keys)]
    record = new_record(spec, "+".join(k.digest() for k in keys), ",".join(p for p in paths if p) or None, command)
    start = time.perf_counter()
    try:  # open once: a file is read and hashed once, a server configured once
        suspect = opened(spec, http, protocol)
    except Exception as exc:
        if not catch:
            raise
        record.error = one_line_error(exc)
        record.seconds = time.perf_counter() - start
        return record
    record.kind, record.protocol = describe(suspect)
    record.sha256 = getattr(suspect, "sha256", None)
    record.parts = [verify_one(key, suspect, expected_user=expected_user, key_path=path, command=command, catch=catch)
                    for key, path in zip(keys, paths)]
    for name, part in zip(names, record.parts):
        part.suspect = record.suspect
        if part.report is not None:
            part.report.suspect = record.suspect
    failed = [(name, part) for name, part in zip(names, record.parts) if not part.complete]
    record.mode = "+".join(str(part.mode) for part in record.parts)
    if failed:
        record.error = "; ".join(f"{name}: {part.error}" for name, part in failed)
    else:
        record.report = combine_reports([part.report for part in record.parts], names)
        record.report.suspect = record.suspect
    record.seconds = time.perf_counter() - start
    return record


def fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def verdict_sentence(v: Verification) -> str:
    if not v.complete:
        return f"The verification of {v.suspect} is incomplete: {v.error}"
    r = v.report
    statistic = (f"it agrees with the nearest registered ID on {r.matches} of {r.valid_bits} readable triggers"
                 if r.rule == "code" and r.valid_bits is not None
                 else f"{r.matches} of {r.n_queries} triggers match under the '{r.rule or 'match'}' rule")
    if r.question == "piracy":  # a fingerprint's statistic is a similarity, read from scores or from labels
        mode = r.evidence.get("mode") or v.mode
        statistic = (f"its fingerprint scores {r.match_rate:.3f} against ours ({mode} mode; {r.matches} of "
                     f"{r.n_queries} queries answered with our model's label)")
    chance = f"a model made without our key does this with probability {fmt_p(r.p_value)}"
    line = f"{r.n_queries} queries; owned from a rate of {r.threshold:.3f}, this one {r.match_rate:.3f}"
    if "combination" in r.evidence:  # several keys: each key's word, then the union's
        statistic = "; ".join(
            f"{k['key']} says {'owned' if k['owned'] else 'not owned'} ({k['question']}"
            + (f", {k['evidence']['mode']} mode" if "mode" in k["evidence"] else "") + f", p {fmt_p(k['p_value'])})"
            for k in r.evidence["keys"])
        chance = f"a model made without our keys does this with probability {fmt_p(r.p_value)}, Holm over the keys"
        line = f"{r.n_queries} queries; owned when any key says owned, false-claim probability <= {r.alpha:g}"
        if not r.owned:
            return f"{v.suspect} is NOT shown to be our model: {statistic} ({chance}); {line}."
    if not r.owned:
        return (f"{v.suspect} is NOT shown to be our model: {statistic} ({chance}, above alpha {r.alpha:g}); "
                f"{line}.")
    who = (f"it carries the ID of user '{r.traced_user}'" if r.traced_user is not None
           else "no single registered user is named (the evidence does not single one out)")
    if r.traced_user is None and r.accused:  # colluders tie with each other, but each stands out from the innocent
        who = (f"no single user stands out, but the evidence accuses {', '.join(repr(u) for u in r.accused)} (copies "
               f"combined, e.g. averaged or voting; the chance that any innocent registered user is accused is at most "
               f"{r.evidence.get('accusation_alpha', r.alpha):g})")
    if r.traced_user is None and r.distances and min(r.distances, key=r.distances.get) == HOST:
        who = "it answers like the host itself, not like a user's copy"
    return f"{v.suspect} IS our model: {statistic} ({chance}); {who}. ({line}.)"
