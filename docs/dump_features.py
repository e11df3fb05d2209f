"""Dump the split features of an existing model, for an audit with no model.

Your model stays where it is (a production service, another team's box): run
this next to it, ship the dump, and audit it anywhere:

    python docs/dump_features.py --out dump.npz              # demo: a ResNet-18 on random images
    splitaudit run dump_audit.yaml                           # dataset: {name: features, path: dump.npz}

Adapt the two marked functions to your model and data. The dump holds, per
sample and in one fixed order, the output of each cut-point submodule
(``features/<cut>``), the private labels (``labels/<name>``; class indices),
optionally the primary label and the inputs (``x``: needed only by inversion
attacks), and a JSON ``meta`` naming the primary and private labels. The
writer checks what a reader checks (equal lengths, labels present, no NaN/inf).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torchvision

from audit.core.data.feature_dump import extract_features, save_feature_dump
from audit.core.models.fx_split import GraphSplitModel


def my_model() -> torch.nn.Module:
    """ADAPT: your trained model (any nn.Module returning logits)."""
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=2).eval()


def my_data(n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ADAPT: your inputs (N, ...) and labels {name: (N,) class indices}, in the same order."""
    g = torch.Generator().manual_seed(0)
    race = torch.randint(0, 5, (n,), generator=g)
    x = torch.rand(n, 3, 32, 32, generator=g)
    x[:, :, :8, :8] += race[:, None, None, None] / 4  # a private attribute the inputs reveal
    return x, {"gender": torch.randint(0, 2, (n,), generator=g), "race": race}


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description="Dump split features for a model-free audit.")
    p.add_argument("--out", type=Path, default=Path("dump.npz"), help=".npz or .pt (default: %(default)s)")
    p.add_argument("--cut-points", nargs="+", default=["layer2", "layer3"], help="submodule names")
    p.add_argument("-n", type=int, default=600, help="samples (demo data)")
    p.add_argument("--with-inputs", action="store_true", help="also save the inputs (for inversion attacks)")
    args = p.parse_args(argv)

    model = GraphSplitModel(my_model())  # cut at named submodules; cloud(edge(x)) == model(x)
    x, labels = my_data(args.n)
    features = extract_features(model, x, args.cut_points)  # {cut: (N, ...)}, eval mode, batched
    meta = {"primary": "gender", "private": ["race"], "model": "resnet18",
            "classes": {"gender": ["male", "female"], "race": ["white", "black", "asian", "indian", "others"]}}
    path = save_feature_dump(args.out, features, labels, x=x if args.with_inputs else None, meta=meta)
    print(f"wrote {path}: {', '.join(f'{c} {tuple(f.shape)}' for c, f in features.items())}, {args.n} samples")
    return path


if __name__ == "__main__":
    main()
