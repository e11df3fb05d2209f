"""Statistics of large feature arrays in row chunks, never a full-size temporary.

A split of UTKFace conv1 features is 1 MB per sample (1.8 GB for the aux split, 3.6 GB for
task-train), usually memory-mapped from the feature store. ``z.std()`` or ``z[rows]`` on such
an array makes a same-size copy in process memory; these functions read ``chunk`` rows at a
time (default: as many as fit ``BLOCK_BYTES`` in float64, 16 rows of conv1) (optionally only the
rows ``rows`` of ``z``, in that order) and accumulate in float64.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch

from audit.core.feature_store import Rows, streamed

BLOCK_BYTES = 32 << 20  # bytes of one float64 block of rows (statistics)
FLOAT32_BLOCK_BYTES = 64 << 20  # bytes of one float32 block of rows (standardising; 64 rows of UTKFace conv1)
PCA_SEED = 0  # the random start of standardized_svd: fixed, so the attacks of one (cut point, defense) share a basis


def block_rows(z: torch.Tensor | Rows, itemsize: int = 8, budget: int = BLOCK_BYTES) -> int:
    """How many rows of ``z`` (N, ...) fit ``budget`` bytes at ``itemsize`` bytes per element (at least 1)."""
    return max(1, budget // max(1, itemsize * math.prod(z.shape[1:]))) if z.shape[0] else 1


def row_chunks(z: torch.Tensor, rows: torch.Tensor | None = None, chunk: int | None = None) -> Iterator[torch.Tensor]:
    """``z[rows]`` (all rows when ``rows`` is None) as consecutive float64 blocks of at most ``chunk`` rows."""
    n = z.shape[0] if rows is None else rows.numel()
    chunk = chunk or block_rows(z)
    for i in range(0, n, chunk):
        block = z[i : i + chunk] if rows is None else z[rows[i : i + chunk]]
        streamed(block)
        yield block.double()


def count(z: torch.Tensor, rows: torch.Tensor | None) -> int:
    return z.shape[0] if rows is None else rows.numel()


def column_mean(z: torch.Tensor, rows: torch.Tensor | None = None, chunk: int | None = None) -> torch.Tensor:
    """``z[rows].mean(0)`` (float64, shape z.shape[1:])."""
    total = torch.zeros(z.shape[1:], dtype=torch.float64)
    for block in row_chunks(z, rows, chunk):
        total += block.sum(0)
    return total / count(z, rows)


Stats = tuple[torch.Tensor, torch.Tensor]


def column_stats(flat: torch.Tensor, rows: torch.Tensor | None = None, chunk: int | None = None) -> Stats:
    """Per-column mean and sample std (clamped at 1e-6) of ``flat[rows]`` (N, D): float32 (D,) each."""
    mean = column_mean(flat, rows, chunk)
    sq = torch.zeros_like(mean)
    for block in row_chunks(flat, rows, chunk):
        sq += (block - mean).pow_(2).sum(0)
    std = (sq / max(count(flat, rows) - 1, 1)).sqrt()
    return mean.float(), std.float().clamp_min(1e-6)


def channel_stats(z: torch.Tensor, rows: torch.Tensor | None = None, chunk: int | None = None) -> Stats:
    """Per-channel mean and sample std (clamped at 1e-6) of ``z[rows]`` (N, C, H, W), as (1, C, 1, 1) float32 each:
    the statistics of ``z.mean((0, 2, 3))`` and ``z.std((0, 2, 3))`` without their temporaries."""
    m = count(z, rows) * z.shape[2] * z.shape[3]
    total = torch.zeros(z.shape[1], dtype=torch.float64)
    for block in row_chunks(z, rows, chunk):
        total += block.sum((0, 2, 3))
    mean = (total / m)[None, :, None, None]
    sq = torch.zeros(z.shape[1], dtype=torch.float64)
    for block in row_chunks(z, rows, chunk):
        sq += (block - mean).pow_(2).sum((0, 2, 3))
    std = (sq / max(m - 1, 1)).sqrt()[None, :, None, None]
    return mean.float(), std.float().clamp_min(1e-6)


def element_stats(z: torch.Tensor, chunk: int | None = None) -> tuple[float, float]:
    """(mean, sample variance) over every element of ``z`` (N, ...): ``z.mean()``, ``z.var()`` in float64."""
    m = z.numel()
    mean = sum(float(block.sum()) for block in row_chunks(z, None, chunk)) / m
    sq = sum(float((block - mean).pow_(2).sum()) for block in row_chunks(z, None, chunk))
    return mean, sq / max(m - 1, 1)



def mean_square(z: torch.Tensor, chunk: int | None = None) -> float:
    """``z.pow(2).mean()`` over every element of ``z`` (N, ...), in float64 row chunks."""
    return sum(float(block.pow(2).sum()) for block in row_chunks(z, None, chunk)) / max(z.numel(), 1)


def standardize_rows(z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, rows: torch.Tensor | None = None, *,
                     projection: torch.Tensor | None = None, in_place: bool = False) -> torch.Tensor:
    """``((z[rows].flatten(1) - mean) / std) @ projection`` (N, D or q; float32; all rows when ``rows`` is None;
    no projection when None), filled ``FLOAT32_BLOCK_BYTES`` of rows at a time into one output: no gathered
    copy of ``z[rows]``, no list of parts (at UTKFace conv1 each full-size temporary is ~0.7 GB per split).
    ``in_place``: a float32 ``z`` of which all rows are wanted and no projection is set is overwritten (its
    flattened view returned)."""
    flat = z.flatten(1)
    n = count(flat, rows)
    chunk = block_rows(flat, 4, FLOAT32_BLOCK_BYTES)
    overwrite = in_place and rows is None and projection is None and flat.dtype == torch.float32
    width = flat.shape[1] if projection is None else projection.shape[1]
    out = flat if overwrite else torch.empty(n, width)
    for i in range(0, n, chunk):
        block = flat[i : i + chunk] if rows is None else flat[rows[i : i + chunk]]
        streamed(block)
        if overwrite:
            block.sub_(mean).div_(std)
            continue
        part = (block.float() - mean).div_(std)
        out[i : i + chunk] = part if projection is None else part @ projection
    return out


def _standardized_chunks(flat: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, chunk: int | None):
    chunk = chunk or block_rows(flat, 4, FLOAT32_BLOCK_BYTES)
    for i in range(0, flat.shape[0], chunk):
        block = flat[i : i + chunk]
        streamed(block)
        yield i, (block.float() - mean).div_(std)


def standardized_svd(flat: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, q: int, *, niter: int = 3,
                     oversample: int = 16, chunk: int | None = None, seed: int = PCA_SEED
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-q right singular vectors (D, q) and singular values (q,) of A = (flat - mean) / std for flat (N, D),
    by randomised subspace iteration (Halko et al. 2011, the algorithm of ``torch.svd_lowrank``) with
    ``niter`` power steps over row chunks of A (never materialised; a memory-mapped flat stays on disk);
    the random start from ``seed``."""
    n, d = flat.shape
    width = min(q + oversample, n, d)
    gen = torch.Generator().manual_seed(seed)

    def times(right: torch.Tensor) -> torch.Tensor:  # A @ right: (N, l)
        return torch.cat([part @ right for _, part in _standardized_chunks(flat, mean, std, chunk)])

    def transposed_times(left: torch.Tensor) -> torch.Tensor:  # A^T @ left: (D, l)
        out = torch.zeros(d, left.shape[1])
        for i, part in _standardized_chunks(flat, mean, std, chunk):
            out.addmm_(part.T, left[i : i + part.shape[0]])
        return out

    basis = torch.linalg.qr(transposed_times(torch.randn(n, width, generator=gen)))[0]  # (D, l)
    for _ in range(niter):
        left = torch.linalg.qr(times(basis))[0]
        basis = torch.linalg.qr(transposed_times(left))[0]
    _, s, vh = torch.linalg.svd(times(basis), full_matrices=False)  # A ~ (A B) B^T
    return (basis @ vh.T)[:, :q].contiguous(), s[:q]
