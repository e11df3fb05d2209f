import pytest

from audit.config import build_config, load_config
from audit.errors import AuditInputError


def test_embedded_default_is_valid_and_small():
    cfg = load_config(None)
    assert {t.dataset.name for t in cfg.tasks} == {"synthetic", "digits"}
    planted = [t for t in cfg.tasks if t.dataset.params.get("strength") != 0]  # the null task is a control
    assert len(planted) == 2 and all(len(t.cut_points) >= 3 for t in planted)
    assert any(t.dataset.params.get("strength") == 0 for t in cfg.tasks)
    assert [d.name for d in cfg.defenses].count("noise") >= 2 and cfg.defenses[0].name == "none"
    assert "attribute" in cfg.attacks


def test_shipped_utkface_config_is_valid():
    from pathlib import Path

    cfg = load_config(Path(__file__).parents[1] / "configs" / "utkface.yaml", ["dataset.root=/elsewhere"])
    task = cfg.tasks[0]
    assert task.dataset.name == "utkface" and task.dataset.params["root"] == "/elsewhere"
    default_root = load_config(Path(__file__).parents[1] / "configs" / "utkface.yaml").tasks[0].dataset.params["root"]
    assert Path(default_root).is_absolute()  # relative paths in a config file resolve against its folder
    assert task.dataset.params.get("primary", "gender") == "gender" and "race" in task.dataset.params["private"]
    assert len(task.cut_points) >= 3
    assert {"none", "noise"} <= {d.name for d in cfg.defenses}


def test_unknown_key_is_named_with_the_file(tmp_path, tiny_config):
    import yaml

    tiny_config["trainer"] = {"acelerator": "cpu"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    with pytest.raises(AuditInputError, match=r"bad\.yaml: trainer\.acelerator: unknown key"):
        load_config(path)


def test_shorthand_errors_use_the_users_key_names(tiny_config):
    tiny_config["training"]["epoch"] = 3
    with pytest.raises(AuditInputError, match=r"<config>: training\.epoch: unknown key"):
        build_config(tiny_config)


def test_unknown_plugin_names_list_the_known_ones(tiny_config):
    tiny_config["defenses"].append("nosie")
    with pytest.raises(AuditInputError, match=r"defenses\.2: unknown defense 'nosie' \(did you mean 'noise'\?\); known defenses: .*none"):
        build_config(tiny_config)


def test_bad_plugin_parameter(tiny_config):
    tiny_config["attacks"] = {"attribute": {"epocs": 3}}
    with pytest.raises(AuditInputError, match=r"attacks\.attribute: bad parameters for attack 'attribute': epocs"):
        build_config(tiny_config)


def test_overrides(tiny_config):
    cfg = build_config(tiny_config, overrides=[
        "dataset.strength=0", "attacks.attribute.epochs=7", "seeds=[1, 2]", "defenses.1.scale=4"
    ])
    assert cfg.tasks[0].dataset.params["strength"] == 0
    assert cfg.attacks["attribute"]["epochs"] == 7 and cfg.seeds == [1, 2]
    assert cfg.defenses[1].params["scale"] == 4
    with pytest.raises(AuditInputError, match="KEY=VALUE"):
        build_config(tiny_config, overrides=["seeds"])
    with pytest.raises(AuditInputError, match="no list item '9'"):
        build_config(tiny_config, overrides=["defenses.9.scale=1"])


def test_malformed_yaml_and_missing_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("dataset: {name: synthetic\n")
    with pytest.raises(AuditInputError, match="broken.yaml: not valid YAML"):
        load_config(path)
    with pytest.raises(AuditInputError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_tasks_and_shorthand_conflict(tiny_config):
    tiny_config["tasks"] = []
    with pytest.raises(AuditInputError, match="both 'tasks' and top-level"):
        build_config(tiny_config)


def test_config_hash_ignores_cache_dir(tiny_config):
    a = build_config(tiny_config)
    b = build_config({**tiny_config, "cache_dir": "/tmp/x"})
    c = build_config(tiny_config, overrides=["seeds=[3]"])
    assert a.config_hash() == b.config_hash() != c.config_hash()


def test_a_task_runs_a_subset_of_the_audits_attacks(tiny_config):
    from audit.runner import plan_cells, task_key

    tiny_config["attacks"] = {"attribute": {"epochs": 1}, "mi": {}}
    full = build_config(tiny_config)
    tasks = {"tasks": [{k: tiny_config.pop(k) for k in list(tiny_config) if k in
                        ("dataset", "model", "cut_points", "training")}]}
    tasks["tasks"].append({**tasks["tasks"][0], "label": "control", "attacks": ["mi"]})
    cfg = build_config({**tiny_config, **tasks})
    cells = plan_cells(cfg)
    assert {c.attack for c in cells if c.task == 1} == {"mi"}
    assert {c.attack for c in cells if c.task == 0} == {"attribute", "mi"}
    assert len(cells) == len(plan_cells(full)) * 3 // 2
    assert task_key(cfg.tasks[1], 0) == task_key(full.tasks[0], 0)  # same trained model, whatever it is attacked with
    tasks["tasks"][1]["attacks"] = ["mi", "atribute"]
    with pytest.raises(AuditInputError, match=r"tasks\.1\.attacks: atribute not among the audit's attacks \(attribute, mi\)"):
        build_config({**tiny_config, **tasks})
