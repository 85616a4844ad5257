"""Verification: each key's decision rule turns top-1 labels into a verdict (fingermarks.evidence)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy import stats

from fingermarks.evidence.nulls import (beta_binomial_sf, clopper_pearson, code_p_value, fit_beta_binomial,
                                        pool_p_value, weighted_sign_sf)
from fingermarks.evidence.rules import RULES, calibrate_pool_rule
from fingermarks.key import Key
from fingermarks.secret import KeySecret
from fingermarks.verification import HOST, verify_labels

torch.set_num_threads(1)

N = 16
MIN_DISTANCE = 5
CODE = {"rule": "code", "alpha": 1e-3, "min_margin": 1, "trace_alpha": 1e-3}


def make_key(decision: dict | None = None, secret: str = "verification", users=("alice", "bob", "carol"), n: int = N) -> Key:
    g = torch.Generator().manual_seed(0)
    i = torch.randint(0, 10, (n,), generator=g)
    j = (i + torch.randint(1, 10, (n,), generator=g)) % 10
    key = Key(
        method="fingermarks", triggers=torch.rand(n, 1, 8, 8, generator=g), pairs=torch.stack([i, j], 1),
        swap=torch.rand(n, generator=g) < 0.5, host_sha256="0" * 64,
        data={"name": "digits", "num_classes": 10, "input_shape": [1, 8, 8]},
        decision=dict(decision or CODE), secret=KeySecret.from_text(secret).hex,
    )
    key.add_users(list(users), None, MIN_DISTANCE)
    return key


@pytest.fixture(scope="module")
def key() -> Key:
    k = make_key()
    assert k.min_distance >= MIN_DISTANCE
    return k


@pytest.fixture(scope="module")
def pair_key() -> Key:
    """The paper's rule, calibrated on a pool whose models matched 2..6 of 16 triggers."""
    return make_key(calibrate_pool_rule("pair", [2, 3, 6, 4, 2, 5], N, 1e-3) | {"min_margin": 1, "trace_alpha": 0.05})


def other_labels(key: Key, seed: int = 0) -> torch.Tensor:
    """Random labels outside every trigger's pair: what an unrelated model might answer."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, j in key.pairs.tolist():
        choices = [c for c in range(10) if c not in (i, j)]
        out.append(choices[int(torch.randint(len(choices), (1,), generator=g))])
    return torch.tensor(out)


# -- the code rule (default of every multi-bit watermark) ------------------------------------------


def test_a_users_labels_are_owned_and_traced_to_that_user(key: Key) -> None:
    for name, bits in key.users.items():
        report = verify_labels(key, key.target_labels(bits))
        assert report.owned and report.rule == "code" and report.question == "tracing"
        assert report.matches == N and report.match_rate == 1.0 and report.traced_user == name
        assert report.hamming == 0 and report.bit_acc == 1.0 and report.valid_bits == N
        assert report.margin >= MIN_DISTANCE
        bound = sum(2.0**-N / key.id_acceptance[u] for u in key.users)
        assert report.p_value == pytest.approx(bound) and report.p_value <= key.decision["alpha"]


@pytest.mark.parametrize("which", [0, 1])
def test_a_model_reading_every_trigger_as_one_class_of_its_pair_is_not_ours(key: Key, which: int) -> None:
    """All j (the host's pattern, a family that transfers every trigger) or all i (a family that
    reads the source digit): neither agrees with a secret ID beyond chance."""
    report = verify_labels(key, key.pairs[:, which].clone())
    assert not report.owned and report.traced_user is None
    assert report.evidence["pair_match_rate"] == 1.0  # what the paper's pair rule would have claimed
    if which == 1:
        assert report.distances[HOST] == 0


def test_labels_outside_the_pairs_are_not_owned(key: Key) -> None:
    report = verify_labels(key, other_labels(key))
    assert not report.owned and report.valid_bits == 0 and report.p_value == pytest.approx(1.0)
    assert report.traced_user is None


def test_a_few_bit_flips_still_trace_the_user(key: Key) -> None:
    bits = key.users["bob"].clone()
    bits[[2]] ^= 1
    report = verify_labels(key, key.target_labels(bits))
    assert report.owned and report.traced_user == "bob" and report.hamming == 1 and report.margin > 0
    assert report.bit_acc == pytest.approx((N - 1) / N)


def test_foreign_labels_are_erased_not_counted_as_flips(key: Key) -> None:
    labels = key.target_labels(key.users["carol"]).clone()
    labels[:2] = other_labels(key, seed=1)[:2]
    report = verify_labels(key, labels)
    assert report.valid_bits == N - 2 and report.hamming == 0 and report.owned and report.traced_user == "carol"


def test_expected_user_sets_the_bit_accuracy_reference(key: Key) -> None:
    labels = key.target_labels(key.users["alice"])
    report = verify_labels(key, labels, expected_user="bob")
    assert report.traced_user == "alice"
    assert report.bit_acc == pytest.approx(float((labels == key.target_labels(key.users["bob"])).float().mean()))


@pytest.mark.parametrize("weighting", [{"weights": {"j": 1.0, "i": 1.0}}, {"weights": {"j": 1.0, "i": 0.25}},
                                       {"weightings": [{"j": 1.0, "i": 1.0}, {"j": 1.0, "i": 0.25}, {"j": 1.0, "i": 0.0}]},
                                       {"weightings": ["balanced"]}, {"weightings": [{"j": 1.0, "i": 1.0}, "balanced"]}])
def test_code_null_holds_for_biased_innocent_models(weighting) -> None:
    """The false-claim bound is exact over the key's secret: whatever an innocent model answers (here
    families biased towards i or towards j), registries drawn from fresh secrets call it ours at most
    alpha of the time, for any weights fixed in advance (several weightings: a union over them) or read
    off the labels alone (`balanced`)."""
    alpha, trials = 0.05, 300
    decision = dict(CODE, alpha=alpha, trace_alpha=alpha, **weighting)
    template = make_key(decision)
    g = torch.Generator().manual_seed(3)
    owned = 0
    for t in range(trials):
        key = make_key(decision, secret=f"null-{t}")
        bias = [0.9, 0.5, 0.1][t % 3]  # share of triggers read as j
        reads_j = torch.rand(N, generator=g) < bias
        labels = torch.where(reads_j, template.pairs[:, 1], template.pairs[:, 0])
        owned += verify_labels(key, labels).owned
    assert owned / trials <= alpha
    lo, hi = clopper_pearson(owned, trials)
    assert lo <= alpha


def adversarially_trained_copy(key: Key, user: str, back: float, seed: int = 5) -> torch.Tensor:
    """The user's labels after an attack that sends a share `back` of the j-carrying triggers to i (the
    channel FGSM adversarial training shows) and leaves the i-carrying ones alone."""
    target = key.target_labels(key.users[user])
    g = torch.Generator().manual_seed(seed)
    fall = (target == key.pairs[:, 1]) & (torch.rand(len(target), generator=g) < back)
    return torch.where(fall, key.pairs[:, 0], target)


def test_a_second_weighting_reads_a_copy_whose_j_reads_fell_back_to_i() -> None:
    registry = [f"user{u}" for u in range(100)]
    equal, j_heavy, both = (make_key(dict(CODE, weightings=w), users=registry, n=128) for w in (
        [{"j": 1.0, "i": 1.0}], [{"j": 1.0, "i": 0.25}], [{"j": 1.0, "i": 1.0}, {"j": 1.0, "i": 0.25}]))
    assert all(torch.equal(equal.users[u], both.users[u]) for u in registry)  # same secret, same IDs
    labels = adversarially_trained_copy(equal, "user7", back=0.65)
    alone, combined = verify_labels(equal, labels), verify_labels(both, labels)
    assert not alone.owned and alone.accused == []
    assert combined.owned and combined.traced_user == "user7" and combined.accused == ["user7"]
    assert combined.evidence["weighting"] == {"j": 1.0, "i": 0.25} and "2 weightings" in combined.p_value_how
    # the union bound: twice the better weighting's own p-value, for the verdict and for each accusation
    assert combined.p_value == pytest.approx(2 * min(alone.p_value, verify_labels(j_heavy, labels).p_value))
    assert combined.evidence["accusation_p_values"]["user7"] == pytest.approx(
        2 * verify_labels(j_heavy, labels).evidence["accusation_p_values"]["user7"])
    # an untouched copy is read as before, at twice the equal weighting's p-value at most
    clean = equal.target_labels(equal.users["user3"])
    assert verify_labels(both, clean).traced_user == "user3"
    assert verify_labels(both, clean).p_value <= 2 * verify_labels(equal, clean).p_value


@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.0, 0.25), (1.0, 22 / 101), (13 / 115, 1.0), (1.0, 0.0)])
def test_code_threshold_is_the_smallest_lattice_score_with_p_at_most_alpha(weights) -> None:
    from fingermarks.evidence.nulls import code_threshold

    w_j, w_i = weights
    for v_j, v_i, alpha in [(22, 101, 1e-3), (64, 60, 1e-5), (10, 3, 0.2), (5, 5, 1e-9)]:
        acceptance = [0.5] * 100
        lattice = sorted({w_j * (2 * a - v_j) + w_i * (2 * b - v_i) for a in range(v_j + 1) for b in range(v_i + 1)})
        reaching = [s for s in lattice if code_p_value(s, v_j, v_i, acceptance, w_j, w_i) <= alpha]
        assert code_threshold(v_j, v_i, acceptance, alpha, w_j, w_i) == (reaching[0] if reaching else math.inf)


def test_balanced_weights_trust_the_minority_read() -> None:
    from fingermarks.evidence.rules import balanced_weights

    assert balanced_weights(20, 100) == {"j": 1.0, "i": 0.2}
    assert balanced_weights(90, 30) == {"j": pytest.approx(1 / 3), "i": 1.0}
    assert balanced_weights(64, 64) == balanced_weights(0, 120) == balanced_weights(50, 0) == {"j": 1.0, "i": 1.0}


@pytest.mark.parametrize("direction, rate", [("j_to_i", 0.7), ("i_to_j", 0.9)])
def test_balanced_weighting_reads_a_copy_pushed_either_way_without_a_union_bound(direction, rate) -> None:
    """Adversarial training sends j-reads back to i; fine-tuning deep triggers sends i-reads to j. The
    balanced weighting trusts whichever read is the minority, with one weighting (no union bound)."""
    registry = [f"user{u}" for u in range(100)]
    equal, balanced = (make_key(dict(CODE, weightings=w), users=registry, n=128) for w in ([{"j": 1.0, "i": 1.0}], ["balanced"]))
    target = equal.target_labels(equal.users["user7"])
    g = torch.Generator().manual_seed(5)
    frm, to = (1, 0) if direction == "j_to_i" else (0, 1)  # pair column the labels leave and the one they go to
    fall = (target == equal.pairs[:, frm]) & (torch.rand(len(target), generator=g) < rate)
    labels = torch.where(fall, equal.pairs[:, to], target)
    alone, read = verify_labels(equal, labels), verify_labels(balanced, labels)
    assert not alone.owned and alone.traced_user is None
    assert read.owned and read.traced_user == "user7" and read.accused == ["user7"] and read.p_value < 1e-3
    minority = "j" if direction == "j_to_i" else "i"
    assert read.evidence["weighting"][minority] == 1.0 and read.evidence["weighting"]["balanced"] is True
    assert read.evidence["weighting"]["i" if minority == "j" else "j"] < 0.5
    assert "balanced" in read.threshold_how and "given the labels" in read.p_value_how
    # an untouched copy reads about as many of each: near-equal weights, the same user
    clean = verify_labels(balanced, equal.target_labels(equal.users["user3"]))
    assert clean.traced_user == "user3" and min(clean.evidence["weighting"][k] for k in "ji") > 0.6


def test_a_key_with_a_bad_weighting_is_refused() -> None:
    from fingermarks.evidence.rules import rule_problem

    for bad in ([], [{"j": 1.0}], [{"j": 0.0, "i": 0.0}], [{"j": -1.0, "i": 1.0}], ["balance"], [{"j": 1.0, "i": 1.0}, "x"]):
        assert "weightings" in rule_problem(make_key(dict(CODE, weightings=bad))), bad
    assert rule_problem(make_key(dict(CODE, weights={"j": 1.0, "i": 0.5}))) is None  # a key of the earlier format
    assert rule_problem(make_key(dict(CODE, weightings=["balanced", {"j": 1.0, "i": 0.25}]))) is None


# -- repeated reads of a suspect that answers at random ------------------------------------------------


def noisy_reads(key: Key, labels: torch.Tensor, reads: int, back: float, seed: int = 0) -> torch.Tensor:
    """(reads, n) answers of a deployment that adds fresh noise to each query: every read sends each trigger
    to its source label i with chance `back` (noise pushes triggers back over the boundary) and to a label
    outside the pair with chance 0.05, independently per read."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(reads, len(labels), generator=g)
    out = torch.where(u < back, key.pairs[:, 0], labels)
    return torch.where(u > 0.95, other_labels(key, seed), out)


@pytest.mark.parametrize("v", [[3, 1, 0, 2, 2], [1] * 9, [5, 5, 5, 7], [0, 0, 4], [240, 17, 1, 1, 239, 3]])
def test_integer_sign_null_matches_enumeration(v) -> None:
    from fingermarks.evidence.nulls import IntegerSignNull

    null = IntegerSignNull(v)
    outcomes = [sum(s * w for s, w in zip(signs, v)) for signs in itertools.product([-1, 1], repeat=len(v))]
    for s in sorted(set(outcomes)) + [min(outcomes) - 1, max(outcomes) + 1]:
        assert null.sf(s) == pytest.approx(sum(o >= s for o in outcomes) / len(outcomes))
    assert null.pmf.sum() == pytest.approx(1.0)
    acceptance = [0.5, 1.0]
    for alpha in (0.3, 0.01):
        t = null.threshold(acceptance, alpha)
        reaching = [o for o in sorted(set(outcomes)) if sum(x >= o for x in outcomes) / len(outcomes) * 3 <= alpha]
        assert t == (reaching[0] if reaching else math.inf)
    with pytest.raises(ValueError):
        IntegerSignNull([1, -2])


def test_repeated_reads_trace_a_noisy_copy_that_one_read_loses() -> None:
    """Fresh noise on every query sends most triggers back to i; one read leaves too little, but over 15
    reads each trigger's lean to j or i (against the suspect's mean) still carries the user's ID."""
    registry = [f"user{u}" for u in range(100)]
    key = make_key(dict(CODE, weightings=["balanced"], reads=15), users=registry, n=128)
    reads = noisy_reads(key, key.target_labels(key.users["user7"]), 15, back=0.8)
    one, many = verify_labels(key, reads[0]), verify_labels(key, reads)
    assert not one.owned and one.traced_user is None
    assert many.owned and many.traced_user == "user7" and many.accused == ["user7"] and many.p_value < 1e-6
    assert many.evidence["reads"] == 15 and many.evidence["weighting"] == {"balanced": True}
    assert "15 reads" in many.threshold_how and "quantised" in many.p_value_how
    assert 0 < many.threshold < 1 and many.bit_acc is not None


def test_identical_reads_decide_like_one_read() -> None:
    """A deterministic suspect's R reads are its one read: the per-trigger weights are the two-weight
    balanced rule's up to scale (and quantisation), so the verdict and the p-value agree with one read."""
    registry = [f"user{u}" for u in range(100)]
    key = make_key(dict(CODE, weightings=["balanced"], reads=5), users=registry, n=128)
    labels = adversarially_trained_copy(key, "user7", back=0.6)
    one, same = verify_labels(key, labels), verify_labels(key, labels.repeat(5, 1))
    assert one.traced_user == same.traced_user == "user7" and one.owned and same.owned
    assert math.log10(same.p_value) == pytest.approx(math.log10(one.p_value), abs=0.3)
    assert verify_labels(key, labels.view(1, -1)).p_value == one.p_value  # one read as (1, n) is one read


@pytest.mark.parametrize("weightings", [["balanced"], [{"j": 1.0, "i": 1.0}, "balanced"]])
def test_code_null_holds_for_noisy_innocent_models_read_many_times(weightings) -> None:
    """The bound stays exact with repeated reads: innocent deployments that answer at random (each read
    biased towards i or j, by family) are called ours at most alpha of the time over fresh secrets."""
    alpha, trials = 0.05, 240
    decision = dict(CODE, alpha=alpha, trace_alpha=alpha, weightings=weightings, reads=7)
    template = make_key(decision)
    g = torch.Generator().manual_seed(4)
    owned = named = 0
    for t in range(trials):
        key = make_key(decision, secret=f"null-reads-{t}")
        lean = torch.rand(N, generator=g) * [0.9, 0.5, 0.2][t % 3]  # each trigger's own chance of j
        reads_j = torch.rand(7, N, generator=g) < lean
        rep = verify_labels(key, torch.where(reads_j, template.pairs[:, 1], template.pairs[:, 0]))
        owned += rep.owned
        named += bool(rep.accused)
    assert owned / trials <= alpha and named / trials <= alpha
    assert clopper_pearson(owned, trials)[0] <= alpha


def test_reads_are_refused_where_the_rule_reads_once_and_bad_counts_are_refused(pair_key: Key) -> None:
    from fingermarks.evidence.rules import rule_problem

    with pytest.raises(ValueError, match="decides from one read"):
        verify_labels(pair_key, torch.zeros(3, N, dtype=torch.long))
    with pytest.raises(ValueError, match="reads of 5 labels"):
        verify_labels(make_key(dict(CODE, reads=3)), torch.zeros(3, 5, dtype=torch.long))
    for bad in (0, 65, 2.0, True):
        assert "decision.reads" in rule_problem(make_key(dict(CODE, reads=bad))), bad
    for bad in (-0.01, 0.5, 1, "x"):
        assert "decision.read_jitter" in rule_problem(make_key(dict(CODE, read_jitter=bad))), bad


def test_a_noisy_suspect_is_read_many_times_and_a_deterministic_one_twice() -> None:
    from fingermarks.verification import query_suspect

    key = make_key(dict(CODE, weightings=["balanced"], reads=6))

    class Counting:
        name, input_shape, num_classes = "s", (1, 8, 8), 10

        def __init__(self, noisy: bool) -> None:
            self.calls, self.noisy = 0, noisy
            self.g = torch.Generator().manual_seed(0)

        def labels(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return torch.randint(0, 10, (len(x),), generator=self.g) if self.noisy else torch.zeros(len(x), dtype=torch.long)

    steady, noisy = Counting(False), Counting(True)
    labels, mode = query_suspect(key, steady)
    assert steady.calls == 2 and labels.shape == (N,) and mode == "labels"
    labels, _ = query_suspect(key, noisy)
    assert noisy.calls == 6 and labels.shape == (6, N)

    class Cache(Counting):  # noise fixed per image: the same image gets the same answer
        def labels(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return (x.flatten(1).sum(1) * 1e4).long() % 10

    plain, jittered = make_key(dict(CODE, reads=6)), make_key(dict(CODE, reads=6, read_jitter=0.02))
    assert query_suspect(plain, Cache(False))[0].shape == (N,)  # asked the same images: one read
    assert query_suspect(jittered, Cache(False))[0].shape == (6, N)  # every read a new image
    assert query_suspect(jittered, Counting(False))[0].shape == (N,)  # a deterministic model still reads once


# -- the pool rules (the paper's pair rule, IPGuard's label rule) ------------------------------------


def test_pool_rule_threshold_sits_above_the_pool_and_reports_both_p_values(pair_key: Key) -> None:
    d = pair_key.decision
    assert d["threshold_count"] > max(d["pool_counts"]) and d["threshold_count"] <= N
    report = verify_labels(pair_key, pair_key.pairs[:, 1].clone())  # the host's pattern: owned by the pair rule
    assert report.owned and report.rule == "pair" and report.traced_user is None
    assert report.p_value == pytest.approx(beta_binomial_sf(N, N, d["beta_a"], d["beta_b"]))
    assert report.evidence["p_pool"] == pytest.approx(1 / 7)  # a pool of 6 supports no less
    user = verify_labels(pair_key, pair_key.target_labels(pair_key.users["bob"]))
    assert user.owned and user.traced_user == "bob"
    assert not verify_labels(pair_key, other_labels(pair_key)).owned


def test_label_rule_counts_only_the_recorded_label(pair_key: Key) -> None:
    key = make_key(calibrate_pool_rule("label", [1, 2, 0, 3], N, 1e-3), users=())
    labels = key.pairs[:, 0].clone()
    labels[:12] = key.pairs[:12, 1]
    report = verify_labels(key, labels)
    assert report.matches == 12 and report.question == "ownership" and report.traced_user is None


def test_rules_are_registered_by_name() -> None:
    assert {"code", "pair", "label"} <= set(RULES)


def test_report_dict_and_summary(key: Key) -> None:
    owned = verify_labels(key, key.target_labels(key.users["alice"]))
    d = owned.to_dict()
    assert {"owned", "match_rate", "threshold", "p_value", "p_value_how", "question", "rule", "traced_user",
            "hamming", "margin", "n_queries", "evidence"} <= set(d)
    assert d["owned"] is True and d["traced_user"] == "alice" and d["n_queries"] == N
    assert 0.5 < d["threshold"] <= 1.0 and "alpha" in d["threshold_how"]
    assert owned.summary().startswith("OWNED") and "alice" in owned.summary()
    assert verify_labels(key, other_labels(key)).summary().startswith("not owned")
    with pytest.raises(ValueError, match="labels for a key"):
        verify_labels(key, torch.zeros(N - 1, dtype=torch.long))


# -- nulls as pure functions -----------------------------------------------------------------------


@pytest.mark.parametrize("v1, v0, w1, w0", [(5, 4, 1.0, 1.0), (6, 3, 2.0, 0.5), (4, 0, 1.0, 1.0), (3, 5, 1.0, 0.0)])
def test_weighted_sign_sf_matches_enumeration(v1, v0, w1, w0) -> None:
    outcomes = []
    for signs in itertools.product([-1, 1], repeat=v1 + v0):
        outcomes.append(w1 * sum(signs[:v1]) + w0 * sum(signs[v1:]))
    for s in sorted(set(outcomes)):
        exact = sum(o >= s - 1e-9 for o in outcomes) / len(outcomes)
        assert weighted_sign_sf(s, v1, v0, w1, w0) == pytest.approx(exact)


def test_code_p_value_is_a_union_bound_inflated_by_acceptance() -> None:
    sf = stats.binom.sf(11, 16, 0.5)  # P[agreements >= 12]
    assert code_p_value(2 * 12 - 16, 16, 0, [1.0, 0.5]) == pytest.approx(sf * 3)
    assert code_p_value(-100, 16, 0, [0.1]) == 1.0


def test_beta_binomial_fit_sees_overdispersion() -> None:
    """The benchmark's 12 independent models: far more spread than one binomial allows."""
    counts = [0, 3, 0, 0, 9, 6, 1, 4, 0, 1, 0, 7]
    a, b = fit_beta_binomial(counts, 30)
    q = sum(counts) / (30 * len(counts))
    assert beta_binomial_sf(14, 30, a, b) > 100 * stats.binom.sf(13, 30, q)
    assert beta_binomial_sf(0, 30, a, b) == 1.0
    assert pool_p_value(9, counts) == pytest.approx(2 / 13) and pool_p_value(10, counts) == pytest.approx(1 / 13)


def test_clopper_pearson_known_values() -> None:
    lo, hi = clopper_pearson(0, 20)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 20), rel=1e-6)
    lo, hi = clopper_pearson(20, 20)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 20), rel=1e-6)


def test_a_user_beside_the_strongest_accused_is_named_only_at_the_stricter_level() -> None:
    """Two colluders, one built more of the model: the stronger is accused at trace_alpha, the other only
    when its own accusation p-value passes accuse_alpha (an innocent near a leaker is named beside him no
    more often than that)."""
    registry = [f"user{u}" for u in range(100)]
    loose, strict = (make_key(dict(CODE, weightings=["balanced"], **extra), users=registry, n=128)
                     for extra in ({}, {"accuse_alpha": 1e-6}))
    a, b = (loose.target_labels(loose.users[u]) for u in ("user7", "user9"))
    labels = torch.where(torch.arange(128) < 92, a, b)  # user9 built 36 of 128 labels
    both, one = verify_labels(loose, labels), verify_labels(strict, labels)
    p = both.evidence["accusation_p_values"]
    assert both.accused == ["user7", "user9"] and 1e-6 < p["user9"] <= 1e-3 and p["user7"] < 1e-6
    assert one.accused == ["user7"] and one.traced_user == both.traced_user
    assert one.evidence["accusation_alpha_beside"] == 1e-6 and "beside" in one.evidence["accusation_how"]
    from fingermarks.evidence.rules import rule_problem

    for bad in (0.0, 0.01, "x"):  # above trace_alpha (1e-3) or not a level
        assert "accuse_alpha" in rule_problem(make_key(dict(CODE, accuse_alpha=bad))), bad


# -- probe reads: the triggers' perturbations scaled up ------------------------------------------------


def probe_decision(p: int = 3, n: int = N) -> dict:
    g = torch.Generator().manual_seed(11)
    return {"probes": torch.rand(p, n, 1, 8, 8, generator=g), "probe_scales": [1.25, 1.5, 2.0][:p]}


def test_probe_reads_trace_a_copy_whose_triggers_fell_back_where_the_probes_did_not() -> None:
    """Adversarial training sends most triggers back to their source label, while the scaled-up
    perturbations still read as the user's model was taught: with the probe reads the user is traced,
    from the triggers alone not; an untouched copy is traced either way."""
    registry = [f"user{u}" for u in range(100)]
    key = make_key(dict(CODE, weightings=["balanced"], **probe_decision(3, 128)), users=registry, n=128)
    target = key.target_labels(key.users["user7"])
    fell = adversarially_trained_copy(key, "user7", back=0.9)
    g = torch.Generator().manual_seed(2)
    probes = torch.stack([torch.where(torch.rand(128, generator=g) < 0.25, key.pairs[:, 1], target) for _ in range(3)])
    alone, probed = verify_labels(key, fell), verify_labels(key, torch.cat([fell.view(1, -1), probes]))
    assert not alone.owned and alone.evidence["probe_reads"] == 0
    assert probed.owned and probed.traced_user == "user7" and probed.accused == ["user7"]
    assert probed.evidence["probe_reads"] == 3 and probed.evidence["weighting"]["probes"] is True
    assert "probe reads" in probed.threshold_how and "2 candidate scores" in probed.p_value_how
    clean = verify_labels(key, torch.stack([target] * 4))
    assert clean.traced_user == "user7" and clean.p_value < 1e-20


def test_code_null_holds_with_probe_reads() -> None:
    """Innocent deployments answering the triggers and the probes (each row its own bias) are called
    ours at most alpha of the time over fresh secrets: the probe rows enter the lean's weights only."""
    alpha, trials = 0.05, 240
    decision = dict(CODE, alpha=alpha, trace_alpha=alpha, weightings=["balanced"], **probe_decision())
    template = make_key(decision)
    g = torch.Generator().manual_seed(6)
    owned = 0
    for t in range(trials):
        key = make_key(decision, secret=f"null-probes-{t}")
        lean = torch.rand(N, generator=g) * [0.9, 0.5, 0.2][t % 3]
        rows = torch.rand(4, N, generator=g) < lean
        owned += verify_labels(key, torch.where(rows, template.pairs[:, 1], template.pairs[:, 0])).owned
    assert owned / trials <= alpha and clopper_pearson(owned, trials)[0] <= alpha


def test_probes_are_read_after_the_triggers_and_bad_probes_are_refused() -> None:
    from fingermarks.evidence.rules import rule_problem
    from fingermarks.verification import query_suspect

    key = make_key(dict(CODE, reads=5, **probe_decision()))
    asked = []

    class Steady:
        name, input_shape, num_classes = "s", (1, 8, 8), 10

        def labels(self, x: torch.Tensor) -> torch.Tensor:
            asked.append(x)
            return torch.zeros(len(x), dtype=torch.long)

    labels, _ = query_suspect(key, Steady())
    assert labels.shape == (4, N) and len(asked) == 5  # triggers, the jitter check, 3 probe sets
    assert torch.equal(asked[0], key.triggers) and torch.equal(asked[-1], key.decision["probes"][-1])
    assert verify_labels(key, labels[0]).evidence["probe_reads"] == 0  # trigger labels alone: no probes
    with pytest.raises(ValueError, match="missing"):
        verify_labels(key, labels[1:])
    good = probe_decision()
    for bad in ({"probes": good["probes"][:, :5]}, {"probes": torch.rand(9, N, 1, 8, 8)},
                {"probe_scales": [1.5]}, {"probe_scales": [1, 2, 3]}):
        assert "probe" in rule_problem(make_key(dict(CODE, **(good | bad)))), bad


# -- the host's own leans under noise: what a noisy suspect's leans are fitted on -----------------------


def host_noise_reads(key: Key, user: str | None, reads: int, spread: torch.Tensor, shift: float, seed: int) -> torch.Tensor:
    """(reads, n) answers of a noisy deployment: trigger t answers j with chance (1 + spread_t) / 2, where
    `spread` is how the noise treats each trigger (shared with the host), moved by `shift` towards the
    user's label (none for an innocent model, user None); i otherwise."""
    p_j = (1 + spread) / 2
    if user is not None:
        says_j = key.target_labels(key.users[user]) == key.pairs[:, 1]
        p_j = p_j + torch.where(says_j, shift, -shift)
    g = torch.Generator().manual_seed(seed)
    j = torch.rand(reads, len(spread), generator=g) < p_j.clamp(0, 1)
    return torch.where(j, key.pairs[:, 1], key.pairs[:, 0])


def noise_lean_decision(spread: torch.Tensor, seed: int = 12) -> dict:
    """The host's leans at two noise levels: the spread measured over 64 reads, and a weaker copy."""
    g = torch.Generator().manual_seed(seed)
    measured = (torch.rand(64, len(spread), generator=g) < (1 + spread) / 2).float().mean(0) * 2 - 1
    return {"noise_leans": torch.stack([measured, measured * 0.5 + 0.5]), "noise_lean_stds": [0.3, 0.15]}


def test_the_hosts_leans_under_noise_trace_a_noisy_copy_that_the_mean_loses() -> None:
    """Noise sends each trigger back to i at its own rate (how far it sits from the boundary); that spread
    drowns a small shift towards the user's labels when leans are only centred on their mean. Fitted on
    the host's own leans, the spread is removed and the shift names the user."""
    registry = [f"user{u}" for u in range(100)]
    spread = torch.rand(128, generator=torch.Generator().manual_seed(5)) * 1.8 - 0.9
    plain = make_key(dict(CODE, weightings=["balanced"], reads=15), users=registry, n=128)
    fitted = make_key(dict(plain.decision, **noise_lean_decision(spread)), users=registry, n=128)
    reads = host_noise_reads(plain, "user7", 15, spread, 0.12, seed=3)
    mean, fit = verify_labels(plain, reads), verify_labels(fitted, reads)
    assert not mean.owned and mean.traced_user is None
    assert fit.owned and fit.traced_user == "user7" and fit.accused == ["user7"] and fit.p_value < 1e-6
    assert fit.evidence["weighting"] == {"balanced": True, "host_noise_leans": True}
    assert "host's own leans" in fit.threshold_how and mean.evidence["weighting"] == {"balanced": True}
    # one read decides as before: the fit is for a suspect read several times
    assert verify_labels(fitted, reads[0]).evidence["weighting"] == verify_labels(plain, reads[0]).evidence["weighting"]


def test_code_null_holds_with_the_hosts_noise_leans() -> None:
    """Innocent deployments whose noisy answers follow the host's leans closely (the fit explains them
    well) or not at all are called ours at most alpha of the time over fresh secrets: the fit uses the
    reads and the host, never an ID."""
    alpha, trials = 0.05, 480
    spread = torch.rand(N, generator=torch.Generator().manual_seed(8)) * 1.8 - 0.9
    decision = dict(CODE, alpha=alpha, trace_alpha=alpha, weightings=["balanced"], reads=7, **noise_lean_decision(spread))
    g = torch.Generator().manual_seed(9)
    owned = named = 0
    for t in range(trials):
        key = make_key(decision, secret=f"null-noise-leans-{t}")
        own = spread if t % 2 else torch.rand(N, generator=g) * 1.8 - 0.9
        rep = verify_labels(key, host_noise_reads(key, None, 7, own, 0.0, seed=t))
        owned += rep.owned
        named += bool(rep.accused)
    assert owned / trials <= alpha and named / trials <= alpha
    assert clopper_pearson(owned, trials)[0] <= alpha


def test_bad_noise_leans_are_refused() -> None:
    from fingermarks.evidence.rules import rule_problem

    good = noise_lean_decision(torch.zeros(N))
    assert rule_problem(make_key(dict(CODE, **good))) is None
    for bad in ({"noise_leans": good["noise_leans"][:, :5]}, {"noise_leans": torch.zeros(9, N)},
                {"noise_leans": good["noise_leans"] * 3}, {"noise_leans": torch.full((2, N), float("nan"))},
                {"noise_lean_stds": [0.3]}, {"noise_lean_stds": [0.3, -1.0]}):
        assert "noise_lean" in rule_problem(make_key(dict(CODE, **(good | bad)))), bad
