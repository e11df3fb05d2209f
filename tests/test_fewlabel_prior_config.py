"""The two attacks of issue 19 (items 2, 3) run from a YAML config through the Python API."""
import yaml

from audit import Audit
from tests.conftest import TINY


def test_inversion_prior_and_model_completion_from_a_config(tmp_path):
    config = {**TINY, "cut_points": ["conv1"], "defenses": ["none"],
              "attacks": {"inversion_prior": {"epochs": 2, "classifier_epochs": 2, "grid": False},
                          "model_completion": {"n_labels": 5, "steps": 50, "rounds": 2}}}
    path = tmp_path / "issue19.yaml"
    path.write_text(yaml.safe_dump(config))
    report = Audit(str(path)).run(tmp_path / "out", callbacks=[])
    got = {(r["attack"], r["target"], r["metric"]): r for r in report["results"]}
    assert {r["status"] for r in report["results"]} == {"ok"}
    assert ("inversion_prior", "input", "psnr") in got and ("inversion_prior", "secret", "balanced_accuracy") in got
    mc = got[("model_completion", "secret", "balanced_accuracy")]
    assert mc["extra"]["transductive"] is True and mc["extra"]["n_labels"] == 5
    assert mc["chance"] == 0.5 and mc["ci95"][0] <= mc["value"] <= mc["ci95"][1]
