"""Tests for fingermarks.codes: drawing user IDs at a minimum distance and nearest-ID decoding."""

from __future__ import annotations

import pytest
import torch

from fingermarks.codes import ERASED, decode, draw_ids, hamming, min_pairwise_distance

torch.set_num_threads(1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a[:, None, :] != b[None, :, :]).sum(-1)


def test_min_pairwise_distance() -> None:
    codes = torch.tensor([[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    assert min_pairwise_distance(codes) == 2
    assert min_pairwise_distance(codes[[0, 2]]) == 4
    assert min_pairwise_distance(torch.tensor([[0, 1], [0, 1]])) == 0  # duplicates
    assert min_pairwise_distance(codes[:1]) is None
    assert min_pairwise_distance(codes[:0]) is None


def test_hamming_ignores_erased_bits_of_the_read_out() -> None:
    read = torch.tensor([ERASED, 1, 0, ERASED])
    assert int(hamming(read, torch.tensor([1, 1, 1, 0]))) == 1
    assert hamming(read.view(1, -1), torch.tensor([[0, 0, 0, 0], [1, 1, 0, 1]])).tolist() == [1, 0]


def test_draw_ids_keep_the_distance_from_each_other_and_reserved_words() -> None:
    n = 16
    reserved = torch.stack([torch.ones(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)])
    ids = draw_ids(6, n, 5, gen(), reserved=reserved)
    assert ids.shape == (6, n) and set(ids.unique().tolist()) <= {0, 1}
    assert min_pairwise_distance(ids) >= 5
    assert int(distances(ids, reserved).min()) >= 5


def test_draw_ids_are_deterministic_per_generator_seed() -> None:
    a = draw_ids(5, 24, 8, gen(7))
    b = draw_ids(5, 24, 8, gen(7))
    c = draw_ids(5, 24, 8, gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_draw_ids_keep_existing_ids_at_distance() -> None:
    existing = draw_ids(3, 16, 6, gen(1))
    reserved = torch.zeros(1, 16, dtype=torch.long)
    new = draw_ids(3, 16, 6, gen(2), existing=existing, reserved=reserved)
    assert new.shape == (3, 16)  # only the new IDs come back; the caller keeps the old ones
    assert min_pairwise_distance(torch.cat([existing, new])) >= 6
    assert int(distances(new, reserved).min()) >= 6


def test_draw_ids_lower_the_distance_when_it_cannot_be_met() -> None:
    # three 4-bit words pairwise at distance 4 do not exist; at most two (a word and its complement)
    ids = draw_ids(3, 4, 4, gen(), tries_per_id=200)
    assert ids.shape == (3, 4)
    achieved = min_pairwise_distance(ids)
    assert 1 <= achieved < 4  # the result carries the (lower) distance actually achieved
    assert len({tuple(r.tolist()) for r in ids}) == 3


def test_draw_ids_fail_only_when_distinct_ids_cannot_exist() -> None:
    with pytest.raises(ValueError, match="distinct"):
        draw_ids(5, 2, 1, gen(), tries_per_id=200)  # only 4 words of 2 bits


def test_draw_zero_ids() -> None:
    assert draw_ids(0, 8, 3, gen()).shape == (0, 8)


REGISTRY = {
    "alice": torch.tensor([0, 0, 0, 0, 0, 0, 0, 0]),
    "bob": torch.tensor([1, 1, 1, 1, 0, 0, 0, 0]),
    "carol": torch.tensor([1, 1, 1, 1, 1, 1, 1, 1]),
}


def test_decode_nearest_id_with_margin() -> None:
    dec = decode(torch.tensor([1, 1, 1, 0, 0, 0, 0, 0]), REGISTRY)
    assert dec.user == "bob" and dec.hamming == 1
    assert dec.distances == {"alice": 3, "bob": 1, "carol": 5}
    assert dec.runner_up == "alice" and dec.margin == 2
    assert dec.valid_bits == 8


def test_decode_ignores_erased_bits() -> None:
    bits = torch.tensor([ERASED, ERASED, ERASED, ERASED, 1, 1, 1, 0])
    dec = decode(bits, REGISTRY)
    assert dec.valid_bits == 4
    assert dec.distances == {"alice": 3, "bob": 3, "carol": 1}
    assert dec.user == "carol" and dec.hamming == 1 and dec.margin == 2


def test_decode_tie_names_nobody() -> None:
    dec = decode(torch.tensor([1, 1, 0, 0, 0, 0, 0, 0]), REGISTRY)  # 2 from alice and from bob
    assert dec.user is None
    assert dec.hamming == 2 and dec.margin == 0


def test_decode_all_erased_names_nobody() -> None:
    dec = decode(torch.full((8,), ERASED), REGISTRY)
    assert dec.valid_bits == 0 and dec.user is None and dec.margin == 0


def test_decode_empty_registry() -> None:
    dec = decode(torch.tensor([0, 1]), {})
    assert dec.user is None and dec.hamming is None and dec.margin is None and dec.valid_bits == 2
