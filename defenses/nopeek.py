"""``nopeek``: distance-correlation penalty between the input and the split feature (Vepakomma et al., 2020).

Copies of the edge and cloud parts are fine-tuned together (Lightning) on

    cross-entropy(cloud(edge(x)), y) + weight * dCor(x, edge(x))

per batch, with dCor the sample distance correlation (Szekely, Rizzo and
Bakirov, 2007) computed from non-squared Euclidean distances of the flattened
inputs and features, in [0, 1]. Lowering it makes the feature less
(non-linearly) dependent on the raw input, and so on whatever in the input the
primary task does not need.
"""
from __future__ import annotations

import copy

import torch
from pydantic import Field

from defenses import register_defense
from defenses._finetune import finetune_split
from defenses.base import Defense, FitContext


def _centred_distances(a: torch.Tensor) -> torch.Tensor:
    """Double-centred matrix of Euclidean (non-squared) distances between the rows of a (B, D)."""
    sq = (a * a).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * a @ a.T).clamp_min(0.0)
    d = torch.sqrt(d2 + 1e-12) * (1.0 - torch.eye(a.shape[0], device=a.device, dtype=a.dtype))
    return d - d.mean(dim=0, keepdim=True) - d.mean(dim=1, keepdim=True) + d.mean()


def distance_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sample distance correlation of the rows of a (B, ...) and b (B, ...): a scalar in [0, 1];
    0 for a batch of fewer than 2 samples or a constant input."""
    if a.shape[0] < 2:
        return a.sum() * 0.0 + b.sum() * 0.0
    da, db = _centred_distances(a.flatten(1).float()), _centred_distances(b.flatten(1).float())
    dcov2 = (da * db).mean()
    denom = torch.sqrt((da * da).mean() * (db * db).mean())
    if float(denom.detach()) <= 0:
        return dcov2 * 0.0
    return torch.sqrt((dcov2 / denom).clamp_min(0.0) + 1e-12)


@register_defense("nopeek")
class NoPeek(Defense):
    """Edge fine-tuned with a distance-correlation penalty dCor(input, feature) plus the task loss."""

    runs_edge = True  # its fine-tuned edge, on the inputs

    class Params(Defense.Params):
        weight: float = Field(
            0.25, ge=0, description="weight of dCor(x, z) against the task loss (too large: the feature collapses)")
        epochs: int = Field(3, ge=0, description="epochs of joint edge + cloud fine-tuning")
        lr: float = Field(2e-4, gt=0)
        batch_size: int = Field(64, ge=2, description="dCor is estimated per batch")
        trainable_stages: int | None = Field(None, ge=1, description="fine-tune only the edge's last stages (None: all)")

    def fit(self, ctx: FitContext) -> None:
        p = self.params
        ctx.split.edge.eval(), ctx.split.cloud.eval()  # the shared parts stay in inference mode
        edge, cloud = copy.deepcopy(ctx.split.edge), copy.deepcopy(ctx.split.cloud)
        self.edge, self.cloud = finetune_split(
            edge, cloud, ctx.train.x, ctx.train.y, lambda x, z, y: distance_correlation(x, z),
            weight=p.weight, settings=ctx.settings, epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, seed=ctx.seed,
            trainable_stages=p.trainable_stages,
            title=ctx.title("nopeek fine-tuning"),
        )

    @torch.no_grad()
    def release(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        return self.edge(x)  # the fine-tuned edge: the caller's features (of the original edge) do not apply
