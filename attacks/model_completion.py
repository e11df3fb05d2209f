"""``model_completion``: few-label attribute inference (model completion, Fu et al., USENIX Security 2022).

Threat model (``THREAT_MODEL``, also in every score's ``extra.threat_model``): the attacker holds
only ``n_labels`` labelled aux samples per class of the attribute, plus the UNLABELLED released
test-time features, i.e. it trains transductively on the very features it is scored on. The test
labels are never used in training: they only score the predictions (balanced accuracy with a
bootstrap CI over the test samples), so chance stays 1/K when the labels are independent of the
features. Written from the paper's description (semi-supervised completion of a head on the
bottom model's outputs), with self-training in place of its MixMatch:

1. representation: the released feature, standardised per element and projected on its top
   ``pca_components`` principal directions, both fitted on every feature the attacker holds
   (the labelled aux rows and the unlabelled test rows; no labels);
2. round 0: a head (``linear`` or a one-hidden-layer ``mlp``) trained on the labelled rows only,
   class-balanced cross-entropy, full batch, Adam; inputs perturbed by Gaussian noise of std
   ``noise`` (in standardised-PCA units) at every step: the *supervised-only* reference;
3. rounds 1..``rounds``: the current head labels the clean unlabelled features; per predicted
   class at most ceil(r / rounds * n_unlabelled / K) of those with confidence >= ``threshold``
   (the most confident first: a class-balanced curriculum) join the labelled rows, and a fresh
   head is trained on both, on noisy views of them (consistency under feature noise: the
   pseudo-label of the clean view is the target for the perturbed view).

Scores per private target: balanced accuracy, accuracy, AUROC (:func:`attacks.metrics.classification_scores`;
one predicted class is flagged ``degenerate``). ``extra.supervised_only`` holds the round-0 head's
balanced accuracy [95% CI] on the same test rows and ``extra.gain_over_supervised`` the paired
bootstrap CI of the difference: the semi-supervised step is worth something only when that CI
lies above 0.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torchmetrics.functional.classification import multiclass_accuracy

from attacks import register_attack
from attacks.attribute import Standardize
from attacks.base import Attack, AttackContext, Score
from attacks.metrics import classification_scores
from audit.core.feature_store import Rows, map_batches
from audit.core.stats import bootstrap_ci
from audit.core.training import class_weights

THREAT_MODEL = ("few labelled aux samples (n_labels per class) + the unlabelled released TEST features, on which "
                "it trains transductively (test labels never used in training; they only score)")


# ------------------------------------------------------------------ functional core
def few_labels(s: torch.Tensor, n_per_class: int, num_classes: int, seed: int) -> torch.Tensor:
    """Seeded stratified pick of at most ``n_per_class`` indices of each class of labels s (N,); sorted."""
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for c in range(num_classes):
        idx = torch.nonzero(s == c).flatten()
        picked.append(idx[torch.randperm(idx.numel(), generator=gen)[:n_per_class]])
    return torch.cat(picked).sort().values


def pseudo_labels(probs: torch.Tensor, threshold: float, quota: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, labels) of the unlabelled rows to pseudo-label from class probabilities (N, K): per predicted
    class, the at most ``quota`` most confident rows with confidence >= threshold."""
    conf, pred = probs.max(dim=1)
    chosen = []
    for c in range(probs.shape[1]):
        idx = torch.nonzero((pred == c) & (conf >= threshold)).flatten()
        chosen.append(idx[conf[idx].argsort(descending=True, stable=True)[:quota]])
    idx = torch.cat(chosen).sort().values
    return idx, pred[idx]


def train_head(u: torch.Tensor, s: torch.Tensor, k: int, *, head: str, hidden: int, steps: int, lr: float,
               weight_decay: float, noise: float, seed: int, n_labelled: int | None = None,
               pseudo_weight: float = 1.0) -> nn.Module:
    """A class-balanced head on representations u (N, D) with labels s (N,): full-batch Adam for ``steps``
    steps, every step on u + N(0, noise^2) (a fresh draw). With ``n_labelled`` < N the first n_labelled rows
    are the labelled ones and the rest pseudo-labelled: loss = CE(labelled) + pseudo_weight * CE(pseudo),
    each class-balanced and averaged over its own rows (a few labels stay anchors among many pseudo-labels).
    Deterministic per seed; returns the logits net (eval mode)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dim = u.shape[1]
        net = nn.Linear(dim, k) if head == "linear" else nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(),
                                                                        nn.Linear(hidden, k))
    gen = torch.Generator().manual_seed(seed + 1)
    n_lab = u.shape[0] if n_labelled is None else n_labelled
    parts = [(slice(0, n_lab), 1.0), (slice(n_lab, u.shape[0]), pseudo_weight)]
    parts = [(rows, w, class_weights(s[rows], k)) for rows, w in parts if rows.stop > rows.start]
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    net.train()
    for _ in range(steps):
        logits = net(u + noise * torch.randn(u.shape, generator=gen) if noise > 0 else u)
        loss = sum(w * F.cross_entropy(logits[rows], s[rows], weight=cw) for rows, w, cw in parts)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def self_train(u_lab: torch.Tensor, s_lab: torch.Tensor, u_unl: torch.Tensor, k: int, *, rounds: int,
               threshold: float, pseudo_weight: float = 1.0, **head_kw) -> tuple[nn.Module, nn.Module, list[int]]:
    """Self-training (module docstring) on labelled representations u_lab (L, D) with labels s_lab (L,) and
    unlabelled u_unl (U, D). Returns (final head, round-0 supervised-only head, pseudo-labelled count per round)."""
    threads = torch.get_num_threads()
    # one thread: the products are tiny (a few hundred rows x pca_components); on a busy machine two
    # threads made each round ~10x slower
    torch.set_num_threads(1)
    try:
        return _self_train(u_lab, s_lab, u_unl, k, rounds=rounds, threshold=threshold, pseudo_weight=pseudo_weight,
                           **head_kw)
    finally:
        torch.set_num_threads(threads)


def _self_train(u_lab, s_lab, u_unl, k, *, rounds, threshold, pseudo_weight, **head_kw):
    with torch.enable_grad():
        supervised = train_head(u_lab, s_lab, k, **head_kw)
    net, counts = supervised, []
    for r in range(1, rounds + 1):
        quota = math.ceil(r / rounds * u_unl.shape[0] / k)
        idx, labels = pseudo_labels(net(u_unl).softmax(dim=1), threshold, quota)
        counts.append(int(idx.numel()))
        with torch.enable_grad():
            net = train_head(torch.cat([u_lab, u_unl[idx]]), torch.cat([s_lab, labels]), k,
                             n_labelled=u_lab.shape[0], pseudo_weight=pseudo_weight, **head_kw)
    return net, supervised, counts


def balanced_accuracy(preds: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    return multiclass_accuracy(preds, y, num_classes=k, average="macro")


# ------------------------------------------------------------------ the plugin
@register_attack("model_completion")
class ModelCompletionAttack(Attack):
    """Few-label attribute inference: self-training on n_labels labelled aux samples per class plus the
    unlabelled released test features (transductive threat model, see ``threat_model``)."""

    threat_model = THREAT_MODEL

    class Params(Attack.Params):
        targets: list[str] | None = Field(None, description="private attributes to attack (default: all)")
        n_labels: int = Field(20, ge=1, description="labelled aux samples per class the attacker holds")
        rounds: int = Field(3, ge=0, description="self-training rounds (0: supervised-only on the few labels)")
        threshold: float = Field(0.8, ge=0, le=1, description="confidence a pseudo-label needs")
        pseudo_weight: float = Field(1.0, ge=0, description="weight of the pseudo-labelled rows' loss (the labelled "
                                                            "rows' loss has weight 1)")
        noise: float = Field(0.5, ge=0, description="std of the Gaussian feature noise of every training step "
                                                    "(standardised-PCA units): consistency regularisation")
        pca_components: int = Field(64, ge=1, description="PCA dimension (fitted on the attacker's features, no labels)")
        head: Literal["linear", "mlp"] = Field("mlp", description="the head of every round (mlp: one hidden layer)")
        hidden: int = Field(64, ge=1, description="hidden width of the mlp head")
        steps: int = Field(300, ge=1, description="full-batch Adam steps per round")
        lr: float = Field(1e-2, gt=0)
        weight_decay: float = Field(1e-3, ge=0)

    def targets(self, ctx: AttackContext) -> list[str]:
        names = list(ctx.aux.private) if self.params.targets is None else self.params.targets
        unknown = [t for t in names if t not in ctx.aux.private]
        if unknown:
            raise ValueError(f"model_completion: unknown targets {unknown}; private labels: {list(ctx.aux.private)}")
        return names

    def fit(self, ctx: AttackContext) -> None:
        p = self.params
        z_aux, z_test = ctx.aux.z.float(), ctx.test.z.float()
        self.fitted: dict[str, dict] = {}
        for i, t in enumerate(self.targets(ctx)):
            k = ctx.num_classes[t]
            lab = few_labels(ctx.aux.private[t], p.n_labels, k, ctx.seed + i)
            # the representation sees features only: the labelled aux rows and the unlabelled test rows
            with torch.random.fork_rng(devices=[]):  # torch.pca_lowrank draws from the global RNG
                torch.manual_seed(ctx.seed)
                # the labelled aux rows and the test split, copied into a scratch file when large (UTKFace conv1:
                # 1.7 GB), as a concatenation in RAM would be
                rows = Rows(z_aux[lab], z_test)
                both = map_batches(lambda a, b: rows[a:b], len(rows), ctx.scratch_dir, ctx.max_ram_mb)
                rep = Standardize(both, spatial=False, pca_components=p.pca_components)
                del both
            u_lab, u_unl = rep(z_aux[lab]), rep(z_test)
            net, supervised, counts = self_train(
                u_lab, ctx.aux.private[t][lab], u_unl, k, rounds=p.rounds, threshold=p.threshold,
                pseudo_weight=p.pseudo_weight, head=p.head,
                hidden=p.hidden, steps=p.steps, lr=p.lr, weight_decay=p.weight_decay, noise=p.noise, seed=ctx.seed,
            )
            with torch.no_grad():
                self.fitted[t] = {"probs": net(u_unl).softmax(dim=1), "supervised": supervised(u_unl).argmax(dim=1),
                                  "labelled": torch.bincount(ctx.aux.private[t][lab], minlength=k).tolist(),
                                  "pseudo_labelled": counts, "dim": int(u_lab.shape[1])}

    def score(self, ctx: AttackContext) -> list[Score]:
        scores = []
        for target, f in self.fitted.items():
            k, y = ctx.num_classes[target], ctx.test.private[target]
            preds = f["probs"].argmax(dim=1)
            sup = balanced_accuracy(f["supervised"], y, k)
            gain = bootstrap_ci(lambda a, b, t: balanced_accuracy(a, t, k) - balanced_accuracy(b, t, k),
                                preds, f["supervised"], y, n_boot=ctx.n_boot, seed=ctx.seed)
            extra = {
                "threat_model": THREAT_MODEL, "transductive": True, "n_labels": self.params.n_labels,
                "labelled_per_class": f["labelled"], "pseudo_labelled_per_round": f["pseudo_labelled"],
                "rounds": self.params.rounds, "head": self.params.head, "dim": f["dim"],
                "supervised_only": {"balanced_accuracy": float(sup), "ci95": list(bootstrap_ci(
                    lambda a, t: balanced_accuracy(a, t, k), f["supervised"], y, n_boot=ctx.n_boot, seed=ctx.seed))},
                "gain_over_supervised": {"value": float(balanced_accuracy(preds, y, k)) - float(sup), "ci95": list(gain)},
            }
            scores += classification_scores(target, f["probs"], y, k, n_boot=ctx.n_boot, seed=ctx.seed, extra=extra)
        return scores
