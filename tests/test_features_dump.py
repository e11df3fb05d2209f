"""Audits of saved features with no model: reproduces the full audit; malformed dumps are refused."""
import json

import numpy as np
import pytest
import torch

from audit import Audit, build_config
from audit.core.data.feature_dump import check_feature_dump, read_feature_dump, save_feature_dump
from audit.core.errors import AuditInputError

CUTS = ["conv1", "fc1"]
ATTACKS = {"attribute": {"epochs": 3}, "attribute_linear": {"cs": 4}}


@pytest.fixture(scope="module")
def full_and_dump(tmp_path_factory):
    """The tiny synthetic audit (defense none) and a dump of its task model's features (same seed)."""
    from tests.conftest import TINY

    tmp = tmp_path_factory.mktemp("dump")
    config = build_config({**TINY, "defenses": ["none"], "attacks": ATTACKS})
    full = Audit(config).run(tmp / "full", callbacks=[])
    path = Audit(config).dump_features(tmp / "synthetic.npz", inputs=True)
    return full, path, tmp


def _dump_config(path, **extra):
    return {
        "name": "dump", "seeds": [0], "n_boot": 100, "dataset": {"name": "features", "path": str(path)},
        "cut_points": CUTS, "defenses": ["none"], "attacks": ATTACKS, **extra,
    }


def test_dump_holds_every_row_labels_and_meta(full_and_dump):
    full, path, _ = full_and_dump
    data = check_feature_dump(read_feature_dump(path), path)
    assert set(data.features) == set(CUTS) and data.features["conv1"].shape == (400, 8, 8, 8)
    assert data.x.shape == (400, 1, 8, 8) and data.primary == "label" and data.private == ["secret"]
    assert data.meta["model"] == "small_cnn" and data.meta["task_key"] == full["tasks"][0]["task_key"]


def test_model_free_audit_reproduces_the_attribute_figures(full_and_dump):
    full, path, tmp = full_and_dump
    report = Audit(_dump_config(path)).run(tmp / "from_dump", callbacks=[])
    reference = {(r["cut_point"], r["attack"], r["metric"]): r for r in full["results"]}
    assert len(report["results"]) == len(reference) == 12
    for r in report["results"]:
        ref = reference[(r["cut_point"], r["attack"], r["metric"])]
        assert r["status"] == "ok" and r["model"] == "none" and r["n_eval"] == ref["n_eval"] == 100
        lo, hi = ref["ci95"]
        assert lo <= r["value"] <= hi, (r["cut_point"], r["attack"], r["metric"], r["value"], ref["ci95"])
        # the same rows, the same features and the dumped task's seeds: the very same figures
        assert (r["value"], r["ci95"]) == (ref["value"], ref["ci95"])
        assert r["utility"]["primary_accuracy"] is None and r["utility"]["available"] is False
        assert r["cost"]["bytes_sent"] == ref["cost"]["bytes_sent"] and r["cost"]["edge_flops"] is None
    # the planted attribute is found from the saved features alone
    conv1 = {r["metric"]: r for r in report["results"] if r["cut_point"] == "conv1" and r["attack"] == "attribute"}
    assert conv1["balanced_accuracy"]["ci95"][0] > 0.5
    assert report["tasks"][0]["replays_task"] == full["tasks"][0]["task_key"]


def test_dump_without_its_task_key_gets_seeds_of_its_own(full_and_dump, tmp_path):
    """An external dump (no task_key): the same figures within their CIs (the attack's seeds differ)."""
    full, path, _ = full_and_dump
    data = check_feature_dump(read_feature_dump(path), path)
    meta = {"primary": "label", "private": ["secret"]}
    external = save_feature_dump(tmp_path / "external.npz", {"fc1": data.features["fc1"]}, data.labels, meta=meta)
    report = Audit(_dump_config(external, cut_points=["fc1"], attacks={"attribute_linear": {"cs": 4}})).run(
        tmp_path / "out", callbacks=[])
    reference = {r["metric"]: r for r in full["results"] if r["cut_point"] == "fc1" and r["attack"] == "attribute_linear"}
    assert report["tasks"][0]["replays_task"] is None
    for r in report["results"]:
        lo, hi = reference[r["metric"]]["ci95"]
        assert r["status"] == "ok" and lo <= r["value"] <= hi


def test_feature_defenses_run_and_model_defenses_fail_clearly(full_and_dump):
    _, path, tmp = full_and_dump
    config = _dump_config(path, cut_points=["fc1"], attacks={"attribute_linear": {"cs": 4}}, defenses=[
        {"name": "noise", "scale": 100.0, "finetune_epochs": 0},  # a feature-level defense: no model needed
        {"name": "noise", "scale": 1.0, "finetune_epochs": 1},  # fine-tunes the cloud: needs the model
    ])
    report = Audit(config).run(tmp / "defenses", callbacks=[])
    noisy = [r for r in report["results"] if r["defense_params"]["finetune_epochs"] == 0]
    failed = [r for r in report["results"] if r["status"] == "failed"]
    assert {r["status"] for r in noisy} == {"ok"}
    bacc = next(r for r in noisy if r["metric"] == "balanced_accuracy")
    assert bacc["ci95"][0] <= 0.5 + 0.05  # huge noise: the attribute is no longer found
    assert len(failed) == 1 and "no cloud model" in failed[0]["error"]


def test_pt_dump_equals_npz_dump(full_and_dump, tmp_path):
    _, path, _ = full_and_dump
    data = check_feature_dump(read_feature_dump(path), path)
    pt = save_feature_dump(tmp_path / "d.pt", data.features, data.labels, meta={"primary": "label"})
    again = check_feature_dump(read_feature_dump(pt), pt)
    assert torch.equal(again.features["fc1"], data.features["fc1"]) and again.private == ["secret"]
    assert again.x.shape == (400, 0) and not again.meta["has_inputs"]


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def _good():
    rng = np.random.default_rng(0)
    return {"features/fc1": rng.normal(size=(20, 4)).astype(np.float32), "labels/secret": rng.integers(0, 2, 20)}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"labels/secret": np.zeros(19, dtype=np.int64)}, r"mismatched lengths.*features/fc1: 20, labels/secret: 19"),
        ({"x": np.zeros((21, 3))}, r"mismatched lengths.*x: 21"),
        ({"labels/secret": None}, r"no labels"),
        ({"features/fc1": np.full((20, 4), np.nan, dtype=np.float32)},
         r"features/fc1 holds NaN/inf values in 20 samples \(first: index 0\)"),
        ({"x": np.where(np.arange(20)[:, None] == 7, np.inf, 0.0) * np.ones((20, 2))},
         r"x holds NaN/inf values in 1 samples \(first: index 7\)"),
        ({"labels/secret": np.full(20, 0.5)}, r"labels/secret holds non-integer"),
        ({"labels/secret": -np.ones(20, dtype=np.int64)}, r"labels/secret holds negative values"),
        ({"meta": np.array("{not json")}, r"'meta' is not valid JSON"),
        ({"weights": np.zeros(3)}, r"unexpected array 'weights'"),
        ({"labels/secret": np.array([object()] * 20)}, r"cannot read without pickle"),
    ],
    ids=["label-length", "x-length", "no-labels", "nan-features", "inf-inputs", "float-labels", "negative",
         "bad-meta", "unknown-key", "pickled"],
)
def test_malformed_npz_dumps_are_refused(tmp_path, change, message):
    arrays = {**_good(), **change}
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(AuditInputError, match=message):
        check_feature_dump(read_feature_dump(path), path)


def test_missing_private_label_and_unknown_cut_point_are_refused(tmp_path):
    path = _npz(tmp_path / "d.npz", **_good(), meta=np.array(json.dumps({"private": ["race"]})))
    with pytest.raises(AuditInputError, match=r"missing labels \['race'\]; the dump has labels: secret"):
        check_feature_dump(read_feature_dump(path), path)
    path = _npz(tmp_path / "ok.npz", **_good())
    config = _dump_config(path, cut_points=["conv9"])
    with pytest.raises(AuditInputError, match=r"cut points \['conv9'\] are not in the feature dump; it holds: fc1"):
        Audit(config).run(tmp_path / "out", callbacks=[])


def test_pt_dump_with_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pt"  # any pickled object outside torch's weights_only allowlist (here a Path)
    torch.save({"features": {"fc1": torch.zeros(4, 2)}, "labels": {"s": torch.zeros(4)}, "meta": tmp_path}, path)
    with pytest.raises(AuditInputError, match="weights_only"):
        read_feature_dump(path)


def test_config_without_model_needs_a_features_dataset():
    from tests.conftest import TINY

    raw = {k: v for k, v in TINY.items() if k != "model"}
    with pytest.raises(AuditInputError, match=r"model: required \(only a dataset of saved features"):
        build_config(raw)
