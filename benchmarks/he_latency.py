"""Encrypted-inference latency and bytes per sample of ``he``: packed vs naive layout, batch 1 and 64.

Cases (CKKS N=8192, coeff_mod_bit_sizes [60,40,40,60], scale 2^40 unless --set):
- ``dense``: one dense layer 512 -> 10 (REFERENCE.md's CKKS table);
- ``fc``: the small CNN's fully connected part on UTKFace-sized features, i.e. the
  cloud after cut pool3 of configs/utkface.yaml's model: Flatten, 8192 -> 512, ReLU
  (a device round), 512 -> 2.
Weights: torch's default initialisation, seeded (``--seed``), or with
``--state-dict`` the trained UTKFace small_cnn (its fc1/logits layers).
Inputs: ReLU of standard normal values (seeded), shaped like the cut feature.

Layouts: ``packed`` (batch-packed diagonal layout, BSGS rotations; the samples per
ciphertext are chosen by the cost model of defenses.he.protocol.make_layouts) and
``naive`` (one ciphertext per sample in, one per output element out; no batching
across samples, so its per-sample cost does not depend on the batch: it is timed on
``--naive-samples`` samples and the row says how many).

Every row is timed after one warm-up batch (the cloud encodes its weight
plaintexts once, as a server loads its model); keygen and the first encodings are
reported separately as setup. ``cloud ms`` = deserialisation + encrypted
evaluation + serialisation on the cloud; ``device ms`` = packing, encryption,
decryption, device-side layers. Agreement: argmax of the decrypted logits equal to
plaintext inference.

    python benchmarks/he_latency.py                       # both cases, both layouts, batch 1 and 64
    python benchmarks/he_latency.py --cases dense --json out.json
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch import nn

from defenses.he.defense import HomomorphicEncryption, build_session
from defenses.he.protocol import Traffic


def make_case(name: str, seed: int, state_dict: str | None) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(seed)
    if name == "dense":
        return nn.Sequential(nn.Linear(512, 10)).eval(), (512,)
    cloud = nn.Sequential(nn.Flatten(), nn.Linear(8192, 512), nn.ReLU(), nn.Linear(512, 2)).eval()
    if state_dict:
        state = torch.load(state_dict, map_location="cpu", weights_only=True)
        fc1 = {k.split("fc1.1.")[1]: v for k, v in state.items() if ".fc1.1." in k}
        head = {k.split("logits.0.")[1]: v for k, v in state.items() if ".logits.0." in k}
        cloud[1].load_state_dict(fc1)
        cloud[3].load_state_dict(head)
    return cloud, (128, 8, 8)


def run_row(cloud, shape, layout: str, batch: int, samples: int, seed: int, overrides: dict) -> dict:
    params = HomomorphicEncryption.Params(layout=layout, batch_size=batch, **overrides)
    gen = torch.Generator().manual_seed(seed + 1)
    z = torch.relu(torch.randn(samples, *shape, generator=gen))
    start = time.perf_counter()
    session = build_session(cloud, z[:1], params)
    keygen = time.perf_counter() - start
    protocol = session.protocol
    step = batch if layout == "packed" else min(batch, samples)
    start = time.perf_counter()
    protocol.run(z[: step if layout == "packed" else 1], Traffic())  # warm-up: fills the cloud's plaintext cache
    warmup = time.perf_counter() - start
    traffic = Traffic()
    logits = torch.cat([protocol.run(z[i : i + step], traffic) for i in range(0, samples, step)])
    with torch.no_grad():
        plain = cloud(z)
    n = traffic.samples
    return {
        "layout": layout, "batch": batch, "samples": n,
        "samples_per_ciphertext": protocol.block,
        "cloud_ms": 1000 * traffic.cloud_seconds / n,
        "device_ms": 1000 * traffic.device_seconds / n,
        "bytes_up": traffic.bytes_up / n, "bytes_down": traffic.bytes_down / n,
        "rotations": traffic.rotations / n, "rounds": len(session.schedule.rounds),
        "agree": int((logits.argmax(1) == plain.argmax(1)).sum()),
        "max_logit_error": float((logits - plain).abs().max()),
        "setup_s": keygen, "warmup_s": warmup,
        "setup_bytes": len(session.device_crypto.public_context) + len(session.device_crypto.galois_bytes),
        "galois_keys": len(session.device_crypto.rotation_steps),
        "plaintext_cache_mb": protocol.cloud.cached_bytes / 2**20,
    }


def table(rows: list[dict]) -> str:
    head = ("| case | layout | batch | samples/ct | n | cloud ms/sample | device ms/sample | bytes up / down per sample "
            "| rotations/sample | argmax = plaintext | setup (keys) |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['layout']} | {r['batch']} | {r['samples_per_ciphertext']} | {r['samples']} "
            f"| {r['cloud_ms']:.1f} | {r['device_ms']:.1f} | {r['bytes_up'] / 1e3:.0f} KB / {r['bytes_down'] / 1e3:.1f} KB "
            f"| {r['rotations']:.1f} | {r['agree']}/{r['samples']} "
            f"| {r['setup_bytes'] / 1e6:.1f} MB, {r['galois_keys']} Galois keys |"
        )
    return "\n".join(lines)


def speedups(rows: list[dict]) -> list[str]:
    out = []
    for case in dict.fromkeys(r["case"] for r in rows):
        for batch in dict.fromkeys(r["batch"] for r in rows):
            sel = {r["layout"]: r for r in rows if r["case"] == case and r["batch"] == batch}
            if {"packed", "naive"} <= sel.keys():
                p, q = sel["packed"], sel["naive"]
                out.append(
                    f"{case}, batch {batch}: packed is {q['cloud_ms'] / p['cloud_ms']:.0f}x faster per sample in the cloud, "
                    f"{(q['cloud_ms'] + q['device_ms']) / (p['cloud_ms'] + p['device_ms']):.0f}x end to end"
                )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="dense,fc")
    ap.add_argument("--layouts", default="packed,naive")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--samples", type=int, default=128, help="samples timed per packed row (batch 1: --batch1-samples)")
    ap.add_argument("--batch1-samples", type=int, default=16)
    ap.add_argument("--naive-samples", default="dense=64,fc=2", help="samples timed per naive row, per case")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--state-dict", default=None, help="trained small_cnn state dict for the fc case")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="he parameter override")
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args(argv)
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    naive_n = {k: int(v) for k, v in (s.split("=") for s in args.naive_samples.split(","))}
    rows = []
    for case in args.cases.split(","):
        cloud, shape = make_case(case, args.seed, args.state_dict)
        for batch in (int(b) for b in args.batches.split(",")):
            for layout in args.layouts.split(","):
                if layout == "naive":
                    samples = min(naive_n.get(case, 4), batch) if batch > 1 else min(naive_n.get(case, 4), args.batch1_samples)
                else:
                    samples = args.batch1_samples if batch == 1 else max(batch, args.samples // batch * batch)
                row = {"case": case, **run_row(cloud, shape, layout, batch, samples, args.seed, overrides)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print(table(rows))
    print()
    print("\n".join(speedups(rows)))
    if args.json:
        meta = {"seed": args.seed, "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                "state_dict": args.state_dict, "overrides": overrides}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
