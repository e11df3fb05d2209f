"""Inversion vs cut point: PSNR / SSIM of the decoder (``inversion``) and white-box rMLE
(``inversion_rmle``) attacks, and re-identification (``reidentify``), per cut point and
defense, on digits and on UTKFace (configs/utkface.yaml's task).

    SPLITAUDIT_CACHE=/work/cache nice -n 10 python benchmarks/inversion_depth.py \
        --tasks digits utkface --out /tmp/inversion_depth
    python benchmarks/inversion_depth.py --denoise-ablation      # the adaptive denoiser on the planted task

The task model comes from the shared cache when the task section and seed match
(UTKFace: configs/utkface.yaml, seed 0). A lean harness instead of the runner, to keep
memory low at 64x64 cuts: the same defense and attack plugins, but the noise defenses'
sigma (scale x the std of the train features) is measured on a seeded subset of
``--sigma-samples`` train images and their cloud is not fine-tuned (utility is not
measured here; what is released is the same), and attacks are scored on a seeded
subset of ``--n-test`` test images (rMLE on its own ``--rmle-n`` subset of those).
Defense and attack seeds follow the runner's rule (audit.pipeline.cell_seeds). Writes results.json, a markdown
table (table.md) and the reconstruction grids under --out.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning as L
import torch

from attacks import AttackView
from audit.config import build_config, load_config
from audit.core.training import predict
from audit.pipeline import AttackInputs, cell_seeds, fit_defense, release_all, run_attack
from audit.runner import AuditRun
from defenses import DEFENSES, SplitPoint

ROOT = Path(__file__).resolve().parents[1]

DIGITS = {  # the embedded default audit's digits task (same cache key)
    "name": "digits",
    "dataset": {"name": "digits", "primary": "digit", "private": ["ink"]},
    "model": {"name": "small_cnn", "widths": [16, 32], "fc": [64]},
    "cut_points": ["conv1", "pool1", "pool2", "fc1"],
    "training": {"epochs": 8},
    "defenses": ["none", {"name": "noise", "scale": 0.5}, {"name": "noise", "scale": 2.0},
                 {"name": "noise", "scale": 10.0}],
    "attacks": {"attribute": {}},
}
ATTACK_PARAMS = {
    "digits": {"inversion": {"epochs": 30, "batch_size": 32, "width": 64}, "inversion_rmle": {"iterations": 300},
               "reidentify": {}},
    "utkface": {"inversion": {"epochs": 3, "batch_size": 32, "width": 32}, "inversion_rmle": {"iterations": 150},
                "reidentify": {}},
}
HEAVY_REID_SCALES = (100.0, 1000.0)  # re-identification only: where does linking fall to chance?


def task_config(name: str):
    if name == "digits":
        return build_config(DIGITS, "<inversion_depth digits>")
    cfg = load_config(ROOT / "configs" / "utkface.yaml")
    return cfg


def subset(n: int, k: int, seed: int) -> torch.Tensor:
    if k >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values


def run_task(name: str, args, out: Path) -> list[dict]:
    config = task_config(name)
    run = AuditRun(config, out / "unused_store")
    task = config.tasks[0]
    seed = config.seeds[0]
    state = run.prepare_task(0, seed)
    data = state.data
    train, aux, full_test = data.part("train"), data.part("aux"), data.part("test")
    test_idx = subset(len(full_test), args.n_test, seed)
    sigma_idx = subset(len(train), args.sigma_samples, seed)
    x_test = full_test.x[test_idx]
    test_private = {k: v[test_idx] for k, v in full_test.private.items()}
    rows = []
    defenses = list(config.defenses) + [
        type(config.defenses[0])(name="noise", scale=s) for s in (HEAVY_REID_SCALES if args.heavy_reid else ())
    ]
    if args.scales is not None:  # keep `none` and the noise levels asked for
        defenses = [d for d in defenses if d.name != "noise" or d.params.get("scale") in args.scales]
    cuts = [c for c in task.cut_points if args.cut_points is None or c in args.cut_points]
    for cut in cuts:
        edge, cloud = state.model.split(cut)
        for spec in defenses:
            params = dict(spec.params)
            if spec.name == "noise":
                params["finetune_epochs"] = 0
            heavy = spec.name == "noise" and params.get("scale") in HEAVY_REID_SCALES
            attacks = ["reidentify"] if heavy else [a for a in ATTACK_PARAMS[name] if a in args.attacks]
            parts = {"train": train.x[sigma_idx], "aux": aux.x, "test": x_test}
            split = SplitPoint(cut, state.model, edge, cloud,
                               compute_features=lambda part, parts=parts: predict(edge, parts[part]))
            full_params = DEFENSES.validate_params(spec.name, params).model_dump(mode="json")  # as the runner
            defense = fit_defense(spec.name, params, split, train, data.num_classes(data.primary), config.trainer,
                                  cell_seeds(seed, state.key, cut, spec.name, full_params, "")["defense"], audit_seed=seed)
            z_aux = release_all(defense, aux.x, split.features("aux"))
            z_test = release_all(defense, x_test, split.features("test"))
            split._features.clear()  # free the clean features (the attacks recompute what they need)
            label = spec.title()
            inputs = AttackInputs(
                AttackView(z_aux, aux.x, aux.y, aux.private),
                AttackView(z_test, x_test, full_test.y[test_idx], test_private),
                {k: data.num_classes(k) for k in [data.primary, *data.private]}, data.primary, split,
                config.trainer, config.n_boot,
            )
            for attack_name in attacks:
                attack_params = dict(ATTACK_PARAMS[name][attack_name])
                if attack_name == "inversion_rmle":
                    attack_params["n_eval"] = args.rmle_n
                attack_seed = cell_seeds(seed, state.key, cut, spec.name, full_params, attack_name)["attack"]
                cell = f"{name}_{cut}_{label}_{attack_name}".replace("(", "_").replace(")", "").replace("=", "")
                start = time.perf_counter()
                scores = run_attack(attack_name, attack_params, inputs, defense, attack_seed,
                                    artifact_dir=out / "artifacts" / cell)
                seconds = time.perf_counter() - start
                for s in scores:
                    rows.append({
                        "task": name, "cut": cut, "defense": label, "attack": attack_name, "metric": s.metric,
                        "value": s.value, "ci95": list(s.ci95), "chance": s.chance, "n_eval": s.n_eval,
                        "seconds": round(seconds, 1), "seed": seed, "params": attack_params,
                        "grid": s.extra.get("grid"),
                    })
                    print(f"{name} {cut:6s} {label:22s} {attack_name:15s} {s.metric:16s} {s.value:8.3f} "
                          f"[{s.ci95[0]:.3f}, {s.ci95[1]:.3f}] chance {s.chance:.3f} n={s.n_eval} ({seconds:.0f}s)",
                          flush=True)
            del z_aux, z_test, inputs, defense, split
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: one line per (task, cut, defense); PSNR / SSIM of both inversions, re-identification top-1."""
    def cell(r):
        if r is None:
            return "—"
        if r["metric"] == "top1":
            return f"{r['value']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"
        return f"{r['value']:.1f} [{r['ci95'][0]:.1f}, {r['ci95'][1]:.1f}]" if r["metric"] == "psnr" else f"{r['value']:.3f}"

    index = {(r["task"], r["cut"], r["defense"], r["attack"], r["metric"]): r for r in rows}
    keys = list(dict.fromkeys((r["task"], r["cut"], r["defense"]) for r in rows))
    lines = [
        "| task | cut | defense | decoder PSNR dB [CI] | decoder SSIM | rMLE PSNR dB [CI] | rMLE SSIM | "
        "mean-image PSNR / SSIM | re-id top-1 [CI] (chance) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, cut, defense in keys:
        get = lambda a, m: index.get((task, cut, defense, a, m))  # noqa: E731
        base_p, base_s = get("inversion", "psnr"), get("inversion", "ssim")
        chance = f"{base_p['chance']:.1f} / {base_s['chance']:.3f}" if base_p else "—"
        reid = get("reidentify", "top1")
        reid_txt = f"{cell(reid)} ({reid['chance']:.4f})" if reid else "—"
        lines.append(
            f"| {task} | {cut} | {defense} | {cell(get('inversion', 'psnr'))} | {cell(get('inversion', 'ssim'))} | "
            f"{cell(get('inversion_rmle', 'psnr'))} | {cell(get('inversion_rmle', 'ssim'))} | {chance} | {reid_txt} |"
        )
    return "\n".join(lines)


def denoise_ablation(seeds: int) -> str:
    """Plain attribute vs the denoise attacker (and its ablations) on the planted synthetic task
    (n=1200, 8x8, strength 0.25; small_cnn widths [8]; conv1; noise scale 3), one line per seed."""
    from tests.helpers import attack_context, prepared_task, run_attack, scores_by_metric

    L.seed_everything(0, verbose=False)
    data, net = prepared_task({"name": "synthetic", "n": 1200, "image_size": 8, "strength": 0.25},
                              {"name": "small_cnn", "widths": [8], "fc": [16]})
    variants = {
        "attribute": ("attribute", {"epochs": 8}),
        "denoise (draws 4)": ("denoise", {"attribute": {"epochs": 8}}),
        "denoise (draws 1)": ("denoise", {"draws": 1, "attribute": {"epochs": 8}}),
        "no denoiser, draws 4": ("denoise", {"denoiser": False, "attribute": {"epochs": 8}}),
    }
    lines = ["| seed | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
    for seed in range(seeds):
        ctx = attack_context(data, net, "conv1", "noise", seed=seed, scale=3.0, finetune_epochs=0)
        values = []
        for name, params in variants.values():
            L.seed_everything(seed, verbose=False)
            s = scores_by_metric(run_attack(name, ctx, **params))[("secret", "balanced_accuracy")]
            values.append(f"{s.value:.3f} [{s.ci95[0]:.3f}, {s.ci95[1]:.3f}]")
        lines.append(f"| {seed} | " + " | ".join(values) + " |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["digits", "utkface"], choices=["digits", "utkface"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/inversion_depth"))
    parser.add_argument("--n-test", type=int, default=512, help="test images scored (seeded subset)")
    parser.add_argument("--rmle-n", type=int, default=16, help="test images inverted by rMLE")
    parser.add_argument("--sigma-samples", type=int, default=1024, help="train images for the noise sigma")
    parser.add_argument("--cut-points", nargs="+", default=None, help="subset of the task's cut points")
    parser.add_argument("--scales", nargs="+", type=float, default=None, help="noise scales kept (default: the config's)")
    parser.add_argument("--attacks", nargs="+", default=["inversion", "inversion_rmle", "reidentify"])
    parser.add_argument("--no-heavy-reid", dest="heavy_reid", action="store_false",
                        help=f"skip the re-identification-only noise scales {HEAVY_REID_SCALES}")
    parser.add_argument("--denoise-ablation", action="store_true", help="only the denoise ablation")
    parser.add_argument("--seeds", type=int, default=4, help="seeds of the denoise ablation")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.denoise_ablation:
        text = denoise_ablation(args.seeds)
        (args.out / "denoise_ablation.md").write_text(text + "\n")
        print(text)
        return
    rows = []
    for name in args.tasks:
        start = time.perf_counter()
        rows += run_task(name, args, args.out)
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
        (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    text = table(rows)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
