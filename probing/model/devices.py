"""Devices and dtypes: where models run and probes train, and in which float type.

Chosen from the hardware unless given: the GPU when there is one; bf16 where the hardware computes
it fast, else float32 (``PROBING_DTYPE`` overrides the default dtype). A device that is asked for but
missing is a ``ValueError`` saying what is wrong, never a silent CPU run.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

from probing.constants import DEVICE_KINDS, DTYPE_NAMES

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
DTYPE_VARIABLE = "PROBING_DTYPE"  # forces the default dtype, e.g. to run the tests as another CPU would


def default_device() -> str:
    """Where models run and probes train unless told otherwise: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> str:
    """The dtype the engine picks on ``device``: bf16 on CUDA (fp16 where bf16 is unsupported);
    on a CPU bf16 only where it has bf16 matrix units, else float32."""
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if cpu_has_fast_bfloat16() else "float32"


def check_device(device: str) -> str:
    """``device`` if this machine has it; else a ``ValueError`` saying what is wrong, never a silent CPU run."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a device: use 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if parsed.type not in DEVICE_KINDS:
        raise ValueError(f"device {device!r} is not supported: use 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = "" if torch.version.cuda else f"; this PyTorch ({torch.__version__}) is built without CUDA"
            raise ValueError(f"device {device!r}: CUDA is not available on this machine{build}. "
                             "Use 'cpu', or leave the device unset to use the default.")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s), cuda:0 to "
                             f"cuda:{count - 1} (CUDA_VISIBLE_DEVICES may hide others)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS (Apple's GPU) is not available on this machine. "
                         "Use 'cpu', or leave the device unset to use the default.")
    return device


def cpu_has_fast_bfloat16() -> bool:
    """True on CPUs with bfloat16 matrix units (AMX or AVX512-BF16); elsewhere bf16 is emulated and slow.

    Measured on an AVX2-only EPYC: a bf16 matmul ran ~70x slower than float32.
    """
    return cpu_bfloat16_units() is not None


@cache
def cpu_bfloat16_units() -> str | None:
    """The CPU's bfloat16 matrix units: "amx" (Intel Xeon), "avx512_bf16" (e.g. AMD Zen 4/5), or None (read once:
    every training and model load asks)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return None
    return next((units for units, flag in (("amx", "amx_bf16"), ("avx512_bf16", "avx512_bf16")) if flag in flags), None)


@cache
def last_level_cache_bytes() -> int | None:
    """The size of the CPU's largest unified cache as Linux reports it (cpu0), or None where it does not (read
    once: every Adam training asks)."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (index / "type").read_text().strip() == "Unified":
                text = (index / "size").read_text().strip()
                unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
                sizes.append(int(text.rstrip("KMG")) * unit)
        except (OSError, ValueError):
            continue
    return max(sizes, default=None)
