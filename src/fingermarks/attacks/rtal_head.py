"""RTAL of the whole head: re-initialise every layer after the convolutions, then fine-tune all layers.

The attack of a thief who knows where a head-only embedding (`method.embedding.train=head`) puts the
watermark: the fully connected layers. They are re-drawn and re-learnt on the attacker's images, while the
convolutions, which every user's copy shares with the host, are kept. Against a whole-model embedding it
asks how much of the mark the convolutions hold. On a model whose head is its final layer alone (ResNet,
VGG, GoogLeNet) it is RTAL.
"""

from __future__ import annotations

from torch import nn

from fingermarks.attacks.finetune import FineTuneAttack
from fingermarks.embedding.head import head_layers
from fingermarks.errors import ConfigError
from fingermarks.models import last_layer


class RTALHead(FineTuneAttack):
    """Every layer of the head (`embedding.head.head_layers`) is re-drawn (PyTorch's default init, under the
    attack's seed) before training; epoch 0 of the axis is the re-initialised, untrained model."""

    name = "rtal_head"

    def prepare(self, model: nn.Module) -> None:
        try:
            layers = head_layers(model)
        except ConfigError:  # no Flatten to split at: the final layer is the head, as for RTAL
            layers = [last_layer(model)]
        for layer in layers:
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
