"""The numeric precision Demucs runs in: ``auto`` resolved against the hardware that runs it.

Why ``auto`` is the default: on a CPU with native bf16 (AVX512-BF16 or AMX) bf16 autocast
separates 1.65x faster than fp32 with stems within 35 dB SNR of fp32 (``bench/RESULTS.md``),
and on CUDA fp16 is the fast path. On a CPU without native bf16 the same autocast is
emulated and slower than fp32, so ``auto`` must know the CPU, not guess it: it reads the
kernel's CPU flags (``/proc/cpuinfo``) and, where there are none (not Linux), asks torch's
own CPU feature probe. An explicit ``fp32``/``fp16``/``bf16`` always wins.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from rescored_ray.errors import ConfigError

PRECISIONS = ("fp32", "fp16", "bf16")
DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
"""The autocast dtype of each precision (None: no autocast, plain fp32)."""

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""Linux CPU flags of instructions that compute in bf16 natively (AVX512-BF16, AMX)."""

CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str] | None:
    """The ``flags`` of the first CPU in ``cpuinfo``; None when the file is unreadable or has none."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):  # x86 / arm64 spelling
            return frozenset(value.split())
    return None


def has_native_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """Whether this CPU computes bf16 natively: its flags, else torch's CPU probe."""
    flags = cpu_flags(cpuinfo)
    if flags is not None:
        return bool(flags & NATIVE_BF16_FLAGS)
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


@functools.lru_cache(maxsize=1)
def _this_cpu_has_native_bf16() -> bool:
    return has_native_bf16()


def resolve_precision(requested: str, device_type: str, native_bf16: bool | None = None) -> str:
    """``fp32``, ``fp16`` or ``bf16`` for a model on ``device_type`` (``cpu``/``cuda``).

    ``auto``: fp16 on CUDA, bf16 on a CPU with native bf16, fp32 elsewhere. ``native_bf16``
    defaults to this machine's CPU (probed once per process).
    """
    if requested in PRECISIONS:
        return requested
    if requested != "auto":
        raise ConfigError(f"unknown precision {requested!r}; expected auto or one of {', '.join(PRECISIONS)}")
    if device_type == "cuda":
        return "fp16"
    if device_type == "cpu" and (_this_cpu_has_native_bf16() if native_bf16 is None else native_bf16):
        return "bf16"
    return "fp32"
