import re
from pathlib import Path

import pytest

from audit.config import build_config, load_config
from audit.core.errors import AuditInputError


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
    with pytest.raises(AuditInputError,
                       match=r"defenses\.2: unknown defense 'nosie' \(did you mean 'noise'\?\); known defenses: .*none"):
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
    from audit.plan import plan_cells
    from audit.tasks import task_key

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


# ------------------------------------------------------------------------------------------- hardening
@pytest.mark.parametrize("override, key", [
    ("training.lr=.inf", "training.lr"), ("splits.train=.nan", "splits.train"),
    ("memory.feature_ram_mb=.inf", "memory.feature_ram_mb"), ("defenses.1.scale=.inf", "defenses.1.scale"),
    ("training.lr=-.inf", "training.lr"), ("attacks.attribute.lr=.inf", "attacks.attribute.lr"),
])
def test_non_finite_numbers_are_refused_naming_the_key(tiny_config, override, key):
    with pytest.raises(AuditInputError, match=rf"^--set '{re.escape(override)}': {key}: .*finite number"):
        build_config(tiny_config, "c.yaml", [override])


@pytest.mark.parametrize("override, key", [
    ("dataset.n=100000000000000000000000000000", "dataset.n"), ("seeds=[100000000000000000000000000000]", "seeds.0"),
    ("seeds=[1.0e+29]", "seeds.0"), ("dataset.n=1.0e+29", "dataset"), ("training.epochs=1000000000", "training.epochs"),
    ("n_boot=99999999999", "n_boot"), ("seeds=[-1]", "seeds.0"), ("training.batch_size=1.0e+12", "training.batch_size"),
])
def test_huge_integers_are_refused_naming_the_key(tiny_config, override, key):
    with pytest.raises(AuditInputError) as err:
        build_config(tiny_config, "c.yaml", [override])
    assert str(err.value).startswith(f"--set '{override}': {key}: ") and "\n" not in str(err.value)


def test_deep_nesting_is_a_clear_error(tmp_path, tiny_config):
    path = tmp_path / "deep.yaml"
    path.write_text("name: " + "[" * 1000 + "]" * 1000 + "\n")
    with pytest.raises(AuditInputError, match="nested too deeply"):
        load_config(path)
    with pytest.raises(AuditInputError, match="nested too deeply"):
        load_config(None, ["name=" + "{a: " * 500 + "1" + "}" * 500])
    deep: list = []
    node = deep
    for _ in range(5000):  # through the Python API
        node.append([])
        node = node[0]
    with pytest.raises(AuditInputError, match="nested too deeply"):
        build_config({**tiny_config, "name": deep})


@pytest.mark.parametrize("override, says", [
    ("cut_points=[conv1,fc1,conv1]", "cut_points: cut point 'conv1' listed more than once"),
    ("seeds=[0,1,0]", "seeds: seed 0 listed more than once"),
    ("attacks=[attribute,attribute]", "attacks: attack 'attribute' listed more than once"),
])
def test_duplicate_cut_points_seeds_and_attacks_are_refused(tiny_config, override, says):
    with pytest.raises(AuditInputError, match=f"^--set '{re.escape(override)}': {re.escape(says)}"):
        build_config(tiny_config, "c.yaml", [override])


def test_duplicate_yaml_keys_are_refused_naming_key_and_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("dataset: {name: synthetic}\nmodel: {name: mlp}\ncut_points: [fc1]\ndefenses: [none]\n"
                    "attacks: [attribute]\ntraining:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n")
    with pytest.raises(AuditInputError, match=r"dup.yaml: duplicate key 'lr' \(first at line 7\), line 9"):
        load_config(path)
    with pytest.raises(AuditInputError, match="duplicate key 'a'"):
        load_config(None, ["name={a: 1, a: 2}"])
    # a YAML merge may override the keys it brings in
    path.write_text("base: &b {name: noise, scale: 1.0}\n")
    from audit.config import parse_yaml

    assert parse_yaml("b: &b {name: noise, scale: 1.0}\nd: {<<: *b, scale: 2.0}\n", "x")["d"] == {"name": "noise", "scale": 2.0}


def test_set_errors_name_the_flag_not_the_file(tmp_path, tiny_config):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    for override, key in (("training.lr=abc", "training.lr"), ("training.lrr=1", "training.lrr"),
                          ("dataset.strength=abc", "dataset"), ("defenses.1={name: noise, scale: x}", "defenses.1")):
        with pytest.raises(AuditInputError) as err:
            load_config(path, ["seeds=[0]", override])
        assert str(err.value).startswith(f"--set {override!r}: {key}: "), str(err.value)
    with pytest.raises(AuditInputError, match=r"^.*c\.yaml: training\.lr: Input should be greater than 0"):
        tiny_config["training"]["lr"] = -1
        path.write_text(yaml.safe_dump(tiny_config))
        load_config(path, ["seeds=[0]"])


CONFIGS = sorted(p for p in (Path(__file__).parents[1] / "configs").glob("*.yaml")
                 if not p.name.startswith(("policy.", "sweep.")))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_audit_config_validates(path):
    """configs/*.yaml (the audits RESULTS.md quotes) load against the current schema and plugins."""
    cfg = load_config(path)
    assert cfg.tasks and cfg.defenses
