"""Tables: categorical, numeric and missing values encoded on the train split (from a CSV and a DataFrame),
clear errors, and audits that find a planted categorical private attribute."""
import math

import pandas as pd
import pytest
import torch

from audit import Audit
from audit.core.data import DATASETS, audit_data
from audit.core.data.adult_like import write_adult_like
from audit.core.errors import AuditInputError
from audit.core.registry import PluginParamsError

# rows 2-5 (file lines) train, 6-7 aux, 8-9 test; num: a missing value in train; cat: "?" missing, "c" unseen
SMALL = """num,cat,split,y,s
1,a,train,<=50K,10
2,b,train,>50K,2
3,a,train,<=50K,2
,?,train,>50K,10
4,b,aux,<=50K,2
5,a,aux,>50K,10
6,b,test,<=50K,2
7,c,test,>50K,10
"""


def small(tmp_path, text=SMALL, **params):
    path = tmp_path / "small.csv"
    path.write_text(text)
    ds = DATASETS.create("csv", path=path, label="y", private=["s"], split_column="split", **params)
    return ds.load(None)


def fit(loaded):
    return audit_data("t", loaded, {}, 0)


def test_numeric_missing_and_categories_follow_the_train_split(tmp_path):
    data = fit(small(tmp_path, unknown="other"))
    assert {k: v.tolist() for k, v in data.splits.items()} == {"train": [0, 1, 2, 3], "aux": [4, 5], "test": [6, 7]}
    assert data.split_info == {"splits": "given"}
    names = data.loaded.meta["features"]
    assert names == ["num", "num=(missing)", "cat=(missing)", "cat=a", "cat=b", "cat=(other)"]
    x = data.loaded.x.double()
    # num: the missing train value is the train median (2); train values 1, 2, 3, 2: mean 2, std sqrt(1/2)
    std = math.sqrt(0.5)
    assert x[:, 0].tolist() == pytest.approx([(v - 2) / std for v in (1, 2, 3, 2, 4, 5, 6, 7)], abs=1e-6)
    assert x[:, 1].tolist() == [0, 0, 0, 1, 0, 0, 0, 0]
    assert x[:, 2:].tolist() == [[0, 1, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0],
                                 [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]  # "c": (other)
    encoding = {e["column"]: e for e in data.loaded.meta["encoding"]}
    assert encoding["num"]["median"] == 2 and encoding["cat"]["categories"] == ["(missing)", "a", "b", "(other)"]
    # labels given as text: class indices with the names kept (integers sorted as numbers)
    assert data.loaded.classes == {"y": ["<=50K", ">50K"], "s": ["2", "10"]}
    assert data.loaded.labels["s"].tolist() == [1, 0, 0, 1, 0, 1, 0, 1]


def test_ordinal_encoding_and_unseen_category_error(tmp_path):
    data = fit(small(tmp_path, encoding="ordinal", unknown="other", missing_indicator=False))
    assert data.loaded.meta["features"] == ["num", "cat"]
    # codes (missing) 0, a 1, b 2, (other) 3, standardised on the train rows' codes 1, 2, 1, 0 (mean 1)
    std = math.sqrt(0.5)
    assert data.loaded.x[:, 1].tolist() == pytest.approx([(c - 1) / std for c in [1, 2, 1, 0, 2, 1, 2, 3]], abs=1e-6)
    with pytest.raises(AuditInputError, match=r"small.csv: row 9, column 'cat': category 'c' is not in the train split"):
        fit(small(tmp_path))


@pytest.mark.parametrize("change, params, message", [
    (("7,c,test", "x7,c,test"), {"categorical": ["cat"]}, r"row 9, column 'num': non-numeric value 'x7'"),
    (("7,c,test", "inf,c,test"), {}, r"row 9, column 'num': value 'inf' is not finite"),
    (("7,c,test", "7,c,tset"), {}, r"row 9, split column 'split': value 'tset'"),
    (("1,a,train,<=50K", "1,a,train,"), {}, r"row 2, label column 'y': missing value"),
    (("num,cat", "num,cat"), {"categorical": ["nope"]}, r"categorical columns \['nope'\] are not feature columns"),
    (("num,cat", "num,cat"), {"features": ["num", "y"]}, r"columns \['y'\] are labels"),
])
def test_bad_tables_are_refused_naming_row_column_and_value(tmp_path, change, params, message):
    with pytest.raises(AuditInputError, match=message):
        fit(small(tmp_path, SMALL.replace(*change), **params))


def test_unknown_table_options_are_refused(tmp_path):
    with pytest.raises(PluginParamsError, match="encoding"):
        small(tmp_path, encoding="binary")
    with pytest.raises(AuditInputError, match="primary label column"):
        Audit(model={"name": "mlp"}, cut_points=["fc1"], data=pd.DataFrame({"a": [1, 2]}), private=["a"])


def test_a_missing_numeric_train_column_is_refused(tmp_path):
    text = SMALL.replace("1,a,train", ",a,train").replace("2,b,train", ",b,train").replace("3,a,train", ",a,train")
    with pytest.raises(AuditInputError, match="column 'num': every value of the train split is missing"):
        fit(small(tmp_path, text))


def test_a_dataframe_encodes_as_its_csv(tmp_path):
    path = write_adult_like(tmp_path / "adult.csv", n=200, seed=1)
    frame = pd.read_csv(path)  # pandas' own parsing: numbers, NaN for empty cells, "?" as text
    params = {"label": "income", "private": ["sex", "race"], "unknown": "other"}
    from_csv = fit_seeded(DATASETS.create("csv", path=path, **params).load(None))
    from audit.core.data.table import FrameTable, TableParams

    from_frame = fit_seeded(FrameTable(frame, TableParams(**params)).load())
    assert from_csv.loaded.meta["features"] == from_frame.loaded.meta["features"]
    assert torch.allclose(from_csv.loaded.x, from_frame.loaded.x)
    assert from_csv.loaded.classes == from_frame.loaded.classes
    assert all(torch.equal(from_csv.loaded.labels[k], from_frame.loaded.labels[k]) for k in params["private"])
    assert "hours_per_week=(missing)" in from_csv.loaded.meta["features"]
    assert "workclass=(missing)" in from_csv.loaded.meta["features"]


def fit_seeded(loaded):
    return audit_data("t", loaded, {"train": 0.5, "aux": 0.25, "test": 0.25}, 0)


# ------------------------------------------------------------------ audits that find the planted attribute
COMMON = {"cut_points": ["fc1"], "defenses": ["none"], "attacks": {"attribute_linear": {"cs": 4}}, "n_boot": 200}


def found(report, target):
    (r,) = [r for r in report["results"] if r["target"] == target and r["metric"] == "balanced_accuracy"]
    return r


@pytest.fixture(scope="module")
def adult_csv(tmp_path_factory):
    return write_adult_like(tmp_path_factory.mktemp("adult") / "adult_like.csv", n=1200, seed=0)


def test_a_csv_config_finds_the_planted_sex(adult_csv, tmp_path):
    config = {"name": "adult", "dataset": {"name": "csv", "path": str(adult_csv), "label": "income",
                                            "private": ["sex", "race"], "unknown": "other"},
              "model": {"name": "mlp", "hidden": [32, 16]}, "training": {"epochs": 3}, **COMMON}
    report = Audit(config, quiet=True).run(tmp_path / "out")
    sex, race = found(report, "sex"), found(report, "race")
    assert sex["status"] == "ok" and sex["chance"] == 0.5 and sex["ci95"][0] > 0.65, sex
    assert race["ci95"][0] > race["chance"] == 0.25, race  # native_country carries it
    task = report["tasks"][0]
    assert task["classes"]["sex"] == ["Female", "Male"] and task["n"] == {"train": 600, "aux": 300, "test": 300}
    assert task["splits"] == {"train": 0.5, "aux": 0.25, "test": 0.25} and task["split_seed"] == 0
    assert report["config"]["tasks"][0]["splits"] == {"train": 0.5, "aux": 0.25, "test": 0.25}


def test_a_dataframe_finds_the_planted_sex(adult_csv, tmp_path):
    frame = pd.read_csv(adult_csv)
    report = Audit(model={"name": "mlp", "hidden": [32, 16]}, data=frame, primary="income", private=["sex"],
                   table={"unknown": "other", "encoding": "ordinal"}, training=3, quiet=True, **COMMON).run(tmp_path)
    sex = found(report, "sex")
    assert report["config"]["tasks"][0]["dataset"]["object"] == "DataFrame"
    assert sex["status"] == "ok" and sex["ci95"][0] > 0.65, sex


def test_the_csv_data_version_is_part_of_the_task_key(monkeypatch):
    """Models cached (and cells committed) before tables were encoded on the train split are not reused."""
    from audit.config import build_config
    from audit.tasks import task_key

    config = build_config({"dataset": {"name": "csv", "path": "t.csv", "label": "y", "private": ["s"]}, "model": {"name": "mlp"},
                           "cut_points": ["fc1"], "defenses": ["none"], "attacks": ["attribute"]})
    synthetic = build_config({"dataset": {"name": "synthetic"}, "model": {"name": "small_cnn"}, "cut_points": ["conv1"],
                              "defenses": ["none"], "attacks": ["attribute"]})
    csv_key, synthetic_key = task_key(config.tasks[0], 0), task_key(synthetic.tasks[0], 0)
    monkeypatch.setattr(DATASETS.get("csv"), "data_version", DATASETS.get("csv").data_version + 1)
    assert task_key(config.tasks[0], 0) != csv_key
    assert task_key(synthetic.tasks[0], 0) == synthetic_key  # data_version 0: keys as before


def test_the_task_key_holds_the_csvs_contents_not_its_path(tmp_path):
    """An edited file at the same path must not get the model (and cells) cached for its old contents; a
    moved copy keeps its key, hence its seeds and figures."""
    from audit.config import build_config
    from audit.tasks import task_key

    def key(path):
        config = build_config({"dataset": {"name": "csv", "path": str(path), "label": "y", "private": ["s"]},
                               "model": {"name": "mlp"}, "cut_points": ["fc1"], "defenses": ["none"],
                               "attacks": ["attribute"]})
        return task_key(config.tasks[0], 0)

    first, moved = tmp_path / "a.csv", tmp_path / "elsewhere" / "b.csv"
    first.write_text(SMALL)
    moved.parent.mkdir()
    moved.write_text(SMALL)
    original = key(first)
    assert key(moved) == original
    first.write_text(SMALL.replace("1,a,train,<=50K,10", "1,a,train,<=50K,2"))  # one private label edited
    assert key(first) != original
    assert key(tmp_path / "missing.csv") != original  # unreadable: keyed by its path; loading says why
