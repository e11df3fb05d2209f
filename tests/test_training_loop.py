"""The shared Lightning training helpers: batches gathered whole, epoch means logged once."""
from __future__ import annotations

import logging
import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from audit.core import training
from audit.core.training import ClassifierModule, EpochLog, TrainerSettings, make_trainer, tensor_loader


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("with_rows", [True, False])
def test_gathered_batches_equal_a_plain_dataloaders(shuffle, with_rows):
    """Same rows in the same order as a per-row TensorDataset DataLoader with the same seeded generator
    (so the audit's figures do not move), for every epoch."""
    x, y = torch.randn(50, 3, 4), torch.arange(50)
    rows = torch.randperm(50, generator=torch.Generator().manual_seed(1))[:37] if with_rows else None
    plain_data = TensorDataset(x, y) if rows is None else Subset(TensorDataset(x, y), rows.tolist())
    plain = DataLoader(plain_data, batch_size=8, shuffle=shuffle, generator=torch.Generator().manual_seed(3))
    ours = tensor_loader(x, y, batch_size=8, shuffle=shuffle, seed=3, rows=rows)
    for _ in range(3):  # the generator advances epoch by epoch in both
        got, want = list(ours), list(plain)
        assert len(got) == len(want) == (5 if with_rows else 7)
        for (gx, gy), (wx, wy) in zip(got, want):
            assert torch.equal(gx, wx) and torch.equal(gy, wy)
    assert not shuffle or not torch.equal(torch.cat([b[1] for b in got]), torch.cat([b[1] for b in plain]))


def test_epoch_means_are_the_sample_weighted_means_of_the_steps(caplog):
    """The logged train_loss of an epoch is the mean over its samples of the per-step losses (a last,
    smaller batch weighs less), read by EpochLog in the same epoch."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 5, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    net = nn.Linear(5, 3)
    module = ClassifierModule(net, 3, lr=0.0)  # no learning: every step's loss is the frozen net's
    with caplog.at_level(logging.INFO, logger="splitaudit"):
        trainer = make_trainer(TrainerSettings(), 2, [EpochLog("frozen head")])
        trainer.fit(module, tensor_loader(x, y, batch_size=16, shuffle=True, seed=0))
    with torch.no_grad():
        want = float(nn.functional.cross_entropy(net(x), y))  # batches of 16, 16, 8: the sample mean
    assert float(trainer.callback_metrics["train_loss"]) == pytest.approx(want, rel=1e-6)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("frozen head")]
    assert len(lines) == 2 and all(f"train_loss {want:.3f}" in line for line in lines), lines


@pytest.mark.parametrize("nvml_loads", [True, False])
def test_the_nvml_probe_is_dropped_only_where_nvml_does_not_load(monkeypatch, nvml_loads):
    """Lightning's PYTORCH_NVML_BASED_CUDA_CHECK=1 makes every optimizer step probe NVML; without NVML's
    library the variable goes (torch's answer is the same), with it the variable stays."""
    def fake_cdll(name):
        if not nvml_loads:
            raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    monkeypatch.setattr(training.ctypes, "CDLL", fake_cdll)
    before = torch.cuda.is_available()
    training.skip_nvml_probe_without_nvml.cache_clear()
    try:
        make_trainer(TrainerSettings(), 1)
    finally:
        training.skip_nvml_probe_without_nvml.cache_clear()
    assert (os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1") == nvml_loads
    assert torch.cuda.is_available() == before


class _FormatSpy(ClassifierModule):
    """Records the memory format of every training batch and of the first conv weight at each step."""

    def __init__(self, net, k):
        super().__init__(net, k)
        self.seen: list[tuple[bool, bool]] = []

    def training_step(self, batch, batch_idx):
        x, _ = batch
        weight = self.net[0].weight
        self.seen.append((x.is_contiguous(memory_format=torch.channels_last),
                          weight.is_contiguous(memory_format=torch.channels_last)))
        return super().training_step(batch, batch_idx)


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))


@pytest.mark.parametrize("channels_last", [False, True])
def test_channels_last_trains_in_that_format_and_hands_back_contiguous_weights(channels_last):
    """trainer.channels_last: every batch and conv weight in channels_last while training (none without
    it); afterwards the weights are contiguous again and the trained net equals the contiguous training's
    to float32 rounding (the same algorithm, another summation order)."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, 8, 8, generator=gen), torch.randint(0, 2, (64,), generator=gen)
    x[y == 1, 0] += 1.0  # a planted signal the net learns
    nets = {}
    for cl in (False, channels_last):
        module = _FormatSpy(_conv_net(), 2)
        torch.manual_seed(1)
        loader = tensor_loader(x, y, batch_size=16, shuffle=True)
        make_trainer(TrainerSettings(channels_last=cl), 2).fit(module, loader)
        assert module.seen == [(cl, cl)] * 8  # 2 epochs x 4 batches
        assert all(p.is_contiguous() for p in module.net.parameters())
        assert loader.dataset.memory_format is None  # the loader gathers contiguous rows again
        nets[cl] = module.net
    for a, b in zip(nets[False].parameters(), nets[channels_last].parameters()):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert not torch.equal(nets[False][0].weight, _conv_net()[0].weight)  # it did train


def test_rows_gathered_into_channels_last_equal_a_reordered_gather_and_train_the_same_net(monkeypatch):
    """RowBatches.gather with a memory format returns t[index] in that format; a channels_last training
    whose loaders gather straight into it gives bit-identical weights to one that reorders each batch."""
    x = torch.randn(40, 3, 5, 6)
    data = training.RowBatches(x, rows=torch.arange(10, 40))
    data.memory_format = torch.channels_last
    got = data.__getitems__([4, 0, 7])[0]
    assert got.is_contiguous(memory_format=torch.channels_last) and torch.equal(got, x[[14, 10, 17]])

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, 8, 8, generator=gen), torch.randint(0, 2, (64,), generator=gen)
    weights, formats = [], set()
    gather = training.RowBatches.gather
    monkeypatch.setattr(training.RowBatches, "gather",
                        lambda self, t, index: formats.add(self.memory_format) or gather(self, t, index))
    for direct in (True, False):
        if not direct:
            assert formats == {torch.channels_last}  # train and validation loaders gathered in it
            monkeypatch.setattr(training.ChannelsLast, "gather_into", lambda self, loaders: None)
        net = _conv_net()
        training.fit_classifier(net, x, y, 2, settings=TrainerSettings(channels_last=True), epochs=2, seed=0,
                                val=(x[:16], y[:16]), rows=torch.arange(16, 64))
        weights.append(torch.cat([p.flatten() for p in net.parameters()]))
    assert torch.equal(*weights)
