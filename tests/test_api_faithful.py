"""The Python API as a first-class path (issue 21): it logs progress like the CLI, its default attacks are the
label family's strongest members, and a feature dump carries the audit's split and reproduces its records."""
import logging

import pytest
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from audit import Audit
from audit.core.data import DATASETS

CUTS = ["1", "3"]


def planted(n=600, seed=0):
    """(x (n, 8), primary y, private s in 3 classes written into x's first three columns)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=gen)
    s = torch.randint(0, 3, (n,), generator=gen)
    x[:, :3] += 1.5 * nn.functional.one_hot(s, 3)
    y = (x[:, 3] + x[:, 4] > 0).long()
    return TensorDataset(x, y, s)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))


@pytest.fixture(scope="module")
def own_split(tmp_path_factory):
    """An audit on the data's own train/val/test parts (200 rows each: not the seeded 0.5/0.25/0.25), its
    report, a dump of its features and the report of a `features` audit of that dump."""
    tmp = tmp_path_factory.mktemp("own_split")
    ds = planted()
    parts = {"train": Subset(ds, range(0, 200)), "val": Subset(ds, range(200, 400)), "test": Subset(ds, range(400, 600))}
    audit = Audit(model=mlp(), data=parts, private=["s"], cut_points=CUTS, n_boot=100, quiet=True)
    full = audit.run(tmp / "full")
    dump = audit.dump_features(tmp / "dump.npz")
    again = Audit(data={"name": "features", "path": str(dump)}, cut_points=CUTS, n_boot=100, quiet=True).run(tmp / "dump")
    return full, dump, again


def test_default_attacks_are_the_attribute_head_and_the_linear_probe(own_split):
    full, _, _ = own_split
    assert {r["attack"] for r in full["results"]} == {"attribute", "attribute_linear"}
    bacc = [r for r in full["results"] if r["metric"] == "balanced_accuracy"]
    assert len(bacc) == 4 and all(r["status"] == "ok" and r["ci95"][0] > 1 / 3 for r in bacc)  # planted s found


def test_report_records_the_given_split(own_split):
    full, _, again = own_split
    for report in (full, again):
        assert report["config"]["tasks"][0]["splits"] == "given"
        assert report["tasks"][0]["splits"] == "given" and report["tasks"][0]["n"] == {"train": 200, "aux": 200, "test": 200}
    assert again["tasks"][0]["split_origin"] == {"splits": "given"}


def test_a_dump_of_an_own_split_audit_reproduces_its_records_exactly(own_split):
    full, dump, again = own_split
    key = lambda r: (r["cut_point"], r["attack"], r["target"], r["metric"])  # noqa: E731
    reference = {key(r): r for r in full["results"]}
    assert len(again["results"]) == len(reference) == 12
    for r in again["results"]:
        ref = reference[key(r)]
        assert (r["value"], r["ci95"], r["n_eval"]) == (ref["value"], ref["ci95"], ref["n_eval"]), key(r)
    loaded = DATASETS.create("features", path=dump).load(None)
    assert [loaded.splits[p].tolist() for p in ("train", "aux", "test")] == [
        list(range(0, 200)), list(range(200, 400)), list(range(400, 600))]
    assert DATASETS.create("features", path=dump, splits="seed").load(None).splits is None


@pytest.fixture
def bare_logger(monkeypatch):
    """The `splitaudit` logger as a fresh Python session has it: no handler, level unset."""
    logger = logging.getLogger("splitaudit")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    monkeypatch.setattr(logger, "propagate", True)
    return logger


def test_the_api_logs_per_cell_lines_by_default_and_nothing_when_quiet(bare_logger, tmp_path, caplog):
    """Through the root logger's handlers when it has some (here pytest's: caplog), at INFO by default."""
    ds = planted(300)
    common = {"model": mlp(), "data": ds, "private": ["s"], "cut_points": ["1"], "attacks": ["attribute_linear"],
              "n_boot": 100}
    Audit(**common).run(tmp_path / "loud")
    lines = [r.getMessage() for r in caplog.records if r.name == "splitaudit"]
    assert lines[0] == "audit 'audit': 1 cells" and lines[-1].startswith("audit 'audit' finished: 1 cells"), lines
    assert any(line.startswith("[1/1] TensorDataset/Sequential seed=0 cut=1 defense=none attack=attribute_linear: "
                               "s balanced_accuracy") for line in lines), lines
    assert bare_logger.level == logging.NOTSET  # restored after the run
    caplog.clear()
    Audit(**common, quiet=True).run(tmp_path / "quiet")
    assert [r for r in caplog.records if r.name == "splitaudit" and r.levelno < logging.WARNING] == []


def test_without_logging_set_up_the_api_writes_lines_to_stderr_like_the_cli(bare_logger, monkeypatch, capsys):
    from audit.api import api_logging

    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # a plain `python script.py`
    with api_logging(None, None):
        bare_logger.info("[1/1] a cell")
        bare_logger.debug("hidden")
    with api_logging(None, True):
        bare_logger.debug("shown with verbose=True")
    with api_logging(True, None):
        bare_logger.info("hidden with quiet=True")
    assert capsys.readouterr().err == "[1/1] a cell\nshown with verbose=True\n"
    assert bare_logger.handlers == [] and bare_logger.propagate
