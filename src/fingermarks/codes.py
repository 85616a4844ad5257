"""User IDs as an n-bit code: drawing IDs with a minimum distance, and nearest-ID decoding."""

from __future__ import annotations

from dataclasses import dataclass

import torch

ERASED = -1


def hamming(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distances between bit rows of `a` (..., n) and `b` (..., n), ignoring erased bits of `a`."""
    valid = a != ERASED
    return ((a != b) & valid).sum(-1)


def min_pairwise_distance(codes: torch.Tensor) -> int | None:
    """Smallest Hamming distance between two rows; None for fewer than two rows."""
    if len(codes) < 2:
        return None
    d = (codes[:, None, :] != codes[None, :, :]).sum(-1)
    d.fill_diagonal_(codes.shape[1] + 1)
    return int(d.min())


def draw_ids(
    count: int,
    n_bits: int,
    min_distance: int,
    generator: torch.Generator,
    existing: torch.Tensor | None = None,
    reserved: torch.Tensor | None = None,
    tries_per_id: int = 20000,
) -> torch.Tensor:
    """Draw `count` new IDs at distance >= `min_distance` from each other, `existing` and `reserved`.

    Reserved words are patterns no user may be confused with: the host's own answer
    (all j) and the answer of a model that predicts the source labels (all i). When
    the requested distance cannot be met, it is lowered one bit at a time; the caller
    reports the distance achieved. Deterministic for a given generator state.
    """
    taken = [row for row in (existing if existing is not None else torch.empty(0, n_bits, dtype=torch.long))]
    avoid = list(reserved) if reserved is not None else []
    new: list[torch.Tensor] = []
    d = min_distance
    while len(new) < count:
        for _ in range(tries_per_id):
            cand = torch.randint(0, 2, (n_bits,), generator=generator)
            if all(int((cand != w).sum()) >= d for w in taken + avoid + new):
                new.append(cand)
                break
        else:
            if d <= 1:
                raise ValueError(f"cannot draw {count} distinct {n_bits}-bit IDs")
            d -= 1
    return torch.stack(new) if new else torch.empty(0, n_bits, dtype=torch.long)


@dataclass
class Decoded:
    """Nearest registered ID to a read-out bit string."""

    user: str | None
    hamming: int | None
    runner_up: str | None
    margin: int | None
    valid_bits: int
    distances: dict[str, int]


def decode(bits: torch.Tensor, registry: dict[str, torch.Tensor]) -> Decoded:
    """Nearest ID over the non-erased bits; margin = runner-up distance minus the nearest's.

    A tie for nearest (margin 0) decodes to nobody: the evidence does not single anyone out.
    """
    valid = int((bits != ERASED).sum())
    if not registry:
        return Decoded(None, None, None, None, valid, {})
    names = list(registry)
    dist = hamming(bits.view(1, -1), torch.stack([registry[n] for n in names]))
    order = torch.argsort(dist, stable=True)
    best = names[int(order[0])]
    h = int(dist[order[0]])
    runner = names[int(order[1])] if len(names) > 1 else None
    margin = int(dist[order[1]]) - h if runner is not None else valid - h
    distances = {n: int(x) for n, x in zip(names, dist)}
    return Decoded(best if margin > 0 else None, h, runner, margin, valid, distances)
