"""Decision rules: how a suspect's top-1 labels on a key's queries become a verdict.

A key names its rule (`key.decision["rule"]`); each rule is a class registered here by name, so a
new method brings its own rule (in its own file, with `@register_rule`) and no shared verification
code asks which method made a key. Rules of this file:

- `code`: ownership *and* tracing from the user code (the default of every multi-bit watermark):
  the suspect's agreement with the nearest registered ID, against the exact null of an innocent
  model (evidence.nulls: a fair coin per readable trigger, union over users). It needs no pool of
  independent models and cannot be fooled by a model family that reads every trigger as its
  source or its target class: those agree with a secret random ID only by chance.
- `pair` / `label`: the paper's match rules (label in {i, j}; label == recorded), calibrated on the
  owner's pool of independent models with a beta-binomial (evidence.nulls). `pair` keeps the
  paper's nearest-ID tracing with its binomial bound.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch

from fingermarks.codes import ERASED, decode, hamming
from fingermarks.errors import KeyFileError
from fingermarks.evidence.nulls import (IntegerSignNull, accusation_p_values, accused, beta_binomial_sf, code_p_value,
                                        code_threshold, fit_beta_binomial, pool_p_value)
from fingermarks.evidence.report import HOST, Report
from fingermarks.stats import tracing_p_value

RULES: dict[str, type["DecisionRule"]] = {}


def register_rule(cls: type["DecisionRule"]) -> type["DecisionRule"]:
    RULES[cls.name] = cls
    return cls


def known_rule(name) -> bool:
    """Whether `name` is a registered rule; a method's own rule registers when its module is imported,
    so the methods are imported once before a name is called unknown (verify.py needs no method)."""
    if name not in RULES:
        import fingermarks.methods  # noqa: F401

    return name in RULES


def rule_for(key) -> "DecisionRule":
    name = key.decision.get("rule") if isinstance(key.decision, dict) else None
    if not known_rule(name):
        raise KeyFileError(f"field 'decision.rule' is {name!r}; this build knows {', '.join(sorted(RULES))}")
    return RULES[name](key.decision)


def rule_problem(key) -> str | None:
    """The first problem with `key.decision` for its rule, or None."""
    name = key.decision.get("rule")
    if not known_rule(name):
        return f"field 'decision.rule' is {name!r}; expected one of {', '.join(sorted(RULES))}"
    return RULES[name].problem(key)


class DecisionRule(ABC):
    name: ClassVar[str]
    question: ClassVar[str] = "ownership"
    #: decision fields and their types, checked when a key is loaded
    fields: ClassVar[dict[str, type | tuple]] = {"alpha": float}

    def __init__(self, decision: dict[str, Any]) -> None:
        self.d = decision

    @classmethod
    def calibrate(cls, cfg, ctx, seed: int, triggers: torch.Tensor, pairs: torch.Tensor) -> dict[str, Any]:
        """The key's decision fields for this rule from the method's `decision` config."""
        return {"rule": cls.name, "alpha": float(cfg.alpha), "trace_alpha": float(cfg.get("trace_alpha", 0.01)),
                "min_margin": int(cfg.get("min_margin", 1))}

    @classmethod
    def problem(cls, key) -> str | None:
        for name, kind in cls.fields.items():
            if not isinstance(key.decision.get(name), kind) or isinstance(key.decision.get(name), bool):
                return f"field 'decision.{name}' is missing or not {getattr(kind, '__name__', kind)}"
        if not 0 < key.decision["alpha"] < 1:
            return "field 'decision.alpha' must lie in (0, 1)"
        return None

    def reads(self) -> int:
        """How many times verification reads a suspect that does not answer the same twice (rules that take
        (R, n) labels say more than 1)."""
        return 1

    def read_jitter(self) -> float:
        """The largest per-pixel jitter of the second and later reads (verification.read_inputs)."""
        return 0.0

    def probes(self) -> torch.Tensor | None:
        """Images read once each after the triggers (their answers are the last rows of the labels), or None."""
        return None

    @abstractmethod
    def decide(self, key, labels: torch.Tensor, expected_user: str | None = None) -> Report:
        """The verdict on a suspect's labels for the key's queries: (n,), or (R + P, n) from
        `verification.query_suspect` when the rule reads more than once (`reads()`) or has P probe sets."""


def _bit_acc(key, labels: torch.Tensor, user: str | None) -> float | None:
    if user is None or user not in key.users:
        return None
    return float((labels == key.target_labels(key.users[user])).float().mean())


BALANCED = "balanced"
#: the most reads of a suspect a key may ask for (each is n queries)
MAX_READS = 64
#: the most probe sets a key may hold (each is n more queries per verification)
MAX_PROBES = 8
#: the largest jitter of repeated reads a key may ask for (input units): more would be noise of its own
MAX_READ_JITTER = 0.1
#: the most noise levels at which a key may hold the host's own leans (each is one regressor of `ReadScores`)
MAX_NOISE_LEANS = 8


def balanced_weights(v_j: int, v_i: int) -> dict[str, float]:
    """The `balanced` weighting of a suspect that gave `v_j` j-reads and `v_i` i-reads: the minority
    read weighs 1, the majority read minority / majority (equal weights when either is 0 or they tie)."""
    if v_j == 0 or v_i == 0 or v_j == v_i:
        return {"j": 1.0, "i": 1.0}
    return {"j": 1.0, "i": v_j / v_i} if v_j < v_i else {"j": v_i / v_j, "i": 1.0}


class TwoWeightScores:
    """Every user's score under one weighting of single-read labels: j-reads weigh `w["j"]`, i-reads
    `w["i"]`, +w per agreement with the user's ID and -w per disagreement; null: `weighted_sign_sf`."""

    unit = 1.0  # the margin's unit: balanced and fixed weightings have a largest weight of 1 (or less)

    def __init__(self, w: dict[str, float], agree_j: torch.Tensor, agree_i: torch.Tensor, v_j: int, v_i: int,
                 balanced: bool = False) -> None:
        self.w, self.v_j, self.v_i = w, v_j, v_i
        # float64: a weight such as 13 / 115 is not exact in float32, and the null tail compares scores exactly
        self.score = w["j"] * (2 * agree_j - v_j).double() + w["i"] * (2 * agree_i - v_i).double()
        self.top = w["j"] * v_j + w["i"] * v_i
        self.how = f"j-reads {w['j']:g}, i-reads {w['i']:g}" + (", balanced: read off its own j / i reads" if balanced else "")
        self.weighting = dict(w) | ({"balanced": True} if balanced else {})

    def p_value(self, score: float, acceptance: list[float]) -> float:
        return code_p_value(score, self.v_j, self.v_i, acceptance, self.w["j"], self.w["i"])

    def threshold(self, acceptance: list[float], alpha: float) -> float:
        return code_threshold(self.v_j, self.v_i, acceptance, alpha, self.w["j"], self.w["i"])

    def accusation_p_values(self, scores: list[float], acceptance: list[float]) -> np.ndarray:
        return accusation_p_values(scores, self.v_j, self.v_i, acceptance, self.w["j"], self.w["i"])


#: repeated reads: per-trigger weights are quantised to integers up to this (the rule compares the quantised score)
READ_RESOLUTION = 240


class ReadScores:
    """Every user's score under one weighting of R > 1 reads of each trigger (a suspect that answers at
    random, e.g. one that adds fresh noise to every query, is read several times).

    Per trigger, f_j and f_i are the shares of its reads answering j and i, and its signed weight is
    a = w_j f_j - w_i f_i under a fixed weighting or, under `balanced`, a = d - mean(d) with
    d = f_j - f_i (the mean over the triggers read as i or j at least once; others weigh 0): how far the
    trigger leans to j or to i compared with the suspect's own average. With one read this is the
    two-weight `balanced` rule up to scale (j-reads weigh 1 - mean(d), i-reads 1 + mean(d)). |a| is
    quantised to integers (largest READ_RESOLUTION); a user's score is sum_k b_k sign(a_k) |a_k|_q with
    b_k = +1 where its ID says j, -1 where i. The weights are functions of the reads alone, and given
    them each b_k of an innocent ID is a fair coin, so the null of the quantised score is exact
    (`IntegerSignNull`).

    `host_leans` (S, n), under `balanced`: the host's own d under Gaussian noise of S levels, computed at
    keygen (`decision.noise_leans`). Noise sends each trigger back to i at a rate of its own (how far it
    sits from the boundary), and that spread, not the ID, dominates d; a = the residual of d after a least-
    squares fit on [1, host leans] over the readable triggers removes it. The fit uses the reads and the host
    alone, never an ID, so the null stays exact; with no host leans the fit is the mean, as above."""

    #: a fit needs this many readable triggers per regressor, else the mean alone is taken
    fit_per_regressor = 4

    unit = float(READ_RESOLUTION)

    def __init__(self, entry, f_j: torch.Tensor, f_i: torch.Tensor, says_j: torch.Tensor, reads: int,
                 host_leans: torch.Tensor | None = None) -> None:
        if entry == BALANCED:
            d, readable = f_j - f_i, (f_j + f_i) > 0
            fitted = host_leans is not None and int(readable.sum()) >= self.fit_per_regressor * (1 + len(host_leans))
            if fitted:
                regressors = torch.cat([torch.ones(len(d), 1, dtype=d.dtype), host_leans.T.to(d.dtype)], 1)
                coef = torch.linalg.lstsq(regressors[readable], d[readable].unsqueeze(1)).solution
                expected = (regressors @ coef).squeeze(1)
            else:
                expected = d[readable].mean() if bool(readable.any()) else d.new_zeros(())
            a = torch.where(readable, d - expected, torch.zeros_like(d))
            self.how = (f"balanced over {reads} reads: each trigger weighs how far its reads lean to j or i from "
                        + ("what the host's own leans under noise predict" if fitted else "the suspect's mean"))
            self.weighting = {"balanced": True} | ({"host_noise_leans": True} if fitted else {})
        else:
            a = entry["j"] * f_j - entry["i"] * f_i
            self.how = f"j-reads {entry['j']:g}, i-reads {entry['i']:g}, averaged over {reads} reads"
            self.weighting = dict(entry)
        big = float(a.abs().max())
        q = torch.round(a.abs() * (READ_RESOLUTION / big)).long() if big > 0 else torch.zeros_like(a, dtype=torch.long)
        self.null = IntegerSignNull(q.tolist())
        self.score = (says_j @ (torch.sign(a).long() * q)).double()
        self.top = float(self.null.total)

    def p_value(self, score: float, acceptance: list[float]) -> float:
        return self.null.p_value(score, acceptance)

    def threshold(self, acceptance: list[float], alpha: float) -> float:
        return self.null.threshold(acceptance, alpha)

    def accusation_p_values(self, scores: list[float], acceptance: list[float]) -> np.ndarray:
        return self.null.accusation_p_values(scores, acceptance)


@register_rule
class CodeRule(DecisionRule):
    """Agreement with the nearest registered ID, exact null over the secret IDs.

    A trigger read as j (the planted label) and one read as i (the source label) may weigh
    differently (a weighting `{j: w_j, i: w_i}`): attacks erode the two directions unequally, so an
    agreement on a j-read is stronger evidence than one on an i-read (the channel analysis in
    benchmarks/tracing_channel.py). Each readable trigger then adds +w for agreeing with a user's
    ID and -w for disagreeing; under the null each sign is a fair coin, so the bound stays exact
    for any weights fixed before the suspect is seen. Equal weights give plain agreement.
    A key may fix several weightings (`weightings`, m of them): each user's score is taken under
    each, and every p-value is m times the smallest of the m (a union bound, so the stated levels
    hold whichever weighting the suspect's labels favour). Adversarial training sends most j-reads
    back to i while i-reads stay, which a weighting that trusts j-reads more still reads; the
    equal weighting keeps what it reads best (fine-tuning, pruning, noise).

    A weighting may also be `balanced`: read off the suspect's own labels, the minority read
    (j or i) weighs 1 and the majority read minority / majority. An attack that pushes labels one way
    (adversarial training or noise: j back to i; fine-tuning of deep triggers: i to j) leaves the
    minority reads the ones it did not make, so they carry the ID; an untouched copy reads about
    as many of each and is read with near-equal weights. The weights depend on the labels only,
    never on an ID, so given the labels each ID's agreement is still a fair coin per readable trigger
    and the null stays exact (the bound holds conditionally on the labels, hence overall).

    `traced_user` is the nearest ID when it beats the runner-up by `min_margin`. Colluders who
    average their weights or vote tie with each other, so that names nobody; `accused` names every
    user whose own score an innocent ID reaches with chance <= trace_alpha / U (evidence.nulls.
    accusation_p_values): any innocent is accused with probability <= trace_alpha, and a colluder of
    a vote agrees on about 3/4 of the readable triggers, so collusion tracing needs enough triggers.
    Among U = 100 users at trace_alpha = 1e-3 (benchmarks/collusion_tracing.py; equal weights, every
    trigger readable, IDs with draw-region share 1; P: chance that a colluder is accused, exact for
    uniform IDs, where a vote of 2 breaks ties by a coin):

        n triggers           30    40    48    64    80    96   112   128
        agreements needed    27    34    39    50    60    70    79    89
        share of n          .90   .85   .81   .78   .75   .73   .71   .70
        P, vote of 2        .08   .19   .39   .61   .86   .96  .997  .999
        P, vote of 3        .11   .28   .56   .81   .98  .999  1.00  1.00

    At n = 30 a registry of 100 IDs at distance 12 is crowded (median draw-region share 0.007), so 29
    of 30 are needed and nobody is accused. A colluder is accused in >= 90 % of trials at every n from
    84 (vote of 2) or 68 (vote of 3); about 10 % more triggers when an attack also erases 10 % of them.
    """

    name = "code"
    fields = {"alpha": float, "trace_alpha": float, "min_margin": int}

    @classmethod
    def calibrate(cls, cfg, ctx, seed: int, triggers: torch.Tensor, pairs: torch.Tensor) -> dict[str, Any]:
        weightings = cfg.get("weightings") or [cfg.get("weights") or {"j": 1.0, "i": 1.0}]
        return super().calibrate(cfg, ctx, seed, triggers, pairs) | {
            "weightings": [BALANCED if w == BALANCED else {"j": float(w["j"]), "i": float(w["i"])} for w in weightings],
            "reads": int(cfg.get("reads", 1)), "read_jitter": float(cfg.get("read_jitter", 0.0)),
            "accuse_alpha": float(cfg.get("accuse_alpha", cfg.get("trace_alpha", 0.01)))}

    @staticmethod
    def weightings_of(decision: dict[str, Any]) -> list[dict[str, float]]:
        """The key's weightings (a key written before weightings has one, `weights`, or equal weights)."""
        if "weightings" in decision:
            return decision["weightings"]
        return [decision.get("weights", {"j": 1.0, "i": 1.0})]

    @classmethod
    def problem(cls, key) -> str | None:
        problem = super().problem(key)
        if problem:
            return problem
        if not key.users:
            return "field 'users' is empty, but the code rule decides from registered IDs"
        ws = cls.weightings_of(key.decision)
        if not isinstance(ws, list) or not ws:
            return "field 'decision.weightings' must be a non-empty list of {j: float >= 0, i: float >= 0}"
        for w in ws:
            if w == BALANCED:
                continue
            if not isinstance(w, dict) or any(not isinstance(w.get(k), float) or w[k] < 0 for k in ("j", "i")) or w["j"] + w["i"] == 0:
                return f"field 'decision.weightings' must hold {{j: float >= 0, i: float >= 0}}, not both 0, or '{BALANCED}'"
        reads = key.decision.get("reads", 1)
        if not isinstance(reads, int) or isinstance(reads, bool) or not 1 <= reads <= MAX_READS:
            return f"field 'decision.reads' must be an integer from 1 to {MAX_READS}"
        jitter = key.decision.get("read_jitter", 0.0)
        if not isinstance(jitter, float) or not 0 <= jitter <= MAX_READ_JITTER:
            return f"field 'decision.read_jitter' must be a float from 0 to {MAX_READ_JITTER:g}"
        probes, scales = key.decision.get("probes"), key.decision.get("probe_scales")
        if probes is not None:
            if (not isinstance(probes, torch.Tensor) or probes.dim() < 2 or not 1 <= len(probes) <= MAX_PROBES
                    or tuple(probes.shape[1:]) != tuple(key.triggers.shape)):
                return f"field 'decision.probes' must be a (P <= {MAX_PROBES}, n, ...) tensor of images shaped like the triggers"
            if not isinstance(scales, list) or len(scales) != len(probes) or not all(isinstance(v, float) for v in scales):
                return "field 'decision.probe_scales' must list one float per probe set"
        leans, stds = key.decision.get("noise_leans"), key.decision.get("noise_lean_stds")
        if leans is not None:
            if (not isinstance(leans, torch.Tensor) or leans.dim() != 2 or not 1 <= len(leans) <= MAX_NOISE_LEANS
                    or leans.shape[1] != len(key.triggers) or not bool(torch.isfinite(leans).all())
                    or float(leans.abs().max()) > 1):
                return (f"field 'decision.noise_leans' must be an (S <= {MAX_NOISE_LEANS}, n) tensor of the host's "
                        "leans in [-1, 1], one row per noise level")
            if not isinstance(stds, list) or len(stds) != len(leans) or not all(isinstance(v, float) and v > 0 for v in stds):
                return "field 'decision.noise_lean_stds' must list one float > 0 per row of decision.noise_leans"
        beside = key.decision.get("accuse_alpha", key.decision["trace_alpha"])
        if not isinstance(beside, float) or not 0 < beside <= key.decision["trace_alpha"]:
            return "field 'decision.accuse_alpha' must be a float in (0, trace_alpha]"
        return None

    def reads(self) -> int:
        return int(self.d.get("reads", 1))

    def read_jitter(self) -> float:
        return float(self.d.get("read_jitter", 0.0))

    def probes(self) -> torch.Tensor | None:
        """(P, n, C, H, W) probe images read after the triggers (the triggers' perturbations scaled up), or None."""
        return self.d.get("probes")

    def accuse_alpha(self) -> float:
        """The level for accusing a user beside the strongest accused one (a key without it: trace_alpha)."""
        return float(self.d.get("accuse_alpha", self.d["trace_alpha"]))

    def split_reads(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n,) labels, or (R + P, n) answers as `verification.query_suspect` gives them, as the (R, n) reads of the
        triggers and the (P, n) reads of the key's P probe sets (the last rows; none for (n,) labels)."""
        rows = labels.view(1, -1) if labels.dim() == 1 else labels
        n_probes = len(self.probes()) if labels.dim() == 2 and self.probes() is not None else 0
        reads, probe_reads = (rows[:-n_probes], rows[-n_probes:]) if n_probes else (rows, rows[:0])
        if len(reads) == 0:
            raise ValueError(f"{len(rows)} rows of answers for a key with {n_probes} probe sets: the triggers' own read is missing")
        return reads, probe_reads

    def decide(self, key, labels: torch.Tensor, expected_user: str | None = None) -> Report:
        reads, probe_reads = self.split_reads(labels)
        n_probes = len(probe_reads)
        # the most frequent read per trigger: what the report's counts, distances and bit accuracy are taken on
        labels = torch.mode(reads, 0).values if len(reads) > 1 else reads[0]
        n = len(labels)
        names = list(key.users)
        targets = torch.stack([key.target_labels(key.users[u]) for u in names])  # (U, n)
        reads_j, reads_i = labels == key.pairs[:, 1], labels == key.pairs[:, 0]
        v_j, v_i = int(reads_j.sum()), int(reads_i.sum())
        valid = v_j + v_i
        agree = targets == labels.view(1, -1)
        agree_j, agree_i = (agree & reads_j).sum(1), (agree & reads_i).sum(1)
        dist = valid - agree_j - agree_i  # disagreements over readable triggers
        acceptance = [float(key.id_acceptance[u]) for u in names]
        alpha, trace_alpha = float(self.d["alpha"]), float(self.d["trace_alpha"])
        weightings = self.weightings_of(self.d)
        says_j = (targets == key.pairs[:, 1]).long() * 2 - 1  # (U, n): +1 where a user's ID says j, -1 where i

        def lean_scores(r: torch.Tensor) -> list:
            f_j, f_i = (r == key.pairs[:, 1]).double().mean(0), (r == key.pairs[:, 0]).double().mean(0)
            return [ReadScores(e, f_j, f_i, says_j, len(r), self.d.get("noise_leans")) for e in weightings]

        if len(reads) == 1:
            nulls = [TwoWeightScores(balanced_weights(v_j, v_i) if e == BALANCED else e, agree_j, agree_i, v_j, v_i, e == BALANCED)
                     for e in weightings]
        else:
            nulls = lean_scores(reads)
        if n_probes:
            # the triggers' reads with the probe reads (the triggers' perturbations scaled up): one more candidate
            # per weighting, and the union bound over all of them
            probed = lean_scores(torch.cat([reads, probe_reads]))
            for s in probed:
                s.how += f", with the {n_probes} probe reads (perturbations x {', '.join(f'{v:g}' for v in self.d['probe_scales'])})"
                s.weighting = dict(s.weighting, probes=True)
            nulls += probed
        m = len(nulls)
        # each weighting's own nearest user and p-value; the verdict takes the smallest, times m
        per = [(min(1.0, m * s.p_value(float(s.score.max()), acceptance)), s) for s in nulls]
        p, chosen = min(per, key=lambda t: t[0])
        score = chosen.score
        order = torch.argsort(-score, stable=True)
        best = names[int(order[0])]
        best_score = float(score[order[0]])
        best_agree = int(agree_j[order[0]] + agree_i[order[0]])
        # bits by which the nearest beats the runner-up, in units of the weighting's largest weight (for equal
        # weights, the difference of their Hamming distances)
        margin = (int(math.floor((best_score - float(score[order[1]])) / (2 * chosen.unit) + 1e-9)) if len(names) > 1
                  else best_agree)
        unique = len(names) == 1 or float(score[order[1]]) < best_score
        need = chosen.threshold(acceptance, alpha / m)
        top = chosen.top
        owned = p <= alpha
        traced = best if (owned and p <= trace_alpha and unique and margin >= int(self.d["min_margin"])) else None
        host_dist = int(hamming(key.read_bits(labels), key.host_bits()))
        # colluders tie with each other, so nobody is the nearest by a margin: accuse each user on their own
        # score, under every weighting (m times the smallest of a user's m values)
        acc_p = np.minimum(1.0, m * np.min(np.stack([s.accusation_p_values(s.score.tolist(), acceptance) for _, s in per]), 0))
        # the strongest accusation at trace_alpha; anyone beside it at the stricter accuse_alpha: an innocent
        # whose ID happens to lie near the leaker's scores high whenever the leaker does, over every verdict of
        # that leaker, and naming one colluder is what tracing needs
        accuse_alpha = self.accuse_alpha()
        row = {u: k for k, u in enumerate(names)}
        named = accused(names, acc_p.tolist(), trace_alpha) if owned else []
        named = named[:1] + [u for u in named[1:] if acc_p[row[u]] <= accuse_alpha or u == traced]
        return Report(
            method=key.method, question="tracing", rule=self.name, owned=owned,
            match_rate=best_agree / n, matches=best_agree, n_queries=n,
            # the share of the best reachable score this suspect's readable triggers must reach
            threshold=(need + top) / (2 * top) if top > 0 and need != float("inf") else 1.0,
            threshold_how=(f"weighted agreement ({chosen.how}"
                           f"{f'; the best of {m} weightings fixed in the key' if m > 1 else ''}) with the nearest of "
                           f"{len(names)} registered IDs over the {valid} readable triggers; owned when the chance that an "
                           f"innocent model scores this well against any registered ID is <= alpha={alpha:g}"),
            p_value=p,
            p_value_how=("exact for a suspect made without the key: agreement with a secret ID is a fair coin per readable "
                         "trigger, divided by each ID's draw-region share, union over the registered IDs"
                         + (" (weights read off the labels alone, so exact given the labels)" if BALANCED in weightings else "")
                         + (f" ({len(reads)} reads: per-trigger integer weights, exact for the quantised score)" if len(reads) > 1 else "")
                         + (f" and over {m} candidate scores (weightings, with and without the probe reads)" if n_probes else "")
                         + (f" and over the key's {m} weightings" if m > 1 else "")),
            null_rate=0.5, alpha=alpha,
            traced_user=traced, hamming=int(dist[order[0]]), margin=margin,
            runner_up=names[int(order[1])] if len(names) > 1 else None,
            trace_p_value=p, bit_acc=_bit_acc(key, labels, expected_user or traced), valid_bits=valid,
            distances={u: int(d) for u, d in zip(names, dist)} | {HOST: host_dist}, accused=named,
            evidence={"nearest_user": best, "score": best_score, "score_threshold": need, "readable": valid,
                      "accusation_alpha": trace_alpha, "accusation_alpha_beside": accuse_alpha, "accusation_p_values": {u: float(acc_p[row[u]]) for u in named},
                      "nearest_user_accusation_p": float(acc_p[int(order[0])]),
                      "accusation_how": (f"each of the {len(names)} registered users on their own score: {len(names)} x the chance "
                                         f"an innocent ID scores as well / its draw-region share <= {trace_alpha:g} for the "
                                         f"strongest, <= {accuse_alpha:g} for anyone beside it; an innocent ID is "
                                         f"independent of whatever the colluders built"),
                      "reads_j": v_j, "reads_i": v_i, "agreements": best_agree,
                      "weighting": chosen.weighting, "reads": len(reads), "probe_reads": n_probes,
                      "pair_match_rate": valid / n, "host_pattern_distance": host_dist},
        )


def pool_matches(rule: str, labels: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Per query: does the label match under the paper's `pair` rule or IPGuard's `label` rule."""
    if rule == "pair":
        return (labels == pairs[:, 0]) | (labels == pairs[:, 1])
    if rule == "label":
        return labels == pairs[:, 1]
    raise ValueError(f"unknown pool rule '{rule}'")


def calibrate_pool_rule(rule: str, pool_counts: list[int], n: int, alpha: float) -> dict[str, Any]:
    """A `pair`/`label` decision from the pool's match counts: beta-binomial fit, and a threshold
    above every pool model whose fitted chance is at most alpha (n + 1 when none is)."""
    a, b = fit_beta_binomial(pool_counts, n)
    top = max(pool_counts)
    k = next((c for c in range(top + 1, n + 1) if beta_binomial_sf(c, n, a, b) <= alpha), n + 1)
    mean, rho = a / (a + b), 1.0 / (a + b + 1.0)
    how = (f"beta-binomial null (mean {mean:.3f}, intra-model correlation {rho:.3f}) fitted to {len(pool_counts)} "
           f"independent pool models (match counts {sorted(pool_counts)} of {n}); threshold = smallest count above every "
           f"pool model with fitted P[X>=count] <= alpha={alpha:g}")
    if k > n:
        how += f"; none of 0..{n} reaches it, so nothing is called owned under this rule"
    return {"rule": rule, "alpha": float(alpha), "threshold_count": int(k), "beta_a": a, "beta_b": b,
            "pool_counts": [int(c) for c in pool_counts], "null_rate": float(mean), "how": how}


class PoolRule(DecisionRule):
    """Match count against a beta-binomial fitted to the owner's pool of independent models."""

    fields = {"alpha": float, "threshold_count": int, "beta_a": float, "beta_b": float, "pool_counts": list}

    @classmethod
    def calibrate(cls, cfg, ctx, seed: int, triggers: torch.Tensor, pairs: torch.Tensor) -> dict[str, Any]:
        from fingermarks.evidence.pool import null_pool
        from fingermarks.metrics import predict_labels

        pool = null_pool(ctx, cfg.null_pool, seed)
        counts = [int(pool_matches(cls.name, predict_labels(m, triggers), pairs).sum()) for m in pool]
        return super().calibrate(cfg, ctx, seed, triggers, pairs) | calibrate_pool_rule(cls.name, counts, len(triggers), float(cfg.alpha))

    @classmethod
    def problem(cls, key) -> str | None:
        problem = super().problem(key)
        if problem:
            return problem
        n = len(key.triggers)
        if not 1 <= key.decision["threshold_count"] <= n + 1:
            return f"field 'decision.threshold_count' must lie in 1..{n + 1} (0 would call every model owned)"
        if len(key.decision["pool_counts"]) < 2:
            return "field 'decision.pool_counts' needs at least 2 pool models"
        return None

    def decide(self, key, labels: torch.Tensor, expected_user: str | None = None) -> Report:
        d, n = self.d, len(labels)
        count = int(pool_matches(self.name, labels, key.pairs).sum())
        p_model = beta_binomial_sf(count, n, d["beta_a"], d["beta_b"])
        p_pool = pool_p_value(count, d["pool_counts"])
        owned = count >= d["threshold_count"]
        report = Report(
            method=key.method, question="ownership", rule=self.name, owned=owned, match_rate=count / n, matches=count,
            n_queries=n, threshold=d["threshold_count"] / n, threshold_how=d["how"], p_value=p_model,
            p_value_how=(f"beta-binomial fitted to {len(d['pool_counts'])} pool models, extrapolated beyond them; "
                         f"the pool alone supports p >= {1 / (len(d['pool_counts']) + 1):.3f} (p_pool)"),
            null_rate=d.get("null_rate"), alpha=d["alpha"],
            evidence={"p_pool": p_pool, "pool_size": len(d["pool_counts"]), "pool_max": max(d["pool_counts"])},
        )
        if key.users and (owned or expected_user):
            self._trace(key, labels, expected_user, report)
        return report

    def _trace(self, key, labels: torch.Tensor, expected_user: str | None, report: Report) -> None:
        """The paper's tracing: nearest registered ID (the host's word competing), binomial bound."""
        bits = key.read_bits(labels)
        dec = decode(bits, {**key.users, HOST: key.host_bits()})
        p_trace = tracing_p_value(dec.hamming, dec.valid_bits, len(key.users)) if dec.hamming is not None else 1.0
        ok = (report.owned and dec.user not in (None, HOST) and dec.margin >= self.d.get("min_margin", 1)
              and p_trace <= self.d.get("trace_alpha", 0.05))
        report.question = "tracing"
        report.traced_user = dec.user if ok else None
        report.accused = [report.traced_user] if ok else []  # no per-user bound here: the traced user is the only one named
        report.hamming, report.margin, report.runner_up = dec.hamming, dec.margin, dec.runner_up
        report.trace_p_value, report.valid_bits, report.distances = p_trace, dec.valid_bits, dec.distances
        report.bit_acc = _bit_acc(key, labels, expected_user or report.traced_user)


@register_rule
class PairRule(PoolRule):
    """The paper's step 1: a trigger matches when its label is either of its pair (i, j)."""

    name = "pair"


@register_rule
class LabelRule(PoolRule):
    """IPGuard's rule: a fingerprint matches when the label equals the one recorded on the host."""

    name = "label"
