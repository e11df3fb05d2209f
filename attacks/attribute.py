"""Attribute inference: a classifier from the released feature to each private attribute.

``attribute`` (Lightning, trained on the attacker's auxiliary split with a
class-balanced loss; the epoch is chosen on a held-out part of that split):
- ``cnn`` head for spatial features (N, C, H, W): inputs above ``cnn_max_side`` (32 px) average-pooled
  2x2 first, then strided 3x3 convs down to 8x8 or less, a conv, 2x2 average pooling and a linear layer;
- ``plain`` head for spatial features: three stride-2 convs, global average pooling,
  a linear layer (no batch norm or dropout; issue 19's reference attacker);
- ``mlp`` head on the flattened feature;
- ``auto``: mlp for flat features; for spatial ones cnn and plain, and mlp too when the
  flattened feature has at most ``auto_mlp_max_dim`` elements; each head at each of
  ``widths``; the one with the highest balanced accuracy on the held-out part of the aux
  split is kept (the weights of its best validation epoch; with ``patience`` training stops
  that many epochs after it). The chosen head is then retrained on all of the aux split for that many epochs (``refit``).
  On UTKFace pool3 (128x8x8) the mlp head found more race leakage than the cnn head
  (0.493 vs 0.448 balanced accuracy): a fixed choice under-reports.

``attribute_linear``: the classic linear probe, class-balanced multinomial logistic
regression (torch, full-batch truncated Newton; :func:`attacks._linear.fit_logistic`) on the
standardised, PCA-reduced flattened feature; the L2 strength is chosen along a warm-started path by
5-fold cross-validation on aux splits under 5,000 rows (one validation split above), then refitted
on all of the aux data.

Features are standardised with statistics of the attacker's own data.
"""
from __future__ import annotations

from typing import Callable, Literal

import torch
from pydantic import Field
from torch import nn
from torchmetrics.functional.classification import multiclass_accuracy

from attacks import register_attack
from attacks._channel import release_batched
from attacks._linear import fit_logistic, pca_basis
from attacks.base import Attack, AttackContext, Score
from attacks.metrics import classification_scores
from audit.core.chunked import channel_stats, column_stats, standardize_rows
from audit.core.training import fit_classifier, predict

Predictor = Callable[[torch.Tensor], torch.Tensor]  # released features (N, ...) -> class probabilities (N, K)


def cnn_head(shape: tuple[int, ...], k: int, width: int, max_side: int | None = None) -> nn.Module:
    """Strided 3x3 convs (``width`` channels, batch norm, ReLU) down to 8x8 or less, a 3x3 conv, 2x2 average
    pooling, dropout, a linear layer; input (N, C, H, W) -> logits (N, k). With ``max_side`` the input is first
    average-pooled 2x2 while its smaller side exceeds ``max_side`` pixels (UTKFace conv1, 64x64: one pool; this
    head's fit 2.8x, the whole `auto` attack's ~2x faster; benchmarks/RESULTS.md "A pooled cnn head")."""
    channels, size = shape[0], min(shape[1], shape[2])
    layers: list[nn.Module] = []
    while max_side is not None and size > max_side:
        layers.append(nn.AvgPool2d(2))
        size //= 2
    while size > 8:
        layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        channels, size = width, (size + 1) // 2
    layers += [
        nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.2), nn.Linear(width * 4, k),
    ]
    return nn.Sequential(*layers)


def plain_head(shape: tuple[int, ...], k: int, width: int) -> nn.Module:
    """Three stride-2 3x3 convs (width / 4, width / 2, width channels) with ReLU, global average pooling, a
    linear layer: no batch norm, dropout or pooling grid. On 500 planted 16x16x16 features (5 classes) this
    plain net read 0.619 balanced accuracy where ``cnn_head`` read 0.536 (benchmarks/attack_speed.py)."""
    widths = [max(1, width // 4), max(1, width // 2), width]
    layers: list[nn.Module] = []
    channels = shape[0]
    for w in widths:
        layers += [nn.Conv2d(channels, w, 3, stride=2, padding=1), nn.ReLU()]
        channels = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, k))


def mlp_head(dim: int, k: int, width: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(dim, width), nn.ReLU(), nn.Dropout(0.2), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, k)
    )


class Standardize(nn.Module):
    """(z - mean) / std with statistics of the attacker's data (per channel for spatial features,
    per element otherwise); optionally projected on the top principal components
    (:func:`attacks._linear.pca_basis`: chunked, cached per feature tensor).

    Flat features are standardised 64 MB of rows at a time and the PCA never holds a standardised
    copy: at UTKFace conv1 (262,144 elements, 1 MB per sample) every full-size temporary costs
    ~1.8 GB for the aux split."""

    def __init__(self, z: torch.Tensor, spatial: bool, pca_components: int | None = None,
                 rows: torch.Tensor | None = None, stats: dict | None = None):
        """Statistics of ``z[rows]`` (all rows when None), read in chunks (no copy of the selection).
        ``stats``: a dict that keeps the per-channel / per-column statistics under the key ``spatial`` for
        the next Standardize of the same rows (the heads an attack tries on one split: each pass over UTKFace
        conv1's aux split reads 1.7 GB)."""
        super().__init__()
        self.spatial = spatial
        self.register_buffer("projection", None)
        if pca_components is not None and not spatial and z[0].numel() > pca_components:
            if rows is not None:
                z = z[rows]  # the PCA is cached per feature tensor; attacks that use it pass all rows
            basis = pca_basis(z, pca_components)  # chunked, and shared with other attacks on the same z
            self.register_buffer("mean", basis.mean)
            self.register_buffer("std", basis.std)
            self.projection = basis.projection
            return
        if stats is not None and spatial in stats:
            mean, std = stats[spatial]
        else:
            mean, std = channel_stats(z, rows) if spatial else column_stats(z.flatten(1), rows)
            if stats is not None:
                stats[spatial] = (mean, std)
        self.register_buffer("mean", mean[0] if spatial else mean)
        self.register_buffer("std", std[0] if spatial else std)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.spatial:  # one output tensor (a 128-row conv1 batch is 134 MB), the same values as (z - mean) / std
            return (z - self.mean).div_(self.std)
        return standardize_rows(z, self.mean, self.std, projection=self.projection)


class _AttributeBase(Attack):
    """Shared by the attribute attacks: one classifier per private target, scored on the test split."""

    def targets(self, ctx: AttackContext) -> list[str]:
        names = self.params.targets or list(ctx.aux.private)
        unknown = [t for t in names if t not in ctx.aux.private]
        if unknown:
            raise ValueError(f"{self.name}: unknown targets {unknown}; private labels: {list(ctx.aux.private)}")
        return names

    def fit_target(self, z: torch.Tensor, s: torch.Tensor, k: int, ctx: AttackContext) -> Predictor:
        raise NotImplementedError

    def fit(self, ctx: AttackContext) -> None:
        z = ctx.aux.z.float()
        self.predictors, self.models = {}, {}
        for t in self.targets(ctx):
            self.predictors[t] = self.fit_target(z, ctx.aux.private[t], ctx.num_classes[t], ctx)
            self.models[t] = self.describe_model()  # what was fitted for this target

    def score(self, ctx: AttackContext) -> list[Score]:
        z = ctx.test.z.float()
        scores = []
        for target, predictor in self.predictors.items():
            scores += classification_scores(
                target, predictor(z), ctx.test.private[target], ctx.num_classes[target],
                n_boot=ctx.n_boot, seed=ctx.seed, extra=dict(self.models.get(target, {})),
            )
        return scores

    def describe_model(self) -> dict:
        return {}


@register_attack("attribute")
class AttributeAttack(_AttributeBase):
    """Neural classifier (CNN head for spatial features, else MLP; Lightning) from released feature to each private attribute."""

    class Params(Attack.Params):
        head: Literal["auto", "cnn", "plain", "mlp"] = "auto"
        auto_mlp_max_dim: int = Field(16384, ge=0, description="auto: also try the mlp head up to this flattened size")
        targets: list[str] | None = Field(None, description="private attributes to attack (default: all)")
        epochs: int = Field(15, ge=1)
        batch_size: int = Field(128, ge=1)
        lr: float = Field(1e-3, gt=0)
        weight_decay: float = Field(1e-4, ge=0)
        width: int = Field(128, ge=1, description="hidden width of the head (the largest tried when widths is unset)")
        widths: list[int] | None = Field(
            None, min_length=1, description="hidden widths tried with each head, the best on validation kept; "
                                            "default [width]")
        cnn_max_side: int | None = Field(32, ge=8, description="the cnn head average-pools its input 2x2 while its "
                                                             "side exceeds this (px); None: never")
        patience: int | None = Field(None, ge=1, description="stop after this many epochs without a better validation "
                                                             "balanced accuracy (None: run every epoch; patience 4 "
                                                             "stopped the slow-starting plain head too early)")
        refit: bool = Field(True, description="retrain the chosen head and width on all of the aux split for the "
                                              "best epoch count (the validation part is data too)")
        val_fraction: float = Field(0.15, gt=0, lt=0.5, description="part of the aux split for epoch selection")
        augment: Literal["none", "hflip"] = Field(
            "none", description="hflip: also train on releases of the mirrored aux images (queried through the "
                                "release channel; for data whose labels survive mirroring, e.g. faces)")

    def head_names(self, z: torch.Tensor) -> list[str]:
        """The heads to train (the best on validation is kept)."""
        if self.params.head == "auto":
            if z.ndim != 4:
                return ["mlp"]
            return ["cnn", "plain", "mlp"] if z[0].numel() <= self.params.auto_mlp_max_dim else ["cnn", "plain"]
        if self.params.head in ("cnn", "plain") and z.ndim != 4:
            raise ValueError(f"the cnn head needs spatial features (N, C, H, W), got shape {tuple(z.shape)}")
        return [self.params.head]

    mirrored: torch.Tensor | None = None  # releases of the mirrored aux images, while fitting

    def fit(self, ctx: AttackContext) -> None:
        self.mirrored = mirrored_releases(ctx) if self.params.augment == "hflip" else None
        try:
            super().fit(ctx)
        finally:
            self.mirrored = None  # as large as the aux releases: not kept after fitting

    def width_choices(self) -> list[int]:
        p = self.params
        return list(dict.fromkeys(p.widths or [p.width]))

    def fit_target(self, z: torch.Tensor, s: torch.Tensor, k: int, ctx: AttackContext) -> Predictor:
        p = self.params
        perm = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(ctx.seed))
        n_val = max(1, int(z.shape[0] * p.val_fraction))
        val, train = perm[:n_val], perm[n_val:]
        z_val = z[val]
        best: tuple[float, str, int, nn.Module, dict] | None = None
        self.val_bacc: dict[str, float] = {}
        train_stats: dict = {}  # the statistics of the training rows, computed once for every head and width
        for name in self.head_names(z):
            for width in self.width_choices():
                report: dict = {}
                net = self.train_head(name, width, z, s, k, train, ctx, val=(z_val, s[val]), report=report,
                                      stats=train_stats)
                # the balanced accuracy the attack reports (and KeepBest monitored during training)
                score = float(multiclass_accuracy(predict(net, z_val), s[val], num_classes=k, average="macro"))
                self.val_bacc[f"{name}{width}"] = round(score, 4)
                if best is None or score > best[0]:
                    best = (score, name, width, net, report)
        assert best is not None
        _, self.head, self.width, net, self.report = best
        if p.refit and self.report.get("best_epoch") is not None:
            net = self.train_head(self.head, self.width, z, s, k, perm, ctx, epochs=self.report["best_epoch"] + 1)
        return lambda zt: predict(net, zt).softmax(dim=1)

    def train_head(self, name: str, width: int, z: torch.Tensor, s: torch.Tensor, k: int, rows: torch.Tensor,
                   ctx: AttackContext, *, val: tuple[torch.Tensor, torch.Tensor] | None = None,
                   report: dict | None = None, epochs: int | None = None, stats: dict | None = None) -> nn.Module:
        """Standardisation + ``name`` head of ``width``, trained on aux rows ``rows`` (and their mirrored views)
        with a class-balanced loss; with ``val`` (features, labels held out of ``rows``) the best epoch is kept
        and training stops early; ``stats``: see :class:`Standardize`. The rows are gathered batch by batch (no
        copy of the aux features)."""
        p = self.params
        z_train, s_train, train_rows = z, s, rows
        if self.mirrored is not None:  # the mirrored views of the training rows only: validation stays unseen
            z_train, s_train, train_rows = torch.cat([z[rows], self.mirrored[rows]]), torch.cat([s[rows], s[rows]]), None
        self.train_samples = int(rows.numel() * (2 if self.mirrored is not None else 1))
        standardize = Standardize(z_train, spatial=name != "mlp", rows=train_rows, stats=stats)
        shape = standardize(z[:1]).shape[1:]
        builders = {"cnn": lambda: cnn_head(tuple(shape), k, width, p.cnn_max_side),
                    "plain": lambda: plain_head(tuple(shape), k, width),
                    "mlp": lambda: mlp_head(shape.numel(), k, width)}
        head = builders[name]()
        net = nn.Sequential(standardize, head)
        fit_classifier(
            net, z_train, s_train, k, settings=ctx.settings, epochs=epochs or p.epochs, batch_size=p.batch_size,
            lr=p.lr, weight_decay=p.weight_decay, seed=ctx.seed, balanced=True,
            val=val, patience=p.patience, report=report, rows=train_rows,
        )
        return net

    def describe_model(self) -> dict:
        return {"head": self.head, "width": self.width, "val_balanced_accuracy": self.val_bacc,
                "train_samples": self.train_samples, "augment": self.params.augment, "refit": self.params.refit,
                **self.report}


def mirrored_releases(ctx: AttackContext) -> torch.Tensor:
    """What the channel releases for the horizontally mirrored aux images (N, ...), row i for aux image i:
    the attacker's own queries (threat model) of the release channel (fresh noise draws)."""
    x = ctx.aux.x
    if x.ndim != 4:
        raise ValueError(f"augment: hflip needs image inputs (N, C, H, W), got shape {tuple(x.shape)}")
    return release_batched(ctx.channel, x.flip(-1)).float()


@register_attack("attribute_linear")
class LinearProbeAttack(_AttributeBase):
    """Linear probe: cross-validated logistic regression on the standardised, PCA-reduced released feature."""

    class Params(Attack.Params):
        targets: list[str] | None = Field(None, description="private attributes to attack (default: all)")
        pca_components: int = Field(256, ge=1, description="PCA dimension when the feature is larger")
        cs: int = Field(8, ge=1, description="L2 strengths tried (log grid C = 1e-4..1e4), chosen on a validation split")
        folds: int = Field(5, ge=1, description="cross-validation folds for choosing the strength (aux < cv_below rows)")
        cv_below: int = Field(5000, ge=0, description="aux splits with fewer rows are cross-validated; larger ones use "
                                                      "one validation split of val_fraction")
        val_fraction: float = Field(0.2, gt=0, lt=0.5, description="part of the aux split for choosing the strength "
                                                                   "(aux >= cv_below rows)")
        max_iter: int = Field(500, ge=10, description="Newton iterations per strength")
        patience: int = Field(2, ge=1, description="stop the strength path after this many strengths in a row that "
                                                   "do not beat the best (a large value fits the whole grid)")
        extend: int = Field(4, ge=0, description="grid steps tried below C = 1e-4 while the strongest regularisation "
                                                 "keeps winning")

    def fit_target(self, z: torch.Tensor, s: torch.Tensor, k: int, ctx: AttackContext) -> Predictor:
        p = self.params
        standardize = Standardize(z, spatial=False, pca_components=p.pca_components)
        x = standardize(z)
        model, self.selection = fit_logistic(x, s, k, cs=p.cs, val_fraction=p.val_fraction, folds=p.folds,
                                             cv_below=p.cv_below, max_iter=p.max_iter, patience=p.patience,
                                             extend=p.extend, seed=ctx.seed)
        self.dim = int(x.shape[1])
        return lambda zt: model.probs(standardize(zt))

    def describe_model(self) -> dict:
        return {"head": "logistic", "dim": self.dim, **self.selection}
