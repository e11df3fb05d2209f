"""``noise``: additive Gaussian or Laplace noise on the split feature (Osia et al.).

The noise standard deviation is ``scale`` times the feature's standard
deviation (one scalar over all elements, measured on the task-train split), for
both distributions (Laplace with b = sigma / sqrt(2)). A copy of the cloud part
is fine-tuned on noisy features so that utility is honest. Noise draws are the
defense's secret: seeded per audit cell, fresh for every released sample.
"""
from __future__ import annotations

import copy
import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from audit.training import fit_classifier
from defenses import register_defense
from defenses.base import Defense, FitContext


class AddNoise(nn.Module):
    """Adds zero-mean noise of std ``sigma`` (Gaussian or Laplace); active in training mode only
    unless ``always`` is set."""

    def __init__(self, sigma: float, distribution: str, generator: torch.Generator | None = None, always: bool = False):
        super().__init__()
        self.sigma, self.distribution, self.generator, self.always = sigma, distribution, generator, always

    def sample(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        if self.distribution == "gaussian":
            noise = torch.randn(shape, generator=self.generator)
        else:  # Laplace by inverse CDF, std = sigma
            u = torch.rand(shape, generator=self.generator) - 0.5
            noise = -torch.sign(u) * torch.log1p(-2 * u.abs()) / math.sqrt(2)
        return (self.sigma * noise).to(device)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.sigma == 0 or not (self.training or self.always):
            return z
        return z + self.sample(z.shape, z.device)


@register_defense("noise")
class Noise(Defense):
    """Additive Gaussian/Laplace noise of std scale x feature std; cloud fine-tuned on noisy features."""

    class Params(Defense.Params):
        scale: float = Field(1.0, ge=0, description="noise std relative to the feature std")
        distribution: Literal["gaussian", "laplace"] = "gaussian"
        finetune_epochs: int = Field(2, ge=0, description="epochs of cloud fine-tuning on noisy features")
        lr: float = Field(5e-4, gt=0)
        batch_size: int = Field(128, ge=1)

    def fit(self, ctx: FitContext) -> None:
        p = self.params
        self.edge = ctx.split.edge.eval()
        train_features = ctx.split.features("train")
        self.sigma = p.scale * float(train_features.std())
        self.cloud = copy.deepcopy(ctx.split.cloud)
        if p.finetune_epochs > 0 and self.sigma > 0:
            noisy_cloud = nn.Sequential(AddNoise(self.sigma, p.distribution), self.cloud)
            fit_classifier(
                noisy_cloud, train_features, ctx.train.y, ctx.num_classes,
                settings=ctx.settings, epochs=p.finetune_epochs, batch_size=p.batch_size,
                lr=p.lr, seed=ctx.seed,
            )
        self.cloud.eval()
        self.noise = AddNoise(self.sigma, p.distribution, torch.Generator().manual_seed(ctx.seed), always=True)

    @torch.no_grad()
    def release(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        z = features if features is not None else self.edge(x)
        return self.noise(z)
