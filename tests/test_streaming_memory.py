"""Streaming over memory-mapped features: chunked statistics equal the whole-array ones, a loop over a
mapped split keeps only about ``RELEASE_EVERY`` bytes of it resident, and a plugin's in-place write
into its (copy-on-write) features is never discarded."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.core import feature_store
from audit.core.chunked import channel_stats, column_stats, element_stats, mean_square
from audit.core.feature_store import free_memory, open_array, release_pages
from audit.core.profile import current_rss_mb
from audit.core.training import predict, tensor_loader


def resident_bytes(t: torch.Tensor) -> int:
    """Rss of the mapping holding ``t`` (from /proc/self/smaps)."""
    ptr = t.untyped_storage().data_ptr()
    inside = False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split(" ", 1)[0]
            if "-" in head and ":" not in head:
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= ptr < hi
            elif inside and line.startswith("Rss:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("tensor is not in a mapping")


@pytest.fixture
def mapped(tmp_path):
    z = np.random.default_rng(0).standard_normal((2048, 4, 32, 32), dtype=np.float32)  # 32 MB, 16 KB per row
    np.save(tmp_path / "z.npy", z)
    return torch.from_numpy(z), open_array(tmp_path / "z.npy", max_ram_mb=0)


def test_chunked_statistics_equal_the_whole_array_ones(mapped):
    z, _ = mapped
    rows = torch.randperm(2048, generator=torch.Generator().manual_seed(1))[:100]
    flat = z.flatten(1)
    mean, std = column_stats(flat, rows, chunk=7)
    torch.testing.assert_close(mean, flat[rows].mean(0), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(std, flat[rows].std(0), atol=1e-6, rtol=1e-5)
    mean, std = channel_stats(z, rows, chunk=7)
    torch.testing.assert_close(mean, z[rows].mean((0, 2, 3), keepdim=True), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(std, z[rows].std((0, 2, 3), keepdim=True), atol=1e-6, rtol=1e-5)
    m, v = element_stats(z, chunk=7)
    assert m == pytest.approx(float(z.double().mean()), abs=1e-9)
    assert v == pytest.approx(float(z.double().var()), rel=1e-9)
    assert mean_square(z, chunk=7) == pytest.approx(float(z.double().pow(2).mean()), rel=1e-9)


@pytest.mark.skipif(not feature_store.Path("/proc/self/smaps").exists(), reason="needs Linux /proc/self/smaps")
def test_a_loop_over_a_mapped_split_keeps_little_of_it_resident(mapped, monkeypatch):
    z, m = mapped
    release_pages(m)
    monkeypatch.setattr(feature_store, "RELEASE_EVERY", 1 << 20)  # 64 rows of 16 KB
    bound = 8 << 20  # of 32 MB read: RELEASE_EVERY, a batch, and the 2 MB pages of file huge pages
    pool = torch.nn.AdaptiveAvgPool2d(1)  # a computed output, not a view of the mapped rows
    torch.testing.assert_close(predict(pool, m, batch_size=8), pool(z))
    assert resident_bytes(m) <= bound
    for (batch,) in tensor_loader(m, batch_size=64, shuffle=True):
        assert batch.shape == (64, 4, 32, 32)
    assert resident_bytes(m) <= bound
    monkeypatch.setattr(feature_store, "RELEASE_EVERY", 1 << 40)  # never released: the whole split stays
    predict(pool, m, batch_size=8)
    assert resident_bytes(m) >= 32 << 20


@pytest.mark.skipif(not feature_store.Path("/proc/self/smaps").exists(), reason="needs Linux /proc/self/smaps")
def test_the_defense_pca_reads_a_mapped_split_in_blocks(mapped, monkeypatch):
    """pca_noise / siamese fit their PCA on the whole task-train split (3.6 GB at UTKFace conv1): the basis and
    the coefficients come from row blocks, leaving little of a mapped split resident, and equal the in-memory
    ones."""
    from defenses.noise import PCAProjection

    z, m = mapped
    release_pages(m)
    monkeypatch.setattr(feature_store, "RELEASE_EVERY", 1 << 20)
    monkeypatch.setattr("audit.core.chunked.FLOAT32_BLOCK_BYTES", 1 << 20)  # blocks of 64 rows
    pca = PCAProjection.fit(m, 8, seed=3)
    coefficients = pca.coefficients(m)
    assert resident_bytes(m) <= 8 << 20  # of 32 MB
    whole = PCAProjection.fit(z, 8, seed=3)
    torch.testing.assert_close(pca.basis, whole.basis)
    torch.testing.assert_close(coefficients, pca(z), atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not feature_store.Path("/proc/self/statm").exists(), reason="needs Linux /proc/self/statm")
def test_shuffled_rows_of_a_mapped_split_stay_within_the_release_budget(tmp_path, monkeypatch):
    """Reading a row maps more than the row (the large folio around it: 2 MB on this kernel), so the
    release follows the file-backed RSS, not the bytes read: 256 rows of 256 KB (64 MB) in shuffled
    batches of 4 (1 MB read per batch) with an 8 MB budget hold at most budget + a batch's folios."""
    np.save(tmp_path / "big.npy", np.ones((256, 64, 32, 32), dtype=np.float32))
    m = open_array(tmp_path / "big.npy", max_ram_mb=0)
    release_pages(m)
    monkeypatch.setattr(feature_store, "RELEASE_EVERY", 8 << 20)
    most = 0
    for (batch,) in tensor_loader(m, batch_size=4, shuffle=True):
        assert float(batch.sum()) == 4 * 64 * 32 * 32
        most = max(most, resident_bytes(m))
    assert most <= 24 << 20, most / 2**20


@pytest.mark.parametrize("scan", ["pagemap", "smaps"])
def test_an_in_place_write_into_mapped_features_survives_a_release(mapped, tmp_path, scan, monkeypatch):
    """The written mapping is found (PAGEMAP_SCAN on Linux 6.7+, else /proc/self/smaps), not a clean one,
    and left alone by the release."""
    if scan == "smaps":
        monkeypatch.setattr(feature_store, "_has_copied_pages", lambda lo, hi: None)
    z, m = mapped
    clean = open_array(tmp_path / "z.npy", max_ram_mb=0)  # the same file, read only
    m[3, 1, 2, 2] = 1234.5  # copy on write: the file is untouched
    assert float(clean.sum()) == pytest.approx(float(z.double().sum()), rel=1e-4)
    if feature_store.Path("/proc/self/smaps").exists():
        written = {lo for lo, hi in feature_store._MAPPINGS.items() if lo <= m.data_ptr() < hi}
        assert len(written) == 1 and len(feature_store._MAPPINGS) >= 2
        assert feature_store._copied_on_write(list(feature_store._MAPPINGS.items())) == written
    release_pages()
    assert float(m[3, 1, 2, 2]) == 1234.5
    assert float(m[4, 0, 0, 0]) == float(z[4, 0, 0, 0])


@pytest.mark.skipif(not feature_store.Path("/proc/self/statm").exists(), reason="needs Linux /proc/self/statm")
def test_free_memory_frees_a_tensor_kept_by_a_reference_cycle():
    """A 300 MB tensor reachable only from a reference cycle stays resident until the cyclic collector
    runs; free_memory runs it."""
    import gc

    gc.collect()
    gc.disable()
    try:
        before = current_rss_mb()
        holder: dict = {"tensor": torch.ones(75 * 2**20)}  # 300 MB, every page written
        holder["self"] = holder  # the cycle
        del holder
        assert current_rss_mb() > before + 250  # unreachable, but not freed: no collection has run
        free_memory()
        assert current_rss_mb() < before + 50
    finally:
        gc.enable()


@pytest.mark.skipif(not feature_store.Path("/proc/self/statm").exists(), reason="needs Linux /proc/self/statm")
def test_a_full_collection_is_asked_for_once_the_rss_has_grown():
    """The runner's between-stage collection (0.2 s) runs only after FULL_COLLECT_GROWTH (256 MB) of RSS growth."""
    free_memory()
    assert not feature_store.rss_grew()
    grown = torch.ones(80 * 2**20)  # 320 MB, every page written
    assert feature_store.rss_grew()
    del grown
    free_memory(full=False)  # the RSS seen lower again: no full collection needed
    assert not feature_store.rss_grew()


@pytest.mark.parametrize("defense, rows_per_call", [("noise", 3), ("datamix", 512)])
def test_release_calls_are_bytes_bounded_unless_the_defense_mixes_rows(monkeypatch, defense, rows_per_call):
    """A release over a split calls the defense on at most EVAL_BATCH_BYTES of features (here 3 rows) with
    the same draws as one 512-row call; a mixing defense (DataMix: groups inside a call) keeps 512-row calls."""
    from audit.core import training
    from audit.pipeline import release_all
    from defenses import DEFENSES

    x = torch.randn(20, 16)  # (torch's Gaussian stream splits exactly at multiples of 16 draws)
    features = torch.randn(20, 16)
    monkeypatch.setattr(training, "EVAL_BATCH_BYTES", 3 * 16 * 4)
    d = DEFENSES.create(defense)
    calls = []
    if defense == "noise":
        from defenses.noise import AddNoise
        d.noise = AddNoise(0.5, "gaussian", torch.Generator().manual_seed(0), always=True)
        d.edge = torch.nn.Identity()
        monkeypatch.setattr(d, "release", lambda x, f=None, _r=type(d).release: calls.append(len(x)) or _r(d, x, f))
        small = release_all(d, x, features)
        d.noise.generator.manual_seed(0)
        assert torch.equal(small, release_all(d, x, features, batch_size=512))
        assert calls[:-1] == [3] * 6 + [2] and calls[-1] == 20
    else:
        assert type(d).mixes_rows
        from audit.pipeline import RELEASE_BATCH
        assert RELEASE_BATCH == rows_per_call


def test_a_defense_running_its_own_edge_is_released_in_batches_sized_by_the_edges_activations(monkeypatch):
    """siamese / nopeek release their fine-tuned edge on the inputs: a batch is sized by that edge's largest
    activation (here the conv's 8 x 8 x 8 floats = 2 KiB a row, so 5 rows in a 10 KiB budget), not by its small
    output (32 floats a row: 80 rows would fit). At UTKFace pool2, 512-row calls held 5.2 GB."""
    from torch import nn

    from audit.core import training
    from audit.pipeline import predict_all, release_all
    from defenses import DEFENSES

    monkeypatch.setattr(training, "EVAL_BATCH_BYTES", 5 * 8 * 8 * 8 * 4)
    d = DEFENSES.create("nopeek")
    assert type(d).runs_edge
    d.edge = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.AvgPool2d(4))
    d.cloud = nn.Sequential(nn.Flatten(), nn.Linear(32, 2))
    x = torch.randn(23, 1, 8, 8)
    calls = []
    monkeypatch.setattr(d, "release", lambda x, f=None, _r=type(d).release: calls.append(len(x)) or _r(d, x, f))
    released = release_all(d, x, torch.zeros(23, 8, 2, 2))
    assert calls == [5, 5, 5, 5, 3]
    with torch.no_grad():
        assert torch.allclose(released, d.edge(x), atol=1e-6)
    assert predict_all(d, x, torch.zeros(23, 8, 2, 2)).shape == (23, 2) and calls[5:] == [5, 5, 5, 5, 3]
