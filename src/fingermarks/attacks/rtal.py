"""RTAL: re-initialise the last layer, then fine-tune all layers on the attacker's images (paper 5.2.3)."""

from __future__ import annotations

from fingermarks.attacks.finetune import FineTuneAttack, FineTuneModule
from fingermarks.models import last_layer


class RTALModule(FineTuneModule):
    """The final linear layer is re-drawn (PyTorch's default init, under the attack's seed) before training."""

    def prepare(self) -> None:
        last_layer(self.model).reset_parameters()


class RTAL(FineTuneAttack):
    """Epoch 0 of the axis is the re-initialised, untrained model (chance accuracy)."""

    name = "rtal"
    module = RTALModule
