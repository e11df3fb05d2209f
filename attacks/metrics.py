"""Classification leakage figures with bootstrap CIs (torchmetrics functional)."""
from __future__ import annotations

import warnings

import torch
from torchmetrics.functional.classification import binary_auroc, multiclass_accuracy, multiclass_auroc

from attacks.base import Score
from audit.core.stats import bootstrap_rows, percentile_ci


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


def resampled_accuracy(preds: torch.Tensor, y: torch.Tensor, k: int, rows: torch.Tensor, *,
                       balanced: bool) -> torch.Tensor:
    """Accuracy (``balanced``: macro recall, as torchmetrics' ``average="macro"``, over the classes that
    are labelled or predicted in the resample) of every bootstrap resample ``rows`` (B, n) of predicted
    classes ``preds`` (n,) and labels ``y`` (n,) at once: (B,) float64, from one confusion matrix per resample."""
    n_boot, n = rows.shape
    cells = (torch.arange(n_boot)[:, None] * k + y[rows]) * k + preds[rows]  # (resample, label, prediction)
    confusion = torch.bincount(cells.flatten(), minlength=n_boot * k * k).view(n_boot, k, k).double()
    hits = confusion.diagonal(dim1=1, dim2=2)  # (B, K)
    if not balanced:
        return hits.sum(1) / n
    labelled, predicted = confusion.sum(2), confusion.sum(1)
    recall = hits / labelled.clamp_min(1.0)  # 0 for a class predicted but never labelled
    counted = (labelled + predicted) > 0
    return (recall * counted).sum(1) / counted.sum(1)


def resampled_auroc(probs: torch.Tensor, y: torch.Tensor, k: int, rows: torch.Tensor) -> torch.Tensor:
    """:func:`_auroc` of every bootstrap resample ``rows`` (B, n) of (probs (n, K), y (n,)) at once: (B,)
    float64, NaN where fewer than two classes are present.

    Each one-vs-rest AUROC is the Mann-Whitney form (positives scored above negatives, ties counted
    half), which equals the area under the ROC curve; a resample weights each row by how often it was
    drawn. Agrees with torchmetrics on each resample to float32 rounding (~1e-7)."""
    n_boot, n = rows.shape
    weights = torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(
        1, rows, torch.ones_like(rows, dtype=torch.float64))
    classes = [1] if k == 2 else range(k)  # binary: the positive class's score, as binary_auroc
    areas, present = [], []
    for c in classes:
        score = probs[:, c]
        order = score.argsort(stable=True)
        _, group = torch.unique_consecutive(score[order], return_inverse=True)  # tied scores share a group
        positive = (y[order] == c).double()
        w = weights[:, order]
        groups = int(group.max()) + 1
        w_pos = torch.zeros(n_boot, groups, dtype=torch.float64).index_add_(1, group, w * positive)
        w_neg = torch.zeros(n_boot, groups, dtype=torch.float64).index_add_(1, group, w * (1.0 - positive))
        below = w_neg.cumsum(1) - w_neg
        positives, negatives = w_pos.sum(1), w_neg.sum(1)
        areas.append((w_pos * (below + 0.5 * w_neg)).sum(1) / (positives * negatives))  # 0 / 0 = NaN: one class
        present.append(positives > 0)
    if k == 2:
        return areas[0]
    labelled = torch.stack(present, 1)  # (B, K): classes present in each resample
    area = torch.stack(areas, 1).nan_to_num(0.0)
    mean = (area * labelled).sum(1) / labelled.sum(1)
    return torch.where(labelled.sum(1) >= 2, mean, float("nan"))


def classification_scores(
    target: str, probs: torch.Tensor, y: torch.Tensor, num_classes: int, *, n_boot: int, seed: int,
    extra: dict | None = None,
) -> list[Score]:
    """accuracy (chance: majority-class rate), balanced_accuracy (chance 1/K) and auroc
    (chance 0.5, macro one-vs-rest) of predicted class probabilities ``probs`` (N, K) for labels ``y`` (N,),
    each with a percentile bootstrap CI over the N rows (all ``n_boot`` resamples computed at once).

    Each score's ``extra`` says how many distinct classes the attack predicted on the test split
    (``predicted_classes``) and ``degenerate: true`` when that is one: a constant predictor measures
    nothing, and its chance-level figure must not be read as "no leakage"."""
    k, n = num_classes, y.shape[0]
    preds = probs.argmax(dim=1)
    predicted = int(torch.unique(preds).numel())
    extra = {**(extra or {}), "predicted_classes": predicted, "degenerate": predicted < 2}
    majority = float(torch.bincount(y, minlength=k).max()) / n
    rows = bootstrap_rows(n, n_boot, seed)

    balanced_accuracy = multiclass_accuracy(preds, y, num_classes=k, average="macro")
    accuracy = multiclass_accuracy(preds, y, num_classes=k, average="micro")
    metrics = {
        "balanced_accuracy": (balanced_accuracy, resampled_accuracy(preds, y, k, rows, balanced=True), 1.0 / k),
        "accuracy": (accuracy, resampled_accuracy(preds, y, k, rows, balanced=False), majority),
        "auroc": (_auroc(probs, y, k), resampled_auroc(probs, y, k, rows), 0.5),
    }
    return [Score(target, metric, float(value), percentile_ci(resampled), chance, n, extra=dict(extra))
            for metric, (value, resampled, chance) in metrics.items()]
