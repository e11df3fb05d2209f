"""The Python API; the CLI uses it too.

Audit your own model and data::

    from audit import Audit
    report = Audit(model=my_module, cut_points=["layer2", "layer3"], data=my_datamodule,
                   private=["race"], defenses=["none", {"name": "noise", "scale": 1.0}],
                   attacks=["attribute"]).run(out="audit_out")
    report["results"]          # the records of report.json
    report.to_frame()          # a pandas DataFrame (when pandas is installed)

or run a config (a YAML file, a mapping or an :class:`AuditConfig`)::

    report = Audit("configs/utkface.yaml").run("audit_out")

``model`` is any ``torch.nn.Module`` mapping inputs to primary-task logits,
cut at named submodules (:mod:`audit.core.models.fx_split`) and audited as given
(no task training) unless ``training`` asks for (fine-)tuning; or a
registered model (``"small_cnn"``, ``{"name": "torchvision", "arch":
"resnet50", "weights": "r50.pt"}``). ``data`` is a LightningDataModule, a
torch Dataset or ``{"train", "val", "test"}`` Datasets whose samples carry
private labels (:mod:`audit.core.data.lightning_data`), a pandas DataFrame
(``primary=`` / ``private=`` name its label columns, ``table=`` its encoding:
:mod:`audit.core.data.table`), or a registered dataset
(``{"name": "utkface", "root": ...}``, ``{"name": "features", "path":
"dump.npz"}`` with ``model=None``). Python objects appear in the config and
the report as the placeholders ``python`` (with their class and a hash of
their weights / data), so an output folder resumes only for the same model and data.

Progress is logged as by the CLI (a tqdm bar on a terminal or in a notebook, one line per
finished cell otherwise) to the ``splitaudit`` logger; ``quiet=True`` keeps only warnings,
``verbose=True`` adds debug output. A logger set up by its user (handlers of its own) is
left as it is unless ``quiet`` or ``verbose`` is given.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from audit.config import AuditConfig, build_config, load_config
from audit.core.errors import AuditInputError
from audit.runner import AuditRun, RunCallback

if TYPE_CHECKING:  # pragma: no cover
    from audit.executors import Executor

# the label attacks of the example configs (configs/*.yaml) and the benchmarks: the strongest member of the
# attribute family decides, and a linear probe sometimes reads more than the MLP head (issue 21: 0.414 vs 0.361)
DEFAULT_ATTACKS = ("attribute", "attribute_linear")


@contextlib.contextmanager
def api_logging(quiet: bool | None, verbose: bool | None):
    """The ``splitaudit`` logger during an API call, restored afterwards. Left as it is when it has handlers
    of its own (set up by the CLI or the user) and neither ``quiet`` nor ``verbose`` is given; otherwise at
    INFO (WARNING with ``quiet``, DEBUG with ``verbose``), writing to stderr as the CLI does, or, when the
    root logger has handlers (``logging.basicConfig``, pytest), through those."""
    from audit.cli import setup_logging

    logger = logging.getLogger("splitaudit")
    if logger.handlers and quiet is None and verbose is None:
        yield
        return
    saved = (list(logger.handlers), logger.level, logger.propagate)
    if logger.handlers or logging.getLogger().handlers:
        logger.setLevel(logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO))
    else:
        setup_logging(bool(quiet), bool(verbose))
    try:
        yield
    finally:
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]


def default_callbacks(config: AuditConfig, callbacks: Iterable[RunCallback] | None = None) -> list[RunCallback]:
    """``callbacks`` (default: a progress bar / progress lines with time left), plus the W&B
    tracker when ``config.tracking`` asks for one."""
    from audit.progress import Progress
    from audit.tracking import WandbTracker, tracker_for

    out = [Progress()] if callbacks is None else list(callbacks)
    tracker = tracker_for(config)
    if tracker is not None and not any(isinstance(cb, WandbTracker) for cb in out):
        out.append(tracker)
    return out


class Report(dict):
    """The audit report (the content of report.json) with conveniences; ``report["results"]`` is the records."""

    @property
    def records(self) -> list[dict[str, Any]]:
        return self["results"]

    def to_frame(self):
        """The records as a pandas DataFrame: the flat form of results.csv and the W&B table
        (:func:`audit.core.records.flat_columns`: ``ci95_low`` / ``ci95_high``, ``utility.*``, ``cost.*``;
        dicts and lists as JSON text)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Report.to_frame() needs pandas: pip install pandas") from None
        from audit.core.records import flat_columns, flat_row

        columns = flat_columns(self["results"])
        return pd.DataFrame([flat_row(r, columns) for r in self["results"]], columns=columns)


def _spec(value: Any, what: str) -> dict[str, Any]:
    """A registered plugin given as "name" or {"name": ..., **params}."""
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, Mapping) and "name" in value:
        return dict(value)
    raise AuditInputError(f"{what}: expected a registered name or {{'name': ..., **params}}, got {type(value).__name__}")


class Audit:
    """An audit: a config, or a model, cut points and data given as Python objects (module docstring).

    Keyword arguments (all but model/data/cut_points are optional):
    cut_points: submodule names (or the cut points of a registered model);
    private / primary: the private label names / the primary label's name of Python data;
    defenses / attacks: as in YAML (["none", {"name": "noise", "scale": 1.0}], ["attribute"] or {"attribute": {...}});
    training: task (fine-)tuning, e.g. {"epochs": 2, "lr": 1e-4} or 2 (default for a module: 0 = as given);
    attacks default to :data:`DEFAULT_ATTACKS` (the attribute MLP head and the linear probe);
    table: encoding options of a DataFrame (:class:`audit.core.data.table.TableParams`: categorical,
    encoding, unknown, missing, missing_indicator, split_column, classes);
    splits: "datamodule" / "pool" for Python data, or fractions {"train": .5, "aux": .25, "test": .25};
    seeds, name, n_boot, trainer: as in YAML; model_name / data_name: names in the report;
    cache_dir: trained task models (default $SPLITAUDIT_CACHE or ~/.cache/splitaudit);
    quiet / verbose: progress output (module docstring).
    """

    def __init__(
        self,
        config: AuditConfig | Mapping[str, Any] | str | Path | None = None,
        *,
        model: Any = None,
        data: Any = None,
        cut_points: Iterable[str] | None = None,
        private: list[str] | str | None = None,
        primary: str | None = None,
        defenses: Iterable[Any] = ("none",),
        attacks: Iterable[Any] | Mapping[str, Any] = DEFAULT_ATTACKS,
        training: Mapping[str, Any] | int | None = None,
        splits: str | Mapping[str, float] | None = None,
        seeds: Iterable[int] = (0,),
        name: str = "audit",
        n_boot: int | None = None,
        trainer: Mapping[str, Any] | None = None,
        model_name: str | None = None,
        data_name: str | None = None,
        cache_dir: str | Path | None = None,
        table: Mapping[str, Any] | None = None,
        quiet: bool | None = None,
        verbose: bool | None = None,
    ):
        self.cache_dir = cache_dir
        self.quiet, self.verbose = quiet, verbose
        self.objects: dict[int, dict[str, Any]] = {}
        self._config: AuditConfig | None = None
        if config is not None:
            if model is not None or data is not None or cut_points is not None:
                raise AuditInputError("give either a config or model= / data= / cut_points=, not both")
            if isinstance(config, AuditConfig):
                self._config = config
            elif isinstance(config, (str, Path)):
                self._config = load_config(config)
            else:
                self._config = build_config(dict(config), "<dict>")
            return
        if data is None or not cut_points:
            raise AuditInputError("an audit needs data= and cut_points= (and model=, unless data is a feature dump)")
        self._raw: dict[str, Any] = {
            "name": name, "seeds": list(seeds), "cut_points": list(cut_points), "defenses": list(defenses),
            "attacks": dict(attacks) if isinstance(attacks, Mapping) else list(attacks),
        }
        if n_boot is not None:
            self._raw["n_boot"] = n_boot
        if trainer is not None:
            self._raw["trainer"] = dict(trainer)
        if data_name is not None:
            self._raw["label"] = data_name
        if model_name is not None:
            self._raw["model_label"] = model_name
        if isinstance(splits, Mapping):
            self._raw["splits"] = dict(splits)
        self._data = self._data_source(data, private, primary, splits, table)
        self._model = model
        if isinstance(training, int):
            training = {"epochs": training}
        if training is None and model is not None and not isinstance(model, (str, Mapping)):
            training = {"epochs": 0}  # a user's module is audited as trained
        if training is not None:
            self._raw["training"] = dict(training)

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def _data_source(data: Any, private, primary, splits, table=None) -> Any:
        from audit.core.data.lightning_data import TorchData
        from audit.core.data.table import FrameTable, TableParams

        if isinstance(data, str) or (isinstance(data, Mapping) and "name" in data):
            if private is not None or primary is not None:
                raise AuditInputError("for a registered dataset give private / primary inside its spec, e.g. "
                                      "data={'name': 'utkface', 'root': ..., 'private': ['race']}")
            return _spec(data, "data")
        if isinstance(data, (TorchData, FrameTable)):
            return data
        if private is None:
            raise AuditInputError("name the private labels of your data: Audit(..., private=['race'])")
        if hasattr(data, "columns") and hasattr(data, "iloc"):  # a pandas DataFrame
            if primary is None:
                raise AuditInputError("name the primary label column of your DataFrame: Audit(..., primary='income')")
            private = [private] if isinstance(private, str) else list(private)
            try:
                options = TableParams(label=primary, private=private, **dict(table or {}))
            except ValueError as err:
                raise AuditInputError(f"table=: {err}") from None
            return FrameTable(data, options)
        if table is not None:
            raise AuditInputError("table= is for a pandas DataFrame given as data=")
        mode = splits if isinstance(splits, str) else ("pool" if isinstance(splits, Mapping) else "auto")
        return TorchData(data, private, primary or "y", splits=mode)

    @property
    def config(self) -> AuditConfig:
        """The audit's validated config (Python data is read here, once, to fingerprint it)."""
        if self._config is None:
            self._config = self._build_config()
        return self._config

    def _build_config(self) -> AuditConfig:
        from audit.core.data import audit_data
        from audit.core.data.lightning_data import TorchData
        from audit.core.data.table import FrameTable
        from audit.core.models.fx_split import ModuleInstance, check_logits, module_fingerprint

        raw = dict(self._raw)
        given: dict[str, Any] = {}
        if isinstance(self._data, (TorchData, FrameTable)):
            loaded = self._data.load()
            raw["dataset"] = {"name": "python", "object": self._data.name, "fingerprint": self._data.fingerprint()}
            raw.setdefault("label", self._data.name)
            given["dataset"] = self._data
        else:
            raw["dataset"] = self._data
            loaded = None
        model = self._model
        if model is None:
            pass
        elif isinstance(model, (str, Mapping)):
            raw["model"] = _spec(model, "model")
        else:
            from torch import nn

            if not isinstance(model, nn.Module):
                raise AuditInputError(f"model: expected a torch.nn.Module or a registered model, got {type(model).__name__}")
            label = raw.get("model_label") or type(model).__name__
            raw["model"] = {"name": "python", "object": f"{type(model).__module__}.{type(model).__qualname__}",
                            "fingerprint": module_fingerprint(model)}
            raw["model_label"] = label
            given["model"] = ModuleInstance(model, label)
        config = build_config(raw, "<Audit(...)>")
        if loaded is not None and "model" in given:  # inputs as the audit sees them (a table's encoded on its train split)
            data = audit_data("", loaded, config.tasks[0].splits.model_dump(), config.seeds[0])
            check_logits(model, data.loaded.x[:2], len(loaded.classes[loaded.primary]), raw["model_label"])
        if given:
            self.objects = {0: given}
        return config

    # --------------------------------------------------------------------- run
    def run(
        self,
        out: str | Path = "audit_out",
        callbacks: Iterable[RunCallback] | None = None,
        executor: "Executor | None" = None,
        shard: tuple[int, int] | None = None,
        resume: bool | None = None,
    ) -> Report:
        """Run (or resume) the audit into ``out``; returns the report (as in report.json, next to
        results.csv and report.html). ``callbacks``: progress output (default: :class:`audit.progress.Progress`);
        the W&B tracker is added when the config's ``tracking`` asks for it. ``executor``:
        :func:`audit.executors.make_executor` (default: in this process; Python objects given as
        ``model=`` / ``data=`` must be picklable for worker processes); ``shard``: (i, n) runs
        shard i of n; ``resume``: see :class:`audit.core.store.ResultStore`."""
        with api_logging(self.quiet, self.verbose):
            config = self.config
            callbacks = default_callbacks(config, callbacks)
            return self._run(config, out, callbacks, executor, shard, resume)

    def _run(self, config, out, callbacks, executor, shard, resume) -> Report:
        try:
            return Report(AuditRun(config, out, callbacks, self.cache_dir, objects=self.objects,
                                   executor=executor, shard=shard, resume=resume).run())
        finally:
            for cb in callbacks:
                close = getattr(cb, "close", None)
                if callable(close):
                    close()

    def dump_features(self, path: str | Path, seed: int | None = None, inputs: bool = False) -> Path:
        """Save the edge features of every sample at every cut point of the (first) task, with its labels
        (and inputs), as a feature dump (.npz or .pt) for ``{"name": "features", "path": ...}``.

        The task model is trained (or loaded from the cache) exactly as :meth:`run` would; rows are in the
        dataset's order and the dump holds the split this audit used (its row indices, and the seed), so an
        audit of the dump sees the same train/aux/test rows and reproduces this audit's figures.
        """
        from audit.core.data.feature_dump import extract_features, save_feature_dump

        with api_logging(self.quiet, self.verbose):
            config = self.config
            seed = config.seeds[0] if seed is None else seed
            task = config.tasks[0]
            if task.model is None:
                raise AuditInputError("dump_features needs a model; this audit has none")
            run = AuditRun(config, Path("."), (), self.cache_dir, objects=self.objects)
            state = run.prepare_task(0, seed)
        data, loaded = state.data, state.data.loaded
        features: dict[str, Any] = {}
        for part, rows in data.splits.items():  # split by split, in the runner's batches: the same values
            for cut, values in extract_features(state.model, loaded.x[rows], task.cut_points).items():
                features.setdefault(cut, values.new_zeros((len(loaded.x), *values.shape[1:])))[rows] = values
        meta = {
            "primary": loaded.primary, "private": loaded.private, "classes": loaded.classes,
            "dataset": task.display_name, "model": task.model_name, "seed": seed, "task_key": state.key,
            "split": data.split_info,
        }
        return save_feature_dump(path, features, loaded.labels, x=loaded.x if inputs else None, meta=meta,
                                 splits=data.splits)
