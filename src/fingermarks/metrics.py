"""Plain evaluation helpers shared by every stage: top-1 labels, probabilities and accuracy, no Trainer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics.classification import MulticlassAccuracy


@torch.no_grad()
def model_outputs(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> list[torch.Tensor]:
    """`model`'s outputs on `x` batch by batch (eval mode, CPU/GPU as the model sits), each on the CPU; the
    model's mode is restored. An empty `x` gives an empty list."""
    was_training = model.training
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device
    out = [model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return out


def predict_labels(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Top-1 labels of `model` on a batch of images (eval mode, CPU/GPU as the model sits)."""
    out = [logits.argmax(1) for logits in model_outputs(model, x, batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


@torch.no_grad()
def predict_probabilities(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """(N, m) softmax probabilities of `model` on a batch of images, in float32; the model is left in eval mode."""
    model.eval()
    return torch.cat([F.softmax(model(x[i : i + batch_size]).float(), 1) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 512) -> float:
    """Top-1 accuracy of `model` on `dataset` (items are (image, label))."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    metric = None
    for x, y in DataLoader(dataset, batch_size=batch_size):
        logits = model(x.to(device)).cpu()
        metric = metric or MulticlassAccuracy(logits.shape[1], average="micro")
        metric.update(logits, y)
    model.train(was_training)
    return float(metric.compute()) if metric is not None else float("nan")
