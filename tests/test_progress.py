"""Progress over cells: time-left estimate, line mode for logs, tqdm bar on request, --quiet."""
import logging
from types import SimpleNamespace

import pytest

from audit.progress import Progress, eta_text, time_left


def test_time_left_and_its_format():
    assert time_left(30.0, 2, 9) == pytest.approx(135.0)  # 2 cells in the 30 s after the first batch
    assert time_left(0.0, 1, 9) is None and time_left(5.0, 0, 9) is None
    assert eta_text(65.4) == "1:05" and eta_text(3725) == "1:02:05" and eta_text(-1) == "0:00"


def fake_run():
    """What Progress reads from an AuditRun: the config's name, the output folder, cell_name(cell)."""
    return SimpleNamespace(config=SimpleNamespace(name="t"), out_dir="out", cell_name=lambda cell: f"cell {cell}")


def records(value):
    return [{"status": "ok", "target": "race", "metric": "balanced_accuracy", "value": value, "ci95": [value - 0.1, value + 0.1],
             "chance": 0.2, "error": None}]


@pytest.fixture
def logger(monkeypatch):
    from audit.cli import setup_logging

    setup_logging()
    yield logging.getLogger("splitaudit")
    setup_logging()


def test_lines_say_the_time_left(logger, capsys, monkeypatch):
    clock = iter([0.0, 30.0, 40.0, 60.0, 61.0])  # the first cell waited for the task model: 30 s
    monkeypatch.setattr("audit.progress.time.perf_counter", lambda: next(clock))
    p, run = Progress(bar=False), fake_run()
    p.on_plan(run, [1, 2, 3, 4], [2, 3, 4])  # one cell already done
    p.on_cell_end(run, 2, records(0.5), 9.0)
    p.on_cell_end(run, 3, records(0.4), 9.5)
    p.on_cell_end(run, 4, records(0.3), 19.0)
    p.on_finish(run, {})
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "audit 't': 4 cells, 1 already done in out"
    assert err[1] == "[2/4] cell 2: race balanced_accuracy 0.500 [0.400, 0.600] chance 0.2 (9.0s)"  # no rate yet
    assert err[2].endswith("(9.5s, ~0:10 left)")  # 10 s for the cell after the first, 1 to go
    assert err[3].endswith("(19.0s)")
    assert err[4] == "audit 't' finished: 4 cells (3 run now) in 1:01"


def test_cells_committed_together_are_no_rate(logger, capsys, monkeypatch):
    """A worker commits a group's cells at once: the second cell of the first group, 0.01 s after the
    first, once read as a rate of 100 cells a second ("~0:00 left" with 54 of 56 cells to go)."""
    clock = iter([0.0, 500.0, 500.01, 800.0, 800.01, 900.0])
    monkeypatch.setattr("audit.progress.time.perf_counter", lambda: next(clock))
    p, run = Progress(bar=False), fake_run()
    p.on_plan(run, list(range(8)), list(range(8)))
    for cell in range(4):
        p.on_cell_end(run, cell, records(0.5), 1.0)
    p.on_finish(run, {})
    err = capsys.readouterr().err.splitlines()
    assert err[1].endswith("(1.0s)") and err[2].endswith("(1.0s)")  # the first group's two cells: no rate yet
    assert err[3].endswith("(1.0s, ~25:00 left)")  # 1 cell in the 300 s after the first batch, 5 to go
    assert err[4].endswith("(1.0s, ~10:00 left)")  # 2 cells in 300.01 s, 4 to go


def test_bar_counts_cells_and_quiet_silences_everything(logger, capsys):
    p, run = Progress(bar=True), fake_run()
    p.on_plan(run, [1, 2], [1, 2])
    p.on_cell_end(run, 1, records(0.5), 1.0)
    p.on_cell_end(run, 2, records(0.5), 1.0)
    p.on_finish(run, {})
    err = capsys.readouterr().err
    assert "2/2" in err and "[2/2] cell 2:" in err and ("cell/s" in err or "s/cell" in err)
    logger.setLevel(logging.WARNING)  # --quiet
    p = Progress(bar=True)
    p.on_plan(run, [1], [1])
    p.on_cell_end(run, 1, records(0.5), 1.0)
    p.on_finish(run, {})
    assert capsys.readouterr().err == ""


def test_defense_fine_tuning_logs_every_epoch_with_its_losses(caplog):
    """A Siamese / NoPeek fine-tuning can take 20 minutes on 2 cores: it says where it is, epoch by epoch."""
    import torch
    from torch import nn

    from audit.core.training import TrainerSettings
    from defenses._finetune import finetune_split

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, generator=gen), torch.randint(0, 2, (64,), generator=gen)
    edge, cloud = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.ReLU()), nn.Linear(4, 2)
    weights, stats = edge[0].weight.clone(), edge[1].running_mean.clone()
    with caplog.at_level(logging.INFO, logger="splitaudit"):
        finetune_split(edge, cloud, x, y, lambda x, z, y: (z**2).mean(), weight=0.5, settings=TrainerSettings(),
                       epochs=2, batch_size=16, lr=1e-3, seed=0, title="test fine-tuning at fc1")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("test fine-tuning at fc1")]
    assert [line.split(": epoch ")[1].split(",")[0] for line in lines] == ["1/2", "2/2"], lines
    # the epoch's mean losses, read back from the message
    task, penalty = (float(lines[-1].split(f"{name} ")[1].split()[0].rstrip(",")) for name in ("task_loss", "penalty"))
    assert 0.1 < task < 2.0 and 0.0 <= penalty < 5.0, lines
    # weights fine-tuned, batch-norm statistics kept (every module stays in eval mode, as documented)
    assert not torch.equal(edge[0].weight, weights) and torch.equal(edge[1].running_mean, stats)


# every defense that trains says so, epoch by epoch: {defense: (params, {progress label: epochs})}
TRAINING_DEFENSES = {
    "noise": ({"finetune_epochs": 2}, {"noise cloud fine-tuning": 2}),
    "pca_noise": ({"components": 8, "finetune_epochs": 2}, {"pca_noise cloud fine-tuning": 2}),
    "learned_noise": ({"epochs": 2, "finetune_epochs": 1},
                      {"learned_noise scale training": 2, "learned_noise cloud fine-tuning": 1}),
    "cloak": ({"epochs": 2, "finetune_epochs": 1}, {"cloak scale training": 2, "cloak cloud fine-tuning": 1}),
    "datamix": ({"epochs": 2}, {"datamix mixing-aware cloud training": 2}),
    "siamese": ({"epochs": 1, "pca_components": 4, "noise_scale": 1.0, "finetune_epochs": 1},
                {"siamese fine-tuning": 1, "siamese cloud fine-tuning on noise": 1}),
    "nopeek": ({"epochs": 2}, {"nopeek fine-tuning": 2}),
}


@pytest.fixture(scope="module")
def tiny_planted():
    from tests.helpers import TINY_CNN, prepared_task

    return prepared_task({"name": "synthetic", "n": 200, "image_size": 8, "strength": 0.25}, TINY_CNN, epochs=1)


@pytest.mark.parametrize("name", sorted(TRAINING_DEFENSES))
def test_every_training_defense_logs_its_epochs(name, tiny_planted, caplog):
    """A defense's training on UTKFace takes minutes to half an hour: each of its trainings logs
    'LABEL at CUT (seed S): epoch k/K, <epoch-mean losses> (...)' once per epoch, S being the audit's
    seed (the one the report names), not the fit's derived seed."""
    from audit.core.training import predict
    from defenses import DEFENSES, FitContext, SplitPoint
    from tests.helpers import SETTINGS

    params, expected = TRAINING_DEFENSES[name]
    data, net = tiny_planted
    edge, cloud = net.split("conv1")
    split = SplitPoint("conv1", net, edge, cloud, compute_features=lambda part: predict(edge, data.part(part).x))
    with caplog.at_level(logging.INFO, logger="splitaudit"):
        DEFENSES.create(name, **params).fit(
            FitContext(split, data.part("train"), data.num_classes(data.primary), SETTINGS, seed=459726022, audit_seed=3))
    seen: dict[str, list[str]] = {}
    for message in (r.getMessage() for r in caplog.records):
        if " at conv1 (seed 3): epoch " in message:
            label, rest = message.split(" at conv1 (seed 3): epoch ")
            seen.setdefault(label, []).append(rest.split(",")[0].split(" ")[0])
    assert seen == {label: [f"{k}/{n}" for k in range(1, n + 1)] for label, n in expected.items()}, seen
    assert not any("459726022" in r.getMessage() for r in caplog.records)


def test_slow_release_and_prediction_loops_log_their_progress(monkeypatch, caplog, tmp_path):
    """An encrypted prediction over a test split takes 10-20 minutes on 2 cores: once a loop has run
    SlowLoop.after seconds, each batch logs 'LABEL: k/n samples'; without a label it stays silent;
    the result is the same batches concatenated (in RAM or memory-mapped)."""
    import torch

    from audit.core.feature_store import SlowLoop, map_batches

    monkeypatch.setattr(SlowLoop, "after", 0.0)
    x = torch.arange(10.0).reshape(10, 1)
    with caplog.at_level(logging.INFO, logger="splitaudit"):
        out = map_batches(lambda a, b: 2 * x[a:b], 10, None, float("inf"), batch_size=4, title="he at pool3: test")
        mapped = map_batches(lambda a, b: 2 * x[a:b], 10, tmp_path, 0.0, batch_size=4, title="mapped")
        map_batches(lambda a, b: x[a:b], 10, None, float("inf"), batch_size=4)
    assert torch.equal(out, 2 * x) and torch.equal(mapped, 2 * x)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" (")[0] for line in lines] == [
        "he at pool3: test: 4/10 samples", "he at pool3: test: 8/10 samples", "he at pool3: test: 10/10 samples",
        "mapped: 4/10 samples", "mapped: 8/10 samples", "mapped: 10/10 samples"], lines


def test_a_runs_release_and_utility_lines_name_the_task(monkeypatch, caplog, tmp_path):
    """The default has three tasks with a conv1: a slow release's or utility prediction's lines say which
    ('synthetic/small_cnn noise at fc1 (seed 0): release of the test split: 40/40 samples')."""
    from audit import Audit, build_config
    from audit.core.feature_store import SlowLoop
    from tests.conftest import TINY

    monkeypatch.setattr(SlowLoop, "after", 0.0)
    cfg = build_config({**TINY, "cut_points": ["fc1"], "attacks": {"attribute_linear": {"cs": 2}},
                        "defenses": [{"name": "noise", "scale": 1.0, "finetune_epochs": 0}]})
    with caplog.at_level(logging.INFO, logger="splitaudit"):
        Audit(cfg).run(tmp_path, callbacks=[])
    where = "synthetic/small_cnn noise(finetune_epochs=0,scale=1.0) at fc1 (seed 0): "
    lines = {r.getMessage().split(":")[-2].strip() for r in caplog.records if r.getMessage().startswith(where)}
    assert {"release of the aux split", "release of the test split", "prediction on the test split"} <= lines, lines
