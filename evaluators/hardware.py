"""What the hardware is: processor and GPU descriptions that go into device fingerprints."""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from pathlib import Path

# ISA features that select int8 / bf16 / fp16 kernels.
ISA_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
    "amx_bf16",
    "avx512_fp16",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
)


@lru_cache(maxsize=1)
def cpu_model_and_flags() -> tuple[str, frozenset[str]]:
    """The CPU model string and its feature flags, from /proc/cpuinfo (Linux; elsewhere best effort)."""
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key in ("model name", "Hardware") and not model:
                model = value
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), frozenset(flags)


# x86 features with native bf16 arithmetic (dot products into FP32): AVX512-BF16 and AMX.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (one of BF16_FLAGS); elsewhere bf16 is emulated and slow."""
    _, flags = cpu_model_and_flags()
    return any(f in flags for f in BF16_FLAGS)


def cpu_description() -> str:
    """CPU model string plus the ISA features that select kernels, e.g. "AMD EPYC (avx2,avx512f)"."""
    model, flags = cpu_model_and_flags()
    isa = ",".join(f for f in ISA_FLAGS if f in flags)
    return f"{model} ({isa})" if isa else model


def gpu_description(index: int = 0) -> str | None:
    """Name of CUDA GPU `index` (via torch when it has CUDA, else nvidia-smi), or None."""
    try:
        import torch

        if torch.cuda.is_available() and index < torch.cuda.device_count():
            return torch.cuda.get_device_name(index)
    except Exception:  # a broken CUDA install is "no GPU" here
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", f"--id={index}"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None
