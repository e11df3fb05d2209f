"""Confidence intervals by bootstrap over evaluation samples."""
from __future__ import annotations

from typing import Callable

import torch


def bootstrap_rows(n: int, n_boot: int, seed: int) -> torch.Tensor:
    """The row indices (n_boot, n) of ``n_boot`` resamples with replacement of n rows: the same draws, in
    the same order, as :func:`bootstrap_ci` makes one resample at a time."""
    return torch.randint(0, n, (n_boot, n), generator=torch.Generator().manual_seed(seed))


def percentile_ci(values: torch.Tensor, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of a statistic's bootstrap values (B,); NaN values (resamples where the
    statistic is undefined) are dropped; (nan, nan) when none is left."""
    values = values.double().flatten()
    values = values[~values.isnan()]
    if values.numel() == 0:
        return (float("nan"), float("nan"))
    alpha = (1.0 - level) / 2.0
    lo, hi = torch.quantile(values, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64))
    return (float(lo), float(hi))


def bootstrap_ci(
    statistic: Callable[..., torch.Tensor | float],
    *tensors: torch.Tensor,
    n_boot: int = 500,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic(*tensors)``, one resample at a time.

    Every tensor is resampled with the same row indices (rows = evaluation
    samples, dimension 0; :func:`bootstrap_rows`). Resamples where the statistic is
    undefined (NaN, e.g. AUROC with one class present) are dropped. Returns (low, high).
    """
    rows = bootstrap_rows(tensors[0].shape[0], n_boot, seed)
    values = [float(statistic(*(t[idx] for t in tensors))) for idx in rows]
    return percentile_ci(torch.tensor(values, dtype=torch.float64), level)


def mean_ci(samples: torch.Tensor, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap CI of the mean of per-sample values (vectorised; fast)."""
    samples = samples.double().flatten()
    n = samples.numel()
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_boot, n), generator=gen)
    means = samples[idx].mean(dim=1)
    lo, hi = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64))
    return (float(lo), float(hi))
