"""Removal attacks, one file each, behind one interface (`Attack.run` yields attacked suspects along
a strength axis); `attack=<name>` picks one from `conf/attack/`."""

from __future__ import annotations

from fingermarks.attacks.adv_train import AdvTrain
from fingermarks.attacks.base import Attack, AttackerData, attacker_data
from fingermarks.attacks.distill import Distill
from fingermarks.attacks.ftal import FTAL
from fingermarks.attacks.ftll import FTLL
from fingermarks.attacks.input_noise import InputNoise, NoisySuspect
from fingermarks.attacks.prune import Prune
from fingermarks.attacks.quantize import Quantize
from fingermarks.attacks.rtal import RTAL

ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls for cls in (FTAL, FTLL, RTAL, Prune, AdvTrain, InputNoise, Quantize, Distill)
}

__all__ = [
    "ATTACKS",
    "AdvTrain",
    "Attack",
    "AttackerData",
    "Distill",
    "FTAL",
    "FTLL",
    "InputNoise",
    "NoisySuspect",
    "Prune",
    "Quantize",
    "RTAL",
    "attacker_data",
]
