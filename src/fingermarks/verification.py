"""Verification of a suspect against a key: query it once with the key's n inputs (one batch), then let
the key's own decision rule (fingermarks.evidence.rules) turn the answers into a verdict. Nothing here
asks which method made the key.

A rule that reads scores (`uses_outputs`, UAP fingerprints) gets them where the suspect gives them
(`outputs(x)`: a model file, an ONNX file, a server that answers scores): the *outputs* mode. Everything
else, and every suspect that answers top-1 labels only, goes through the *label-only* mode.
`query_suspect` + `verify_answers` is the one path that `verify_suspect`, `verify.py` and the Python
API (`reports.record.verify_one`) share."""

from __future__ import annotations

import torch

from fingermarks.evidence.report import HOST, Report
from fingermarks.evidence.rules import rule_for
from fingermarks.key import Key
from fingermarks.suspects import Suspect, check_compatible, top1

__all__ = ["HOST", "Report", "answer_labels", "query_suspect", "verify_answers", "verify_labels", "verify_suspect"]

#: the two ways a suspect can answer: scores per class, or top-1 labels only
MODES = ("outputs", "labels")


def verify_labels(key: Key, labels: torch.Tensor, expected_user: str | None = None) -> Report:
    """The verdict on the suspect's top-1 labels for the key's queries.

    `labels` is (n,), or (R + P, n) as `query_suspect` gives them: R reads of a suspect that answers at random
    (rules with `reads() > 1`) and one read of each of the rule's P probe sets, last.
    `expected_user` (evaluations only) fixes the ID that `bit_acc` is measured against.
    """
    labels = torch.as_tensor(labels).long()
    rule = rule_for(key)
    if labels.dim() == 2 and len(labels) == 1:
        labels = labels[0]
    if labels.dim() == 2:
        if labels.shape[1] != key.n:
            raise ValueError(f"reads of {labels.shape[1]} labels for a key of {key.n} queries")
        if rule.reads() == 1 and rule.probes() is None:
            raise ValueError(f"{len(labels)} reads of the suspect, but the key's '{rule.name}' rule decides from one read")
        return rule.decide(key, labels, expected_user)
    labels = labels.view(-1)
    if len(labels) != key.n:
        raise ValueError(f"{len(labels)} labels for a key of {key.n} queries")
    return rule.decide(key, labels, expected_user)


def query_suspect(key: Key, suspect: Suspect) -> tuple[torch.Tensor, str]:
    """The suspect's answers to the key's queries (each read one batch) and the mode they were asked in:
    (N, m) scores ("outputs") when the key's rule reads scores and the suspect gives them, else (N,)
    top-1 labels ("labels"). A server asked for outputs may still answer labels: then the mode is labels.

    A rule that reads a suspect several times (`reads()` = R > 1, the code rule's `decision.reads`) gets a
    second read (of the triggers under a tiny secret jitter, `read_jitter`: `read_inputs`); when it differs
    from the first (a deployment that adds noise to every query, fresh or fixed per input, or answers
    flagged queries at random), R reads in all, as (R, n) labels: each trigger's lean over its reads is
    what leaves the planted labels readable under noise. A suspect that answers the same twice is
    deterministic, and its one read is all there is. A key with probe sets (the code rule's `probes`: the
    triggers' perturbations scaled up) gets one read of each after those, as the last rows."""
    check_compatible(suspect, key.data["input_shape"], key.data["num_classes"])
    outputs = getattr(suspect, "outputs", None)
    rule = rule_for(key)
    if getattr(rule, "uses_outputs", False) and outputs is not None:
        answers = outputs(key.triggers)
        if answers.dim() == 2 and answers.is_floating_point():
            return answers, "outputs"
        return top1(answers), "labels"
    labels = top1(suspect.labels(key.triggers))
    reads = rule.reads()
    if reads > 1:
        jitter = rule.read_jitter()
        again = top1(suspect.labels(read_inputs(key, 1, jitter)))
        if not torch.equal(again, labels):
            labels = torch.stack([labels, again] + [top1(suspect.labels(read_inputs(key, r, jitter))) for r in range(2, reads)])
    probes = rule.probes()
    if probes is not None:  # one read of each probe set, as the last rows
        labels = torch.cat([labels.view(-1, key.n)] + [top1(suspect.labels(p)).view(1, -1) for p in probes])
    return labels, "labels"


def read_inputs(key: Key, read: int, jitter: float) -> torch.Tensor:
    """The images of read `read` (0-based): the triggers, and from the second read on each pixel moved by a
    secret uniform jitter of at most `jitter` (seeded by the key's secret and the read, so verification is
    repeatable), inside the triggers' own value range. A deployment that fixes its noise per input (a cache
    of answers) sees a new input in every read and so answers with fresh noise; a deterministic model's
    labels do not move (the embedding trains the triggers' neighbourhoods)."""
    if read == 0 or jitter <= 0:
        return key.triggers
    g = key.secret_generator(f"reads/jitter/{read}")
    lo, hi = float(key.triggers.min()), float(key.triggers.max())
    noise = (torch.rand(key.triggers.shape, generator=g, dtype=key.triggers.dtype) * 2 - 1) * jitter
    return (key.triggers + noise).clamp(lo, hi)


def answer_labels(answers: torch.Tensor, mode: str) -> torch.Tensor:
    """One top-1 label per query from `query_suspect`'s answers: the argmax of scores, the labels of one
    read, or the most frequent label of several reads (what reports show as the suspect's answers)."""
    if mode == "labels" and answers.dim() == 2:
        return torch.mode(answers, 0).values
    return top1(answers)


def verify_answers(key: Key, answers: torch.Tensor, mode: str, expected_user: str | None = None) -> Report:
    """The verdict on answers from `query_suspect`: scores go to the rule's `decide_outputs`, labels to `decide`."""
    if mode not in MODES:
        raise ValueError(f"unknown answer mode {mode!r}; choose outputs or labels")
    if mode == "outputs":
        return rule_for(key).decide_outputs(key, answers, expected_user)
    return verify_labels(key, answers, expected_user)


def verify_suspect(key: Key, suspect: Suspect, expected_user: str | None = None) -> Report:
    """Query the suspect once, with all n triggers in one batch, and verify its labels (or its
    scores, for a rule with `uses_outputs` and a suspect with `outputs(x)`)."""
    answers, mode = query_suspect(key, suspect)
    report = verify_answers(key, answers, mode, expected_user)
    report.suspect = suspect.name
    return report
