"""The scripts in docs/ run: the UTKFace ResNet-18 example (on a small subset) and the feature dumper."""
import importlib.util
from pathlib import Path

import pytest

from audit import Audit
from tests.conftest import UTKFACE, requires_utkface

DOCS = Path(__file__).resolve().parents[1] / "docs"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_{name}", DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@requires_utkface()
def test_utkface_resnet18_example_on_a_small_subset(tmp_path):
    example = load("example_utkface_resnet18")
    with pytest.warns(UserWarning, match="malformed UTKFace file name"):  # the split keeps two on purpose
        report = example.main(["--root", str(UTKFACE), "--max-samples", "200", "--size", "32", "--epochs", "1",
                               "--attack-epochs", "2", "--n-boot", "100", "--out", str(tmp_path / "out")])
    task = report["tasks"][0]
    assert task["n"] == {"train": 100, "aux": 50, "test": 50} and task["classes"]["race"][0] == "white"
    assert report["config"]["tasks"][0]["training"]["epochs"] == 1
    assert len(report["results"]) == 2 * 2 * 2 * 3 and {r["status"] for r in report["results"]} == {"ok"}
    bytes_sent = {r["cut_point"]: r["cost"]["bytes_sent"] for r in report["results"]}
    assert bytes_sent == {"layer2": 128 * 4 * 4 * 4, "layer3": 256 * 2 * 2 * 4}  # float32 features of 32x32 images
    assert all(r["chance"] == 0.2 for r in report["results"] if r["metric"] == "balanced_accuracy")


def test_dump_features_script_writes_an_auditable_dump(tmp_path):
    path = load("dump_features").main(["--out", str(tmp_path / "dump.npz"), "-n", "300", "--cut-points", "layer3"])
    report = Audit({"dataset": {"name": "features", "path": str(path)}, "cut_points": ["layer3"],
                    "defenses": ["none"], "attacks": {"attribute_linear": {"cs": 3}}, "n_boot": 50}).run(
        tmp_path / "out", callbacks=[])
    bacc = next(r for r in report["results"] if r["metric"] == "balanced_accuracy")
    assert bacc["status"] == "ok" and bacc["target"] == "race" and bacc["chance"] == 0.2
    assert bacc["ci95"][0] > 0.3  # the planted race is read from the dumped features alone
