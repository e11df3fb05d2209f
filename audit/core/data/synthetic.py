"""A small image-like task with a private attribute planted at a known strength.

x = signal * T[y] + strength * P[s] + noise * eps, eps ~ N(0, 1) per pixel,
with y (primary) and s (private) independent and uniform. T and P are smooth
random patterns of unit RMS; every P is orthogonal to every T, so the private
attribute lives in directions the primary task does not need. With
``strength: 0`` the inputs (hence every feature) are independent of s: the
truth is "no leakage" and a sound attack must score chance.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field

from audit.core.data import register_dataset
from audit.core.data.base import Dataset, LoadedData
from audit.core.registry import PluginParams


def _smooth_patterns(k: int, channels: int, size: int, gen: torch.Generator) -> torch.Tensor:
    coarse = torch.randn(k, channels, 4, 4, generator=gen)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def planted_patterns(
    primary_classes: int, private_classes: int, channels: int, size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, P): (primary_classes, C, S, S) and (private_classes, C, S, S), unit RMS, P orthogonal to T."""
    gen = torch.Generator().manual_seed(seed)
    t = _smooth_patterns(primary_classes, channels, size, gen).flatten(1)
    p = _smooth_patterns(private_classes, channels, size, gen).flatten(1)
    q, _ = torch.linalg.qr(t.T)  # orthonormal basis of span(T)
    p = p - (p @ q) @ q.T
    t = t / t.pow(2).mean(dim=1, keepdim=True).sqrt()
    p = p / p.pow(2).mean(dim=1, keepdim=True).sqrt()
    shape = (channels, size, size)
    return t.reshape(-1, *shape), p.reshape(-1, *shape)


def bayes_private_accuracy(x: torch.Tensor, s: torch.Tensor, params: "Synthetic.Params") -> float:
    """Accuracy of the Bayes-optimal guess of s from x itself (an upper bound for any attack on
    any feature of x, by data processing). Exact posterior: since P is orthogonal to T,
    log p(s | x) = strength * <x, P_s> / noise^2 - strength^2 ||P_s||^2 / (2 noise^2) + const."""
    _, pat = planted_patterns(params.primary_classes, params.private_classes, params.channels,
                              params.image_size, params.generator_seed)
    flat = pat.flatten(1)
    logit = params.strength * x.flatten(1) @ flat.T - 0.5 * params.strength**2 * flat.pow(2).sum(1)
    return float((logit.argmax(1) == s).float().mean())


@register_dataset("synthetic")
class Synthetic(Dataset):
    """Image-like task with a planted private attribute of known strength (no download)."""

    class Params(PluginParams):
        n: int = Field(2000, ge=20, description="number of samples")
        image_size: int = Field(16, ge=4)
        channels: int = Field(1, ge=1)
        primary_classes: int = Field(2, ge=2)
        private_classes: int = Field(2, ge=2)
        signal: float = Field(0.5, ge=0, description="amplitude of the primary pattern")
        strength: float = Field(0.12, ge=0, description="amplitude of the private pattern; 0 = no leakage")
        noise: float = Field(1.0, gt=0, description="per-pixel noise std")
        generator_seed: int = Field(0, description="seed of the patterns and the samples (fixed truth)")

    @classmethod
    def input_numel(cls, params: "Synthetic.Params") -> int:
        return params.channels * params.image_size ** 2

    def load(self, cache_dir: Path) -> LoadedData:
        p = self.params
        t, pat = planted_patterns(p.primary_classes, p.private_classes, p.channels, p.image_size, p.generator_seed)
        gen = torch.Generator().manual_seed(p.generator_seed + 1)
        y = torch.randint(0, p.primary_classes, (p.n,), generator=gen)
        s = torch.randint(0, p.private_classes, (p.n,), generator=gen)
        eps = torch.randn(p.n, p.channels, p.image_size, p.image_size, generator=gen)
        x = p.signal * t[y] + p.strength * pat[s] + p.noise * eps
        return LoadedData(
            x=x.float(),
            labels={"label": y, "secret": s},
            classes={
                "label": [str(i) for i in range(p.primary_classes)],
                "secret": [str(i) for i in range(p.private_classes)],
            },
            primary="label",
            private=["secret"],
            meta={"kind": "image", "planted_strength": p.strength},
        )
