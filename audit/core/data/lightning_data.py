"""Your own data: a LightningDataModule or torch Datasets whose samples carry private labels.

Accepted sources (:class:`TorchData`):

- a ``lightning.LightningDataModule`` (anything with ``train_dataloader``);
- a map-style ``torch.utils.data.Dataset`` (or any iterable of batches);
- a dict of Datasets ``{"train": ..., "aux" or "val": ..., "test": ...}``.

Each sample (or batch) carries the input, the primary label and the private labels, as

- a tuple ``(x, y, s)``: ``s`` a tensor (N,) for one private attribute, (N, P)
  for P of them (columns in the order of ``private``), or a dict name -> (N,);
  or ``(x, y, s1, ..., sP)``;
- a dict ``{input_key: x, primary: y, name: s, ...}`` (default keys ``x`` and ``y``).

Labels are class indices (integers >= 0); the number of classes of a label is
its largest index + 1 unless ``classes`` names them. The data is read once,
in order, into memory (a DataModule's loaders are re-created without
shuffling, with their own ``collate_fn``); random augmentations in its
transforms make the audit noisy: turn them off for the audit.

Splits (``splits``): ``"datamodule"`` uses the source's own parts: its
``train`` split becomes the audit's task-train part (defense fine-tuning, and
task training when asked), ``val`` (or ``aux``) the attacker's auxiliary set,
``test`` the evaluation set. ``"pool"`` reads every part there is and splits
the pooled rows by seed like a built-in dataset (``splits:`` fractions of the
config). ``"auto"`` (default) is ``"datamodule"`` when the source has all
three parts and ``"pool"`` otherwise.

From YAML, subclass :class:`TorchDataset` (implement ``make()``) and register
it under the ``splitaudit.datasets`` entry-point group; from Python, pass the
object to ``audit.Audit(data=...)``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch.utils.data import DataLoader

from audit.core.data import register_dataset
from audit.core.data.base import SPLIT_NAMES, Dataset, LoadedData, tensors_digest
from audit.core.errors import AuditInputError
from audit.core.registry import PluginParams

SplitMode = Literal["auto", "datamodule", "pool"]
_PART_ALIASES = {"train": "train", "aux": "aux", "val": "aux", "validation": "aux", "test": "test"}


@dataclass
class SplitData(LoadedData):
    """LoadedData read from a Python source (``splits``: its own train/aux/test rows, or ``None``)."""


def _labels(t: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(t)
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 1:
        raise AuditInputError(f"label {name!r}: expected one class index per sample, got a batch of shape {tuple(t.shape)}")
    if t.is_floating_point():
        if not bool(torch.isfinite(t).all()) or not bool((t == t.round()).all()):
            raise AuditInputError(f"label {name!r} holds non-integer values; labels are class indices (bucket continuous ones)")
    elif t.dtype == torch.bool:
        pass
    elif not (t.dtype.is_signed or t.dtype == torch.uint8):
        raise AuditInputError(f"label {name!r} has dtype {t.dtype}; expected integer class indices")
    return t.long()


def batch_fields(
    batch: Any, primary: str, private: list[str], input_key: str = "x"
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(x, y, {private name: s}) of one batch; raises naming the expected layout."""
    if isinstance(batch, Mapping):
        missing = [k for k in [input_key, primary, *private] if k not in batch]
        if missing:
            raise AuditInputError(
                f"batch dict has no key(s) {missing}; its keys: {', '.join(map(str, batch))} "
                "(set input_key / primary / private to the keys of the input, the primary label and the private labels)"
            )
        x, y = batch[input_key], batch[primary]
        private_values = {name: batch[name] for name in private}
    elif isinstance(batch, (tuple, list)):
        if len(batch) < 3:
            raise AuditInputError(
                f"batches are {len(batch)}-tuples; an audit needs the private labels too: (x, y, s), "
                "(x, y, s1, ..., sP) or a dict"
            )
        x, y, *rest = batch
        if len(rest) > 1:
            if len(rest) != len(private):
                raise AuditInputError(
                    f"batches carry {len(rest)} private labels after (x, y) but private names {len(private)}: {private}"
                )
            private_values = dict(zip(private, rest))
        elif isinstance(rest[0], Mapping):
            missing = [n for n in private if n not in rest[0]]
            if missing:
                raise AuditInputError(
                    f"private label(s) {missing} not in the batch's dict; it has: {', '.join(map(str, rest[0]))}")
            private_values = {n: rest[0][n] for n in private}
        else:
            s = torch.as_tensor(rest[0])
            columns = 1 if s.ndim == 1 else (s.shape[1] if s.ndim == 2 else -1)
            if columns != len(private):
                raise AuditInputError(
                    f"the private labels s of (x, y, s) have shape {tuple(s.shape)}: {columns if columns > 0 else '?'} "
                    f"attribute(s), but {len(private)} private name(s) were given: {private}"
                )
            private_values = {private[0]: s} if s.ndim == 1 else {n: s[:, i] for i, n in enumerate(private)}
    else:
        raise AuditInputError(f"a batch must be a tuple (x, y, s) or a dict, got {type(batch).__name__}")
    if not isinstance(x, torch.Tensor):
        raise AuditInputError(f"the input of a batch must be a tensor, got {type(x).__name__}")
    return x, _labels(y, primary), {n: _labels(v, n) for n, v in private_values.items()}


def _ordered_loader(source: Any, batch_size: int) -> Any:
    """Batches of ``source`` in order: a DataLoader over a map-style dataset is re-created without
    shuffling (same collate_fn); a Dataset gets a plain DataLoader; anything else is iterated as is."""
    if isinstance(source, DataLoader):
        if hasattr(source.dataset, "__getitem__") and hasattr(source.dataset, "__len__"):
            return DataLoader(source.dataset, batch_size=source.batch_size or batch_size, shuffle=False,
                              collate_fn=source.collate_fn, num_workers=0)
        return source
    if hasattr(source, "__getitem__") and hasattr(source, "__len__"):
        return DataLoader(source, batch_size=batch_size, shuffle=False, num_workers=0)
    return source


def read_all(source: Any, primary: str, private: list[str], input_key: str = "x", batch_size: int = 256):
    """Read every batch of a Dataset / DataLoader / iterable: (x (N, ...), y (N,), {name: (N,)})."""
    xs, ys, ss = [], [], {n: [] for n in private}
    for batch in _ordered_loader(source, batch_size):
        x, y, s = batch_fields(batch, primary, private, input_key)
        if x.shape[0] != y.shape[0] or any(v.shape[0] != x.shape[0] for v in s.values()):
            raise AuditInputError(
                f"a batch holds {x.shape[0]} inputs but {y.shape[0]} primary and "
                f"{[v.shape[0] for v in s.values()]} private labels"
            )
        xs.append(x.detach().cpu())
        ys.append(y)
        for n, v in s.items():
            ss[n].append(v)
    if not xs:
        raise AuditInputError("the data source yielded no batches")
    return torch.cat(xs), torch.cat(ys), {n: torch.cat(v) for n, v in ss.items()}


def _is_datamodule(obj: Any) -> bool:
    return hasattr(obj, "train_dataloader") and callable(obj.train_dataloader)


def _datamodule_parts(dm: Any) -> dict[str, Any]:
    """The loaders a DataModule implements: {"train": ..., "aux": (its val), "test": ...}."""
    try:
        from lightning import LightningDataModule
    except ImportError:  # pragma: no cover - lightning is a dependency
        LightningDataModule = None  # type: ignore[assignment]

    def implemented(method: str) -> bool:
        if not callable(getattr(dm, method, None)):
            return False
        base = getattr(LightningDataModule, method, None) if LightningDataModule else None
        return base is None or getattr(type(dm), method) is not base

    if hasattr(dm, "prepare_data"):
        dm.prepare_data()
    if hasattr(dm, "setup"):
        dm.setup("fit")
        if implemented("test_dataloader"):
            dm.setup("test")
    parts = {}
    for part, method in (("train", "train_dataloader"), ("aux", "val_dataloader"), ("test", "test_dataloader")):
        if implemented(method):
            loader = getattr(dm, method)()
            if isinstance(loader, (list, tuple)):
                if len(loader) != 1:
                    raise AuditInputError(f"{type(dm).__name__}.{method} returns {len(loader)} loaders; the audit reads one")
                loader = loader[0]
            parts[part] = loader
    return parts


def source_parts(source: Any) -> dict[str, Any]:
    """The parts of a data source: {"train"/"aux"/"test": loader or dataset}, or {"all": dataset}."""
    if _is_datamodule(source):
        return _datamodule_parts(source)
    if isinstance(source, Mapping):
        parts = {}
        for key, value in source.items():
            if key not in _PART_ALIASES:
                raise AuditInputError(f"data dict key {key!r}: expected train, aux (or val) and test")
            parts[_PART_ALIASES[key]] = value
        return parts
    return {"all": source}


class TorchData:
    """A LightningDataModule, a torch Dataset or {split: Dataset} as an audit dataset (``load()``).

    private: the private label names (keys of dict batches, or the names of the s columns);
    primary: the primary label's name (its key in dict batches); input_key: the input's key;
    splits: "auto", "datamodule" or "pool" (module docstring); classes: label -> class names.
    """

    def __init__(
        self,
        source: Any,
        private: list[str] | str,
        primary: str = "y",
        input_key: str = "x",
        splits: SplitMode = "auto",
        classes: dict[str, list[str]] | None = None,
        batch_size: int = 256,
    ):
        self.source = source
        self.private = [private] if isinstance(private, str) else list(private)
        if not self.private:
            raise AuditInputError("name the private labels to audit (private=[...])")
        if splits not in ("auto", "datamodule", "pool"):
            raise AuditInputError(f"splits={splits!r}: expected 'auto', 'datamodule' or 'pool'")
        self.primary, self.input_key, self.splits = primary, input_key, splits
        self.classes, self.batch_size = dict(classes or {}), batch_size
        self._loaded: SplitData | None = None

    @property
    def name(self) -> str:
        return type(self.source).__name__

    def load(self, cache_dir: Path | None = None) -> SplitData:
        """Read the source once (later calls return the same data)."""
        if self._loaded is None:
            self._loaded = self._read()
        return self._loaded

    def _read(self) -> SplitData:
        parts = source_parts(self.source)
        own = set(parts) == set(SPLIT_NAMES)
        if self.splits == "datamodule" and not own:
            raise AuditInputError(
                f"splits='datamodule' needs train, val (or aux) and test parts; {self.name} has: "
                f"{', '.join(sorted(parts)) or '(none)'}"
            )
        use_own = own and self.splits != "pool"
        xs, ys, ss, splits, start = [], [], {n: [] for n in self.private}, {}, 0
        for part, loader in parts.items():
            x, y, s = read_all(loader, self.primary, self.private, self.input_key, self.batch_size)
            xs.append(x)
            ys.append(y)
            for n in self.private:
                ss[n].append(s[n])
            splits[part] = torch.arange(start, start + x.shape[0])
            start += x.shape[0]
        shapes = {part: tuple(x.shape[1:]) for part, x in zip(parts, xs)}
        if len(set(shapes.values())) > 1:
            raise AuditInputError(f"inputs of different shapes in the parts of {self.name}: {shapes}")
        labels = {self.primary: torch.cat(ys), **{n: torch.cat(v) for n, v in ss.items()}}
        for name, t in labels.items():
            if bool((t < 0).any()):
                raise AuditInputError(f"label {name!r} holds negative values; labels are class indices >= 0")
        classes = {}
        for name, t in labels.items():
            count = int(t.max()) + 1
            names = self.classes.get(name) or [str(i) for i in range(count)]
            if len(names) < count:
                raise AuditInputError(f"label {name!r} has class index {count - 1} but classes lists {len(names)} names")
            classes[name] = [str(c) for c in names]
        if use_own:
            small = {p: len(idx) for p, idx in splits.items() if len(idx) < 2}
            if small:
                raise AuditInputError(f"parts of {self.name} with fewer than 2 samples: {small}")
        return SplitData(
            x=torch.cat(xs), labels=labels, classes=classes, primary=self.primary, private=self.private,
            meta={"kind": "python", "source": self.name, "own_splits": use_own},
            splits={p: splits[p] for p in SPLIT_NAMES} if use_own else None,
        )

    def fingerprint(self) -> str:
        """A hash of the data as read (inputs, labels, own splits): identifies it in cache keys and cell ids."""
        data = self.load()
        return tensors_digest(data.x, data.labels, data.splits)


class TorchDataset(Dataset):
    """Base class for dataset plugins over a LightningDataModule or torch Dataset: implement ``make()``.

    Register a subclass under the ``splitaudit.datasets`` entry-point group to use it from YAML.
    """

    class Params(PluginParams):
        private: list[str] = Field(min_length=1, description="private label names (dict keys, or the s columns in order)")
        primary: str = Field("y", description="the primary label's name (its key in dict batches)")
        input_key: str = Field("x", description="the input's key in dict batches")
        splits: SplitMode = Field("auto", description="datamodule: its own train/val/test; pool: split by seed")

    def make(self) -> Any:  # pragma: no cover - interface
        """The data source: a LightningDataModule, a torch Dataset or {split: Dataset}."""
        raise NotImplementedError

    def load(self, cache_dir: Path | None) -> SplitData:
        p = self.params
        return TorchData(self.make(), p.private, p.primary, p.input_key, p.splits).load()


@register_dataset("python")
class PythonData(Dataset):
    """Data passed to the Python API (audit.Audit(data=...)); stands in for it in configs and reports."""

    class Params(PluginParams):
        object: str = Field(description="the data source's class (for reports)")
        fingerprint: str = Field(description="hash of the data as read")

    def load(self, cache_dir: Path | None) -> LoadedData:
        raise AuditInputError(
            f"dataset 'python' ({self.params.object}) stands for data given to audit.Audit(data=...) and is only "
            "available in that Python process; to use your data from YAML, register an "
            "audit.core.data.lightning_data.TorchDataset subclass under the 'splitaudit.datasets' entry-point group"
        )
