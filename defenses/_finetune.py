"""Helpers shared by the defenses that train: joint edge + cloud fine-tuning with a privacy
penalty (``siamese``, ``nopeek``), and train-split inputs that stay small in memory.

loss = cross-entropy(cloud(edge(x)), y) + weight * penalty(x, edge(x), y)

The shared task model is never touched: the defenses pass deep copies. With
``trainable_stages`` only the last stages of the edge are fine-tuned: the
frozen front is run once over the training inputs, which makes fine-tuning at
deep cut points affordable on a CPU.
"""
from __future__ import annotations

from typing import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from audit.core.training import EpochLog, EpochMeanModule, TrainerSettings, make_trainer, predict, tensor_loader

Penalty = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x, z, y) -> scalar


class PenalisedSplit(EpochMeanModule):
    """Trains ``edge`` (the trainable part of the edge, fed with ``h``) and ``cloud`` on the task loss
    plus ``weight`` x ``penalty(x, z, y)``; batches are (x, h, y) with h the frozen front's output."""

    def __init__(self, edge: nn.Module, cloud: nn.Module, penalty: Penalty, weight: float, lr: float):
        super().__init__()
        self.edge, self.cloud = edge, cloud
        self.penalty, self.weight, self.lr = penalty, weight, lr

    def training_step(self, batch, batch_idx):
        x, h, y = batch
        z = self.edge(h)
        task = F.cross_entropy(self.cloud(z), y)
        penalty = self.penalty(x, z, y)
        self.record(x.shape[0], task_loss=task, penalty=penalty)
        return task + self.weight * penalty

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def split_trainable(edge: nn.Module, trainable_stages: int | None) -> tuple[nn.Module | None, nn.Module]:
    """(frozen front or None, trainable back) of ``edge``: its last ``trainable_stages`` stages are
    trainable (all of them with None). The two share modules with ``edge``."""
    if trainable_stages is None:
        return None, edge
    if not isinstance(edge, nn.Sequential):
        raise ValueError(f"trainable_stages needs an edge made of stages (nn.Sequential), got {type(edge).__name__}")
    if trainable_stages >= len(edge):
        return None, edge
    return edge[: len(edge) - trainable_stages], edge[len(edge) - trainable_stages:]


def finetune_split(
    edge: nn.Module, cloud: nn.Module, x: torch.Tensor, y: torch.Tensor, penalty: Penalty, *,
    weight: float, settings: TrainerSettings, epochs: int, batch_size: int, lr: float, seed: int,
    trainable_stages: int | None = None, title: str = "defense fine-tuning",
) -> tuple[nn.Module, nn.Module]:
    """Fine-tune ``edge`` and ``cloud`` in place (pass copies); returns them in eval mode on the CPU.
    Every module stays in eval mode: weights are fine-tuned, batch-norm statistics and dropout are not
    (the task model's statistics are kept). With ``trainable_stages`` the edge's front stays frozen.
    Every epoch logs a line (``title``, mean task loss and penalty, time left)."""
    edge.eval()
    if epochs > 0:
        L.seed_everything(seed, verbose=False)
        front, back = split_trainable(edge, trainable_stages)
        h = x if front is None else predict(front.requires_grad_(False), x)
        module = PenalisedSplit(back, cloud, penalty, weight, lr)
        trainer = make_trainer(settings, epochs, [EpochLog(title, ("task_loss", "penalty"))])
        trainer.fit(module, tensor_loader(x, h, y, batch_size=batch_size, shuffle=True, seed=seed))
    return edge.cpu().eval(), cloud.cpu().eval()


class FrozenEdge(nn.Module):
    """The shared edge part as a fixed pre-processing step: eval mode, no gradients."""

    def __init__(self, edge: nn.Module):
        super().__init__()
        self.edge = edge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.edge.eval()
        with torch.no_grad():
            return self.edge(x)


def train_inputs(split, x: torch.Tensor, max_bytes: float = 2**30) -> tuple[torch.Tensor, nn.Module]:
    """What to train on for the task-train split: (its cached edge features, identity) when they fit
    in ``max_bytes``, else (the inputs, the frozen edge) so the features are computed per batch and
    never held for the whole split (conv1 features of 3,430 UTKFace images are 3.6 GB)."""
    with torch.no_grad():
        per_sample = split.edge.eval()(x[:1]).numel() * 4
    if per_sample * x.shape[0] <= max_bytes:
        return split.features("train"), nn.Identity()
    return x, FrozenEdge(split.edge)
