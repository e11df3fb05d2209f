"""W&B tracking with a real offline run (no server, no API key): what the run wrote — the
results table against report.json, one history row per cell, the config, the report
artifact — read back from the run's files (the table JSON and the .wandb transaction log)."""
import base64
import hashlib
import json
import struct
from pathlib import Path

import pytest
import yaml

from audit import build_config
from audit.cli import main

ROOT = Path(__file__).resolve().parents[1]


def read_wandb_log(path: Path) -> list:
    """The protobuf records of a .wandb transaction log (W&B's LevelDB-style log: a 7-byte
    header, then 32 KiB blocks of chunks <crc32:4><length:2><type:1><data>; type 1 = full,
    2/3/4 = first/middle/last piece), parsed with W&B's own ``Record`` message."""
    from wandb.proto import wandb_internal_pb2 as pb

    buf = path.read_bytes()
    assert buf[:4] == b":W&B", "not a W&B transaction log"
    pos, block, pieces, records = 7, 32768, b"", []
    while pos + 7 <= len(buf):
        if block - pos % block < 7:  # block trailer too small for a chunk header
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", buf[pos:pos + 7])
        data = buf[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            records.append(data)
        elif kind == 2:
            pieces = data
        elif kind == 3:
            pieces += data
        elif kind == 4:
            records.append(pieces + data)
    out = []
    for data in records:
        rec = pb.Record()
        rec.ParseFromString(data)
        out.append(rec)
    return out


def history_rows(records) -> list[dict]:
    rows = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            rows.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item})
    return rows


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    from tests.conftest import TINY

    tmp = tmp_path_factory.mktemp("wandb")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        for var, sub in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
            mp.setenv(var, str(tmp / sub))
        mp.delenv("WANDB_API_KEY", raising=False)
        config = tmp / "tiny.yaml"
        config.write_text(yaml.safe_dump({**TINY, "tracking": {"wandb": {"project": "splitaudit-test", "tags": ["test"],
                                                                          "group": "ci", "mode": "online"}}}))
        out = tmp / "out"
        assert main(["run", str(config), "--out", str(out), "-q"]) == 0  # WANDB_MODE=offline overrides online
        runs = sorted((out / "wandb").glob("offline-run-*"))
        yield out, runs, config, mp, tmp


def test_run_writes_report_html_with_the_plots(tracked_run):
    out = tracked_run[0]
    html = (out / "report.html").read_text()
    assert 'class="frontier"' in html and 'class="leakage"' in html and "privacy–utility frontier" in html
    assert len(json.loads((out / "figures" / "figures.json").read_text())) == 2


def test_results_table_rows_equal_report_records(tracked_run):
    out, runs, *_ = tracked_run
    assert len(runs) == 1
    report = json.loads((out / "report.json").read_text())
    (table_file,) = (runs[0] / "files" / "media" / "table").glob("results_*.table.json")
    table = json.loads(table_file.read_text())
    columns, rows = table["columns"], table["data"]
    assert len(rows) == len(report["results"]) == 12
    for row, record in zip(rows, report["results"]):
        for col, cell in zip(columns, row):
            if col in ("ci95_low", "ci95_high"):
                expected = record["ci95"][0 if col == "ci95_low" else 1]
            elif col.startswith(("utility.", "cost.")):
                group, key = col.split(".", 1)
                expected = record[group].get(key)
            else:
                expected = record[col]
            if isinstance(expected, (dict, list)):
                cell = json.loads(cell)
            assert cell == expected, (col, cell, expected)
    assert {"value", "ci95_low", "utility.primary_accuracy", "cost.edge_flops_fraction", "cell_id"} <= set(columns)


def test_offline_run_log_holds_config_rows_per_cell_and_the_report_artifact(tracked_run):
    out, runs, *_ = tracked_run
    report = json.loads((out / "report.json").read_text())
    (log_file,) = runs[0].glob("run-*.wandb")
    records = read_wandb_log(log_file)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.display_name == "synthetic/small_cnn/none+noise(finetune_epochs=1,scale=1.0)"
    assert run.project == "splitaudit-test" and list(run.tags) == ["test"] and run.run_group == "ci"
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["n_boot"] == 100 and config["cells"] == 4 and config["config_hash"] == build_config(
        yaml.safe_load((tracked_run[2]).read_text()), "x").config_hash()
    rows = history_rows(records)
    cells = [r for r in rows if "cell/index" in r and "cell/id" in r]
    assert sorted(r["cell/id"] for r in cells) == sorted({r["cell_id"] for r in report["results"]})
    for row in cells:
        recs = [r for r in report["results"] if r["cell_id"] == row["cell/id"]]
        for r in recs:
            assert row[f"{r['target']}/{r['metric']}"] == pytest.approx(r["value"])
        assert row["utility/primary_accuracy"] == pytest.approx(recs[0]["utility"]["primary_accuracy"])
    final = next(r for r in rows if "results/_type" in r)
    assert final["results/_type"] == "table-file" and final["results/nrows"] == len(report["results"])
    key = "figures/frontier_synthetic_small_cnn"
    assert final[f"{key}/_type"] == "image-file" and "seed 0" in final[f"{key}/caption"]
    assert (runs[0] / "files" / final[f"{key}/path"]).is_file()
    artifact = next(r.artifact for r in records
                    if r.WhichOneof("record_type") == "artifact" and r.artifact.type == "audit-report")
    contents = {c.path: c.digest for c in artifact.manifest.contents}
    assert set(contents) == {"report.json", "report.html", "results.csv"}
    md5 = base64.b64encode(hashlib.md5((out / "report.json").read_bytes()).digest()).decode()
    assert contents["report.json"] == md5  # the artifact holds the report as written
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({"/".join(u.nested_key) or u.key: json.loads(u.value_json) for u in r.summary.update})
    worst = max(r["value"] for r in report["results"] if r["metric"] == "balanced_accuracy")
    assert summary["worst/secret/balanced_accuracy"] == pytest.approx(worst) and summary["cells/total"] == 4


def test_resumed_run_logs_every_cell_once_and_no_wandb_turns_it_off(tracked_run):
    out, first, config, mp, _ = tracked_run
    assert main(["run", str(config), "--out", str(out), "-q"]) == 0  # every cell already done
    runs = sorted((out / "wandb").glob("offline-run-*"))
    (newest,) = set(runs) - set(first)
    cells = [r for r in history_rows(read_wandb_log(next(newest.glob("run-*.wandb")))) if "cell/id" in r]
    assert len(cells) == 4 and all("cell/seconds" not in r for r in cells), (newest, first, runs)
    assert main(["run", str(config), "--out", str(out), "-q", "--no-wandb"]) == 0
    assert len(list((out / "wandb").glob("offline-run-*"))) == 2


def test_online_without_api_key_logs_an_error_and_the_audit_goes_on(tracked_run, capsys, monkeypatch):
    out, _, config, mp, tmp = tracked_run
    mp.delenv("WANDB_MODE")
    monkeypatch.setenv("NETRC", str(tmp / "no-netrc"))
    try:
        assert main(["run", str(config), "--out", str(out), "-q"]) == 0
    finally:
        mp.setenv("WANDB_MODE", "offline")
    err = capsys.readouterr().err
    assert "W&B: could not start a run (UsageError: No API key configured" in err and "the audit goes on" in err


def test_tracking_does_not_change_the_config_hash_and_mode_resolution(tiny_config, monkeypatch):
    from audit.config import WandbSettings
    from audit.tracking import effective_mode

    plain = build_config(tiny_config)
    tracked = build_config({**tiny_config, "tracking": {"wandb": {"project": "p", "mode": "offline"}}})
    assert plain.config_hash() == tracked.config_hash()
    with pytest.raises(Exception, match="tracking.wandb.projekt: unknown key"):
        build_config({**tiny_config, "tracking": {"wandb": {"projekt": "p"}}})
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert effective_mode(WandbSettings(mode="online")) == "offline"
    assert effective_mode(WandbSettings(mode="disabled")) == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    assert effective_mode(WandbSettings(mode="online")) == "online"


def test_sweep_example_sweeps_defense_parameters_of_a_valid_config():
    sweep = yaml.safe_load((ROOT / "configs" / "sweep.example.yaml").read_text())
    assert sweep["method"] in ("grid", "random", "bayes") and sweep["metric"]["name"].startswith("worst/")
    command = sweep["command"]
    assert command[:4] == ["${env}", "${interpreter}", "-m", "audit.tracking"] and command[-1] == "${args}"
    config_path = ROOT / command[4]
    from audit.config import load_config
    from audit.tracking import sweep_cli_args

    names = list(sweep["parameters"])
    assert all(n.startswith("defenses.") for n in names)
    first = {n: p["values"][-1] for n, p in sweep["parameters"].items()}
    argv = [str(config_path)] + [f"--{n}={v}" for n, v in first.items()]
    cli = sweep_cli_args(argv, run_id="abc123")
    assert sweep_cli_args([str(config_path), "--defenses.0.scale", "2.0"], run_id="x")[-1] == "defenses.0.scale=2.0"
    assert cli[:3] == ["run", str(config_path), "--wandb"] and cli[cli.index("--out") + 1].endswith("abc123")
    overrides = [cli[i + 1] for i, a in enumerate(cli) if a == "--set"]
    config = load_config(config_path, overrides)  # every swept name is a valid key of the config
    assert config.tracking.wandb is not None
    noise = config.defenses[-1]
    assert all(noise.params[n.split(".")[-1]] == v for n, v in first.items())
