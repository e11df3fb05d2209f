"""The config schema: pydantic models that forbid unknown keys, non-finite numbers and out-of-range
integers, and check every plugin's parameters against the plugin's own model once, at load time."""
from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from audit.core.registry import PluginParams, PluginParamsError, Registry, UnknownPluginError
from audit.core.training import TrainerSettings
from audit.decision import Decision

TASK_KEYS = ("dataset", "model", "cut_points", "training", "splits", "label", "model_label", "attacker_data")


MAX_INT = 2**31 - 1  # any integer of a config (sizes, counts, seeds); larger ones are typos or overflow later
MAX_EPOCHS = 100_000


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class KeyedError(ValueError):
    """A validation error at a config key (``loc``), raised by model-level checks."""

    def __init__(self, loc: tuple[Any, ...], message: str):
        super().__init__(message)
        self.loc, self.message = tuple(loc), message


def check_numbers(values: dict[str, Any], loc: tuple[Any, ...]) -> None:
    """Every float in ``values`` (nested) finite, every integer within +-MAX_INT; raises :class:`KeyedError`."""
    for key, value in values.items():
        where = (*loc, key)
        if isinstance(value, float) and not math.isfinite(value):
            raise KeyedError(where, f"{value} is not a finite number")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            raise KeyedError(where, f"{value} is out of range (at most {MAX_INT} in size)")
        if isinstance(value, dict):
            check_numbers(value, where)
        elif isinstance(value, (list, tuple)):
            check_numbers({str(i): v for i, v in enumerate(value)}, where)


def _no_repeats(values: list[Any] | None, what: str) -> list[Any] | None:
    repeated = [v for v, n in Counter(values or []).items() if n > 1]
    if repeated:
        raise ValueError(f"{what} {', '.join(map(repr, repeated))} listed more than once")
    return values


class PluginSpec(BaseModel):
    """``{name: NAME, **params}``: a plugin and its (validated) parameters."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def title(self) -> str:
        """``name`` with its parameters, sorted: ``noise(scale=10.0)``; the bare name without any."""
        if not self.params:
            return self.name
        return f"{self.name}(" + ",".join(f"{k}={v}" for k, v in sorted(self.params.items())) + ")"


class TrainingConfig(Strict):
    """Lightning training of the primary task."""

    epochs: int = Field(5, ge=0, le=MAX_EPOCHS,
                        description="0 = no task training: the model is audited as built / loaded (weights)")
    batch_size: int = Field(128, ge=1, le=1 << 20)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    hflip: bool = Field(False, description="random horizontal flips (images)")


class SplitFractions(Strict):
    """Fractions of the dataset for the task model (train), the attacker (aux) and evaluation (test)."""

    train: float = Field(0.5, gt=0)
    aux: float = Field(0.25, gt=0)
    test: float = Field(0.25, gt=0)


class MemoryConfig(Strict):
    """Where large arrays live; never changes results (not part of the config hash)."""

    feature_ram_mb: float = Field(
        256, ge=0,
        description="feature arrays (one cut point and split) larger than this (MB) are memory-mapped "
        "from files under OUT/features instead of held in RAM (256: UTKFace pool1's aux and test splits, "
        "428 MB each, and their releases are mapped; at 512 they held 1.7 GB of the process)",
    )
    keep_features: bool = Field(False, description="keep OUT/features when the run ends (else removed)")
    heap_reuse_mb: int = Field(
        0, ge=0,
        description="inside training loops and the rMLE optimisation, C heap blocks up to this size (MB) are reused "
        "from step to step instead of mapped fresh and zero-filled at every allocation (glibc; audit.core.heap). "
        "0 (default): glibc as it is. 1024 ran UTKFace's conv1 group 1.29x faster with the same records and a "
        "0.5 GB higher peak RSS (benchmarks/RESULTS.md, 'C heap')",
    )


class TaskConfig(Strict):
    dataset: PluginSpec
    model: PluginSpec | None = Field(None, description="required unless the dataset holds saved features (features)")
    cut_points: list[str] = Field(min_length=1)
    training: TrainingConfig = TrainingConfig()
    splits: SplitFractions = SplitFractions()
    label: str | None = Field(None, description="name of this task in reports (default: the dataset name)")
    model_label: str | None = Field(None, description="name of the model in reports (default: the model plugin's name)")
    attacks: list[str] | None = Field(
        None, min_length=1, description="the audit's attacks run on this task, by name (default: all of them)")
    attacker_data: Literal["aux", "train+aux"] = Field(
        "aux", description="what the attacks train on: the aux split (the threat model's auxiliary set) or also "
        "the task-train split (an attacker holding the model's training data: stronger, ~3x the attack time "
        "and memory); evaluation stays on the test split")

    @field_validator("cut_points")
    @classmethod
    def _distinct_cuts(cls, value: list[str]) -> list[str]:
        return _no_repeats(value, "cut point")

    @field_validator("attacks")
    @classmethod
    def _distinct_attacks(cls, value: list[str] | None) -> list[str] | None:
        return _no_repeats(value, "attack")

    @property
    def display_name(self) -> str:
        return self.label or self.dataset.name

    @property
    def model_name(self) -> str:
        """The model's name in reports ("none" for a features dataset audited without a model)."""
        return self.model_label or (self.model.name if self.model is not None else "none")

    @property
    def title(self) -> str:
        """``utkface/small_cnn``: the task and its model as progress lines name them."""
        return f"{self.display_name}/{self.model_name}"


class WandbSettings(Strict):
    """``tracking.wandb``: where and how the audit's W&B run is recorded (see audit.tracking)."""

    project: str = Field("splitaudit", description="W&B project")
    entity: str | None = Field(None, description="W&B user or team (default: the API key's default entity)")
    mode: Literal["online", "offline", "disabled"] = Field(
        "online", description="online needs an API key and the server; offline writes OUT/wandb/ only; "
                              "WANDB_MODE in the environment overrides online/offline")
    tags: list[str] = Field(default_factory=list)
    group: str | None = Field(None, description="groups runs in the W&B UI (e.g. a sweep or a CI pipeline)")
    name: str | None = Field(None, description="run name (default: dataset/model/defense)")


class TrackingConfig(Strict):
    """``tracking:`` experiment trackers; they record results, never change them (not in the config hash)."""

    wandb: WandbSettings | None = Field(None, description="W&B settings; absent = no W&B run")


class AuditConfig(Strict):
    name: str = "audit"
    tasks: list[TaskConfig] = Field(min_length=1)
    defenses: list[PluginSpec] = Field(min_length=1)
    attacks: dict[str, dict[str, Any]] = Field(min_length=1)
    seeds: list[Annotated[int, Field(ge=0, le=MAX_INT)]] = Field(default_factory=lambda: [0], min_length=1)
    n_boot: int = Field(500, ge=50, le=1_000_000, description="bootstrap resamples per confidence interval")
    trainer: TrainerSettings = TrainerSettings()
    cache_dir: Path | None = Field(None, description="trained task models and decoded data (default ~/.cache/splitaudit)")
    tracking: TrackingConfig = TrackingConfig()
    memory: MemoryConfig = MemoryConfig()
    decision: Decision = Field(default_factory=Decision, description="verdict settings and the constraints a "
                               "shippable (cut point, defense) meets (audit.decision; not in the config hash)")
    # the plugins' parameters as validated once, at load time: ("defenses", i) / ("attacks", name) -> Params
    _plugin_params: dict[tuple[str, Any], PluginParams] = PrivateAttr(default_factory=dict)

    def plugin_params(self, *loc: Any) -> PluginParams:
        """The validated parameters of the plugin at ``loc``: ``("tasks", 0, "dataset")``,
        ``("tasks", 0, "model")``, ``("defenses", 1)`` or ``("attacks", "mi")``."""
        return self._plugin_params[loc]

    def defense_params(self, index: int) -> PluginParams:
        """The validated parameters of ``defenses[index]`` (every parameter, defaults filled in)."""
        return self._plugin_params[("defenses", index)]

    def attack_params(self, name: str) -> PluginParams:
        """The validated parameters of attack ``name``."""
        return self._plugin_params[("attacks", name)]

    @field_validator("defenses", mode="before")
    @classmethod
    def _bare_names(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        return _no_repeats(value, "seed")

    @field_validator("attacks", mode="before")
    @classmethod
    def _attack_list(cls, value: Any) -> Any:
        if isinstance(value, list):  # [attribute, {name: mi, ...}] -> {attribute: {}, mi: {...}}
            out = {}
            for v in value:
                entry = {"name": v} if isinstance(v, str) else dict(v) if isinstance(v, dict) else {"name": v}
                name = entry.pop("name", None)
                if not isinstance(name, str):
                    raise ValueError(f"an attack is a name or {{name: NAME, ...}}, got {v!r}")
                if name in out:
                    raise ValueError(f"attack {name!r} listed more than once")
                out[name] = entry
            return out
        return {k: (v or {}) for k, v in value.items()} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _check_plugins(self) -> "AuditConfig":
        from attacks import ATTACKS
        from audit.core.data import DATASETS
        from audit.core.models import MODELS
        from defenses import DEFENSES

        def check(registry: Registry, spec_name: str, params: dict, loc: tuple[Any, ...]) -> None:
            try:
                validated = registry.validate_params(spec_name, params)
            except (UnknownPluginError, PluginParamsError) as err:
                raise KeyedError(loc, str(err)) from None
            given = validated.model_dump(include=validated.model_fields_set)  # defaults may be inf on purpose
            check_numbers(given, loc)
            self._plugin_params[loc] = validated

        for i, task in enumerate(self.tasks):
            check(DATASETS, task.dataset.name, task.dataset.params, ("tasks", i, "dataset"))
            if task.model is not None:
                check(MODELS, task.model.name, task.model.params, ("tasks", i, "model"))
            elif not getattr(DATASETS.get(task.dataset.name), "provides_features", False):
                raise KeyedError(
                    ("tasks", i, "model"), "required (only a dataset of saved features, e.g. "
                    "{name: features, path: dump.npz}, can be audited without a model)"
                )
        for i, spec in enumerate(self.defenses):
            check(DEFENSES, spec.name, spec.params, ("defenses", i))
        for name, params in self.attacks.items():
            check(ATTACKS, name, params, ("attacks", name))
        for i, task in enumerate(self.tasks):
            unknown = [a for a in task.attacks or [] if a not in self.attacks]
            if unknown:
                raise KeyedError(("tasks", i, "attacks"), f"{', '.join(unknown)} not among the audit's attacks "
                                 f"({', '.join(self.attacks)})")
        seen = set()
        for i, spec in enumerate(self.defenses):
            key = spec.title()
            if key in seen:
                raise KeyedError(("defenses", i), f"defense {key} is listed twice")
            seen.add(key)
        return self

    def config_hash(self) -> str:
        """Hash of everything that determines the audit's results."""
        data = self.model_dump(
            mode="json",
            exclude={"cache_dir": True, "tracking": True, "memory": True, "decision": True, "trainer": {"progress_bar"}},
        )
        if not data["trainer"]["channels_last"]:  # the default: folders made before this key still resume
            data["trainer"].pop("channels_last")
        for task in data["tasks"]:  # unset display-only keys are left out, so earlier output folders still resume
            for key in ("model_label", "attacks"):
                if task.get(key) is None:
                    task.pop(key, None)
            if task.get("attacker_data") == "aux":  # the default: folders made before this key still resume
                task.pop("attacker_data")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
