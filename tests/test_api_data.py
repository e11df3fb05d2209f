"""Python data for the API: LightningDataModules and torch Datasets, tuple or dict batches, own or pooled splits."""
import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from audit import Audit, TorchData
from audit.core.errors import AuditInputError


def _tensors(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g), torch.randint(0, 2, (n,), generator=g), torch.randint(0, 3, (n, 2), generator=g)


class DictData(torch.utils.data.Dataset):
    def __init__(self, x, y, s):
        self.x, self.y, self.s = x, y, s

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"img": self.x[i], "gender": self.y[i], "race": self.s[i, 0], "age": self.s[i, 1]}


class FacesModule(L.LightningDataModule):
    """train / val / test with shuffling and dict batches, like a real project's datamodule."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def setup(self, stage):
        self.calls.append(stage)
        x, y, s = _tensors(90)
        self.parts = {name: DictData(x[i::3], y[i::3], s[i::3]) for i, name in enumerate(["train", "val", "test"])}

    def train_dataloader(self):
        return DataLoader(self.parts["train"], batch_size=8, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.parts["val"], batch_size=8)

    def test_dataloader(self):
        return DataLoader(self.parts["test"], batch_size=8)


def test_datamodule_own_splits_in_order_without_shuffling():
    data = TorchData(FacesModule(), private=["race", "age"], primary="gender", input_key="img").load()
    x, y, s = _tensors(90)
    assert {k: v.tolist() for k, v in data.splits.items()} == {
        "train": list(range(0, 30)), "aux": list(range(30, 60)), "test": list(range(60, 90))}
    assert torch.equal(data.x[:30], x[0::3]) and torch.equal(data.x[30:60], x[1::3])  # train read in order
    assert torch.equal(data.labels["race"][60:], s[2::3, 0]) and data.private == ["race", "age"]
    assert data.classes["race"] == ["0", "1", "2"] and data.primary == "gender"
    pooled = TorchData(FacesModule(), private=["race"], primary="gender", input_key="img", splits="pool").load()
    assert pooled.splits is None and pooled.x.shape == (90, 3)


def test_datamodule_without_val_is_pooled_or_refused():
    class NoVal(L.LightningDataModule):
        def train_dataloader(self):
            x, y, s = _tensors(40)
            return DataLoader(TensorDataset(x, y, s[:, 0]), batch_size=16, shuffle=True)

    assert TorchData(NoVal(), private="race").load().splits is None
    with pytest.raises(AuditInputError,
                       match=r"splits='datamodule' needs train, val \(or aux\) and test parts; NoVal has: train"):
        TorchData(NoVal(), private="race", splits="datamodule").load()


@pytest.mark.parametrize("layout", ["(x,y,s)", "(x,y,S)", "(x,y,s1,s2)", "(x,y,{s})", "dict-of-datasets"])
def test_tuple_layouts(layout):
    x, y, s = _tensors()
    sources = {
        "(x,y,s)": (TensorDataset(x, y, s[:, 0]), ["race"]),
        "(x,y,S)": (TensorDataset(x, y, s), ["race", "age"]),
        "(x,y,s1,s2)": (TensorDataset(x, y, s[:, 0], s[:, 1]), ["race", "age"]),
        "(x,y,{s})": ([(x[i], y[i], {"race": s[i, 0], "age": s[i, 1]}) for i in range(len(y))], ["race", "age"]),
        "dict-of-datasets": ({"train": TensorDataset(x[:20], y[:20], s[:20]), "val": TensorDataset(x[20:40], y[20:40], s[20:40]),
                              "test": TensorDataset(x[40:], y[40:], s[40:])}, ["race", "age"]),
    }
    source, private = sources[layout]
    data = TorchData(source, private=private).load()
    assert torch.equal(data.x, x) and torch.equal(data.labels["y"], y)
    assert torch.equal(data.labels["race"], s[:, 0])
    assert (data.splits is not None) == (layout == "dict-of-datasets")


@pytest.mark.parametrize(
    ("source", "private", "message"),
    [
        (TensorDataset(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)), ["race"],
         r"batches are 2-tuples; an audit needs the private labels too"),
        (TensorDataset(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), torch.zeros(4, 2, dtype=torch.long)), ["race"],
         r"shape \(4, 2\): 2 attribute\(s\), but 1 private name\(s\) were given: \['race'\]"),
        (DictData(*_tensors(4)), ["race"], r"batch dict has no key\(s\) \['x', 'y'\]; its keys: img, gender, race, age"),
        (TensorDataset(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), torch.full((4,), 0.5)), ["race"],
         "label 'race' holds non-integer values"),
        (TensorDataset(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), -torch.ones(4, dtype=torch.long)), ["race"],
         "label 'race' holds negative values"),
        ({"train": TensorDataset(torch.zeros(4, 2)), "holdout": None}, ["race"], "data dict key 'holdout'"),
    ],
    ids=["no-private", "column-count", "dict-keys", "float-labels", "negative", "bad-part"],
)
def test_bad_batches_are_refused(source, private, message):
    with pytest.raises(AuditInputError, match=message):
        TorchData(source, private=private).load()


def test_api_argument_errors(tmp_path):
    x, y, s = _tensors()
    with pytest.raises(AuditInputError, match=r"name the private labels"):
        Audit(model=torch.nn.Linear(3, 2), cut_points=["x"], data=TensorDataset(x, y, s[:, 0]))
    with pytest.raises(AuditInputError, match=r"needs data= and cut_points="):
        Audit(model=torch.nn.Linear(3, 2), data=TensorDataset(x, y, s[:, 0]), private="race")
    with pytest.raises(AuditInputError, match=r"either a config or model="):
        Audit({"name": "x"}, model=torch.nn.Linear(3, 2))
    wrong = Audit(model=torch.nn.Linear(3, 5), cut_points=["x"], data=TensorDataset(x, y, s[:, 0]), private="race")
    with pytest.raises(AuditInputError, match=r"logits of shape \(N, 2\); got \(2, 5\)"):
        wrong.config
    seq = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    typo = Audit(model=seq, cut_points=["3"], data=TensorDataset(x, y, s[:, 0]), private="race")
    with pytest.raises(AuditInputError, match=r"unknown cut point '3' for model 'Sequential'"):
        typo.run(tmp_path / "out", callbacks=[])


def test_report_object_and_to_frame(tmp_path):
    x, y, s = _tensors(200)
    x = x + s[:, :1].float()  # race 0..2 planted on the first input
    seq = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    report = Audit(model=seq, cut_points=["1"], data=TensorDataset(x, y, s[:, 0]), private="race",
                   attacks=["attribute_linear"], n_boot=50).run(tmp_path / "out", callbacks=[])
    assert report.records is report["results"] and len(report["results"]) == 3
    assert report["results"][0]["dataset"] == "TensorDataset" and report["results"][0]["model"] == "Sequential"
    pd = pytest.importorskip("pandas")
    frame = report.to_frame()
    assert isinstance(frame, pd.DataFrame) and len(frame) == 3
    assert {"ci95_low", "ci95_high", "utility.primary_accuracy", "cost.bytes_sent"} <= set(frame.columns)
