"""Many users: a registry of thousands (fast ID draws), embedding sharded over jobs from one key,
each job writing only its own users, resumable."""

from __future__ import annotations

import json
import time

import pytest
import torch

from conftest import TINY, compose_cfg, run_cli
from fingermarks.codes import draw_ids, min_pairwise_distance
from fingermarks.errors import ConfigError
from fingermarks.pipeline import run, select_users, user_names

FAST = [*TINY, "method.references=[]"]


def test_select_users_slices_lists_and_shards():
    names = user_names(10)
    assert select_users(names) == names
    assert select_users(names, "2:5") == ["user3", "user4", "user5"]
    assert select_users(names, "8:") == ["user9", "user10"] and select_users(names, ":1") == ["user1"]
    assert select_users(names, ["user7", "user2"]) == ["user7", "user2"]
    assert select_users(names, []) == []
    shards = [select_users(names, shard=f"{i}/3") for i in range(3)]
    assert [len(s) for s in shards] == [4, 3, 3] and sum(shards, []) == names  # disjoint, contiguous, complete
    assert select_users(names, "0:4", shard="1/2") == ["user3", "user4"]
    assert select_users(names[:2], shard="3/4") == []
    for bad in ({"embed_users": "a:b"}, {"embed_users": ["nobody"]}, {"embed_users": 3}, {"shard": "2/2"}, {"shard": "1"}):
        with pytest.raises(ConfigError):
            select_users(names, **bad)


def test_hundreds_of_ids_are_drawn_fast_and_apart():
    reserved = torch.stack([torch.zeros(30, dtype=torch.long), torch.ones(30, dtype=torch.long)])
    start = time.perf_counter()
    ids, acceptance = draw_ids(500, 30, 12, torch.Generator().manual_seed(0), reserved=reserved, return_acceptance=True)
    seconds = time.perf_counter() - start
    assert ids.shape == (500, 30) and len(acceptance) == 500
    assert min_pairwise_distance(torch.cat([ids, reserved])) >= 8
    # 1000 IDs: ~13 s on a loaded 2-core CPU (a whole users=1000 key: 22 s); the former (batch, taken, n)
    # comparison took ~1 min for 300 and grew with the square
    assert seconds < 60, seconds


def test_min_pairwise_distance_matches_brute_force():
    for k, n in [(2, 30), (40, 6), (300, 12)]:
        codes = torch.randint(0, 2, (k, n), generator=torch.Generator().manual_seed(k))
        d = (codes[:, None] != codes[None]).sum(-1)
        d.fill_diagonal_(n + 1)
        assert min_pairwise_distance(codes) == int(d.min())


def test_two_shards_embed_disjoint_users_from_one_key_and_resume(tmp_path):
    cache = tmp_path / "cache"
    # the owner's key with 4 registered users, nobody embedded yet
    keyrun = tmp_path / "key"
    summary = run(compose_cfg([*FAST, "users=4", "embed_users=[]", f"cache_dir={cache}"], keyrun), keyrun)
    assert summary["users"] == {} and not (keyrun / "users").exists()
    # a Hydra multirun over the two shards of that key
    sweep = tmp_path / "sweep"
    proc = run_cli(["train.py", "-m", "shard=0/2,1/2", f"key_file={keyrun / 'key.pt'}", f"hydra.sweep.dir={sweep}",
                    f"cache_dir={cache}", *FAST], env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [sweep / "0", sweep / "1"]
    embedded = [sorted(p.name for p in (job / "users").iterdir()) for job in jobs]
    assert embedded == [["user1", "user2"], ["user3", "user4"]]
    for job, users in zip(jobs, embedded):
        result = json.loads((job / "summary.json").read_text())
        assert sorted(result["users"]) == users
        for user in users:
            assert result["users"][user]["stopped"] in ("targets", "plateau", "max_epochs")  # why its embedding ended
            report = result["verification"][user]
            assert report["owned"] and report["traced_user"] == user
    # the second shard again in its own directory: both users are there, nothing is embedded again
    again = run(compose_cfg([*FAST, "shard=1/2", f"key_file={keyrun / 'key.pt'}", "overwrite_key=true",
                             f"cache_dir={tmp_path / 'empty-cache'}"], jobs[1]), jobs[1])
    assert sorted(again["users"]) == ["user3", "user4"]
    assert again["host"]["cached"] is False  # a cold cache: the host was trained again, but no user model was made
    assert not (tmp_path / "empty-cache" / "users").exists()
    assert all(again["users"][u]["embed_seconds"] > 0 for u in ("user3", "user4"))  # the records read back
    for user in ("user3", "user4"):
        assert again["verification"][user]["traced_user"] == user
