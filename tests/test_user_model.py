"""A user-defined nn.Module and Dataset (not from the built-in zoo), audited through the Python API and
through entry points from YAML: the same records."""
import sys
import textwrap

import pytest
import torch

from audit import Audit, TorchData, load_config
from audit.core.data import DATASETS
from audit.core.models import MODELS

USER_PACKAGE = '''
"""A third-party package: its own model, its own data, and splitaudit plugins for both."""
import torch
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset

from audit.core.data.lightning_data import TorchDataset
from audit.core.models.fx_split import ModuleModel


class Faces(Dataset):
    """Dict samples {"image", "label", "secret"}; the secret is planted in a fixed direction."""

    def __init__(self, n=400, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 2, (n,), generator=g)
        self.s = torch.randint(0, 2, (n,), generator=g)
        a, b = torch.randn(2, 1, 8, 8, generator=g)
        self.x = torch.randn(n, 1, 8, 8, generator=g) + (self.y[:, None, None, None] - 0.5) * a \\
            + 0.8 * (self.s[:, None, None, None] - 0.5) * b

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.y[i], "secret": self.s[i]}


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(4 * 16, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x):
        h = nn.functional.avg_pool2d(self.body(x), 2)
        return self.head(torch.flatten(h, 1))


class TinyNetModel(ModuleModel):
    """TinyNet, the user's own architecture."""

    def module(self, input_shape, num_classes):
        return TinyNet()


class FacesData(TorchDataset):
    """The user's Faces dataset."""

    class Params(TorchDataset.Params):
        n: int = Field(400, ge=10)

    def make(self):
        return Faces(self.params.n)
'''

CONFIG = """
name: user
dataset: {{name: faces, private: [secret], primary: label, input_key: image}}
model: {{name: tiny_net, weights: {weights}}}
cut_points: [body, head.1]
training: {{epochs: 0}}
defenses: [none, {{name: noise, scale: 4.0, finetune_epochs: 0}}]
attacks: {{attribute_linear: {{cs: 3}}}}
n_boot: 100
"""

# what depends on nothing but the data, the model and the cell (not on the stage seeds)
FIXED = ("dataset", "model", "cut_point", "defense", "defense_params", "attack", "attack_params", "target",
         "metric", "chance", "seed", "n_eval", "status", "error")


@pytest.fixture(scope="module")
def user_package(tmp_path_factory):
    """The package on sys.path with a dist-info declaring its entry points (as pip would install it),
    and the user's model, trained by the user's own loop, with its weights file."""
    tmp = tmp_path_factory.mktemp("user_pkg")
    (tmp / "user_audit_pkg.py").write_text(textwrap.dedent(USER_PACKAGE))
    dist = tmp / "user_audit_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: user-audit-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[splitaudit.models]\ntiny_net = user_audit_pkg:TinyNetModel\n\n"
        "[splitaudit.datasets]\nfaces = user_audit_pkg:FacesData\n"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(tmp))
        for registry in (MODELS, DATASETS):  # rescan entry points now; forget the plugins afterwards
            mp.setattr(registry, "_classes", dict(registry._classes))
            mp.setattr(registry, "_entry_points_loaded", False)
        import user_audit_pkg as pkg

        torch.manual_seed(0)
        net, data = pkg.TinyNet(), pkg.Faces()
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(60):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(data.x), data.y).backward()
            opt.step()
        weights = tmp / "tiny_net.pt"
        torch.save(net.eval().state_dict(), weights)
        yield pkg, net, weights
    sys.modules.pop("user_audit_pkg", None)


def test_user_module_through_api_and_entry_points_gives_the_same_records(user_package, tmp_path):
    pkg, net, weights = user_package
    before = {k: v.clone() for k, v in net.state_dict().items()}
    api = Audit(
        model=net, cut_points=["body", "head.1"],
        data=TorchData(pkg.Faces(), private=["secret"], primary="label", input_key="image"),
        defenses=["none", {"name": "noise", "scale": 4.0, "finetune_epochs": 0}],
        attacks={"attribute_linear": {"cs": 3}}, n_boot=100, name="user", model_name="tiny_net", data_name="faces",
    ).run(tmp_path / "api", callbacks=[])
    config_path = weights.parent / "user.yaml"
    config_path.write_text(CONFIG.format(weights=weights.name))  # relative to the config file
    yaml = Audit(load_config(config_path)).run(tmp_path / "yaml", callbacks=[])

    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the caller's model is untouched
    assert api["config"]["tasks"][0]["model"]["name"] == "python"
    assert yaml["config"]["tasks"][0]["model"]["name"] == "tiny_net"
    assert api["tasks"][0]["primary_accuracy"] == yaml["tasks"][0]["primary_accuracy"] > 0.8
    assert len(api["results"]) == len(yaml["results"]) == 2 * 2 * 3
    for a, y in zip(api["results"], yaml["results"]):
        assert {k: a[k] for k in FIXED} == {k: y[k] for k in FIXED} and a["status"] == "ok"
        assert a["cost"]["edge_flops"] == y["cost"]["edge_flops"] and a["cost"]["bytes_sent"] == y["cost"]["bytes_sent"]
        assert a["utility"]["task_accuracy"] == y["utility"]["task_accuracy"]
        if a["defense"] == "none":  # the same released features: the same utility
            assert a["utility"] == y["utility"]
        # the attack's seeds (the linear probe's validation split; the noise draws) follow the task's spec
        # (python object vs entry point): two independent estimates of one figure, whose 95% CIs must
        # overlap (a point inside the other's CI is too strict: it failed at 0.593 vs [.., 0.590]). The CI
        # covers the evaluation rows, not the noise draws: at scale 0.5 the figure at head.1 ranged over
        # 0.53-0.74 with the seeds (which, while the key held the weights' temporary path, changed per run)
        assert a["ci95"][0] <= y["ci95"][1] and y["ci95"][0] <= a["ci95"][1], (a["metric"], a["ci95"], y["ci95"])
    planted = [r for r in api["results"] if r["defense"] == "none" and r["metric"] == "balanced_accuracy"]
    assert min(r["ci95"][0] for r in planted) > 0.6  # the user's secret is found at both cuts


def test_entry_point_spec_through_the_api_equals_yaml_exactly(user_package, tmp_path):
    _, _, weights = user_package
    common = dict(cut_points=["head.1"], defenses=["none", {"name": "noise", "scale": 0.5, "finetune_epochs": 0}],
                  attacks={"attribute_linear": {"cs": 3}}, n_boot=100, name="user")
    data = {"name": "faces", "private": ["secret"], "primary": "label", "input_key": "image"}
    model = {"name": "tiny_net", "weights": str(weights)}
    api = Audit(model=model, data=data, training=0, **common).run(tmp_path / "api", callbacks=[])
    yaml = Audit({"dataset": data, "model": model, "training": {"epochs": 0}, **common}).run(
        tmp_path / "yaml", callbacks=[])
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("cost", "timings")} for r in rs]  # noqa: E731 - times vary
    assert strip(api["results"]) == strip(yaml["results"]) and len(api["results"]) == 6
