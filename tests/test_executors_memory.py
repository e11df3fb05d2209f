"""Features on disk: written once, memory-mapped above the threshold, same values either way."""
import numpy as np
import pytest
import torch

from audit import Audit, build_config
from audit.core.feature_store import FeatureStore, is_mapped, map_batches, open_array, write_batches
from audit.executors import ProcessExecutor
from audit.merge import report_values
from tests.conftest import GRID
from tests.worker_plugins import probe_file, register


def test_feature_store_maps_large_arrays_and_keeps_small_ones_in_ram(tmp_path):
    edge = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU())
    x = torch.randn(300, 1, 16, 16)
    with torch.no_grad():
        expected = edge(x)
    big = FeatureStore(tmp_path, max_ram_mb=0.5)  # 300 x 4 x 16 x 16 float32 = 1.2 MB
    path = big.extract("key", "conv", "train", edge, x, batch_size=64)
    assert path == tmp_path / "key" / "conv" / "train.npy" and not list(path.parent.glob(".*.tmp"))
    mapped = big.load("key", "conv", "train")
    assert is_mapped(mapped) and torch.equal(mapped, expected)
    mapped[0] = 7  # copy-on-write: the plugin's tensor changes, the file does not
    assert torch.equal(big.load("key", "conv", "train"), expected)
    small = FeatureStore(tmp_path, max_ram_mb=2).load("key", "conv", "train")
    assert not is_mapped(small) and torch.equal(small, expected)
    assert big.extract("key", "conv", "train", None, None) == path  # extracted once; not recomputed


def test_map_batches_writes_large_results_to_an_unlinked_scratch_file(tmp_path):
    x = torch.arange(6000, dtype=torch.float32).reshape(1000, 6)
    out = map_batches(lambda a, b: x[a:b] * 2, 1000, tmp_path, max_ram_mb=0.01, batch_size=128)
    assert is_mapped(out) and torch.equal(out, x * 2) and not list(tmp_path.iterdir())
    inram = map_batches(lambda a, b: x[a:b] * 2, 1000, tmp_path, max_ram_mb=1, batch_size=128)
    assert not is_mapped(inram) and torch.equal(inram, x * 2)
    assert torch.equal(map_batches(lambda a, b: x[a:b], 1000, None, 0, batch_size=999), x)


def test_write_batches_is_atomic(tmp_path):
    def failing(a, b):
        if a >= 200:
            raise RuntimeError("killed mid-way")
        return torch.zeros(b - a, 3)

    with pytest.raises(RuntimeError):
        write_batches(failing, 1000, tmp_path / "f.npy", batch_size=100)
    assert not list(tmp_path.iterdir())
    write_batches(lambda a, b: torch.ones(b - a, 3, dtype=torch.float64), 10, tmp_path / "f.npy", batch_size=4)
    assert np.load(tmp_path / "f.npy").dtype == np.float64 and open_array(tmp_path / "f.npy", 1).shape == (10, 3)


def test_written_feature_files_are_the_npy_of_the_rows_byte_for_byte(tmp_path):
    x = torch.randn(37, 3, 4, 5)
    write_batches(lambda a, b: x[a:b], 37, tmp_path / "f.npy", batch_size=8)  # a partial last batch
    np.save(tmp_path / "ref.npy", x.numpy())
    assert (tmp_path / "f.npy").read_bytes() == (tmp_path / "ref.npy").read_bytes()
    half = x.half()
    assert torch.equal(map_batches(lambda a, b: half[a:b], 37, tmp_path / "s", max_ram_mb=0, batch_size=8), half)


def test_an_audit_with_every_feature_mapped_gives_the_reference_records(grid_reference, tmp_path):
    """memory.feature_ram_mb: 0 maps every feature array (edge and released) from disk: same results."""
    register()
    _, reference = grid_reference
    config = build_config({**GRID, "memory": {"feature_ram_mb": 0}})
    assert config.config_hash() == build_config(GRID).config_hash()  # memory settings are not results
    report = Audit(config).run(tmp_path, callbacks=[], executor=ProcessExecutor(1, 1, register))
    values, ref = report_values(report), report_values(reference)
    assert values["results"] == ref["results"] and values["tasks"] == ref["tasks"]
    for r in report["results"]:
        if r["attack"] == "test_probe":
            assert probe_file(tmp_path, r)[2], "the attack got features held in RAM"
    assert not (tmp_path / "features").exists()  # each cut point's files go when its groups are done
