"""torchvision datasets read from a local root. splitaudit never downloads.

- ``cifar10``: labels class (10), animal (animal vs vehicle), brightness (tercile).
- ``mnist``: labels digit, parity, large, ink (see :mod:`audit.core.data.digit_labels`).
- ``celeba``: the 40 binary attributes (e.g. primary Smiling, private Male).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from audit.core.data import register_dataset
from audit.core.data.base import Dataset, LoadedData
from audit.core.data.digit_labels import digit_labels
from audit.core.errors import AuditInputError
from audit.core.registry import PluginParams

CIFAR_ANIMALS = {2, 3, 4, 5, 6, 7}  # bird cat deer dog frog horse


def _open(factory, root: Path, what: str, **kwargs):
    try:
        return factory(root=str(root), download=False, **kwargs)
    except (RuntimeError, FileNotFoundError) as err:
        raise AuditInputError(
            f"{what} not found under {str(root)!r} ({err}). splitaudit never downloads; "
            f"fetch it once with torchvision (download=True) and point dataset.root at that folder"
        ) from None


def _subset(n: int, max_samples: int | None, seed: int) -> torch.Tensor:
    if max_samples is None or max_samples >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:max_samples].sort().values


class _TorchvisionParams(PluginParams):
    root: Path
    train: bool = Field(True, description="read the official train part (else test)")
    max_samples: int | None = Field(None, ge=10)
    subset_seed: int = 0


class _TorchvisionSet(Dataset):
    """A published torchvision set: its contents are fixed by its name and part, so ``root`` (where the
    copy lies) stays out of the task key; the loaded data's fingerprint still catches a cached model
    trained on other rows (docs/caching-and-resume.md)."""

    @classmethod
    def key_params(cls, params: dict) -> dict:
        return {k: v for k, v in super().key_params(params).items() if k != "root"}


@register_dataset("cifar10")
class CIFAR10(_TorchvisionSet):
    """CIFAR-10 from a local root; labels class, animal, brightness."""

    class Params(_TorchvisionParams):
        primary: Literal["class", "animal", "brightness"] = "animal"
        private: list[Literal["class", "animal", "brightness"]] = Field(default_factory=lambda: ["class"])

    @classmethod
    def input_numel(cls, params: PluginParams) -> int:
        return 3 * 32 * 32

    def load(self, cache_dir: Path) -> LoadedData:
        from torchvision.datasets import CIFAR10 as TV

        p = self.params
        ds = _open(TV, p.root, "CIFAR-10", train=p.train)
        idx = _subset(len(ds.data), p.max_samples, p.subset_seed)
        x = torch.from_numpy(ds.data[idx.numpy()]).permute(0, 3, 1, 2).float() / 255.0
        cls = torch.tensor(ds.targets)[idx]
        mean = x.mean(dim=(1, 2, 3))
        brightness = torch.bucketize(mean, torch.quantile(mean, torch.tensor([1 / 3, 2 / 3])))
        animal = torch.tensor([int(c) in CIFAR_ANIMALS for c in cls.tolist()], dtype=torch.int64)
        return LoadedData(
            x=x,
            labels={"class": cls, "animal": animal, "brightness": brightness},
            classes={"class": list(ds.classes), "animal": ["vehicle", "animal"], "brightness": ["dark", "mid", "bright"]},
            primary=p.primary, private=list(p.private), meta={"kind": "image"},
        )


@register_dataset("mnist")
class MNIST(_TorchvisionSet):
    """MNIST from a local root; labels digit, parity, large, ink."""

    class Params(_TorchvisionParams):
        primary: Literal["digit", "parity", "large", "ink"] = "digit"
        private: list[Literal["digit", "parity", "large", "ink"]] = Field(default_factory=lambda: ["ink"])

    @classmethod
    def input_numel(cls, params: PluginParams) -> int:
        return 28 * 28

    def load(self, cache_dir: Path) -> LoadedData:
        from torchvision.datasets import MNIST as TV

        p = self.params
        ds = _open(TV, p.root, "MNIST", train=p.train)
        idx = _subset(len(ds.data), p.max_samples, p.subset_seed)
        x = ds.data[idx].unsqueeze(1).float() / 255.0
        labels, classes = digit_labels(x, ds.targets[idx].long())
        return LoadedData(x=x, labels=labels, classes=classes, primary=p.primary, private=list(p.private),
                          meta={"kind": "image"})


@register_dataset("celeba")
class CelebA(_TorchvisionSet):
    """CelebA from a local root; the 40 binary attributes, images resized to image_size."""

    class Params(_TorchvisionParams):
        primary: str = "Smiling"
        private: list[str] = Field(default_factory=lambda: ["Male"])
        image_size: int = Field(64, ge=8)
        max_samples: int | None = Field(20000, ge=10)

    @classmethod
    def input_numel(cls, params: "CelebA.Params") -> int:
        return 3 * params.image_size ** 2

    def load(self, cache_dir: Path) -> LoadedData:
        from torchvision.datasets import CelebA as TV
        from torchvision.transforms.functional import pil_to_tensor

        p = self.params
        ds = _open(TV, p.root, "CelebA", split="train" if p.train else "test", target_type="attr")
        idx = _subset(len(ds), p.max_samples, p.subset_seed)
        images = []
        for i in idx.tolist():
            img = pil_to_tensor(ds[i][0]).float().unsqueeze(0) / 255.0
            images.append(F.interpolate(img, size=(p.image_size, p.image_size), mode="bilinear", antialias=True))
        attrs = ds.attr[idx].long()
        names = [n for n in ds.attr_names if n]
        labels = {n: attrs[:, k] for k, n in enumerate(names)}
        classes = {n: ["no", "yes"] for n in names}
        return LoadedData(x=torch.cat(images), labels=labels, classes=classes, primary=p.primary,
                          private=list(p.private), meta={"kind": "image"})
