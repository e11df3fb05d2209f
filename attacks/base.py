"""The attack interface: ``fit`` on the attacker's auxiliary split, ``score`` on the test split.

An attack sees what the threat model grants the honest-but-curious cloud:
the released features of both splits, the auxiliary split's inputs and labels
(never the test labels during fit), query access to the release channel
(``ctx.defense.release``) and the public edge model (white-box attacks).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from audit.registry import PluginParams
from audit.training import TrainerSettings
from defenses.base import Defense, SplitPoint


@dataclass
class AttackView:
    """One split as the attacker has it. z: released features (N, ...); x: inputs (N, ...);
    y: primary labels (N,); private: name -> (N,) labels."""

    z: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    private: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return self.z.shape[0]


@dataclass
class AttackContext:
    aux: AttackView
    test: AttackView
    num_classes: dict[str, int]  # label name (primary and private) -> number of classes
    primary: str
    defense: Defense
    split: SplitPoint
    settings: TrainerSettings
    seed: int
    n_boot: int = 500
    artifact_dir: Path | None = None  # where an attack may save files (image grids, ...)
    scratch_dir: Path | None = None  # where an attack may memory-map large intermediate arrays
    max_ram_mb: float = math.inf  # arrays larger than this go to scratch_dir (audit.features.map_batches)


@dataclass
class Score:
    """One figure: ``value`` of ``metric`` on ``target`` with its 95% CI (bootstrap over the
    ``n_eval`` test samples), the chance level and ``advantage`` = value - chance (None where
    no chance level applies). Units by metric: probabilities, nats (MI), dB (PSNR)."""

    target: str
    metric: str
    value: float
    ci95: tuple[float, float]
    chance: float | None
    n_eval: int
    advantage: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.advantage is None and self.chance is not None:
            self.advantage = self.value - self.chance


class Attack:
    """Base class of attack plugins."""

    name: ClassVar[str]

    class Params(PluginParams):
        pass

    def __init__(self, params: PluginParams):
        self.params = params

    def fit(self, ctx: AttackContext) -> None:
        """Train on ``ctx.aux`` (and the release channel)."""

    def score(self, ctx: AttackContext) -> list[Score]:  # pragma: no cover - interface
        raise NotImplementedError
