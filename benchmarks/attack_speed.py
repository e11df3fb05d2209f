"""Old vs new attack implementations side by side, on the same features in one process (ratios, not
absolute times: the machine is shared).

``linear``: the linear probe ``attribute_linear`` as of commit 1a4d8df (PCA by ``torch.pca_lowrank`` on
a standardised copy, scikit-learn ``LogisticRegressionCV``: 8 strengths x 5 folds, one BLAS thread;
copied below as :func:`old_linear_probe`) against the current plugin's core (chunked cached PCA,
torch L-BFGS logistic regression, strength on one validation split; :func:`new_linear_probe`).

Feature sets (seed s; aux / test rows as the audit splits them):
- ``planted5-conv1`` / ``-pool1``: the synthetic task (16x16 images, 5 private classes, strength 0.12)
  through a small_cnn (widths 16, 32) trained 2 epochs: 16x16x16 / 16x8x8 features;
- ``digits-conv1`` (ink, 3 classes): 8x8 digits through small_cnn (widths 16, 32): 16x8x8;
- ``dump-65k``: a generated conv1-sized dump, 1,715 aux / 1,714 test rows of 65,536 elements, 5
  imbalanced classes planted in a 16-dimensional subspace under correlated noise (``make_dump``).

``attribute``: the ``attribute`` plugin (15 epochs) as at 1a4d8df on features over 16,384 elements such as
UTKFace conv1 (cnn head, width 128, no refit) against its current defaults there (``auto_mlp_max_dim: 0``:
cnn and plain heads, the better on validation, refit on all aux), next to the plain 3-conv CNN of issue 19
(:func:`plain_cnn`) trained on all aux rows, on the spatial sets.

Each row: balanced accuracy [95% CI] of old and new, their wall and CPU seconds (``time.process_time``,
all threads: on a loaded machine wall time is mostly waiting) and the ratios old / new.

    nice python benchmarks/attack_speed.py linear --seeds 0 1 --out benchmarks/attack_speed.jsonl
    nice python benchmarks/attack_speed.py attribute --seeds 0 --out benchmarks/attack_speed.jsonl
    python benchmarks/attack_speed.py --table benchmarks/attack_speed.jsonl
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from attacks.attribute import Standardize
from attacks.metrics import classification_scores
from audit.core.data import DATASETS, AuditData, split_indices
from audit.core.models import MODELS
from audit.core.training import TrainerSettings, fit_classifier, predict

SETTINGS = TrainerSettings(accelerator="cpu")


# ------------------------------------------------------------------ feature sets
def task_features(dataset: dict, widths: list[int], cuts: list[str], seed: int) -> dict[str, tuple]:
    """name -> (z_aux, s_aux, z_test, s_test, k) at each cut of a small_cnn trained 2 epochs on the train split."""
    import lightning as L

    L.seed_everything(seed, verbose=False)
    params = dict(dataset)
    loaded = DATASETS.create(params.pop("name"), **params).load(None)
    data = AuditData("t", loaded, split_indices(loaded.x.shape[0], {"train": 0.5, "aux": 0.25, "test": 0.25}, seed))
    net = MODELS.create("small_cnn", widths=widths, fc=[32]).build(data.input_shape, data.num_classes(data.primary))
    train = data.part("train")
    fit_classifier(net, train.x, train.y, data.num_classes(data.primary), settings=SETTINGS, epochs=2, seed=seed)
    net.eval()
    target = data.private[0]
    out = {}
    for cut in cuts:
        edge, _ = net.split(cut)
        aux, test = data.part("aux"), data.part("test")
        out[cut] = (predict(edge, aux.x), aux.private[target], predict(edge, test.x), test.private[target],
                    data.num_classes(target))
    return out


def make_dump(seed: int, n_aux: int = 1715, n_test: int = 1714, d: int = 65536, k: int = 5) -> tuple:
    """Planted features (N, 64, 32, 32): label-dependent means in a 16-dim subspace (0.35 per unit direction)
    plus noise with a decaying spectrum (64 shared directions, scale 3) and unit white noise; classes drawn
    with probabilities 0.4, 0.25, 0.15, 0.12, 0.08."""
    gen = torch.Generator().manual_seed(1000 + seed)
    signal = torch.linalg.qr(torch.randn(d, 16, generator=gen))[0].T * (d**0.5)  # (16, d), unit-variance rows
    centers = 0.35 * torch.randn(k, 16, generator=gen)
    shared = torch.randn(64, d, generator=gen) * (3.0 / torch.arange(1, 65).float().sqrt())[:, None]
    probs = torch.tensor([0.4, 0.25, 0.15, 0.12, 0.08])

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.multinomial(probs, n, replacement=True, generator=gen)
        z = torch.empty(n, d)
        for i in range(0, n, 256):
            rows = slice(i, min(n, i + 256))
            m = rows.stop - rows.start
            z[rows] = centers[s[rows]] @ signal + torch.randn(m, 64, generator=gen) @ shared + torch.randn(m, d, generator=gen)
        return z.reshape(n, 64, 32, 32), s

    z_aux, s_aux = draw(n_aux)
    z_test, s_test = draw(n_test)
    return z_aux, s_aux, z_test, s_test, k


def feature_sets(seed: int, dump: bool = True) -> dict[str, tuple]:
    sets = {}
    planted = {"name": "synthetic", "n": 2000, "image_size": 16, "private_classes": 5, "strength": 0.12}
    for cut, v in task_features(planted, [16, 32], ["conv1", "pool1"], seed).items():
        sets[f"planted5-{cut}"] = v
    digits = {"name": "digits", "primary": "digit", "private": ["ink"]}
    sets["digits-conv1"] = task_features(digits, [16, 32], ["conv1"], seed)["conv1"]
    if dump:
        sets["dump-65k"] = make_dump(seed)
    return sets


# ------------------------------------------------------------------ old and new linear probes
class OldStandardize(torch.nn.Module):
    """attacks.attribute.Standardize (flat, PCA) as of 1a4d8df."""

    chunk = 256

    def __init__(self, z: torch.Tensor, pca_components: int):
        super().__init__()
        flat = z.flatten(1)
        self.mean = flat.mean(dim=0)
        self.std = flat.std(dim=0).clamp_min(1e-6)
        self.projection = None
        if flat.shape[1] > pca_components:
            q = min(pca_components, flat.shape[0] - 1)
            _, _, v = torch.pca_lowrank(self(flat), q=q, center=False, niter=4)
            self.projection = v[:, :q]

    @staticmethod
    def chunks(z: torch.Tensor, st: torch.nn.Module):
        """Row chunks of z standardised with st's mean and std (no projection)."""
        flat = z.flatten(1)
        return [(flat[i : i + 256] - st.mean).div_(st.std) for i in range(0, flat.shape[0], 256)]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        flat = z.flatten(1)
        parts = [(flat[i : i + self.chunk] - self.mean).div_(self.std) for i in range(0, flat.shape[0], self.chunk)]
        if self.projection is not None:
            parts = [part @ self.projection for part in parts]
        return torch.cat(parts)


def old_linear_probe(z: torch.Tensor, s: torch.Tensor, k: int, seed: int, pca_components: int = 256):
    """LinearProbeAttack.fit_target as of 1a4d8df: -> probabilities function."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegressionCV
    from threadpoolctl import threadpool_limits

    standardize = OldStandardize(z, pca_components)
    clf = LogisticRegressionCV(Cs=8, cv=5, max_iter=500, class_weight="balanced", scoring="balanced_accuracy",
                               random_state=seed)
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FutureWarning)
        clf.fit(standardize(z).double().numpy(), s.numpy())

    def probs(zt: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(zt.shape[0], k)
        out[:, torch.as_tensor(clf.classes_)] = torch.as_tensor(clf.predict_proba(standardize(zt).double().numpy()),
                                                                dtype=torch.float32)
        return out

    return probs


def new_linear_probe(z: torch.Tensor, s: torch.Tensor, k: int, seed: int, pca_components: int = 256):
    """The current LinearProbeAttack.fit_target (same defaults)."""
    from attacks._linear import fit_logistic

    standardize = Standardize(z, spatial=False, pca_components=pca_components)
    model, _ = fit_logistic(standardize(z), s, k, seed=seed)
    return lambda zt: model.probs(standardize(zt))


def measure(fit, z_aux, s_aux, z_test, s_test, k, seed) -> dict:
    start, cpu = time.perf_counter(), time.process_time()
    probs = fit(z_aux, s_aux, k, seed)(z_test)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    bacc = next(x for x in classification_scores("t", probs, s_test, k, n_boot=500, seed=seed)
                if x.metric == "balanced_accuracy")
    return {"bacc": round(bacc.value, 4), "ci95": [round(c, 4) for c in bacc.ci95], "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu, 2), "degenerate": bacc.extra["degenerate"]}


def run_linear(seed: int, only: list[str] | None) -> list[dict]:
    rows = []
    for name, (z_aux, s_aux, z_test, s_test, k) in feature_sets(seed).items():
        if only and name not in only:
            continue
        z_aux, z_test = z_aux.float(), z_test.float()
        old = measure(old_linear_probe, z_aux, s_aux, z_test, s_test, k, seed)
        new = measure(new_linear_probe, z_aux, s_aux, z_test, s_test, k, seed)
        row = {"bench": "linear", "features": name, "seed": seed, "n_aux": len(s_aux), "n_test": len(s_test),
               "dim": int(z_aux[0].numel()), "k": k, "old": old, "new": new,
               "speedup": round(old["seconds"] / new["seconds"], 2),
               "cpu_speedup": round(old["cpu_seconds"] / new["cpu_seconds"], 2)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def run_pca(seed: int, targets: int = 2) -> list[dict]:
    """The standardised PCA-256 of dump-65k's aux rows as one linear-probe cell with ``targets`` targets
    needs it: old = one ``torch.pca_lowrank`` per target, new = one chunked basis shared through the cache;
    with the fraction of the standardised variance each keeps."""
    z = make_dump(seed, n_test=1)[0]
    out = {}
    for label, make in (("old", lambda: OldStandardize(z, 256)), ("new", lambda: Standardize(z, False, 256))):
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(targets):
            st = make()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        kept = float(st(z).pow(2).sum() / sum(float(part.pow(2).sum()) for part in OldStandardize.chunks(z, st)))
        out[label] = {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "kept_variance": round(kept, 4)}
    row = {"bench": "pca", "features": f"dump-65k aux, {targets} targets", "seed": seed, "n_aux": z.shape[0],
           "dim": int(z[0].numel()), **out, "speedup": round(out["old"]["seconds"] / out["new"]["seconds"], 2),
           "cpu_speedup": round(out["old"]["cpu_seconds"] / out["new"]["cpu_seconds"], 2)}
    print(json.dumps(row), flush=True)
    return [row]


# ------------------------------------------------------------------ attribute heads
OLD_HEAD = {"head": "cnn", "widths": [128], "refit": False}  # the plugin at 1a4d8df on features over 16,384 elements


def plain_cnn(channels: int, k: int) -> torch.nn.Module:
    """The issue-19 reference attacker: three stride-2 3x3 convs (32, 64, 128) with ReLU, global average pooling, linear."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, k))


def head_rows(z_aux, s_aux, z_test, s_test, k, seed: int, common: dict | None = None) -> dict[str, dict]:
    """balanced accuracy and seconds of the attribute plugin with its 1a4d8df settings (``old``), its current
    defaults (``new``) and the plain CNN (Adam 1e-3, 15 epochs, class-weighted cross-entropy, all aux rows)."""
    import lightning as L

    from attacks import ATTACKS, AttackContext, AttackView

    aux = AttackView(z_aux, z_aux, s_aux, {"t": s_aux})
    test = AttackView(z_test, z_test, s_test, {"t": s_test})
    ctx = AttackContext(aux, test, {"t": k}, "t", channel=None, split=None, settings=SETTINGS, seed=seed, n_boot=500)
    out = {}
    for label, params in (("old", OLD_HEAD), ("new", dict(common or {}))):
        start, cpu = time.perf_counter(), time.process_time()
        L.seed_everything(seed, verbose=False)
        attack = ATTACKS.create("attribute", epochs=15, **params)
        attack.fit(ctx)
        bacc = next(x for x in attack.score(ctx) if x.metric == "balanced_accuracy")
        out[label] = {"bacc": round(bacc.value, 4), "ci95": [round(c, 4) for c in bacc.ci95],
                      "seconds": round(time.perf_counter() - start, 2), "cpu_seconds": round(time.process_time() - cpu, 2),
                      "degenerate": bacc.extra["degenerate"], "model": attack.models["t"]}

    def fit_plain(z, s, k_, seed_):
        L.seed_everything(seed_, verbose=False)
        net = torch.nn.Sequential(Standardize(z, spatial=True), plain_cnn(z.shape[1], k_))
        fit_classifier(net, z, s, k_, settings=SETTINGS, epochs=15, lr=1e-3, seed=seed_, balanced=True)
        return lambda zt: predict(net, zt).softmax(1)

    out["plain"] = measure(fit_plain, z_aux, s_aux, z_test, s_test, k, seed)
    return out


def run_heads(seed: int, only: list[str] | None) -> list[dict]:
    rows = []
    for name, (z_aux, s_aux, z_test, s_test, k) in feature_sets(seed, dump=False).items():
        if (only and name not in only) or z_aux.ndim != 4:
            continue
        rows.append(head_row(name + " (no mlp, as at UTKFace conv1)", z_aux, s_aux, z_test, s_test, k, seed,
                             {"auto_mlp_max_dim": 0}))
    return rows


def head_row(name: str, z_aux, s_aux, z_test, s_test, k, seed: int, common: dict) -> dict:
    r = head_rows(z_aux.float(), s_aux, z_test.float(), s_test, k, seed, common)
    row = {"bench": "attribute", "features": name, "seed": seed, "n_aux": len(s_aux), "n_test": len(s_test),
           "dim": int(z_aux[0].numel()), "k": k, **r,
           "speedup": round(r["old"]["seconds"] / r["new"]["seconds"], 2),
           "cpu_speedup": round(r["old"]["cpu_seconds"] / r["new"]["cpu_seconds"], 2)}
    print(json.dumps(row), flush=True)
    return row


def table(path: Path) -> str:
    lines = ["| bench | features | seed | n aux / test | dim | old bacc [95% CI] | new bacc [95% CI] "
             "| old s (cpu) | new s (cpu) | old/new wall (cpu) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if r["bench"] == "pca":
            continue
        o, n = r["old"], r["new"]
        lines.append(f"| {r['bench']} | {r['features']} | {r['seed']} | {r['n_aux']} / {r['n_test']} | {r['dim']} | "
                     f"{o['bacc']:.3f} [{o['ci95'][0]:.3f}, {o['ci95'][1]:.3f}] | "
                     f"{n['bacc']:.3f} [{n['ci95'][0]:.3f}, {n['ci95'][1]:.3f}] | {o['seconds']} ({o['cpu_seconds']}) | "
                     f"{n['seconds']} ({n['cpu_seconds']}) | {r['speedup']}x ({r['cpu_speedup']}x) |"
                     + (f" plain CNN {r['plain']['bacc']:.3f} [{r['plain']['ci95'][0]:.3f}, {r['plain']['ci95'][1]:.3f}]"
                        if "plain" in r else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", nargs="?", choices=["linear", "attribute", "pca"], default="linear")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", nargs="*", help="feature sets to run (default: all)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--table", type=Path, help="print the markdown table of a results file and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.table))
        return
    for seed in args.seeds:
        if args.bench == "pca":
            rows = run_pca(seed)
        else:
            rows = (run_linear if args.bench == "linear" else run_heads)(seed, args.only)
        if args.out:
            with args.out.open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
