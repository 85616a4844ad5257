"""UAP fingerprinting (methods/uap.py) and the piracy copies behind it (evidence/piracy.py), on digits
with width-8 SmallCNNs and tiny owner populations."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF, QUIET_TRAINER, compose_cfg
from fingermarks.context import RunContext
from fingermarks.data import DigitsDataModule
from fingermarks.errors import KeyFileError
from fingermarks.evidence.piracy import attacker_pool, distill, labelled_queries, owner_pool, piracy_population, query_images
from fingermarks.key import load_key, save_key
from fingermarks.methods import UAPFingerprint
from fingermarks.methods.uap import deepfool, fooling_rate, project, universal_perturbation
from fingermarks.metrics import predict_labels
from fingermarks.secret import KeySecret
from fingermarks.suspects import ModuleSuspect
from fingermarks.verification import verify_labels, verify_suspect

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL = {"_target_": "fingermarks.models.SmallCNN", "width": 8}
XI = 2.0  # L2 radius on 8x8 digits (an image has L2 norm ~3.9)
TARGET = 0.6


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> RunContext:
    datamodule = DigitsDataModule(batch_size=64)
    datamodule.setup("fit")
    return RunContext(
        datamodule=datamodule, data_cfg=OmegaConf.create({"name": "digits"}), model_cfg=OmegaConf.create(SMALL),
        recipe=OmegaConf.create({"epochs": 5, "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.003}}),
        trainer_factory=QUIET_TRAINER, output_dir=tmp_path_factory.mktemp("uap"), cache_dir=tmp_path_factory.mktemp("uap-cache"),
    )


@pytest.fixture(scope="module")
def host(ctx):
    return ctx.train_classifier(ctx.model_cfg, 0, "host")[0]


@pytest.fixture(scope="module")
def method() -> UAPFingerprint:
    cfg = OmegaConf.merge(OmegaConf.load(CONF / "method" / "uap.yaml"), {
        "uap": {"count": 1, "xi": XI, "images": 200, "val_images": 100, "max_passes": 3, "target_fooling": TARGET},
        "points": {"clusters": 10, "pool": 4, "views": 4},
        "encoder": {"hidden": [32, 8], "steps": 300, "views_per_model": 4, "independents": [SMALL, SMALL],
                    "piracy": {"students": {"archs": [], "budgets": [300], "labels": ["hard", "soft"], "steps": 150},
                               "copies": [{"kind": "prune", "rate": 0.3}]}, "min_acc": 0.5},
        "decision": {"null_pool": 4, "alpha": 0.1},  # 4 null models support no smaller alpha
    })
    cfg.encoder.piracy.students.archs = [SMALL]  # replaces the default list (a merge would keep ${model})
    return instantiate(cfg)


@pytest.fixture(scope="module")
def key(method, host, ctx):
    return method.keygen(host, ctx, [], seed=0, secret=KeySecret.from_text("uap-tests"))


@pytest.fixture(scope="module")
def independent(ctx):
    """Same architecture and data, another seed: in neither the encoder's population nor the null pool."""
    return ctx.train_classifier(ctx.model_cfg, 999, "independent")[0]


def test_config_instantiates(tmp_path):
    assert isinstance(instantiate(compose_cfg(["method=uap"], tmp_path).method), UAPFingerprint)


def test_deepfool_crosses_the_nearest_boundary(host, ctx):
    x, _ = ctx.datamodule.test_set.tensors(list(range(16)))
    r, fooled = deepfool(host, x)
    assert fooled.float().mean() >= 0.9
    assert bool((predict_labels(host, x + r)[fooled] != predict_labels(host, x)[fooled]).all())


def test_projection_keeps_the_norm_bound():
    v = torch.randn(1, 8, 8) * 5
    assert float(project(v, 2.0, "l2").norm()) <= 2.0 + 1e-5
    assert float(project(v, 0.1, "linf").abs().max()) <= 0.1 + 1e-7


def test_uap_fools_the_host_within_its_norm_bound(key, host, ctx):
    (rep,) = key.report["uaps"]
    assert rep["fooling_rate"] >= TARGET and rep["l2"] <= XI + 1e-4
    # the key's queries: x and clip(x + v); the difference is within the bound (clipping only shrinks it)
    V, K, variants = key.decision["layout"]
    q = key.triggers.view(V * K, variants, *key.triggers.shape[1:])
    assert float((q[:, 1] - q[:, 0]).flatten(1).norm(dim=1).max()) <= XI + 1e-4
    # the algorithm itself, on images it never saw: the target rate within the bound, in L2 and L-inf
    x, _ = ctx.datamodule.train_eval_set.tensors(list(range(500)))
    x_test, _ = ctx.datamodule.test_set.tensors()
    for norm, xi in (("l2", 3.0), ("linf", 0.5)):
        v, info = universal_perturbation(host, x[:300], x[300:], xi, norm, TARGET, 4, torch.Generator().manual_seed(1))
        size = float(v.norm()) if norm == "l2" else float(v.abs().max())
        assert size <= xi + 1e-4 and info["fooling_rate"] >= TARGET
        assert fooling_rate(host, x_test, v) >= TARGET - 0.15  # and on images it never saw


def test_points_cover_every_class_the_host_predicts(key, host, ctx):
    V, K, variants = key.decision["layout"]
    points = key.triggers.view(V, K, variants, *key.triggers.shape[1:])[:, :, 0].flatten(0, 1)
    x, _ = ctx.datamodule.train_eval_set.tensors(owner_pool(ctx.datamodule))
    assert set(predict_labels(host, points).tolist()) == set(predict_labels(host, x).tolist())
    assert key.report["points"]["clusters"] == K == 10


def test_host_is_a_copy_and_an_independent_model_is_not_in_both_modes(key, host, independent):
    for model, expected in ((host, True), (independent, False)):
        suspect = ModuleSuspect(model, "s")
        outputs = verify_suspect(key, suspect)  # a module gives scores: outputs mode
        labels = verify_labels(key, suspect.labels(key.triggers))  # top-1 labels only
        assert outputs.evidence["mode"] == "outputs" and labels.evidence["mode"] == "labels"
        assert outputs.owned is expected and labels.owned is expected
        assert outputs.question == labels.question == "piracy"
    assert verify_suspect(key, ModuleSuspect(host, "host")).match_rate == pytest.approx(1.0)


class LabelsOnly:
    """A suspect that answers top-1 labels only (e.g. this project's HTTP protocol)."""

    def __init__(self, model) -> None:
        self.model, self.name, self.input_shape, self.num_classes = model, "labels-only", (1, 8, 8), 10

    def labels(self, x):
        return predict_labels(self.model, x)


def test_a_suspect_without_scores_is_verified_on_labels(key, host):
    report = verify_suspect(key, LabelsOnly(host))
    assert report.evidence["mode"] == "labels" and report.owned


def test_the_report_carries_the_number_of_queries(key, host):
    V, K, variants = key.decision["layout"]
    report = verify_suspect(key, ModuleSuspect(host, "host"))
    assert report.n_queries == key.n == V * K * variants == key.report["queries"] == 4 * 10 * 2
    assert "p_pool" in report.evidence and 0 < report.p_value <= 1


def test_the_key_round_trips_and_decides_the_same(key, host, independent, tmp_path):
    path = save_key(key, tmp_path / "key.pt")
    loaded = load_key(path)
    assert loaded.method == "uap" and loaded.digest() == key.digest()
    for model in (host, independent):
        a = verify_suspect(key, ModuleSuspect(model, "s"))
        b = verify_suspect(loaded, ModuleSuspect(model, "s"))
        assert (a.owned, a.match_rate) == (b.owned, pytest.approx(b.match_rate))


def test_a_key_with_a_broken_encoder_is_refused(key, tmp_path):
    import copy

    bad = copy.deepcopy(key)
    bad.decision["layout"] = [1, 1, 1]
    save_key(bad, tmp_path / "bad.pt")
    with pytest.raises(KeyFileError, match="decision.layout"):
        load_key(tmp_path / "bad.pt")


def test_the_key_records_its_costs(key):
    timing = key.report["timing"]
    assert set(timing) >= {"uaps", "points", "owner_models", "encoders", "null_models"}
    pop = key.report["owner_population"]
    assert len(pop["piracy"]) == 3 and len(pop["independents"]) == 2


# -- piracy copies -----------------------------------------------------------------------------
def test_attacker_data_is_disjoint_from_the_owners(ctx, key):
    dm = ctx.datamodule
    x_att, _, source = attacker_pool(dm)
    x_own, _ = dm.train_eval_set.tensors(owner_pool(dm))
    assert len(x_att) + len(x_own) == len(dm.train_eval_set) + len(getattr(dm, "attacker_set", []))
    own_rows = {tuple(r.tolist()) for r in x_own.flatten(1)}
    assert not any(tuple(r.tolist()) in own_rows for r in x_att.flatten(1)[:100])
    # the key's points come from the owner's share
    assert set(key.report["source_indices"]) <= set(owner_pool(dm).tolist())


def test_query_budget_beyond_the_pool_is_filled_with_shifted_copies():
    pool = torch.rand(10, 1, 8, 8)
    x = query_images(pool, 25, torch.Generator().manual_seed(0))
    assert x.shape == (25, 1, 8, 8)
    assert torch.equal(x[:10].sort(0).values, pool.sort(0).values)


@pytest.mark.parametrize("budget", [6, 25])
def test_labelled_queries_draw_the_same_images_with_their_own_labels(budget):
    pool = torch.rand(10, 1, 8, 8)
    pool[:, 0, 3:5, 3:5] = 2 + torch.arange(10).view(-1, 1, 1).float()  # label + 2 (not a pixel value), kept by shifts <= 2
    labels = torch.arange(10)
    x, y = labelled_queries(pool, labels, budget, torch.Generator().manual_seed(3))
    assert torch.equal(x, query_images(pool, budget, torch.Generator().manual_seed(3)))
    assert len(y) == budget
    for image, label in zip(x, y):
        assert 2.0 + float(label) in set(image.flatten().tolist())  # every label is its own image's


def test_a_control_student_differs_from_the_thiefs_only_in_its_labels(ctx, host):
    """labels=truth: the same images, initialisation and batches as the hard-label student; trained on the
    pool's own labels. Where those labels are the victim's, the two students are the same model."""
    x, _, _ = attacker_pool(ctx.datamodule)
    victim_labels = predict_labels(host, x)
    args = dict(budget=80, steps=10, seed=5)
    thief, _ = distill(host, SMALL, ctx.datamodule, x, labels="hard", **args)
    same, _ = distill(host, SMALL, ctx.datamodule, x, labels="truth", pool_labels=victim_labels, **args)
    other, _ = distill(host, SMALL, ctx.datamodule, x, labels="truth", pool_labels=(victim_labels + 1) % 10, **args)
    a, b, c = (torch.nn.utils.parameters_to_vector(m.parameters()) for m in (thief, same, other))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="pool_labels"):
        distill(host, SMALL, ctx.datamodule, x, labels="truth", **args)


def test_a_paired_control_takes_its_students_seed(ctx, host, tmp_path):
    x, y, _ = attacker_pool(ctx.datamodule)
    spec = [{"kind": "distill", "student": SMALL, "budget": 60, "labels": "truth", "steps": 5, "seed": 70_004}]
    (model, info), = piracy_population(host, spec, ctx.datamodule, x, y, 70_000, 0, tmp_path, role="control")
    assert info["seed"] == 70_004 and info["name"] == "distill:SmallCNN:60:truth"
    assert spec[0]["seed"] == 70_004  # the caller's spec is left as it was


def test_piracy_population_distils_and_caches(ctx, host, tmp_path):
    dm = ctx.datamodule
    x, y, _ = attacker_pool(dm)
    spec = {"students": {"archs": [SMALL], "budgets": [200], "labels": ["hard"], "steps": 60},
            "copies": [{"kind": "finetune", "epochs": 1, "lr": 1e-3}, {"kind": "prune", "rate": 0.5}]}
    first = piracy_population(host, spec, dm, x, y, 70_000, 0, tmp_path)
    again = piracy_population(host, spec, dm, x, y, 70_000, 0, tmp_path)
    assert [i["name"] for _, i in first] == ["distill:SmallCNN:200:hard", "ftal:1:0.001", "prune:0.5"]
    assert all(i["cached"] for _, i in again) and not any(i["cached"] for _, i in first)
    test_x, _ = dm.test_set.tensors()
    agree = (predict_labels(first[0][0], test_x) == predict_labels(host, test_x)).float().mean()
    assert agree > 0.5  # the student learned the victim's labels


def test_an_onnx_file_and_a_checkpoint_are_verified_on_their_outputs(key, host, independent, tmp_path):
    from fingermarks.model_io import export_onnx, save_model
    from fingermarks.suspects import open_suspect

    for model, expected in ((host, True), (independent, False)):
        export_onnx(model, tmp_path / "m.onnx", [1, 8, 8])
        save_model(model, tmp_path / "m.ckpt")
        for path in (tmp_path / "m.onnx", tmp_path / "m.ckpt"):
            report = verify_suspect(key, open_suspect(path))
            assert report.evidence["mode"] == "outputs" and report.owned is expected


# -- one verification path for verify.py, fm.verify and fm.verify_many -------------------------------------
def test_the_api_verifies_in_the_outputs_mode_where_the_suspect_gives_scores(key, host, independent, tmp_path):
    import fingermarks as fm
    from fingermarks.model_io import export_onnx
    from fingermarks.reports import verify_one

    for model, expected in ((host, True), (independent, False)):
        export_onnx(model, tmp_path / "m.onnx", [1, 8, 8])
        for suspect in (tmp_path / "m.onnx", model):
            report = fm.verify(key, suspect)
            assert report.evidence["mode"] == "outputs" and report.owned is expected
    # a suspect that answers labels only falls back to the label-only mode, and the record says so
    record = verify_one(key, LabelsOnly(host))
    assert record.complete and record.mode == "labels" and record.report.evidence["mode"] == "labels"
    assert record.to_dict()["provenance"]["mode"] == "labels" and "labels mode" in record.sentence()
    assert len(record.labels) == key.n


def test_servers_answering_scores_or_labels_are_verified_in_their_mode(key, host, tmp_path):
    import fingermarks as fm
    from fingermarks.model_io import export_onnx
    from fingermarks.serving.stdlib_server import serve_onnx

    export_onnx(host, tmp_path / "host.onnx", [1, 8, 8])
    scores, scores_url = serve_onnx({"host": tmp_path / "host.onnx"}, protocol="tfserving", output="logits")
    labels, labels_url = serve_onnx({"host": tmp_path / "host.onnx"}, protocol="simple")
    try:
        suspects = [f"tfserving+{scores_url}/v1/models/host:predict", f"{labels_url}/host"]
        results = fm.verify_many(key, suspects)
        assert [v.mode for v in results] == ["outputs", "labels"]
        assert [v.report.evidence["mode"] for v in results] == ["outputs", "labels"]
        assert all(v.report.owned for v in results)
        assert fm.verify(key, suspects[0]).match_rate == pytest.approx(1.0, abs=1e-4)
    finally:
        scores.shutdown(), labels.shutdown()


# -- the combined verdict: a tracing key and the UAP fingerprint of one host --------------------------------
N_TRACE = 16


@pytest.fixture(scope="module")
def tracing_key(host, independent):
    """A code-rule key of the same host, hand-made so that the host carries alice's ID (it plays her copy):
    inputs where host and independent disagree, second labels neither answers, so the independent reads nothing."""
    from fingermarks.key import Key, host_fingerprint

    g = torch.Generator().manual_seed(0)
    x = torch.rand(4000, 1, 8, 8, generator=g)
    a, b = predict_labels(host, x), predict_labels(independent, x)
    x, a, b = x[a != b][:N_TRACE], a[a != b][:N_TRACE], b[a != b][:N_TRACE]
    assert len(x) == N_TRACE
    other = next_free = (a + 1) % 10
    other = torch.where(next_free == b, (a + 2) % 10, next_free)
    alice = torch.arange(N_TRACE) % 2
    pairs = torch.stack([torch.where(alice == 1, other, a), torch.where(alice == 1, a, other)], 1)
    key = Key(method="fingermarks", triggers=x, pairs=pairs, swap=torch.zeros(N_TRACE, dtype=torch.bool),
              host_sha256=host_fingerprint(host), data={"name": "digits", "num_classes": 10, "input_shape": [1, 8, 8]},
              decision={"rule": "code", "alpha": 1e-3, "min_margin": 2, "trace_alpha": 1e-3},
              users={"alice": alice, "bob": 1 - alice}, id_acceptance={"alice": 1.0, "bob": 1.0},
              secret=KeySecret.from_text("combined-tests").hex)
    key.min_distance = key.achieved_distance()
    return key


def test_one_suspect_against_two_keys_gives_one_combined_verdict(tracing_key, key, host, independent, tmp_path):
    import fingermarks as fm
    from fingermarks.model_io import export_onnx

    export_onnx(host, tmp_path / "host.onnx", [1, 8, 8])
    r = fm.verify([tracing_key, key], tmp_path / "host.onnx")
    parts = r.evidence["keys"]
    assert r.owned and r.traced_user == "alice" and [k["owned"] for k in parts] == [True, True]
    assert r.p_value == pytest.approx(min(1.0, 2 * min(k["p_value"] for k in parts)))
    assert r.alpha == pytest.approx(1e-3 + 0.1) and r.n_queries == N_TRACE + key.n
    assert parts[1]["evidence"]["mode"] == "outputs" and r.question == "tracing+piracy"
    (many,) = fm.verify_many([tracing_key, key], [str(tmp_path / "host.onnx")])
    assert many.verdict == "owned" and many.report.p_value == pytest.approx(r.p_value) and len(many.parts) == 2
    innocent = fm.verify([tracing_key, key], independent)
    assert not innocent.owned and innocent.traced_user is None
    assert [k["owned"] for k in innocent.evidence["keys"]] == [False, False]
    # a label-only suspect: the fingerprint falls back to labels, the record says so per key
    from fingermarks.reports import verify_one

    v = verify_one([tracing_key, key], LabelsOnly(host))
    assert v.complete and v.verdict == "owned" and v.mode == "labels+labels"
    assert [k["mode"] for k in v.to_dict()["provenance"]["keys"]] == ["labels", "labels"]
    assert "key 2 (uap) says owned (piracy, labels mode" in v.sentence()


def test_verify_py_takes_a_list_of_keys(tracing_key, key, host, tmp_path):
    import json

    from conftest import run_cli
    from fingermarks.model_io import export_onnx

    export_onnx(host, tmp_path / "host.onnx", [1, 8, 8])
    save_key(tracing_key, tmp_path / "fm.pt"), save_key(key, tmp_path / "uap.pt")
    proc = run_cli(["verify.py", f"key=[{tmp_path / 'fm.pt'},{tmp_path / 'uap.pt'}]", f"suspect={tmp_path / 'host.onnx'}",
                    f"report={tmp_path / 'r.json'}", f"html={tmp_path / 'r.html'}"])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("key 1 (fingermarks, labels mode): OWNED") and lines[1].startswith("key 2 (uap, outputs mode)")
    assert lines[2].startswith("combined: OWNED") and "traced to 'alice'" in lines[2]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["verdict"] == "owned" and report["traced_user"] == "alice"
    assert [k["method"] for k in report["evidence"]["keys"]] == ["fingermarks", "uap"]
    assert len(report["provenance"]["keys"]) == 2 and "+" in report["provenance"]["key_digest"]
    page = (tmp_path / "r.html").read_text()
    assert "IS our model" in page and "<h2>Each key</h2>" in page and "key 2 (uap)" in page
    # keys of another host are refused in one line (exit status 2)
    other = load_key(tmp_path / "fm.pt")
    other.host_sha256 = "f" * 64
    save_key(other, tmp_path / "other.pt")
    proc = run_cli(["verify.py", f"key=[{tmp_path / 'other.pt'},{tmp_path / 'uap.pt'}]", f"suspect={tmp_path / 'host.onnx'}"])
    assert proc.returncode == 2 and "different hosts" in proc.stderr
