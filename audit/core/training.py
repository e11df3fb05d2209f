"""Lightning training shared by the task model, defense fine-tuning and attack heads.

One place builds the ``lightning.Trainer`` from the audit's trainer settings
(accelerator, devices, strategy, precision pass straight through, so users
with GPUs use them), with Lightning's own logging and bars kept quiet.
"""
from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import logging
import math
import os
import time
import warnings
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics.classification import MulticlassAccuracy

from audit.core.chunked import block_rows
from audit.core.cpu import native_bfloat16
from audit.core.feature_store import streamed
from audit.core.heap import reusing

log = logging.getLogger("splitaudit")


class TrainerSettings(BaseModel):
    """Passed to ``lightning.Trainer`` for every training in the audit."""

    model_config = ConfigDict(extra="forbid")

    accelerator: str = "auto"
    devices: int | str | list[int] = 1
    strategy: str = "auto"
    precision: str | int | None = Field(
        None, description="Lightning's precision for every training (None: 32-true). 'auto': the audited "
                          "system's trainings (task model, defenses' fine-tuning) in bf16-mixed where the device "
                          "computes bfloat16 in hardware (a CPU with AVX512-BF16 or AMX, a CUDA GPU that has it), "
                          "else 32-true; attacks always in 32-true, so the setting never weakens an attack")
    deterministic: bool | Literal["warn"] | None = None
    progress_bar: bool = False
    channels_last: bool = Field(
        False, description="train with 4-D weights and batches in channels_last memory format (ChannelsLast): "
                           "faster convolutions on CPUs; the arithmetic changes in the last bits, so trained "
                           "weights and figures move within noise")

    def for_attacks(self) -> "TrainerSettings":
        """The settings attacks train with: ``precision: auto`` becomes Lightning's default (32-true); an
        explicit precision is the user's choice for every training. (A bfloat16 `attribute` head read UTKFace
        conv1 race 0.583 against 0.603 in float32, accuracy 0.641 against 0.663, below the float32 run's CI:
        benchmarks/RESULTS.md "Training precision".)"""
        return self.model_copy(update={"precision": None}) if self.precision == "auto" else self

    def lightning_precision(self) -> str | int | None:
        """``precision`` as Lightning takes it: ``auto`` resolved on the device the trainings run on."""
        if self.precision != "auto":
            return self.precision
        return "bf16-mixed" if native_bfloat16(inference_device(self)) else None

    def precision_used(self) -> str | int:
        """What the trainings run in, as reports and cache records say it (``32-true`` when unset)."""
        return self.lightning_precision() or "32-true"


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*The number of training batches.*")
    warnings.filterwarnings("ignore", ".*GPU available but not used.*")
    warnings.filterwarnings("ignore", ".*defined a `validation_step` but have no `val_dataloader`.*")
    warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
    # defenses train with frozen parts (and batch-norm statistics) in eval mode on purpose
    warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode at the start of training.*")


@functools.cache
def skip_nvml_probe_without_nvml() -> None:
    """Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1``, so every ``torch.cuda.is_available()`` asks NVML
    for the device count, and torch's optimizers call it at every step (their CUDA-graph capture check):
    14,940 probes and 3.7 s in the default audit. Where NVML's library does not load (no NVIDIA driver)
    each probe fails and torch falls back to the CUDA runtime's count, the answer it gives without the
    variable: it is dropped, once per process, only then."""
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") != "1":
        return
    try:
        ctypes.CDLL("libnvidia-ml.so.1")  # the library torch's probe loads
    except OSError:
        del os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"]


def make_trainer(settings: TrainerSettings, max_epochs: int, callbacks: list[L.Callback] | None = None) -> L.Trainer:
    _quiet_lightning()
    skip_nvml_probe_without_nvml()
    kwargs: dict[str, Any] = dict(
        max_epochs=max_epochs,
        accelerator=settings.accelerator,
        devices=settings.devices,
        strategy=settings.strategy,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=settings.progress_bar,
        enable_model_summary=False,
        callbacks=[*(callbacks or []), ReuseHeap(), *([ChannelsLast()] if settings.channels_last else [])],
        num_sanity_val_steps=0,
    )
    if (precision := settings.lightning_precision()) is not None:
        kwargs["precision"] = precision
    if settings.deterministic is not None:
        kwargs["deterministic"] = settings.deterministic
    return L.Trainer(**kwargs)


def inference_device(settings: TrainerSettings) -> torch.device:
    """Where plain (non-Lightning) forward passes run: CUDA when asked for and present."""
    skip_nvml_probe_without_nvml()
    if settings.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


EVAL_BATCH_BYTES = 64 << 20  # float32 input bytes of one evaluation batch (64 rows of UTKFace conv1 features)


def eval_batch_size(x: torch.Tensor, cap: int = 512) -> int:
    """Rows per evaluation batch of inputs ``x`` (N, ...): ``cap``, or fewer when ``cap`` rows would exceed
    ``EVAL_BATCH_BYTES`` (a cloud validated on 343 UTKFace conv1 features in one batch held 1.4 GB of
    activations)."""
    return min(cap, block_rows(x, 4, EVAL_BATCH_BYTES))


def activation_batch_size(module: nn.Module, x: torch.Tensor, cap: int = 512) -> int:
    """Rows per evaluation batch of ``module`` on inputs ``x`` (N, ...), sized by the largest output of any of
    its submodules on one row (float32 bytes), not by its input or output: ``cap``, or fewer when ``cap`` rows
    of that activation would exceed ``EVAL_BATCH_BYTES``. A fine-tuned UTKFace edge to pool2 released in
    512-row batches (sized by its small output) held 5.2 GB: its conv1 and conv2 outputs are 1 MB per image."""
    largest = 0

    def hook(_module: nn.Module, _inputs: Any, out: Any) -> None:
        nonlocal largest
        if isinstance(out, torch.Tensor):
            largest = max(largest, out.numel())

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    was_training = module.training
    try:
        with torch.no_grad():
            module.eval()(x[:1])
    finally:
        module.train(was_training)
        for handle in handles:
            handle.remove()
    return max(1, min(cap, EVAL_BATCH_BYTES // max(1, 4 * largest)))


class RowBatches(Dataset):
    """The rows of ``tensors`` (all, or only ``rows``: an index tensor) for a DataLoader that asks for
    a whole batch at once (``__getitems__``): one gather per tensor, where a per-row dataset and
    ``default_collate`` cost ~10 us a row. Selecting rows copies nothing: a memory-mapped split stays on disk."""

    memory_format: torch.memory_format | None = None  # 4-D rows gathered in this format (:class:`ChannelsLast`)

    def __init__(self, *tensors: torch.Tensor, rows: torch.Tensor | None = None):
        self.tensors, self.rows = tensors, rows

    def __len__(self) -> int:
        return self.tensors[0].shape[0] if self.rows is None else self.rows.numel()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[0] for t in self.__getitems__([i]))

    def __getitems__(self, positions: list[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(positions) if self.rows is None else self.rows[positions]
        batch = tuple(self.gather(t, index) for t in self.tensors)
        streamed(*batch)  # memory-mapped features leave the RSS as read
        return batch

    def gather(self, t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``t[index]``; a 4-D one written straight into ``memory_format`` when set (a 128-row UTKFace conv1
        batch: 48 ms, where gathering and then reordering took 56 + 42 ms)."""
        if self.memory_format is None or t.ndim != 4:
            return t[index]
        out = torch.empty((index.numel(), *t.shape[1:]), dtype=t.dtype, memory_format=self.memory_format)
        return torch.index_select(t, 0, index, out=out)


def gathered(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The collate function of a :class:`RowBatches` loader: its batches come gathered."""
    return batch


def tensor_loader(*tensors: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0,
                  rows: torch.Tensor | None = None) -> DataLoader:
    """Batches of the rows of ``tensors`` (all of them, or only ``rows``, an index tensor), in the order
    of a plain shuffled (or sequential) DataLoader with a generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(RowBatches(*tensors, rows=rows), batch_size=batch_size, shuffle=shuffle, generator=gen,
                      collate_fn=gathered)


@torch.no_grad()
def predict(module: nn.Module, x: torch.Tensor, batch_size: int | None = None, device: torch.device | None = None,
            rows: torch.Tensor | None = None) -> torch.Tensor:
    """``module(x)`` (``module(x[rows])`` with an index tensor ``rows``) in eval mode, in batches
    gathered one at a time (default 256 rows, fewer for large inputs: :func:`eval_batch_size`); the
    result is on the CPU."""
    batch_size = batch_size or eval_batch_size(x, cap=256)
    device = device or torch.device("cpu")
    was_training = module.training
    module.eval().to(device)
    n = x.shape[0] if rows is None else rows.numel()

    def batch(i: int) -> torch.Tensor:
        out = x[i : i + batch_size] if rows is None else x[rows[i : i + batch_size]]
        streamed(out)
        return out

    out = [module(batch(i).to(device)).cpu() for i in range(0, n, batch_size)]
    module.train(was_training)
    if device.type != "cpu":
        module.cpu()
    return torch.cat(out)


def class_weights(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights (mean 1 over present classes) for a balanced loss."""
    counts = torch.bincount(y, minlength=num_classes).float()
    w = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp_min(1)), torch.zeros_like(counts))
    return w


class EpochMeanModule(L.LightningModule):
    """A LightningModule whose training steps :meth:`record` values; their means over the epoch's
    samples are logged once, at its end. Lightning's ``self.log`` costs about 1 ms of bookkeeping a call
    on this CPU, as long as a whole training step of a small attack head."""

    def __init__(self):
        super().__init__()
        self._sums: dict[str, tuple[torch.Tensor, int]] = {}

    def record(self, batch_size: int, **values: torch.Tensor) -> None:
        """Add one training step's ``values`` (scalars), each weighing ``batch_size`` samples."""
        for name, value in values.items():
            total, count = self._sums.get(name, (0.0, 0))
            self._sums[name] = (total + value.detach() * batch_size, count + batch_size)

    def epoch_means(self) -> dict[str, float]:
        """The recorded values' sample-weighted means over the epoch so far."""
        return {name: float(total / count) for name, (total, count) in self._sums.items()}

    batch_memory_format: torch.memory_format | None = None  # set by :class:`ChannelsLast` while training

    def on_after_batch_transfer(self, batch, dataloader_idx):
        """4-D tensors of the batch in ``batch_memory_format`` (when set)."""
        if self.batch_memory_format is None or not isinstance(batch, (tuple, list)):
            return batch
        return type(batch)(t.contiguous(memory_format=self.batch_memory_format)
                           if isinstance(t, torch.Tensor) and t.ndim == 4 else t for t in batch)

    def on_train_epoch_start(self):
        self._sums = {}

    def on_train_epoch_end(self):
        for name, value in self.epoch_means().items():
            self.log(name, value, prog_bar=True)


class ClassifierModule(EpochMeanModule):
    """Cross-entropy training of ``net``; logs val accuracy and balanced accuracy."""

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        weights: torch.Tensor | None = None,
        hflip: bool = False,
    ):
        super().__init__()
        self.net = net
        self.lr, self.weight_decay, self.hflip = lr, weight_decay, hflip
        self.register_buffer("weights", weights if weights is not None else torch.ones(num_classes))
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_bacc = MulticlassAccuracy(num_classes, average="macro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.hflip and x.ndim == 4:
            flip = torch.rand(x.shape[0], device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss = F.cross_entropy(self.net(x), y, weight=self.weights)
        self.record(x.shape[0], train_loss=loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", F.cross_entropy(logits, y), on_epoch=True, batch_size=x.shape[0])  # unweighted mean
        self.val_acc.update(logits, y)
        self.val_bacc.update(logits, y)
        self.log("val_acc", self.val_acc, on_epoch=True)
        self.log("val_bacc", self.val_bacc, on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


class KeepBest(L.Callback):
    """Keep the weights of the epoch with the best monitored validation metric; restore them at the end.
    With ``initial`` (the metric of the weights before training) those weights are a candidate too, so
    training that never improves on them leaves them as they were. ``best_epoch``: 0-based, -1 for the
    initial weights, None before any check; ``epochs_run``: how many epochs were validated."""

    def __init__(self, monitor: str, mode: str = "max", initial: float | None = None):
        self.monitor, self.sign = monitor, (1.0 if mode == "max" else -1.0)
        self.initial = initial
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.state: dict[str, torch.Tensor] | None = None
        self.epochs_run = 0

    def on_fit_start(self, trainer, pl_module):
        if self.initial is not None and math.isfinite(self.initial):
            self.best, self.best_epoch = self.sign * self.initial, -1
            self.state = copy.deepcopy(pl_module.state_dict())

    def on_validation_epoch_end(self, trainer, pl_module):
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        self.epochs_run += 1
        value = self.sign * float(value)
        if self.best is None or value > self.best:
            self.best, self.best_epoch = value, trainer.current_epoch
            self.state = copy.deepcopy(pl_module.state_dict())

    def on_fit_end(self, trainer, pl_module):
        if self.state is not None:
            pl_module.load_state_dict(self.state)


class ReuseHeap(L.Callback):
    """While a training runs, its steps reuse the C heap blocks the previous step freed instead of mapping
    fresh zero-filled pages (:func:`audit.core.heap.reusing`, ``memory.heap_reuse_mb``); the free heap is
    handed back when the training ends."""

    def __init__(self):
        self._scope = contextlib.ExitStack()

    def on_train_start(self, trainer, pl_module):
        self._scope.enter_context(reusing())

    def on_train_end(self, trainer, pl_module):
        self._scope.close()

    def on_exception(self, trainer, pl_module, exception):
        self._scope.close()


class ChannelsLast(L.Callback):
    """``trainer.channels_last``: while a training runs, the module's 4-D weights and the 4-D tensors of
    its batches (an :class:`EpochMeanModule`'s) are in channels_last memory format, so oneDNN convolutions
    run without reordering; afterwards the weights are contiguous again (inference is unchanged). UTKFace
    conv1 features (128 x 64 x 64 x 64), one Adam step of the ``plain`` attribute head: 104 vs 193 ms
    (benchmarks/RESULTS.md "channels_last")."""

    def __init__(self):
        self.datasets: set[RowBatches] = set()  # set to gather in channels_last; reset at teardown

    def setup(self, trainer, pl_module, stage):
        pl_module.to(memory_format=torch.channels_last)
        if isinstance(pl_module, EpochMeanModule):
            pl_module.batch_memory_format = torch.channels_last

    def on_train_start(self, trainer, pl_module):
        self.gather_into(trainer.train_dataloader)

    def on_validation_start(self, trainer, pl_module):
        self.gather_into(trainer.val_dataloaders)

    def gather_into(self, loaders) -> None:
        """:class:`RowBatches` loaders gather their 4-D rows in channels_last (no second reordering copy)."""
        for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
            if isinstance(getattr(loader, "dataset", None), RowBatches):
                loader.dataset.memory_format = torch.channels_last
                self.datasets.add(loader.dataset)  # validation starts every epoch: kept once

    def teardown(self, trainer, pl_module, stage):
        for dataset in self.datasets:  # a loader used again after the fit gathers as before
            dataset.memory_format = None
        self.datasets.clear()
        pl_module.to(memory_format=torch.contiguous_format)
        if isinstance(pl_module, EpochMeanModule):
            pl_module.batch_memory_format = None

    def on_exception(self, trainer, pl_module, exception):
        self.teardown(trainer, pl_module, "fit")


class EpochLog(L.Callback):
    """One INFO line per finished training epoch (long trainings are not silent when bars are off):
    the logged ``metrics`` found in ``trainer.callback_metrics``, time taken and time left."""

    def __init__(self, title: str, metrics: tuple[str, ...] = ("train_loss",)):
        self.title, self.metrics = title, metrics
        self.start = 0.0

    def on_train_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        done, total = trainer.current_epoch + 1, trainer.max_epochs
        elapsed = time.perf_counter() - self.start
        left = elapsed / done * (total - done)
        # epoch means are logged by the module after this hook: read them from it
        current = {**trainer.callback_metrics,
                   **(pl_module.epoch_means() if isinstance(pl_module, EpochMeanModule) else {})}
        values = {m: current[m] for m in self.metrics if m in current}
        text = "".join(f", {m} {float(v):.3f}" for m, v in values.items())
        log.info("%s: epoch %d/%d%s (%.0fs, ~%.0fs left)", self.title, done, total, text, elapsed, left)


def fit_classifier(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    *,
    settings: TrainerSettings,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    balanced: bool = False,
    hflip: bool = False,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    log_epochs: str | None = None,
    patience: int | None = None,
    report: dict | None = None,
    rows: torch.Tensor | None = None,
) -> nn.Module:
    """Train ``net`` (in place) to predict ``y`` from ``x`` with Lightning (only the rows ``rows`` of
    (x, y) when given: an index tensor, gathered batch by batch, no copy of x).

    With ``val`` the weights of the epoch with the best validation balanced
    accuracy are kept (early model selection on held-out data, never on test).
    With ``balanced`` the loss is weighted by inverse class frequency.
    With ``log_epochs`` (a title) every finished epoch logs a line with the time left.
    With ``val`` and ``patience`` training stops after ``patience`` epochs without a better validation
    balanced accuracy; ``report`` (a dict) then receives ``best_epoch`` (0-based) and ``epochs_run``.
    """
    L.seed_everything(seed, verbose=False)
    net.train()
    module = ClassifierModule(
        net, num_classes, lr=lr, weight_decay=weight_decay,
        weights=class_weights(y if rows is None else y[rows], num_classes) if balanced else None, hflip=hflip,
    )
    keep = KeepBest("val_bacc")
    callbacks: list[L.Callback] = [keep] if val is not None else []
    if val is not None and patience is not None:
        callbacks.append(L.pytorch.callbacks.EarlyStopping("val_bacc", mode="max", patience=patience))
    if log_epochs:
        callbacks.append(EpochLog(log_epochs))
    trainer = make_trainer(settings, epochs, callbacks)
    train_loader = tensor_loader(x, y, batch_size=batch_size, shuffle=True, seed=seed, rows=rows)
    val_loader = tensor_loader(*val, batch_size=eval_batch_size(val[0]), shuffle=False) if val is not None else None
    trainer.fit(module, train_loader, val_loader)
    if report is not None and val is not None:
        report.update(best_epoch=keep.best_epoch, epochs_run=keep.epochs_run)
    net.cpu()
    return net


def fit_to_convergence(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    val: tuple[torch.Tensor, torch.Tensor],
    *,
    settings: TrainerSettings,
    max_epochs: int,
    patience: int = 3,
    min_delta: float = 1e-3,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    log_epochs: str | None = None,
    rows: torch.Tensor | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``net`` (in place) on (x, y) (only the rows ``rows`` when given, as in :func:`fit_classifier`)
    until the validation cross-entropy (nats, unweighted mean over
    ``val`` = (x_val, y_val)) has not improved by ``min_delta`` for ``patience`` epochs, at most
    ``max_epochs``; the weights of the lowest validation loss are kept, the untrained ones included
    (training never leaves ``net`` worse on ``val`` than it started). Returns (net on the CPU, facts):
    ``epochs_run``, ``max_epochs``, ``stopped_early``, ``best_epoch`` (1-based; 0: the initial weights
    were best), ``val_loss_initial``, ``val_loss`` and ``val_accuracy`` of the kept weights, ``n_val``."""
    L.seed_everything(seed, verbose=False)
    module = ClassifierModule(net, num_classes, lr=lr)
    val_loader = tensor_loader(*val, batch_size=eval_batch_size(val[0]), shuffle=False)
    before = make_trainer(settings, 1).validate(module, val_loader, verbose=False)[0]
    initial = float(before["val_loss"])
    keep = KeepBest("val_loss", "min", initial=initial)
    stop = EarlyStopping("val_loss", min_delta=min_delta, patience=patience, mode="min", check_finite=True)
    callbacks: list[L.Callback] = [keep, stop]
    if log_epochs:
        callbacks.append(EpochLog(log_epochs, ("train_loss", "val_loss")))
    trainer = make_trainer(settings, max_epochs, callbacks)
    net.train()
    trainer.fit(module, tensor_loader(x, y, batch_size=batch_size, shuffle=True, seed=seed, rows=rows), val_loader)
    after = make_trainer(settings, 1).validate(module, val_loader, verbose=False)[0]
    net.cpu().eval()
    facts = {
        "epochs_run": int(trainer.current_epoch), "max_epochs": int(max_epochs),
        "stopped_early": bool(stop.stopped_epoch > 0), "best_epoch": None if keep.best_epoch is None else keep.best_epoch + 1,
        "val_loss_initial": initial, "val_loss": float(after["val_loss"]), "val_accuracy": float(after["val_acc"]),
        "val_accuracy_initial": float(before["val_acc"]), "n_val": int(val[0].shape[0]),
    }
    return net, facts
