"""Training-step time of the UTKFace task model on this CPU: float32 vs bfloat16 autocast, contiguous vs
channels_last memory, and channels_last + bfloat16 under ``torch.compile`` (issue 17, item 4: keep what is
faster at equal accuracy, per CPU capability).

    python benchmarks/training_precision.py --rounds 3 --steps 6 --out benchmarks/training_precision.jsonl
    python benchmarks/training_precision.py --rounds 2 --modes channels_last_bf16 channels_last_bf16_compiled --ops

``--ops`` also prints, per mode, the share of the step's CPU time of each kind of operator (torch.profiler,
three steps): convolutions, batch norm, ReLU, pooling, the rest. The compiled mode needs a C++ compiler
(inductor); its first step (the compilation) is not timed.

The model is configs/utkface.yaml's (small_cnn, widths 64-128-128, fc 512, 64x64 RGB, 2 classes), one
Adam step on a batch of 128 random images per timed step. The modes are interleaved in every round
(so a load change on a shared machine hits all of them) and each round's median step is kept; the line
written per mode holds every round's median, the CPU's model name and whether it has bfloat16 hardware
(avx512_bf16 / amx_bf16 in /proc/cpuinfo). Accuracy is not measured: a mode that is not faster is not
kept whatever its accuracy.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from audit.core.cpu import BF16_FLAGS, cpu_flags, cpu_model
from audit.core.models import MODELS

MODES = {  # name: (channels_last, bf16 autocast, torch.compile)
    "float32": (False, False, False),
    "bf16_autocast": (False, True, False),
    "channels_last": (True, False, False),
    "channels_last_bf16": (True, True, False),
    "channels_last_bf16_compiled": (True, True, True),
}
OP_KINDS = {"conv": ("convolution",), "batch norm": ("batch_norm",), "relu": ("clamp_min", "threshold", "relu"),
            "pooling": ("pool",)}  # kind: parts of aten operator names


def cpu_info() -> dict:
    return {"cpu": cpu_model(), "bf16_hardware": sorted(cpu_flags() & (BF16_FLAGS | {"amx_tile"})),
            "threads": torch.get_num_threads()}


def op_shares(profiler) -> dict[str, float]:
    """Share of the profiled self CPU time per kind of operator (OP_KINDS, the rest as "other")."""
    totals: dict[str, float] = {kind: 0.0 for kind in [*OP_KINDS, "other"]}
    for event in profiler.key_averages():
        if not event.key.startswith("aten::"):
            continue
        kind = next((k for k, names in OP_KINDS.items() if any(n in event.key for n in names)), "other")
        totals[kind] += event.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return {kind: round(t / whole, 3) for kind, t in totals.items()}


def step_seconds(channels_last: bool, bf16: bool, compiled: bool, steps: int, batch: int, seed: int,
                 ops: bool = False) -> tuple[float, dict | None]:
    """Median seconds of ``steps`` training steps (after two warm-up steps) in one mode, and with ``ops`` the
    operator shares of three more steps (:func:`op_shares`)."""
    torch.manual_seed(seed)
    net = MODELS.create("small_cnn", widths=[64, 128, 128], fc=[512]).build((3, 64, 64), 2)
    x, y = torch.rand(batch, 3, 64, 64), torch.randint(0, 2, (batch,))
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    forward = torch.compile(net) if compiled else net

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            loss = F.cross_entropy(forward(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    shares = None
    if ops:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                step()
        shares = op_shares(prof)
    return statistics.median(times), shares


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES),
                   help="modes to time (bfloat16 without hardware support is slow: time it with few steps)")
    p.add_argument("--ops", action="store_true", help="also the share of CPU time per kind of operator (first round)")
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("training_precision.jsonl"))
    args = p.parse_args(argv)
    info = cpu_info()
    medians: dict[str, list[float]] = {m: [] for m in args.modes}
    shares: dict[str, dict] = {}
    for r in range(args.rounds):
        for mode in args.modes:
            seconds, op_share = step_seconds(*MODES[mode], args.steps, args.batch, seed=r, ops=args.ops and r == 0)
            medians[mode].append(seconds)
            if op_share is not None:
                shares[mode] = op_share
            print(f"round {r} {mode}: {seconds:.3f} s/step" + (f", CPU time by operator {op_share}" if op_share else ""),
                  flush=True)
    base = statistics.median(medians["float32"]) if "float32" in medians else None
    with open(args.out, "a") as fh:
        for mode, values in medians.items():
            row = {"mode": mode, "step_seconds": [round(v, 4) for v in values], "batch": args.batch,
                   "steps": args.steps, "vs_float32": round(statistics.median(values) / base, 3) if base else None,
                   **({"op_shares": shares[mode]} if mode in shares else {}), **info}
            fh.write(json.dumps(row) + "\n")
            print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
