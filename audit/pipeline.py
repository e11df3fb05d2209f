"""The work of one (cut point, defense) group and its attack cells, as plain functions.

::

    defense = fit_defense(name, params, split, train, ...)      # may fine-tune copies of edge / cloud
    aux, test = release_views(defense, split, data, ...)        # what the cloud sees; finiteness checked
    utility = measure_utility(defense, split, test_part, ...)   # primary accuracy through the defense
    cost = defense.cost(x, full_flops)                          # edge FLOPs, bytes, latency, rounds
    scores = run_attack(name, params, views, defense, seed)     # the attack sees a cloud view only

The runner (:mod:`audit.runner`, and through it every executor), the tests' helpers and the
benchmark scripts all go through these functions, so there is one recipe for a cell.
Seeds are passed in: :func:`audit.core.seeds.stage_seed` derives each stage's seed from the audit seed and the
stage's identity, so a cell's values do not depend on what ran before it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from attacks import ATTACKS, AttackContext, AttackView, ReleaseChannel, Score
from audit.core.data import AuditData, Part
from audit.core.feature_store import Rows, map_batches, streamed
from audit.core.profile import timed
from audit.core.registry import PluginParams, Registry
from audit.core.seeds import stage_seed
from audit.core.stats import mean_ci
from audit.core.training import TrainerSettings, activation_batch_size, eval_batch_size
from defenses import DEFENSES, Defense, FitContext, SplitPoint
from defenses.base import RELEASE_BATCH


def cell_seeds(seed: int, task_key: str, cut: str, defense: str, defense_params: dict[str, Any],
               attack: str) -> dict[str, int]:
    """The seeds of a cell's stages: ``defense`` (its fit, shared by the group) and ``attack``.
    ``defense_params``: the defense's validated parameters as JSON (defaults filled in)."""
    group = (seed, task_key, cut, defense, defense_params)
    return {"defense": stage_seed(*group), "attack": stage_seed(*group, attack)}


def _create(registry: Registry, name: str, params: dict[str, Any] | PluginParams):
    """A plugin from validated parameters as they are, or from a dict (validated here)."""
    return registry.from_params(name, params) if isinstance(params, PluginParams) else registry.create(name, **params)


def release_all(
    defense: Defense, x: torch.Tensor, features: torch.Tensor | Rows, batch_size: int | None = None,
    scratch_dir: Path | None = None, max_ram_mb: float = math.inf, title: str | None = None,
) -> torch.Tensor:
    """``defense.release`` over a whole split, in batches (default: ``RELEASE_BATCH`` rows for a defense that
    mixes rows, else as many as fit 64 MB of features, at most ``RELEASE_BATCH``: a 512-row release at
    UTKFace conv1 held 1.5 GB of features, draws and output); with ``scratch_dir`` a result larger
    than ``max_ram_mb`` is memory-mapped from a scratch file there instead of held in RAM.
    With ``title`` a slow release (e.g. encryption) logs its progress."""
    batch_size = batch_size or release_batch_size(defense, x, features, RELEASE_BATCH)
    return map_batches(lambda a, b: defense.release(x[a:b], streamed_rows(features, a, b)), x.shape[0], scratch_dir,
                       max_ram_mb, batch_size, title)


def release_batch_size(defense: Defense, x: torch.Tensor, features: torch.Tensor | Rows, cap: int) -> int:
    """Rows per release (or prediction) call: ``cap`` for a defense that mixes rows; for one that runs its own
    edge on the inputs, as many as keep that edge's largest activation within 64 MB
    (:func:`audit.core.training.activation_batch_size`); else as many as fit 64 MB of features."""
    if defense.mixes_rows:
        return cap
    if defense.runs_edge:
        return activation_batch_size(defense.edge, x, cap=cap)
    return eval_batch_size(features, cap=cap)


def streamed_rows(features: torch.Tensor | Rows, start: int, stop: int) -> torch.Tensor:
    """``features[start:stop]``, counted as streamed (mapped features leave the RSS as they are read)."""
    rows = features[start:stop]
    streamed(rows)
    return rows


def predict_all(defense: Defense, x: torch.Tensor, features: torch.Tensor, batch_size: int | None = None,
                title: str | None = None) -> torch.Tensor:
    """``defense.predict`` (primary logits through the defended pipeline) over a whole split, in batches
    (default: 512 rows, fewer for large features or a large edge of the defense's own,
    :func:`release_batch_size`); with ``title`` a slow one (e.g. encrypted inference) logs its progress."""
    batch_size = batch_size or release_batch_size(defense, x, features, 512)
    return map_batches(lambda a, b: defense.predict(x[a:b], streamed_rows(features, a, b)), x.shape[0], None,
                       math.inf, batch_size, title)


def all_finite(z: torch.Tensor, batch: int = 256) -> bool:
    """``torch.isfinite(z).all()`` in row batches (no full-size temporary for large, mapped arrays)."""
    return all(bool(torch.isfinite(streamed_rows(z, i, i + batch)).all()) for i in range(0, z.shape[0], batch))


def fit_defense(name: str, params: dict[str, Any] | PluginParams, split: SplitPoint, train: Part,
                num_classes: int, settings: TrainerSettings, seed: int, audit_seed: int | None = None,
                task: str = "") -> Defense:
    """The defense ``name`` with ``params`` (a dict, or parameters validated before: the config's),
    fitted at ``split`` on the task-train split (seeded with ``seed``); ``task`` names it in progress lines."""
    L.seed_everything(seed, verbose=False)
    defense = _create(DEFENSES, name, params)
    defense.fit(FitContext(split, train, num_classes, settings, seed, audit_seed=audit_seed, task=task))
    return defense


def release_views(
    defense: Defense, split: SplitPoint, data: AuditData, attacker_parts: tuple[str, ...] = ("aux",), *,
    scratch_dir: Path | None = None, max_ram_mb: float = math.inf, title: str = "",
) -> tuple[AttackView, AttackView]:
    """(aux, test) as the attacker has them: what ``defense`` releases for the splits the attacks train
    on (``attacker_parts``, rows in that order) and for the test split, with inputs and labels.
    Raises ValueError when a release holds NaN / inf."""
    aux, test = data.part(*attacker_parts), data.part("test")
    where = f"{title}: " if title else ""
    if defense.releases_features and len(attacker_parts) == 1:  # the raw features: no copy of them
        z_aux, z_test = split.features(attacker_parts[0]), split.features("test")
    else:
        z_aux = release_all(defense, aux.x, Rows(*(split.features(p) for p in attacker_parts)), scratch_dir=scratch_dir,
                            max_ram_mb=max_ram_mb, title=f"{where}release of the {'+'.join(attacker_parts)} split")
        z_test = release_all(defense, test.x, split.features("test"), scratch_dir=scratch_dir, max_ram_mb=max_ram_mb,
                             title=f"{where}release of the test split")
    for name, z in (("aux", z_aux), ("test", z_test)):
        if z.is_floating_point() and not all_finite(z):
            raise ValueError(f"defense {title or type(defense).__name__} released NaN/inf features for the "
                             f"{name} split at {split.cut_point}")
    return AttackView(z_aux, aux.x, aux.y, aux.private), AttackView(z_test, test.x, test.y, test.private)


def majority_rate(y: torch.Tensor) -> float:
    """The accuracy of the best constant predictor on labels ``y`` (N,): the largest class frequency."""
    return float(torch.bincount(y).max()) / y.numel() if y.numel() else math.nan


def utility_flags(primary_accuracy: float, majority_accuracy: float, label_prior: bool = False) -> dict[str, Any]:
    """``cloud_failed_to_train``: the defended pipeline is less accurate than predicting the majority class
    for every input, which any cloud trained on what it receives can match: its utility says how badly
    the cloud was fine-tuned, not what the defense costs; ``cloud_failure`` says so in words. Never for a
    cloud that answers the training labels' prior (``label_prior``): the constant it answers is the
    training split's majority class, which may not be the test split's (balanced labels);
    ``cloud_label_prior`` says whether the cloud answers it."""
    failed = not label_prior and bool(primary_accuracy < majority_accuracy - 1e-6)  # float32 means: 0.51 reads 0.50999999
    why = (f"primary accuracy {primary_accuracy:.3f} < majority-class rate {majority_accuracy:.3f}: "
           f"the cloud failed to train on the defended release") if failed else None
    return {"majority_accuracy": majority_accuracy, "cloud_failed_to_train": failed, "cloud_failure": why,
            "cloud_label_prior": label_prior}


def measure_utility(defense: Defense, split: SplitPoint, test: Part, task_accuracy: float, seed: int,
                    title: str = "") -> dict[str, Any]:
    """Primary accuracy through the defended pipeline on the test split, with its 95% CI (bootstrap,
    ``seed``), next to the undefended task model's (``task_accuracy``), the majority-class rate of the
    test split and whether the defended accuracy lies below it (:func:`utility_flags`), and the facts
    of the defense's cloud fine-tuning (``defense.cloud_training``) as ``cloud_<fact>``."""
    where = f"{title}: " if title else ""
    logits = predict_all(defense, test.x, split.features("test"), title=f"{where}prediction on the test split")
    correct = (logits.argmax(1) == test.y).float()
    accuracy = float(correct.mean())
    training = {f"cloud_{k}": v for k, v in (getattr(defense, "cloud_training", None) or {}).items()}
    return {
        "primary_accuracy": accuracy,
        "primary_accuracy_ci95": list(mean_ci(correct, seed=seed)),
        "task_accuracy": task_accuracy,
        "n_eval": len(test),
        **utility_flags(accuracy, majority_rate(test.y), label_prior=training.get("cloud_kept") == "label_prior"),
        **training,
    }


@dataclass
class AttackInputs:
    """Everything of a group that its attack cells share (the cloud view, not the defense)."""

    aux: AttackView
    test: AttackView
    num_classes: dict[str, int]  # label name (primary and private) -> number of classes
    primary: str
    split: SplitPoint
    settings: TrainerSettings
    n_boot: int = 500
    scratch_dir: Path | None = None
    max_ram_mb: float = math.inf


def attack_context(inputs: AttackInputs, defense: Defense, seed: int, artifact_dir: Path | None = None) -> AttackContext:
    """The context one attack cell gets: the group's views and a release channel of its own (seeded
    from the attack's ``seed``); never the fitted defense (see :class:`attacks.ReleaseChannel`)."""
    return AttackContext(
        aux=inputs.aux, test=inputs.test, num_classes=inputs.num_classes, primary=inputs.primary,
        channel=ReleaseChannel(defense, seed), split=inputs.split, settings=inputs.settings, seed=seed,
        n_boot=inputs.n_boot, artifact_dir=artifact_dir, scratch_dir=inputs.scratch_dir, max_ram_mb=inputs.max_ram_mb,
    )


def run_attack(name: str, params: dict[str, Any] | PluginParams, inputs: AttackInputs, defense: Defense, seed: int,
               artifact_dir: Path | None = None, timings: dict[str, float] | None = None) -> list[Score]:
    """Fit attack ``name`` on the aux view and score it on the test view (seeded with ``seed``);
    ``timings`` (when given) receives ``attack_fit_seconds`` and ``attack_score_seconds``."""
    timings = {} if timings is None else timings
    L.seed_everything(seed, verbose=False)
    with timed(timings, "attack_fit_seconds"):
        ctx = attack_context(inputs, defense, seed, artifact_dir)
        attack = _create(ATTACKS, name, params)
        attack.fit(ctx)
    with timed(timings, "attack_score_seconds"):
        return attack.score(ctx)
