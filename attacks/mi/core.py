"""The functional core of the MI estimators: input checks, the result type, the estimator registry.

An estimator is a small class registered in ``ESTIMATORS`` with a pydantic
``Params`` model, a ``kind`` ("lower", "upper" or "point"), the types of ``s``
it accepts ("discrete" (N,) integer labels, "continuous" (N, K) floats) and two
steps: ``fit(z, s)`` on training samples (a no-op for the k-NN estimator) and
``estimate(z, s)`` on held-out samples, which returns an :class:`MIResult` in
nats with a 95% confidence interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from audit.registry import PluginParams, Registry
from audit.training import TrainerSettings

Kind = Literal["lower", "upper", "point"]
SType = Literal["discrete", "continuous"]


class MIInputError(ValueError):
    """z or s cannot be used (shape, length, NaN, label type) or the method does not take them."""


@dataclass(frozen=True)
class MIResult:
    """An estimate of I(Z; S) in nats.

    ``kind``: "lower" (a variational lower bound: its expectation is <= the truth),
    "upper" (an upper bound under the method's stated condition) or "point" (an
    estimate that may err either way). ``ci95``: 95% interval by bootstrap over the
    ``n`` evaluation samples (see each method for what is resampled). ``details``:
    method-specific facts (training epochs, reduced dimension, ...)."""

    nats: float
    ci95: tuple[float, float]
    method: str
    kind: Kind
    n: int
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
    settings: TrainerSettings | None = None,
    **params: Any,
) -> MIResult:
    """Estimate I(Z; S) in nats.

    z: (N, D) float features. s: (N,) integer labels (discrete) or (N, K) floats (continuous).
    method: a name from ``list_methods()``; ``params``: that method's parameters.
    Methods that train hold out a seeded random ``eval_fraction`` of the samples and
    estimate on those only (the rest trains the estimator, with its own validation part);
    k-NN estimators use every sample. CIs: bootstrap over evaluation samples (``n_boot``).
    """
    cls = ESTIMATORS.get(method)  # unknown name: the error lists the known methods
    z, s = check_inputs(z, s)
    check_method(cls, s)
    estimator = ESTIMATORS.create(method, **params)
    num_classes = None
    if s.ndim == 1:
        s, num_classes = remap_labels(s)
    if not cls.trains:
        return estimator.estimate(z, s, n_boot=n_boot, seed=seed)
    if not 0.0 < eval_fraction < 1.0:
        raise MIInputError(f"eval_fraction must lie in (0, 1), got {eval_fraction}")
    perm = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(seed))
    n_eval = int(round(z.shape[0] * eval_fraction))
    if n_eval < 4 or z.shape[0] - n_eval < 8:
        raise MIInputError(f"{z.shape[0]} samples are too few to train on and hold out {eval_fraction:.0%}")
    ev, tr = perm[:n_eval], perm[n_eval:]
    estimator.fit(z[tr], s[tr], num_classes=num_classes, settings=settings, seed=seed)
    return estimator.estimate(z[ev], s[ev], n_boot=n_boot, seed=seed)
