import sys
import textwrap

import pytest
from pydantic import Field

from attacks import ATTACKS
from audit.core.data import DATASETS
from audit.core.models import MODELS
from audit.core.registry import PluginParams, PluginParamsError, Registry, UnknownPluginError
from defenses import DEFENSES


def make_registry():
    reg = Registry("widget", "splitaudit.test_widgets")

    @reg.register("round")
    class Round:
        class Params(PluginParams):
            radius: float = Field(1.0, gt=0)

        def __init__(self, params):
            self.params = params

    return reg, Round


def test_register_list_create():
    reg, Round = make_registry()
    assert reg.list() == ["round"]
    w = reg.create("round", radius=2.5)
    assert isinstance(w, Round) and w.params.radius == 2.5 and Round.name == "round"


def test_unknown_name_lists_known_names_and_suggests():
    reg, _ = make_registry()
    with pytest.raises(UnknownPluginError, match=r"unknown widget 'rond' \(did you mean 'round'\?\); known widgets: round"):
        reg.create("rond")


def test_duplicate_name_raises_with_known_names():
    reg, _ = make_registry()
    with pytest.raises(ValueError, match="already registered.*known widgets: round"):
        @reg.register("round")
        class Other:  # noqa: F811
            pass


def test_bad_params_name_the_key():
    reg, _ = make_registry()
    with pytest.raises(PluginParamsError, match="radus.*its parameters: radius"):
        reg.create("round", radus=1)
    with pytest.raises(PluginParamsError, match="radius"):
        reg.create("round", radius=-1)


def test_entry_points_are_discovered(tmp_path, monkeypatch):
    pkg = tmp_path / "thirdparty_widget.py"
    pkg.write_text(textwrap.dedent("""
        class Square:
            def __init__(self, params):
                self.params = params
    """))
    dist = tmp_path / "thirdparty_widget-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-widget\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[splitaudit.test_widgets]\nsquare = thirdparty_widget:Square\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg, _ = make_registry()
    assert reg.list() == ["round", "square"]
    assert type(reg.create("square")).__name__ == "Square"
    sys.modules.pop("thirdparty_widget", None)


@pytest.mark.parametrize("registry", [DATASETS, MODELS, DEFENSES, ATTACKS], ids=lambda r: r.kind)
def test_builtin_registries_are_populated_and_documented(registry):
    rows = registry.catalogue()
    assert rows, f"no {registry.kind} registered"
    for name, doc, _ in rows:
        assert doc, f"{registry.kind} {name} has no docstring"


def test_builtin_names():
    assert {"none", "noise"} <= set(DEFENSES.list())
    assert {"attribute", "attribute_linear"} <= set(ATTACKS.list())
    assert {"synthetic", "digits", "utkface", "csv", "cifar10", "mnist", "celeba"} <= set(DATASETS.list())
    assert {"small_cnn", "mlp", "resnet18", "vgg11"} <= set(MODELS.list())
