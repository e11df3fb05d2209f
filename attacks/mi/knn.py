"""k-nearest-neighbour MI estimators (no training).

- Continuous s: Kraskov, Stögbauer & Grassberger (2004), estimator 1, with the
  max-norm in every space: for each sample, eps_i = distance to its k-th
  neighbour in the joint space (max of the z and s distances); n_z, n_s = how many
  other samples lie strictly within eps_i in z and in s;
  I = psi(k) + psi(N) - < psi(n_z + 1) + psi(n_s + 1) >.
- Discrete s (labels): the mixed discrete-continuous estimator of Ross (2014),
  which is Gao et al.'s (2017) mixture estimator with a 0/inf metric on the labels:
  r_i = distance to the k-th neighbour among samples of the same label (k capped by
  the label's count - 1); m_i = other samples of any label within r_i;
  I = psi(N) - < psi(N_label) > + < psi(k) > - < psi(m_i) >. Samples whose label
  occurs once carry no neighbour and are left out.

Neighbour search is exact: scikit-learn k-d trees (max-norm) up to 8 dimensions,
brute force above (torch.cdist in row chunks, memory chunk x N, cost O(N^2 D):
about 30 s at N = 10,000, D = 20 + 20 on this machine).

Both are averages of per-sample terms; the CI is a bootstrap of that mean over
the evaluation samples with the neighbour counts held fixed (the terms are
weakly dependent, so it describes sampling spread, not the estimator's bias).
KSG is a point estimate; it is biased low when the MI is large relative to
log N or when D is high (Gao et al., 2015): reduce D (``pca``) first.
"""
from __future__ import annotations

import torch
from pydantic import Field

from attacks.mi.core import Estimator, EstimatorParams, MIResult, Reducer, Scaler, register_estimator
from audit.core.stats import mean_ci

INF = float("inf")


TREE_MAX_DIM = 8  # k-d trees beat brute force up to about this many dimensions


def _jitter(x: torch.Tensor, scale: float, gen: torch.Generator) -> torch.Tensor:
    """Break exact ties (repeated values, ReLU zeros) with noise of ``scale`` x each dimension's std."""
    if scale <= 0:
        return x
    std = x.std(0, keepdim=True).clamp_min(1e-12) if x.shape[0] > 1 else torch.ones_like(x[:1])
    return x + scale * std * torch.randn(x.shape, generator=gen, dtype=x.dtype)


def kth_distance(x: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """(N,) max-norm distance from each row of x (N, D) to its k-th nearest other row, float64 (as the
    permutation nulls' distances: a float32 brute-force path made the observed statistic differ from the
    null's recomputation of it by ~1.5e-4 nats at d = 10 with continuous s)."""
    if x.shape[1] <= TREE_MAX_DIM:
        from sklearn.neighbors import KDTree

        xn = x.double().numpy()
        dist, _ = KDTree(xn, metric="chebyshev").query(xn, k=k + 1)  # the row itself comes first
        return torch.from_numpy(dist[:, -1])  # float64: a float32 radius can drop the k-th neighbour from a <= count
    x = x.double()
    out = torch.empty(x.shape[0], dtype=torch.float64)
    for a in range(0, x.shape[0], chunk):
        b = min(a + chunk, x.shape[0])
        d = torch.cdist(x[a:b], x, p=INF)
        rows = torch.arange(b - a)
        d[rows, rows + a] = INF
        out[a:b] = d.topk(k, dim=1, largest=False).values[:, -1]
    return out


def count_within(x: torch.Tensor, radius: torch.Tensor, strict: bool, chunk: int = 1024) -> torch.Tensor:
    """(N,) number of other rows of x (N, D) at max-norm distance < radius_i (``strict``) or <= radius_i."""
    if x.shape[1] <= TREE_MAX_DIM:
        import numpy as np
        from sklearn.neighbors import KDTree

        r = radius.double().numpy()
        r = np.nextafter(r, 0) if strict else r
        xn = x.double().numpy()
        counts = KDTree(xn, metric="chebyshev").query_radius(xn, r, count_only=True)
        return torch.from_numpy(counts.astype("float64")) - 1
    x = x.double()
    out = torch.empty(x.shape[0], dtype=torch.float64)
    for a in range(0, x.shape[0], chunk):
        b = min(a + chunk, x.shape[0])
        d = torch.cdist(x[a:b], x, p=INF)
        r = radius[a:b, None].to(d.dtype)
        out[a:b] = ((d < r) if strict else (d <= r)).sum(1).double() - 1  # minus the row itself
    return out


def ksg_terms(z: torch.Tensor, s: torch.Tensor, k: int = 3, chunk: int = 1024) -> torch.Tensor:
    """Per-sample terms of KSG estimator 1 (their mean is the estimate, nats). z (N, D), s (N, K) floats."""
    n = z.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must lie in [1, N-1] = [1, {n - 1}], got {k}")
    eps = kth_distance(torch.cat([z, s], dim=1), k, chunk)  # joint max-norm = max of the two max-norms
    nz = count_within(z, eps, strict=True, chunk=chunk)
    ns = count_within(s, eps, strict=True, chunk=chunk)
    dg = torch.special.digamma
    const = float(dg(torch.tensor(float(k), dtype=torch.float64)) + dg(torch.tensor(float(n), dtype=torch.float64)))
    return const - dg(nz + 1) - dg(ns + 1)


def mixed_terms(z: torch.Tensor, s: torch.Tensor, k: int = 3, chunk: int = 1024) -> torch.Tensor:
    """Per-sample terms of the discrete-label k-NN estimator (Ross 2014); samples of a label seen once
    are dropped. z (N, D) floats, s (N,) integer labels."""
    labels, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    radius = torch.full((z.shape[0],), float("nan"), dtype=torch.float64)
    k_eff = torch.zeros(z.shape[0], dtype=torch.float64)
    for c in range(labels.numel()):
        idx = (inverse == c).nonzero().flatten()
        if idx.numel() < 2:
            continue
        kc = min(k, idx.numel() - 1)
        radius[idx] = kth_distance(z[idx], kc, chunk).double()
        k_eff[idx] = float(kc)
    keep = ~radius.isnan()
    if keep.sum() < 2:
        raise ValueError("every label occurs once: no within-label neighbours, MI cannot be estimated")
    # m_i: other samples of any label within r_i, the k-th same-label neighbour included
    m = count_within(z[keep], radius[keep], strict=False, chunk=chunk)
    n = int(keep.sum())
    n_label = counts[inverse[keep]].double()
    dg = torch.special.digamma
    return dg(torch.tensor(float(n), dtype=torch.float64)) - dg(n_label) + dg(k_eff[keep]) - dg(m.clamp_min(1))


DENSE_NULL_MAX = 4096  # continuous s: the permutation null keeps N x N distance matrices up to this N
NULL_LIST = 64  # discrete s: neighbours listed per sample for the permutation null


def ksg_terms_dense(dz: torch.Tensor, ds: torch.Tensor, k: int) -> torch.Tensor:
    """``ksg_terms`` from precomputed max-norm distance matrices (N, N) of z and of s."""
    n = dz.shape[0]
    joint = torch.maximum(dz, ds).fill_diagonal_(INF)
    eps = joint.topk(k, dim=1, largest=False).values[:, -1:]
    nz = (dz < eps).sum(1).double() - 1  # the diagonal (0) counts the row itself
    ns = (ds < eps).sum(1).double() - 1
    dg = torch.special.digamma
    const = float(dg(torch.tensor(float(k), dtype=torch.float64)) + dg(torch.tensor(float(n), dtype=torch.float64)))
    return const - dg(nz + 1) - dg(ns + 1)


def nearest_lists(x: torch.Tensor, m: int, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The m nearest other rows of each row of x (N, D), max-norm, sorted: (distances (N, m), indices (N, m)).
    Distances in float64 (as ``kth_distance`` and ``count_within``)."""
    x = x.double()
    dist = torch.empty(x.shape[0], m, dtype=x.dtype)
    idx = torch.empty(x.shape[0], m, dtype=torch.long)
    for a in range(0, x.shape[0], chunk):
        b = min(a + chunk, x.shape[0])
        d = torch.cdist(x[a:b], x, p=INF)
        rows = torch.arange(b - a)
        d[rows, rows + a] = INF
        dist[a:b], idx[a:b] = d.topk(m, dim=1, largest=False)  # topk of the smallest comes sorted
    return dist, idx


def mixed_terms_listed(x: torch.Tensor, s: torch.Tensor, k: int, dist: torch.Tensor, idx: torch.Tensor,
                       chunk: int = 1024) -> torch.Tensor:
    """``mixed_terms`` computed from each row's nearest-neighbour list (``nearest_lists``); rows whose k-th
    same-label neighbour is not strictly inside their list are computed against every row. Equal to
    ``mixed_terms`` (same distances, same counts), at O(N x list length) for most rows."""
    _, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    n_label = counts[inverse]
    keep = n_label >= 2
    if keep.sum() < 2:
        raise ValueError("every label occurs once: no within-label neighbours, MI cannot be estimated")
    k_eff = torch.clamp(n_label - 1, max=k)
    same = (inverse[idx] == inverse[:, None]).cumsum(1) >= k_eff[:, None]  # (N, m): k-th same label reached
    found = same.any(1)
    pos = same.int().argmax(1)
    radius = dist.gather(1, pos[:, None]).squeeze(1)
    found &= radius < dist[:, -1]  # a tie with the list's last distance could hide equal ones beyond it
    within = ((dist <= radius[:, None]) & keep[idx]).sum(1).double()  # other kept rows within r_i
    rest = (keep & ~found).nonzero().flatten()  # the rows the list does not settle: against every row
    xx = x.double()
    for block in rest.split(chunk):
        d = torch.cdist(xx[block], xx, p=INF)
        d[torch.arange(block.numel()), block] = INF
        same_label = d.masked_fill(inverse[None, :] != inverse[block][:, None], INF)
        r = same_label.sort(1).values.gather(1, (k_eff[block] - 1)[:, None])
        within[block] = ((d <= r) & keep[None, :]).sum(1).double()
    sub = keep.nonzero().flatten()
    dg = torch.special.digamma
    n = float(sub.numel())
    return (dg(torch.tensor(n, dtype=torch.float64)) - dg(n_label[sub].double()) + dg(k_eff[sub].double())
            - dg(within[sub].clamp_min(1)))


@register_estimator("ksg")
class KSG(Estimator):
    """Kraskov k-NN point estimate (estimator 1); Ross's mixed variant for discrete s. No training."""

    kind = "point"
    trains = False

    class Params(EstimatorParams):
        k: int = Field(3, ge=1, description="neighbours (Kraskov et al. recommend 2-4 for low bias)")
        jitter: float = Field(1e-5, ge=0, description="tie-breaking noise, x each dimension's std (0: off)")
        chunk: int = Field(1024, ge=1, description="rows per distance block (memory: chunk x N floats)")

    def terms(self, z: torch.Tensor, s: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, int]:
        """(per-sample terms whose mean is the estimate in nats, the reduced dimension)."""
        p = self.params
        reducer = Reducer(z, p.standardize, p.pca, seed)
        gen = torch.Generator().manual_seed(seed)
        x = _jitter(reducer(z), p.jitter, gen)
        if s.ndim == 1:
            return mixed_terms(x, s, p.k, p.chunk), reducer.dim
        return ksg_terms(x, _jitter(Scaler(s, p.standardize)(s), p.jitter, gen), p.k, p.chunk), reducer.dim

    def statistic(self, z: torch.Tensor, s: torch.Tensor, *, seed: int = 0) -> float:
        return float(self.terms(z, s, seed)[0].mean())

    def null_values(self, z: torch.Tensor, s: torch.Tensor, n_perm: int, *, seed: int = 0) -> torch.Tensor:
        """Permutation null (see ``Estimator.null_values``). Labels: each sample's ``NULL_LIST`` nearest
        neighbours are found once and a shuffle costs O(N x NULL_LIST). Continuous s in more than
        ``TREE_MAX_DIM`` dimensions (z and s together) and up to ``DENSE_NULL_MAX`` samples: the pairwise
        distances are computed once and a shuffle costs O(N^2); otherwise every shuffle reruns the estimator."""
        if s.ndim == 2 and (z.shape[0] > DENSE_NULL_MAX or z.shape[1] + s.shape[1] <= TREE_MAX_DIM):
            return super().null_values(z, s, n_perm, seed=seed)  # (k-d trees in few dimensions: fast enough)
        p = self.params
        gen = torch.Generator().manual_seed(seed)
        x = _jitter(Reducer(z, p.standardize, p.pca, seed)(z), p.jitter, gen)
        perm_gen = torch.Generator().manual_seed(seed + 104729)
        n = z.shape[0]
        if s.ndim == 1:
            dist, idx = nearest_lists(x, min(NULL_LIST, n - 1), p.chunk)
            return torch.tensor([float(mixed_terms_listed(x, s[torch.randperm(n, generator=perm_gen)], p.k, dist, idx,
                                                          p.chunk).mean()) for _ in range(n_perm)], dtype=torch.float64)
        dz = torch.cdist(x.double(), x.double(), p=INF)
        sj = _jitter(Scaler(s, p.standardize)(s), p.jitter, gen).double()
        ds = torch.cdist(sj, sj, p=INF)
        out = []
        for _ in range(n_perm):
            perm = torch.randperm(n, generator=perm_gen)
            out.append(float(ksg_terms_dense(dz, ds[perm][:, perm], p.k).mean()))
        return torch.tensor(out, dtype=torch.float64)

    def estimate(self, z: torch.Tensor, s: torch.Tensor, *, n_boot: int = 500, seed: int = 0) -> MIResult:
        terms, dim = self.terms(z, s, seed)
        value = float(terms.mean())
        ci = mean_ci(terms, n_boot=n_boot, seed=seed)
        variant = "ross2014" if s.ndim == 1 else "ksg1"
        return MIResult(value, ci, self.name, self.kind, int(z.shape[0]),
                        details={"variant": variant, "k": self.params.k, "dim": dim, "n_used": int(terms.numel()),
                                 "trained": True})  # nothing to train: always usable
