"""Names that become paths stay inside the run's folder (issue 18, item 1)."""
import numpy as np
import pytest
import torch

from audit import Audit, build_config
from audit.core.data.feature_dump import save_feature_dump
from audit.core.feature_store import FeatureStore
from audit.core.paths import inside, path_component

HOSTILE = ["/victim", "../../victim", "features//victim", "..", ".", "a/../../b", "", "-rf", "x" * 300, "c\x00d"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_become_one_component_inside_the_root(tmp_path, name):
    part = path_component(name)
    assert part and "/" not in part and "\x00" not in part and part not in (".", "..") and not part.startswith("-")
    assert inside(tmp_path, "key", name, "train.npy").resolve().parent.parent == tmp_path.resolve() / "key"


def test_plain_names_are_kept_and_escaped_ones_never_collide():
    for name in ["conv1", "layer1.0.conv2", "fc_1", "pool-3"]:
        assert path_component(name) == name  # existing folders keep their names
    escaped = {path_component(n) for n in HOSTILE + ["a_b", "a/b", "a b", "a~b"]}
    assert len(escaped) == len(HOSTILE) + 4
    assert path_component("a/b") != path_component("a b") != path_component("a_b")


def test_inside_refuses_a_planted_symlink(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "root" / "key").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="outside"):
        inside(tmp_path / "root", "key", "conv1")


def test_feature_store_writes_and_removes_only_under_its_root(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    store = FeatureStore(tmp_path / "out" / "features", max_ram_mb=1)
    for cut in [str(victim), "../../victim", "features//" + str(victim)]:
        path = store.put("key", cut, "train", torch.ones(3, 2))
        assert (tmp_path / "out" / "features").resolve() in path.resolve().parents
        assert torch.equal(store.load("key", cut, "train"), torch.ones(3, 2))
        store.remove("key", cut)
        assert not path.exists()
    assert (victim / "keep.txt").read_text() == "precious" and sorted(p.name for p in victim.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("keep_features", [True, False])
def test_audit_of_a_dump_with_path_like_cut_points_touches_nothing_outside_out(tmp_path, keep_features):
    """A dump whose cut points are an absolute path, a `..` path and a `//` path: the audit runs, the
    directories those names point at keep their files, and every feature file lived under OUT."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    rng = np.random.default_rng(0)
    secret = torch.from_numpy(rng.integers(0, 2, 200))
    label = torch.from_numpy(rng.integers(0, 2, 200))
    feats = torch.from_numpy(rng.normal(size=(200, 4)).astype("float32"))
    feats[:, 0] += 5 * secret  # planted (Bayes balanced accuracy 0.994): found through an escaped name
    cuts = [str(victim), "../../" + victim.name, "features//" + str(victim)]
    dump = save_feature_dump(tmp_path / "dump.npz", {c: feats for c in cuts}, {"label": label, "secret": secret},
                             meta={"primary": "label", "private": ["secret"]})
    config = build_config({
        "name": "hostile", "seeds": [0], "n_boot": 50, "dataset": {"name": "features", "path": str(dump)},
        "cut_points": cuts, "defenses": ["none"], "attacks": {"attribute_linear": {"cs": 4}},
        "memory": {"keep_features": keep_features},
    })
    out = tmp_path / "run" / "out"
    report = Audit(config).run(out, callbacks=[])
    assert (victim / "keep.txt").read_text() == "precious" and sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    written = sorted(p for p in tmp_path.rglob("*.npy") if p.name != "dump.npz")
    assert bool(written) == keep_features and all((out / "features").resolve() in p.resolve().parents for p in written)
    ok = [r for r in report["results"] if r["metric"] == "balanced_accuracy"]
    assert len(ok) == 3 and all(r["status"] == "ok" and r["ci95"][0] > 0.8 for r in ok)


def test_a_tampered_kept_feature_file_is_not_used(tmp_path, caplog):
    """keep_features: a feature file changed after it was written is recomputed, never attacked as is."""
    import json

    from tests.conftest import TINY

    config = build_config({**TINY, "cut_points": ["conv1"], "defenses": ["none"],
                           "attacks": {"attribute_linear": {"cs": 4}}, "memory": {"keep_features": True}})
    out = tmp_path / "out"
    first = Audit(config).run(out, callbacks=[])
    (test_file,) = (out / "features").rglob("test.npy")
    assert (test_file.parent / "test.npy.sha256").is_file()
    np.save(test_file, np.zeros_like(np.load(test_file)))  # same shape, no signal left
    for cell in (out / "cells").glob("*.json"):
        cell.unlink()  # the cells run again on the kept features
    with caplog.at_level("WARNING", logger="splitaudit"):
        again = Audit(config).run(out, callbacks=[])
    assert "do not match the SHA-256" in caplog.text and str(test_file) in caplog.text
    value = {r["metric"]: r["value"] for r in first["results"]}
    assert {r["metric"]: r["value"] for r in again["results"]} == value and value["balanced_accuracy"] > 0.7
    assert json.loads(json.dumps(again["results"]))  # plain, finite records
