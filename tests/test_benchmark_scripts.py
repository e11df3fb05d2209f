"""The benchmark scripts stay importable against the current code (they are run by hand, not in CI):
importing one runs nothing, and every name it imports from splitaudit exists."""
import importlib.util
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_benchmark_script_imports(path):
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # top-level imports only: each script guards its work with __main__
    assert callable(getattr(module, "main", None)), f"{path.name} has no main()"


def test_there_are_benchmark_scripts():
    assert len(SCRIPTS) >= 5


USES_SPLITAUDIT = [p for p in SCRIPTS if any(f"from {pkg}" in p.read_text() for pkg in ("audit", "attacks", "defenses"))]


@pytest.mark.parametrize("path", USES_SPLITAUDIT, ids=[p.stem for p in USES_SPLITAUDIT])
def test_benchmark_script_run_from_the_command_line_sees_the_packages(path):
    """`python benchmarks/X.py` puts benchmarks/ first on sys.path: no script may be named like a package
    (benchmarks/defenses.py once shadowed `defenses` and scaling.py failed), and none edits sys.path."""
    import subprocess
    import sys

    root = path.parents[1]
    code = (f"import runpy, sys; sys.path[0] = {str(path.parent)!r}; "
            f"runpy.run_path({str(path)!r}, run_name='benchmark'); "
            "import defenses, defenses.base; print(defenses.__file__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert Path(done.stdout.strip().splitlines()[-1]) == root / "defenses" / "__init__.py"


def test_no_script_shadows_a_package_or_edits_sys_path():
    packages = {"audit", "attacks", "defenses", "tests", "benchmarks"}
    assert not [p.name for p in SCRIPTS if p.stem in packages]
    assert not [p.name for p in SCRIPTS if "sys.path.insert" in p.read_text()]


def _load(stem: str):
    path = next(p for p in SCRIPTS if p.stem == stem)
    spec = importlib.util.spec_from_file_location(f"benchmark_{stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_defense_table_shows_figures_and_says_why_a_cell_has_none():
    """benchmarks/defense_table.py's table: one row per (cut, defense) in the config's order, each leakage
    with its CI; a defense that cannot run at a cut (he before the last conv stage) gets a row that
    says why, not a silent gap."""
    table = _load("defense_table").table

    def record(cut, defense, value, status="ok", error=None):
        return {"cut_point": cut, "defense": defense, "defense_params": {}, "attack": "attribute", "target": "race",
                "metric": "balanced_accuracy", "value": value, "ci95": [value - 0.02, value + 0.02] if value else None,
                "utility": {"primary_accuracy": 0.81, "primary_accuracy_ci95": [0.79, 0.83]} if status == "ok" else {},
                "cost": {"edge_flops": 2.5e9, "edge_flops_fraction": 0.991, "bytes_sent": 32768, "rounds": 1}
                if status == "ok" else {},
                "seed": 0, "n_eval": 1714 if status == "ok" else None, "status": status, "error": error}

    records = [record("pool3", "none", 0.448), record("conv1", "none", 0.596),
               record("conv1", "he", None, "failed", "defense he failed: UnsupportedCloudError: layer conv2 would unroll\nmore")]
    lines = table(records, ["conv1", "pool3"], ["none", "he"]).splitlines()
    rows = [line for line in lines if line.startswith("| conv1") or line.startswith("| pool3")]
    assert [row.split(" | ")[:2] for row in rows] == [["| conv1", "none"], ["| conv1", "he"], ["| pool3", "none"]]
    assert "0.596 [0.576, 0.616]" in rows[0] and "0.810 [0.790, 0.830]" in rows[0]
    assert "failed: defense he failed: UnsupportedCloudError: layer conv2 would unroll |" in rows[1]
    assert rows[1].count("|") == rows[0].count("|")
    assert "Seeds [0]; 1714 test samples per figure" in lines[-1]


def test_attack_table_flags_a_reconstruction_above_the_dfil_ceiling():
    """benchmarks/attack_table.py: the dFIL check lists every reconstruction attack of a (cut, defense) and
    names the ones whose PSNR lies above the ceiling, with the mean image's PSNR against it; a deterministic
    release (no bound) gets no row."""
    module = _load("attack_table")

    def record(attack, metric, value, defense="noise", applicable=True):
        return {"cut_point": "pool3", "defense": defense, "defense_params": {"scale": 10.0} if defense == "noise" else {},
                "attack": attack, "target": "input", "metric": metric, "value": value, "ci95": [value - 0.1, value + 0.1],
                "chance": 13.8, "status": "ok", "extra": {"applicable": applicable},
                "timings": {"attack_fit_seconds": 3.0, "attack_score_seconds": 1.0}}

    records = [record("dfil", "psnr_ceiling", 18.0), record("inversion", "psnr", 15.5),
               record("inversion_rmle", "psnr", 19.2), record("dfil", "psnr_ceiling", 100.0, "none", applicable=False),
               record("inversion", "psnr", 20.0, "none")]
    rows = [line for line in module.dfil_check(records).splitlines() if line.startswith("| pool3")]
    assert rows == ["| pool3 | noise 10x | 18.00 [17.90, 18.10] | inversion 15.50 [15.40, 15.60]; "
                    "inversion_rmle 19.20 [19.10, 19.30] | inversion_rmle | 13.80 (below) |"]
    table = module.records_table(records)
    assert "| pool3 | noise 10x | inversion_rmle | input · psnr | 19.20 [19.10, 19.30] | 13.80 | 3 + 1 |" in table
    records[1]["chance"] = 18.5  # the range of the attacks' chance levels; "above" only when all lie above
    assert "| inversion_rmle | 13.80-18.50 (below) |" in module.dfil_check(records)
    records[2]["chance"] = 18.2
    assert "| inversion_rmle | 18.20-18.50 (above) |" in module.dfil_check(records)


def test_float16_comparison_flags_a_figure_outside_the_float32_interval(tmp_path):
    """benchmarks/float16_features.py: each rounded-run record against its float32 twin (inside the CI or
    not), and the rounding step keeps what float16 keeps."""
    import json

    import torch

    module = _load("float16_features")
    z = torch.tensor([[1.0 + 2**-12, 3.14159265, 70000.0]])
    assert torch.equal(module.RoundToHalf()(z), z.half().float()) and module.RoundToHalf()(z)[0, 0] == 1.0

    def record(metric, value, ci):
        return {"dataset": "d", "seed": 0, "cut_point": "conv1", "defense": "noise", "defense_params": {"scale": 10.0},
                "attack": "attribute", "target": "race", "metric": metric, "value": value, "ci95": ci, "status": "ok"}

    for name, values in {"float32": (0.50, 0.70), "float16": (0.52, 0.60)}.items():
        (tmp_path / name).mkdir()
        results = [record("balanced_accuracy", values[0], [0.45, 0.55]), record("auroc", values[1], [0.65, 0.75])]
        (tmp_path / name / "report.json").write_text(json.dumps({"results": results}))
    result = module.compare(tmp_path)
    assert result["summary"] == {"records": 2, "outside_ci": 1, "identical": 0}
    text = module.markdown(result)
    assert "| d | conv1 | noise scale=10.0 | attribute | race · auroc | 0.700 [0.650, 0.750] | 0.600 **outside** |" in text


def test_ray_projection_replays_the_runners_schedule():
    """benchmarks/ray_projection.py: groups of known length on N workers end when a list schedule says;
    one worker is the measured serial run; a long group caps the speed-up whatever N."""
    module = _load("ray_projection")

    def report(group_seconds, wall):
        results = [{"dataset": "d", "model": "m", "seed": 0, "cut_point": f"c{i // 2}", "defense": f"g{i}",
                    "defense_params": {}, "cell_id": f"cell{i}-{j}",
                    "timings": {"defense_fit_seconds": 1.0, "attack_fit_seconds": (s - 1.0) / 2, "attack_score_seconds": 0.0}}
                   for i, s in enumerate(group_seconds) for j in range(2)]
        return {"results": results, "environment": {"torch_threads": 1},
                "timings": {"driver_seconds": {"features_seconds": 0.0}, "wall_seconds": wall}}

    rows = module.project(report([10.0] * 4, 41.0), [1, 2, 4], startup=0.0)
    assert [r["projected_wall_s"] for r in rows] == [41.0, 21.0, 11.0]  # + 1 s of "other" each
    assert [r["speedup"] for r in rows] == [1.0, round(41 / 21, 2), round(41 / 11, 2)]
    capped = module.project(report([30.0, 2.0, 2.0, 2.0], 36.0), [2, 8], startup=5.0)
    assert [r["projected_wall_s"] for r in capped] == [35.0, 35.0]  # the 30-s group + startup
    # --cells-per-job 1: each of the 30-s group's two cells (14.5 s) after a fit of its own (1 s)
    split = module.project(report([30.0, 2.0, 2.0, 2.0], 36.0), [8], startup=0.0, cells_per_job=1)
    assert split[0]["projected_wall_s"] == 15.5 + 0.0  # the longest job, nothing else left ("other" 0)
    # a run on two workers: its wall time (groups side by side) holds no serial "other" to add
    two = report([10.0] * 4, 21.0)
    two["environment"]["executor"] = {"name": "local", "workers": 2, "threads": 1}
    rows = module.project(two, [1, 2, 4], startup=0.0)
    assert [r["projected_wall_s"] for r in rows] == [40.0, 20.0, 10.0] and rows[0]["other_s"] == 0.0


def test_seed_spread_counts_the_pairs_the_gate_would_call_changed():
    """benchmarks/seed_spread.py: identical figures are never a change; two seeds 0.1 apart with CIs of
    +-0.01 are called changed both ways (regressed one way, improved the other)."""
    module = _load("seed_spread")
    same = module.summary("t", "c", "a", [(0.5, 0.45, 0.55)] * 3)
    assert same["false_change_share"] == 0.0 and same["sd"] == 0.0
    apart = module.summary("t", "c", "a", [(0.5, 0.49, 0.51), (0.6, 0.59, 0.61)])
    assert apart["false_change_share"] == 1.0 and apart["ci_half_width"] == 0.01
    assert (apart["min"], apart["max"]) == (0.5, 0.6)
    # whole reports: a pair fails the check when some record rose beyond the noise. One clear rise of 0.1
    # (z = 14) fails one of the two ordered pairs either way; ten records each rising by 0.015 (combined
    # half-width 0.0141: z = 2.08, p 0.038) fail it alone but not under Holm over the ten (p_holm 0.38)
    steady = [{"attack": "a", "runs": [[0.5, 0.49, 0.51], [0.5, 0.49, 0.51]]}] * 9
    clear = [{"attack": "a", "runs": [[0.5, 0.49, 0.51], [0.6, 0.59, 0.61]]}]
    assert module.failed_checks(steady + clear, 0.0, "none") == module.failed_checks(steady + clear, 0.0, "holm") == 0.5
    slight = [{"attack": "a", "runs": [[0.5, 0.49, 0.51], [0.515, 0.505, 0.525]]}] * 10
    assert module.failed_checks(slight, 0.0, "none") == 0.5 and module.failed_checks(slight, 0.0, "holm") == 0.0


def test_ab_settings_table_shows_ratios_and_records_outside_the_first_runs_interval(tmp_path):
    """benchmarks/ab_settings.py: wall-time ratio against the first run, GNU time's figures, each attack's
    seconds, and a record of a later run outside the first run's CI named."""
    import json

    module = _load("ab_settings")

    def record(metric, value, ci):
        return {"dataset": "d", "seed": 0, "cut_point": "conv1", "defense": "none", "defense_params": {},
                "attack": "attribute", "target": "race", "metric": metric, "value": value, "ci95": ci}

    runs = []
    for name, (wall, values) in {"a": (100.0, (0.50, 0.70)), "b": (80.0, (0.50, 0.60))}.items():
        run = tmp_path / name
        (run / "out").mkdir(parents=True)
        (run / "time").write_text(f"Command exited with non-zero status 0\n{wall} 2048 90.0 10.0 5000000\n")
        report = {"results": [record("balanced_accuracy", values[0], [0.45, 0.55]),
                              record("auroc", values[1], [0.65, 0.75])],
                  "timings": {"attack_seconds": {"attribute": {"fit_seconds": wall / 2, "score_seconds": 1.0}}}}
        (run / "out" / "report.json").write_text(json.dumps(report))
        runs.append(run)
    summary = module.summarise(["x=0", "x=1"], runs)
    assert summary["rows"][1]["records"] == {"records": 2, "identical": 1, "inside_ci": 1,
                                             "outside": ["conv1 none attribute race auroc: 0.7 -> 0.6"]}
    text = module.markdown(summary)
    assert "| x=1 | 80 s | 1.25x | 2,048 | 90 / 10 s | 5.0 M | 1 of 2 (1) | 40.0 + 1.0 s |" in text
    assert "- x=1: outside the first's CI: conv1 none attribute race auroc: 0.7 -> 0.6" in text
    assert "mean wall" not in text  # each variant ran once
    abba = module.markdown(module.summarise(["x=0", "x=1", "x=1", "x=0"], runs + runs[::-1]))
    assert "- x=1: mean wall 80 s over 2 runs (80, 80), 1.25x vs the first variant" in abba


def test_ab_settings_variants_name_a_commit_and_match_a_defense_whose_parameters_changed():
    """``REV@sets`` runs a commit's code; a noise defense whose default parameters grew between two commits is
    still compared with itself (matched by name when it is the only one of that name), two of one name are not."""
    module = _load("ab_settings")
    assert module.split_variant("7e802f8@-") == ("7e802f8", [])
    assert module.split_variant("ee39af3@a.b=1;c=[x, y]") == ("ee39af3", ["a.b=1", "c=[x, y]"])
    assert module.split_variant("-") == (None, []) and module.split_variant("a=1") == (None, ["a=1"])

    def record(params, value, ci=(0.45, 0.55)):
        return {"dataset": "d", "seed": 0, "cut_point": "conv1", "defense": "noise", "defense_params": params,
                "attack": "attribute", "target": "race", "metric": "balanced_accuracy", "value": value, "ci95": ci}

    old, new = [record({"scale": 10.0}, 0.5)], [record({"scale": 10.0, "finetune_epochs": 30}, 0.6)]
    assert module.against_first(old, new)["outside"] == ["conv1 noise {\"scale\": 10.0, \"finetune_epochs\": 30} "
                                                         "attribute race balanced_accuracy: 0.5 -> 0.6"]
    two = [record({"scale": 1.0}, 0.5), record({"scale": 10.0}, 0.5)]
    assert module.against_first(two, new)["records"] == 0  # ambiguous: not compared


def test_training_precision_sorts_the_profiled_operators_into_kinds():
    """benchmarks/training_precision.py --ops: each aten operator's self CPU time goes to its kind (forward and
    backward together), profiler rows that are not aten operators are left out, the shares sum to 1."""
    from types import SimpleNamespace

    module = _load("training_precision")
    rows = [("aten::convolution_backward", 40.0), ("aten::mkldnn_convolution", 20.0),
            ("aten::native_batch_norm_backward", 10.0), ("aten::native_batch_norm", 10.0),
            ("aten::clamp_min", 5.0), ("aten::threshold_backward", 5.0), ("aten::max_pool2d_with_indices", 5.0),
            ("aten::addcdiv_", 5.0), ("Optimizer.step#Adam.step", 500.0)]
    profiler = SimpleNamespace(key_averages=lambda: [SimpleNamespace(key=k, self_cpu_time_total=t) for k, t in rows])
    shares = module.op_shares(profiler)
    assert shares == {"conv": 0.6, "batch norm": 0.2, "relu": 0.1, "pooling": 0.05, "other": 0.05}
