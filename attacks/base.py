"""The attack interface: ``fit`` on the attacker's auxiliary split, ``score`` on the test split.

An attack sees what the threat model grants the honest-but-curious cloud, and
nothing else: the released features of both splits, the auxiliary split's
inputs and labels (never the test labels during fit), query access to the
release channel (``ctx.channel.release``: a copy of the device's release that
holds none of its secrets) with the defense's public parameters, and the public
model weights (white-box attacks). The fitted defense itself (its noise
streams, DataMix coefficients, the CKKS secret key) never reaches a plugin.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from audit.core.registry import PluginParams
from audit.core.training import TrainerSettings
from defenses.base import Defense, SplitPoint


class ReleaseChannel:
    """The attacker's side of the device's release (threat model: the cloud may push inputs of its own
    through it and see what comes out).

    ``release(x, features=None)`` answers queries with a copy of the fitted defense made by
    :meth:`Defense.query_copy`: the same public parameters and weights, fresh random streams seeded
    from the attack's seed (so queries neither reveal nor advance the device's draws, and a cell's
    values do not depend on which attacks ran before it), and no secret key. Public facts:
    ``name`` and ``params`` (the defense's plugin name and validated parameters), ``edge`` (the edge
    module the device runs before its release, e.g. Siamese's fine-tuned one; None when the defense
    has none) and ``facts`` (public figures the defense states, e.g. its noise ``sigma``)."""

    def __init__(self, defense: Defense, seed: int):
        # a stream of its own: never the device's, even when the attack seed equals the defense's fit seed
        twin = defense.query_copy(int.from_bytes(hashlib.sha256(f"release-channel:{seed}".encode()).digest()[:7], "big"))
        self._device = twin
        self.name: str = getattr(defense, "name", type(defense).__name__)
        self.params = defense.params
        self.edge = twin.edge if isinstance(getattr(twin, "edge", None), torch.nn.Module) else None
        self.facts: dict[str, Any] = dict(defense.public_facts())

    def release(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """What the device sends for the attacker's inputs x (N, ...); ``features`` = edge(x) if known."""
        return self._device.release(x, features)


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
    channel: ReleaseChannel  # query access to the release and the defense's public parameters
    split: SplitPoint  # the public task model at this cut point (white-box attacks; clean aux features)
    settings: TrainerSettings
    seed: int
    n_boot: int = 500
    artifact_dir: Path | None = None  # where an attack may save files (image grids, ...)
    scratch_dir: Path | None = None  # where an attack may memory-map large intermediate arrays
    max_ram_mb: float = math.inf  # arrays larger than this go to scratch_dir (audit.core.feature_store.map_batches)


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
