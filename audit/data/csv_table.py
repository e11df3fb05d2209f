"""Tabular data from a CSV file: one primary label column, private label columns, numeric features.

Label values are taken as strings and indexed in sorted order. Feature columns
must be numbers; a missing or non-numeric value is an error naming the row and
the column. Features are standardised (zero mean, unit variance per column,
computed without labels).
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch
from pydantic import Field

from audit.data import register_dataset
from audit.data.base import Dataset, LoadedData
from audit.errors import AuditInputError
from audit.registry import PluginParams


@register_dataset("csv")
class CSVTable(Dataset):
    """A CSV file: label column (primary), private columns, numeric feature columns."""

    class Params(PluginParams):
        path: Path
        label: str = Field(description="column of the primary label")
        private: list[str] = Field(min_length=1, description="columns of the private labels")
        features: list[str] | None = Field(None, description="feature columns (default: all others)")
        delimiter: str = ","

    def load(self, cache_dir: Path) -> LoadedData:
        p = self.params
        if not p.path.is_file():
            raise AuditInputError(f"CSV file {str(p.path)!r} does not exist")
        with open(p.path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter=p.delimiter)
            header = reader.fieldnames or []
            rows = list(reader)
        label_cols = [p.label, *p.private]
        feature_cols = p.features if p.features is not None else [c for c in header if c not in label_cols]
        for col in [*label_cols, *feature_cols]:
            if col not in header:
                raise AuditInputError(f"{p.path}: no column {col!r}; columns are: {', '.join(header)}")
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
            names = sorted(set(raw))
            index = {v: k for k, v in enumerate(names)}
            labels[col] = torch.tensor([index[v] for v in raw])
            classes[col] = names
        return LoadedData(
            x=x, labels=labels, classes=classes, primary=p.label, private=list(p.private),
            meta={"kind": "tabular", "features": feature_cols},
        )
