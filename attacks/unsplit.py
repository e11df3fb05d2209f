"""``unsplit``: architecture-only model inversion (UnSplit, Erdogan, Küpçü & Çiçek, WPES 2022).

The attacker knows the edge's *architecture* but not its weights, and holds no auxiliary data.
It builds a surrogate edge g (the same architecture, freshly initialised) and jointly optimises
g's weights and the unknown inputs x (N, ...) of the observed released features z (N, ...):

    min_{x, g}  ||g(x) - z||^2 / s  +  lambda * TV(x)          x in [low, high]

alternating, as the paper does, ``input_steps`` Adam steps on x (g fixed) and ``model_steps``
Adam steps on g's weights (x fixed; the data term only), for ``rounds`` rounds. One surrogate
is shared by all the inverted samples (its weights are pinned down by every observed feature at
once). s is the mean squared released feature (so lambda does not depend on the feature's
scale); TV is :func:`attacks.inversion_rmle.total_variation` over (high - low). Inputs start at
the middle of the data range (the paper's 0.5 on [0, 1] images) and are projected back into the
range after each step; the surrogate runs in eval mode (batch-norm layers keep their fresh
statistics, so every sample's feature depends on that sample only).

Threat model (:data:`UnSplitInversion.threat_model`): the architecture and the input domain
[low, high] only: no edge weights, no auxiliary samples, no queries of the release channel.
The aux split appears only in the *scoring*: the mean-image baseline (the chance level,
as for every reconstruction attack) and, when ``data_range`` is not given, the input domain.
The architecture comes from the white-box edge of :func:`attacks._channel.white_box_edge`
(deep-copied, every parameter re-initialised from the attack's seed and checked to differ from
the original's), so a release that is not edge(x) plus same-shaped noise is refused.

Scores: PSNR (dB) and SSIM of the reconstructions of a seeded subset of ``n_eval`` test
samples against the true inputs, with the mean-image baseline as chance
(:func:`attacks.inversion.reconstruction_scores`): a surrogate that collapses to one image for
every input is flagged ``degenerate`` (an inconclusive verdict, never "no evidence").
"""
from __future__ import annotations

import copy
import hashlib
import math
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from attacks import register_attack
from attacks._channel import require_white_box_edge
from attacks.base import Attack, AttackContext, Score
from attacks.inversion import data_range_of, eval_subset, grid_extra, reconstruction_scores
from attacks.inversion_rmle import relative_residual, total_variation

THREAT_MODEL: dict[str, Any] = {
    "edge_architecture": True, "edge_weights": False, "aux_data": False, "channel_queries": False,
    "input_domain": True,
}


# ------------------------------------------------------------------ functional core
def surrogate_seed(seed: int) -> int:
    """The surrogate's initialisation seed, derived from the attack's: never ``seed`` itself, which may be the
    one the task model was initialised with (a briefly trained edge is then close to the surrogate's start)."""
    return int.from_bytes(hashlib.sha256(f"unsplit-surrogate:{seed}".encode()).digest()[:7], "big")


def fresh_surrogate(edge: nn.Module, seed: int) -> tuple[nn.Module, int]:
    """A copy of ``edge``'s architecture with none of its weights: deep copy, then every submodule's
    ``reset_parameters`` (and batch-norm statistics) under ``torch.manual_seed(surrogate_seed(seed))``; a parameter
    still equal to the original's (its module has no ``reset_parameters``) is redrawn
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)). Returns (surrogate in eval mode, number of parameters redrawn
    that way). Raises if any parameter still equals the original (a zero-size or constant one aside)."""
    surrogate = copy.deepcopy(edge)
    redrawn = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(surrogate_seed(seed))
        for module in surrogate.modules():
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
            if callable(getattr(module, "reset_running_stats", None)):
                module.reset_running_stats()
        with torch.no_grad():
            for (_, new), (_, old) in zip(surrogate.named_parameters(), edge.named_parameters()):
                if new.numel() > 1 and torch.equal(new, old):
                    fan_in = new[0].numel() if new.ndim > 1 else new.numel()
                    bound = 1.0 / math.sqrt(fan_in)
                    new.uniform_(-bound, bound)
                    redrawn += 1
    for (name, new), (_, old) in zip(surrogate.named_parameters(), edge.named_parameters()):
        if new.numel() > 1 and torch.equal(new, old):
            raise RuntimeError(f"unsplit: surrogate parameter {name} still holds the edge's weights")
    surrogate.requires_grad_(True)
    return surrogate.eval(), redrawn


def unsplit_invert(
    surrogate: nn.Module, z: torch.Tensor, x0: torch.Tensor, data_range: tuple[float, float], *,
    rounds: int, input_steps: int, model_steps: int, input_lr: float, model_lr: float, tv_weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint inversion of released features z (N, ...) from inputs starting at x0 (N, ...) and the
    surrogate edge (trained in place; eval mode throughout). ``input_lr`` is in units of the data
    range per step, ``model_lr`` Adam's step on the weights. Returns (x (N, ...) inside the data range,
    relative feature residual per sample ||g(x) - z||^2 / ||z||^2 (N,))."""
    low, high = data_range
    peak = high - low
    z = z.float()
    scale = float(z.pow(2).mean().clamp_min(1e-12))
    x = x0.clone().float().clamp(low, high).requires_grad_(True)
    weights = [p for p in surrogate.parameters() if p.requires_grad]
    input_opt = torch.optim.Adam([x], lr=input_lr * peak, amsgrad=True)
    model_opt = torch.optim.Adam(weights, lr=model_lr, amsgrad=True) if weights else None
    surrogate.eval()

    def data_term() -> torch.Tensor:
        return (surrogate(x) - z).pow(2).flatten(1).mean(1) / scale  # (N,)

    for _ in range(rounds):
        for _ in range(input_steps):
            loss = (data_term() + tv_weight * total_variation(x) / peak).sum()
            (x.grad,) = torch.autograd.grad(loss, [x])
            input_opt.step()
            with torch.no_grad():
                x.clamp_(low, high)
        if model_opt is None:
            continue
        for _ in range(model_steps):
            loss = data_term().mean()
            grads = torch.autograd.grad(loss, weights)
            for w, g in zip(weights, grads):
                w.grad = g
            model_opt.step()
    with torch.no_grad():
        residual = relative_residual(surrogate(x), z)
    return x.detach(), residual


# ------------------------------------------------------------------ the plugin
@register_attack("unsplit")
class UnSplitInversion(Attack):
    """Architecture-only inversion (UnSplit, Erdogan et al. 2022): fresh surrogate edge and inputs optimised jointly, no aux."""

    threat_model: ClassVar[dict[str, Any]] = THREAT_MODEL

    class Params(Attack.Params):
        rounds: int = Field(20, ge=1, description="alternations of input steps and surrogate-weight steps")
        input_steps: int = Field(10, ge=1, description="Adam steps on the inputs per round")
        model_steps: int = Field(10, ge=0, description="Adam steps on the surrogate's weights per round")
        input_lr: float = Field(0.02, gt=0, description="Adam step size on the inputs, in units of the data range")
        model_lr: float = Field(0.01, gt=0, description="Adam step size on the surrogate's weights")
        tv_weight: float = Field(0.05, ge=0, description="weight of the total-variation prior")
        n_eval: int = Field(64, ge=2, description="test samples inverted together (a seeded subset)")
        data_range: tuple[float, float] | None = Field(
            None, description="[low, high] of the inputs (the public input domain); default [0, 1] if the aux "
                              "inputs lie in it, else their min/max")
        grid: bool = Field(True, description="save a PNG grid of originals vs reconstructions")

    def fit(self, ctx: AttackContext) -> None:
        """Nothing is learned from the aux split: only the architecture is taken (and, for scoring, the mean image)."""
        self.range = data_range_of(ctx.aux.x, self.params.data_range)
        self.mean_image = ctx.aux.x.float().mean(dim=0)  # the chance level only; the attack never sees it
        edge = require_white_box_edge(ctx, "unsplit", needs="the architecture of a map")
        self.surrogate, self.redrawn = fresh_surrogate(edge, ctx.seed)

    def score(self, ctx: AttackContext) -> list[Score]:
        p = self.params
        idx = eval_subset(len(ctx.test), p.n_eval, ctx.seed)
        x, z = ctx.test.x[idx].float(), ctx.test.z[idx].float()
        low, high = self.range
        x0 = torch.full_like(x, low + 0.5 * (high - low))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            x_rec, residual = unsplit_invert(
                self.surrogate, z, x0, self.range, rounds=p.rounds, input_steps=p.input_steps,
                model_steps=p.model_steps, input_lr=p.input_lr, model_lr=p.model_lr, tv_weight=p.tv_weight)
        extra = {"method": "unsplit", "threat_model": dict(self.threat_model), "rounds": p.rounds,
                 "input_steps": p.input_steps, "model_steps": p.model_steps, "tv_weight": p.tv_weight,
                 "feature_residual": float(residual.median()), "redrawn_parameters": self.redrawn}
        if p.grid:
            extra |= grid_extra(ctx, x, x_rec, self.range, "inversion_unsplit.png")
        return reconstruction_scores(x, x_rec, self.mean_image, self.range, n_boot=ctx.n_boot, seed=ctx.seed,
                                     extra=extra)
