"""``denoise``: an adaptive attacker against noise defenses.

The attacker knows the defense's mechanism and public parameters (noise distribution
and scale, recorded in ``extra.noise``) and the public edge model. It queries the
release channel (a private copy of the fitted defense) on its aux inputs, with fresh
noise in every epoch, and trains a denoiser (Lightning) from released to clean
features edge(x), which it computes itself. It then runs the ``attribute`` attack
(:mod:`attacks.attribute`: same classifier heads, metrics and chance levels) on
denoised features: the classifier trains on ``draws`` denoised releases of the aux
split (the observed one and ``draws - 1`` fresh ones, concatenated) and is scored on
the denoised test release.

Denoiser: a residual network on standardised features (aux statistics of the clean
feature), z_hat = z + g(z); g is three 3x3 convs for spatial features (N, C, H, W) and
a two-layer MLP for flat ones; mean squared error to the standardised clean feature.
The epoch with the lowest error on a held-out part of the aux split is kept.

What helps: a denoiser is a function of the release, so it cannot add information
(data processing); its gain is finite-sample, and on the planted synthetic task most
of the attacker's gain over the plain attribute attack comes from training on several
fresh releases (``denoiser: false`` keeps only that part; benchmarks/RESULTS.md).

Other defenses (graceful behaviour): when two releases of the same inputs are equal
(a deterministic channel: ``none``, Siamese, ...) there is no noise to remove, the
denoiser is the identity and one draw is used: the figures equal a plain ``attribute``
attack's. When the channel is noisy but neither the defense's edge nor the split's
maps inputs to the released shape (e.g. PCA then noise), there are no clean targets:
the denoiser is the identity and the classifier still trains on ``draws`` fresh
releases. ``extra.denoiser`` says which case applied.
"""
from __future__ import annotations

import dataclasses

import lightning as L
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from attacks import register_attack
from attacks._channel import is_stochastic, release_batched, white_box_edge
from attacks.attribute import AttributeAttack, Standardize
from attacks.base import Attack, AttackContext, AttackView, ReleaseChannel, Score
from audit.core.training import EpochMeanModule, KeepBest, TrainerSettings, make_trainer, predict, tensor_loader


class ResidualDenoiser(nn.Module):
    """Standardised z -> z + g(z), back in feature units. g: convs (spatial) or an MLP (flat)."""

    def __init__(self, standardize: Standardize, shape: tuple[int, ...], width: int):
        super().__init__()
        self.standardize = standardize
        if len(shape) == 3:
            c = shape[0]
            self.g = nn.Sequential(
                nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                nn.Conv2d(width, c, 3, padding=1),
            )
        else:
            d = shape[0]
            self.g = nn.Sequential(nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, d))
        self.shape = shape

    def standardized(self, z: torch.Tensor) -> torch.Tensor:
        """Denoised feature in standardised units (for the loss)."""
        s = self.standardize(z).reshape(z.shape[0], *self.shape)
        return s + self.g(s)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        s = self.standardized(z)
        return (s * self.standardize.std + self.standardize.mean).reshape(z.shape)


class DenoiserModule(EpochMeanModule):
    """Trains the denoiser on (input, clean feature) batches, releasing each batch through the channel
    anew (fresh noise every epoch); validation on fixed noisy releases."""

    def __init__(self, net: ResidualDenoiser, channel: ReleaseChannel, lr: float):
        super().__init__()
        self.net, self.lr = net, lr
        self.channel = channel  # not a submodule: its parameters are not trained

    def _loss(self, noisy: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        target = self.net.standardize(clean).reshape(clean.shape[0], *self.net.shape)
        return F.mse_loss(self.net.standardized(noisy), target)

    def training_step(self, batch, batch_idx):
        x, clean = batch
        noisy = self.channel.release(x.cpu(), clean.cpu()).to(clean.device).float()
        loss = self._loss(noisy, clean)
        self.record(x.shape[0], train_mse=loss)
        return loss

    def validation_step(self, batch, batch_idx):
        noisy, clean = batch
        self.log("val_mse", self._loss(noisy, clean), on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.net.parameters(), lr=self.lr)


def fit_denoiser(
    channel: ReleaseChannel, x: torch.Tensor, clean: torch.Tensor, *, settings: TrainerSettings, epochs: int,
    batch_size: int, lr: float, width: int, val_fraction: float, seed: int,
) -> tuple[ResidualDenoiser, float]:
    """Train a denoiser from channel releases of x (N, ...) to ``clean`` = edge(x) (N, ...);
    returns (denoiser, validation MSE in standardised units of the kept epoch)."""
    L.seed_everything(seed, verbose=False)
    spatial = clean.ndim == 4
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(x.shape[0] * val_fraction))
    val, train = perm[:n_val], perm[n_val:]
    standardize = Standardize(clean[train], spatial=spatial)
    shape = tuple(clean.shape[1:]) if spatial else (clean[0].numel(),)
    net = ResidualDenoiser(standardize, shape, width)
    module = DenoiserModule(net, channel, lr)
    keep = KeepBest("val_mse", mode="min")
    trainer = make_trainer(settings, epochs, [keep])
    noisy_val = release_batched(channel, x[val], clean[val]).float()
    trainer.fit(
        module,
        tensor_loader(x[train], clean[train], batch_size=batch_size, shuffle=True, seed=seed),
        tensor_loader(noisy_val, clean[val], batch_size=256, shuffle=False),
    )
    return net.cpu().eval(), -keep.best if keep.best is not None else float("nan")


@register_attack("denoise")
class DenoiseAttack(Attack):
    """Adaptive attacker for noise defenses: denoiser (Lightning) trained on fresh releases of aux, then the attribute attack."""

    class Params(Attack.Params):
        epochs: int = Field(10, ge=1, description="denoiser training epochs (fresh noise each epoch)")
        batch_size: int = Field(128, ge=1)
        lr: float = Field(1e-3, gt=0)
        width: int = Field(64, ge=1, description="hidden channels / units of the denoiser")
        val_fraction: float = Field(0.15, gt=0, lt=0.5, description="part of the aux split for epoch selection")
        draws: int = Field(4, ge=1, description="fresh aux releases (denoised, concatenated) the attribute classifier "
                           "trains on; memory: draws x the aux feature size")
        denoiser: bool = Field(True, description="train the denoiser (false: identity, i.e. only the noise-augmented "
                               "attribute classifier; an ablation)")
        attribute: AttributeAttack.Params = Field(
            default_factory=AttributeAttack.Params, description="parameters of the attribute attack on denoised features")

        @model_validator(mode="after")
        def _no_mirrored_views(self):
            if self.attribute.augment != "none":  # its extra releases would skip the denoiser
                raise ValueError(f"attribute.augment: {self.attribute.augment!r} is not supported inside denoise "
                                 "(the mirrored releases would not be denoised); use augment: none")
            return self

    def fit(self, ctx: AttackContext) -> None:
        p = self.params
        channel = ctx.channel
        probe = ctx.aux.x[: min(16, len(ctx.aux))]
        edge = white_box_edge(ctx.channel, ctx.split.edge, probe, tuple(ctx.aux.z.shape[1:]))
        self.info: dict = {"noise": _public_noise(ctx.channel)}
        if not is_stochastic(channel, probe):
            self.denoiser, self.info["denoiser"] = None, "identity (deterministic release)"
        elif edge is None:
            self.denoiser, self.info["denoiser"] = nn.Identity(), "identity (no white-box edge for the released shape)"
        elif not p.denoiser:
            self.denoiser, self.info["denoiser"] = nn.Identity(), "identity (denoiser: false)"
        else:
            clean = predict(edge, ctx.aux.x)
            self.denoiser, val_mse = fit_denoiser(
                channel, ctx.aux.x, clean, settings=ctx.settings, epochs=p.epochs, batch_size=p.batch_size,
                lr=p.lr, width=p.width, val_fraction=p.val_fraction, seed=ctx.seed,
            )
            self.info |= {"denoiser": "residual " + ("conv" if clean.ndim == 4 else "mlp"),
                          "denoiser_val_mse": round(val_mse, 6)}
        self.attribute = AttributeAttack(p.attribute)
        self.attribute.fit(dataclasses.replace(ctx, aux=self._training_view(ctx, channel)))

    def _training_view(self, ctx: AttackContext, channel: ReleaseChannel) -> AttackView:
        """The observed aux release plus ``draws - 1`` fresh ones, denoised and concatenated (only the observed
        one for a deterministic channel, which would repeat itself)."""
        aux = ctx.aux
        if self.denoiser is None:
            return aux
        zs = [aux.z.float()] + [release_batched(channel, aux.x).float() for _ in range(self.params.draws - 1)]
        k = len(zs)
        self.info["draws"] = k
        return AttackView(
            predict(self.denoiser, torch.cat(zs)), aux.x.repeat(k, *[1] * (aux.x.ndim - 1)), aux.y.repeat(k),
            {name: s.repeat(k) for name, s in aux.private.items()},
        )

    def _denoised(self, view: AttackView) -> AttackView:
        if self.denoiser is None:
            return view
        return AttackView(predict(self.denoiser, view.z.float()), view.x, view.y, view.private)

    def score(self, ctx: AttackContext) -> list[Score]:
        scores = self.attribute.score(dataclasses.replace(ctx, test=self._denoised(ctx.test)))
        for s in scores:
            s.extra = dict(s.extra, **self.info)
        return scores


def _public_noise(channel: ReleaseChannel) -> dict:
    """The defense's public noise description: its parameters' distribution / scale and the sigma it applies."""
    params = channel.params.model_dump(mode="json") if hasattr(channel.params, "model_dump") else {}
    out = {k: params[k] for k in ("distribution", "scale") if k in params}
    if isinstance(channel.facts.get("sigma"), (int, float)):
        out["sigma"] = float(channel.facts["sigma"])
    return out
