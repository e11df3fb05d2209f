"""The accelerator is the user's: ``trainer.accelerator: gpu`` runs on CUDA where there is one, and where
there is none the audit stops before computing anything, naming the setting (never a silent CPU run)."""
import json

import pytest
import torch
import yaml

from audit.cli import main


def write(tmp_path, config: dict, accelerator: str):
    config = {**config, "cut_points": ["conv1"], "defenses": ["none"], "attacks": {"attribute": {"epochs": 1}},
              "trainer": {"accelerator": accelerator}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the gpu run is tested below")
def test_a_gpu_audit_without_cuda_stops_before_computing_anything(tmp_path, tiny_config, capsys):
    out = tmp_path / "out"
    assert main(["run", str(write(tmp_path, tiny_config, "gpu")), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "trainer: accelerator 'gpu'" in err and "cannot run on this machine" in err
    assert not out.exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_gpu_audit_runs_on_cuda(tmp_path, tiny_config):
    out = tmp_path / "out"
    assert main(["run", str(write(tmp_path, tiny_config, "gpu")), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["environment"]["device"].startswith("cuda")
    assert all(r["status"] == "ok" for r in report["results"])
