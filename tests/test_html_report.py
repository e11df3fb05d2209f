"""report.html: content (worst leakage, Pareto points, grids, threat model), self-containment,
and a real headless Chromium rendering it (DOM + screenshot)."""
import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from audit.html import render_html, write_html_report
from audit.html.figures import pareto
from audit.html.tables import summary, tasks_of, worst

ROOT = Path(__file__).resolve().parents[1]
CUTS = ["conv1", "pool1", "pool2", "fc1"]
DEFENSES = [("none", {}), ("noise", {"scale": 0.5, "distribution": "gaussian"}),
            ("noise", {"scale": 2.0, "distribution": "gaussian"})]


def fake_report(out: Path, seeds=(0,)) -> dict:
    """A report with known structure: leakage falls with the defense index d and the cut index c;
    attribute (balanced accuracy, AUROC), an MI estimator (nats), an inversion attack with PNG grids
    (PSNR dB, SSIM) and a rank metric where lower means more leakage; one failed cell."""
    from torchvision.utils import save_image

    records = []
    for seed in seeds:
        for c, cut in enumerate(CUTS):
            for d, (name, params) in enumerate(DEFENSES):
                acc = 0.95 - 0.1 * d - 0.02 * c
                utility = {"primary_accuracy": acc, "primary_accuracy_ci95": [acc - 0.02, acc + 0.02], "n_eval": 500}
                cost = {"edge_flops": 1e5 * (c + 1), "edge_flops_fraction": 0.2 * (c + 1), "bytes_sent": 4096 / (c + 1),
                        "edge_latency_ms": 0.1, "cloud_latency_ms": 0.2, "rounds": 1}

                def rec(attack, target, metric, value, half, chance, advantage=None, extra=None):
                    return {"dataset": "synthetic", "model": "small_cnn", "cut_point": cut, "defense": name,
                            "defense_params": params, "utility": utility, "cost": cost, "attack": attack,
                            "attack_params": {}, "target": target, "metric": metric, "value": value,
                            "ci95": [value - half, value + half], "chance": chance,
                            "advantage": advantage if advantage is not None else (None if chance is None else value - chance),
                            "seed": seed, "n_eval": 500, "status": "ok", "error": None, "extra": extra or {},
                            "cell_id": f"{seed}-{cut}-{d}-{attack}"}

                leak = 0.9 - 0.15 * d - 0.05 * c
                records.append(rec("attribute", "secret", "balanced_accuracy", leak, 0.03, 0.5))
                records.append(rec("attribute", "secret", "auroc", leak + 0.03, 0.03, 0.5))
                records.append(rec("mi_ksg", "secret", "mi", max(0.0, 0.5 - 0.2 * d), 0.05, None))
                grid = Path("artifacts") / f"{seed}-{cut}-{d}-inversion" / "inversion_decoder.png"
                (out / grid).parent.mkdir(parents=True, exist_ok=True)
                save_image(torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(d)), out / grid, nrow=8)
                for metric, value, chance in (("psnr", 25 - 4 * d - c, 13.8), ("ssim", 0.8 - 0.2 * d, 0.4)):
                    records.append(rec("inversion", "input", metric, value, 0.5 if metric == "psnr" else 0.02, chance,
                                       extra={"grid": grid.as_posix(), "unit": "dB" if metric == "psnr" else ""}))
                rank = 0.1 + 0.1 * d
                records.append(rec("reidentify", "identity", "normalized_rank", rank, 0.02, 0.5, advantage=0.5 - rank,
                                   extra={"direction": "lower is more leakage; advantage = 0.5 - value"}))
    records.append({**records[0], "cell_id": "broken", "attack": "broken", "status": "failed",
                    "error": "RuntimeError: <boom>", "target": None, "metric": None, "value": None, "ci95": None,
                    "chance": None, "advantage": None})
    return {
        "schema_version": 1, "created": "2026-11-23T00:00:00+00:00",
        "config": {"name": "fake", "seeds": list(seeds), "defenses": ["none"]},
        "environment": {"seeds": list(seeds), "device": "cpu", "packages": {"torch": "2.14"}},
        "tasks": [{"dataset": "synthetic", "model": "small_cnn", "seed": s, "primary": "label", "private": ["secret"],
                   "n": {"train": 1000, "aux": 500, "test": 500}, "primary_accuracy": 0.95,
                   "primary_accuracy_ci95": [0.93, 0.97], "full_flops": 5e5, "cut_points": CUTS,
                   "task_model": {"source": "trained" if s == 0 else "cache", "trained_at": "2026-11-23T01:02:03+00:00",
                                  "seconds": 846.0, "torch": "2.14.0", "torch_threads": 2, "device": "cpu"}}
                  for s in seeds],
        "results": records,
    }


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    out = tmp_path_factory.mktemp("html")
    report = fake_report(out, seeds=(0, 1))
    path = write_html_report(out, report)
    return out, report, path.read_text(encoding="utf-8")


def test_worst_leakage_and_pareto_points_are_the_known_ones(page):
    out, report, _ = page
    (task,) = tasks_of(report)
    assert task.cut_points == CUTS and len(task.defenses) == 3 and task.seeds == [0, 1]
    rank = worst(task.select(metric="normalized_rank"))
    assert rank["value"] == pytest.approx(0.1) and rank["defense"] == "none"  # lower rank = more leakage
    from audit.gate import defense_labels

    labels = defense_labels(report["results"])
    table = summary(task, labels)
    assert [r["defense"] for r in table["rows"]] == ["none", "noise(scale=0.5)", "noise(scale=2.0)"]
    cols = [(c["target"], c["metric"]) for c in table["columns"]]
    bacc = table["rows"][2]["cells"][cols.index(("secret", "balanced_accuracy"))]
    assert bacc["value"] == "0.6 [0.57, 0.63]" and bacc["where"].startswith("conv1 · attribute") and bacc["verdict"] == "leak"
    ssim = table["rows"][2]["cells"][cols.index(("input", "ssim"))]
    assert ssim["verdict"] == "chance"  # 0.4 [0.38, 0.42] covers the mean-image chance 0.4
    assert pareto([(0.1, 0.7), (0.2, 0.9), (0.3, 0.8), (0.2, 0.7), (0.05, 0.6)]) == [True, True, False, False, True]


def test_page_is_self_contained_and_says_seeds_and_n(page):
    out, report, html = page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "network reference in report.html"
    assert "http://" not in html and "https://" not in html
    srcs = re.findall(r'<img src="([^"]+)"', html)
    figures = json.loads((out / "figures" / "figures.json").read_text())
    # 1 frontier + 4 leakage figures (attribute, mi_ksg, inversion, reidentify) + 12 grids (one per cell, seeds 0 and 1 -> 24)
    assert len(figures) == 5 and len(srcs) == 5 + 24
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    for f in figures:
        assert "seeds 0, 1" in f["caption"] and "n_eval = 500" in f["caption"]
    assert html.count("<table") == 5  # decision, summary, cost (one task), failed cells, task models
    assert "RuntimeError: &lt;boom&gt;" in html  # escaped
    assert "noise(scale=2.0)" in html and "0.5 [0.45, 0.55] nats" in html  # defense labels; MI in nats
    assert "trained in this run in 14.1 min (torch 2.14.0, 2 threads, cpu)" in html  # seed 0
    assert "from cache; trained 2026-11-23 in 14.1 min (torch 2.14.0, 2 threads, cpu)" in html  # seed 1


def test_threat_model_is_the_readme_wording(page):
    _, _, html = page
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Threat model", 1)[1].split("\n## ", 1)[0]
    text = lambda s: " ".join(re.sub(r"<[^>]+>", "", s).replace("**", "").replace("*", "").replace("`", "").split())
    page_section = html.split('<h2 id="threat">Threat model</h2>', 1)[1].split("<h2", 1)[0]
    assert text(section) == text(page_section)


def test_render_without_records_or_grids_still_works(tmp_path):
    report = {"schema_version": 1, "config": {"name": "empty"}, "environment": {"seeds": [0]}, "tasks": [], "results": []}
    html = render_html(report, tmp_path)
    assert "splitaudit report · empty" in html and "<img" not in html


def test_missing_or_outside_grid_is_not_inlined(tmp_path):
    report = fake_report(tmp_path)
    for r in report["results"]:
        if r["attack"] == "inversion":
            r["extra"]["grid"] = "../../etc/passwd.png" if r["cut_point"] == "conv1" else "artifacts/missing.png"
    html = render_html(report, tmp_path, figures=[])  # no plots: the grids are under test
    assert "grid file ../../etc/passwd.png is missing" in html and "grid file artifacts/missing.png is missing" in html


# --------------------------------------------------------------------- headless Chromium
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
LOAD_PROBE = """<script>window.addEventListener("load", () => {
  const imgs = [...document.images];
  document.body.dataset.imgs = imgs.length;
  document.body.dataset.decoded = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
});</script></body>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium on this machine: `apt-get install -y chromium` (.ci/run installs it when absent)")


def run_chromium(args: list[str], tmp: Path, name: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{name}"
    return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, timeout=180, check=False)


def test_chromium_renders_figures_and_tables(page, tmp_path):
    out, _, html = page
    probe = out / "probe.html"  # the same page plus a script that counts images the browser decoded
    probe.write_text(html.replace("</body>", LOAD_PROBE, 1), encoding="utf-8")
    dom = run_chromium(["--dump-dom", probe.as_uri()], tmp_path, "dom")
    assert dom.returncode == 0, dom.stderr.decode()[-2000:]
    text = dom.stdout.decode()
    assert text.count("<table") == html.count("<table") == 5
    n_img = html.count("<img ")
    assert f'data-imgs="{n_img}"' in text and f'data-decoded="{n_img}"' in text, re.findall(r"data-\w+=\"\d+\"", text)
    assert 'class="frontier"' in text and 'class="leakage"' in text

    shot = tmp_path / "shot.png"
    res = run_chromium(["--window-size=1280,3600", f"--screenshot={shot}", (out / "report.html").as_uri()], tmp_path, "shot")
    assert res.returncode == 0 and shot.is_file(), res.stderr.decode()[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 3600)
    pixels = np.asarray(img, dtype=np.int32).reshape(-1, 3)
    assert len(np.unique(pixels[::7], axis=0)) > 200 and pixels.std() > 20, "screenshot is (nearly) blank"
    # the frontier's and leakage plots' blue / red / green lines and markers are on screen
    for rgb in ((31, 119, 180), (214, 39, 40), (44, 160, 44)):
        near = int((np.abs(pixels - np.array(rgb)).sum(axis=1) < 40).sum())
        assert near > 500, f"no plot color {rgb} in the screenshot ({near} pixels)"


# ------------------------------------------------------------------ the decision table
def decision_report(out: Path) -> dict:
    """fake_report with a config ``decision:`` block: edge FLOPs <= 70% (conv1 20% ... fc1 80%),
    accuracy drop <= 0.25 against the undefended 0.95, no evidence of an attribute leak: pool1
    (0.55 [0.52, 0.58]: not significant among the task's comparisons) and pool2 under noise 2.0
    qualify; pool1 keeps more accuracy (0.73 vs 0.71)."""
    report = fake_report(out, seeds=(0,))
    for r in report["results"]:
        r["utility"] = {**r["utility"], "task_accuracy": 0.95}
        if r["defense_params"].get("scale") == 0.5:  # the widest labels and figures of the default audit
            r["defense_params"] = {**r["defense_params"], "scale": 100.0}
            r["attack"] = {"inversion": "inversion_rmle"}.get(r["attack"], r["attack"])
    report["config"]["decision"] = {"max_edge_flops": 0.7, "max_accuracy_drop": 0.25,
                                    "require_no_evidence": ["attribute"]}
    return report


def test_decision_table_orders_by_edge_cost_and_names_verdicts_and_the_best_pair(tmp_path):
    from audit.decision import decision_of, decision_rows
    from audit.html.tables import decision_table

    report = decision_report(tmp_path)
    rows = decision_rows(report)
    assert [r.edge_flops_fraction for r in rows] == sorted(r.edge_flops_fraction for r in rows)
    table = decision_table(rows, decision_of(report))
    assert table["families"] == ["attribute", "reconstruction", "identity"]
    by = {(r["cut"], r["defense"]): r for r in table["rows"]}
    # none at conv1: balanced accuracy 0.9 vs chance 0.5: leaks; the noise 2.0 at fc1: 0.45, no evidence
    assert by[("conv1", "none")]["cells"][0]["verdict"] == "leaks"
    assert by[("conv1", "none")]["cells"][0]["figure"] == "+0.400 [+0.370, +0.430]"
    assert by[("fc1", "noise(scale=2.0)")]["cells"][0]["verdict"] == "no_evidence"
    assert by[("conv1", "noise(scale=100.0)")]["cells"][1]["detail"].startswith("inversion_rmle")
    assert "detectable ≥" in by[("fc1", "noise(scale=2.0)")]["cells"][0]["detail"]
    assert [k for k, r in by.items() if not r["failures"]] == [("pool1", "noise(scale=2.0)"), ("pool2", "noise(scale=2.0)")]
    best = next(k for k, r in by.items() if r["best"])
    assert best == ("pool1", "noise(scale=2.0)") and table["best"] == "pool1 · noise(scale=2.0)"
    assert any("edge FLOPs 80.0% > 70.0%" in f for f in by[("fc1", "none")]["failures"])
    assert any(f.startswith("attribute leaks") for f in by[("conv1", "none")]["failures"])
    html = render_html(report, tmp_path, figures=[])
    assert html.index('id="decision"') < html.index('id="summary"')  # at the top
    assert f"recommended: {best[0]} · {best[1]}" in html


CLIP_PROBE = """<script>window.addEventListener("load", () => {
  const t = document.querySelector("table.decision");
  const box = t.parentElement;
  const cells = [...t.querySelectorAll("th, td")];
  document.body.dataset.clippedCells = cells.filter(c => c.scrollWidth > c.clientWidth + 1).length;
  document.body.dataset.tableWidth = Math.ceil(t.getBoundingClientRect().width);
  document.body.dataset.boxWidth = Math.floor(box.clientWidth);
  document.body.dataset.overflow = box.scrollWidth > box.clientWidth + 1 ? 1 : 0;
  document.body.dataset.viewport = window.innerWidth;
});</script></body>"""


def test_chromium_shows_the_decision_table_at_1000px_without_clipping(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    report = decision_report(out)
    report["results"] = [r for r in report["results"] if r["status"] == "ok"]
    html = render_html(report, out, figures=[])
    probe = out / "probe.html"
    probe.write_text(html.replace("</body>", CLIP_PROBE, 1), encoding="utf-8")
    dom = run_chromium(["--window-size=1000,2000", "--dump-dom", probe.as_uri()], tmp_path, "dom")
    assert dom.returncode == 0, dom.stderr.decode()[-2000:]
    found = dict(re.findall(r'data-([\w-]+)="(\d+)"', dom.stdout.decode()))
    assert found["viewport"] == "1000", found  # cut point and defense labels do not wrap: a clipped one would count
    assert found["clipped-cells"] == "0" and found["overflow"] == "0", found
    assert int(found["table-width"]) <= int(found["box-width"]), found
    (out / "report.html").write_text(html, encoding="utf-8")
    shot = tmp_path / "decision.png"
    res = run_chromium(["--window-size=1000,2000", f"--screenshot={shot}", (out / "report.html").as_uri()],
                       tmp_path, "shot")
    assert res.returncode == 0 and shot.is_file(), res.stderr.decode()[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int32).reshape(-1, 3)
    for rgb in ((0xF6, 0xC7, 0xC4), (0xCD, 0xEC, 0xCF), (0xEA, 0xF2, 0xFF)):  # leaks, no evidence, best row
        near = int((np.abs(pixels - np.array(rgb)).sum(axis=1) < 12).sum())
        assert near > 300, f"decision colour {rgb} not on screen ({near} pixels)"
