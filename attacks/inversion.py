"""Input reconstruction from the released feature: a learned decoder (``inversion``) and the
shared scoring of reconstructions (also used by ``inversion_rmle``).

``inversion`` (Lightning): an inverse network trained on the attacker's aux split to map
the released feature back to the input, by mean squared error in input space:
- spatial features (N, C, h, w) of image inputs: a conv decoder — two 3x3 convs at the
  feature's resolution, then one bilinear x2 upsampling + 3x3 conv per octave up to the
  input's resolution (channel width halving per octave, at least ``min_width``), a last
  3x3 conv to the input channels;
- flat features (N, D): an MLP, reshaped to the input's shape.
Features are standardised with the attacker's aux statistics (per channel for spatial
features, per element otherwise); the output goes through a sigmoid scaled to the data
range. The epoch with the lowest MSE on a held-out part of the aux split is kept; training stops
``patience`` epochs after it (early stopping).

Scoring (:func:`reconstruction_scores`): per-sample PSNR (dB) and SSIM (torchmetrics),
mean over the evaluated test samples with a bootstrap 95% CI; the chance level is the
same figure for the *mean-image baseline* (predicting the aux split's mean input for
every sample), so ``advantage`` is what the feature adds over knowing the data set.

Data range: ``data_range: [low, high]`` when given; otherwise [0, 1] when the aux inputs
lie in it (images: utkface, digits, torchvision sets), else the aux inputs' [min, max]
(e.g. the unbounded ``synthetic`` task). PSNR uses high - low as the peak; reconstructions
are clamped to the range; an exact reconstruction is reported as 100 dB (not inf).
"""
from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping
from pydantic import Field
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from attacks import register_attack
from attacks.attribute import Standardize
from attacks.base import Attack, AttackContext, Score
from audit.core.stats import mean_ci
from audit.core.training import EpochMeanModule, KeepBest, TrainerSettings, make_trainer, predict, tensor_loader

PSNR_CAP_DB = 100.0


# ------------------------------------------------------------------ functional core
def data_range_of(x_aux: torch.Tensor, given: tuple[float, float] | None = None) -> tuple[float, float]:
    """(low, high) of the input space: ``given``, else (0, 1) when x_aux lies in it, else x_aux's min/max."""
    if given is not None:
        low, high = float(given[0]), float(given[1])
    elif x_aux.min() >= 0 and x_aux.max() <= 1:
        low, high = 0.0, 1.0
    else:
        low, high = float(x_aux.min()), float(x_aux.max())
    if not high > low:
        raise ValueError(f"inversion: empty data range [{low}, {high}]; set data_range: [low, high]")
    return low, high


def per_sample_psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float) -> torch.Tensor:
    """PSNR (dB) of each sample (N,) for inputs (N, ...); capped at 100 dB."""
    dims = tuple(range(1, target.ndim))
    out = peak_signal_noise_ratio(pred.float(), target.float(), data_range=data_range, reduction="none", dim=dims)
    return out.clamp(max=PSNR_CAP_DB)


def _ssim_sigma(height: int, width: int) -> float | None:
    """Gaussian window sigma that fits the image (torchmetrics pads by 3.5 sigma); None if too small."""
    side = min(height, width)
    if side < 3:
        return None
    return min(1.5, (side - 1.5) / 3.5)


def per_sample_ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float,
                    batch: int = 128) -> torch.Tensor | None:
    """SSIM of each image (N,) for images (N, C, H, W); None for non-image inputs or images under 3x3.
    Gaussian window of sigma 1.5 (smaller for images under 7 pixels a side)."""
    if target.ndim != 4:
        return None
    sigma = _ssim_sigma(target.shape[-2], target.shape[-1])
    if sigma is None:
        return None
    # in batches of images: torchmetrics filters five image-sized maps at once (at 1,714 UTKFace images
    # one call held ~2 GB); each image's SSIM is its own, so batching changes no value
    return torch.cat([
        structural_similarity_index_measure(pred[i : i + batch].float(), target[i : i + batch].float(),
                                            data_range=data_range, sigma=sigma, reduction="none").reshape(-1)
        for i in range(0, target.shape[0], batch)
    ])


def reconstruction_scores(
    x: torch.Tensor, x_rec: torch.Tensor, mean_image: torch.Tensor, data_range: tuple[float, float], *,
    n_boot: int, seed: int, extra: dict | None = None,
) -> list[Score]:
    """PSNR (dB) and SSIM of reconstructions ``x_rec`` of ``x`` (N, ...), chance = the mean-image baseline
    (``mean_image`` of shape x.shape[1:] predicted for every sample). CI: bootstrap over the N samples.

    ``extra.output_spread``: the reconstructions' across-sample standard deviation (mean over
    elements) as a fraction of the inputs'; ``degenerate: true`` below 1%, where the attack returns
    (nearly) the same image, e.g. the mean image, for every input: it measures nothing."""
    low, high = data_range
    peak = high - low
    x_rec = x_rec.clamp(low, high)
    baseline = mean_image.clamp(low, high).expand_as(x)
    n = x.shape[0]
    spread = output_spread(x, x_rec)
    extra = {**(extra or {}), "output_spread": spread, "degenerate": spread is not None and spread < 0.01}
    scores = []
    for metric, fn in (("psnr", per_sample_psnr), ("ssim", per_sample_ssim)):
        values = fn(x_rec, x, peak)
        if values is None:
            continue
        chance = float(fn(baseline, x, peak).mean())
        info = dict(extra or {}, data_range=[low, high], unit="dB" if metric == "psnr" else "")
        scores.append(Score("input", metric, float(values.mean()), mean_ci(values, n_boot=n_boot, seed=seed),
                            chance, n, extra=info))
    return scores


def output_spread(x: torch.Tensor, x_rec: torch.Tensor) -> float | None:
    """Mean over elements of the across-sample std of ``x_rec``, over the same of ``x`` (None for < 2
    samples or constant inputs)."""
    if x.shape[0] < 2:
        return None
    ref = float(x.float().std(dim=0).mean())
    return None if ref <= 0 else float(x_rec.float().std(dim=0).mean()) / ref


def save_grid(x: torch.Tensor, x_rec: torch.Tensor, data_range: tuple[float, float], path: Path,
              n: int = 8, min_tile: int = 48) -> Path:
    """PNG of originals (top row) over reconstructions (bottom row) for the first n image samples;
    tiles upscaled (nearest) to at least ``min_tile`` pixels; channels other than 1 or 3: the first."""
    from torchvision.utils import make_grid, save_image

    low, high = data_range
    pair = torch.cat([x[:n], x_rec[:n]]).float()
    if pair.ndim != 4:
        raise ValueError("save_grid needs images (N, C, H, W)")
    if pair.shape[1] not in (1, 3):
        pair = pair[:, :1]
    pair = ((pair - low) / (high - low)).clamp(0, 1)
    scale = max(1, math.ceil(min_tile / min(pair.shape[-2:])))
    if scale > 1:
        pair = F.interpolate(pair, scale_factor=scale, mode="nearest")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(make_grid(pair, nrow=min(n, x.shape[0]), padding=2, pad_value=1.0), path)
    return path


def grid_extra(ctx: AttackContext, x: torch.Tensor, x_rec: torch.Tensor, data_range: tuple[float, float],
               filename: str) -> dict:
    """Save the grid in ctx.artifact_dir; return {"grid": path relative to the audit's output folder}
    (the runner's artifact_dir is OUT/artifacts/<cell_id>), or {} when there is no artifact dir or no image."""
    if ctx.artifact_dir is None or x.ndim != 4:
        return {}
    save_grid(x, x_rec, data_range, Path(ctx.artifact_dir) / filename)
    return {"grid": Path(ctx.artifact_dir.parent.name, ctx.artifact_dir.name, filename).as_posix()}


def eval_subset(n_total: int, n_eval: int | None, seed: int) -> torch.Tensor:
    """Seeded random subset of test indices (all of them, in order, when n_eval is None or >= n_total)."""
    if n_eval is None or n_eval >= n_total:
        return torch.arange(n_total)
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n_eval].sort().values


# ------------------------------------------------------------------ decoder networks
class RangeSigmoid(nn.Module):
    """low + (high - low) * sigmoid(x): outputs inside the data range."""

    def __init__(self, low: float, high: float):
        super().__init__()
        self.low, self.high = low, high

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.low + (self.high - self.low) * torch.sigmoid(x)


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


def conv_decoder(feature_shape: tuple[int, ...], input_shape: tuple[int, ...], width: int, min_width: int) -> nn.Module:
    """Spatial feature (C, h, w) -> image (Cx, H, W): convs, x2 bilinear upsampling per octave, last conv,
    resized to (H, W) exactly when the ratio is not a power of two. Output is pre-activation."""
    channels, h, w = feature_shape
    cx, height, wid = input_shape
    octaves = max(0, round(math.log2(max(height / h, wid / w))))
    layers: list[nn.Module] = [*_conv_bn_relu(channels, width), *_conv_bn_relu(width, width)]
    cur = width
    for _ in range(octaves):
        nxt = max(min_width, cur // 2)
        layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), *_conv_bn_relu(cur, nxt)]
        cur = nxt
    layers += [nn.Conv2d(cur, cx, 3, padding=1)]
    if (h * 2**octaves, w * 2**octaves) != (height, wid):
        layers += [nn.Upsample(size=(height, wid), mode="bilinear", align_corners=False)]
    return nn.Sequential(*layers)


def mlp_decoder(dim: int, input_shape: tuple[int, ...], hidden: int) -> nn.Module:
    """Flat feature (D,) -> input of ``input_shape``: MLP then reshape. Output is pre-activation."""
    out = math.prod(input_shape)
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out),
        nn.Unflatten(1, tuple(input_shape)),
    )


class DecoderModule(EpochMeanModule):
    """Trains ``net`` (released feature -> input) by mean squared error; logs val_mse."""

    def __init__(self, net: nn.Module, lr: float, weight_decay: float):
        super().__init__()
        self.net, self.lr, self.weight_decay = net, lr, weight_decay

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    def training_step(self, batch, batch_idx):
        z, x = (t.float() for t in batch)
        loss = F.mse_loss(self.net(z), x)
        self.record(z.shape[0], train_mse=loss)
        return loss

    def validation_step(self, batch, batch_idx):
        z, x = (t.float() for t in batch)
        self.log("val_mse", F.mse_loss(self.net(z), x), on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def fit_decoder(
    z: torch.Tensor, x: torch.Tensor, data_range: tuple[float, float], *, settings: TrainerSettings,
    epochs: int, batch_size: int, lr: float, weight_decay: float, width: int, min_width: int, hidden: int,
    val_fraction: float, seed: int, patience: int | None = None, report: dict | None = None,
) -> tuple[nn.Module, str]:
    """Train a decoder from released features z (N, ...) to inputs x (N, ...) with Lightning, keeping the
    epoch with the lowest validation MSE and stopping after ``patience`` epochs without one (None: all
    epochs); returns (decoder: z -> x inside data_range, architecture name). ``report`` (a dict) receives
    ``best_epoch`` (0-based) and ``epochs_run``."""
    L.seed_everything(seed, verbose=False)
    spatial = z.ndim == 4 and x.ndim == 4
    perm = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(z.shape[0] * val_fraction))
    val, train = perm[:n_val], perm[n_val:]
    standardize = Standardize(z, spatial=spatial, rows=train)  # chunked: no copy of the aux features
    feature_shape = tuple(standardize(z[:1].float()).shape[1:])
    input_shape = tuple(x.shape[1:])
    if spatial:
        body, kind = conv_decoder(feature_shape, input_shape, width, min_width), "conv"
    else:
        body, kind = mlp_decoder(math.prod(feature_shape), input_shape, hidden), "mlp"
    net = nn.Sequential(standardize, body, RangeSigmoid(*data_range))
    module = DecoderModule(net, lr, weight_decay)
    keep = KeepBest("val_mse", mode="min")
    callbacks: list[L.Callback] = [keep]
    if patience is not None:
        callbacks.append(EarlyStopping("val_mse", mode="min", patience=patience))
    trainer = make_trainer(settings, epochs, callbacks)
    trainer.fit(
        module,
        tensor_loader(z, x, batch_size=batch_size, shuffle=True, seed=seed, rows=train),
        tensor_loader(z, x, batch_size=256, shuffle=False, rows=val),
    )
    if report is not None:
        report.update(best_epoch=keep.best_epoch, epochs_run=keep.epochs_run)
    return net.cpu().eval(), kind


# ------------------------------------------------------------------ the plugin
@register_attack("inversion")
class DecoderInversion(Attack):
    """Learned decoder (Lightning) from released feature back to the input; PSNR/SSIM vs the mean-image baseline."""

    class Params(Attack.Params):
        epochs: int = Field(20, ge=1, description="training epochs of the decoder (at most, with patience)")
        patience: int | None = Field(4, ge=1, description="stop after this many epochs without a lower validation MSE "
                                                          "(None: run every epoch)")
        batch_size: int = Field(32, ge=1)
        lr: float = Field(1e-3, gt=0)
        weight_decay: float = Field(0.0, ge=0)
        width: int = Field(32, ge=1, description="conv decoder channels at the feature's resolution")
        min_width: int = Field(32, ge=1, description="fewest conv decoder channels after upsampling")
        hidden: int = Field(512, ge=1, description="hidden width of the MLP decoder (flat features)")
        val_fraction: float = Field(0.1, gt=0, lt=0.5, description="part of the aux split for epoch selection")
        n_eval: int | None = Field(None, ge=1, description="test samples scored (default: all)")
        data_range: tuple[float, float] | None = Field(
            None, description="[low, high] of the inputs; default [0, 1] if the aux inputs lie in it, else their min/max")
        grid: bool = Field(True, description="save a PNG grid of originals vs reconstructions")

    def fit(self, ctx: AttackContext) -> None:
        p = self.params
        self.range = data_range_of(ctx.aux.x, p.data_range)
        self.mean_image = ctx.aux.x.float().mean(dim=0)
        self.decoder, self.kind = fit_decoder(
            ctx.aux.z, ctx.aux.x, self.range, settings=ctx.settings, epochs=p.epochs, batch_size=p.batch_size,
            lr=p.lr, weight_decay=p.weight_decay, width=p.width, min_width=p.min_width, hidden=p.hidden,
            val_fraction=p.val_fraction, seed=ctx.seed, patience=p.patience, report=(report := {}),
        )
        self.report = report

    def score(self, ctx: AttackContext) -> list[Score]:
        idx = eval_subset(len(ctx.test), self.params.n_eval, ctx.seed)
        x = ctx.test.x[idx].float()
        x_rec = predict(self.decoder, ctx.test.z, rows=idx)
        extra = {"method": "decoder", "decoder": self.kind, "epochs": self.params.epochs, **self.report}
        if self.params.grid:
            extra |= grid_extra(ctx, x, x_rec, self.range, "inversion_decoder.png")
        return reconstruction_scores(x, x_rec, self.mean_image, self.range, n_boot=ctx.n_boot, seed=ctx.seed,
                                     extra=extra)
