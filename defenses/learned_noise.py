"""``learned_noise``: a learned per-element noise distribution (after Shredder, Mireshghallah et al., ASPLOS 2020).

The device adds zero-mean noise sigma * eps (eps Gaussian or Laplace, unit
std, fresh per sample) with one learned scale per feature element
(sigma: the feature's shape). The scales are trained (Lightning) with the
cloud part frozen to keep the task while making the noise as large as it can:

    loss = cross-entropy(cloud(z + sigma * eps), y) - weight * mean(log(sigma / s))

with s the feature's std on the task-train split (so the magnitude term is
scale-free: one unit of it is a factor e on every scale). Scales start at
``init_scale`` x s and are capped at ``max_scale`` x s. Afterwards a copy of
the cloud part may be fine-tuned on the noisy release (``finetune_epochs``).
"""
from __future__ import annotations

import copy
import math
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from audit.core.training import EpochLog, EpochMeanModule, make_trainer, tensor_loader
from defenses import register_defense
from defenses._finetune import train_inputs
from defenses.base import Defense, FitContext
from defenses.noise import ConvergenceParams, finetune_on_noise, unit_noise


class ScaledNoise(nn.Module):
    """z + exp(log_sigma) * eps with one learnable log-scale per element of the feature shape;
    noise is added in training mode, or always with ``always``."""

    def __init__(self, shape: tuple[int, ...], init_sigma: float, max_sigma: float, distribution: str):
        super().__init__()
        self.log_sigma = nn.Parameter(torch.full(shape, math.log(init_sigma)))
        self.max_log_sigma, self.distribution = math.log(max_sigma), distribution
        self.generator: torch.Generator | None = None
        self.always = False
        self.register_buffer("suppressed", None)  # bool mask (feature shape): elements released as ``fill``
        self.register_buffer("fill", None)

    def sigma(self) -> torch.Tensor:
        return self.log_sigma.clamp(max=self.max_log_sigma).exp()

    def suppress(self, mask: torch.Tensor, fill: torch.Tensor) -> None:
        """From now on the elements where ``mask`` holds are released as the constant ``fill`` (no noise)."""
        self.suppressed, self.fill = mask.bool(), fill.detach().float()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not (self.training or self.always):
            return z
        eps = unit_noise(z.shape, self.distribution, self.generator).to(z.device)
        out = z + self.sigma() * eps
        if self.suppressed is not None:
            out = torch.where(self.suppressed, self.fill, out)
        return out


class NoiseLearner(EpochMeanModule):
    """Trains the noise scales against a frozen cloud: CE - weight * mean(log(sigma / reference))."""

    def __init__(self, noise: ScaledNoise, cloud: nn.Module, weight: float, reference: float, lr: float,
                 pre: nn.Module | None = None):
        super().__init__()
        self.noise, self.cloud = noise, cloud
        self.pre = pre or nn.Identity()  # the frozen edge when batches carry inputs, not features
        self.weight, self.log_reference, self.lr = weight, math.log(reference), lr
        for param in self.cloud.parameters():
            param.requires_grad_(False)

    def training_step(self, batch, batch_idx):
        z, y = batch
        self.cloud.eval()  # frozen: batch-norm statistics stay those of the task model
        task = F.cross_entropy(self.cloud(self.noise(self.pre(z))), y)
        magnitude = (self.noise.log_sigma.clamp(max=self.noise.max_log_sigma) - self.log_reference).mean()
        self.record(z.shape[0], task_loss=task, log_noise_scale=magnitude)
        return task - self.weight * magnitude

    def configure_optimizers(self):
        return torch.optim.Adam(self.noise.parameters(), lr=self.lr)


@register_defense("learned_noise")
class LearnedNoise(Defense):
    """Per-element noise scales learned to keep the task while maximising noise (Shredder-style); cloud fine-tuned."""

    class Params(Defense.Params, ConvergenceParams):
        weight: float = Field(0.1, ge=0, description="weight of the noise magnitude mean(log sigma/s) against the task loss")
        init_scale: float = Field(0.5, gt=0, description="initial noise std relative to the feature std s")
        max_scale: float = Field(100.0, gt=0, description="cap on every element's noise std relative to s")
        distribution: Literal["gaussian", "laplace"] = "laplace"
        epochs: int = Field(3, ge=0, description="epochs of noise-scale training (cloud frozen)")
        lr: float = Field(0.05, gt=0, description="Adam step size on the log-scales")
        finetune_epochs: int = Field(30, ge=0, description="most epochs of cloud fine-tuning on the noisy release "
                                                           "afterwards (early stopping ends it sooner)")
        finetune_lr: float = Field(5e-4, gt=0)
        batch_size: int = Field(128, ge=1)

        @model_validator(mode="after")
        def _init_below_cap(self):
            if self.init_scale > self.max_scale:
                raise ValueError(f"init_scale {self.init_scale} exceeds max_scale {self.max_scale}")
            return self

    def fit(self, ctx: FitContext) -> None:
        p = self.params
        self.edge = ctx.split.edge.eval()
        inputs, pre = train_inputs(ctx.split, ctx.train.x)  # features, or inputs + frozen edge if large
        sample = pre(inputs[:512])
        self.reference = float(sample.std())  # the feature's std (first 512 training samples)
        self.noise = ScaledNoise(tuple(sample.shape[1:]), p.init_scale * self.reference,
                                 p.max_scale * self.reference, p.distribution)
        cloud = copy.deepcopy(ctx.split.cloud).eval()
        if p.epochs > 0:
            L.seed_everything(ctx.seed, verbose=False)
            learner = NoiseLearner(self.noise, cloud, p.weight, self.reference, p.lr, pre)
            trainer = make_trainer(ctx.settings, p.epochs,
                                   [EpochLog(ctx.title(f"{self.name} scale training"), ("task_loss", "log_noise_scale"))])
            trainer.fit(
                learner, tensor_loader(inputs, ctx.train.y, batch_size=p.batch_size, shuffle=True, seed=ctx.seed))
            for param in cloud.parameters():
                param.requires_grad_(True)
        self.noise.cpu().eval().requires_grad_(False)
        self.after_scales(sample)
        if p.finetune_epochs > 0:
            # only the cloud has trainable weights
            cloud, self.cloud_training = finetune_on_noise(
                cloud, inputs, ctx.train.y, ctx.num_classes, self.noise, pre=pre, settings=ctx.settings,
                max_epochs=p.finetune_epochs, batch_size=p.batch_size, lr=p.finetune_lr, seed=ctx.seed,
                patience=p.patience, val_fraction=p.val_fraction, title=ctx.title(f"{self.name} cloud fine-tuning"))
        pre.cpu()
        self.edge.eval()
        self.cloud = cloud.cpu().eval()
        self.noise.generator = torch.Generator().manual_seed(ctx.seed)
        self.noise.always = True

    def after_scales(self, sample: torch.Tensor) -> None:
        """Called once the scales are learned, before the cloud's fine-tuning; ``sample``: the edge
        features of the first 512 training samples."""

    def noise_scale(self) -> torch.Tensor:
        """The learned per-element noise std relative to the feature std (the feature's shape)."""
        return self.noise.sigma().detach() / self.reference

    @torch.no_grad()
    def release(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        z = features if features is not None else self.edge(x)
        return self.noise(z)


@register_defense("cloak")
class Cloak(LearnedNoise):
    """Cloak-style suppression (after Mireshghallah et al., WWW 2021): learned noise scales as in
    ``learned_noise``; then every element whose learned scale exceeds ``suppress_above`` x the feature
    std is released as a constant (its mean over the first 512 training samples), no longer as feature
    plus noise. The cloud is fine-tuned on that release. Suppressed elements are not sent (the cloud
    knows the constants), so they leave the bytes per sample too."""

    class Params(LearnedNoise.Params):
        suppress_above: float = Field(
            10.0, gt=0, description="suppress elements whose learned noise std exceeds this x the feature std")
        # at learned_noise's 3 epochs every scale grows at Adam's step limit (planted task, conv1: all within
        # 1.55-1.69x the feature std), so no threshold separates elements; at 15 they spread (10% / 50% / 90% /
        # 99% quantiles 1.8 / 4.3 / 11 / 24x)
        epochs: int = Field(15, ge=0, description="epochs of noise-scale training (cloud frozen)")

    def after_scales(self, sample: torch.Tensor) -> None:
        mask = self.noise_scale() > self.params.suppress_above
        self.noise.suppress(mask, sample.mean(0))

    def suppressed_fraction(self) -> float:
        """Fraction of the feature's elements released as a constant."""
        return float(self.noise.suppressed.float().mean())

    def public_facts(self) -> dict[str, float]:
        return {"suppressed_fraction": self.suppressed_fraction()}

    def bytes_per_sample(self, released: torch.Tensor) -> int:
        sent = int(released[0].numel() - int(self.noise.suppressed.sum()))
        return sent * released.element_size()
