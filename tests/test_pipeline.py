"""The whole chain on digits: artifacts, verdicts, key secrecy, determinism, CLI errors."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY, compose_cfg, run_cli
from fingermarks.key import load_key
from fingermarks.model_io import load_model, read_model_file, save_model
from fingermarks.models import SmallCNN


def test_run_directory_holds_every_artifact(digits_run):
    _, out, summary = digits_run
    assert (out / "host.ckpt").is_file() and (out / "key.pt").is_file() and (out / "summary.json").is_file()
    for user in ("user1", "user2", "user3"):
        assert (out / "users" / user / "model.ckpt").is_file()
        assert (out / "users" / user / "model.onnx").is_file()
    written = json.loads((out / "summary.json").read_text())
    assert written["method"] == "fingermarks"
    # the key's decision is reported without its tensors: the probe images are the triggers scaled up
    key = load_key(out / "key.pt")
    assert key.decision["probes"].shape[:2] == (3, key.n) and written["key"]["decision"]["probe_scales"] == [1.25, 1.5, 2.0]
    assert "probes" not in written["key"]["decision"] and written["key"]["decision"]["reads"] == 15
    # the host's leans under noise: one row per std, each trigger's share of j minus share of i
    leans = key.decision["noise_leans"]
    assert leans.shape == (5, key.n) and float(leans.abs().max()) <= 1 and "noise_leans" not in written["key"]["decision"]
    assert written["key"]["decision"]["noise_lean_stds"] == [0.1, 0.2, 0.3, 0.4, 0.5]


def test_every_user_owned_and_traced_host_not_claimed(digits_run):
    _, _, summary = digits_run
    for user in ("user1", "user2", "user3"):
        rep = summary["verification"][user]
        assert rep["owned"] and rep["traced_user"] == user and rep["bit_acc"] == 1.0 and rep["hamming"] == 0
    host = summary["verification"]["host"]
    # the code rule claims a registered user's copy; the bare host (all j) agrees with no secret ID
    assert not host["owned"] and host["traced_user"] is None and host["evidence"]["pair_match_rate"] == 1.0


def test_embedding_keeps_accuracy_and_is_fast(digits_run):
    _, _, summary = digits_run
    for info in summary["users"].values():
        assert info["acc_drop"] <= 3.0  # digits' test set is 360 images: one image is 0.28 points
        assert info["embed_epochs"] <= 30


def test_key_is_absent_from_distributed_files(digits_run):
    _, out, _ = digits_run
    key = load_key(out / "key.pt")
    payload = read_model_file(out / "users" / "user1" / "model.ckpt")
    assert set(payload) == {"format", "version", "arch", "arch_kwargs", "state_dict", "meta"}
    assert set(payload["meta"]) == {"clean_acc"}
    trigger_bytes = key.triggers[0].numpy().tobytes()[:64]
    pair_bytes = key.pairs.numpy().tobytes()
    for name in ("model.ckpt", "model.onnx"):
        blob = (out / "users" / "user1" / name).read_bytes()
        assert trigger_bytes not in blob and pair_bytes not in blob
        assert b"user2" not in blob and b"triggers" not in blob


def test_same_seed_same_key_ids_and_verdicts(digits_run, tmp_path):
    """From an empty cache (every model, the key and the embeddings made anew) a run repeats exactly."""
    from fingermarks.pipeline import run

    _, out, summary = digits_run
    cfg = compose_cfg(TINY + ["users=3", f"cache_dir={tmp_path / 'fresh-cache'}"], tmp_path)
    again = run(cfg, tmp_path)
    assert again["host"]["cached"] is False
    a, b = load_key(out / "key.pt"), load_key(tmp_path / "key.pt")
    assert torch.equal(a.triggers, b.triggers) and torch.equal(a.pairs, b.pairs)
    assert torch.equal(a.decision["noise_leans"], b.decision["noise_leans"])
    assert {u: v.tolist() for u, v in a.users.items()} == {u: v.tolist() for u, v in b.users.items()}
    for name, rep in summary["verification"].items():
        other = again["verification"][name]
        assert (rep["owned"], rep["traced_user"], rep["matches"]) == (other["owned"], other["traced_user"], other["matches"])


def test_cached_key_and_user_models_are_reused(digits_run, tmp_path, cache_dir, capsys):
    """A second run with the same settings (e.g. the next job of an attack sweep) reuses the host, the key
    and the user models, so every job attacks one and the same watermarked model."""
    from fingermarks.model_io import read_model_file
    from fingermarks.pipeline import run

    _, out, _ = digits_run
    capsys.readouterr()
    again = run(compose_cfg(TINY + ["users=3", f"cache_dir={cache_dir}"], tmp_path), tmp_path)
    assert again["host"]["cached"] is True
    # the summary's x_host divides by seconds recorded in another run: the table says so
    assert f"cached host's training time as recorded when it was trained ({again['host']['train_seconds']:.1f}s)" in capsys.readouterr().out
    assert torch.equal(load_key(tmp_path / "key.pt").triggers, load_key(out / "key.pt").triggers)
    a = read_model_file(out / "users" / "user1" / "model.ckpt")["state_dict"]
    b = read_model_file(tmp_path / "users" / "user1" / "model.ckpt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_existing_key_is_never_overwritten(digits_run, cache_dir):
    from fingermarks.errors import KeyFileError
    from fingermarks.pipeline import run

    _, out, _ = digits_run
    before = (out / "key.pt").read_bytes()
    cfg = compose_cfg(TINY + ["users=3", f"cache_dir={cache_dir}"], out)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        run(cfg, out)
    assert (out / "key.pt").read_bytes() == before


def test_verify_cli_reports_owner_and_user(digits_run, tmp_path):
    _, out, _ = digits_run
    report = tmp_path / "report.json"
    proc = run_cli(["verify.py", f"key={out / 'key.pt'}", f"suspect={out / 'users' / 'user2' / 'model.onnx'}", f"report={report}"])
    assert proc.returncode == 0, proc.stderr
    assert "OWNED" in proc.stdout and "user2" in proc.stdout
    data = json.loads(report.read_text())
    for field in ("owned", "match_rate", "threshold", "p_value", "traced_user", "hamming", "margin", "n_queries"):
        assert field in data
    assert data["owned"] is True and data["traced_user"] == "user2" and data["n_queries"] == 30


def _one_line_error(proc, *needles: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _in_process_error(capsys, entry, *args, needles: tuple[str, ...]) -> None:
    """What the CLI does with an exception from its body (errors.one_line_errors), without paying a new
    interpreter and torch import per case; one case per CLI still runs as a real subprocess."""
    from fingermarks.errors import one_line_errors

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        one_line_errors(entry)(*args)
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_verify_cli_bad_inputs(digits_run, tmp_path, capsys):
    from fingermarks.reports.cli import verify_command

    _, out, _ = digits_run
    onnx = str(out / "users" / "user1" / "model.onnx")
    _one_line_error(run_cli(["verify.py", f"key={tmp_path / 'missing.pt'}", f"suspect={onnx}"]), "key file not found")

    def verify(*overrides: str, needles: tuple[str, ...]) -> None:
        cfg = compose_cfg(list(overrides), tmp_path / "v", config_name="verify")
        _in_process_error(capsys, verify_command, cfg, needles=needles)

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 100)
    verify(f"key={corrupt}", f"suspect={onnx}", needles=("cannot read key file",))
    wrong_shape = tmp_path / "mnist_model.ckpt"
    save_model(SmallCNN(num_classes=10, input_shape=[1, 28, 28], width=4), wrong_shape)
    verify(f"key={out / 'key.pt'}", f"suspect={wrong_shape}", needles=("1x28x28", "1x8x8"))
    wrong_classes = tmp_path / "five_classes.ckpt"
    save_model(SmallCNN(num_classes=5, input_shape=[1, 8, 8], width=4), wrong_classes)
    verify(f"key={out / 'key.pt'}", f"suspect={wrong_classes}", needles=("5 classes",))


def test_train_cli_bad_inputs(tmp_path, capsys):
    from fingermarks.pipeline import run

    # Hydra's own errors: the command line is refused before torch loads
    proc = run_cli(["train.py", "data=nope", f"hydra.run.dir={tmp_path}/a"])
    assert proc.returncode != 0 and "Could not find 'data/nope'" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli(["train.py", "model=resnet99", f"hydra.run.dir={tmp_path}/b"])
    assert proc.returncode != 0 and "Could not find 'model/resnet99'" in proc.stderr
    proc = run_cli(["train.py", "host.recipe.epoch=3", f"hydra.run.dir={tmp_path}/c"])
    assert proc.returncode != 0 and "epoch" in proc.stderr and "Traceback" not in proc.stderr
    # errors from the run itself: one real subprocess, the other in process
    _one_line_error(run_cli(["train.py", "data=cifar10", f"data.root={tmp_path}/nowhere", f"hydra.run.dir={tmp_path}/d"]),
                    "cifar-10-batches-py")
    five = tmp_path / "five.ckpt"
    save_model(SmallCNN(num_classes=5, input_shape=[1, 8, 8], width=4), five)
    cfg = compose_cfg(["data=digits", f"host.ckpt={five}"], tmp_path / "e")
    _in_process_error(capsys, run, cfg, tmp_path / "e", needles=("5 classes", "num_classes=10"))


def test_key_for_another_host_is_refused(digits_run):
    from fingermarks.errors import KeyFileError
    from fingermarks.key import check_host

    _, out, _ = digits_run
    key = load_key(out / "key.pt")
    check_host(key, load_model(out / "host.ckpt"))
    with pytest.raises(KeyFileError, match="made for host"):
        check_host(key, load_model(out / "users" / "user1" / "model.ckpt"))
