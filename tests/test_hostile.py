"""Hostile inputs: each is refused or skipped with a clear message, and nothing it smuggles in runs."""
import ast
import json
import os
import pickle
import struct
import time
import warnings
import zlib
from pathlib import Path

import pytest
import torch
import yaml

from audit import Audit, build_config
from audit.cli import main
from audit.config import load_config
from audit.core.data import DATASETS
from audit.core.errors import AuditInputError

ROOT = Path(__file__).resolve().parents[1]


class Evil:
    """Unpickling it touches a marker file (stands for arbitrary code execution)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


# ------------------------------------------------------------------------------------------- configs
def test_yaml_that_builds_python_objects_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n"
                    "dataset: {name: synthetic}\nmodel: {name: mlp}\ncut_points: [fc1]\ndefenses: [none]\n"
                    "attacks: [attribute]\n")
    assert main(["run", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "configs are data only" in err and "python/object/apply:os.system" in err
    assert not marker.exists() and not (tmp_path / "o").exists()
    with pytest.raises(AuditInputError, match="configs are data only"):
        load_config(None, [f"name=!!python/object/apply:os.system ['touch {marker}']"])
    assert not marker.exists()


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path):
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 10):  # 10**10 values once expanded
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    lines.append("dataset: {name: synthetic, n: *a9}")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    start = time.monotonic()
    with pytest.raises(AuditInputError, match="alias bomb"):
        load_config(path)
    assert time.monotonic() - start < 10


def test_plugin_names_in_a_config_never_import_modules(tmp_path, monkeypatch, tiny_config):
    """A name that is an importable module (or module:attr) is only looked up in the registry."""
    marker = tmp_path / "imported"
    (tmp_path / "evil_plugin_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for key, value in [("dataset", {"name": "evil_plugin_mod"}), ("model", {"name": "evil_plugin_mod:X"}),
                       ("defenses", ["evil_plugin_mod"]), ("attacks", {"os:system": {}})]:
        with pytest.raises(AuditInputError, match="unknown"):
            build_config({**tiny_config, key: value})
    assert not marker.exists()


def test_config_and_registry_code_has_no_dynamic_import_or_eval():
    forbidden = {"eval", "exec", "__import__", "import_module", "locate", "compile", "load_module"}
    for rel in ("audit/config/schema.py", "audit/config/loading.py", "audit/core/registry.py"):
        tree = ast.parse((ROOT / rel).read_text())
        calls = {n.func.id if isinstance(n.func, ast.Name) else n.func.attr
                 for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, (ast.Name, ast.Attribute))}
        assert not calls & forbidden, (rel, calls & forbidden)
        assert "yaml.load(" not in (ROOT / rel).read_text() and "unsafe_load" not in (ROOT / rel).read_text()


# ------------------------------------------------------------------------------------------- weights
def test_evil_pickle_as_model_weights_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    weights = tmp_path / "weights.pt"
    torch.save({"conv1.weight": Evil(marker)}, weights)
    from audit.core.models import MODELS

    with pytest.raises(AuditInputError, match="weights_only"):
        MODELS.create("resnet18", weights=weights).build((3, 32, 32), 2)
    assert not marker.exists()


def test_evil_pickle_in_the_task_model_cache_is_refused(tmp_path, tiny_config):
    from audit.tasks import task_key

    marker = tmp_path / "pwned"
    cache = tmp_path / "cache"
    config = build_config(tiny_config)
    path = cache / "task_models" / f"{task_key(config.tasks[0], 0)}.pt"
    path.parent.mkdir(parents=True)
    with open(path, "wb") as fh:
        pickle.dump(Evil(marker), fh)
    with pytest.raises(AuditInputError, match=r"cannot be loaded safely.*delete it to retrain"):
        Audit(config, cache_dir=cache).run(tmp_path / "out", callbacks=[])
    assert not marker.exists()


def test_evil_pickle_posing_as_cifar10_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch", "batches.meta"]:
        with open(folder / name, "wb") as fh:
            pickle.dump(Evil(marker), fh)
    with pytest.raises(AuditInputError, match="not found or corrupted"):
        DATASETS.create("cifar10", root=tmp_path).load(None)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------- images
def _jpeg(path, color=(120, 40, 200), size=40):
    from PIL import Image

    Image.new("RGB", (size, size), color).save(path, format="JPEG")


def _png_header(path, width, height):
    """A PNG claiming width x height 8-bit RGB pixels, with a small valid IDAT (a bomb's header)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_hostile_image_files_are_skipped_with_a_reason(tmp_path, _private_cache):
    root = tmp_path / "faces"
    root.mkdir()
    good = ["25_0_1_20170116174525125.jpg.chip.jpg", "70_1_3_20170109150557335.jpg.chip.jpg"]
    for name in good:
        _jpeg(root / name)
    full = tmp_path / "full.jpg"
    _jpeg(full, size=200)
    (root / "30_0_0_20170109142408001.jpg.chip.jpg").write_bytes(full.read_bytes()[:600])  # truncated
    (root / "30_0_0_20170109142408002.jpg.chip.jpg").write_text("#!/bin/sh\nrm -rf /\n")  # not an image
    _png_header(root / "30_0_0_20170109142408003.jpg.chip.jpg", 8000, 8000)  # 64 MP: over max_pixels
    _png_header(root / "30_0_0_20170109142408004.jpg.chip.jpg", 30000, 30000)  # 900 MP: PIL's own bomb limit
    outside = tmp_path / "secret.jpg"
    _jpeg(outside)
    (root / "30_0_0_20170109142408005.jpg.chip.jpg").symlink_to(outside)  # escapes the folder
    (root / "30_0_0_20170109142408006.jpg.chip.jpg").mkdir()  # a folder named like an image
    os.mkfifo(root / "30_0_0_20170109142408007.jpg.chip.jpg")  # reading it would block forever
    (root / "30_0_0_20170109142408008.jpg.chip.jpg").symlink_to(root / "missing.jpg")  # dangling
    ds = DATASETS.create("utkface", root=root, image_size=16)
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = ds.load(_private_cache)
    assert time.monotonic() - start < 60
    assert data.x.shape == (2, 3, 16, 16)
    messages = [str(w.message) for w in caught]

    def reason(suffix):
        hits = [m for m in messages if f"2017010914240800{suffix}" in m]
        assert len(hits) == 1, (suffix, messages)
        return hits[0]
    assert "truncated" in reason(1).lower()
    assert "unreadable image" in reason(2) and "cannot identify" in reason(2)
    assert "8000x8000" in reason(3) and "max_pixels" in reason(3)
    assert "DecompressionBomb" in reason(4)
    assert "links outside" in reason(5)
    assert "not a regular file" in reason(6) and "not a regular file" in reason(7)
    assert "links outside" in reason(8) or "not a regular file" in reason(8)


def test_a_folder_of_only_hostile_files_is_an_input_error(tmp_path, _private_cache):
    (tmp_path / "30_0_0_20170109142408002.jpg.chip.jpg").write_text("not an image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(AuditInputError, match="none of the 1 UTKFace images"):
            DATASETS.create("utkface", root=tmp_path, image_size=16).load(_private_cache)


def test_evil_pickle_in_the_image_cache_is_refused(tmp_path, _private_cache):
    root = tmp_path / "faces"
    root.mkdir()
    _jpeg(root / "25_0_1_20170116174525125.jpg.chip.jpg")
    _jpeg(root / "26_1_1_20170116174525125.jpg.chip.jpg")
    cache = tmp_path / "cache"
    ds = DATASETS.create("utkface", root=root, image_size=16)
    ds.load(cache)
    (cached,) = (cache / "datasets").glob("utkface-*.pt")
    marker = tmp_path / "pwned"
    with open(cached, "wb") as fh:
        pickle.dump(Evil(marker), fh)
    with pytest.raises(AuditInputError, match="cannot be loaded safely"):
        ds.load(cache)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- CSV
@pytest.mark.parametrize("text, params, message", [
    ("a,label,secret\n1,yes,x\nfoo,no,y\n", {"categorical": []}, r"row 3, column 'a': non-numeric value 'foo'"),
    ("a,label,secret\n1,yes,x\n2,,y\n", {}, r"row 3, label column 'label': missing value"),
    ("a,label,secret\n1,yes,x\n2,maybe,y\n", {"classes": {"label": ["yes", "no"]}},
     r"row 3, label column 'label': unknown label value 'maybe' \(declared classes: yes, no\)"),
    ("a,label,secret\n1,yes,x\n2,no,x\n", {}, r"label column 'secret' has a single value \('x'\)"),
    ("a,label,secret\n" + "".join(f"{i},yes,{i}\n{i},no,{i}\n" for i in range(101)), {},
     r"label column 'secret' has 101 distinct values \(max_classes=100\)"),
    ("a,label,secret\n1,yes,x,extra\n2,no,y\n", {}, r"line 2 has more fields than the header \(3\)"),
    ("a,label,secret\n1,yes\n2,no,y\n", {}, r"line 2 has fewer fields than the header \(3\)"),
    ("a,a,label,secret\n1,2,yes,x\n3,4,no,y\n", {}, r"duplicate column names: a"),
    ("a,label,secret\n1,yes,x\n2,no,y\n", {"classes": {"a": ["1"]}}, r"'a', which is not a label column"),
    ("a,label,secret\ninf,yes,x\n2,no,y\n", {}, r"row 2, column 'a': value 'inf' is not finite"),
])
def test_bad_csv_files_are_refused_naming_the_problem(tmp_path, text, params, message):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(AuditInputError, match=message):
        DATASETS.create("csv", path=path, label="label", private=["secret"], **params).load(None)


def test_csv_binary_and_oversized_fields_are_refused(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"a,label,secret\n1,yes,\xff\xfe\n")
    with pytest.raises(AuditInputError, match="not UTF-8 text"):
        DATASETS.create("csv", path=path, label="label", private=["secret"]).load(None)
    path.write_text("a,label,secret\n1,yes," + "x" * 200_000 + "\n")
    with pytest.raises(AuditInputError, match="malformed CSV near line"):
        DATASETS.create("csv", path=path, label="label", private=["secret"]).load(None)


def test_csv_declared_classes_set_the_order(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,label,secret\n1,yes,x\n2,no,y\n3,yes,y\n")
    data = DATASETS.create("csv", path=path, label="label", private=["secret"],
                           classes={"label": ["yes", "no", "unsure"]}).load(None)
    assert data.classes["label"] == ["yes", "no", "unsure"] and data.labels["label"].tolist() == [0, 1, 0]


# ------------------------------------------------------------------------------------------- --out
def test_out_folder_of_another_audit_is_refused_naming_what_differs(tmp_path, tiny_config, capsys):
    tiny_config.update(cut_points=["fc1"], defenses=["none"], attacks={"attribute_linear": {}})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0
    cells = sorted((out / "cells").iterdir())
    assert main(["run", str(path), "--out", str(out), "--set", "seeds=[5]", "--set", "n_boot=200", "-q"]) == 2
    err = capsys.readouterr().err
    assert "holds results of another audit" in err
    assert "seeds: [0] there, [5] here" in err and "n_boot: 100 there, 200 here" in err
    assert sorted((out / "cells").iterdir()) == cells  # nothing touched
    # the same audit resumes by default and with --resume; --no-resume refuses it
    assert main(["run", str(path), "--out", str(out), "--resume", "-q"]) == 0
    assert main(["run", str(path), "--out", str(out), "--no-resume", "-q"]) == 2
    assert "pass --resume to continue" in capsys.readouterr().err
    assert main(["run", str(path), "--out", str(tmp_path / "new"), "--resume", "-q"]) == 2
    assert "holds no audit to resume" in capsys.readouterr().err
    # a file, or a folder of something else
    (tmp_path / "file").write_text("x")
    assert main(["run", str(path), "--out", str(tmp_path / "file"), "-q"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "me.jpg").write_text("x")
    assert main(["run", str(path), "--out", str(tmp_path / "photos"), "-q"]) == 2
    assert "not a splitaudit output folder" in capsys.readouterr().err
    (out / "audit.json").write_text("{not json")
    assert main(["run", str(path), "--out", str(out), "-q"]) == 2
    assert "audit.json is not valid JSON" in capsys.readouterr().err
    assert json.loads((cells[0]).read_text())["records"]


def test_utkface_names_take_ascii_digits_only():
    from audit.core.data.utkface import parse_name

    assert parse_name("35_0_1_20170116174525125.jpg.chip.jpg") == (35, 0, 1)
    for name in ("٣٥_0_1_20170116174525125.jpg.chip.jpg",  # Arabic-Indic digits
                 "35_0_1_２0170116174525125.jpg.chip.jpg",  # a full-width digit
                 "३५_0_1_20170116174525125.jpg.chip.jpg"):  # Devanagari digits
        assert isinstance(parse_name(name), str), name
