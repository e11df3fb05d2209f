"""The functional core of the MI estimators: input checks, the result type, the estimator registry.

An estimator is a small class registered in ``ESTIMATORS`` with a pydantic
``Params`` model, a ``kind`` ("lower", "upper" or "point"), the types of ``s``
it accepts ("discrete" (N,) integer labels, "continuous" (N, K) floats) and two
steps: ``fit(z, s)`` on training samples (a no-op for the k-NN estimator) and
``estimate(z, s)`` on held-out samples, which returns an :class:`MIResult` in
nats with a 95% confidence interval. ``statistic(z, s)`` is the estimate alone; the
permutation null (``null_values``) recomputes it with s shuffled among the
evaluation samples, the fitted estimator held fixed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from attacks.mi.intervals import crossfit_interval, nonnegative, null_summary, permutation_p_value
from audit.core.registry import PluginParams, Registry
from audit.core.training import TrainerSettings

Kind = Literal["lower", "upper", "point"]
SType = Literal["discrete", "continuous"]


class MIInputError(ValueError):
    """z or s cannot be used (shape, length, NaN, label type) or the method does not take them."""


@dataclass(frozen=True)
class MIResult:
    """An estimate of I(Z; S) in nats.

    ``kind``: "lower" (a variational lower bound: its expectation is <= the truth),
    "upper" (an upper bound under the method's stated condition) or "point" (an
    estimate that may err either way). ``ci95``: 95% interval in nats; with one split,
    a bootstrap over the ``n`` evaluation samples (see each method for what is
    resampled); cross-fitted (``folds`` > 1), it also carries the spread between folds,
    i.e. which samples trained the estimator and the training itself (see
    ``attacks.mi.intervals``). ``p_value``: permutation p-value of "I(Z; S) > 0"
    against the estimator's own null (s shuffled among the evaluation samples), None
    when no permutations ran. ``details``: method-specific facts (training epochs,
    reduced dimension, the null's summary, ...); every estimator says ``trained``: whether its fit gave a
    usable estimator (a critic with a finite validation check; always True for the k-NN estimator)."""

    nats: float
    ci95: tuple[float, float]
    method: str
    kind: Kind
    n: int
    p_value: float | None = None
    details: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def bits(self) -> float:
        return self.nats / math.log(2.0)


@dataclass(frozen=True)
class MethodInfo:
    """What ``list_methods`` says of one estimator."""

    name: str
    kind: Kind
    accepts: tuple[SType, ...]
    trains: bool
    description: str


class EstimatorParams(PluginParams):
    """Pre-processing shared by every estimator (fitted on the estimator's training data)."""

    standardize: bool = Field(True, description="scale every z (and continuous s) dimension to zero mean, unit variance")
    pca: int | None = Field(None, ge=1, description="project z on its top principal components first (None: keep D)")


class Estimator:
    """Base class: ``fit`` on training samples, ``estimate`` on held-out ones."""

    name: ClassVar[str]
    kind: ClassVar[Kind]
    accepts: ClassVar[tuple[SType, ...]] = ("discrete", "continuous")
    trains: ClassVar[bool] = True
    Params: ClassVar[type[EstimatorParams]] = EstimatorParams

    def __init__(self, params: EstimatorParams):
        self.params = params

    def fit(self, z: torch.Tensor, s: torch.Tensor, *, num_classes: int | None = None,
            settings: TrainerSettings | None = None, seed: int = 0) -> "Estimator":
        """Fit on training samples z (N, D), s (N,) labels in [0, num_classes) or (N, K) floats."""
        return self

    def estimate(self, z: torch.Tensor, s: torch.Tensor, *, n_boot: int = 500, seed: int = 0) -> MIResult:
        raise NotImplementedError

    def statistic(self, z: torch.Tensor, s: torch.Tensor, *, seed: int = 0) -> float:
        """The estimate (nats) on evaluation samples, without its CI."""
        raise NotImplementedError

    def null_values(self, z: torch.Tensor, s: torch.Tensor, n_perm: int, *, seed: int = 0) -> torch.Tensor:
        """(n_perm,) statistics (nats) with s randomly permuted among the evaluation samples, the fitted
        estimator held fixed. Under independence, and with evaluation samples that did not train the
        estimator, the observed statistic is exchangeable with these: ``permutation_p_value`` is exact."""
        gen = torch.Generator().manual_seed(seed + 104729)
        n = z.shape[0]
        return torch.tensor([self.statistic(z, s[torch.randperm(n, generator=gen)], seed=seed) for _ in range(n_perm)],
                            dtype=torch.float64)


ESTIMATORS: Registry[Estimator] = Registry("MI estimator")
register_estimator = ESTIMATORS.register


def list_methods() -> list[MethodInfo]:
    """Every registered estimator: name, kind, accepted s types, whether it trains, one-line description."""
    out = []
    for name in ESTIMATORS.list():
        cls = ESTIMATORS.get(name)
        doc = (cls.__doc__ or "").strip().splitlines()
        out.append(MethodInfo(name, cls.kind, tuple(cls.accepts), cls.trains, doc[0] if doc else ""))
    return out


# ---------------------------------------------------------------- input checks
def s_type(s: torch.Tensor) -> SType:
    return "discrete" if s.ndim == 1 else "continuous"


def check_inputs(z: torch.Tensor, s: torch.Tensor, min_n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate (z, s); returns z as float32 (N, D) and s as int64 (N,) or float32 (N, K)."""
    if not isinstance(z, torch.Tensor) or not isinstance(s, torch.Tensor):
        raise MIInputError(f"z and s must be torch tensors, got {type(z).__name__} and {type(s).__name__}")
    if z.ndim != 2:
        hint = (" (spatial features: pool or flatten them first, e.g. attacks.mi.flatten_features(z, pool=4))"
                if z.ndim > 2 else " (one feature per sample: pass z[:, None])")
        raise MIInputError(f"z must be (N, D), got shape {tuple(z.shape)}{hint}")
    if s.ndim not in (1, 2):
        raise MIInputError(f"s must be (N,) discrete labels or (N, K) continuous values, got shape {tuple(s.shape)}")
    if z.shape[0] != s.shape[0]:
        raise MIInputError(f"z and s must have the same number of samples N, got {z.shape[0]} and {s.shape[0]}")
    if z.shape[0] < min_n:
        raise MIInputError(f"need at least {min_n} samples, got {z.shape[0]}")
    if z.shape[1] == 0 or (s.ndim == 2 and s.shape[1] == 0):
        raise MIInputError(f"z and s need at least one dimension, got shapes {tuple(z.shape)} and {tuple(s.shape)}")
    if z.is_complex():
        raise MIInputError(f"z must be real, got dtype {z.dtype}")
    z = z.detach().float()
    if not torch.isfinite(z).all():
        bad = (~torch.isfinite(z)).any(1).nonzero().flatten()
        raise MIInputError(f"z has NaN/inf values in {bad.numel()} rows (first: {bad[:5].tolist()})")
    if s.ndim == 1:
        if s.is_floating_point() or s.is_complex():
            raise MIInputError(
                f"s of shape (N,) must hold integer class labels, got dtype {s.dtype}; "
                "pass a continuous s as (N, 1), e.g. s[:, None]")
        s = s.detach().long()
    else:
        s = s.detach().float()
        if not torch.isfinite(s).all():
            bad = (~torch.isfinite(s)).any(1).nonzero().flatten()
            raise MIInputError(f"s has NaN/inf values in {bad.numel()} rows (first: {bad[:5].tolist()})")
    return z, s


def check_method(cls: type[Estimator], s: torch.Tensor) -> None:
    kind = s_type(s)
    if kind not in cls.accepts:
        raise MIInputError(
            f"method {cls.name!r} does not take {kind} s (it takes: {', '.join(cls.accepts)}); "
            f"methods for {kind} s: {', '.join(m.name for m in list_methods() if kind in m.accepts)}")


def check_labels(s: torch.Tensor, num_classes: int) -> None:
    if s.numel() and (int(s.min()) < 0 or int(s.max()) >= num_classes):
        raise MIInputError(f"labels must lie in [0, {num_classes}), got range [{int(s.min())}, {int(s.max())}]")


# ---------------------------------------------------------------- pre-processing
class Reducer:
    """Standardisation and optional PCA of z, fitted on one set of samples and applied to others.

    PCA uses no labels, so by data processing I(reduce(Z); S) <= I(Z; S): a lower bound
    on the reduced feature stays a lower bound on the original one (an upper bound does not)."""

    def __init__(self, z: torch.Tensor, standardize: bool, pca: int | None, seed: int = 0):
        self.mean = z.mean(0) if standardize else torch.zeros(z.shape[1])
        self.std = z.std(0).clamp_min(1e-8) if standardize and z.shape[0] > 1 else torch.ones(z.shape[1])
        self.projection: torch.Tensor | None = None
        if pca is not None and pca < z.shape[1]:
            q = min(pca, z.shape[0] - 1)
            x = (z - self.mean) / self.std
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                _, _, v = torch.pca_lowrank(x, q=q, center=True, niter=4)
            self.projection = v[:, :q]
            self.out_mean = (x @ self.projection).mean(0)
            self.out_std = (x @ self.projection).std(0).clamp_min(1e-8) if standardize else torch.ones(q)

    @property
    def dim(self) -> int:
        return self.projection.shape[1] if self.projection is not None else self.mean.shape[0]

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        x = (z - self.mean) / self.std
        if self.projection is not None:
            x = (x @ self.projection - self.out_mean) / self.out_std
        return x


class Scaler:
    """Per-dimension standardisation of a continuous s (identity for labels)."""

    def __init__(self, s: torch.Tensor, standardize: bool):
        self.on = standardize and s.ndim == 2
        if self.on:
            self.mean, self.std = s.mean(0), s.std(0).clamp_min(1e-8)

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        return (s - self.mean) / self.std if self.on else s


# ---------------------------------------------------------------- the entry point
def remap_labels(s: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Arbitrary integer labels -> 0..K-1; returns (labels, K)."""
    values, inverse = torch.unique(s, return_inverse=True)
    return inverse, int(values.numel())


def estimate_mi(
    z: torch.Tensor,
    s: torch.Tensor,
    method: str = "ksg",
    *,
    n_boot: int = 500,
    seed: int = 0,
    eval_fraction: float = 0.3,
    folds: int = 1,
    n_perm: int = 0,
    settings: TrainerSettings | None = None,
    **params: Any,
) -> MIResult:
    """Estimate I(Z; S) in nats.

    z: (N, D) float features. s: (N,) integer labels (discrete) or (N, K) floats (continuous).
    method: a name from ``list_methods()``; ``params``: that method's parameters.
    Methods that train hold out a seeded random ``eval_fraction`` of the samples and
    estimate on those only (the rest trains the estimator, with its own validation part);
    with ``folds`` = K >= 2 they are cross-fitted instead: K estimators, each trained on
    K - 1 folds and scored on the remaining one, so every sample is scored once and the CI
    carries the between-fold spread (``attacks.mi.intervals``; cost ~K fits; ``eval_fraction``
    is then unused). k-NN estimators use every sample (``folds`` does not apply).
    CIs: bootstrap over evaluation samples (``n_boot``), widened by the fold spread when
    cross-fitted (the p-value is then twice the mean of the folds' exact p-values, valid whatever
    their dependence; Vovk & Wang 2020). Value and CI are mapped into [0, inf) (MI is non-negative; the raw ones in
    ``details["raw"]`` when that changed them). ``n_perm`` > 0: permutation null (s shuffled among
    the evaluation samples, estimator held fixed; no refitting) and its p-value, computed on the
    raw value, in ``MIResult.p_value``.
    Deterministic for a given ``seed``.
    """
    cls = ESTIMATORS.get(method)  # unknown name: the error lists the known methods
    z, s = check_inputs(z, s)
    check_method(cls, s)
    if folds < 1:
        raise MIInputError(f"folds must be >= 1, got {folds}")
    if n_perm < 0:
        raise MIInputError(f"n_perm must be >= 0, got {n_perm}")
    estimator = ESTIMATORS.create(method, **params)
    num_classes = None
    if s.ndim == 1:
        s, num_classes = remap_labels(s)
    if not cls.trains:
        return clipped(with_null(estimator.estimate(z, s, n_boot=n_boot, seed=seed), estimator, z, s, n_perm, seed))
    perm = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(seed))
    if folds == 1:
        if not 0.0 < eval_fraction < 1.0:
            raise MIInputError(f"eval_fraction must lie in (0, 1), got {eval_fraction}")
        n_eval = int(round(z.shape[0] * eval_fraction))
        if n_eval < 4 or z.shape[0] - n_eval < 8:
            raise MIInputError(f"{z.shape[0]} samples are too few to train on and hold out {eval_fraction:.0%}")
        ev, tr = perm[:n_eval], perm[n_eval:]
        estimator.fit(z[tr], s[tr], num_classes=num_classes, settings=settings, seed=seed)
        return clipped(with_null(estimator.estimate(z[ev], s[ev], n_boot=n_boot, seed=seed), estimator, z[ev], s[ev],
                                 n_perm, seed))
    return clipped(crossfit(z, s, method, params, perm, folds, num_classes, n_boot, n_perm, seed, settings))


def clipped(result: MIResult) -> MIResult:
    """``result`` with its value and CI mapped into [0, inf) (``intervals.nonnegative``); when that changed
    them, the raw ones are kept in ``details["raw"]``."""
    value, ci = nonnegative(result.nats, result.ci95)
    if (value, ci) == (result.nats, tuple(result.ci95)):
        return result
    return replace(result, nats=value, ci95=ci,
                   details={**result.details, "raw": {"nats": result.nats, "ci95": tuple(result.ci95)}})


def with_null(result: MIResult, estimator: Estimator, z: torch.Tensor, s: torch.Tensor, n_perm: int,
              seed: int) -> MIResult:
    """``result`` with the permutation null of ``estimator`` on its evaluation samples (z, s) added."""
    if n_perm == 0:
        return result
    null = estimator.null_values(z, s, n_perm, seed=seed)
    return replace(result, p_value=permutation_p_value(result.nats, null),
                   details={**result.details, "null": null_summary(null)})


def crossfit(z: torch.Tensor, s: torch.Tensor, method: str, params: dict[str, Any], perm: torch.Tensor, folds: int,
             num_classes: int | None, n_boot: int, n_perm: int, seed: int,
             settings: TrainerSettings | None) -> MIResult:
    """K-fold cross-fitted estimate (see ``estimate_mi``); fold k's estimator is seeded ``seed + k``."""
    parts = list(torch.tensor_split(perm, folds))
    if min(p.numel() for p in parts) < 4 or z.shape[0] - max(p.numel() for p in parts) < 8:
        raise MIInputError(f"{z.shape[0]} samples are too few for {folds} folds")
    results, nulls = [], []
    for k, ev in enumerate(parts):
        tr = torch.cat([p for j, p in enumerate(parts) if j != k])
        est = ESTIMATORS.create(method, **params)
        est.fit(z[tr], s[tr], num_classes=num_classes, settings=settings, seed=seed + k)
        results.append(est.estimate(z[ev], s[ev], n_boot=n_boot, seed=seed + k))
        if n_perm:
            nulls.append(est.null_values(z[ev], s[ev], n_perm, seed=seed + k))
    sizes = [r.n for r in results]
    value, ci, facts = crossfit_interval([r.nats for r in results], [r.ci95 for r in results], sizes)
    details = {**results[0].details, **facts, "trained": all(r.details.get("trained", False) for r in results)}
    p_value = None
    if n_perm:
        # Each fold's p-value is exact (its estimator never saw the fold), but the folds' statistics are
        # dependent (each estimator trained on the other folds), so a null made of independent per-fold
        # shuffles is too narrow for their sum. Twice the mean of p-values is valid under any dependence.
        fold_p = [permutation_p_value(r.nats, nl) for r, nl in zip(results, nulls)]
        p_value = min(1.0, 2.0 * sum(fold_p) / len(fold_p))
        w = torch.tensor(sizes, dtype=torch.float64) / sum(sizes)
        details["null"] = null_summary((torch.stack(nulls) * w[:, None]).sum(0))
        details["fold_p_values"] = fold_p
    return MIResult(value, ci, method, results[0].kind, sum(sizes), p_value, details)
