"""``siamese``: Siamese fine-tuning of the edge part (Osia et al., 2017/2019).

Copies of the edge and cloud parts are fine-tuned together (Lightning) on

    cross-entropy(cloud(edge(x)), y) + weight * contrastive(edge(x), y)

where the contrastive loss runs over every pair (i, j) of a batch, similar iff
the two samples share the primary label: d^2 for similar pairs and
max(0, margin - d)^2 for dissimilar ones, with d the Euclidean distance of the
L2-normalised flattened features (so d is in [0, 2] at every cut point and
one margin fits all). Same-label features are pulled together, which removes
what the primary task does not need (Osia et al. report a falling attribute
and identity leakage at a small accuracy cost).

Optionally, as in the paper, the fine-tuned feature is reduced by PCA to
``pca_components`` dimensions and/or Gaussian noise of ``noise_scale`` x its
std is added; the cloud copy is then fine-tuned again on that release.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from audit.core.training import predict
from defenses import register_defense
from defenses._finetune import finetune_split
from defenses.base import Defense, FitContext
from defenses.noise import AddNoise, ConvergenceParams, PCAProjection, PCAReconstruct, finetune_on_noise


def contrastive_loss(z: torch.Tensor, y: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean contrastive loss over the pairs i < j of a batch: features z (B, ...), labels y (B,).

    d_ij = || z_i/|z_i| - z_j/|z_j| ||; similar (y_i == y_j): d^2, else max(0, margin - d)^2.
    0 for a batch of one sample."""
    b = z.shape[0]
    if b < 2:
        return z.sum() * 0.0
    f = F.normalize(z.flatten(1), dim=1)
    sq = (2.0 - 2.0 * f @ f.T).clamp_min(0.0)  # squared distances of unit vectors
    same = (y[:, None] == y[None, :]).float()
    dissimilar = F.relu(margin - torch.sqrt(sq + 1e-12)) ** 2
    pair = same * sq + (1.0 - same) * dissimilar
    upper = torch.triu(torch.ones(b, b, dtype=torch.bool, device=z.device), diagonal=1)
    return pair[upper].mean()


@register_defense("siamese")
class Siamese(Defense):
    """Edge fine-tuned with a contrastive loss (similar iff same primary label) plus the task loss; optional PCA + noise."""

    runs_edge = True  # its fine-tuned edge, on the inputs

    class Params(Defense.Params, ConvergenceParams):
        margin: float = Field(1.0, gt=0, le=2, description="contrastive margin on distances of L2-normalised features (0..2)")
        # weight 10 / 5 epochs: measured on UTKFace at fc1 (race 0.395 -> 0.339, gender +1.7 points);
        # weight 1 / 3 epochs left race unchanged or higher (benchmarks/RESULTS.md)
        weight: float = Field(10.0, ge=0, description="weight of the contrastive loss against the task loss")
        epochs: int = Field(5, ge=0, description="epochs of joint edge + cloud fine-tuning")
        lr: float = Field(2e-4, gt=0)
        batch_size: int = Field(64, ge=2, description="pairs are all pairs within a batch")
        pca_components: int | None = Field(None, ge=1, description="reduce the fine-tuned feature by PCA (Osia's embedding)")
        noise_scale: float = Field(0.0, ge=0, description="Gaussian noise std after PCA, relative to the release's std")
        finetune_epochs: int = Field(30, ge=0, description="most epochs of cloud fine-tuning on the PCA/noisy release "
                                                           "(if any; early stopping ends it sooner)")
        trainable_stages: int | None = Field(None, ge=1, description="fine-tune only the edge's last stages (None: all)")

    def fit(self, ctx: FitContext) -> None:
        p = self.params
        ctx.split.edge.eval(), ctx.split.cloud.eval()  # the shared parts stay in inference mode
        edge, cloud = copy.deepcopy(ctx.split.edge), copy.deepcopy(ctx.split.cloud)
        penalty = lambda x, z, y: contrastive_loss(z, y, p.margin)  # noqa: E731
        self.edge, cloud = finetune_split(
            edge, cloud, ctx.train.x, ctx.train.y, penalty, weight=p.weight, settings=ctx.settings,
            epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, seed=ctx.seed, trainable_stages=p.trainable_stages,
            title=ctx.title("siamese fine-tuning"),
        )
        self.pca: PCAProjection | None = None
        self.noise = AddNoise(0.0, "gaussian")
        if p.pca_components is None and p.noise_scale == 0:
            self.cloud = cloud
            return
        released = predict(self.edge, ctx.train.x)
        if p.pca_components is not None:
            self.pca = PCAProjection.fit(released, p.pca_components, seed=ctx.seed)
            released = self.pca.coefficients(released)
            cloud = nn.Sequential(PCAReconstruct(self.pca), cloud)
        sigma = p.noise_scale * float(released.std())
        self.cloud, self.cloud_training = finetune_on_noise(
            cloud, released, ctx.train.y, ctx.num_classes, AddNoise(sigma, "gaussian"), settings=ctx.settings,
            max_epochs=p.finetune_epochs, batch_size=128, lr=p.lr, seed=ctx.seed,
            patience=p.patience, val_fraction=p.val_fraction, title=ctx.title("siamese cloud fine-tuning on noise"),
        )
        self.noise = AddNoise(sigma, "gaussian", torch.Generator().manual_seed(ctx.seed), always=True)

    @torch.no_grad()
    def release(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        z = self.edge(x)  # the fine-tuned edge: the caller's features (of the original edge) do not apply
        if self.pca is not None:
            z = self.pca(z)
        return self.noise(z)
