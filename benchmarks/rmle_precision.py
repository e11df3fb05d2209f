"""rMLE inversion in float32 and in bfloat16 (``inversion_rmle.precision``): seconds and PSNR per cut point,
each image's PSNR paired with its float32 twin.

    SPLITAUDIT_CACHE=/work/cache python benchmarks/rmle_precision.py configs/utkface.yaml \
        --set dataset.root=/work/shared/data/utkface/crop_part1 --out /tmp/rmle_precision

The task model comes from the cache (trained there first if it is not; ~14 min for UTKFace). No defense:
the released feature is the edge's clean output, the case where rMLE is strongest and where arithmetic
precision matters most. A seeded subset of ``--n-eval`` test images (``eval_subset``, the config's seed),
started, as the attack does, from the aux mean and scaled by the aux features' mean square. Modes:
``float32``; ``bfloat16`` (the attack's: the last quarter of the steps in float32); ``bfloat16-only``
(every step in bfloat16, the ablation). Writes rows.jsonl and table.md under --out.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from attacks.inversion import eval_subset, per_sample_psnr
from attacks.inversion_rmle import bfloat16_steps, rmle_invert
from audit.config import load_config
from audit.core.chunked import mean_square
from audit.core.training import predict
from audit.runner import AuditRun

MODES = ("float32", "bfloat16", "bfloat16-only")


def steps_in_bfloat16(mode: str, iterations: int) -> int:
    """How many of the steps run in bfloat16 in ``mode``."""
    return {"float32": 0, "bfloat16": bfloat16_steps(iterations), "bfloat16-only": iterations}[mode]


def paired(diff: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error of per-image differences (N,)."""
    return float(diff.mean()), float(diff.std() / math.sqrt(len(diff)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--n-eval", type=int, default=32)
    ap.add_argument("--iterations", type=int, nargs="+", default=[200])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--cut-points", nargs="+", help="default: the config's")
    ap.add_argument("--channels-last", action="store_true", help="image inputs in channels_last (as the attack "
                                                                   "does under trainer.channels_last)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    config = load_config(args.config, args.sets)
    seed = config.seeds[0]
    state = AuditRun(config, args.out / "unused_store").prepare_task(0, seed)
    aux, test = state.data.part("aux"), state.data.part("test")
    idx = eval_subset(len(test), args.n_eval, seed)
    x = test.x[idx].float()
    x0 = aux.x.float().mean(0).expand_as(x)
    rows = []
    for cut in args.cut_points or config.tasks[0].cut_points:
        edge, _ = state.model.split(cut)
        edge.eval()
        z = predict(edge, x)
        scale = max(mean_square(predict(edge, aux.x)), 1e-12)
        psnr = {}
        for iterations in args.iterations:
            for mode in args.modes:
                start = time.perf_counter()
                rec, residual = rmle_invert(
                    edge, z, x0, (0.0, 1.0), iterations=iterations, lr=0.05, tv_weight=0.05, feature_scale=scale,
                    low_precision_steps=steps_in_bfloat16(mode, iterations), channels_last=args.channels_last)
                seconds = time.perf_counter() - start
                psnr[mode, iterations] = per_sample_psnr(rec, x, 1.0)
                ref = psnr.get(("float32", iterations))
                diff, se = paired(psnr[mode, iterations] - ref) if ref is not None else (None, None)
                row = {"cut_point": cut, "mode": mode, "iterations": iterations, "seconds": round(seconds, 2),
                       "psnr_db": round(float(psnr[mode, iterations].mean()), 3),
                       "vs_float32_db": None if diff is None else round(diff, 3),
                       "paired_se_db": None if se is None else round(se, 3),
                       "feature_residual": float(residual.median()), "n_eval": len(idx), "seed": seed,
                       "channels_last": args.channels_last, "threads": torch.get_num_threads()}
                rows.append(row)
                print(json.dumps(row), flush=True)
    (args.out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = ["| cut | mode | steps | seconds | PSNR (dB) | vs float32 (paired SE) |", "|---|---|---|---|---|---|"]
    for r in rows:
        vs = "" if r["vs_float32_db"] is None else f"{r['vs_float32_db']:+.3f} ({r['paired_se_db']:.3f})"
        lines.append(f"| {r['cut_point']} | {r['mode']} | {r['iterations']} | {r['seconds']} | {r['psnr_db']} | {vs} |")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
