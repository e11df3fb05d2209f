"""``inversion_prior``: learned-prior reconstruction, the decoder of SDAR (Zhu et al., NDSS 2025).

The plain ``inversion`` decoder minimises pixel MSE, so under noise it returns the posterior
mean: a blurred average face. This attack trains the same kind of decoder (released feature
-> input; :func:`attacks.inversion.conv_decoder` / ``mlp_decoder``) on the attacker's aux
(feature, input) pairs with three losses, written from the paper's description:

    L_G = MSE(x_rec, x) / v_x  +  feature_weight * L_feat  +  adv_weight * BCE(D(x_rec), real)

- pixel term: MSE over the aux inputs' per-element variance ``v_x`` (the mean image scores 1);
- feature term (``feature_matching``): ``edge``: re-encode the reconstruction with the public
  edge (the defense's own or the split's, :func:`attacks._channel.white_box_edge`; threat model:
  white-box edge) and match the clean edge feature of the aux input, MSE over the feature's
  per-element variance; ``discriminator``: match the discriminator's penultimate features of the
  reconstruction to those of the true input (paired feature matching) when the release has no
  white-box map (PCA projections, mixing). ``auto``: edge when there is one;
- adversarial term: a small discriminator D on inputs (strided 3x3 convs with LeakyReLU for
  images, an MLP otherwise), trained in alternation with the non-saturating GAN loss.

The epoch with the lowest held-out aux loss (pixel + feature term; the adversarial term is
left out, its scale moves with D) is kept.

Scores (on the test split, ``n_eval`` samples): ``psnr`` (dB) and ``ssim`` against the
mean-image baseline (:func:`attacks.inversion.reconstruction_scores`: a decoder that returns
the same image for everyone is flagged ``degenerate``), and for every private attribute the
balanced accuracy, accuracy and AUROC of a FIXED classifier trained on the aux split's real
inputs and evaluated on the reconstructions (chance 1/K; a classifier that predicts one class
is flagged ``degenerate`` by :func:`attacks.metrics.classification_scores`). Its ``extra``
carries the same classifier's balanced accuracy on the real test inputs (the ceiling).
"""
from __future__ import annotations

import copy
import math
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torchmetrics.functional.classification import multiclass_accuracy

from attacks import register_attack
from attacks._channel import white_box_edge
from attacks.attribute import Standardize, cnn_head, mlp_head
from attacks.base import Attack, AttackContext, Score
from attacks.inversion import (
    DecoderInversion,
    RangeSigmoid,
    conv_decoder,
    data_range_of,
    eval_subset,
    grid_extra,
    mlp_decoder,
    reconstruction_scores,
)
from attacks.metrics import classification_scores
from audit.core.training import EpochMeanModule, KeepBest, TrainerSettings, fit_classifier, make_trainer, predict, tensor_loader

FeatureMatching = Literal["auto", "edge", "discriminator"]


# ------------------------------------------------------------------ networks
def discriminator(input_shape: tuple[int, ...], width: int) -> tuple[nn.Module, nn.Module]:
    """(trunk, head): trunk maps inputs (N, ...) to features (N, F), head maps those to one logit (N, 1).
    Images (C, H, W): strided 3x3 convs (width doubling, LeakyReLU 0.2) down to 4 pixels a side or less;
    other inputs: a two-layer MLP of ``4 * width`` units."""
    if len(input_shape) == 3:
        channels, size = input_shape[0], max(input_shape[1], input_shape[2])
        layers: list[nn.Module] = []
        cur = width
        while True:
            layers += [nn.Conv2d(channels, cur, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            channels, size = cur, (size + 1) // 2
            if size <= 4:
                break
            cur = min(cur * 2, 8 * width)
        trunk = nn.Sequential(*layers, nn.Flatten())
    else:
        dim, hidden = math.prod(input_shape), 4 * width
        trunk = nn.Sequential(nn.Flatten(), nn.Linear(dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                              nn.LeakyReLU(0.2))
    with torch.no_grad():
        out = trunk(torch.zeros(1, *input_shape)).shape[1]
    return trunk, nn.Linear(out, 1)


def build_decoder(z: torch.Tensor, input_shape: tuple[int, ...], data_range: tuple[float, float], *,
                  width: int, min_width: int, hidden: int, rows: torch.Tensor | None = None) -> tuple[nn.Module, str]:
    """Standardise (statistics of the aux rows ``rows`` of z, all when None; read in chunks) -> conv decoder
    (spatial features of images) or MLP -> range sigmoid."""
    spatial = z.ndim == 4 and len(input_shape) == 3
    standardize = Standardize(z, spatial=spatial, rows=rows)
    feature_shape = tuple(standardize(z[:1]).shape[1:])
    if spatial:
        body, kind = conv_decoder(feature_shape, input_shape, width, min_width), "conv"
    else:
        body, kind = mlp_decoder(math.prod(feature_shape), input_shape, hidden), "mlp"
    return nn.Sequential(standardize, body, RangeSigmoid(*data_range)), kind


class PriorDecoderModule(EpochMeanModule):
    """Alternating GAN training of ``decoder`` (released feature -> input) against a discriminator, with
    pixel and feature-matching terms (module docstring). Batches: (z, x); with ``edge``, edge(x) is computed per batch."""

    def __init__(self, decoder: nn.Module, trunk: nn.Module, head: nn.Module, edge: nn.Module | None, *,
                 data_range: tuple[float, float], pixel_scale: float, feature_scale: float, feature_weight: float,
                 adv_weight: float, lr: float, lr_discriminator: float, weight_decay: float = 0.0):
        super().__init__()
        self.automatic_optimization = False
        self.decoder, self.trunk, self.head, self.edge = decoder, trunk, head, edge
        self.low, self.peak = data_range[0], data_range[1] - data_range[0]
        self.pixel_scale, self.feature_scale = pixel_scale, feature_scale
        self.feature_weight, self.adv_weight = feature_weight, adv_weight
        self.lr, self.lr_discriminator, self.weight_decay = lr, lr_discriminator, weight_decay

    def train(self, mode: bool = True):
        super().train(mode)
        if self.edge is not None:
            self.edge.eval()  # the public edge is a fixed map: batch-norm statistics stay as released
        return self

    def _d_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk((x - self.low) / self.peak * 2 - 1)

    def _feature_term(self, x_rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.edge is not None:
            with torch.no_grad():
                f_x = self.edge(x)  # per batch: a stored copy of the aux split's clean features is 1.7 GB at conv1
            return F.mse_loss(self.edge(x_rec), f_x) / self.feature_scale
        real = self._d_features(x).detach()
        return F.mse_loss(self._d_features(x_rec), real) / real.pow(2).mean().clamp_min(1e-8)

    def training_step(self, batch, batch_idx):
        z, x = batch
        opt_g, opt_d = self.optimizers()
        x_rec = self.decoder(z)
        d_real, d_fake = self.head(self._d_features(x)), self.head(self._d_features(x_rec.detach()))
        loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                  + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
        opt_d.zero_grad()
        self.manual_backward(loss_d)
        opt_d.step()
        pixel = F.mse_loss(x_rec, x) / self.pixel_scale
        feature = self._feature_term(x_rec, x)
        d_gen = self.head(self._d_features(x_rec))
        adv = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))
        loss_g = pixel + self.feature_weight * feature + self.adv_weight * adv
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        opt_g.step()
        self.record(z.shape[0], train_pixel=pixel, train_feature=feature, train_adv=adv, train_d=loss_d)

    def validation_step(self, batch, batch_idx):
        z, x = batch
        x_rec = self.decoder(z)
        loss = F.mse_loss(x_rec, x) / self.pixel_scale
        if self.edge is not None:
            loss = loss + self.feature_weight * self._feature_term(x_rec, x)
        self.log("val_loss", loss, on_epoch=True)

    def configure_optimizers(self):
        opt_g = torch.optim.Adam(self.decoder.parameters(), lr=self.lr, betas=(0.5, 0.999), weight_decay=self.weight_decay)
        opt_d = torch.optim.Adam([*self.trunk.parameters(), *self.head.parameters()], lr=self.lr_discriminator,
                                 betas=(0.5, 0.999))
        return [opt_g, opt_d]


# ------------------------------------------------------------------ functional core
@torch.no_grad()
def mean_variance(edge: nn.Module, x: torch.Tensor, rows: torch.Tensor, batch_size: int = 256) -> float:
    """Mean over elements of the per-element sample variance of edge(x[rows]) (float64 sums over batches
    of rows: the features are never held whole)."""
    total = squares = None
    for i in range(0, rows.numel(), batch_size):
        f = edge(x[rows[i : i + batch_size]]).double()
        total = f.sum(0) if total is None else total.add_(f.sum(0))
        squares = f.pow(2).sum(0) if squares is None else squares.add_(f.pow(2).sum(0))
    n = rows.numel()
    return float(((squares - total * total / n) / max(n - 1, 1)).mean())


def fit_prior_decoder(
    z: torch.Tensor, x: torch.Tensor, data_range: tuple[float, float], edge: nn.Module | None, *,
    settings: TrainerSettings, epochs: int, batch_size: int, lr: float, lr_discriminator: float, weight_decay: float,
    feature_weight: float, adv_weight: float, width: int, min_width: int, hidden: int, disc_width: int,
    val_fraction: float, seed: int,
) -> tuple[nn.Module, str]:
    """Train a learned-prior decoder from released features z (N, ...) to inputs x (N, ...) in ``data_range``.
    ``edge`` (a module x -> clean feature, or None): re-encoder of the feature term; None = discriminator
    feature matching. Returns (decoder z -> x, architecture name); the edge is copied, never changed."""
    L.seed_everything(seed, verbose=False)
    perm = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(z.shape[0] * val_fraction))
    val, train = perm[:n_val], perm[n_val:]
    z, x = z.float(), x.float()  # no copy of float32 (memory-mapped) features: rows are read by batch
    decoder, kind = build_decoder(z, tuple(x.shape[1:]), data_range, width=width, min_width=min_width,
                                  hidden=hidden, rows=train)
    trunk, head = discriminator(tuple(x.shape[1:]), disc_width)
    pixel_scale = float(x[train].var(dim=0).mean().clamp_min(1e-12))
    feature_scale = 1.0
    if edge is not None:
        edge = copy.deepcopy(edge).eval().requires_grad_(False)
        feature_scale = max(mean_variance(edge, x, train), 1e-12)
    module = PriorDecoderModule(decoder, trunk, head, edge, data_range=data_range, pixel_scale=pixel_scale,
                                feature_scale=feature_scale, feature_weight=feature_weight, adv_weight=adv_weight,
                                lr=lr, lr_discriminator=lr_discriminator, weight_decay=weight_decay)
    trainer = make_trainer(settings, epochs, [KeepBest("val_loss", mode="min")])
    trainer.fit(module, tensor_loader(z, x, batch_size=batch_size, shuffle=True, seed=seed, rows=train),
                tensor_loader(z, x, batch_size=256, shuffle=False, rows=val))
    return decoder.cpu().eval(), kind


def fit_input_classifier(x: torch.Tensor, s: torch.Tensor, k: int, *, settings: TrainerSettings, epochs: int,
                         width: int, val_fraction: float, seed: int) -> tuple[nn.Module, float]:
    """The fixed attribute classifier on real inputs x (N, ...) with labels s (N,): CNN head for images, else
    MLP (class-balanced, epoch chosen on a held-out part). Returns (logits net, its held-out balanced accuracy)."""
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed + 1))
    n_val = max(1, int(x.shape[0] * val_fraction))
    val, train = perm[:n_val], perm[n_val:]
    image = x.ndim == 4
    standardize = Standardize(x[train].float(), spatial=image)
    shape = tuple(standardize(x[:1].float()).shape[1:])
    head = cnn_head(shape, k, width) if image else mlp_head(math.prod(shape), k, width)
    net = nn.Sequential(standardize, head)
    fit_classifier(net, x[train].float(), s[train], k, settings=settings, epochs=epochs, seed=seed, balanced=True,
                   val=(x[val].float(), s[val]))
    bacc = float(multiclass_accuracy(predict(net, x[val].float()), s[val], num_classes=k, average="macro"))
    return net.eval(), bacc


# ------------------------------------------------------------------ the plugin
@register_attack("inversion_prior")
class LearnedPriorInversion(Attack):
    """SDAR-style decoder (pixel + adversarial + feature-matching losses); PSNR/SSIM vs the mean image and the
    attribute accuracy of a fixed aux-trained classifier on the reconstructions."""

    class Params(DecoderInversion.Params):
        """The ``inversion`` decoder's parameters (width, hidden, n_eval, data_range, grid, ...) and the prior's."""

        epochs: int = Field(10, ge=1, description="training epochs of the decoder and discriminator")
        lr: float = Field(1e-3, gt=0, description="decoder learning rate (Adam, betas 0.5/0.999)")
        lr_discriminator: float = Field(5e-4, gt=0)
        adv_weight: float = Field(0.02, ge=0, description="weight of the adversarial term (pixel term scaled to 1)")
        feature_weight: float = Field(1.0, ge=0, description="weight of the feature-matching term")
        feature_matching: FeatureMatching = Field(
            "auto", description="edge: re-encode with the public edge (white-box); discriminator: match D's "
                                "features; auto: edge when the release is edge(x) plus same-shaped noise")
        disc_width: int = Field(16, ge=1, description="first conv width of the discriminator")
        targets: list[str] | None = Field(None, description="private attributes scored on the reconstructions "
                                                            "(default: all; [] for none)")
        classifier_epochs: int = Field(10, ge=1, description="epochs of the fixed attribute classifier")
        classifier_width: int = Field(32, ge=1)

    def fit(self, ctx: AttackContext) -> None:
        p = self.params
        self.range = data_range_of(ctx.aux.x, p.data_range)
        self.mean_image = ctx.aux.x.float().mean(dim=0)
        edge = None
        if p.feature_matching != "discriminator":
            edge = white_box_edge(ctx.channel, ctx.split.edge, ctx.aux.x[:2].float(), tuple(ctx.aux.z.shape[1:]))
            if edge is None and p.feature_matching == "edge":
                raise ValueError("inversion_prior: feature_matching: edge needs a white-box map (a release that is "
                                 "edge(x) plus same-shaped noise); use discriminator or auto")
        self.matching = "edge" if edge is not None else "discriminator"
        self.decoder, self.kind = fit_prior_decoder(
            ctx.aux.z, ctx.aux.x, self.range, edge, settings=ctx.settings, epochs=p.epochs, batch_size=p.batch_size,
            lr=p.lr, lr_discriminator=p.lr_discriminator, weight_decay=p.weight_decay, feature_weight=p.feature_weight,
            adv_weight=p.adv_weight,
            width=p.width, min_width=p.min_width, hidden=p.hidden, disc_width=p.disc_width,
            val_fraction=p.val_fraction, seed=ctx.seed,
        )
        targets = list(ctx.aux.private) if p.targets is None else p.targets
        unknown = [t for t in targets if t not in ctx.aux.private]
        if unknown:
            raise ValueError(f"inversion_prior: unknown targets {unknown}; private labels: {list(ctx.aux.private)}")
        self.classifiers = {
            t: fit_input_classifier(ctx.aux.x, ctx.aux.private[t], ctx.num_classes[t], settings=ctx.settings,
                                    epochs=p.classifier_epochs, width=p.classifier_width,
                                    val_fraction=p.val_fraction, seed=ctx.seed)
            for t in targets
        }

    def score(self, ctx: AttackContext) -> list[Score]:
        p = self.params
        idx = eval_subset(len(ctx.test), p.n_eval, ctx.seed)
        x = ctx.test.x[idx].float()
        x_rec = predict(self.decoder, ctx.test.z, rows=idx).clamp(*self.range)  # batches gathered one at a time
        extra = {"method": "learned_prior", "decoder": self.kind, "feature_matching": self.matching,
                 "epochs": p.epochs, "adv_weight": p.adv_weight, "feature_weight": p.feature_weight}
        if p.grid:
            extra |= grid_extra(ctx, x, x_rec, self.range, "inversion_prior.png")
        scores = reconstruction_scores(x, x_rec, self.mean_image, self.range, n_boot=ctx.n_boot, seed=ctx.seed,
                                       extra=extra)
        for target, (clf, val_bacc) in self.classifiers.items():
            k, s = ctx.num_classes[target], ctx.test.private[target][idx]
            ceiling = float(multiclass_accuracy(predict(clf, x), s, num_classes=k, average="macro"))
            info = {**extra, "on": "reconstructions", "classifier_val_balanced_accuracy": round(val_bacc, 4),
                    "classifier_on_test_inputs_balanced_accuracy": round(ceiling, 4)}
            scores += classification_scores(target, predict(clf, x_rec).softmax(dim=1), s, k, n_boot=ctx.n_boot,
                                            seed=ctx.seed, extra=info)
        return scores
