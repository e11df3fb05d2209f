"""Samples with known mutual information, for tests and benchmarks/mi_accuracy.py.

- ``correlated_gaussian``: z, s in R^d, each coordinate pair correlated with rho,
  I(Z; S) = -d/2 log(1 - rho^2); rho is chosen from the requested MI.
- ``gaussian_mixture``: s uniform on K labels, z = R [mu_s + e1, e2 .. ed] with unit
  Gaussian noise, class means mu_c = sep * c on one axis and a fixed random rotation R
  (so every coordinate carries some of the information). I(Z; S) = I(Z1; S) by
  invariance under the rotation and independence of the other axes, computed by
  ``mixture_mi`` with the exact densities (1-D quadrature, error < 1e-6 nats).
"""
from __future__ import annotations

import math

import torch


def rho_for_mi(mi: float, dim: int) -> float:
    """Per-coordinate correlation giving I = mi nats over ``dim`` independent coordinate pairs."""
    if mi < 0 or dim < 1:
        raise ValueError(f"need mi >= 0 and dim >= 1, got mi={mi}, dim={dim}")
    return math.sqrt(-math.expm1(-2.0 * mi / dim))


def gaussian_mi(rho: float, dim: int = 1) -> float:
    """-d/2 log(1 - rho^2) in nats."""
    return -0.5 * dim * math.log1p(-rho * rho)


def correlated_gaussian(n: int, dim: int, mi: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, s), each (n, dim) float32, with I(Z; S) = ``mi`` nats exactly."""
    rho = rho_for_mi(mi, dim)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    e = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    s = rho * z + math.sqrt(max(0.0, 1.0 - rho * rho)) * e
    return z.float(), s.float()


def gaussian_club(mi: float, dim: int = 1) -> float:
    """The value CLUB converges to on ``correlated_gaussian`` with the exact conditional
    q(s | z) = N(rho z, (1 - rho^2) I): d rho^2 / (1 - rho^2) = d (exp(2 I / d) - 1) nats (>= I)."""
    return dim * math.expm1(2.0 * mi / dim)


def _rotation(dim: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def gaussian_mixture(n: int, k: int = 4, dim: int = 1, sep: float = 1.5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(z (n, dim) float32, s (n,) int64): K equiprobable unit-variance Gaussians spaced ``sep`` apart on
    one axis, then rotated by a fixed random rotation (seeded by ``dim``). Truth: ``mixture_mi(k, sep)``."""
    gen = torch.Generator().manual_seed(seed)
    s = torch.randint(0, k, (n,), generator=gen)
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    x[:, 0] += sep * s.double()
    return (x @ _rotation(dim, 1000 + dim).T).float(), s


def mixture_mi(k: int = 4, sep: float = 1.5, points: int = 200_001) -> float:
    """I(Z; S) in nats of ``gaussian_mixture`` (any dim): sum_c 1/K int N(z; mu_c, 1) log(N(z; mu_c, 1) / p(z)) dz."""
    lo, hi = -12.0, sep * (k - 1) + 12.0
    z = torch.linspace(lo, hi, points, dtype=torch.float64)
    means = sep * torch.arange(k, dtype=torch.float64)
    log_pc = -0.5 * (z[None] - means[:, None]) ** 2 - 0.5 * math.log(2 * math.pi)  # (K, points)
    log_p = log_pc.logsumexp(0) - math.log(k)
    integrand = (log_pc.exp() * (log_pc - log_p[None])).sum(0) / k
    return float(torch.trapezoid(integrand, z))


def mixture_club(k: int = 4, sep: float = 1.5, points: int = 200_001) -> float:
    """The value CLUB converges to on ``gaussian_mixture`` with the exact conditional q = p(s | z):
    E_p(z,s)[log p(s|z)] - E_p(z)p(s)[log p(s|z)] in nats (>= ``mixture_mi``; quadrature)."""
    lo, hi = -12.0, sep * (k - 1) + 12.0
    z = torch.linspace(lo, hi, points, dtype=torch.float64)
    means = sep * torch.arange(k, dtype=torch.float64)
    log_pc = -0.5 * (z[None] - means[:, None]) ** 2 - 0.5 * math.log(2 * math.pi)  # (K, points)
    log_post = log_pc - log_pc.logsumexp(0, keepdim=True)  # log p(s | z), uniform prior
    p_z = log_pc.exp().mean(0)
    joint = (log_pc.exp() * log_post).sum(0) / k
    marginal = p_z * log_post.mean(0)
    return float(torch.trapezoid(joint - marginal, z))
