"""``datamix``: mixing / de-mixing of edge features with secret per-batch coefficients (Liu et al., DataMix).

The device groups its samples k at a time. For every group it draws a secret
k x k matrix M whose rows are uniform on the probability simplex (mixup-style
convex coefficients; rows summing to 1 keep every affine map of the cloud
consistent), redrawn until its condition number is at most ``max_condition``
(so M is invertible and de-mixing stays stable). It sends the k mixed
features M z (what the cloud, and the attacker, sees); the cloud runs its
part on each and returns k output vectors; the device de-mixes them with
M^-1. For a cloud whose outputs respond linearly to its input, the de-mixed
outputs equal the un-mixed ones exactly; the cloud copy is trained
mixing-aware so that it responds (nearly) linearly in practice:

    loss = cross-entropy(M^-1 cloud(M z), y)  [+ linear_weight * || cloud(M z) - M cloud(z) ||^2 / K]

with a fresh M per group and step. The edge part is not changed.

Cost: the edge runs its part, the mixing (k multiply-adds per feature element
and sample) and the de-mixing (k per output element); it sends one feature
and receives one output vector per sample. The paper keeps fewer than 20% of
the FLOPs on the edge: :func:`recommend_cut` picks the deepest cut point of a
model under that fraction.
"""
from __future__ import annotations

import copy
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from audit.core.models import SplitModel, flops_per_sample
from audit.core.training import EpochLog, EpochMeanModule, make_trainer, tensor_loader
from defenses import register_defense
from defenses._finetune import train_inputs
from defenses.base import Defense, FitContext, latency, timed_runs


# ----------------------------------------------------------------------------- functional core
def draw_mixing(n_groups: int, k: int, generator: torch.Generator | None = None,
                max_condition: float = 10.0) -> torch.Tensor:
    """(n_groups, k, k) mixing matrices; each row uniform on the simplex (normalised Exp(1) draws),
    every matrix with 2-norm condition number <= ``max_condition`` (ill-conditioned draws are redrawn)."""
    if k < 1 or max_condition <= 1:
        raise ValueError(f"need k >= 1 and max_condition > 1, got k={k}, max_condition={max_condition}")
    if k == 1:
        return torch.ones(n_groups, 1, 1)
    out = torch.empty(n_groups, k, k)
    todo = torch.arange(n_groups)
    for _ in range(1000):
        draws = -torch.log(torch.rand(len(todo), k, k, generator=generator).clamp_min(1e-12))
        m = draws / draws.sum(dim=2, keepdim=True)
        ok = torch.linalg.cond(m) <= max_condition
        out[todo[ok]] = m[ok]
        todo = todo[~ok]
        if len(todo) == 0:
            return out
    raise RuntimeError(f"could not draw {k}x{k} mixing matrices with condition <= {max_condition}")


def mix(z: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Mix consecutive groups of k rows: z (G*k, ...) -> (G*k, ...), group g's rows become M_g z_g."""
    g, k, _ = m.shape
    return torch.bmm(m.to(z.dtype), z.reshape(g, k, -1)).reshape(z.shape)


def demix(out: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Undo the mixing on the cloud's outputs: out (G*k, ...) -> M_g^-1 out_g per group."""
    g, k, _ = m.shape
    return torch.bmm(torch.linalg.inv(m).to(out.dtype), out.reshape(g, k, -1)).reshape(out.shape)


def pad_to_groups(z: torch.Tensor, k: int) -> torch.Tensor:
    """Append rows so that the count is a multiple of k: the last, partial group is completed with
    the batch's first rows (cycled if the batch has fewer than k)."""
    n = z.shape[0]
    extra = (-n) % k
    if extra == 0:
        return z
    return torch.cat([z, z[torch.arange(extra) % n]])


def recommend_cut(model: SplitModel, x: torch.Tensor, max_fraction: float = 0.2) -> str:
    """The deepest cut point whose edge part costs less than ``max_fraction`` of the model's FLOPs
    (x: one input, batch of 1); the first cut point if none does."""
    full = flops_per_sample(model, x)
    best = model.cut_points[0]
    for cut in model.cut_points:
        edge, _ = model.split(cut)
        if flops_per_sample(edge, x) < max_fraction * full:
            best = cut
    return best


# ----------------------------------------------------------------------------- training
class MixingAwareCloud(EpochMeanModule):
    """Trains the cloud so that de-mixing its outputs on mixed features gives the right logits."""

    def __init__(self, cloud: nn.Module, k: int, max_condition: float, lr: float, linear_weight: float, seed: int,
                 pre: nn.Module | None = None):
        super().__init__()
        self.cloud, self.k, self.max_condition = cloud, k, max_condition
        self.pre = pre or nn.Identity()  # the frozen edge when batches carry inputs, not features
        self.lr, self.linear_weight = lr, linear_weight
        self.generator = torch.Generator().manual_seed(seed)

    def training_step(self, batch, batch_idx):
        z, y = batch
        n = z.shape[0] - z.shape[0] % self.k
        if n == 0:  # a last batch smaller than one group
            return None
        z, y = self.pre(z[:n]), y[:n]
        m = draw_mixing(n // self.k, self.k, self.generator, self.max_condition).to(z.device)
        out = self.cloud(mix(z, m))
        loss = F.cross_entropy(demix(out, m), y)
        self.record(n, demixed_ce=loss)
        if self.linear_weight > 0:
            linearity = (out - mix(self.cloud(z), m)).pow(2).mean()
            self.record(n, linearity=linearity)
            loss = loss + self.linear_weight * linearity
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.cloud.parameters(), lr=self.lr)


# ----------------------------------------------------------------------------- plugin
@register_defense("datamix")
class DataMix(Defense):
    """Edge mixes k features with a secret invertible k x k matrix per group; mixing-aware cloud; edge de-mixes the outputs."""

    mixes_rows = True  # groups of k consecutive rows within each release call

    class Params(Defense.Params):
        k: int = Field(2, ge=2, le=8, description="samples mixed together (public)")
        max_condition: float = Field(10.0, gt=1, description="largest condition number of a mixing matrix")
        epochs: int = Field(3, ge=0, description="epochs of mixing-aware cloud training")
        lr: float = Field(5e-4, gt=0)
        batch_size: int = Field(128, ge=2, description="rounded down to a multiple of k")
        linear_weight: float = Field(0.0, ge=0, description="weight of the linear-response penalty (0: de-mixed loss only)")

    def fit(self, ctx: FitContext) -> None:
        p = self.params
        self.edge = ctx.split.edge.eval()
        self.num_classes = ctx.num_classes
        self.cloud = copy.deepcopy(ctx.split.cloud)
        if p.epochs > 0:
            L.seed_everything(ctx.seed, verbose=False)
            batch = max(p.k, p.batch_size - p.batch_size % p.k)
            inputs, pre = train_inputs(ctx.split, ctx.train.x)
            module = MixingAwareCloud(self.cloud, p.k, p.max_condition, p.lr, p.linear_weight, ctx.seed, pre)
            trainer = make_trainer(ctx.settings, p.epochs,
                                   [EpochLog(ctx.title("datamix mixing-aware cloud training"), ("demixed_ce", "linearity"))])
            trainer.fit(
                module, tensor_loader(inputs, ctx.train.y, batch_size=batch, shuffle=True, seed=ctx.seed))
            pre.cpu()
        self.edge.cpu().eval()
        self.cloud.cpu().eval()
        self.generator = torch.Generator().manual_seed(ctx.seed)  # the device's secret coefficient stream

    # the device side -------------------------------------------------------
    def _mixed(self, x: torch.Tensor, features: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, int]:
        z = features if features is not None else self.edge(x)
        n = z.shape[0]
        z = pad_to_groups(z, self.params.k)
        m = draw_mixing(z.shape[0] // self.params.k, self.params.k, self.generator, self.params.max_condition)
        return mix(z, m), m, n

    @torch.no_grad()
    def release(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """The mixed features the cloud sees (N, ...): row i is a mixture of its group of k samples.
        Groups are consecutive k rows of this call; a partial last group is completed with the
        call's first rows (whose extra mixtures are sent but not returned here)."""
        mixed, _, n = self._mixed(x, features)
        return mixed[:n]

    @torch.no_grad()
    def predict(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """Mix, let the cloud run on the k mixtures of every group, de-mix its outputs with M^-1."""
        mixed, m, n = self._mixed(x, features)
        return demix(self.infer(mixed), m)[:n]

    def cost(self, x: torch.Tensor, full_flops: int) -> dict[str, Any]:
        """Per sample: edge FLOPs of a whole group (edge part, mixing, de-mixing; the k x k
        inversion is not counted by torch's flop counter and is O(k^3) per group) / k; bytes sent
        (one mixed feature) and received (one output vector); latencies of mixing and de-mixing
        included in the edge's."""
        from torch.utils.flop_counter import FlopCounterMode

        k = self.params.k
        group = x[torch.arange(k) % x.shape[0]]
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            mixed, m, _ = self._mixed(group, None)
            demix(torch.zeros(k, self.num_classes), m)
        edge_flops = int(counter.get_total_flops()) // k
        n = x.shape[0]
        with torch.no_grad():
            mixed, m, _ = self._mixed(x, None)
            out = self.infer(mixed)
        with torch.no_grad():
            edge = latency(timed_runs(lambda: (self._mixed(x, None), demix(out, m))), n, "edge")
            cloud = latency(timed_runs(lambda: self.infer(mixed)), n, "cloud")
        return {
            "edge_flops": edge_flops,
            "edge_flops_fraction": edge_flops / full_flops if full_flops else None,
            "bytes_sent": self.bytes_per_sample(mixed),
            "bytes_received": int(out[0].numel() * out.element_size()),
            **edge,
            **cloud,
            "rounds": self.rounds,
        }

