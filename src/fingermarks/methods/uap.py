"""UAP fingerprinting (Peng et al., CVPR 2022; seeds/uap-fingerprint.txt): is a suspect a piracy copy
(extracted, fine-tuned, pruned) of the victim? The host ships unchanged; nothing is embedded.

Keygen, from the victim (host) f with m classes:
1. **UAPs.** `uap.count` universal perturbations of f by the DeepFool-based algorithm of
   Moosavi-Dezfooli et al. (2017): pass over owner images in a secret order; for every image x that
   x + v does not fool yet, add the minimal DeepFool step r of x + v and project v + r onto the ball
   ||v||_p <= xi (a real bound, `uap.norm`/`uap.xi`); stop once the fooling rate on held-out owner
   images reaches `uap.target_fooling`. The algorithm is order-sensitive (on MNIST, L2 4: 0.22 to 0.85
   by image order), so the rate is checked every `uap.check_every` images, the best v is kept, and up
   to `uap.restarts` secret orders are tried. Every query image is clipped to [0, 1].
2. **Points.** f's probabilities on the owner's images are clustered by k-means (`points.clusters`
   clusters, split over the classes f predicts in proportion to how often it predicts them, at least
   one each: so the points cover every predicted class); the `points.pool` images nearest each
   centroid are that cluster's representatives.
3. **Fingerprint.** A *view* takes one representative per cluster (K points x) and queries x and
   x + v for every UAP v: K (1 + U) queries, whose answers, concatenated, are the fingerprint. The key's
   triggers are `points.views` views (V K (1 + U) images, layout [view][point][variant]).
4. **Encoder.** An MLP E to the unit sphere, trained by supervised contrastive learning (Khosla et al.
   2020, temperature `encoder.tau`) on fingerprints of models the owner makes himself: the victim and
   its piracy copies (`encoder.piracy`: students of several architectures, budgets and label kinds
   extracted from his own data, fine-tuned and pruned copies) form one class; each independently
   trained model (`encoder.independents`, seeds 50000+) is a class of its own. Augmentation: every
   batch draws fresh views (one random representative per cluster). One encoder per mode.
5. **Decision.** The score of a suspect is the mean over the V views of cos(E(fp_suspect),
   E(fp_victim)) on the same view. It is calibrated on the owner's null pool (`decision.null_pool`,
   independent models never used for the encoder): a one-sided Student-t prediction bound at
   `decision.alpha` on the null scores' Fisher z = atanh(score) (a cosine piles up near 1; z does not),
   and above every null score. The report gives that model's p-value and the pool's own (rank)
   p-value, which never goes below 1/(K+1).

Two access modes, the same V K (1 + U) queries:
- **outputs** (a model file, an ONNX file, a server that returns scores): the encoder reads each
  answer's log-probabilities, clipped at 1e-6 and scaled to [0, 1] (`encoder.features: log`; `prob`
  reads raw probabilities, which hide the small ones a soft-label student inherits).
- **label-only** (a server that returns top-1 labels): each answer is the one-hot top-1 label. The
  fingerprint keeps which class wins on x and on each x + v, not by how much, so it separates only by
  where the UAPs move each model's labels; a separate encoder and threshold are trained for it. What
  it costs in separation is measured (benchmarks/uap_fingerprint.py).

Departures from the paper (and its public reimplementation), each a config value:
- the norm bound is real (L2 5 on MNIST's [0, 1] pixels; the reimplementation's xi=10 in L-inf bounds
  nothing), with restarts because the algorithm is order-sensitive;
- k-means runs per predicted class (coverage of every class is guaranteed; the paper clusters all
  outputs at once);
- log-probabilities, not probabilities, in the outputs mode (measured: AUC 0.70 -> 0.81-0.89 on seed 0);
- the decision is a calibrated threshold on the mean similarity with a stated null, not the paper's
  test over 20 fingerprints of one model (those views are correlated: one model, one score).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from fingermarks.context import RunContext
from fingermarks.errors import KeyFileError
from fingermarks.evidence.report import Report
from fingermarks.evidence.rules import DecisionRule, register_rule
from fingermarks.key import Key, check_host
from fingermarks.methods.base import WatermarkMethod, frozen
from fingermarks.metrics import accuracy, predict_probabilities
from fingermarks.secret import KeySecret

log = logging.getLogger(__name__)

MODES = ("outputs", "labels")
#: seed bases of the owner's own models for the encoder (far from every evaluation population)
INDEPENDENT_SEED = 50_000
PIRACY_SEED = 60_000


# -- UAPs ---------------------------------------------------------------------------------------
def deepfool(model: nn.Module, x: torch.Tensor, overshoot: float = 0.02, max_iter: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepFool (Moosavi-Dezfooli et al. 2016) for a batch: the minimal perturbation r (N, C, H, W)
    moving each image across its nearest linearised boundary, and whether it changed the label.

    The gradients of all m logits come from one backward pass over the images replicated m times."""
    n = len(x)
    with torch.no_grad():
        label = model(x).argmax(1)
    m = model(x[:1]).shape[1]
    r_tot = torch.zeros_like(x)
    active = torch.ones(n, dtype=torch.bool)
    eye = torch.eye(m, dtype=torch.bool)
    for _ in range(max_iter):
        idx = active.nonzero().flatten()
        if len(idx) == 0:
            break
        xa = (x[idx] + (1 + overshoot) * r_tot[idx]).repeat_interleave(m, 0).requires_grad_(True)
        z = model(xa).view(len(idx), m, m)  # [image, copy k, logit]
        grads = torch.autograd.grad(z[:, eye].sum(), xa)[0].view(len(idx), m, *x.shape[1:])
        logits = z[:, 0].detach()
        now = logits.argmax(1)
        fooled = now != label[idx]
        k0 = label[idx]
        g0 = grads[torch.arange(len(idx)), k0]
        w = grads - g0.unsqueeze(1)
        f = logits - logits.gather(1, k0.view(-1, 1))
        wn = w.flatten(2).norm(dim=2).clamp_min(1e-12)
        pert = f.abs() / wn
        pert[torch.arange(len(idx)), k0] = float("inf")
        best = pert.argmin(1)
        step = (pert[torch.arange(len(idx)), best] + 1e-4).view(-1, *[1] * (x.dim() - 1))
        wb = w[torch.arange(len(idx)), best]
        r_i = step * wb / wn[torch.arange(len(idx)), best].view_as(step)
        upd = ~fooled
        r_tot[idx[upd]] += r_i[upd].detach()
        active[idx[fooled]] = False
    with torch.no_grad():
        final = model(x + (1 + overshoot) * r_tot).argmax(1)
    return (1 + overshoot) * r_tot, final != label


def project(v: torch.Tensor, xi: float, norm: str) -> torch.Tensor:
    """v projected onto the ball of radius xi in L2 or L-inf."""
    if norm == "l2":
        return v * min(1.0, xi / max(float(v.norm()), 1e-12))
    if norm == "linf":
        return v.clamp(-xi, xi)
    raise ValueError(f"unknown UAP norm {norm!r}; choose l2 or linf")


@torch.no_grad()
def fooling_rate(model: nn.Module, x: torch.Tensor, v: torch.Tensor, lo: float = 0.0, hi: float = 1.0) -> float:
    """Share of images whose label changes when the (clipped) perturbation v is added."""
    return float((model(x).argmax(1) != model((x + v).clamp(lo, hi)).argmax(1)).float().mean())


def universal_perturbation(model: nn.Module, x: torch.Tensor, x_val: torch.Tensor, xi: float, norm: str,
                           target_fooling: float, max_passes: int, generator: torch.Generator,
                           overshoot: float = 0.02, max_iter_df: int = 50, input_range=(0.0, 1.0),
                           check_every: int = 50) -> tuple[torch.Tensor, dict]:
    """The DeepFool-based universal perturbation (Moosavi-Dezfooli et al. 2017) within ||v||_norm <= xi.

    The fooling rate on `x_val` is measured every `check_every` images (and after each pass); the best
    v so far is kept, and the algorithm stops as soon as it reaches `target_fooling`. (Once v sits on
    the ball's surface each DeepFool step turns it, so the rate oscillates within a pass.)"""
    lo, hi = input_range
    start = time.perf_counter()
    v = torch.zeros_like(x[:1])
    best_v, best_rate, history, seen = v.clone(), 0.0, [], 0
    with torch.no_grad():
        y0 = model(x).argmax(1)

    def check() -> bool:
        nonlocal best_v, best_rate
        rate = fooling_rate(model, x_val, v, lo, hi)
        history.append(rate)
        if rate > best_rate:
            best_v, best_rate = v.clone(), rate
        return rate >= target_fooling

    done = False
    for _ in range(max_passes):
        for i in torch.randperm(len(x), generator=generator).tolist():
            seen += 1
            xv = (x[i:i + 1] + v).clamp(lo, hi)
            with torch.no_grad():
                fooled = int(model(xv).argmax(1)) != int(y0[i])
            if not fooled:
                r, ok = deepfool(model, xv, overshoot, max_iter_df)
                if bool(ok[0]):
                    v = project(v + r, xi, norm)
            if seen % check_every == 0 and check():
                done = True
                break
        if done or check():
            break
    report = {"fooling_rate": best_rate, "reached": best_rate >= target_fooling, "images_seen": seen,
              "passes": math.ceil(seen / len(x)), "history": [round(h, 4) for h in history], "l2": float(best_v.norm()),
              "linf": float(best_v.abs().max()), "seconds": time.perf_counter() - start}
    return best_v[0], report


# -- points and fingerprints --------------------------------------------------------------------
def as_probabilities(answers: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A suspect's answers as (N, m) rows: probabilities kept, logits softmaxed, labels one-hot."""
    if answers.dim() == 1 or not answers.is_floating_point():
        return F.one_hot(answers.long().view(-1), num_classes).float()
    a = answers.float()
    if bool((a >= 0).all()) and bool(((a.sum(1) - 1).abs() < 1e-3).all()):
        return a
    return F.softmax(a, 1)


def select_points(host: nn.Module, x: torch.Tensor, clusters: int, pool: int, seed: int) -> tuple[torch.Tensor, dict]:
    """(clusters, pool) indices into x: k-means over the host's probabilities, per predicted class
    (clusters shared in proportion to the class's frequency, at least one each); each cluster's
    `pool` images nearest its centroid, nearest first (fewer are repeated cyclically)."""
    from sklearn.cluster import KMeans

    p = predict_probabilities(host, x)
    label = p.argmax(1)
    classes, counts = torch.unique(label, return_counts=True)
    if clusters < len(classes):
        raise ValueError(f"points.clusters={clusters} is below the {len(classes)} classes the host predicts")
    share = counts.double() / counts.sum()
    alloc = torch.ones(len(classes), dtype=torch.long)
    for _ in range(clusters - len(classes)):  # the largest remainder, one cluster at a time
        alloc[int(torch.argmax(share * clusters - alloc))] += 1
    rows, sizes = [], []
    for c, k in zip(classes.tolist(), alloc.tolist()):
        members = (label == c).nonzero().flatten()
        k = min(k, len(members))
        km = KMeans(n_clusters=k, n_init=4, random_state=seed % (2**31)).fit(p[members].numpy())
        for j in range(k):
            inside = members[torch.as_tensor(km.labels_ == j)]
            d = (p[inside] - torch.as_tensor(km.cluster_centers_[j]).float()).norm(dim=1)
            near = inside[torch.argsort(d)][:pool]
            sizes.append(int((km.labels_ == j).sum()))
            rows.append(near.repeat(math.ceil(pool / len(near)))[:pool])
    return torch.stack(rows), {"clusters": len(rows), "per_class": dict(zip(classes.tolist(), alloc.tolist())),
                               "cluster_sizes": sizes}


def queries(points: torch.Tensor, uaps: torch.Tensor, input_range=(0.0, 1.0)) -> torch.Tensor:
    """(..., 1 + U, C, H, W): each point and the point plus each UAP, clipped to the input range."""
    lo, hi = input_range
    return torch.cat([points.unsqueeze(-4), (points.unsqueeze(-4) + uaps).clamp(lo, hi)], -4)


def fingerprints(answers: torch.Tensor) -> torch.Tensor:
    """(V, K, 1 + U, m) answers -> (V, K (1 + U) m) fingerprints."""
    return answers.flatten(1)


def one_hot(answers: torch.Tensor) -> torch.Tensor:
    return F.one_hot(answers.argmax(-1), answers.shape[-1]).float()


#: log-probabilities are clipped here and mapped to [0, 1]: the small probabilities (what a soft-label
#: student inherits) weigh as much as the top one, where raw probabilities hide them
LOG_FLOOR = 1e-6


def features(answers: torch.Tensor, mode: str, kind: str = "log") -> torch.Tensor:
    """What the encoder reads per query: one-hot labels (label-only mode), or the probabilities as
    they are (`prob`) or as clipped log-probabilities scaled to [0, 1] (`log`, outputs mode)."""
    if mode == "labels":
        return one_hot(answers)
    if kind == "prob":
        return answers
    if kind == "log":
        return 1 + answers.clamp_min(LOG_FLOOR).log() / -math.log(LOG_FLOOR)
    raise ValueError(f"unknown encoder features {kind!r}; choose log or prob")


# -- encoder ------------------------------------------------------------------------------------
class Encoder(nn.Module):
    """A small MLP mapping a fingerprint to a unit vector."""

    def __init__(self, dim_in: int, hidden: list[int]) -> None:
        super().__init__()
        layers, d = [], dim_in
        for h in hidden[:-1]:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers.append(nn.Linear(d, hidden[-1]))
        self.net = nn.Sequential(*layers)

    def forward(self, fp: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(fp), dim=-1)


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) of unit vectors z with class labels."""
    sim = z @ z.T / tau
    self_mask = torch.eye(len(z), dtype=torch.bool)
    sim = sim.masked_fill(self_mask, -1e9)
    log_prob = sim - torch.logsumexp(sim, 1, keepdim=True)
    pos = (labels.view(-1, 1) == labels.view(1, -1)) & ~self_mask
    n_pos = pos.sum(1).clamp_min(1)
    return -((log_prob * pos).sum(1) / n_pos)[pos.any(1)].mean()


def sample_views(answers: torch.Tensor, views: int, generator: torch.Generator) -> torch.Tensor:
    """`views` random views of one model's (K, P, 1 + U, m) answers: one representative per cluster."""
    k, p = answers.shape[:2]
    pick = torch.randint(0, p, (views, k), generator=generator)
    return answers[torch.arange(k).view(1, -1), pick]  # (views, K, 1 + U, m)


def train_encoder(answers: list[torch.Tensor], classes: list[int], hidden: list[int], tau: float, steps: int, lr: float,
                  views_per_model: int, generator: torch.Generator) -> tuple[Encoder, dict]:
    """Supervised contrastive training on resampled views of each model's answers."""
    start = time.perf_counter()
    dim = answers[0][0, 0].numel() * answers[0].shape[0]
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    enc = Encoder(dim, hidden)
    opt = torch.optim.Adam(enc.parameters(), lr=lr)
    labels = torch.as_tensor(classes).repeat_interleave(views_per_model)
    losses = []
    for _ in range(steps):
        fp = torch.cat([fingerprints(sample_views(a, views_per_model, generator)) for a in answers])
        loss = supcon_loss(enc(fp), labels, tau)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    enc.eval()
    return enc, {"steps": steps, "loss_first": losses[0], "loss_last": float(np.mean(losses[-10:])),
                 "seconds": time.perf_counter() - start}


def encoder_from_state(state: dict[str, torch.Tensor], hidden: list[int]) -> Encoder:
    dim = state["net.0.weight"].shape[1]
    enc = Encoder(dim, hidden)
    enc.load_state_dict(state)
    return enc.eval()


@torch.no_grad()
def similarity(enc: Encoder, suspect_fp: torch.Tensor, victim_fp: torch.Tensor) -> torch.Tensor:
    """Per view: cosine between the encoded suspect and victim fingerprints of that view."""
    return (enc(suspect_fp) * enc(victim_fp)).sum(1)


def fisher_z(score: float | np.ndarray) -> float | np.ndarray:
    """atanh of a cosine similarity (clipped inside (-1, 1)): the scale the null is fitted on."""
    return np.arctanh(np.clip(score, -1 + 1e-6, 1 - 1e-6))


def t_bound(scores: list[float], alpha: float) -> tuple[float, float, float]:
    """(mean, sd, threshold): the one-sided (1 - alpha) Student-t prediction bound for a new null score,
    fitted on the Fisher-z scale (mean and sd are of z; the threshold is back on the cosine scale)."""
    from scipy.stats import t

    z = fisher_z(np.asarray(scores, dtype=float))
    k = len(z)
    mean, sd = float(z.mean()), float(max(z.std(ddof=1), 1e-6))
    bound = mean + float(t.ppf(1 - alpha, k - 1)) * sd * math.sqrt(1 + 1 / k)
    return mean, sd, max(float(np.tanh(bound)), float(max(scores)) + 1e-6)


def t_p_value(score: float, mean: float, sd: float, k: int) -> float:
    """P[a new null model scores >= score] under the Student-t fit of `t_bound` (z scale)."""
    from scipy.stats import t

    return float(t.sf((float(fisher_z(score)) - mean) / (sd * math.sqrt(1 + 1 / k)), k - 1))


# -- the method ---------------------------------------------------------------------------------
class UAPFingerprint(WatermarkMethod):
    """Keygen: UAPs, points, encoders (outputs and label-only) and calibrated thresholds. No embedding."""

    name = "uap"
    embeds = False

    def __init__(self, uap: DictConfig, points: DictConfig, encoder: DictConfig, decision: DictConfig,
                 population_seed: int | None = None) -> None:
        self.uap, self.points, self.encoder, self.decision = uap, points, encoder, decision
        self.population_seed = population_seed

    def pop_seed(self, seed: int) -> int:
        """The seed of the owner's independent populations: `population_seed`, else the run's."""
        return seed if self.population_seed is None else int(self.population_seed)

    # owner's populations ----------------------------------------------------------------------
    def owner_models(self, host: nn.Module, ctx: RunContext, seed: int) -> tuple[list[nn.Module], list[int], dict]:
        """The encoder's training population: [victim + piracy copies] (class 0), independents (1, 2, ...)."""
        from fingermarks.evidence.piracy import owner_pool, piracy_population
        from fingermarks.evidence.pool import train_population

        start = time.perf_counter()
        dm = ctx.datamodule
        x, y = dm.train_eval_set.tensors(owner_pool(dm))
        copies = piracy_population(host, self.encoder.piracy, dm, x, y, int(self.encoder.get("piracy_seed", PIRACY_SEED)),
                                   seed, ctx.cache_dir, role="uap_piracy")
        indep = train_population(ctx, self.encoder.independents, int(self.encoder.get("independent_seed", INDEPENDENT_SEED)),
                                 self.pop_seed(seed), "uap_indep")
        # a copy no thief would use (accuracy below min_acc) would only teach the encoder that bad models are copies
        min_acc = float(self.encoder.get("min_acc", 0.0))
        kept = [(m, i) for m, i in copies if i["clean_acc"] >= min_acc]
        models = [host] + [m for m, _ in kept] + [m for m, _ in indep]
        classes = [0] * (1 + len(kept)) + list(range(1, 1 + len(indep)))
        report = {"piracy": [{"name": i["name"], "clean_acc": i["clean_acc"], "used": i["clean_acc"] >= min_acc}
                             for _, i in copies],
                  "independents": [{"arch": i.get("arch"), "clean_acc": i["clean_acc"], "seed": i.get("seed")} for _, i in indep],
                  "train_seconds": sum(float(i.get("seconds", 0)) for _, i in copies)
                  + sum(float(i.get("train_seconds", 0)) for _, i in indep),
                  "seconds": time.perf_counter() - start}
        return models, classes, report

    def keygen(self, host: nn.Module, ctx: RunContext, users: list[str], seed: int, secret: KeySecret | None = None) -> Key:
        from fingermarks.evidence.piracy import owner_pool
        from fingermarks.evidence.pool import null_pool

        if users:
            raise ValueError("UAP fingerprinting registers no users (run it with users=0 or through the pipeline)")
        secret = secret or KeySecret.fresh()
        host = frozen(copy.deepcopy(host))
        dm = ctx.datamodule
        lo, hi = (float(v) for v in getattr(dm, "input_range", (0.0, 1.0)))
        timing: dict[str, float] = {}

        # owner images: secret order; UAP images, UAP validation images and point candidates apart
        t0 = time.perf_counter()
        own = owner_pool(dm)
        own = own[torch.randperm(len(own), generator=secret.generator("uap/images"))]
        u = self.uap
        n_fit, n_val = int(u.images), int(u.val_images)
        if n_fit + n_val >= len(own):
            raise ValueError(f"uap.images + uap.val_images = {n_fit + n_val} leave no owner images for points ({len(own)})")
        x_all, _ = dm.train_eval_set.tensors(own)
        x_fit, x_val = x_all[:n_fit], x_all[n_fit:n_fit + n_val]
        vs, uap_reports = [], []
        for k in range(int(u.count)):
            best = None
            for r in range(int(u.get("restarts", 1))):  # the algorithm is order-sensitive: restart until the target
                v, rep = universal_perturbation(host, x_fit, x_val, float(u.xi), str(u.norm), float(u.target_fooling),
                                                int(u.max_passes), secret.generator(f"uap/order/{k}/{r}"),
                                                overshoot=float(u.overshoot), max_iter_df=int(u.max_iter_df),
                                                input_range=(lo, hi), check_every=int(u.get("check_every", 50)))
                rep["restart"] = r
                if best is None or rep["fooling_rate"] > best[1]["fooling_rate"]:
                    best = (v, rep)
                if rep["reached"]:
                    break
            vs.append(best[0])
            uap_reports.append(best[1])
        uaps = torch.stack(vs)
        timing["uaps"] = time.perf_counter() - t0

        # points: k-means over the host's outputs on the remaining owner images
        t0 = time.perf_counter()
        cand = own[n_fit + n_val:]
        x_cand = x_all[n_fit + n_val:]
        seed_km = int(torch.randint(0, 2**31 - 1, (1,), generator=secret.generator("points/kmeans")))
        pool_idx, points_report = select_points(host, x_cand, int(self.points.clusters), int(self.points.pool), seed_km)
        pool_x = x_cand[pool_idx]  # (K, P, C, H, W)
        pool_q = queries(pool_x, uaps, (lo, hi))  # (K, P, 1 + U, C, H, W)
        g_views = secret.generator("points/views")
        K, P = pool_idx.shape
        V = int(self.points.views)
        perm = torch.stack([torch.randperm(P, generator=g_views) for _ in range(K)], 1)  # (P, K)
        pick = perm[torch.arange(V) % P]  # (V, K): view v's representative of each cluster
        triggers = pool_q[torch.arange(K).view(1, -1), pick]  # (V, K, 1 + U, C, H, W)
        layout = [V, K, 1 + len(uaps)]
        triggers = triggers.reshape(-1, *pool_x.shape[2:]).contiguous()
        timing["points"] = time.perf_counter() - t0

        # the owner's models and the encoders
        t0 = time.perf_counter()
        models, classes, pop_report = self.owner_models(host, ctx, seed)
        timing["owner_models"] = time.perf_counter() - t0
        flat = pool_q.reshape(-1, *pool_x.shape[2:])
        answers = [predict_probabilities(m, flat).view(K, P, 1 + len(uaps), -1) for m in models]
        e = self.encoder
        hidden = [int(h) for h in e.hidden]
        encoders, enc_reports = {}, {}
        t0 = time.perf_counter()
        kind = str(e.get("features", "log"))
        for mode in MODES:
            data = [features(a, mode, kind) for a in answers]
            enc, rep = train_encoder(data, classes, hidden, float(e.tau), int(e.steps), float(e.lr), int(e.views_per_model),
                                     secret.generator(f"encoder/{mode}"))
            encoders[mode], enc_reports[mode] = enc, rep
        timing["encoders"] = time.perf_counter() - t0

        # calibration on the owner's null pool (never seen by the encoders)
        t0 = time.perf_counter()
        reference = predict_probabilities(host, triggers)
        nulls = null_pool(ctx, self.decision.null_pool, self.pop_seed(seed))
        timing["null_models"] = time.perf_counter() - t0
        alpha = float(self.decision.alpha)
        modes: dict[str, Any] = {}
        for mode in MODES:
            null_scores = [score(encoders[mode], predict_probabilities(m, triggers), reference, layout, mode, kind)[0] for m in nulls]
            train_scores = [score(encoders[mode], a[torch.arange(K).view(1, -1), pick].reshape(-1, a.shape[-1]), reference,
                                  layout, mode, kind)[0] for a in answers]
            mean, sd, threshold = t_bound(null_scores, alpha)
            modes[mode] = {"encoder": {k: v.detach().clone() for k, v in encoders[mode].state_dict().items()},
                           "threshold": float(threshold), "null_mean": mean, "null_sd": sd,
                           "null_scores": [float(s) for s in null_scores]}
            enc_reports[mode].update(piracy_scores=[float(s) for s, c in zip(train_scores, classes) if c == 0],
                                     independent_scores=[float(s) for s, c in zip(train_scores, classes) if c != 0])
        decision = {"rule": "uap", "alpha": alpha, "layout": layout, "hidden": hidden, "reference": reference,
                    "features": kind, "modes": modes, "null_pool_size": len(nulls)}
        pairs = reference.argmax(1).view(-1, 1).repeat(1, 2)
        source_indices = own[n_fit + n_val:][pool_idx.flatten()].unique()
        report = {
            "uaps": uap_reports, "uap_norm": str(u.norm), "uap_xi": float(u.xi),
            "host_acc_on_uap": [accuracy_on(host, dm, v, lo, hi) for v in uaps],
            "points": points_report, "queries": len(triggers), "layout": layout,
            "owner_population": pop_report, "encoders": enc_reports, "timing": timing,
            "null_models": len(nulls), "source_indices": source_indices.tolist(),
        }
        return Key.for_host(self.name, host, dm, triggers, pairs, decision, seed, report, secret)

    def embed(self, host: nn.Module, key: Key, user: str, ctx: RunContext, seed: int) -> tuple[nn.Module, dict[str, Any]]:
        """A fingerprint changes nothing: the distributed model is the host itself."""
        check_host(key, host)
        model = copy.deepcopy(host).eval()
        return model, {"embed_seconds": 0.0, "embed_epochs": 0, "clean_acc": accuracy(model, ctx.datamodule.test_set),
                       "history": [], "all_matched": True}


@torch.no_grad()
def accuracy_on(model: nn.Module, dm, v: torch.Tensor, lo: float, hi: float) -> float:
    x, y = dm.test_set.tensors()
    return float((model((x + v).clamp(lo, hi)).argmax(1) == y).float().mean())


def score(enc: Encoder, answers: torch.Tensor, reference: torch.Tensor, layout: list[int], mode: str,
          kind: str = "log") -> tuple[float, torch.Tensor]:
    """The suspect's score (mean per-view cosine to the victim) from its (n, m) answers."""
    V = layout[0]
    answers, reference = features(answers, mode, kind), features(reference, mode, kind)
    sims = similarity(enc, answers.reshape(V, -1), reference.reshape(V, -1))
    return float(sims.mean()), sims


# -- the decision rule --------------------------------------------------------------------------
@register_rule
class UAPRule(DecisionRule):
    """Piracy: the mean similarity of the suspect's encoded fingerprint to the victim's, against a
    threshold from the owner's null pool; outputs mode when the suspect gives scores, else labels."""

    name = "uap"
    question = "piracy"
    fields = {"alpha": float, "layout": list, "hidden": list, "reference": torch.Tensor, "modes": dict}
    #: verification asks the suspect for `outputs(x)` when it has them (see `decide_outputs`)
    uses_outputs = True

    @classmethod
    def problem(cls, key) -> str | None:
        problem = super().problem(key)
        if problem:
            return problem
        d = key.decision
        layout = d["layout"]
        if len(layout) != 3 or not all(isinstance(v, int) and v > 0 for v in layout) or math.prod(layout) != key.n:
            return f"field 'decision.layout' must be [views, points, 1 + uaps] with product {key.n}"
        m = key.data["num_classes"]
        if d["reference"].shape != (key.n, m):
            return f"field 'decision.reference' must be a ({key.n}, {m}) tensor of the victim's probabilities"
        for mode in MODES:
            md = d["modes"].get(mode)
            if not isinstance(md, dict) or not isinstance(md.get("threshold"), float) or not isinstance(md.get("encoder"), dict):
                return f"field 'decision.modes.{mode}' must hold an encoder state and a float threshold"
            w = md["encoder"].get("net.0.weight")
            if not isinstance(w, torch.Tensor) or w.shape[1] != key.n // layout[0] * m:
                return f"field 'decision.modes.{mode}.encoder' does not take fingerprints of {key.n // layout[0] * m} numbers"
            try:
                encoder_from_state(md["encoder"], [int(h) for h in d["hidden"]])
            except Exception as exc:  # noqa: BLE001 - any mismatch is a bad key
                return f"field 'decision.modes.{mode}.encoder' does not fit hidden={d['hidden']}: {type(exc).__name__}"
        return None

    def decide(self, key, labels: torch.Tensor, expected_user: str | None = None) -> Report:
        """Label-only mode: the suspect's top-1 labels on the key's queries."""
        return self._decide(key, as_probabilities(labels.long().view(-1), key.data["num_classes"]), "labels")

    def decide_outputs(self, key, outputs: torch.Tensor, expected_user: str | None = None) -> Report:
        """Outputs mode when `outputs` are (n, m) scores (logits or probabilities); label-only when labels."""
        if outputs.dim() == 2 and outputs.is_floating_point():
            if outputs.shape != (key.n, key.data["num_classes"]):
                raise ValueError(f"outputs of shape {tuple(outputs.shape)} for a key of {key.n} queries and "
                                 f"{key.data['num_classes']} classes")
            return self._decide(key, as_probabilities(outputs, key.data["num_classes"]), "outputs")
        return self.decide(key, outputs.long().view(-1), expected_user)

    def _decide(self, key, answers: torch.Tensor, mode: str) -> Report:
        d = self.d
        md = d["modes"][mode]
        enc = encoder_from_state(md["encoder"], [int(h) for h in d["hidden"]])
        s, sims = score(enc, answers, d["reference"], d["layout"], mode, d.get("features", "log"))
        nulls = md["null_scores"]
        p_model = t_p_value(s, md["null_mean"], md["null_sd"], len(nulls))
        p_pool = (1 + sum(n >= s for n in nulls)) / (len(nulls) + 1)
        threshold = md["threshold"]
        agree = int((answers.argmax(1) == d["reference"].argmax(1)).sum())
        V, K, variants = d["layout"]
        return Report(
            # match_rate is the score (mean cosine); matches counts queries answered with the victim's top-1 label
            method=key.method, question="piracy", rule=self.name, owned=s >= threshold, match_rate=s,
            matches=agree, n_queries=key.n, threshold=threshold,
            threshold_how=(f"{mode} mode: mean cosine similarity of the encoded fingerprint to the victim's over {V} views "
                           f"({K} points x {variants} variants each); threshold = one-sided (1 - alpha) Student-t prediction "
                           f"bound over {len(nulls)} null models on the Fisher-z scale (mean {md['null_mean']:.3f}, sd "
                           f"{md['null_sd']:.3f}), "
                           f"alpha={d['alpha']:g}, and above every null model"),
            p_value=p_model,
            p_value_how=(f"Student-t fit to {len(nulls)} independent null models' Fisher-z scores, extrapolated beyond them; "
                         f"the pool alone supports p >= {1 / (len(nulls) + 1):.3f} (p_pool)"),
            null_rate=float(np.tanh(md["null_mean"])), alpha=float(d["alpha"]),
            evidence={"mode": mode, "score": s, "view_similarity": [float(v) for v in sims], "p_pool": p_pool,
                      "views_above_threshold": int((sims >= threshold).sum()), "label_agreement": agree / key.n,
                      "null_max": max(nulls), "views": V, "points": K, "variants": variants},
        )
