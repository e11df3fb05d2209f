"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from audit.core.data import register_dataset
from audit.core.data.base import Dataset, LoadedData
from audit.core.data.digit_labels import digit_labels
from audit.core.registry import PluginParams

DigitLabel = Literal["digit", "parity", "large", "ink"]


@register_dataset("digits")
class Digits(Dataset):
    """scikit-learn 8x8 digits; labels digit, parity, large (>=5), ink (stroke-weight tercile)."""

    class Params(PluginParams):
        primary: DigitLabel = "digit"
        private: list[DigitLabel] = Field(default_factory=lambda: ["ink"])

    @classmethod
    def input_numel(cls, params: PluginParams) -> int:
        return 8 * 8

    def load(self, cache_dir: Path) -> LoadedData:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
        digits = torch.tensor(bunch.target, dtype=torch.int64)
        labels, classes = digit_labels(images, digits)
        return LoadedData(
            x=images, labels=labels, classes=classes,
            primary=self.params.primary, private=list(self.params.private),
            meta={"kind": "image"},
        )
