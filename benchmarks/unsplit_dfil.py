"""UnSplit (architecture-only inversion) and dFIL (Fisher-information leakage) per cut point and
noise level, next to the decoder and white-box rMLE inversions, on the default audit's digits task.

    SPLITAUDIT_CACHE=/tmp/unsplit_cache nice -n 10 python benchmarks/unsplit_dfil.py --out /tmp/unsplit_dfil
    python benchmarks/unsplit_dfil.py --table            # markdown of the committed results

One audit through the runner (so the figures are what `splitaudit run` records): the digits task of
``audit/default.yaml`` (small CNN 16/32, fc 64) cut at conv1 / pool1 / pool2, defenses none and
Gaussian noise at 0.5x / 2x the feature std (cloud not fine-tuned: what is released is the same),
attacks ``unsplit`` (on 32 test images) and ``dfil`` at their defaults, ``inversion_rmle`` at the
default audit's budget. One JSON line per (cut, defense) in --results.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "unsplit_dfil.jsonl"
ATTACKS = {"unsplit": {"n_eval": 32}, "dfil": {}, "inversion_rmle": {"n_eval": 16, "iterations": 100}}


def config(seed: int) -> dict:
    return {
        "name": "unsplit_dfil", "seeds": [seed],
        "dataset": {"name": "digits", "primary": "digit", "private": ["ink"]},
        "model": {"name": "small_cnn", "widths": [16, 32], "fc": [64]},
        "cut_points": ["conv1", "pool1", "pool2"], "training": {"epochs": 8},
        "defenses": ["none", *({"name": "noise", "scale": s, "finetune_epochs": 0} for s in (0.5, 2.0))],
        "attacks": ATTACKS,
    }


def rows(records: list[dict]) -> list[dict]:
    """One row per (cut, defense): each attack's metric -> value, CI, chance, n, seconds."""
    out: dict[tuple, dict] = {}
    for r in records:
        if r.get("status") != "ok":
            continue
        scale = (r.get("defense_params") or {}).get("scale")
        key = (r["cut_point"], r["defense"] if scale is None else f"noise({scale})")
        row = out.setdefault(key, {"cut": key[0], "defense": key[1], "seed": r["seed"]})
        seconds = sum(v for k, v in (r.get("timings") or {}).items() if k.startswith("attack_"))
        row[f"{r['attack']}.{r['metric']}"] = {"value": r["value"], "ci95": r["ci95"], "chance": r["chance"],
                                               "n": r["n_eval"], "seconds": round(seconds, 1)}
    return list(out.values())


def _fig(row: dict, key: str, digits: int = 1) -> str:
    f = row.get(key)
    if f is None:
        return "n/a"
    lo, hi = f["ci95"]
    return f"{f['value']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def table(lines: list[dict]) -> str:
    head = ("| cut | defense | unsplit PSNR dB [CI] | unsplit SSIM [CI] | mean-image PSNR | unsplit s | "
            "rMLE PSNR | dFIL [CI] (1/unit^2) | MSE bound | PSNR ceiling dB [CI] | dfil s |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in lines:
        u = row.get("unsplit.psnr", {})
        ceiling = _fig(row, "dfil.psnr_ceiling")
        if row.get("dfil.dfil") is None:
            ceiling = "none (deterministic)"
        bound = row.get("dfil.mse_bound", {}).get("value")
        out.append(
            f"| {row['cut']} | {row['defense']} | {_fig(row, 'unsplit.psnr')} | {_fig(row, 'unsplit.ssim', 3)} | "
            f"{u.get('chance', float('nan')):.1f} | {u.get('seconds', 'n/a')} | "
            f"{_fig(row, 'inversion_rmle.psnr')} | {_fig(row, 'dfil.dfil', 3) if 'dfil.dfil' in row else 'inf'} | "
            f"{'0' if not bound else f'{bound:.4g}'} | {ceiling} | {row.get('dfil.mse_bound', {}).get('seconds', 'n/a')} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/unsplit_dfil"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--table", action="store_true", help="print the markdown table of --results and stop")
    args = parser.parse_args()
    if not args.table:
        from audit import Audit

        report = Audit(config(args.seed)).run(args.out, callbacks=[])
        with args.results.open("w", encoding="utf-8") as f:
            for row in rows(report["results"]):
                f.write(json.dumps(row) + "\n")
    lines = [json.loads(line) for line in args.results.read_text(encoding="utf-8").splitlines() if line.strip()]
    print(table(lines))


if __name__ == "__main__":
    main()
