# %% [markdown]
# # Audit a ResNet-18 fine-tuned on UTKFace, through the Python API
#
# A notebook-style script (run it whole, or cell by cell in an editor that knows `# %%`):
#
#     python docs/example_utkface_resnet18.py --root ../shared/data/utkface/crop_part1
#     python docs/example_utkface_resnet18.py --max-samples 300 --epochs 1   # a quick look
#
# The cloud's task is gender; race is private. The data comes as a
# LightningDataModule of your own (dict batches), the model is a plain
# torchvision ResNet-18 (ImageNet weights from a local file if you have one:
# `--weights resnet18.pth`; nothing is downloaded), fine-tuned on the
# datamodule's train split by the audit (`training=`), then cut after `layer2`
# and `layer3`: what would the cloud learn about race from those features,
# with and without noise?
from __future__ import annotations

import argparse
import logging
import random
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from audit import Audit, TorchData
from audit.core.data.utkface import RACES, parse_name

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "utkface" / "crop_part1"


# %% [markdown]
# ## 1. Your data: a LightningDataModule with dict batches
# Each sample carries the image, the primary label (gender) and the private one (race).


class UTKFaceFiles(Dataset):
    """UTKFace images as {"image": (3, S, S) in [0, 1], "gender": 0/1, "race": 0..4}."""

    def __init__(self, files: list[Path], size: int):
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        path = self.files[i]
        _, gender, race = parse_name(path.name)
        with Image.open(path) as img:
            img = img.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
        image = torchvision.transforms.functional.to_tensor(img)
        return {"image": image, "gender": gender, "race": race}


class UTKFaceDataModule(L.LightningDataModule):
    """A seeded 50/25/25 train/val/test split of a UTKFace folder (malformed file names skipped)."""

    def __init__(self, root: Path, size: int = 64, max_samples: int | None = None, seed: int = 0):
        super().__init__()
        self.root, self.size, self.max_samples, self.seed = Path(root), size, max_samples, seed

    def setup(self, stage: str | None = None) -> None:
        files = []
        for path in sorted(self.root.glob("*.jpg")):
            if isinstance(parse_name(path.name), str):
                warnings.warn(f"skipping malformed UTKFace file name {path.name}", stacklevel=2)
            else:
                files.append(path)
        random.Random(self.seed).shuffle(files)
        files = files[: self.max_samples]
        half, three_quarters = len(files) // 2, 3 * len(files) // 4
        self.parts = {"train": files[:half], "val": files[half:three_quarters], "test": files[three_quarters:]}

    def _loader(self, part: str, shuffle: bool = False) -> DataLoader:
        return DataLoader(UTKFaceFiles(self.parts[part], self.size), batch_size=64, shuffle=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)  # the audit reads it in order anyway

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


# %% [markdown]
# ## 2. Your model: a torchvision ResNet-18 with a 2-class head


def resnet18(weights: Path | None) -> torch.nn.Module:
    model = torchvision.models.resnet18()
    if weights is not None:  # e.g. ImageNet weights you keep locally; never pickled code
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.fc = torch.nn.Linear(model.fc.in_features, 2)  # gender
    return model


# %% [markdown]
# ## 3. The audit: fine-tune on the train split, cut, defend, attack


def main(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="UTKFace folder (default: %(default)s)")
    p.add_argument("--max-samples", type=int, default=None, help="a seeded subset (default: every image)")
    p.add_argument("--size", type=int, default=64, help="image size (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs (default: %(default)s)")
    p.add_argument("--attack-epochs", type=int, default=15, help="epochs of the attribute attack")
    p.add_argument("--n-boot", type=int, default=500, help="bootstrap resamples per CI (default: %(default)s)")
    p.add_argument("--weights", type=Path, default=None, help="a ResNet-18 state_dict to start from")
    p.add_argument("--out", default="utkface_resnet18_audit", help="output folder (a rerun resumes it)")
    args = p.parse_args(argv)

    data = TorchData(UTKFaceDataModule(args.root, args.size, args.max_samples),
                     private=["race"], primary="gender", input_key="image",
                     classes={"gender": ["male", "female"], "race": RACES})
    report = Audit(
        model=resnet18(args.weights), model_name="resnet18", data=data, data_name="utkface",
        cut_points=["layer2", "layer3"],
        training={"epochs": args.epochs, "lr": 1e-3, "hflip": True},  # fine-tunes a copy on the train split
        defenses=["none", {"name": "noise", "scale": 1.0, "finetune_epochs": 1}],
        attacks={"attribute": {"epochs": args.attack_epochs}, "attribute_linear": {"cs": 4}}, n_boot=args.n_boot,
    ).run(out=args.out)

    # %% [markdown]
    # ## 4. Read the report: leakage per cut point and defense, next to the utility
    task = report["tasks"][0]
    print(f"gender accuracy of the fine-tuned model: {task['primary_accuracy']:.3f} "
          f"({task['n']['test']} test images, seed {task['seed']})")
    for r in report["results"]:
        if r["metric"] == "balanced_accuracy":
            lo, hi = r["ci95"]
            print(f"{r['cut_point']:7s} {r['defense']:6s} {r['attack']:17s} race balanced accuracy "
                  f"{r['value']:.3f} [{lo:.3f}, {hi:.3f}] (chance {r['chance']:.2f}); "
                  f"gender accuracy through the defense {r['utility']['primary_accuracy']:.3f}")
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(0 if main() else 1)
