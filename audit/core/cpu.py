"""What this machine's CPU computes with: its instruction-set flags, torch's kernel capability and whether
bfloat16 runs in hardware.

Figures depend on these (torch, oneDNN and numpy pick kernels by instruction set, and another summation
order moves a trained attack's figure within noise), and so does speed: bfloat16 autocast trained the
UTKFace task model's step 2.0x faster than float32 on an AMD EPYC with AVX512-BF16, and 8-19x *slower* on
one without it, where oneDNN emulates it (benchmarks/RESULTS.md "Training precision").
"""
from __future__ import annotations

import functools
import hashlib
import platform
from pathlib import Path

import torch

BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # x86 flags of bfloat16 arithmetic in hardware


@functools.cache
def _cpuinfo(key: str) -> str | None:
    """The value of the first ``key`` line of ``/proc/cpuinfo`` (None where there is none, e.g. macOS)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> frozenset[str]:
    """The first CPU's flags in ``/proc/cpuinfo`` (empty where there is none)."""
    return frozenset((_cpuinfo("flags") or "").split())


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :func:`platform.processor` says."""
    return _cpuinfo("model name") or platform.processor() or "unknown"


def cpu_signature() -> str:
    """What decides the arithmetic of this machine's kernels: torch's CPU capability (e.g. ``AVX512``) and a
    hash of the CPU's vector instruction-set flags (``unknown`` where they cannot be read). Two machines
    with the same signature reproduce an audit's figures bit for bit (same packages and thread count)."""
    isa = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "sse", "f16c")))
    digest = hashlib.sha256(" ".join(isa).encode()).hexdigest()[:8] if isa else "unknown"
    return f"{torch.backends.cpu.get_cpu_capability()}:{digest}"


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX-BF16 that torch's oneDNN build can use. Elsewhere bfloat16 autocast is emulated."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not (cpu_flags() & BF16_FLAGS) or not torch.backends.mkldnn.is_available():
        return False
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_summary() -> dict[str, object]:
    """The report's ``environment.cpu``: model name, torch's capability, :func:`cpu_signature` and whether
    bfloat16 runs in hardware."""
    return {"model": cpu_model(), "capability": torch.backends.cpu.get_cpu_capability(),
            "signature": cpu_signature(), "bfloat16": native_bfloat16(torch.device("cpu"))}
