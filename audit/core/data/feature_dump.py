"""Saved split features: audit a feature dump with no model (``dataset: {name: features, path: ...}``).

A dump holds, for N samples in one fixed order:

=====================  ==========================================================
``features/<cut>``     (N, ...) float: the edge output at cut point ``<cut>``; one or more
``labels/<name>``      (N,) integer class indices: the private labels (and the primary label)
``x`` (optional)       (N, ...) float: the inputs (needed by inversion attacks)
``splits/<name>``      (optional) int64 row indices of the split the dumped audit used: ``train``,
                       ``aux`` and ``test``, disjoint (written by ``Audit.dump_features``)
``meta`` (optional)    JSON: ``primary`` (label name), ``private`` (names), ``classes``
                       (name -> class names), ``split`` (how the dumped audit's split was made:
                       ``{"splits": "given"}`` or the fractions and ``split_seed``), free keys
                       such as ``model``, ``dataset``, ``seed``
=====================  ==========================================================

as a ``.npz`` file (those keys; ``meta`` a 0-d string array; read with
``allow_pickle=False``) or a ``.pt`` file (a dict ``{"features": {cut: tensor},
"labels": {name: tensor}, "x": tensor, "meta": dict}``; read with
``torch.load(weights_only=True)``). :func:`save_feature_dump` writes both.

A dump with ``splits/*`` is audited on those rows (``splits: given`` in the report), so it reproduces
the dumped audit whatever its seed; ``splits: seed`` (a parameter of the ``features`` dataset), or a
dump without them, splits the N rows into train/aux/test by the audit's seed like any dataset.
Without a model (no ``model:`` in the config) the attacks that need only
features and labels run (attribute inference, mutual information,
re-identification among released features); the learned inversion decoder runs
when ``x`` is in the dump; white-box inversion also needs the edge model
(``model:`` given, audited as loaded: its weights file, never trained). Without
a model, utility is reported as not available and the cost holds only the
bytes sent; defenses that need the edge or cloud model fail their cells with
a message saying so (``none`` always works; noise with ``finetune_epochs: 0``
too).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from audit.core.data import register_dataset
from audit.core.data.base import SPLIT_NAMES, Dataset, LoadedData
from audit.core.errors import AuditInputError
from audit.core.registry import PluginParams
from audit.core.store import atomic_write

NO_PRIMARY = "none"  # the primary label of a dump that has none: one class, nothing uses it


@dataclass
class FeatureData(LoadedData):
    """LoadedData plus the saved features: cut point -> (N, ...) float tensor (row i = sample i)."""

    features: dict[str, torch.Tensor] = field(default_factory=dict)


def _tensor(value: Any, name: str, path: Path) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise AuditInputError(f"{path}: {name} has dtype {value.dtype}; expected numbers")
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    raise AuditInputError(f"{path}: {name} is a {type(value).__name__}, expected an array")


def _read_npz(path: Path) -> dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as err:  # object arrays need pickle: refused
        raise AuditInputError(f"{path}: cannot read without pickle ({err}); save plain numeric arrays") from None
    except Exception as err:  # noqa: BLE001
        raise AuditInputError(f"{path} is not a readable .npz file: {type(err).__name__}: {err}") from None
    dump: dict[str, Any] = {"features": {}, "labels": {}, "splits": {}}
    for key, value in arrays.items():
        group, _, name = key.partition("/")
        if group in ("features", "labels", "splits") and name:
            dump[group][name] = value
        elif key == "x":
            dump["x"] = value
        elif key == "meta":
            try:
                dump["meta"] = json.loads(str(value))
            except json.JSONDecodeError as err:
                raise AuditInputError(f"{path}: 'meta' is not valid JSON: {err}") from None
        else:
            raise AuditInputError(
                f"{path}: unexpected array {key!r}; a dump holds features/<cut>, labels/<name>, splits/<name>, x and meta"
            )
    return dump


def _read_pt(path: Path) -> dict[str, Any]:
    try:
        dump = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - never fall back to unpickling
        raise AuditInputError(f"cannot load {path} with torch.load(weights_only=True): {err}") from None
    if not isinstance(dump, dict):
        raise AuditInputError(f"{path} holds a {type(dump).__name__}; expected a dict with 'features' and 'labels'")
    unknown = set(dump) - {"features", "labels", "splits", "x", "meta"}
    if unknown:
        raise AuditInputError(
            f"{path}: unexpected keys {sorted(unknown)}; a dump holds features, labels, splits, x and meta")
    for group in ("features", "labels", "splits"):
        if not isinstance(dump.get(group, {}), dict):
            raise AuditInputError(f"{path}: {group!r} must be a dict of name -> tensor")
    return dump


def read_feature_dump(path: str | Path) -> dict[str, Any]:
    """The raw dump at ``path`` (.npz or .pt): {"features": {...}, "labels": {...}, "x"?, "meta"?}."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise AuditInputError(f"feature dump {str(path)!r} does not exist")
    readers = {".npz": _read_npz, ".pt": _read_pt, ".pth": _read_pt}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise AuditInputError(f"feature dump {path}: unknown format {path.suffix!r}; use .npz or .pt")
    return reader(path)


def _first_nonfinite(t: torch.Tensor) -> tuple[int, int]:
    """(number of rows holding NaN/inf, first such row)."""
    bad = (~torch.isfinite(t.reshape(t.shape[0], -1))).any(dim=1).nonzero().flatten()
    return len(bad), (int(bad[0]) if len(bad) else -1)


def check_feature_dump(
    dump: dict[str, Any], path: str | Path = "<dump>", primary: str | None = None, private: list[str] | None = None,
) -> FeatureData:
    """Validate a raw dump and make it a :class:`FeatureData`; raises AuditInputError naming the problem
    (mismatched lengths, missing or malformed labels, NaN/inf values, unusable meta)."""
    path = Path(path)
    meta = dump.get("meta") or {}
    if not isinstance(meta, dict):
        raise AuditInputError(f"{path}: 'meta' must be a mapping, got {type(meta).__name__}")
    features = {k: _tensor(v, f"features/{k}", path) for k, v in (dump.get("features") or {}).items()}
    labels = {k: _tensor(v, f"labels/{k}", path) for k, v in (dump.get("labels") or {}).items()}
    x = _tensor(dump["x"], "x", path) if dump.get("x") is not None else None
    if not features:
        raise AuditInputError(f"{path}: no features; a dump holds one array per cut point (features/<cut>)")
    if not labels:
        raise AuditInputError(f"{path}: no labels; a dump holds the private labels (labels/<name>)")
    arrays = {**{f"features/{k}": v for k, v in features.items()}, **{f"labels/{k}": v for k, v in labels.items()}}
    if x is not None:
        arrays["x"] = x
    lengths = {name: (int(t.shape[0]) if t.ndim else 0) for name, t in arrays.items()}
    if len(set(lengths.values())) > 1:
        listing = ", ".join(f"{name}: {n}" for name, n in lengths.items())
        raise AuditInputError(f"{path}: mismatched lengths (every array needs one row per sample): {listing}")
    n = next(iter(lengths.values()))
    if n < 2:
        raise AuditInputError(f"{path}: {n} samples; an audit needs more")
    for name, t in arrays.items():
        if name.startswith("labels/"):
            continue
        if not t.is_floating_point():
            t = arrays[name] = t.float()
        count, first = _first_nonfinite(t)
        if count:
            raise AuditInputError(f"{path}: {name} holds NaN/inf values in {count} samples (first: index {first})")
    features = {k: arrays[f"features/{k}"] for k in features}
    x = arrays.get("x")
    for name, t in labels.items():
        if t.ndim != 1:
            raise AuditInputError(f"{path}: labels/{name} has shape {tuple(t.shape)}; expected ({n},) class indices")
        if t.is_floating_point():
            if not bool(torch.isfinite(t).all()) or not bool((t == t.round()).all()):
                raise AuditInputError(f"{path}: labels/{name} holds non-integer or NaN values; expected class indices")
        labels[name] = t = t.long()
        if bool((t < 0).any()):
            raise AuditInputError(
                f"{path}: labels/{name} holds negative values (first at index {int((t < 0).nonzero()[0])}); "
                "missing labels are not allowed: drop those samples before dumping"
            )
    splits = _check_splits(dump.get("splits") or {}, n, path)
    primary = primary if primary is not None else meta.get("primary")
    if private is None:
        private = meta.get("private") or [k for k in labels if k != primary]
    missing = [name for name in [*([primary] if primary else []), *private] if name not in labels]
    if missing:
        raise AuditInputError(
            f"{path}: missing labels {missing}; the dump has labels: {', '.join(sorted(labels))}"
        )
    if primary is None:
        primary = NO_PRIMARY
        labels[NO_PRIMARY] = torch.zeros(n, dtype=torch.long)
    given_classes = meta.get("classes") or {}
    classes = {}
    for name, t in labels.items():
        count = int(t.max()) + 1
        names = given_classes.get(name) or [str(i) for i in range(count)]
        if len(names) < count:
            raise AuditInputError(f"{path}: labels/{name} has class index {count - 1} but meta lists {len(names)} classes")
        classes[name] = [str(c) for c in names]
    return FeatureData(
        x=x if x is not None else torch.empty(n, 0),
        labels=labels, classes=classes, primary=primary, private=list(private),
        meta={
            "kind": "features", "has_inputs": x is not None,
            **{k: v for k, v in meta.items() if k not in ("classes",)},
            # a dump of a splitaudit task replays that task's defense and attack seeds
            "seed_key": meta.get("task_key") if isinstance(meta.get("task_key"), str) else None,
            "split_origin": meta.get("split") if splits else None,
        },
        features=features, splits=splits,
    )


def _check_splits(raw: dict[str, Any], n: int, path: Path) -> dict[str, torch.Tensor] | None:
    """The dump's split (None when it has none): train/aux/test int64 indices into its N rows, disjoint."""
    if not raw:
        return None
    if set(raw) != set(SPLIT_NAMES):
        raise AuditInputError(f"{path}: splits {sorted(raw)}; a dump's split has exactly {', '.join(SPLIT_NAMES)}")
    splits, seen = {}, torch.zeros(n, dtype=torch.bool)
    for name in SPLIT_NAMES:
        t = _tensor(raw[name], f"splits/{name}", path)
        if t.ndim != 1 or t.is_floating_point() or len(t) < 2:
            raise AuditInputError(f"{path}: splits/{name} must be at least 2 integer row indices, "
                                  f"got shape {tuple(t.shape)} of {t.dtype}")
        t = t.long()
        if bool(((t < 0) | (t >= n)).any()):
            raise AuditInputError(f"{path}: splits/{name} holds row indices outside 0..{n - 1}")
        if bool(seen[t].any()) or len(t.unique()) != len(t):
            raise AuditInputError(f"{path}: splits/{name} repeats rows or shares rows with another split")
        seen[t] = True
        splits[name] = t
    return splits


def save_feature_dump(
    path: str | Path,
    features: dict[str, torch.Tensor],
    labels: dict[str, torch.Tensor],
    x: torch.Tensor | None = None,
    meta: dict[str, Any] | None = None,
    splits: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a feature dump (.npz or .pt by the suffix of ``path``) after checking it as a reader would.

    features: cut point -> (N, ...) floats; labels: name -> (N,) class indices; x: (N, ...) inputs;
    meta: JSON-serialisable (``primary``, ``private``, ``classes``, ``split``, anything else is kept as a note);
    splits: train/aux/test -> int64 row indices (the split to audit the dump on).
    """
    path = Path(path)
    meta = dict(meta or {})
    splits = dict(splits or {})
    dump = {"features": dict(features), "labels": dict(labels), "splits": splits, "x": x, "meta": meta}
    check_feature_dump(dump, path)
    as_np = lambda t: t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)  # noqa: E731
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".pt", ".pth"):
        raise AuditInputError(f"feature dump {path}: unknown format {path.suffix!r}; use .npz or .pt")
    with atomic_write(path) as tmp:
        if suffix == ".npz":
            arrays = {f"features/{k}": as_np(v) for k, v in features.items()}
            arrays.update({f"labels/{k}": as_np(v) for k, v in labels.items()})
            arrays.update({f"splits/{k}": as_np(v) for k, v in splits.items()})
            if x is not None:
                arrays["x"] = as_np(x)
            arrays["meta"] = np.array(json.dumps(meta))
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
        else:
            tensors = lambda d: {k: torch.as_tensor(v).detach().cpu() for k, v in d.items()}  # noqa: E731
            out = {"features": tensors(features), "labels": tensors(labels), "meta": json.loads(json.dumps(meta))}
            if splits:
                out["splits"] = tensors(splits)
            if x is not None:
                out["x"] = torch.as_tensor(x).detach().cpu()
            torch.save(out, tmp)
    return path


@torch.no_grad()
def extract_features(model: nn.Module, x: torch.Tensor, cut_points: list[str], batch_size: int = 256) -> dict[str, torch.Tensor]:
    """edge(x) at every cut point of a split model (anything with ``split(cut) -> (edge, cloud)``), in batches."""
    out = {}
    for cut in cut_points:
        edge, _ = model.split(cut)
        was_training = edge.training
        edge.eval()
        out[cut] = torch.cat([edge(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])
        edge.train(was_training)
    return out


@register_dataset("features")
class Features(Dataset):
    """Saved split features (.npz / .pt): per-cut-point arrays plus private labels; audited without a model."""

    provides_features: ClassVar[bool] = True
    key_files = ("path",)

    class Params(PluginParams):
        path: Path = Field(description="the dump (.npz read without pickle, .pt read with weights_only)")
        primary: str | None = Field(None, description="primary label name (default: meta's, else none)")
        private: list[str] | None = Field(
            None, description="private labels to attack (default: meta's, else all but the primary)")
        splits: Literal["dump", "seed"] = Field(
            "dump", description="dump: the dumped audit's split when the dump holds one; seed: split by the audit's seed")

    def load(self, cache_dir: Path | None) -> FeatureData:
        p = self.params
        data = check_feature_dump(read_feature_dump(p.path), p.path, p.primary, p.private)
        if p.splits == "seed":
            data.splits = None
            data.meta["split_origin"] = None
        return data


# --------------------------------------------------------------- the runner's model-free seam
class NoModel(nn.Module):
    """Stands in for the edge or cloud part when saved features are audited without a model."""

    def __init__(self, part: str, cut: str):
        super().__init__()
        self.part, self.cut = part, cut
        # an empty parameter, so that fine-tuning gets as far as calling forward (and its message)
        self.none = nn.Parameter(torch.zeros(0))

    def forward(self, *args: Any) -> torch.Tensor:
        raise AuditInputError(
            f"no {self.part} model at {self.cut!r}: saved features are audited without a model, and this step "
            f"needs the {self.part} part (give model: ... with a weights file to enable it)"
        )


def model_free_split(cut: str) -> tuple[nn.Module, nn.Module]:
    return NoModel("edge", cut), NoModel("cloud", cut)


def precomputed_features(loaded: LoadedData, cut_points: list[str], with_model: bool) -> dict[str, torch.Tensor] | None:
    """The saved features of a features dataset (None for any other), checked against the task's cut points."""
    features = getattr(loaded, "features", None)
    if features is None:
        return None
    missing = [c for c in cut_points if c not in features]
    if missing:
        raise AuditInputError(f"cut points {missing} are not in the feature dump; it holds: {', '.join(features)}")
    if with_model and not loaded.meta.get("has_inputs"):
        raise AuditInputError("a features dataset audited with a model needs the inputs (x) in the dump")
    return features


def model_free_summary(task: Any, seed: int, key: str, data: Any) -> dict[str, Any]:
    """The task summary of a features dataset audited without a model."""
    loaded = data.loaded
    return {
        "dataset": task.display_name, "model": task.model_name, "seed": seed,
        "primary": data.primary, "private": data.private,
        "classes": {name: loaded.classes[name] for name in [data.primary, *data.private]},
        "n": {name: len(idx) for name, idx in data.splits.items()}, **data.split_info,
        "primary_accuracy": None, "primary_accuracy_ci95": None, "full_flops": None,
        "cut_points": task.cut_points, "task_key": key,
        "note": "saved features audited without a model: utility and edge cost not available",
        "replays_task": loaded.meta.get("seed_key"),  # the dumped task whose defense / attack seeds are reused
    }


def model_free_measures(defense: Any, z_test: torch.Tensor) -> tuple[dict[str, Any], dict[str, Any]]:
    """(utility, cost) of a group without a model: nothing to measure but the bytes sent."""
    utility = {"primary_accuracy": None, "available": False, "n_eval": int(z_test.shape[0])}
    cost = {
        "edge_flops": None, "edge_flops_fraction": None, "bytes_sent": defense.bytes_per_sample(z_test),
        "edge_latency_ms": None, "cloud_latency_ms": None, "rounds": defense.rounds,
    }
    return utility, cost


__all__ = [
    "FeatureData", "Features", "check_feature_dump", "extract_features", "read_feature_dump",
    "save_feature_dump",
]
