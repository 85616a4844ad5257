"""Config composition: every group composes and instantiates what it names."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from conftest import CONF, compose_cfg

DATA = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def test_groups_are_complete():
    assert DATA == ["cifar10", "cifar100", "digits", "imagenet", "mnist5k"]
    assert MODELS == ["bn_cnn", "googlenet", "lenet5", "mlp", "resnet18", "resnet34", "resnet8", "small_cnn", "vgg11"]


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_builds_for_the_data(model, tmp_path):
    from fingermarks.training.fit import build_classifier
    from fingermarks.data import DigitsDataModule

    cfg = compose_cfg([f"model={model}"], tmp_path)
    dm = DigitsDataModule()
    net = build_classifier(cfg.model, dm)
    assert net.num_classes == 10 and tuple(net.input_shape) == (1, 8, 8)


@pytest.mark.parametrize("data", DATA)
def test_every_data_config_composes(data, tmp_path):
    cfg = compose_cfg([f"data={data}"], tmp_path)
    assert cfg.data._target_.startswith("fingermarks.data.")


def test_default_config_is_the_embedded_chain(tmp_path):
    cfg = compose_cfg([], tmp_path)
    assert cfg.data._target_.endswith("MNIST5kDataModule") and cfg.model._target_.endswith("SmallCNN")
    assert cfg.method._target_ == "fingermarks.methods.FingerMarks" and cfg.users == 4
    assert cfg.trainer.accelerator == "cpu" and cfg.get("logger") is None


@pytest.mark.parametrize("trainer,accelerator,devices", [("cpu", "cpu", 1), ("gpu", "gpu", 1), ("ddp", "gpu", 2)])
def test_trainer_configs(trainer, accelerator, devices, tmp_path):
    cfg = compose_cfg([f"trainer={trainer}"], tmp_path)
    assert cfg.trainer.accelerator == accelerator and cfg.trainer.devices == devices
    assert cfg.trainer.channels_last is (trainer == "cpu")  # measured on the CPU only (training.layout)
    if trainer == "ddp":
        assert cfg.trainer.strategy == "ddp"
        assert compose_cfg(["trainer=ddp", "trainer.devices=4"], tmp_path).trainer.devices == 4
    if trainer == "cpu":
        factory = instantiate(cfg.trainer)
        t = factory(max_epochs=1, logger=False, enable_progress_bar=False)
        assert t.max_epochs == 1 and t.default_root_dir == str(tmp_path)


def test_csv_and_wandb_loggers_instantiate_offline(tmp_path):
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    from fingermarks.loggers import finish, logger_factory

    csv = logger_factory(compose_cfg(["logger=csv"], tmp_path).logger)("host")
    assert isinstance(csv, CSVLogger) and csv.save_dir == str(tmp_path)
    cfg = compose_cfg(["logger=wandb"], tmp_path)
    assert cfg.logger.mode == "offline"
    wandb_logger = logger_factory(cfg.logger)("host")
    assert isinstance(wandb_logger, WandbLogger)
    finish()
    assert compose_cfg(["logger=wandb_online"], tmp_path).logger.mode == "online"


def test_slurm_launcher_composes_with_overridable_keys(tmp_path):
    cfg = compose_cfg(["hydra/launcher=slurm", "hydra.launcher.partition=a100", "hydra.launcher.gpus_per_node=4",
                       "hydra.launcher.timeout_min=60"], tmp_path)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("a100", 4, 60)
    assert launcher.tasks_per_node == 4  # one task per GPU: SLURM starts the ranks


def test_users_count_or_names():
    from fingermarks.errors import ConfigError
    from fingermarks.pipeline import user_names

    assert user_names(3) == ["user1", "user2", "user3"]
    assert user_names(["alice", "bob"]) == ["alice", "bob"]
    with pytest.raises(ConfigError):
        user_names(["a", "a"])
    with pytest.raises(ConfigError):
        user_names("alice")


@pytest.mark.parametrize("preset,data,model", [("paper_cifar10", "CIFAR10DataModule", "GoogLeNet"),
                                               ("paper_cifar100", "CIFAR100DataModule", "ResNet34"),
                                               ("paper_imagenet", "ImageFolderDataModule", "VGG11")])
def test_paper_presets_compose(preset, data, model, tmp_path):
    cfg = compose_cfg([f"experiment={preset}"], tmp_path)
    assert cfg.data._target_.endswith(data) and cfg.model._target_.endswith(model)
    assert cfg.method.n_triggers == 30 and cfg.trainer.accelerator == "gpu" and cfg.uniqueness.enabled


def test_robustness_preset_sweeps_every_attack(tmp_path):
    cfg = compose_cfg(["experiment=robustness"], tmp_path)
    attacks = cfg.hydra.sweeper.params.attack.split(",")
    for core in ["ftal", "ftll", "rtal", "prune", "prune_layer", "fine_prune", "adv_train", "adv_train_adam", "adv_train_pgd", "input_noise",
                 "quantize", "onnx_int8", "distill", "collude_average", "collude_vote", "evasion"]:
        assert core in attacks
    assert len(attacks) == len(set(attacks))
    for name in attacks:
        attack = compose_cfg([f"attack={name}"], tmp_path).attack
        assert attack._target_.startswith("fingermarks.attacks.") and attack.default in attack.strengths


@pytest.mark.parametrize("override", ["method.generation.tiebreak=referenceprob", "method.generation.target=leastlikely"])
def test_fingermarks_rejects_unknown_generation_choices(override, tmp_path):
    from fingermarks.errors import ConfigError, user_error

    cfg = compose_cfg([override], tmp_path)
    with pytest.raises(Exception) as info:  # Hydra wraps it; the entry points print the cause as one line
        instantiate(cfg.method)
    cause = user_error(info.value)
    assert isinstance(cause, ConfigError) and override.split("=")[0] in str(cause)


def test_fingermarks_presets_differ_from_the_default_only_where_they_say(tmp_path):
    """Each preset's file states what it changes; everything else is the default's (one base config)."""
    def embedding(method: str) -> dict:
        return dict(compose_cfg([f"method={method}"], tmp_path).method.embedding)

    default = embedding("fingermarks")
    assert (default["train"], default["stack_users"], default["prune_copies"], default["p0"], default["p_max"]) == ("auto", 4, 2, 1.0, 1.0)
    assert (default["deepfool_candidates"], default["deepfool_max_iter"], default["noise_copies"], default["noise_std"]) == (3, 10, 2, 0.3)
    assert default["optimizer"]["lr"] == 2e-3 and default["scheduler"]["gamma"] == 0.8
    assert (default["plateau_epochs"], default["plateau_prob"], default["plateau_delta"]) == (2, 0.6, 0.02)
    assert default["copies_per"] == "key" and default["distill"] == 0.3
    # the whole copy at the settings it was measured with (the default before the stacked head): the head recipe undone
    whole = embedding("fingermarks_whole")
    recipe = {"train", "p0", "dp", "p_max", "readmit_prob", "done_prob", "batch_size", "noise_copies", "noise_std",
              "prune_copies", "stack_users", "plateau_epochs", "distill", "optimizer"}
    assert {k for k in default if whole[k] != default[k]} == recipe
    # ... to the values it was measured with (the default until c53434e, the paper/refs30/noise presets' base)
    assert {k: whole[k] for k in recipe - {"optimizer"}} == {
        "train": "all", "p0": 0.3, "dp": 0.1, "p_max": 0.5, "readmit_prob": 0.6, "done_prob": 0.6, "batch_size": 64,
        "noise_copies": 1, "noise_std": 0.2, "prune_copies": 0, "stack_users": 1, "plateau_epochs": 0, "distill": 0.0}
    assert dict(whole["optimizer"]) == {**default["optimizer"], "lr": 1e-3}
    # the first stacked-head preset: the default's head with the whole copy's clean schedule and noisy copy
    fast = embedding("fingermarks_fast")
    assert {k for k in default if fast[k] != default[k]} == recipe - {"readmit_prob", "done_prob", "prune_copies", "stack_users"} | {"copies_per"}
    assert fast["copies_per"] == "group"  # as it was measured
    assert fast["train"] == "head" and fast["noise_std"] == whole["noise_std"] and fast["p0"] == whole["p0"]
    # every preset measured before the decaying learning rate keeps the constant Adam 3e-4 it was measured with;
    # each is the whole copy's settings with what its file states
    earlier = {"optimizer", "scheduler"}
    noise = embedding("fingermarks_noise")
    assert {k for k in whole if noise[k] != whole[k]} == {"noise_copies", "noise_std"} | earlier
    assert (noise["noise_copies"], noise["noise_std"]) == (2, 0.3)
    refs30 = embedding("fingermarks_refs30")  # the embedding of the time it was the default
    assert {k for k in whole if refs30[k] != whole[k]} == {"deepfool_candidates", "deepfool_max_iter", "validate", "noise_copies", "noise_std"} | earlier
    assert (refs30["deepfool_candidates"], refs30["deepfool_max_iter"], refs30["validate"], refs30["noise_copies"]) == (10, 50, True, 0)
    paper = embedding("fingermarks_paper")  # the paper's embedding: no noisy copies
    assert {k for k in whole if paper[k] != whole[k]} == {"noise_copies", "noise_std"} | earlier and paper["noise_copies"] == 0
    for preset in (noise, refs30, paper):
        assert preset["scheduler"] is None and dict(preset["optimizer"]) == {**whole["optimizer"], "lr": 3e-4}
