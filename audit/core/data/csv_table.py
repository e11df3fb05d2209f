"""Tabular data from a CSV file: one primary label column, private label columns, numeric features.

Label values are taken as strings and indexed in sorted order, or in the order
of ``classes`` when it declares a column's values (then any other value is an
error naming the row). Feature columns must be numbers; a missing or
non-numeric value is an error naming the row and the column. A row with more
or fewer fields than the header, a duplicate column name, a label with a
single value or more than ``max_classes`` values, text that is not UTF-8 and
malformed CSV are errors naming the problem. Features are standardised (zero
mean, unit variance per column, computed without labels).
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch
from pydantic import Field

from audit.core.data import register_dataset
from audit.core.data.base import Dataset, LoadedData
from audit.core.errors import AuditInputError
from audit.core.registry import PluginParams


@register_dataset("csv")
class CSVTable(Dataset):
    """A CSV file: label column (primary), private columns, numeric feature columns."""

    class Params(PluginParams):
        path: Path
        label: str = Field(description="column of the primary label")
        private: list[str] = Field(min_length=1, description="columns of the private labels")
        features: list[str] | None = Field(None, description="feature columns (default: all others)")
        delimiter: str = ","
        classes: dict[str, list[str]] | None = Field(
            None, description="declared values of label columns (column -> values); other values are errors"
        )
        max_classes: int = Field(100, ge=2, description="most distinct values a label column may have")

    def _read(self) -> tuple[list[str], list[dict[str, str]]]:
        p = self.params
        try:
            with open(p.path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh, delimiter=p.delimiter)
                header = reader.fieldnames or []
                rows = []
                for row in reader:
                    if None in row:
                        raise AuditInputError(
                            f"{p.path}: line {reader.line_num} has more fields than the header ({len(header)})")
                    if any(v is None for v in row.values()):
                        raise AuditInputError(
                            f"{p.path}: line {reader.line_num} has fewer fields than the header ({len(header)})")
                    rows.append(row)
        except UnicodeDecodeError as err:
            raise AuditInputError(f"{p.path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        except csv.Error as err:
            raise AuditInputError(f"{p.path}: malformed CSV near line {reader.line_num}: {err}") from None
        duplicates = sorted({c for c in header if header.count(c) > 1})
        if duplicates:
            raise AuditInputError(f"{p.path}: duplicate column names: {', '.join(duplicates)}")
        return header, rows

    def load(self, cache_dir: Path) -> LoadedData:
        p = self.params
        if not p.path.is_file():
            raise AuditInputError(f"CSV file {str(p.path)!r} does not exist")
        header, rows = self._read()
        label_cols = [p.label, *p.private]
        feature_cols = p.features if p.features is not None else [c for c in header if c not in label_cols]
        for col in [*label_cols, *feature_cols]:
            if col not in header:
                raise AuditInputError(f"{p.path}: no column {col!r}; columns are: {', '.join(header)}")
        for col in (p.classes or {}):
            if col not in label_cols:
                raise AuditInputError(f"{p.path}: classes are declared for {col!r}, which is not a label column")
        if not feature_cols:
            raise AuditInputError(f"{p.path}: no feature columns left besides the labels")
        if not rows:
            raise AuditInputError(f"{p.path}: no data rows")
        values = torch.empty(len(rows), len(feature_cols), dtype=torch.float64)
        for i, row in enumerate(rows):
            for j, col in enumerate(feature_cols):
                cell = (row.get(col) or "").strip()
                try:
                    values[i, j] = float(cell)
                except ValueError:
                    what = "missing value" if cell == "" else f"non-numeric value {cell!r}"
                    raise AuditInputError(f"{p.path}: row {i + 2}, column {col!r}: {what}") from None
            for col in label_cols:
                if (row.get(col) or "").strip() == "":
                    raise AuditInputError(f"{p.path}: row {i + 2}, label column {col!r}: missing value")
        if not torch.isfinite(values).all():
            i, j = (~torch.isfinite(values)).nonzero()[0].tolist()
            raise AuditInputError(f"{p.path}: row {i + 2}, column {feature_cols[j]!r}: value is NaN or infinite")
        std = values.std(dim=0).clamp_min(1e-12)
        x = ((values - values.mean(dim=0)) / std).float()
        labels, classes = {}, {}
        for col in label_cols:
            raw = [row[col].strip() for row in rows]
            names = self._classes(col, raw)
            index = {v: k for k, v in enumerate(names)}
            labels[col] = torch.tensor([index[v] for v in raw])
            classes[col] = names
        return LoadedData(
            x=x, labels=labels, classes=classes, primary=p.label, private=list(p.private),
            meta={"kind": "tabular", "features": feature_cols},
        )

    def _classes(self, col: str, raw: list[str]) -> list[str]:
        """The class names of label column ``col`` (declared, or its sorted distinct values)."""
        p = self.params
        declared = (p.classes or {}).get(col)
        if declared is not None:
            allowed = set(declared)
            for i, v in enumerate(raw):
                if v not in allowed:
                    raise AuditInputError(
                        f"{p.path}: row {i + 2}, label column {col!r}: unknown label value {v!r} "
                        f"(declared classes: {', '.join(declared)})"
                    )
            return list(declared)
        names = sorted(set(raw))
        if len(names) < 2:
            raise AuditInputError(f"{p.path}: label column {col!r} has a single value ({names[0]!r}); nothing to learn")
        if len(names) > p.max_classes:
            raise AuditInputError(
                f"{p.path}: label column {col!r} has {len(names)} distinct values (max_classes={p.max_classes}); "
                "is it a continuous column? Bucket it, or raise max_classes"
            )
        return names
