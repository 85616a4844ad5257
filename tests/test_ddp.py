"""FingerMarks embedding under DDP (ddp_spawn, 2 CPU processes over gloo) on digits with a tiny model.

With ddp_spawn only the weights and the logged metrics come back to the calling process (the
callback's history stays in the workers), so the verdict must come from the returned model; and a
stop decided on one rank only would hang the other.
"""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from conftest import QUIET_TRAINER
from fingermarks.context import RunContext
from fingermarks.embedding.head import split_head
from fingermarks.metrics import predict_labels
from test_embedding import method_from_yaml, user_key

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is unavailable in this torch build")


@pytest.mark.parametrize("train", ["all", "head"])
def test_fingermarks_embedding_under_ddp_spawn(datamodule, tiny_classifier, tmp_path, train) -> None:
    host = tiny_classifier
    before = {k: v.clone() for k, v in host.state_dict().items()}
    key = user_key(host, datamodule, "fingermarks")
    targets = key.target_labels(key.users["alice"])
    ddp = functools.partial(QUIET_TRAINER, devices=2, strategy="ddp_spawn", limit_val_batches=1)
    ctx = RunContext(datamodule=datamodule, data_cfg=OmegaConf.create({"name": "digits"}),
                     model_cfg=OmegaConf.create({}), recipe=OmegaConf.create({}), trainer_factory=ddp, output_dir=tmp_path)
    method = method_from_yaml("fingermarks", "embedding.max_epochs=2", "embedding.optimizer.lr=3e-3",
                              "embedding.allow_partial=true", f"embedding.train={train}",  # two epochs need not embed every trigger
                              "embedding.prune_copies=0", "embedding.stack_users=1")
    model, info = method.embed(host, key, "alice", ctx, seed=1)

    assert all(torch.equal(v, before[k]) for k, v in host.state_dict().items())  # the host is untouched
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items() if v.is_floating_point())
    assert not model.training
    matched = int((predict_labels(model, key.triggers) == targets).sum())
    assert info["matched"] == matched and info["all_matched"] == (matched == key.n)
    assert 1 <= info["embed_epochs"] <= 2  # from the workers' logged metrics: the loop counters stay there
    assert 0.5 < info["clean_acc"] <= 1 and info["embed_seconds"] > 0
    assert isinstance(info["history"], list)  # the workers' rows do not come back under ddp_spawn
    assert info["trained"] == train
    if train == "head":  # the workers trained the head on the shared trunk outputs; the trunk came back unchanged
        trunk, host_trunk = split_head(model)[0].state_dict(), split_head(host)[0].state_dict()
        assert all(torch.equal(trunk[k], host_trunk[k]) for k in trunk)
