"""wandb dashboards: one offline run per job, carrying the composed config, every training under its own
prefix and step, robustness measures against attack strength, the job's summary numbers."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import compose_cfg

# the cheapest chain that still trains a host, embeds a user and attacks it
FAST = ["data=digits", "host.recipe.epochs=3", "users=1", "method.n_triggers=10", "method.references=[]",
        "method.embedding.max_epochs=5", "trainer.enable_progress_bar=false", "pool.models=[${model},${model}]",
        "key_secret=tests"]


@pytest.fixture(scope="module")
def wandb_job(tmp_path_factory, single_thread):
    """One `train.py data=digits logger=wandb attack=input_noise` job, in process, wandb offline."""
    from fingermarks.pipeline import run

    out = tmp_path_factory.mktemp("wandb_job")
    cfg = compose_cfg(FAST + ["logger=wandb", "attack=input_noise", "attack.strengths=[0,0.2]", "seed=3",
                              f"cache_dir={out / 'cache'}"], out)
    assert cfg.logger.mode == "offline"  # explicit, so conftest's WANDB_MODE=disabled does not apply
    summary = run(cfg, out)
    return out, summary


def test_one_job_is_one_offline_run_with_the_composed_config(wandb_job):
    from fingermarks.loggers import read_offline_run

    out, _ = wandb_job
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs  # not one per host/reference/null model/user
    rec = read_offline_run(runs[0])
    config = rec["config"]
    assert config["choices"]["method"] == "fingermarks" and config["choices"]["data"] == "digits"
    assert config["choices"]["attack"] == "input_noise" and config["seed"] == 3
    assert config["method"]["_target_"] == "fingermarks.methods.FingerMarks" and config["method"]["n_triggers"] == 10
    assert config["data"]["_target_"] == "fingermarks.data.DigitsDataModule" and "hydra" not in config
    assert config["job"]["output_dir"] == str(out)
    assert rec["group"] == "test" and rec["job_type"] == "test"  # not a multirun: the job name (compose's "test")
    assert rec["name"] == "fingermarks/digits/input_noise/seed3"
    assert {"method=fingermarks", "data=digits", "attack=input_noise"} <= set(rec["tags"])


def test_trainings_log_into_the_job_run_under_their_own_prefix_and_step(wandb_job):
    from fingermarks.loggers import read_offline_run

    out, summary = wandb_job
    rec = read_offline_run(next((out / "wandb").glob("offline-run-*")))
    keys = {k for row in rec["history"] for k in row}
    assert any(k.startswith("host/") for k in keys) and "host/step" in keys
    assert any(k.startswith("embed_user1/") for k in keys) and "embed_user1/step" in keys
    assert rec["metrics"]["host/*"] == "host/step" and rec["metrics"]["embed_user1/*"] == "embed_user1/step"
    assert not any(k.startswith("trainer/") for k in keys)  # no shared global step across trainings
    # the job's summary numbers, for the run table
    assert rec["summary"]["host/clean_acc"] == pytest.approx(summary["host"]["clean_acc"])
    assert rec["summary"]["users/user1/acc_drop"] == pytest.approx(summary["users"]["user1"]["acc_drop"])
    assert rec["summary"]["verify/user1/match_rate"] == pytest.approx(summary["verification"]["user1"]["match_rate"])


def test_robustness_measures_are_charted_against_strength(wandb_job):
    from fingermarks.loggers import read_offline_run

    out, summary = wandb_job
    rec = read_offline_run(next((out / "wandb").glob("offline-run-*")))
    for measure in ("bit_acc", "match_rate", "clean_acc", "acc_drop", "owned"):
        assert rec["metrics"][f"robust/{measure}"] == "robust/strength", measure
    points = [row for row in rec["history"] if "robust/strength" in row]
    rows = summary["robustness"]
    assert [p["robust/strength"] for p in points] == [0, 0.2] == [r["strength"] for r in rows]
    assert [p["robust/bit_acc"] for p in points] == pytest.approx([r["bit_acc"] for r in rows])
    default = next(r for r in rows if r["default"])
    assert rec["summary"]["robust/at_default/clean_acc"] == pytest.approx(default["clean_acc"])
    # the line plot and the table of rows, as before
    assert any(f.startswith("media/table/robustness/input_noise/curve_table") for f in rec["files"])


def test_sweep_group_is_the_sweep_dir_in_a_multirun():
    from fingermarks.loggers import sweep_group

    hydra_cfg = OmegaConf.create({"mode": "MULTIRUN", "sweep": {"dir": "multirun/x/y"}, "job": {"name": "train"}})
    assert sweep_group(hydra_cfg) == "multirun/x/y"
    hydra_cfg.mode = "RUN"
    assert sweep_group(hydra_cfg) == "train"
    hydra_cfg.mode, hydra_cfg.sweep.dir = "MULTIRUN", "/" + "d" * 300
    assert len(sweep_group(hydra_cfg)) == 128  # wandb's limit; the tail (the sweep's own folder) kept


def test_other_ranks_start_no_run(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    from fingermarks import loggers

    monkeypatch.setenv("RANK", "1")
    cfg = compose_cfg(["logger=wandb"], tmp_path)
    make = loggers.logger_factory(cfg.logger, cfg)
    logger = make("host")
    assert isinstance(logger, WandbLogger) and loggers._JOB is None
    assert not (tmp_path / "wandb").exists()


def test_a_run_file_still_being_written_is_read_again_not_misparsed(wandb_job, tmp_path):
    """wandb-core (another process) may still flush the run file when finish() returns: a torn last record
    is no DecodeError but a re-read, and a file that stays torn is a one-line error after the wait."""
    from fingermarks.loggers import _parse_wandb_records, read_offline_run

    out, _ = wandb_job
    run_dir = next((out / "wandb").glob("offline-run-*"))
    path = next(run_dir.glob("run-*.wandb"))
    raw = path.read_bytes()
    whole = _parse_wandb_records(raw)
    assert whole is not None and whole["complete"] and read_offline_run(run_dir)["complete"]
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / path.name).write_bytes(raw[:-1])
    assert _parse_wandb_records(raw[:-1]) is None
    with pytest.raises(ValueError, match="cut short"):
        read_offline_run(torn, wait=0.3)
