"""FTAL: fine-tune all layers of the stolen model on the attacker's labelled images (paper 5.2.3)."""

from __future__ import annotations

from fingermarks.attacks.finetune import FineTuneAttack, FineTuneModule


class FTALModule(FineTuneModule):
    """Every parameter trains; BatchNorm statistics and dropout follow the attacker's data."""


class FTAL(FineTuneAttack):
    name = "ftal"
    module = FTALModule
