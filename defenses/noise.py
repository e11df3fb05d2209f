"""``noise`` and ``pca_noise``: additive noise on the split feature (Osia et al.).

``noise``: the noise standard deviation is ``scale`` times the feature's
standard deviation (one scalar over all elements, measured on the task-train
split), for both distributions (Laplace with b = sigma / sqrt(2)). A copy of
the cloud part is fine-tuned on noisy features so that utility is honest.
Noise draws are the defense's secret: seeded per audit cell, fresh for every
released sample.

``pca_noise`` (Osia et al.'s embedding): the device projects the flattened
feature on its top ``components`` principal directions (fitted on the
task-train features) and adds noise of ``scale`` times the std of those
coefficients; the cloud reconstructs the feature from the coefficients and
runs a fine-tuned copy of its part. Sweeping ``scale`` gives Osia's noise-
variance sweep.

Reusable pieces: :class:`AddNoise`, :class:`PCAProjection` (randomised PCA
without a centred copy of the features, so the 262,144-dim conv1 features of
UTKFace fit), :func:`finetune_on_noise`.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from audit.core.chunked import column_mean, element_stats, standardize_rows, standardized_svd
from audit.core.feature_store import streamed
from audit.core.registry import PluginParams
from audit.core.training import TrainerSettings, fit_classifier, fit_to_convergence
from defenses import register_defense
from defenses.base import Defense, FitContext


class AddNoise(nn.Module):
    """Adds zero-mean noise of std ``sigma`` (Gaussian or Laplace); active in training mode only
    unless ``always`` is set."""

    def __init__(self, sigma: float, distribution: str, generator: torch.Generator | None = None, always: bool = False):
        super().__init__()
        self.sigma, self.distribution, self.generator, self.always = sigma, distribution, generator, always

    def sample(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        return unit_noise(shape, self.distribution, self.generator).mul_(self.sigma).to(device)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.sigma == 0 or not (self.training or self.always):
            return z
        # in place on the fresh draw: one temporary of z's size (a 512-row release at UTKFace conv1 is 512 MB)
        return self.sample(z.shape, z.device).add_(z)


LOG_RAND_RESOLUTION = -24 * math.log(2)  # log of torch.rand's float32 step


def unit_noise(shape: torch.Size | tuple[int, ...], distribution: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-mean, unit-std noise of ``shape``: Gaussian, or Laplace (b = 1/sqrt(2)) by inverse CDF.
    The inverse CDF is cut at the float32 resolution of ``torch.rand`` (2^-24): a draw of exactly 0,
    about one in 17 million (once per ~2 UTKFace pool3 splits), gives -11.8 instead of -inf."""
    if distribution == "gaussian":
        return torch.randn(shape, generator=generator)
    u = torch.rand(shape, generator=generator).sub_(0.5)
    tail = u.abs().mul_(-2).log1p_().clamp_(min=LOG_RAND_RESOLUTION)  # in place: two temporaries of shape
    return tail.mul_(u.sign_().neg_()).div_(math.sqrt(2))


class LabelPrior(nn.Module):
    """A cloud that ignores its input: the log of the training labels' class frequencies (N, K) for any
    (N, ...) input. What a cloud does best where the release carries nothing of the task."""

    def __init__(self, y: torch.Tensor, num_classes: int):
        super().__init__()
        counts = torch.bincount(y.long(), minlength=num_classes).float()
        self.register_buffer("log_prior", counts.div(counts.sum()).clamp_min(1e-12).log())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prior.to(x.device).expand(x.shape[0], -1)


class TrainOnly(nn.Module):
    """``module`` in training mode, the identity in eval mode (validation inputs arrive already noised)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x) if self.training else x


def finetune_on_noise(
    cloud: nn.Module, inputs: torch.Tensor, y: torch.Tensor, num_classes: int, noise: nn.Module,
    *, settings: TrainerSettings, max_epochs: int, batch_size: int, lr: float, seed: int,
    patience: int = 3, val_fraction: float = 0.1, pre: nn.Module | None = None,
    title: str = "cloud fine-tuning on noise",
) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune ``cloud`` (in place) to convergence on ``noise(pre(inputs))``, fresh noise every step.

    ``noise``: a module that adds noise in training mode and is the identity in eval mode
    (:class:`AddNoise` without ``always``, ``ScaledNoise``); ``pre``: the frozen part before it
    (default: none; ``inputs`` are the features). A seeded ``val_fraction`` of the samples is held
    out with one fixed noise draw; training stops when its cross-entropy has not improved for
    ``patience`` epochs, at most ``max_epochs``, and keeps the weights of the lowest validation loss
    (the untrained ones included), see :func:`audit.core.training.fit_to_convergence`. Every epoch
    logs a line (``title``, losses, time left). A :class:`LabelPrior` of the training rows replaces the
    cloud when its validation accuracy is higher (the release then carries less of the task than
    fine-tuning could use; at noise 100x it did, in the embedded default's cells). Returns (the cloud in
    eval mode or the prior, facts of the training: epochs run, best epoch, validation loss and accuracy,
    ``val_accuracy_label_prior``, ``kept`` "fine_tuned" or "label_prior"; ``validated`` False when the
    split is too small to hold out two samples, then all ``max_epochs`` run with no selection)."""
    if max_epochs == 0:
        return cloud.eval(), {}
    pre = pre if pre is not None else nn.Identity()
    n = inputs.shape[0]
    n_val = int(round(n * val_fraction))
    net = nn.Sequential(TrainOnly(nn.Sequential(pre, noise)), cloud)
    if n_val < 2 or n - n_val < 2:
        fit_classifier(net, inputs, y, num_classes, settings=settings, epochs=max_epochs,
                       batch_size=batch_size, lr=lr, seed=seed, log_epochs=title)
        return cloud.eval(), {"validated": False, "epochs_run": max_epochs, "max_epochs": max_epochs}
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed + 2)  # the validation split's one noise draw
        was = noise.training
        noise.train()
        x_val = None  # filled batch by batch: no list of batches and its concatenated copy (2 x 343 MB at conv1)
        for i in range(0, n_val, batch_size):
            batch = inputs[val_idx[i : i + batch_size]]
            streamed(batch)
            noisy = noise(pre(batch))
            if x_val is None:
                x_val = noisy.new_empty((n_val, *noisy.shape[1:]))
            x_val[i : i + noisy.shape[0]] = noisy
        noise.train(was)
    # the training rows are gathered batch by batch: the (memory-mapped) inputs are never copied whole
    _, facts = fit_to_convergence(
        net, inputs, y, num_classes, (x_val, y[val_idx]), settings=settings, max_epochs=max_epochs,
        patience=patience, batch_size=batch_size, lr=lr, seed=seed, log_epochs=title, rows=train_idx)
    prior = LabelPrior(y[train_idx], num_classes)
    prior_accuracy = float((y[val_idx] == prior.log_prior.argmax()).float().mean())
    kept = "label_prior" if prior_accuracy > facts["val_accuracy"] else "fine_tuned"
    facts = {"validated": True, **facts, "val_accuracy_label_prior": prior_accuracy, "kept": kept}
    return (prior.eval() if kept == "label_prior" else cloud.eval()), facts


class ConvergenceParams(PluginParams):
    """When the cloud's fine-tuning on a noisy release stops (:func:`finetune_on_noise`)."""

    patience: int = Field(3, ge=1, description="epochs without a lower validation loss before cloud fine-tuning stops")
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="part of the task-train split held out to stop the "
                                                                "cloud's fine-tuning and select its weights")


@register_defense("noise")
class Noise(Defense):
    """Additive Gaussian/Laplace noise of std scale x feature std; cloud fine-tuned on noisy features."""

    class Params(Defense.Params, ConvergenceParams):
        scale: float = Field(1.0, ge=0, description="noise std relative to the feature std")
        distribution: Literal["gaussian", "laplace"] = "gaussian"
        finetune_epochs: int = Field(30, ge=0, description="most epochs of cloud fine-tuning on noisy features "
                                                           "(early stopping on a validation split ends it sooner)")
        lr: float = Field(5e-4, gt=0)
        batch_size: int = Field(128, ge=1)

    def fit(self, ctx: FitContext) -> None:
        p = self.params
        self.edge = ctx.split.edge.eval()
        train_features = ctx.split.features("train")
        _, var = element_stats(train_features)  # chunked: no copy of the (memory-mapped) features
        self.sigma = p.scale * math.sqrt(var)
        # the cloud takes the noisy release as it is: a rescaling in front of it (least-squares 1/101 at 10x,
        # then variance-matched 1/10) cost UTKFace gender at conv1 0.232 and 0.096 (benchmarks/RESULTS.md)
        self.cloud, self.cloud_training = finetune_on_noise(
            copy.deepcopy(ctx.split.cloud), train_features, ctx.train.y, ctx.num_classes, AddNoise(self.sigma, p.distribution),
            settings=ctx.settings, max_epochs=p.finetune_epochs if self.sigma > 0 else 0,
            batch_size=p.batch_size, lr=p.lr, seed=ctx.seed, patience=p.patience, val_fraction=p.val_fraction,
            title=ctx.title("noise cloud fine-tuning"),
        )
        self.noise = AddNoise(self.sigma, p.distribution, torch.Generator().manual_seed(ctx.seed), always=True)

    @torch.no_grad()
    def public_facts(self) -> dict[str, float]:
        """The noise's standard deviation (its scale times the training features' std): public."""
        return {"sigma": float(self.sigma)}

    def release(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        z = features if features is not None else self.edge(x)
        return self.noise(z)


class PCAProjection(nn.Module):
    """Projection of flattened features (N, *shape) on ``basis`` (D, q) after removing ``mean`` (D,):
    ``forward`` gives the (N, q) coefficients, ``inverse`` the (N, *shape) reconstruction."""

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor, shape: tuple[int, ...]):
        super().__init__()
        self.shape = tuple(shape)
        self.register_buffer("mean", mean)
        self.register_buffer("basis", basis)

    @classmethod
    def fit(cls, z: torch.Tensor, components: int, seed: int = 0, niter: int = 2) -> "PCAProjection":
        """Top ``components`` principal directions of the rows of ``z`` (capped at N - 1 and D)."""
        mean, basis = pca_basis(z.flatten(1), components, seed=seed, niter=niter)
        return cls(mean, basis, tuple(z.shape[1:]))

    @property
    def components(self) -> int:
        return int(self.basis.shape[1])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z.flatten(1) - self.mean) @ self.basis

    @torch.no_grad()
    def coefficients(self, z: torch.Tensor) -> torch.Tensor:
        """``forward`` of a whole split z (N, *shape) on the CPU, over row blocks (z may be memory-mapped)."""
        return standardize_rows(z, self.mean, torch.ones_like(self.mean), projection=self.basis)

    def inverse(self, c: torch.Tensor) -> torch.Tensor:
        return (c @ self.basis.T + self.mean).reshape(-1, *self.shape)


class PCAReconstruct(nn.Module):
    """The cloud's first step under a PCA embedding: coefficients (N, q) -> features (N, *shape)."""

    def __init__(self, pca: PCAProjection):
        super().__init__()
        self.pca = pca

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.pca.inverse(c)


@torch.no_grad()
def pca_basis(flat: torch.Tensor, components: int, seed: int = 0, niter: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (D,), basis (D, q)) of the rows of ``flat`` (N, D) by randomised SVD with ``niter`` power
    iterations (:func:`audit.core.chunked.standardized_svd` with unit scales), over row blocks: neither a
    centred (N, D) copy nor the whole of a memory-mapped split in memory (3.6 GB of task-train rows
    at UTKFace conv1); q = min(components, N - 1, D)."""
    n, d = flat.shape
    q = min(components, n - 1, d)
    if q < 1:
        raise ValueError(f"PCA needs at least 2 samples, got {n}")
    mean = column_mean(flat).float()
    basis, _ = standardized_svd(flat, mean, torch.ones(d), q, niter=niter, oversample=10, seed=seed)
    return mean, basis


@register_defense("pca_noise")
class PCANoise(Noise):
    """Osia et al.'s embedding: PCA to `components` dims, then noise of scale x coefficient std; cloud fine-tuned."""

    class Params(Noise.Params):
        components: int = Field(64, ge=1, description="principal components kept (capped at N - 1 and the feature size)")

    def fit(self, ctx: FitContext) -> None:
        p = self.params
        self.edge = ctx.split.edge.eval()
        train_features = ctx.split.features("train")
        self.pca = PCAProjection.fit(train_features, p.components, seed=ctx.seed)
        coefficients = self.pca.coefficients(train_features)
        self.sigma = p.scale * float(coefficients.std())
        # the reconstruction alone changes the cloud's input: fine-tune even without noise
        cloud = nn.Sequential(PCAReconstruct(self.pca), copy.deepcopy(ctx.split.cloud))
        self.cloud, self.cloud_training = finetune_on_noise(
            cloud, coefficients, ctx.train.y, ctx.num_classes, AddNoise(self.sigma, p.distribution),
            settings=ctx.settings, max_epochs=p.finetune_epochs, batch_size=p.batch_size, lr=p.lr, seed=ctx.seed,
            patience=p.patience, val_fraction=p.val_fraction, title=ctx.title("pca_noise cloud fine-tuning"),
        )
        self.noise = AddNoise(self.sigma, p.distribution, torch.Generator().manual_seed(ctx.seed), always=True)

    @torch.no_grad()
    def release(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        z = features if features is not None else self.edge(x)
        return self.noise(self.pca(z))
