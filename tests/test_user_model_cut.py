"""Cutting any nn.Module at a named submodule (torch.fx): exact halves, shared weights, clear refusals."""
import copy
import pickle

import pytest
import torch
import torchvision
from torch import nn

from audit.core.errors import AuditInputError
from audit.core.models import MODELS
from audit.core.models.fx_split import GraphSplitModel, split_module


def _exact(model: nn.Module, x: torch.Tensor, cuts: list[str]) -> dict[str, tuple[int, ...]]:
    model.eval()
    shapes = {}
    with torch.no_grad():
        full = model(x)
        for cut in cuts:
            edge, cloud = split_module(model, cut)
            z = edge(x)
            assert torch.equal(cloud(z), full), cut  # the same operations in the same order: bit-identical
            shapes[cut] = tuple(z.shape[1:])
    return shapes


def test_resnet18_cuts_at_stages_and_blocks():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    shapes = _exact(model, torch.randn(2, 3, 64, 64), ["layer2", "layer3", "layer2.1", "avgpool"])
    assert shapes["layer2"] == (128, 8, 8) and shapes["layer3"] == (256, 4, 4) and shapes["avgpool"] == (512, 1, 1)


def test_vgg11_cuts_inside_sequentials():
    torch.manual_seed(0)
    model = torchvision.models.vgg11(num_classes=3)
    shapes = _exact(model, torch.randn(2, 3, 32, 32), ["features.2", "classifier.1"])
    assert shapes["features.2"] == (64, 16, 16) and shapes["classifier.1"] == (4096,)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(10, 16), nn.Linear(16, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x.flatten(1))))))


def test_mlp_with_functional_ops():
    torch.manual_seed(0)
    assert _exact(MLP(), torch.randn(4, 10), ["fc1", "fc2"]) == {"fc1": (16,), "fc2": (8,)}


def test_halves_share_the_model_parameters_and_survive_copy_and_pickle():
    torch.manual_seed(0)
    model = GraphSplitModel(MLP())
    edge, cloud = model.split("fc1")
    assert edge.get_submodule("fc1").weight is model.module.fc1.weight
    assert cloud.get_submodule("fc2").weight is model.module.fc2.weight
    assert model.cut_points == ["fc1", "fc2"]  # "out" leaves the cloud nothing to do
    x = torch.randn(3, 10)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        e, c = clone.split("fc2")
        assert torch.equal(c(e(x)), model(x))
        assert e.get_submodule("fc2").weight is clone.module.fc2.weight
    assert set(model.state_dict()) == {f"module.{k}" for k in model.module.state_dict()}


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.inner(x) + x)


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.block(self.block(x)))


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        if h.sum() > 0:  # data-dependent control flow
            h = -h
        return self.b(h)


class OpaqueBranch(nn.Module):
    """Control flow inside a submodule that does not contain the cut point: traced around, not into."""

    def __init__(self):
        super().__init__()
        self.front = nn.Linear(4, 4)
        self.branchy = Branchy()

    def forward(self, x):
        return self.branchy(self.front(x))


@pytest.mark.parametrize(
    ("model", "cut", "message"),
    [
        (Residual, "inner", r"also needs the model input 'x'.*skip connection"),
        (torchvision.models.resnet18, "layer2.0.conv1", r"also needs the output of 'layer2.0.downsample'.*skip connection"),
        (Shared, "block", r"called 2 times in one forward \(a shared module\)"),
        (Shared, "unused", "never called"),
        (Branchy, "a", r"torch.fx cannot trace.*control flow"),
        (MLP, "fc3", r"unknown cut point 'fc3'.*\(did you mean 'fc\d'\?\).*top-level submodules: fc1, fc2, out"),
        (MLP, "", "unknown cut point"),
    ],
    ids=["skip-input", "skip-resnet-block", "shared", "unused", "control-flow", "typo", "root"],
)
def test_what_cannot_be_cut_is_refused_with_the_reason(model, cut, message):
    with pytest.raises(AuditInputError, match=message):
        split_module(model(), cut, "m")


def test_control_flow_outside_the_cut_path_is_fine():
    torch.manual_seed(0)
    _exact(OpaqueBranch(), torch.randn(3, 4), ["front"])


def test_torchvision_plugin_any_arch_with_local_weights(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.mobilenet_v3_small(num_classes=4).eval()
    path = tmp_path / "mnv3.pt"
    torch.save(reference.state_dict(), path)
    model = MODELS.create("torchvision", arch="mobilenet_v3_small", weights=path).build((3, 32, 32), 4).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
        edge, cloud = model.split("features.3")
        assert torch.equal(cloud(edge(x)), reference(x))
    with pytest.warns(UserWarning, match="re-initialised"):
        MODELS.create("torchvision", arch="mobilenet_v3_small", weights=path).build((3, 32, 32), 2)
    one_channel = MODELS.create("torchvision", arch="resnet18").build((1, 16, 16), 2).eval()
    assert one_channel(torch.zeros(1, 1, 16, 16)).shape == (1, 2)
    with pytest.raises(AuditInputError, match=r"unknown torchvision architecture 'resnet19' \(did you mean resnet18"):
        MODELS.create("torchvision", arch="resnet19").build((3, 32, 32), 2)
    with pytest.raises(AuditInputError, match="image inputs"):
        MODELS.create("torchvision").build((10,), 2)
