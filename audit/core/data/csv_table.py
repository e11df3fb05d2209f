"""Tabular data from a CSV file: a primary label column, private label columns, feature columns.

Cells are read as text. Categorical and numeric feature columns, missing values, label columns given
as text and a given split (``split_column``) follow the rules of :mod:`audit.core.data.table`: the
encoding (categories, medians, means and stds) is learned on the audit's train split and applied alike
to train, aux and test. A row with more or fewer fields than the header, a duplicate column name, a
label with a single value or more than ``max_classes`` values, text that is not UTF-8 and malformed
CSV are errors naming the problem (rows are named by their line number in the file).
"""
from __future__ import annotations

import csv
from pathlib import Path

from pydantic import Field

from audit.core.data import register_dataset
from audit.core.data.base import Dataset
from audit.core.data.table import TableData, TableParams, table_data
from audit.core.errors import AuditInputError


@register_dataset("csv")
class CSVTable(Dataset):
    """A CSV file: label column (primary), private columns, categorical and numeric feature columns."""

    data_version = 1  # issue 21: categorical columns encoded, numeric ones standardised on the train split
    key_files = ("path",)

    class Params(TableParams):
        path: Path = Field(description="the CSV file (UTF-8, a header row)")
        delimiter: str = ","

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

    def load(self, cache_dir: Path | None) -> TableData:
        p = self.params
        if not p.path.is_file():
            raise AuditInputError(f"CSV file {str(p.path)!r} does not exist")
        header, rows = self._read()
        columns = {col: [row[col] for row in rows] for col in header}
        return table_data(columns, p, str(p.path), first_row=2, kind="tabular")
