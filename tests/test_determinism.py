"""Same config and seed -> the same report values, bit for bit on the CPU (with the same thread count);
the report records every seed and the package versions."""
import torch

from audit import Audit, build_config
from audit.core.seeds import stage_seed
from audit.executors import SequentialExecutor
from audit.html import task_model_provenance
from audit.merge import report_values
from audit.tasks import task_key


def _run(config, out, cache):
    return Audit(build_config(config), cache_dir=cache).run(out, callbacks=[], executor=SequentialExecutor(threads=1))


def test_two_runs_with_fresh_caches_give_identical_report_values(tmp_path, tiny_config):
    a = _run(tiny_config, tmp_path / "a", tmp_path / "cache_a")  # each trains its own task model
    b = _run(tiny_config, tmp_path / "b", tmp_path / "cache_b")
    assert report_values(a) == report_values(b)
    (model_a,) = (tmp_path / "cache_a" / "task_models").glob("*.pt")
    model_b = tmp_path / "cache_b" / "task_models" / model_a.name
    sa, sb = (torch.load(p, weights_only=True) for p in (model_a, model_b))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    # the seed matters (so the equality above is not vacuous)
    tiny_config["seeds"] = [1]
    c = _run(tiny_config, tmp_path / "c", tmp_path / "cache_a")
    assert [r["value"] for r in c["results"]] != [r["value"] for r in a["results"]]


def test_the_report_records_every_seed_and_package_version(tmp_path, tiny_config):
    tiny_config.update(cut_points=["fc1"], defenses=["none"], attacks={"attribute_linear": {}})
    threads = torch.get_num_threads()
    report = _run(tiny_config, tmp_path / "out", None)
    assert torch.get_num_threads() == threads  # the run's thread count is not left behind
    env = report["environment"]
    assert env["seeds"] == [0] and env["torch_threads"] == 1
    for name in ("torch", "lightning", "torchmetrics", "numpy", "scikit-learn", "pydantic"):
        assert env["packages"][name], name
    key = task_key(build_config(tiny_config).tasks[0], 0)
    (task,) = report["tasks"]
    assert task["stage_seeds"] == {"init": stage_seed(0, key, "init"), "task": stage_seed(0, key, "task")}
    for r in report["results"]:
        assert set(r["stage_seeds"]) == {"defense", "attack"}
        assert r["stage_seeds"]["attack"] == stage_seed(0, key, "fc1", "none", r["defense_params"], "attribute_linear")


def test_the_report_says_whether_the_task_model_was_trained_here_or_cached(tmp_path, tiny_config):
    tiny_config.update(cut_points=["fc1"], defenses=["none"], attacks={"attribute_linear": {}})
    trained = _run(tiny_config, tmp_path / "a", tmp_path / "cache")
    cached = _run(tiny_config, tmp_path / "b", tmp_path / "cache")
    first, second = trained["tasks"][0]["task_model"], cached["tasks"][0]["task_model"]
    assert first["source"] == "trained" and second["source"] == "cache"
    assert first["torch"] == torch.__version__ and first["torch_threads"] == 1 and first["seconds"] >= 0
    said = ("trained_at", "seconds", "torch", "torch_threads", "device", "precision")
    assert {k: second[k] for k in said} == {k: first[k] for k in said}  # the cached model's record, as trained
    assert first["precision"] == "32-true"
    assert report_values(trained) == report_values(cached)  # provenance is not a report value
    assert task_model_provenance(second).startswith(f"from cache; trained {first['trained_at'][:10]} in ")
    assert task_model_provenance({**second, "seconds": 9.5}).endswith(
        " in 9.5 s (torch " + torch.__version__ + ", 1 threads, cpu, 32-true)")
    (record,) = (tmp_path / "cache" / "task_models").glob("*.json")
    record.write_text("{not json")  # a damaged record loses the provenance, not the audit
    again = _run(tiny_config, tmp_path / "c", tmp_path / "cache")
    assert again["tasks"][0]["task_model"] == {"source": "cache", "path": second["path"]}
    assert task_model_provenance(again["tasks"][0]["task_model"]) == "from cache (no training record)"
