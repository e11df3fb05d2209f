"""Confidence intervals by bootstrap over evaluation samples."""
from __future__ import annotations

from typing import Callable

import torch


def bootstrap_ci(
    statistic: Callable[..., torch.Tensor | float],
    *tensors: torch.Tensor,
    n_boot: int = 500,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic(*tensors)``.

    Every tensor is resampled with the same row indices (rows = evaluation
    samples, dimension 0). Resamples where the statistic is undefined (NaN, e.g.
    AUROC with one class present) are dropped. Returns (low, high).
    """
    n = tensors[0].shape[0]
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(n_boot):
        idx = torch.randint(0, n, (n,), generator=gen)
        v = float(statistic(*(t[idx] for t in tensors)))
        if v == v:  # not NaN
            values.append(v)
    if not values:
        return (float("nan"), float("nan"))
    v = torch.tensor(values, dtype=torch.float64)
    alpha = (1.0 - level) / 2.0
    lo, hi = torch.quantile(v, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64))
    return (float(lo), float(hi))


def mean_ci(samples: torch.Tensor, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap CI of the mean of per-sample values (vectorised; fast)."""
    samples = samples.double().flatten()
    n = samples.numel()
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_boot, n), generator=gen)
    means = samples[idx].mean(dim=1)
    lo, hi = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64))
    return (float(lo), float(hi))
