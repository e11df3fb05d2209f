"""``torchvision``: any torchvision classification model by architecture name, cut at any submodule.

``arch`` is looked up in torchvision's own model registry
(``torchvision.models.list_models(module=torchvision.models)``: resnet50,
vgg16_bn, mobilenet_v3_small, efficientnet_b0, convnext_tiny, ...), never
imported from a string. Weights come from a local state_dict file
(``weights:``, read with ``weights_only=True``; never downloaded); a
classifier with another number of classes is re-initialised with a warning.
Cut points are submodule names (``layer3``, ``features.6``; torch.fx, see
:mod:`audit.core.models.fx_split`). A first convolution expecting another number
of input channels than the data has is replaced (re-initialised).

    model: {name: torchvision, arch: resnet50, weights: r50_utkface.pt}
    model_label: resnet50
    cut_points: [layer2, layer3]
    training: {epochs: 0}        # audit the weights as they are
"""
from __future__ import annotations

import difflib

from pydantic import Field
from torch import nn

from audit.core.errors import AuditInputError
from audit.core.models import register_model
from audit.core.models.fx_split import ModuleModel


def classification_archs() -> list[str]:
    """torchvision's classification architectures."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _adapt_first_conv(module: nn.Module, channels: int) -> None:
    """Replace the first Conv2d by one taking ``channels`` inputs, when it takes another number."""
    for name, conv in module.named_modules():
        if isinstance(conv, nn.Conv2d):
            if conv.in_channels != channels:
                parent = module.get_submodule(name.rpartition(".")[0]) if "." in name else module
                setattr(parent, name.rpartition(".")[2], nn.Conv2d(
                    channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias=conv.bias is not None,
                ))
            return


@register_model("torchvision")
class TorchvisionModel(ModuleModel):
    """Any torchvision classification model (arch from torchvision's registry); cut at any submodule."""

    class Params(ModuleModel.Params):
        arch: str = Field("resnet18", description="torchvision.models.list_models(module=torchvision.models) name")

    def module(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        import torchvision

        archs = classification_archs()
        arch = self.params.arch
        if arch not in archs:
            close = difflib.get_close_matches(arch, archs, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise AuditInputError(
                f"unknown torchvision architecture {arch!r}{hint}; see torchvision.models.list_models(module=torchvision.models)"
            )
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)

    def adapt(self, module: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
        if len(input_shape) != 3:
            raise AuditInputError(f"torchvision models need image inputs (C, H, W), got shape {input_shape}")
        _adapt_first_conv(module, input_shape[0])
        return module
