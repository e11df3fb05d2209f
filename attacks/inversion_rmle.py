"""``inversion_rmle``: white-box regularised maximum-likelihood inversion (He et al., ACSAC 2019).

For each observed released feature z the attacker, who holds the public edge model f,
solves

    x* = argmin_x  ||f(x) - z||^2 / s  +  lambda * TV(x)      over x in [low, high]

with Adam (projected onto the data range after each step), starting from the aux split's
mean input. s is the mean squared released feature on the aux split (so lambda does
not depend on the feature's scale); TV is the anisotropic total variation
mean(|x[i+1, j] - x[i, j]|) + mean(|x[i, j+1] - x[i, j]|), divided by (high - low);
inputs that are not images get no prior. Under Gaussian noise on z the first term is
the negative log-likelihood up to scale, hence "MLE".

f is the defense's own edge (``ctx.channel.edge``: fine-tuned for defenses such as
Siamese) or else the split's edge, whichever maps inputs to the released shape; a
release that is not edge(x) plus same-shaped noise (PCA projections, ciphertexts,
mixing) has no such white-box map and the attack refuses it with a clear error.

It is per-sample optimisation, so it scores a seeded subset of ``n_eval`` test samples
(64 by default; every record says how many). Metrics and the mean-image chance level
as in :mod:`attacks.inversion`.

``precision: bfloat16`` runs the edge's forward and backward passes of the first three
quarters of the steps in bfloat16 autocast and the last quarter in float32, so the
result is refined at full precision; ``auto`` (the default) does so where the device
computes bfloat16 in hardware. On configs/utkface.yaml (AMX CPU, 32 images, 200 steps)
the attack's 6 cells took 111 s against 214 s in float32 (pool3 2.3-2.5x faster, conv1
1.1-1.2x); of the 12 figures 11 stayed inside the float32 run's CIs (PSNR within 0.007
dB) and conv1's PSNR rose from 59.85 to 60.03 dB. Every step in bfloat16 (no float32
quarter) lost 6.7 dB at conv1 (benchmarks/RESULTS.md "rMLE in bfloat16").
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from attacks import register_attack
from attacks._channel import require_white_box_edge
from attacks.base import Attack, AttackContext, Score
from attacks.inversion import data_range_of, eval_subset, grid_extra, reconstruction_scores
from audit.core.chunked import mean_square
from audit.core.cpu import native_bfloat16
from audit.core.heap import reusing

FLOAT32_TAIL = 0.25  # the fraction of the steps (the last ones) that run in float32 under bfloat16 precision


def bfloat16_steps(iterations: int) -> int:
    """How many of ``iterations`` steps run in bfloat16 under bfloat16 precision: all but the last
    ``FLOAT32_TAIL`` of them (rounded up)."""
    return iterations - math.ceil(FLOAT32_TAIL * iterations)


def relative_residual(mapped: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per sample (N,): ||mapped - z||^2 / ||z||^2, how far an inverted input's feature lies from the target."""
    return (mapped - z).pow(2).flatten(1).sum(1) / z.pow(2).flatten(1).sum(1).clamp_min(1e-12)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV per sample (N,) of images (N, C, H, W): mean |vertical| + mean |horizontal| differences;
    zeros for non-image inputs."""
    if x.ndim != 4:
        return x.new_zeros(x.shape[0])
    dv = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().flatten(1).mean(1)
    dh = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().flatten(1).mean(1)
    return dv + dh


def rmle_invert(
    edge: nn.Module, z: torch.Tensor, x0: torch.Tensor, data_range: tuple[float, float], *,
    iterations: int, lr: float, tv_weight: float, feature_scale: float, low_precision_steps: int = 0,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Regularised MLE of inputs (N, ...) from observed features z (N, ...), starting at x0 (N, ...).

    Returns (x, relative feature residual per sample ||f(x) - z||^2 / ||z||^2). ``lr`` is in units
    of the data range per step; the edge's parameters are not changed (and get no gradients). The
    first ``low_precision_steps`` steps run the edge in bfloat16 autocast (x, the loss and Adam stay
    float32); ``channels_last`` lays image inputs out in that memory format."""
    low, high = data_range
    peak = high - low
    z = z.float()
    x = x0.clone().float().clamp(low, high)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr * peak)
    was_training = edge.training
    edge.eval()
    try:
        with reusing():  # 200-300 steps of the same sizes: blocks reused, not mapped afresh (audit.core.heap)
            for step in range(iterations):
                with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=step < low_precision_steps):
                    mapped = edge(x)
                fit = (mapped.float() - z).pow(2).flatten(1).mean(1) / feature_scale
                loss = (fit + tv_weight * total_variation(x) / peak).sum()
                (grad,) = torch.autograd.grad(loss, [x])
                x.grad = grad
                opt.step()
                with torch.no_grad():
                    x.clamp_(low, high)
        with torch.no_grad():
            residual = relative_residual(edge(x), z)
    finally:
        edge.train(was_training)
    return x.detach(), residual


@register_attack("inversion_rmle")
class RMLEInversion(Attack):
    """White-box regularised MLE inversion (He et al. 2019): optimise an input so the edge maps it to the released feature."""

    class Params(Attack.Params):
        iterations: int = Field(300, ge=1, description="Adam steps per sample")
        lr: float = Field(0.05, gt=0, description="Adam step size, in units of the data range")
        tv_weight: float = Field(0.05, ge=0, description="weight of the total-variation prior")
        n_eval: int = Field(64, ge=1, description="test samples inverted (a seeded subset)")
        batch_size: int = Field(64, ge=1, description="samples optimised together (independently)")
        data_range: tuple[float, float] | None = Field(
            None, description="[low, high] of the inputs; default [0, 1] if the aux inputs lie in it, else their min/max")
        grid: bool = Field(True, description="save a PNG grid of originals vs reconstructions")
        precision: Literal["float32", "bfloat16", "auto"] = Field(
            "auto", description="the edge's arithmetic in the steps: bfloat16 runs the first three quarters "
                                "in bfloat16 autocast and the rest in float32; auto does so where the device "
                                "computes bfloat16 in hardware, else float32")

    def low_precision_steps(self, device: torch.device) -> int:
        """How many of the steps run in bfloat16 on ``device``."""
        p = self.params
        if p.precision == "float32" or (p.precision == "auto" and not native_bfloat16(device)):
            return 0
        return bfloat16_steps(p.iterations)

    def fit(self, ctx: AttackContext) -> None:
        self.range = data_range_of(ctx.aux.x, self.params.data_range)
        self.mean_image = ctx.aux.x.float().mean(dim=0)
        self.edge = require_white_box_edge(ctx, "inversion_rmle")
        self.feature_scale = max(mean_square(ctx.aux.z), 1e-12)  # chunked: no copy of the aux split

    def score(self, ctx: AttackContext) -> list[Score]:
        p = self.params
        idx = eval_subset(len(ctx.test), p.n_eval, ctx.seed)
        x = ctx.test.x[idx].float()
        z = ctx.test.z[idx].float()
        bf16_steps = self.low_precision_steps(x.device)
        recs, residuals = [], []
        for i in range(0, len(idx), p.batch_size):
            x0 = self.mean_image.expand(min(p.batch_size, len(idx) - i), *self.mean_image.shape)
            rec, res = rmle_invert(self.edge, z[i : i + p.batch_size], x0, self.range, iterations=p.iterations,
                                   lr=p.lr, tv_weight=p.tv_weight, feature_scale=self.feature_scale,
                                   low_precision_steps=bf16_steps, channels_last=ctx.settings.channels_last)
            recs.append(rec)
            residuals.append(res)
        x_rec = torch.cat(recs)
        extra = {"method": "rmle", "iterations": p.iterations, "bfloat16_steps": bf16_steps, "tv_weight": p.tv_weight,
                 "feature_residual": float(torch.cat(residuals).median())}
        if p.grid:
            extra |= grid_extra(ctx, x, x_rec, self.range, "inversion_rmle.png")
        return reconstruction_scores(x, x_rec, self.mean_image, self.range, n_boot=ctx.n_boot, seed=ctx.seed,
                                     extra=extra)
