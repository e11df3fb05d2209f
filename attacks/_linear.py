"""Linear tools shared by the attacks: a chunked, cached PCA basis of standardised features and a torch
multinomial logistic regression whose L2 strength is chosen on one validation split.

PCA (:func:`pca_basis`): the top right singular vectors of the per-element standardised, flattened
features (N, D), by randomised subspace iteration (Halko et al. 2011, the algorithm of
``torch.svd_lowrank``) run on row chunks, so no standardised (N, D) copy exists (1.8 GB for 1,715
UTKFace conv1 features). Its random start comes from a fixed generator, not from the attack's seed:
the basis is a property of the features, so attacks of one (cut point, defense) share it; a small
cache keyed by the feature tensor's identity (and in-place version) hands it to the next caller and
drops it when the tensor is freed.

Logistic regression (:func:`fit_logistic`): softmax over K classes, class-balanced cross-entropy
(sklearn's ``class_weight="balanced"``) plus ``||W||^2 / (2 C n)`` (sklearn's objective divided by
``C n``; the bias is not penalised), full batch, float64, truncated Newton (conjugate gradients on
exact Hessian-vector products; sklearn's ``newton-cg`` idea). Strengths ``C`` on sklearn's
default grid ``logspace(-4, 4, cs)`` are fitted from the strongest to the weakest, each warm-started
from the previous one, on the training part of each seeded split (k folds below ``cv_below`` rows, else
one validation split), until ``patience`` strengths in a row did not beat the best (and below the grid,
by its step, while the strongest regularisation keeps winning); the C with the best mean validation
balanced accuracy (ties, common on small validation splits: the lower class-balanced validation
cross-entropy to 1e-6 nats, then the stronger regularisation) is refitted on all rows, warm-started
from the folds' mean solution.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_accuracy

from audit.core.chunked import column_stats, standardized_svd
from audit.core.training import class_weights

CG_MAX_ITER = 200  # conjugate-gradient steps per Newton step (sklearn's newton-cg: 200); uncapped (10 k d) one
# fit at UTKFace pool3 (PCA-256, 5 races, C = 720) took 79 s in 31k Hessian-vector products


# ------------------------------------------------------------------ PCA
@dataclass(frozen=True)
class PCABasis:
    """mean, std: (D,) per-element statistics; projection: (D, q) orthonormal top principal directions of
    the standardised features; variances: (q,) their sample variances (descending)."""

    mean: torch.Tensor
    std: torch.Tensor
    projection: torch.Tensor
    variances: torch.Tensor


_CACHE: dict[tuple, tuple[weakref.ref, PCABasis]] = {}


def pca_basis(z: torch.Tensor, components: int, *, niter: int = 3) -> PCABasis:
    """The standardised PCA basis of features z (N, ...) with min(components, N - 1, D) directions;
    reused while the same tensor z (unchanged in place) is asked again with the same settings."""
    key = (id(z), z._version, tuple(z.shape), z.dtype, components, niter)
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is z:
        return hit[1]
    flat = z.flatten(1)
    mean, std = column_stats(flat)
    q = min(components, flat.shape[0] - 1, flat.shape[1])
    projection, s = standardized_svd(flat, mean, std, q, niter=niter)
    basis = PCABasis(mean, std, projection, s.pow(2) / max(flat.shape[0] - 1, 1))
    for old in [k for k in _CACHE if k[0] == id(z)]:  # a stale version of this tensor
        del _CACHE[old]
    _CACHE[key] = (weakref.ref(z), basis)
    weakref.finalize(z, _CACHE.pop, key, None)
    return basis


# ------------------------------------------------------------------ logistic regression
@dataclass(frozen=True)
class LogisticModel:
    """Multinomial logistic regression: logits = x @ weight + bias; weight (d, K), bias (K,); float64."""

    weight: torch.Tensor
    bias: torch.Tensor
    c: float

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x.double() @ self.weight + self.bias

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K) class probabilities, float64: in float32 confident ones round to exactly 1, and AUROC's
        order among them (ties) would hang on the features' last bits."""
        return self.logits(x).softmax(dim=1)


def _objective(a: torch.Tensor, onehot: torch.Tensor, w: torch.Tensor, penalty: float, theta: torch.Tensor):
    """(loss, probabilities) of sum_i w_i CE(a_i theta, y_i) + penalty / 2 ||theta[:-1]||^2; a (N, d + 1) with a
    last column of ones, w (N,) summing to 1, theta (d + 1, K)."""
    logits = a @ theta
    logp = logits.log_softmax(dim=1)
    loss = -(w * (onehot * logp).sum(1)).sum() + 0.5 * penalty * theta[:-1].pow(2).sum()
    return loss, logp.exp()


def _newton(a: torch.Tensor, y: torch.Tensor, w: torch.Tensor, penalty: float, start: torch.Tensor, max_iter: int,
            tol: float = 1e-7) -> torch.Tensor:
    """Minimise :func:`_objective` from ``start`` by truncated Newton: each step solves H step = grad by
    conjugate gradients on exact Hessian-vector products (Jacobi preconditioner), then backtracks (Armijo);
    stops when the largest gradient entry is under ``tol``. theta: (d + 1, K), float64."""
    k = start.shape[1]
    onehot = F.one_hot(y, k).double()
    ridge = torch.full((a.shape[1], 1), penalty, dtype=a.dtype)
    ridge[-1] = 1e-10  # the bias is not penalised; the jitter fixes the softmax's shift invariance
    theta = start.clone()
    loss, p = _objective(a, onehot, w, penalty, theta)
    for _ in range(max_iter):
        grad = a.T @ (w[:, None] * (p - onehot)) + ridge * theta
        gmax = float(grad.abs().max())
        if gmax < tol:
            break

        def hvp(v: torch.Tensor, p=p) -> torch.Tensor:  # H v for v (d + 1, K)
            zv = a @ v
            return a.T @ (w[:, None] * p * (zv - (p * zv).sum(1, keepdim=True))) + ridge * v

        diag = (a * a).T @ (w[:, None] * p * (1 - p)) + ridge
        step = _pcg(hvp, grad, 1.0 / diag, min(0.5, gmax**0.5) * float(grad.norm()), min(CG_MAX_ITER, 10 * k * a.shape[1]))
        slope = float((grad * step).sum())
        t = 1.0
        while True:
            candidate = theta - t * step
            new_loss, new_p = _objective(a, onehot, w, penalty, candidate)
            if float(new_loss) <= float(loss) - 1e-4 * t * slope or t < 1e-10:
                break
            t /= 2
        done = float(loss - new_loss) <= 1e-15 * max(1.0, abs(float(loss)))
        theta, loss, p = candidate, new_loss, new_p
        if done:
            break
    return theta


def _pcg(hvp, b: torch.Tensor, m_inv: torch.Tensor, tol: float, max_iter: int) -> torch.Tensor:
    """Preconditioned conjugate gradients for H x = b (H symmetric positive definite, given as ``hvp``)."""
    x = torch.zeros_like(b)
    r = b.clone()
    z = m_inv * r
    d = z.clone()
    rz = float((r * z).sum())
    for _ in range(max_iter):
        hd = hvp(d)
        curvature = float((d * hd).sum())
        if curvature <= 0:
            break
        alpha = rz / curvature
        x += alpha * d
        r -= alpha * hd
        if float(r.norm()) <= tol:
            break
        z = m_inv * r
        rz_new = float((r * z).sum())
        d = z + (rz_new / rz) * d
        rz = rz_new
    return x if bool(x.abs().sum() > 0) else b * m_inv


def _fit(a: torch.Tensor, y: torch.Tensor, k: int, c: float, start: torch.Tensor, max_iter: int) -> torch.Tensor:
    raw = class_weights(y, k).double()[y]  # sklearn's class_weight="balanced"
    return _newton(a, y, raw / raw.sum(), 1.0 / (c * float(raw.sum())), start, max_iter)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, k: int, *, cs: int = 8, val_fraction: float = 0.2, folds: int = 5,
                 cv_below: int = 5000, max_iter: int = 100, seed: int = 0, patience: int = 2,
                 extend: int = 4) -> tuple[LogisticModel, dict]:
    """Class-balanced L2 multinomial logistic regression of labels y (N,) in [0, k) on x (N, d); returns
    (model refitted on all rows at the chosen C, {"c": C, "folds": F, "val_balanced_accuracy": {C: score},
    "val_cross_entropy": {C: nats}}), the validation figures averaged over the F folds, for the strengths
    fitted.

    The strength is chosen by ``folds``-fold cross-validation when N < ``cv_below`` (small validation splits
    are noisy: on 300 adult-like rows one 60-row split chose C = 1e-4 and read 0.666 test balanced
    accuracy where 0.76 was there), else on one seeded validation split of ``val_fraction``.

    The path walks the grid ``logspace(-4, 4, cs)`` upwards and stops once ``patience`` strengths in a row
    have not beaten the best (the weakly regularised end is the slow one: at UTKFace pool3 the last two
    strengths took 800 of 818 s and never won); when the best is the grid's strongest regularisation, the
    grid is extended downwards by its own step, at most ``extend`` times, while that improves."""
    a = torch.cat([x.double(), x.new_ones(x.shape[0], 1, dtype=torch.float64)], dim=1)
    y = y.long()
    n = a.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if n < cv_below and folds > 1 and n >= 2 * folds:
        parts = torch.tensor_split(perm, folds)  # as the MI estimators' cross-fitting (attacks.mi.core.crossfit)
        splits = [(part, torch.cat([p for j, p in enumerate(parts) if j != i])) for i, part in enumerate(parts)]
    else:
        n_val = max(1, int(n * val_fraction))
        splits = [(perm[:n_val], perm[n_val:])]
    grid = [float(c) for c in torch.logspace(-4, 4, cs, dtype=torch.float64)] if cs > 1 else [1.0]
    scores: dict[float, float] = {}
    losses: dict[float, float] = {}
    starts: dict[float, torch.Tensor] = {}
    thetas: dict[float, list[torch.Tensor]] = {}

    def evaluate(c: float, warm: list[torch.Tensor]) -> None:
        """Fit every fold at strength c from the warm starts; record the mean validation figures."""
        fitted, score, loss = [], 0.0, 0.0
        for (val, train), theta in zip(splits, warm):
            theta = _fit(a[train], y[train], k, c, theta, max_iter)
            fitted.append(theta)
            score += float(multiclass_accuracy((a[val] @ theta).argmax(1), y[val], num_classes=k,
                                               average="macro")) / len(splits)  # the balanced accuracy reported
            loss += float(F.cross_entropy(a[val] @ theta, y[val], weight=class_weights(y[val], k).double())) / len(splits)
        scores[c], losses[c], thetas[c] = score, loss, fitted
        starts[c] = sum(fitted) / len(fitted)

    def rank(c: float) -> tuple:
        return (round(scores[c], 9), -round(losses[c], 6), -c)  # losses within 1e-6 nats tie

    with one_thread():
        best, since, warm = None, 0, [torch.zeros(a.shape[1], k, dtype=torch.float64) for _ in splits]
        for c in grid:  # strongest regularisation first; each fit starts from the previous solution
            evaluate(c, warm)
            warm = thetas[c]
            if best is None or rank(c) > rank(best):
                best, since = c, 0
            else:
                since += 1
                if since >= patience:
                    break
        if best == grid[0] and len(grid) > 1:  # the optimum sits on the grid's edge: look beyond it
            c, step = grid[0], grid[1] / grid[0]
            for _ in range(extend):
                previous, c = c, c / step
                evaluate(c, thetas[previous])
                if rank(c) <= rank(best):
                    break
                best = c
        theta = _fit(a, y, k, best, starts[best], max_iter)
    order = sorted(scores)
    info = {"c": best, "folds": len(splits), "val_balanced_accuracy": {f"{c:.3g}": round(scores[c], 4) for c in order},
            "val_cross_entropy": {f"{c:.3g}": round(losses[c], 4) for c in order}}
    return LogisticModel(theta[:-1], theta[-1], best), info


@contextmanager
def one_thread():
    """torch on one thread inside: the products are small (N x 256), and on a busy 2-core machine a second
    thread made a 400 x 256 logistic fit ~20x slower (80 vs 4 ms per evaluation)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
