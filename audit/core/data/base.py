"""What every dataset yields: inputs, a primary label, private labels, and seeded splits."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from audit.core.errors import AuditInputError
from audit.core.file_keys import KeyedByFiles
from audit.core.registry import PluginParams

SPLIT_NAMES = ("train", "aux", "test")


def tensors_digest(x: torch.Tensor, labels: dict[str, torch.Tensor], splits: dict[str, torch.Tensor] | None) -> str:
    """SHA-256 (hex, 16 characters) of inputs ``x``, ``labels`` and ``splits``: each tensor's name, shape,
    dtype and bytes."""
    h = hashlib.sha256()
    tensors = {"x": x, **{f"label/{k}": v for k, v in sorted(labels.items())}}
    tensors.update({f"split/{k}": v for k, v in sorted((splits or {}).items())})
    for key, t in tensors.items():
        t = t.contiguous()
        h.update(f"{key}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


@dataclass
class LoadedData:
    """A dataset as loaded, before splitting.

    x: (N, C, H, W) float images in [0, 1] (or any range for synthetic data),
       or (N, D) float tabular features.
    labels: label name -> (N,) int64 class indices; holds the primary and the
       private labels (and possibly more the user did not select).
    classes: label name -> class names (index i is class i).
    splits: the data's own train/aux/test row indices (int64), or None: split by seed.
    """

    x: torch.Tensor
    labels: dict[str, torch.Tensor]
    classes: dict[str, list[str]]
    primary: str
    private: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, torch.Tensor] | None = None

    def fingerprint(self, rows: int = 512) -> str:
        """:func:`tensors_digest` of what was loaded: every label, the given splits and ``rows`` evenly spaced
        input rows (not all of them: UTKFace's are 337 MB). Two loads of the same parameters that differ here
        saw other data (images added to a folder, a file replaced)."""
        n = self.x.shape[0]
        picked = torch.linspace(0, n - 1, min(rows, n)).round().long().unique()
        return tensors_digest(self.x[picked], self.labels, self.splits)

    def fitted(self, train: torch.Tensor) -> "LoadedData":
        """The data ready for an audit once the train split's rows (``train``, int64 indices) are known;
        data whose inputs are encoded with train-split statistics (tables) override this."""
        return self

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        if n == 0:
            raise AuditInputError("the dataset is empty (0 samples)")
        if not torch.isfinite(self.x).all():
            bad = (~torch.isfinite(self.x.reshape(n, -1))).any(dim=1).nonzero().flatten()
            raise AuditInputError(
                f"the dataset's inputs hold NaN/inf values in {len(bad)} samples (first: index {int(bad[0])})"
            )
        wanted = [self.primary, *self.private]
        for name in wanted:
            if name not in self.labels:
                raise AuditInputError(
                    f"unknown label {name!r}; this dataset has labels: {', '.join(sorted(self.labels))}"
                )
        if self.primary in self.private:
            raise AuditInputError(f"label {self.primary!r} is both the primary label and a private one")
        if not self.private:
            raise AuditInputError("no private label selected: an audit needs at least one")
        for name, t in self.labels.items():
            if t.shape != (n,):
                raise AuditInputError(f"label {name!r} has shape {tuple(t.shape)}, expected ({n},)")


@dataclass
class Part:
    """One split of the data: inputs and labels (rows aligned)."""

    x: torch.Tensor
    y: torch.Tensor
    private: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass
class AuditData:
    """A loaded dataset with its seeded train/aux/test split.

    train: the cloud task model's training data (and defense fine-tuning);
    aux:   the attacker's auxiliary labelled set; test: evaluation of both.
    """

    name: str
    loaded: LoadedData
    splits: dict[str, torch.Tensor]  # split name -> int64 row indices
    # the split used, for reports: {"splits": "given"} or {"splits": {fractions}, "split_seed": seed}
    split_info: dict[str, Any] = field(default_factory=dict)

    @property
    def primary(self) -> str:
        return self.loaded.primary

    @property
    def private(self) -> list[str]:
        return self.loaded.private

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.loaded.x.shape[1:])

    def num_classes(self, label: str) -> int:
        return len(self.loaded.classes[label])

    def part(self, *splits: str) -> Part:
        """The rows of ``splits`` (one or more names, rows in that order)."""
        idx = torch.cat([self.splits[s] for s in splits]) if len(splits) > 1 else self.splits[splits[0]]
        labels = self.loaded.labels
        return Part(
            x=self.loaded.x[idx],
            y=labels[self.primary][idx],
            private={name: labels[name][idx] for name in self.private},
        )


def split_indices(n: int, fractions: dict[str, float], seed: int) -> dict[str, torch.Tensor]:
    """Disjoint random index sets of sizes proportional to ``fractions`` (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    total = sum(fractions.values())
    out, start = {}, 0
    names = list(fractions)
    for i, name in enumerate(names):
        stop = n if i == len(names) - 1 else start + int(round(n * fractions[name] / total))
        out[name] = perm[start:stop].sort().values
        start = stop
    for name, idx in out.items():
        if len(idx) < 2:
            raise AuditInputError(
                f"split {name!r} has {len(idx)} samples out of {n}; use more data or a larger fraction"
            )
    return out


def audit_data(name: str, loaded: LoadedData, fractions: dict[str, float], seed: int) -> AuditData:
    """``loaded`` split for an audit: its own split when it brings one ("given"), else ``fractions``
    drawn with ``seed``; then fitted on its train split (:meth:`LoadedData.fitted`)."""
    if loaded.splits is not None:
        splits, info = loaded.splits, {"splits": "given"}
        if loaded.meta.get("split_origin"):  # e.g. a feature dump's: how the dumped audit drew it
            info["split_origin"] = loaded.meta["split_origin"]
    else:
        splits = split_indices(loaded.x.shape[0], fractions, seed)
        info = {"splits": dict(fractions), "split_seed": seed}
    return AuditData(name, loaded.fitted(splits["train"]), splits, info)


class Dataset(KeyedByFiles):
    """Base class of dataset plugins: ``load(context)`` returns a :class:`LoadedData`; ``key_files``: a data
    file enters the task key by its contents (:class:`audit.core.file_keys.KeyedByFiles`)."""

    name: ClassVar[str]
    # bumped when the rows a dataset yields change for the same parameters (e.g. a new encoding), so that
    # task models cached and cells committed before are not reused: part of the task key when not 0
    data_version: ClassVar[int] = 0

    class Params(PluginParams):
        pass

    @classmethod
    def input_numel(cls, params: PluginParams) -> int | None:
        """Elements of one input sample as the validated ``params`` alone say (UTKFace at image_size 64:
        3 x 64 x 64), read before any data is: whether a run's C heap gets huge pages
        (:func:`audit.core.heap.huge_pages_pay_off`). None where only loading tells (tables, saved
        features, user data)."""
        return None

    def __init__(self, params: PluginParams):
        self.params = params

    def load(self, cache_dir: Path) -> LoadedData:  # pragma: no cover - interface
        raise NotImplementedError
