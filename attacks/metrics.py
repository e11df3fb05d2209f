"""Classification leakage figures with bootstrap CIs (torchmetrics functional)."""
from __future__ import annotations

import warnings

import torch
from torchmetrics.functional.classification import binary_auroc, multiclass_accuracy, multiclass_auroc

from attacks.base import Score
from audit.core.stats import bootstrap_ci


def _auroc(probs: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """Macro one-vs-rest AUROC over the classes present in ``y`` (binary: of the positive-class
    score); NaN with fewer than two classes present. torchmetrics' macro average would count an
    absent class as AUROC 0 (and warn), dragging small test sets and bootstrap resamples down."""
    present = torch.bincount(y, minlength=k) > 0
    if int(present.sum()) < 2:
        return torch.tensor(float("nan"))
    if k == 2:
        return binary_auroc(probs[:, 1], y)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No positive samples")
        per_class = multiclass_auroc(probs, y, num_classes=k, average=None)
    return per_class[present].mean()


def classification_scores(
    target: str, probs: torch.Tensor, y: torch.Tensor, num_classes: int, *, n_boot: int, seed: int,
    extra: dict | None = None,
) -> list[Score]:
    """accuracy (chance: majority-class rate), balanced_accuracy (chance 1/K) and auroc
    (chance 0.5, macro one-vs-rest) of predicted class probabilities ``probs`` (N, K) for labels ``y`` (N,).

    Each score's ``extra`` says how many distinct classes the attack predicted on the test split
    (``predicted_classes``) and ``degenerate: true`` when that is one: a constant predictor measures
    nothing, and its chance-level figure must not be read as "no leakage"."""
    k, n = num_classes, y.shape[0]
    preds = probs.argmax(dim=1)
    predicted = int(torch.unique(preds).numel())
    extra = {**(extra or {}), "predicted_classes": predicted, "degenerate": predicted < 2}
    majority = float(torch.bincount(y, minlength=k).max()) / n
    metrics = {
        "balanced_accuracy": (lambda p, t: multiclass_accuracy(p, t, num_classes=k, average="macro"), preds, 1.0 / k),
        "accuracy": (lambda p, t: multiclass_accuracy(p, t, num_classes=k, average="micro"), preds, majority),
        "auroc": (lambda p, t: _auroc(p, t, k), probs, 0.5),
    }
    scores = []
    for metric, (fn, inputs, chance) in metrics.items():
        value = float(fn(inputs, y))
        ci = bootstrap_ci(fn, inputs, y, n_boot=n_boot, seed=seed)
        scores.append(Score(target, metric, value, ci, chance, n, extra=dict(extra or {})))
    return scores
