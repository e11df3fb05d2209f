"""torchvision ResNet-18 and VGG-11 with named cut points.

Random initialisation, or a user-supplied weights file (a state_dict, loaded
with ``torch.load(..., weights_only=True)``; never downloaded). When the file's
classifier has another number of classes than the task, the classifier is
re-initialised with a warning.

ResNet-18 cut points: conv1, pool1, layer1, layer2, layer3, layer4, avgpool.
VGG-11 cut points: conv1, pool1, conv2, pool2, conv3, conv4, pool3, conv5,
conv6, pool4, conv7, conv8, pool5, avgpool, fc1, fc2.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from pydantic import Field
from torch import nn

from audit.core.errors import AuditInputError
from audit.core.models import register_model
from audit.core.models.base import ModelFactory, SplitModel
from audit.core.registry import PluginParams


class _TorchvisionParams(PluginParams):
    weights: Path | None = Field(None, description="state_dict file (weights_only load); none = random init")


def load_weights(model: nn.Module, path: Path, classifier_prefix: str) -> None:
    """Load a state_dict file into ``model``; drop mismatched classifier tensors with a warning."""
    if not path.is_file():
        raise AuditInputError(f"weights file {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise AuditInputError(f"cannot load weights from {path} with weights_only=True: {err}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise AuditInputError(f"{path} does not hold a state_dict (got {type(state).__name__})")
    own = model.state_dict()
    dropped = [k for k, v in state.items() if k.startswith(classifier_prefix) and k in own and own[k].shape != v.shape]
    for k in dropped:
        del state[k]
    if dropped:
        warnings.warn(f"{path}: classifier {classifier_prefix!r} has another number of classes; re-initialised", stacklevel=2)
    try:
        model.load_state_dict(state, strict=not dropped)
    except RuntimeError as err:
        raise AuditInputError(f"{path} does not fit this model: {err}") from None


def _adapt_input_conv(conv: nn.Conv2d, channels: int) -> nn.Conv2d:
    if conv.in_channels == channels:
        return conv
    return nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)


@register_model("resnet18")
class ResNet18(ModelFactory):
    """torchvision ResNet-18; cut at conv1, pool1, layer1..layer4, avgpool."""

    key_files = ("weights",)

    class Params(_TorchvisionParams):
        pass

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> SplitModel:
        from torchvision.models import resnet18

        m = resnet18(num_classes=num_classes)
        if self.params.weights is not None:
            load_weights(m, self.params.weights, "fc.")
        m.conv1 = _adapt_input_conv(m.conv1, input_shape[0])
        stages = [
            ("conv1", nn.Sequential(m.conv1, m.bn1, m.relu)),
            ("pool1", m.maxpool),
            ("layer1", m.layer1), ("layer2", m.layer2), ("layer3", m.layer3), ("layer4", m.layer4),
            ("avgpool", nn.Sequential(m.avgpool, nn.Flatten())),
            ("logits", m.fc),
        ]
        return SplitModel(stages, name="resnet18")


@register_model("vgg11")
class VGG11(ModelFactory):
    """torchvision VGG-11; cut at each conv (with its ReLU), each pool, avgpool, fc1, fc2."""

    key_files = ("weights",)

    class Params(_TorchvisionParams):
        pass

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> SplitModel:
        from torchvision.models import vgg11

        m = vgg11(num_classes=num_classes)
        if self.params.weights is not None:
            load_weights(m, self.params.weights, "classifier.6.")
        layers = list(m.features)
        layers[0] = _adapt_input_conv(layers[0], input_shape[0])
        stages: list[tuple[str, nn.Module]] = []
        n_conv = n_pool = 0
        for layer in layers:
            if isinstance(layer, nn.Conv2d):
                n_conv += 1
                stages.append((f"conv{n_conv}", nn.Sequential(layer)))
            elif isinstance(layer, nn.MaxPool2d):
                n_pool += 1
                stages.append((f"pool{n_pool}", layer))
            else:  # ReLU / BatchNorm belong to the conv before them
                stages[-1][1].append(layer)
        c = m.classifier
        stages += [
            ("avgpool", nn.Sequential(m.avgpool, nn.Flatten())),
            ("fc1", nn.Sequential(c[0], c[1], c[2])),
            ("fc2", nn.Sequential(c[3], c[4], c[5])),
            ("logits", c[6]),
        ]
        return SplitModel(stages, name="vgg11")
