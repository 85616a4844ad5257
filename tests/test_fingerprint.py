"""Tests for fingermarks.fingerprint: margin losses on hand-made logits and the batched input optimisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fingermarks.fingerprint import (
    conferrable_penalty,
    fingermarks_loss,
    ipguard_loss,
    select_triggers,
    max_excluding,
    optimise_inputs,
    project,
    target_margin,
)

torch.set_num_threads(1)


def lab(*values: int) -> torch.Tensor:
    return torch.tensor(values)


# -- losses on hand-made logits ---------------------------------------------------------


def test_max_excluding() -> None:
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0], [9.0, 2.0, 8.0, 0.0]])
    assert max_excluding(logits, lab(1, 0)).tolist() == [4.0, 8.0]
    assert max_excluding(logits, lab(1, 0), lab(3, 2)).tolist() == [3.0, 2.0]
    assert logits[0, 1] == 5.0  # the input is not modified


def test_target_margin() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0], [0.0, 0.0, 0.0]])
    assert target_margin(logits, lab(1, 0, 2)).tolist() == [1.0, -2.0, 0.0]


def test_fingermarks_loss_zero_exactly_when_the_margin_of_j_holds() -> None:
    i, j, k = lab(0, 0, 0, 0), lab(2, 2, 2, 2), 1.0
    logits = torch.tensor([
        [0.0, 1.0, 2.5, 0.0],  # margin 1.5 >= k
        [0.0, 1.5, 2.5, 0.0],  # margin exactly k
        [0.0, 2.0, 2.5, 0.0],  # margin 0.5 < k
        [3.0, 1.0, 2.5, 0.0],  # j not top-1
    ])
    loss = fingermarks_loss(logits, i, j, k, lam=0.0)
    assert loss.tolist() == pytest.approx([0.0, 0.0, 0.5, 1.5])


def test_fingermarks_loss_pushes_z_i_down_with_weight_lam() -> None:
    lam = 0.3
    # row 0: margin holds, only the z_i term acts; row 1: margin fails, runner-up (class 3) is not i
    logits = torch.tensor([[1.0, 0.0, 5.0, 0.0], [1.0, 0.0, 2.0, 1.8]], requires_grad=True)
    i, j = lab(0, 0), lab(2, 2)
    loss = fingermarks_loss(logits, i, j, 1.0, lam)
    assert loss[0].item() == pytest.approx(lam * 1.0)
    assert loss[1].item() == pytest.approx(0.8 + lam * 1.0)
    loss.sum().backward()
    assert logits.grad[0].tolist() == pytest.approx([lam, 0.0, 0.0, 0.0])
    assert logits.grad[1].tolist() == pytest.approx([lam, 0.0, -1.0, 1.0])


def test_ipguard_loss_zero_iff_j_top1_with_margin_and_i_runner_up() -> None:
    i, j, k = lab(0, 0, 0, 0), lab(1, 1, 1, 1), 2.0
    logits = torch.tensor([
        [3.0, 5.0, 1.0],  # j top-1 by 2 over i, i runner-up
        [3.0, 4.0, 1.0],  # margin 1 < k
        [3.0, 6.0, 3.5],  # margin holds but i is not the runner-up
        [5.0, 3.0, 1.0],  # i top-1
    ])
    loss = ipguard_loss(logits, i, j, k)
    assert loss.tolist() == pytest.approx([0.0, 1.0, 0.5, 4.0])


def test_conferrable_penalty_range_and_no_references() -> None:
    torch.manual_seed(0)
    refs = [nn.Sequential(nn.Flatten(), nn.Linear(16, 5)) for _ in range(3)]
    x = torch.rand(20, 1, 4, 4)
    i = torch.randint(0, 5, (20,))
    j = torch.where(torch.arange(20) < 10, (i + 1) % 5, i)  # half the pairs with i == j: the 2 bound
    penalty = conferrable_penalty(refs, x, i, j)
    assert penalty.shape == (20,)
    assert bool((penalty >= 0).all()) and bool((penalty <= 2).all())
    assert bool((penalty[:10] <= 1).all())  # distinct labels: one probability mass
    p = refs[0](x[:1]).softmax(1)
    assert conferrable_penalty(refs[:1], x[:1], i[:1], j[:1]).item() == pytest.approx((p[0, i[0]] + p[0, j[0]]).item())
    assert torch.equal(conferrable_penalty([], x, i, j), torch.zeros(20))


# -- optimise_inputs on a fixed linear classifier ----------------------------------------

# logit c = 4 * pixel c of a 1x2x2 image: class j wins with margin k by raising pixel j
CLASSIFIER = nn.Sequential(nn.Flatten(), nn.Linear(4, 4, bias=False))
with torch.no_grad():
    CLASSIFIER[1].weight.copy_(4 * torch.eye(4))
CLASSIFIER.requires_grad_(False)
K = 1.0


def objective(j: torch.Tensor, trace: list[torch.Tensor] | None = None):
    def fn(x: torch.Tensor, rows: torch.Tensor):
        if trace is not None:
            trace.append((rows.clone(), x.detach().clone()))
        logits, j_r = CLASSIFIER(x), j[rows]
        return fingermarks_loss(logits, j_r, j_r, K, 0.0), target_margin(logits, j_r) >= K

    return fn


def batch(seed: int = 0, lo: float = 0.0, hi: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = lo + (hi - lo) * torch.rand(8, 1, 2, 2, generator=g)
    logits = CLASSIFIER(x0)
    return x0, logits.argmin(1)  # the least likely class: the farthest target


def test_select_triggers_orders_by_host_then_references_then_tiebreak() -> None:
    host_ok = torch.tensor([True, True, False, True, True])
    ref_matches = torch.tensor([1, 0, 0, 0, 2])
    tiebreak = torch.tensor([0.0, 0.5, 0.0, 0.1, 0.0])
    # host fails candidate 2 (last); candidate 0 and 4 are matched by references; 3 beats 1 on the tie-break
    assert select_triggers(host_ok, ref_matches, tiebreak, 5).tolist() == [3, 1, 0, 4, 2]
    assert select_triggers(host_ok, ref_matches, tiebreak, 2).tolist() == [3, 1]


def test_optimise_inputs_reaches_every_reachable_target() -> None:
    x0, j = batch()
    assert not bool((CLASSIFIER(x0).argmax(1) == j).any())
    out = optimise_inputs(x0, objective(j), steps=300, lr=0.05)
    assert bool(out.reached.all())
    assert bool((target_margin(CLASSIFIER(out.images), j) >= K).all())
    assert out.steps < 300  # stops once every image is done
    assert out.seconds >= 0


def test_optimise_inputs_stays_in_the_input_range() -> None:
    x0, j = batch(1, 0.2, 0.8)
    out = optimise_inputs(x0, objective(j), steps=300, lr=0.2, input_range=(0.2, 0.8))
    assert bool((out.images >= 0.2).all()) and bool((out.images <= 0.8).all())  # float32 bounds
    assert bool((out.images == torch.tensor(0.8)).any())  # the target pixels were pushed onto the bound
    assert bool(out.reached.all())  # a margin of 4 * 0.6 > K is available inside the range


def test_optimise_inputs_respects_linf_eps() -> None:
    x0, j = batch(2)
    eps = 0.1  # too small for most targets: they run out of steps at the edge of the ball
    out = optimise_inputs(x0, objective(j), steps=100, lr=0.05, eps=eps, norm="linf")
    assert float((out.images - x0).abs().max()) <= eps + 1e-6
    assert not bool(out.reached.all())
    assert float((out.images - x0).abs().max()) >= eps - 1e-3  # it did push against the bound


def test_optimise_inputs_respects_l2_eps() -> None:
    x0, j = batch(3)
    eps = 0.3
    out = optimise_inputs(x0, objective(j), steps=100, lr=0.05, eps=eps, norm="l2")
    norms = (out.images - x0).flatten(1).norm(dim=1)
    assert float(norms.max()) <= eps + 1e-5
    assert float(norms.max()) >= eps - 1e-2


def test_project() -> None:
    delta = torch.tensor([[3.0, 4.0], [0.3, 0.4], [-2.0, 0.1]]).view(3, 1, 1, 2)
    assert project(delta, None, "linf") is delta
    assert torch.allclose(project(delta, 1.0, "linf").flatten(1), torch.tensor([[1.0, 1.0], [0.3, 0.4], [-1.0, 0.1]]))
    l2 = project(delta, 1.0, "l2").flatten(1)
    assert l2.norm(dim=1).tolist() == pytest.approx([1.0, 0.5, 1.0], abs=1e-6)
    assert l2[0].tolist() == pytest.approx([0.6, 0.8])  # the direction is kept
    with pytest.raises(ValueError, match="norm"):
        project(delta, 1.0, "l1")


def test_optimise_inputs_freezes_an_image_at_its_first_success() -> None:
    x0, j = batch(4)
    trace: list[tuple[torch.Tensor, torch.Tensor]] = []
    out = optimise_inputs(x0, objective(j, trace), steps=300, lr=0.05)
    assert bool(out.reached.all())
    # each image is evaluated up to and including its first success, and never after
    seen: dict[int, list[torch.Tensor]] = {b: [] for b in range(len(x0))}
    for rows, x in trace:
        for r, img in zip(rows.tolist(), x):
            seen[r].append(img)
    first = torch.tensor([len(seen[b]) - 1 for b in range(len(x0))])
    assert len(set(first.tolist())) > 1  # images finish at different steps, the early ones wait
    assert len(trace[-1][0]) < len(x0)  # the last steps evaluate only the images still searching
    for b in range(len(x0)):
        margins = target_margin(CLASSIFIER(torch.stack(seen[b])), j[b].expand(len(seen[b])))
        assert bool(margins[-1] >= K) and not bool((margins[:-1] >= K).any())
        assert torch.equal(out.images[b], seen[b][-1])
    # a budget that ends at an image's success step gives that same image back
    early = int(first.argmin())
    short = optimise_inputs(x0, objective(j), steps=int(first[early]) + 1, lr=0.05)
    assert bool(short.reached[early])
    assert torch.equal(short.images[early], out.images[early])


def test_noise_leans_follow_how_far_each_trigger_sits_from_the_boundary() -> None:
    """The host's lean per trigger under noise: a trigger deep on j's side stays j (+1), one on the
    boundary answers j about half the time (~0), and more noise pulls every lean towards the middle; the
    same generator seed gives the same leans."""
    from fingermarks.methods.fingermarks import noise_leans

    class Threshold(nn.Module):  # answers class 1 (j) when the mean pixel is above 0.5, else class 0 (i)
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            m = x.flatten(1).mean(1, keepdim=True) * self.scale
            return torch.cat([0.5 - m, m - 0.5], 1)

    triggers = torch.stack([torch.full((1, 4, 4), v) for v in (0.9, 0.5, 0.52)])
    pairs = torch.tensor([[0, 1]] * 3)
    out = noise_leans(Threshold(), triggers, pairs, [0.05, 1.0], 64, (0.0, 1.0), torch.Generator().manual_seed(0))
    leans = out["noise_leans"]
    assert leans.shape == (2, 3) and out["noise_lean_stds"] == [0.05, 1.0]
    assert leans[0, 0] == 1.0 and abs(float(leans[0, 1])) < 0.4 and leans[0, 2] > leans[0, 1]
    assert leans[1, 0] < leans[0, 0]
    again = noise_leans(Threshold(), triggers, pairs, [0.05, 1.0], 64, (0.0, 1.0), torch.Generator().manual_seed(0))
    assert torch.equal(again["noise_leans"], leans)
