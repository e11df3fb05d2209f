"""Joint Lightning fine-tuning of copies of the edge and cloud parts with a privacy penalty.

loss = cross-entropy(cloud(edge(x)), y) + weight * penalty(x, edge(x), y)

Used by ``siamese`` (contrastive penalty) and ``nopeek`` (distance
correlation). The shared task model is never touched: the defense passes
deep copies.
"""
from __future__ import annotations

from typing import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from audit.training import TrainerSettings, make_trainer, tensor_loader

Penalty = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x, z, y) -> scalar


class PenalisedSplit(L.LightningModule):
    """Trains ``edge`` and ``cloud`` together on the task loss plus ``weight`` x ``penalty``."""

    def __init__(self, edge: nn.Module, cloud: nn.Module, penalty: Penalty, weight: float, lr: float,
                 hflip: bool = False):
        super().__init__()
        self.edge, self.cloud = edge, cloud
        self.penalty, self.weight, self.lr, self.hflip = penalty, weight, lr, hflip

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.hflip and x.ndim == 4:
            flip = torch.rand(x.shape[0], device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        z = self.edge(x)
        task = F.cross_entropy(self.cloud(z), y)
        penalty = self.penalty(x, z, y)
        self.log("task_loss", task, prog_bar=True)
        self.log("penalty", penalty, prog_bar=True)
        return task + self.weight * penalty

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def finetune_split(
    edge: nn.Module, cloud: nn.Module, x: torch.Tensor, y: torch.Tensor, penalty: Penalty, *,
    weight: float, settings: TrainerSettings, epochs: int, batch_size: int, lr: float, seed: int,
    hflip: bool = False,
) -> tuple[nn.Module, nn.Module]:
    """Fine-tune ``edge`` and ``cloud`` in place (pass copies); returns them in eval mode on the CPU."""
    if epochs > 0:
        L.seed_everything(seed, verbose=False)
        module = PenalisedSplit(edge, cloud, penalty, weight, lr, hflip)
        trainer = make_trainer(settings, epochs)
        trainer.fit(module, tensor_loader(x, y, batch_size=batch_size, shuffle=True, seed=seed))
    return edge.cpu().eval(), cloud.cpu().eval()
