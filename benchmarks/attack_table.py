"""Every attack record of a report as a markdown table (value [95% CI], chance, attack seconds), and the
dFIL check of issue 19: in each (cut point, defense) with a ``dfil`` record, every reconstruction
attack's mean PSNR next to the dFIL PSNR ceiling (the bound holds for unbiased reconstructions; an
attack above it is either biased, e.g. helped by a prior or the data-range box, or a bug).

    python benchmarks/attack_table.py OUT/report.json [--cut pool3]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

RECONSTRUCTION = ("inversion", "inversion_prior", "inversion_rmle", "unsplit")


def defense_label(record: dict) -> str:
    params = record.get("defense_params") or {}
    return f"{record['defense']} {params['scale']:g}x" if "scale" in params else record["defense"]


def number(metric: str, value: float) -> str:
    if metric in ("dfil", "mse_bound"):
        return f"{value:.3g}"
    return f"{value:.2f}" if metric in ("psnr", "psnr_ceiling") else f"{value:.3f}"


def records_table(records: list[dict]) -> str:
    lines = ["| cut | defense | attack | target · metric | value [95% CI] | chance | s (fit + score) |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        head = f"| {r['cut_point']} | {defense_label(r)} | {r['attack']} |"
        if r.get("status") != "ok":
            lines.append(f"{head} failed | {(r.get('error') or '').splitlines()[0]} | | |")
            continue
        m, (lo, hi) = r["metric"], r["ci95"]
        extra = r.get("extra") or {}
        note = " (degenerate)" if extra.get("degenerate") else ""
        gain = extra.get("gain_over_supervised")
        if isinstance(gain, dict) and m == "balanced_accuracy":  # model_completion: self-training vs its own head
            note += f"; gain over its supervised head {gain['value']:+.3f} [{gain['ci95'][0]:+.3f}, {gain['ci95'][1]:+.3f}]"
        t = r.get("timings") or {}
        seconds = f"{t.get('attack_fit_seconds', 0):.0f} + {t.get('attack_score_seconds', 0):.0f}"
        chance = "" if r.get("chance") is None else number(m, r["chance"])
        lines.append(f"{head} {r['target']} · {m} | {number(m, r['value'])} [{number(m, lo)}, {number(m, hi)}]{note} "
                     f"| {chance} | {seconds} |")
    return "\n".join(lines)


def dfil_check(records: list[dict]) -> str:
    """Per (cut, defense) with a dfil PSNR ceiling: each reconstruction attack's PSNR and whether it lies above,
    and the mean image's PSNR (the attacks' chance level: a biased estimate that reads no feature at all; when
    it lies above the ceiling, the bound, which holds for unbiased reconstructions, cannot bind any attacker
    that starts from the data's mean)."""
    ok = [r for r in records if r.get("status") == "ok"]
    lines = ["| cut | defense | dFIL PSNR ceiling dB [CI] | attack PSNR dB [CI] | above the ceiling | mean image dB |",
             "|---|---|---|---|---|---|"]
    for c in (r for r in ok if r["attack"] == "dfil" and r["metric"] == "psnr_ceiling"):
        if not (c.get("extra") or {}).get("applicable", True):
            continue
        attacks = [r for r in ok if (r["cut_point"], defense_label(r)) == (c["cut_point"], defense_label(c))
                   and r["attack"] in RECONSTRUCTION and r["metric"] == "psnr"]
        shown = "; ".join(f"{r['attack']} {r['value']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]" for r in attacks)
        above = [r["attack"] for r in attacks if r["value"] > c["value"]]
        means = sorted({round(r["chance"], 2) for r in attacks if r.get("chance") is not None})
        mean = "-".join(f"{v:.2f}" for v in (means[:1] + means[-1:] if len(means) > 1 else means))
        if means:
            mean += " (above)" if means[0] > c["value"] else " (below)"
        lines.append(f"| {c['cut_point']} | {defense_label(c)} | {c['value']:.2f} [{c['ci95'][0]:.2f}, "
                     f"{c['ci95'][1]:.2f}] | {shown or '-'} | {', '.join(above) or 'none'} | {mean or '-'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--cut", action="append", help="only these cut points (repeatable)")
    args = parser.parse_args()
    records = json.loads(args.report.read_text())["results"]
    if args.cut:
        records = [r for r in records if r["cut_point"] in args.cut]
    print(records_table(records), "", dfil_check(records), sep="\n")


if __name__ == "__main__":
    main()
