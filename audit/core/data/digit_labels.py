"""Labels derived from handwritten digit images (shared by sklearn digits and MNIST).

digit (10), parity (even/odd), large (digit >= 5), and ink: the tercile of the
total stroke intensity *within the sample's digit class* — a style attribute
the digit task does not need, and nearly independent of the digit.
"""
from __future__ import annotations

import torch

DIGIT_LABELS = ("digit", "parity", "large", "ink")


def digit_labels(images: torch.Tensor, digits: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """images: (N, ...) intensities; digits: (N,) int64. Returns (labels, classes)."""
    ink_total = images.flatten(1).sum(dim=1)
    ink = torch.zeros_like(digits)
    for d in digits.unique():
        rows = (digits == d).nonzero().flatten()
        ranks = ink_total[rows].argsort().argsort()
        ink[rows] = (ranks * 3 // len(rows)).clamp(max=2)
    labels = {
        "digit": digits,
        "parity": digits % 2,
        "large": (digits >= 5).long(),
        "ink": ink,
    }
    classes = {
        "digit": [str(i) for i in range(10)],
        "parity": ["even", "odd"],
        "large": ["0-4", "5-9"],
        "ink": ["light", "medium", "heavy"],
    }
    return labels, classes
