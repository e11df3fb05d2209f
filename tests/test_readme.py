"""The README is a front door: short, every link leads to a page that exists, its config is valid."""
import re
from pathlib import Path

import yaml

from audit.config import build_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_is_short():
    assert len(README.splitlines()) <= 250


def test_every_relative_link_exists():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_the_config_in_brief_validates():
    section = README.split("## The config in brief", 1)[1]
    config = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))
    assert build_config(config).tasks[0].cut_points == ["conv1", "pool1", "pool2", "pool3"]
