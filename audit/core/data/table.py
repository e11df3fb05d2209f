"""Tables (a CSV file, a pandas DataFrame): label columns and feature columns encoded with train-split statistics.

The rules, in the order they apply:

- missing: an empty cell, a value listed in ``missing`` (default ``""``, ``?``, ``NA``, ``NaN``; compared after
  stripping spaces) or a DataFrame's NA;
- kind: a feature column is categorical when ``categorical`` lists it, or (``categorical`` not given) when one
  of its non-missing values is not a number; every other feature column is numeric (with ``categorical``
  given, a non-number there is an error naming the row, the column and the value);
- numeric: a missing value becomes the train split's median; the column is standardised with the train
  split's mean and std (a constant column is only centred); with ``missing_indicator`` each numeric column
  that has missing values in the train split gains a 0/1 column ``<name>=(missing)`` after it;
- categorical: missing is a category of its own, ``(missing)``; the categories are the train split's
  values (sorted); a value the train split lacks is an error naming its row (``unknown: error``) or falls in
  an ``(other)`` category (``unknown: other``, which adds that category whether or not it occurs);
  ``encoding: onehot`` makes a 0/1 column ``<name>=<category>`` per category, ``ordinal`` one column of the
  category's index, standardised like a numeric column;
- labels (the primary and private columns): values as text, indexed in sorted order (numerically when
  they are all integers) or in the order ``classes`` declares; classes are read from every row, a
  missing label is an error;
- split: with ``split_column`` its values (``train``, ``aux`` / ``val`` / ``validation``, ``test``) are the
  audit's split ("given"); otherwise the audit splits the rows by seed.

The encoding (kinds, statistics, categories) is learned once the train split is known
(:meth:`TableData.fitted`) and applied alike to every row; it is kept in ``meta["encoding"]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from audit.core.data.base import LoadedData
from audit.core.errors import AuditInputError
from audit.core.registry import PluginParams

MISSING, OTHER = "(missing)", "(other)"
SPLIT_VALUES = {"train": "train", "aux": "aux", "val": "aux", "validation": "aux", "test": "test"}


class TableParams(PluginParams):
    """How a table's columns are read and encoded (module docstring)."""

    label: str = Field(description="column of the primary label")
    private: list[str] = Field(min_length=1, description="columns of the private labels")
    features: list[str] | None = Field(None, description="feature columns (default: all but labels and split)")
    categorical: list[str] | None = Field(
        None, description="categorical feature columns (default: those holding a non-number); the others must be numbers")
    encoding: Literal["onehot", "ordinal"] = Field("onehot", description="how categorical columns become numbers")
    unknown: Literal["error", "other"] = Field(
        "error", description="a category the train split lacks: an error, or the '(other)' category")
    missing: list[str] = Field(default_factory=lambda: ["", "?", "NA", "NaN"], description="cell texts read as missing")
    missing_indicator: bool = Field(True, description="a 0/1 column per numeric column with missing train values")
    split_column: str | None = Field(None, description="column naming each row's split: train, aux (or val), test")
    classes: dict[str, list[str]] | None = Field(
        None, description="declared values of label columns (column -> values); other values are errors")
    max_classes: int = Field(100, ge=2, description="most distinct values a label column may have")
    max_categories: int = Field(1000, ge=2, description="most categories a categorical feature column may have")


@dataclass
class Column:
    """A feature column: ``numbers`` (N,) float64 with NaN for missing, or ``texts`` (None for missing)."""

    name: str
    numbers: np.ndarray | None = None
    texts: list[str | None] | None = None


@dataclass
class TableData(LoadedData):
    """A table before encoding: ``x`` is (N, 0) until :meth:`fitted` encodes ``columns`` on the train split.

    source / first_row: how errors name a row (``f"{source}: row {i + first_row}"``: a CSV's line number).
    """

    columns: list[Column] = field(default_factory=list)
    options: TableParams | None = None
    source: str = "table"
    first_row: int = 0

    def fitted(self, train: torch.Tensor) -> LoadedData:
        x, names, encoding = encode(self.columns, train.numpy(), self.options, self.where)
        return LoadedData(
            x=torch.from_numpy(x).float(), labels=self.labels, classes=self.classes, primary=self.primary,
            private=self.private, splits=self.splits,
            meta={**self.meta, "features": names, "encoding": encoding},
        )

    def where(self, i: int) -> str:
        return row_name(self.source, self.first_row, i)


def row_name(source: str, first_row: int, i: int) -> str:
    """How errors name row ``i`` (0-based) of a table: ``"data.csv: row 5"``."""
    return f"{source}: row {i + first_row}"


def _is_missing(value: Any, missing: set[str]) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return isinstance(value, str) and value.strip() in missing


def _number(value: Any) -> float | None:
    """``value`` as a float, or None when it is not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def read_column(name: str, raw: list[Any], p: TableParams, where) -> Column:
    """One feature column from its raw cells (texts, numbers, None): numeric or categorical (module rules)."""
    missing = set(p.missing)
    cells = [None if _is_missing(v, missing) else v for v in raw]
    declared = p.categorical is not None
    if not (declared and name in p.categorical):
        numbers = np.full(len(cells), np.nan)
        for i, v in enumerate(cells):
            if v is None:
                continue
            number = _number(v)
            if number is None:
                if declared:
                    raise AuditInputError(f"{where(i)}, column {name!r}: non-numeric value {v!r} "
                                          "(list the column under categorical to encode it as categories)")
                break
            if not math.isfinite(number):
                raise AuditInputError(f"{where(i)}, column {name!r}: value {v!r} is not finite")
            numbers[i] = number
        else:
            return Column(name, numbers=numbers)
    return Column(name, texts=[None if v is None else str(v).strip() for v in cells])


def _standardise(values: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, float, float]:
    mean, std = float(values[train].mean()), float(values[train].std())
    return (values - mean) / (std if std > 1e-12 else 1.0), mean, std


def encode(columns: list[Column], train: np.ndarray, p: TableParams, where) -> tuple[np.ndarray, list[str], list[dict]]:
    """(x (N, D) float64, the D column names, the encoding per feature column as JSON) learned on rows ``train``."""
    blocks, names, encoding = [], [], []
    for col in columns:
        if col.numbers is not None:
            known = col.numbers[train][~np.isnan(col.numbers[train])]
            if known.size == 0:
                raise AuditInputError(f"column {col.name!r}: every value of the train split is missing")
            median = float(np.median(known))
            missing = np.isnan(col.numbers)
            values, mean, std = _standardise(np.where(missing, median, col.numbers), train)
            blocks.append(values[:, None])
            names.append(col.name)
            indicator = p.missing_indicator and bool(missing[train].any())
            if indicator:
                blocks.append(missing[:, None].astype(float))
                names.append(f"{col.name}={MISSING}")
            encoding.append({"column": col.name, "kind": "numeric", "median": median, "mean": mean, "std": std,
                             "missing_indicator": indicator})
            continue
        texts = [MISSING if v is None else v for v in col.texts]
        categories = sorted({texts[i] for i in train})
        if len(categories) > p.max_categories:
            raise AuditInputError(f"column {col.name!r} has {len(categories)} categories in the train split "
                                  f"(max_categories={p.max_categories}); is it an identifier? Leave it out of features")
        if p.unknown == "other":
            categories.append(OTHER)
        index = {c: k for k, c in enumerate(categories)}
        codes = np.empty(len(texts), dtype=np.int64)
        for i, v in enumerate(texts):
            k = index.get(v)
            if k is None:
                if p.unknown == "error":
                    shown = ", ".join(categories[:10]) + (", ..." if len(categories) > 10 else "")
                    raise AuditInputError(
                        f"{where(i)}, column {col.name!r}: category {v!r} is not in the train split ({shown}); "
                        "set unknown: other to map such values to an '(other)' category")
                k = index[OTHER]
            codes[i] = k
        if p.encoding == "onehot":
            blocks.append(np.eye(len(categories))[codes])
            names.extend(f"{col.name}={c}" for c in categories)
        else:
            values, _, _ = _standardise(codes.astype(float), train)
            blocks.append(values[:, None])
            names.append(col.name)
        encoding.append({"column": col.name, "kind": "categorical", "encoding": p.encoding, "categories": categories})
    return np.concatenate(blocks, axis=1), names, encoding


def label_classes(col: str, raw: list[str], p: TableParams, where) -> list[str]:
    """The class names of label column ``col``: declared, or its distinct values sorted (numerically if integers)."""
    declared = (p.classes or {}).get(col)
    if declared is not None:
        allowed = set(declared)
        for i, v in enumerate(raw):
            if v not in allowed:
                raise AuditInputError(f"{where(i)}, label column {col!r}: unknown label value {v!r} "
                                      f"(declared classes: {', '.join(declared)})")
        return list(declared)
    names = sorted(set(raw))
    if all(v.lstrip("-").isdigit() for v in names):
        names.sort(key=int)
    if len(names) < 2:
        raise AuditInputError(f"label column {col!r} has a single value ({names[0]!r}); nothing to learn")
    if len(names) > p.max_classes:
        raise AuditInputError(
            f"label column {col!r} has {len(names)} distinct values (max_classes={p.max_classes}); "
            "is it a continuous column? Bucket it, or raise max_classes"
        )
    return names


def _text(value: Any) -> str:
    """A label cell as text (an integer-valued float as an integer: a DataFrame's 1.0 is class "1")."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def table_data(columns: dict[str, list[Any]], p: TableParams, source: str, first_row: int, kind: str) -> TableData:
    """A :class:`TableData` from raw columns (name -> cells, rows aligned); raises naming the problem.
    Errors name row i as ``f"{source}: row {i + first_row}"``."""
    header = list(columns)
    n = len(columns[header[0]]) if header else 0
    where = partial(row_name, source, first_row)
    label_cols = [p.label, *p.private]
    extra = [p.split_column] if p.split_column else []
    feature_cols = p.features if p.features is not None else [c for c in header if c not in label_cols + extra]
    for col in [*label_cols, *extra, *feature_cols]:
        if col not in columns:
            raise AuditInputError(f"{source}: no column {col!r}; columns are: {', '.join(map(str, header))}")
    overlap = [c for c in feature_cols if c in label_cols + extra]
    if overlap:
        raise AuditInputError(f"{source}: columns {overlap} are labels (or the split) and cannot also be features")
    for col in (p.classes or {}):
        if col not in label_cols:
            raise AuditInputError(f"{source}: classes are declared for {col!r}, which is not a label column")
    unknown = [c for c in p.categorical or [] if c not in feature_cols]
    if unknown:
        raise AuditInputError(f"{source}: categorical columns {unknown} are not feature columns")
    if not feature_cols:
        raise AuditInputError(f"{source}: no feature columns left besides the labels")
    if n == 0:
        raise AuditInputError(f"{source}: no data rows")
    missing = set(p.missing)
    labels, classes = {}, {}
    for col in label_cols:
        raw = columns[col]
        for i, v in enumerate(raw):
            if _is_missing(v, missing):
                raise AuditInputError(f"{where(i)}, label column {col!r}: missing value")
        texts = [_text(v) for v in raw]
        names = label_classes(col, texts, p, where)
        index = {v: k for k, v in enumerate(names)}
        labels[col] = torch.tensor([index[v] for v in texts])
        classes[col] = names
    splits = _given_split(columns[p.split_column], p.split_column, where) if p.split_column else None
    return TableData(
        x=torch.empty(n, 0), labels=labels, classes=classes, primary=p.label, private=list(p.private),
        meta={"kind": kind}, splits=splits,
        columns=[read_column(c, list(columns[c]), p, where) for c in feature_cols],
        options=p, source=source, first_row=first_row,
    )


def _given_split(raw: list[Any], col: str, where) -> dict[str, torch.Tensor]:
    parts: dict[str, list[int]] = {"train": [], "aux": [], "test": []}
    for i, v in enumerate(raw):
        part = SPLIT_VALUES.get(str(v).strip().lower())
        if part is None:
            raise AuditInputError(f"{where(i)}, split column {col!r}: value {v!r}; expected train, aux (or val) or test")
        parts[part].append(i)
    small = {k: len(v) for k, v in parts.items() if len(v) < 2}
    if small:
        raise AuditInputError(f"split column {col!r}: splits with fewer than 2 rows: {small}")
    return {k: torch.tensor(v, dtype=torch.int64) for k, v in parts.items()}


class FrameTable:
    """A pandas DataFrame as an audit dataset (``audit.Audit(data=frame, primary=..., private=[...])``):
    its columns as a CSV's (module rules); rows are named by their position (0-based)."""

    name = "DataFrame"

    def __init__(self, frame: Any, options: TableParams):
        self.frame, self.options = frame, options

    def load(self, cache_dir: Any = None) -> TableData:
        frame = self.frame
        duplicates = sorted({str(c) for c in frame.columns if list(frame.columns).count(c) > 1})
        if duplicates:
            raise AuditInputError(f"DataFrame: duplicate column names: {', '.join(duplicates)}")
        columns = {}
        for col in frame.columns:
            series = frame[col]
            columns[str(col)] = [None if na else v for v, na in zip(series.tolist(), series.isna().tolist())]
        return table_data(columns, self.options, "DataFrame", first_row=0, kind="tabular")

    def fingerprint(self) -> str:
        """A hash of the frame's columns and values and of the encoding options."""
        import hashlib

        import pandas as pd

        h = hashlib.sha256(self.options.model_dump_json().encode())
        h.update(repr([(str(c), str(t)) for c, t in self.frame.dtypes.items()]).encode())
        h.update(pd.util.hash_pandas_object(self.frame, index=False).to_numpy().tobytes())
        return h.hexdigest()[:16]
