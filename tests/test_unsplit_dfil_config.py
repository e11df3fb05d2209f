"""``unsplit`` and ``dfil`` run from a YAML config and from the Python API, through the runner,
and land in report.json with their units, threat model and verdict roles (unsplit's PSNR decides
the reconstruction family; dFIL's bound is a figure only)."""
import torch
import yaml
from torch import nn
from torch.utils.data import TensorDataset

from audit import Audit
from audit.verdicts import family_of
from tests.conftest import TINY

ATTACKS = {"unsplit": {"n_eval": 16, "rounds": 3, "input_steps": 5, "model_steps": 5}, "dfil": {"n_eval": 16, "probes": 8}}


def test_both_attacks_run_from_a_yaml_config(tmp_path):
    config = {**TINY, "cut_points": ["conv1"], "attacks": ATTACKS}
    path = tmp_path / "audit.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    report = Audit(path).run(tmp_path / "out", callbacks=[])
    records = report["results"]
    assert all(r["status"] == "ok" for r in records), [r["error"] for r in records]
    by = {(r["defense"], r["attack"], r["metric"]): r for r in records}
    assert {m for (_, a, m) in by if a == "unsplit"} == {"psnr", "ssim"}
    unsplit = by[("none", "unsplit", "psnr")]
    assert unsplit["extra"]["threat_model"]["aux_data"] is False and family_of(unsplit) == "reconstruction"
    noisy = by[("noise", "dfil", "dfil")]
    assert noisy["value"] > 0 and noisy["extra"]["unit"] == "1/unit^2" and noisy["extra"]["applicable"] is True
    assert noisy["ci95"][0] <= noisy["value"] <= noisy["ci95"][1] and family_of(noisy) is None
    assert by[("noise", "dfil", "psnr_ceiling")]["extra"]["unit"] == "dB"
    assert by[("none", "dfil", "mse_bound")]["value"] == 0.0  # deterministic: no floor
    assert ("none", "dfil", "dfil") not in by


def test_both_attacks_run_from_the_python_api(tmp_path):
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 2))
    x, y = torch.rand(200, 1, 8, 8, generator=gen), torch.randint(0, 2, (200,), generator=gen)
    s = torch.randint(0, 2, (200,), generator=gen)
    report = Audit(model=model, cut_points=["1"], data=TensorDataset(x, y, s), private=["s"], n_boot=50,
                   defenses=[{"name": "noise", "scale": 1.0, "finetune_epochs": 0}], attacks=ATTACKS).run(
        out=tmp_path / "api_out", callbacks=[])
    got = {(r["attack"], r["metric"]): r for r in report["results"]}
    assert all(r["status"] == "ok" for r in got.values()), [r["error"] for r in got.values()]
    assert {("unsplit", "psnr"), ("unsplit", "ssim"), ("dfil", "dfil"), ("dfil", "mse_bound")} <= set(got)
    assert got[("dfil", "dfil")]["extra"]["noise_source"] == "defense facts"
