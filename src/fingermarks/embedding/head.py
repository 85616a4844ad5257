"""Head-only embedding: a user's copy differs from the host only in the layers after the convolutions.

The paper fine-tunes every weight of the copy. Most of a small CNN's training cost is its convolutions
(on mnist5k's small CNN, 98 % of the multiply-adds), and the clean images an embedding epoch trains on
to keep the accuracy pass through the same frozen convolutions for every user. With the convolutional
trunk frozen, its outputs for the owner's training images are computed once per host and shared by all
users, and an embedding epoch only trains the head on them. The triggers are passed through the trunk once,
their DeepFool neighbours are searched in the head's input space, and only their noisy copies go through
the trunk each epoch (a few hundred images, no weight gradient).

The split is the last `nn.Flatten` of the model's `features`: what comes after it (and the classifier)
is the head; `embedding.head_from` moves it into the convolutions. A model whose head would be its final
layer alone (ResNet, VGG and GoogLeNet end in pooling, Flatten, classifier) is refused: re-training the
last layer (RTAL) erases such a watermark by construction. The trunk's batch-norm statistics stay the
host's (it runs in eval mode), and the clean images are taken without augmentation (their trunk outputs
are computed once). Measured on mnist5k (README "Head-only embedding and the dense-head RTAL"): a tenth of
the whole-copy cost and a smaller accuracy drop, but fewer users traced after fine-pruning and long Adam
fine-tuning: an option, not the default.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from fingermarks.errors import ConfigError
from fingermarks.metrics import model_outputs


def _cut(model: nn.Module, start: int | None = None) -> int:
    """Index of the first trained layer of `model.features`: `start`, or the first after its last Flatten."""
    features = getattr(model, "features", None)
    flat = [i for i, m in enumerate(features) if isinstance(m, nn.Flatten)] if isinstance(features, nn.Sequential) else []
    if not flat or not hasattr(model, "classifier") or not hasattr(model, "normalize"):
        raise ConfigError(f"method.embedding.train=head needs a model whose `features` is a Sequential with a Flatten; "
                          f"{type(model).__name__} has none: use method.embedding.train=all")
    if start is None:
        return flat[-1] + 1
    if not 1 <= start <= len(features):
        raise ConfigError(f"method.embedding.head_from must be a layer index of {type(model).__name__}.features in "
                          f"[1, {len(features)}] (0 trains everything: train=all), got {start}")
    return int(start)


def head_layers(model: nn.Module) -> list[nn.Module]:
    """The layers after the last Flatten of `model.features`, and its classifier: what a head-only embedding trains
    (and what an attacker who knows that re-initialises, `attacks.RTALHead`)."""
    cut = _cut(model)  # raises ConfigError before `model.features` is read
    return [*model.features[cut:], model.classifier]


def split_head(model: nn.Module, start: int | None = None) -> tuple[nn.Sequential, nn.Sequential]:
    """(trunk, head) sharing `model`'s modules: `head(trunk(x)) == model(x)` for an `ImageClassifier` whose
    `features` is a Sequential with a Flatten; training `head` trains `model`. The head starts at
    `model.features[start]` (`embedding.head_from`), by default after the last Flatten."""
    cut = _cut(model, start)
    if not any(p.numel() for m in model.features[cut:] for p in m.parameters()):
        # RTAL re-initialises the final layer: a watermark held by it alone is erased by construction
        raise ConfigError(f"method.embedding.train=head: {type(model).__name__}'s head would be its final layer alone "
                          f"(nothing after its Flatten), which re-training the last layer erases; use method.embedding.train=all")
    return nn.Sequential(model.normalize, *model.features[:cut]), nn.Sequential(*model.features[cut:], model.classifier)


def head_applies(model: nn.Module) -> bool:
    """Whether `train: auto` trains `model`'s head only: it splits (`split_head`) and its trunk has weights to share."""
    try:
        trunk, _ = split_head(model)
    except ConfigError:
        return False
    return any(True for _ in trunk.parameters())


def freeze(trunk: nn.Module) -> None:
    """No weight gradient for the trunk (an input gradient still flows through it, for DeepFool)."""
    for p in trunk.parameters():
        p.requires_grad_(False)


def encode(trunk: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The trunk's outputs for `x` in eval mode (frozen batch-norm statistics), on the trunk's device, returned on the CPU."""
    out = model_outputs(trunk, x, batch_size)
    return torch.cat(out) if out else x.new_empty(0)


def channel_order(trunk: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The channels of the trunk's last feature map, least active on `features` (its outputs for the clean images)
    first: the order in which fine-pruning removes them (attacks.FinePrune ranks the last convolution's channels by
    their mean activation on clean images). The flattened outputs are channel-major, as `nn.Flatten` lays them out."""
    maps = [m for m in trunk.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    if not maps:
        raise ConfigError("method.embedding.prune_copies needs a trunk that ends in convolutions (its channels are pruned)")
    channels = maps[-1].out_channels if isinstance(maps[-1], nn.Conv2d) else maps[-1].num_features
    if features.dim() != 2 or features.shape[1] % channels:
        raise ConfigError(f"method.embedding.prune_copies: trunk outputs of shape {tuple(features.shape)} are not "
                          f"{channels} flattened channels")
    return torch.argsort(features.view(len(features), channels, -1).mean((0, 2)), stable=True)


def pruned_copies(features: torch.Tensor, order: torch.Tensor, copies: int, max_rate: float,
                  generator: torch.Generator) -> torch.Tensor:
    """`copies` copies of each row of `features` (trunk outputs, channel-major), each with the least active
    channels of `order` zeroed, a share of them drawn uniformly from [0, max_rate] per copy: what a fine-pruned
    trunk gives the head, so the user's targets are taught on the channels that pruning keeps."""
    x = features.repeat(copies, 1)
    channels = len(order)
    removed = (torch.rand(len(x), generator=generator) * max_rate * channels).floor().long()  # channels zeroed per row
    rank = torch.empty_like(order)
    rank[order] = torch.arange(channels)  # 0 = least active
    keep = (rank.view(1, -1) >= removed.view(-1, 1)).to(x.dtype)  # (rows, channels)
    return (x.view(len(x), channels, -1) * keep.unsqueeze(2)).view_as(x)


def keep_largest(w: torch.Tensor, rate: float) -> torch.Tensor:
    """`w` with the smallest-|w| share `rate` of each matrix (its last two dimensions: a stack of users' weights is
    pruned user by user) held at zero, as magnitude pruning leaves it; the gradient reaches the kept weights only."""
    k = int(rate * w.shape[-2] * w.shape[-1])
    if not k:
        return w
    cut = w.detach().abs().flatten(-2).kthvalue(k, dim=-1).values[..., None, None]
    return w * (w.detach().abs() > cut)


def linear_weights(head: nn.Module) -> list[str]:
    """The parameter names of the head's Linear weight matrices (what magnitude pruning of a dense head zeroes)."""
    return [f"{name}.weight" for name, module in head.named_modules() if isinstance(module, nn.Linear)]


def magnitude_pruned_forward(head: nn.Module, x: torch.Tensor, rate: float) -> torch.Tensor:
    """`head(x)` with the smallest-|w| share `rate` of every weight matrix of its Linear layers held at zero (biases
    kept), as per-layer magnitude pruning leaves them; the gradient reaches the kept weights only."""
    if rate <= 0:
        return head(x)
    weights = dict(head.named_parameters())
    pruned = {name: keep_largest(weights[name], rate) for name in linear_weights(head)}
    return torch.func.functional_call(head, pruned, (x,), strict=False)


def hidden_layer(head: nn.Module) -> nn.Linear:
    """The head's first Linear layer, which a ReLU follows: its units are the ones `dormant_units` chooses from."""
    layers = list(head.modules())
    for i, m in enumerate(layers[:-1]):
        if isinstance(m, nn.Linear):
            if isinstance(layers[i + 1], nn.ReLU):
                return m
            break
    raise ConfigError("method.embedding.dormant_units needs a head whose first layer is a Linear followed by a ReLU")


@torch.no_grad()
def dormant_units(head: nn.Module, features: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` hidden units of the head least active (mean ReLU output) on `features`, the clean images' trunk outputs."""
    layer = hidden_layer(head)
    if not 0 < count < layer.out_features:
        raise ConfigError(f"method.embedding.dormant_units must be in [1, {layer.out_features - 1}], got {count}")
    activity = torch.cat([layer(chunk).clamp_min(0).mean(0, keepdim=True) * len(chunk) for chunk in features.split(1024)]).sum(0)
    return torch.argsort(activity, stable=True)[:count]


def trunk_digest(trunk: nn.Module) -> str:
    """A checksum of the trunk's weights and buffers: two trunks with the same digest give the same features."""
    h = hashlib.sha256()
    for name, t in trunk.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
