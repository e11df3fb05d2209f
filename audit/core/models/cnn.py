"""Small convolutional and fully connected models with named cut points.

``small_cnn`` follows the 64-64-pool-128-128-pool CIFAR nets of the inversion
literature (e.g. He et al., ACSAC 2019): blocks of 3x3 conv (+BN) + ReLU
stages named conv1, conv2, ..., each block closed by a 2x2 max-pool named
pool1, pool2, ...; then fully connected stages fc1, ... and the logits.
"""
from __future__ import annotations

from pydantic import Field
from torch import nn

from audit.core.errors import AuditInputError
from audit.core.models import register_model
from audit.core.models.base import ModelFactory, SplitModel
from audit.core.registry import PluginParams


@register_model("small_cnn")
class SmallCNN(ModelFactory):
    """Conv blocks (conv-conv-pool, ...) then fully connected layers; cut at any conv/pool/fc stage."""

    class Params(PluginParams):
        widths: list[int] = Field(default_factory=lambda: [64, 128, 128], min_length=1, description="channels per block")
        convs_per_block: int = Field(2, ge=1)
        fc: list[int] = Field(default_factory=lambda: [512], description="hidden fully connected widths")
        batch_norm: bool = True

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> SplitModel:
        if len(input_shape) != 3:
            raise AuditInputError(f"small_cnn needs image inputs (C, H, W), got shape {input_shape}")
        p = self.params
        channels, height, width = input_shape
        if min(height, width) < 2 ** len(p.widths):
            raise AuditInputError(
                f"small_cnn with {len(p.widths)} pooling blocks needs inputs of at least "
                f"{2 ** len(p.widths)}x{2 ** len(p.widths)}, got {height}x{width}"
            )
        stages: list[tuple[str, nn.Module]] = []
        conv = 0
        for block, out in enumerate(p.widths, start=1):
            for _ in range(p.convs_per_block):
                conv += 1
                layers = [nn.Conv2d(channels, out, 3, padding=1)]
                layers += [nn.BatchNorm2d(out)] if p.batch_norm else []
                stages.append((f"conv{conv}", nn.Sequential(*layers, nn.ReLU())))
                channels = out
            stages.append((f"pool{block}", nn.MaxPool2d(2)))
            height, width = height // 2, width // 2
        features = channels * height * width
        for i, hidden in enumerate(p.fc, start=1):
            flatten = [nn.Flatten()] if i == 1 else []
            stages.append((f"fc{i}", nn.Sequential(*flatten, nn.Linear(features, hidden), nn.ReLU())))
            features = hidden
        head = [nn.Flatten()] if not p.fc else []
        stages.append(("logits", nn.Sequential(*head, nn.Linear(features, num_classes))))
        return SplitModel(stages, name="small_cnn")


@register_model("mlp")
class MLP(ModelFactory):
    """Fully connected network for tabular (or flattened) inputs; cut points fc1, fc2, ..."""

    class Params(PluginParams):
        hidden: list[int] = Field(default_factory=lambda: [128, 64], min_length=1)
        dropout: float = Field(0.0, ge=0, lt=1)

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> SplitModel:
        features = 1
        for d in input_shape:
            features *= d
        stages: list[tuple[str, nn.Module]] = []
        for i, hidden in enumerate(self.params.hidden, start=1):
            layers = [nn.Flatten()] if i == 1 else []
            layers += [nn.Linear(features, hidden), nn.ReLU()]
            layers += [nn.Dropout(self.params.dropout)] if self.params.dropout else []
            stages.append((f"fc{i}", nn.Sequential(*layers)))
            features = hidden
        stages.append(("logits", nn.Linear(features, num_classes)))
        return SplitModel(stages, name="mlp")
