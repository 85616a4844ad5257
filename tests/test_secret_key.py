"""The key is a secret: its randomness comes from the OS, never from `seed`, and it never lands in a
cache, a checkpoint or a distributed file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF
from fingermarks.key import load_key
from fingermarks.secret import KeySecret

pytestmark = pytest.mark.usefixtures("single_thread")


def fast_fingermarks():
    cfg = OmegaConf.load(CONF / "method" / "fingermarks.yaml")
    cfg = OmegaConf.merge(cfg, {"n_triggers": 8, "references": [], "decision": {"null_pool": 2},
                                "generation": {"steps": 60, "oversample": 2, "lr": 0.05}})
    return instantiate(cfg)


def same_key(a, b) -> bool:
    return (torch.equal(a.triggers, b.triggers) and torch.equal(a.pairs, b.pairs) and torch.equal(a.swap, b.swap)
            and list(a.users) == list(b.users) and all(torch.equal(a.users[u], b.users[u]) for u in a.users))


def test_same_seed_without_a_secret_gives_another_key_and_a_given_secret_the_same(ctx, tiny_classifier):
    method = fast_fingermarks()
    users = ["alice", "bob", "carol"]
    first = method.keygen(tiny_classifier, ctx, users, seed=0)
    second = method.keygen(tiny_classifier, ctx, users, seed=0)
    assert first.secret != second.secret and len(bytes.fromhex(first.secret)) * 8 >= 128
    assert not torch.equal(first.triggers, second.triggers)
    assert any(not torch.equal(first.users[u], second.users[u]) for u in users)
    again = [method.keygen(tiny_classifier, ctx, users, seed=s, secret=KeySecret.from_text("paper")) for s in (0, 0)]
    assert same_key(*again) and again[0].secret == again[1].secret
    assert bool(first.swap.any()) or bool(second.swap.any())  # keyed swap is on by default
    # keygen takes the host channels-last (training.layout) and hands it back as it came
    assert all(p.is_contiguous() for p in tiny_classifier.parameters())


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _holds_key_material(path: Path, key) -> str | None:
    """What of the key a file holds: trigger images (bytes or close tensors), the ID table or the pairs."""
    blob = path.read_bytes()
    triggers = key.triggers.flatten(1)
    for t in range(key.n):
        if key.triggers[t].numpy().tobytes()[:64] in blob:
            return f"trigger {t} bytes"
    ids = torch.stack(list(key.users.values()))
    if ids.numpy().tobytes() in blob or key.pairs.numpy().tobytes() in blob or bytes.fromhex(key.secret) in blob:
        return "IDs, pairs or secret bytes"
    if path.suffix in (".ckpt", ".pt"):
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except Exception:
            return None
        for tensor in _tensors(payload):
            flat = tensor.detach().float().reshape(-1)
            if flat.numel() % triggers.shape[1] == 0 and flat.numel() >= triggers.shape[1]:
                rows = flat.view(-1, triggers.shape[1])
                close = torch.cdist(rows, triggers).min() if len(rows) <= 4096 else torch.tensor(1.0)
                if float(close) < 1e-2 * triggers.shape[1] ** 0.5:
                    return f"a tensor close to a trigger image in {tuple(tensor.shape)}"
    return None


def test_no_key_material_outside_the_key_file(digits_run, cache_dir):
    """Everything a run leaves (its directory, Lightning logs, the shared model cache) except key.pt."""
    _, out, _ = digits_run
    key = load_key(out / "key.pt")
    files = [p for root in (out, cache_dir) for p in root.rglob("*") if p.is_file() and p.name != "key.pt"]
    assert any(p.suffix == ".onnx" for p in files) and any("users" in p.parts for p in files)
    leaks = {str(p): why for p in files if (why := _holds_key_material(p, key))}
    assert not leaks
    assert not (cache_dir / "keys").exists()  # keys are never cached


def test_too_few_host_specific_fingerprints_is_an_error_naming_the_setting(ctx, tiny_classifier):
    from fingermarks.errors import KeyGenError

    method = fast_fingermarks()
    method.gen.steps = 1  # one step: almost no candidate makes the host answer its target j
    with pytest.raises(KeyGenError, match="method.generation.oversample"):
        method.keygen(tiny_classifier, ctx, ["alice"], seed=0, secret=KeySecret.from_text("few"))
