"""Tests for fingermarks.verification: the two-step verdict (ownership, then tracing) from top-1 labels."""

from __future__ import annotations

import pytest
import torch

from fingermarks.key import Key
from fingermarks.stats import match_threshold
from fingermarks.verification import HOST, matched_mask, verify_labels

torch.set_num_threads(1)

N = 16
MIN_DISTANCE = 5


def make_key(match: str = "pair") -> Key:
    g = torch.Generator().manual_seed(0)
    i = torch.randint(0, 10, (N,), generator=g)
    j = (i + torch.randint(1, 10, (N,), generator=g)) % 10
    key = Key(
        method="fingermarks",
        triggers=torch.rand(N, 1, 8, 8, generator=g),
        pairs=torch.stack([i, j], 1),
        swap=torch.rand(N, generator=g) < 0.5,
        host_sha256="0" * 64,
        data={"name": "digits", "num_classes": 10, "input_shape": [1, 8, 8]},
        decision={"match": match, "null_rate": 0.2, "alpha": 1e-3, "threshold_count": match_threshold(N, 0.2, 1e-3),
                  "how": "Binomial(16, 0.2) by hand", "min_margin": 1, "trace_alpha": 0.05},
    )
    key.add_users(["alice", "bob", "carol"], g, MIN_DISTANCE)
    return key


@pytest.fixture(scope="module")
def key() -> Key:
    k = make_key()
    assert k.min_distance >= MIN_DISTANCE and 0 < k.decision["threshold_count"] < N
    return k


def other_labels(key: Key, seed: int = 0) -> torch.Tensor:
    """Random labels outside every trigger's pair: what an unrelated model might answer."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, j in key.pairs.tolist():
        choices = [c for c in range(10) if c not in (i, j)]
        out.append(choices[int(torch.randint(len(choices), (1,), generator=g))])
    return torch.tensor(out)


def test_a_users_labels_are_owned_and_traced_to_that_user(key: Key) -> None:
    for name, bits in key.users.items():
        report = verify_labels(key, key.target_labels(bits))
        assert report.owned and report.matches == N and report.match_rate == 1.0
        assert report.traced_user == name
        assert report.hamming == 0 and report.bit_acc == 1.0 and report.valid_bits == N
        assert report.margin >= MIN_DISTANCE
        assert report.p_value == pytest.approx(0.2**N)
        assert report.trace_p_value == pytest.approx(3 * 2.0**-N)


def test_the_hosts_pattern_is_owned_but_traced_to_nobody(key: Key) -> None:
    report = verify_labels(key, key.pairs[:, 1].clone())  # every trigger answers j
    assert report.owned
    assert report.traced_user is None
    assert report.hamming == 0 and report.distances[HOST] == 0
    assert min(v for u, v in report.distances.items() if u != HOST) >= MIN_DISTANCE
    assert report.bit_acc is None


def test_all_source_labels_are_owned_by_the_pair_rule_but_traced_to_nobody(key: Key) -> None:
    report = verify_labels(key, key.pairs[:, 0].clone())  # every trigger answers i
    assert report.owned and report.match_rate == 1.0
    assert report.traced_user is None
    assert report.hamming >= MIN_DISTANCE  # the all-i word is reserved: no ID is near it


def test_labels_outside_the_pairs_are_not_owned(key: Key) -> None:
    report = verify_labels(key, other_labels(key))
    assert not report.owned
    assert report.matches == 0 and report.match_rate == 0.0
    assert report.p_value == pytest.approx(1.0)
    assert report.traced_user is None and report.hamming is None  # no tracing for a model that is not ours


def test_a_few_bit_flips_still_trace_the_user(key: Key) -> None:
    bits = key.users["bob"].clone()
    bits[[2, 9]] ^= 1
    labels = key.target_labels(bits)
    report = verify_labels(key, labels)
    assert report.owned and report.match_rate == 1.0
    assert report.traced_user == "bob"
    assert report.hamming == 2 and report.margin > 0
    assert report.bit_acc == pytest.approx((N - 2) / N)


def test_foreign_labels_are_erased_not_counted_as_flips(key: Key) -> None:
    labels = key.target_labels(key.users["carol"]).clone()
    foreign = other_labels(key, seed=1)
    labels[:3] = foreign[:3]
    report = verify_labels(key, labels)
    assert report.matches == N - 3 and report.owned
    assert report.valid_bits == N - 3 and report.hamming == 0
    assert report.traced_user == "carol"


def test_expected_user_sets_the_bit_accuracy_reference(key: Key) -> None:
    labels = key.target_labels(key.users["alice"])
    report = verify_labels(key, labels, expected_user="bob")
    assert report.traced_user == "alice"
    expected = float((labels == key.target_labels(key.users["bob"])).float().mean())
    assert report.bit_acc == pytest.approx(expected) and report.bit_acc < 1.0


def test_matched_mask_rules(key: Key) -> None:
    labels = key.pairs[:, 0].clone()
    labels[:4] = key.pairs[:4, 1]
    labels[4:6] = other_labels(key)[4:6]
    assert matched_mask(key, labels).tolist() == [True] * 4 + [False] * 2 + [True] * (N - 6)
    fingerprint_key = make_key(match="label")  # IPGuard-style: only the recorded label j counts
    assert matched_mask(fingerprint_key, labels).tolist() == [True] * 4 + [False] * (N - 4)
    fingerprint_key.decision["match"] = "nonsense"
    with pytest.raises(ValueError, match="match rule"):
        matched_mask(fingerprint_key, labels)


def test_report_dict_and_summary(key: Key) -> None:
    owned = verify_labels(key, key.target_labels(key.users["alice"]))
    d = owned.to_dict()
    assert {"owned", "match_rate", "threshold", "p_value", "traced_user", "hamming", "margin", "n_queries"} <= set(d)
    assert d["owned"] is True and d["traced_user"] == "alice" and d["n_queries"] == N
    assert d["threshold"] == pytest.approx(key.decision["threshold_count"] / N)
    assert d["threshold_how"] == key.decision["how"]
    assert owned.summary().startswith("OWNED") and "alice" in owned.summary()
    host_like = verify_labels(key, key.pairs[:, 1].clone()).summary()
    assert host_like.startswith("OWNED") and "nobody" in host_like
    assert verify_labels(key, other_labels(key)).summary().startswith("not owned")


def test_id_rule_owns_a_user_code_but_not_the_host_pattern() -> None:
    """MBW's rule: ownership is agreement with the nearest registered ID, not with the pair."""
    from fingermarks.decision import calibrate_id_rule

    key = make_key()
    key.decision.update(calibrate_id_rule(N, len(key.users), 1e-3))
    bob = key.target_labels(key.users["bob"])
    report = verify_labels(key, bob)
    assert report.owned and report.traced_user == "bob" and report.matches == N
    assert report.p_value == pytest.approx(3 * 0.5**N)  # union bound over the three IDs
    host = verify_labels(key, key.target_labels(key.host_bits()))
    assert not host.owned and host.match_rate < 1.0  # the host's own word is far from every ID
    assert matched_mask(key, bob).all()
