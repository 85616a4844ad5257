"""Removal attacks, one file each (collusion: one file for its three forms), behind one interface
(`Attack.run` yields attacked suspects along a strength axis) and over one supervised training
module (`AttackModule`); `attack=<name>` picks a config from `conf/attack/` (each starts from
`conf/attack/base.yaml`)."""

from __future__ import annotations

from fingermarks.attacks.adv_train import AdvTrain
from fingermarks.attacks.adv_train_pgd import AdvTrainPGD
from fingermarks.attacks.base import Attack, AttackerData, attacker_data, choose_victims
from fingermarks.attacks.collusion import CollusionAverage, CollusionFinetune, CollusionVote, VoteSuspect
from fingermarks.attacks.distill import Distill
from fingermarks.attacks.evasion import DetectorSuspect, Evasion
from fingermarks.attacks.extract import Extract
from fingermarks.attacks.fine_prune import FinePrune
from fingermarks.attacks.ftal import FTAL
from fingermarks.attacks.ftll import FTLL
from fingermarks.attacks.input_noise import InputNoise, NoisySuspect
from fingermarks.attacks.module import AttackModule
from fingermarks.attacks.onnx_int8 import OnnxInt8
from fingermarks.attacks.prune import Prune
from fingermarks.attacks.quantize import Quantize
from fingermarks.attacks.rtal import RTAL
from fingermarks.attacks.rtal_head import RTALHead

#: attack classes by their own name (a config preset such as `ftal_adam` instantiates one of these)
ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls for cls in (FTAL, FTLL, RTAL, RTALHead, Prune, FinePrune, AdvTrain, AdvTrainPGD, InputNoise, Quantize, OnnxInt8,
                              Distill, Extract, CollusionAverage, CollusionVote, CollusionFinetune, Evasion)
}

__all__ = [
    "ATTACKS",
    "AdvTrain",
    "AdvTrainPGD",
    "Attack",
    "AttackModule",
    "AttackerData",
    "CollusionAverage",
    "CollusionFinetune",
    "CollusionVote",
    "DetectorSuspect",
    "Distill",
    "Evasion",
    "Extract",
    "FTAL",
    "FTLL",
    "FinePrune",
    "InputNoise",
    "NoisySuspect",
    "OnnxInt8",
    "Prune",
    "Quantize",
    "RTAL",
    "RTALHead",
    "VoteSuspect",
    "attacker_data",
    "choose_victims",
]
