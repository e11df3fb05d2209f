import pytest
import torch

from audit.core.errors import AuditInputError
from audit.core.models import MODELS

SHAPES = {"small_cnn": (3, 32, 32), "mlp": (20,), "resnet18": (3, 64, 64), "vgg11": (3, 32, 32)}


@pytest.mark.parametrize("name", [n for n in MODELS.list() if n != "python"])  # python: an object given to Audit()
def test_every_cut_point_splits_exactly(name):
    torch.manual_seed(0)
    shape = SHAPES.get(name, (3, 32, 32))
    model = MODELS.create(name).build(shape, num_classes=5).eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        full = model(x)
        assert full.shape == (2, 5)
        assert len(model.cut_points) >= 2
        for cut in model.cut_points:
            edge, cloud = model.split(cut)
            assert torch.allclose(cloud(edge(x)), full, atol=1e-5), cut


def test_small_cnn_cut_point_names():
    model = MODELS.create("small_cnn", widths=[64, 128, 128], fc=[512]).build((3, 64, 64), 2)
    assert model.cut_points == ["conv1", "conv2", "pool1", "conv3", "conv4", "pool2", "conv5", "conv6", "pool3", "fc1"]
    edge, _ = model.split("pool2")
    assert edge(torch.zeros(1, 3, 64, 64)).shape == (1, 128, 16, 16)


def test_unknown_cut_point_lists_the_known_ones():
    model = MODELS.create("mlp").build((10,), 2)
    with pytest.raises(AuditInputError, match="unknown cut point 'fc9'.*its cut points: fc1, fc2"):
        model.split("fc9")


def test_weights_file_is_loaded_with_weights_only(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(1)
    reference = resnet18(num_classes=3)
    path = tmp_path / "r18.pt"
    torch.save(reference.state_dict(), path)
    model = MODELS.create("resnet18", weights=path).build((3, 64, 64), 3).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), reference.eval()(x), atol=1e-5)
    with pytest.warns(UserWarning, match="re-initialised"):
        MODELS.create("resnet18", weights=path).build((3, 64, 64), 7)
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": object()}, evil)  # arbitrary object: refused by weights_only
    with pytest.raises(AuditInputError, match="weights_only"):
        MODELS.create("resnet18", weights=evil).build((3, 64, 64), 3)


@pytest.mark.parametrize("name", [n for n in MODELS.list() if "weights" in MODELS.get(n).Params.model_fields])
def test_a_weights_file_enters_the_task_key_by_its_contents(name, tmp_path):
    """An edited weights file at the same path must not get the task model and cells cached for the old
    weights (nor their seeds); a moved copy keeps its key. The key once held the path: a config's weights
    in a fresh temporary folder drew other seeds on every run."""
    from audit.config import build_config
    from audit.tasks import task_key

    def key(path):
        model = {"name": name, "weights": str(path), **({"arch": "resnet18"} if name == "torchvision" else {})}
        config = build_config({"dataset": {"name": "synthetic", "n": 60}, "model": model, "cut_points": ["x"],
                               "defenses": ["none"], "attacks": ["attribute"]})
        return task_key(config.tasks[0], 0)

    first, moved = tmp_path / "a.pt", tmp_path / "elsewhere" / "b.pt"
    torch.save({"w": torch.zeros(3)}, first)
    moved.parent.mkdir()
    moved.write_bytes(first.read_bytes())
    original = key(first)
    assert key(moved) == original
    torch.save({"w": torch.ones(3)}, first)
    assert key(first) != original
