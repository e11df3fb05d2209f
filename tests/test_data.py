import warnings

import pytest
import torch

from audit.core.data import DATASETS, split_indices
from audit.core.data.synthetic import bayes_private_accuracy
from audit.core.errors import AuditInputError
from tests.conftest import UTKFACE, requires_utkface


def test_splits_are_disjoint_cover_and_depend_on_seed():
    a = split_indices(1000, {"train": 0.5, "aux": 0.25, "test": 0.25}, seed=0)
    b = split_indices(1000, {"train": 0.5, "aux": 0.25, "test": 0.25}, seed=1)
    allidx = torch.cat(list(a.values()))
    assert allidx.numel() == 1000 and allidx.unique().numel() == 1000
    assert [len(v) for v in a.values()] == [500, 250, 250]
    assert not torch.equal(a["test"], b["test"])
    assert torch.equal(a["test"], split_indices(1000, {"train": 0.5, "aux": 0.25, "test": 0.25}, seed=0)["test"])


def test_synthetic_planted_strength_is_the_truth():
    for strength, low, high in [(0.0, 0.45, 0.55), (0.12, 0.9, 0.97), (0.3, 0.99, 1.0)]:
        ds = DATASETS.create("synthetic", n=2000, strength=strength)
        data = ds.load(None)
        assert data.x.shape == (2000, 1, 16, 16)
        acc = bayes_private_accuracy(data.x, data.labels["secret"], ds.params)
        assert low <= acc <= high, (strength, acc)


def test_digits_labels():
    data = DATASETS.create("digits", primary="parity", private=["ink", "digit"]).load(None)
    assert data.x.shape == (1797, 1, 8, 8) and 0 <= data.x.min() and data.x.max() <= 1
    assert torch.equal(data.labels["parity"], data.labels["digit"] % 2)
    # ink terciles are balanced within every digit class
    for d in range(10):
        counts = torch.bincount(data.labels["ink"][data.labels["digit"] == d], minlength=3)
        assert counts.max() - counts.min() <= 1


def test_primary_cannot_be_private():
    with pytest.raises(AuditInputError, match="both the primary label and a private one"):
        DATASETS.create("digits", primary="digit", private=["digit"]).load(None)


def _jpeg(path, color):
    from PIL import Image

    Image.new("RGB", (40, 40), color).save(path, format="JPEG")


def test_utkface_folder_of_same_naming(tmp_path, _private_cache):
    names = {
        "25_0_1_20170116174525125.jpg.chip.jpg": (200, 10, 10),
        "70_1_3_20170109150557335.jpg.chip.jpg": (10, 200, 10),
        "8_1_0_20170109204326779.jpg.chip.jpg": (10, 10, 200),
        "61_1_20170109142408075.jpg.chip.jpg": (0, 0, 0),  # malformed: race missing
        "30_5_0_20170109142408075.jpg.chip.jpg": (0, 0, 0),  # gender out of range
    }
    for name, color in names.items():
        _jpeg(tmp_path / name, color)
    (tmp_path / "40_0_2_20170109142408075.jpg.chip.jpg").write_bytes(b"not a jpeg")
    ds = DATASETS.create("utkface", root=tmp_path, image_size=16, private=["race", "age_bucket"])
    with pytest.warns(UserWarning) as caught:
        data = ds.load(_private_cache)
    messages = " | ".join(str(w.message) for w in caught)
    assert "61_1_20170109142408075.jpg.chip.jpg" in messages and "30_5_0" in messages and "40_0_2" in messages
    assert data.x.shape == (3, 3, 16, 16) and type(ds).input_numel(ds.params) == data.x[0].numel()
    order = sorted(n for n in names if n.count("_") == 3 and not n.startswith(("61_", "30_")))
    by_name = dict(zip(order, range(3)))
    i = by_name["70_1_3_20170109150557335.jpg.chip.jpg"]
    assert data.labels["gender"][i] == 1 and data.labels["race"][i] == 3 and data.labels["age_bucket"][i] == 3
    assert data.x[i, 1].mean() > data.x[i, 0].mean()  # the green image
    # the second load (as the audit's, after the preflight check's) comes from the cache, is identical, and
    # does not warn about the same files again, even after a filter change reset Python's once-per-location rule
    with warnings.catch_warnings(record=True) as again_caught:
        warnings.simplefilter("always")
        again = ds.load(_private_cache)
    assert torch.equal(again.x, data.x)
    assert [str(w.message) for w in again_caught if "UTKFace" in str(w.message)] == []


def test_the_task_key_holds_the_utkface_images_not_the_folders_path(tmp_path):
    """The same images in another folder (another checkout, a relative --set path) give the same task model,
    cells and seeds; an edited, added or renamed image (its name holds its labels) gives a new key."""
    import shutil

    from audit.config import build_config
    from audit.tasks import task_key

    def key(root):
        config = build_config({"dataset": {"name": "utkface", "root": str(root), "image_size": 16},
                               "model": {"name": "small_cnn"}, "cut_points": ["conv1"], "defenses": ["none"],
                               "attacks": ["attribute"]})
        return task_key(config.tasks[0], 0)

    first = tmp_path / "a"
    first.mkdir()
    for name, color in {"25_0_1_20170116174525125.jpg.chip.jpg": (200, 10, 10),
                        "70_1_3_20170109150557335.jpg.chip.jpg": (10, 200, 10)}.items():
        _jpeg(first / name, color)
    copy = tmp_path / "elsewhere" / "b"
    shutil.copytree(first, copy)
    assert key(first) == key(copy) == key(tmp_path / "elsewhere" / ".." / "a")
    before = key(copy)
    _jpeg(copy / "25_0_1_20170116174525125.jpg.chip.jpg", (0, 0, 0))  # edited in place: same name and folder
    from audit.core.data import utkface
    utkface._FOLDER_KEYS.clear()  # (within one process the folder is read once until it changes)
    edited = key(copy)
    assert edited != before
    (copy / "25_0_1_20170116174525125.jpg.chip.jpg").rename(copy / "25_1_1_20170116174525125.jpg.chip.jpg")
    assert key(copy) not in (before, edited)  # a renamed image: a new label, a new key (the folder changed)
    assert key(tmp_path / "missing") != key(first)  # no folder: its path stays in the key; loading says why


def test_a_torchvision_sets_root_is_not_in_the_task_key():
    from audit.config import build_config
    from audit.tasks import task_key

    def key(**dataset):
        config = build_config({"dataset": {"name": "cifar10", **dataset}, "model": {"name": "small_cnn"},
                               "cut_points": ["conv1"], "defenses": ["none"], "attacks": ["attribute"]})
        return task_key(config.tasks[0], 0)

    assert key(root="/data/cifar") == key(root="/elsewhere/cifar")
    assert key(root="/data/cifar", train=False) != key(root="/data/cifar")  # which part still counts


def test_utkface_missing_folder():
    with pytest.raises(AuditInputError, match="does not exist.*dataset.root"):
        DATASETS.create("utkface", root="/no/such/folder").load(None)


@requires_utkface()
def test_utkface_development_split_skips_its_two_malformed_names(_private_cache, monkeypatch):
    from audit.core.data import utkface

    monkeypatch.setattr(utkface, "_WARNED", set())  # other tests of this process may have loaded the folder
    ds = DATASETS.create("utkface", root=UTKFACE, image_size=16, max_samples=None)
    with pytest.warns(UserWarning, match="malformed file name") as caught:
        files = ds._files()
    assert len([w for w in caught if "malformed" in str(w.message)]) == 2
    assert len(files) == 6861 - 2


def test_csv(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,label,secret\n1,2,yes,x\n3,4,no,y\n5,6,yes,y\n7,8,no,x\n")
    data = DATASETS.create("csv", path=path, label="label", private=["secret"]).load(None).fitted(torch.arange(4))
    assert data.x.shape == (4, 2) and abs(float(data.x.mean())) < 1e-6
    assert data.labels["label"].tolist() == [1, 0, 1, 0] and data.classes["label"] == ["no", "yes"]
    path.write_text("a,b,label,secret\n1,2,yes,x\n3,4,,y\n")
    with pytest.raises(AuditInputError, match=r"row 3, label column 'label': missing value"):
        DATASETS.create("csv", path=path, label="label", private=["secret"]).load(None)
    with pytest.raises(AuditInputError, match=r"no column 'sekret'"):
        DATASETS.create("csv", path=path, label="label", private=["sekret"]).load(None)


def test_torchvision_sets_never_download(tmp_path):
    for name in ("cifar10", "mnist", "celeba"):
        with pytest.raises(AuditInputError, match="never downloads"):
            DATASETS.create(name, root=tmp_path).load(None)


def test_mnist_from_local_files(tmp_path):
    import numpy as np

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    n = 30
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(n, 28, 28), dtype=np.uint8)
    labels = np.arange(n, dtype=np.uint8) % 10
    for prefix in ("train", "t10k"):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            np.array([0, 0, 8, 3], dtype=np.uint8).tobytes() + np.array([n, 28, 28], dtype=">i4").tobytes() + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            np.array([0, 0, 8, 1], dtype=np.uint8).tobytes() + np.array([n], dtype=">i4").tobytes() + labels.tobytes())
    data = DATASETS.create("mnist", root=tmp_path).load(None)
    assert data.x.shape == (n, 1, 28, 28) and data.labels["digit"].tolist() == labels.tolist()
    assert DATASETS.get("mnist").input_numel(DATASETS.get("mnist").Params(root=tmp_path)) == data.x[0].numel()


@pytest.mark.parametrize("name, params", [("synthetic", {"n": 40, "image_size": 8, "channels": 3}), ("digits", {})])
def test_input_numel_is_what_loading_gives(name, params):
    """What a dataset says of its input size before loading (huge pages are decided on it) is what it loads;
    a plugin that cannot know says None."""
    ds = DATASETS.create(name, **params)
    assert type(ds).input_numel(ds.params) == ds.load(None).x[0].numel()
    assert DATASETS.get("csv").input_numel(None) is None
