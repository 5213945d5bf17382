"""Choosing the fast numeric path for the machine at hand."""

from __future__ import annotations

import contextlib
import functools
import platform

import torch

from .errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX on x86 (bf16 is slower than fp32 when only emulated)."""
    if platform.system() != "Linux":
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        return False
    return False


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Ampere (compute capability 8.0) or newer, or ROCm. ``torch.cuda.is_bf16_supported()``
    also says yes on older GPUs that only emulate bf16, where it is far slower than fp16."""
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def resolve_precision(requested: str, device: torch.device) -> str:
    """``auto``: bf16 on CPUs with native bf16, AMP on CUDA (bf16 from Ampere on, fp16
    before), fp32 elsewhere (Apple's MPS included: its autocast coverage varies by macOS
    version, and fp32 is what every version runs; ``--precision fp16`` asks for AMP there)."""
    if requested not in PRECISIONS:
        raise ConfigError(f"--precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        if device.type == "cuda":
            return "bf16" if cuda_has_native_bf16(device) else "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if requested == "fp16" and device.type not in ("cuda", "mps"):
        raise ConfigError("--precision fp16 needs a CUDA GPU or MPS; use bf16 or fp32 on the CPU")
    return requested


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def default_device() -> torch.device:
    """CUDA, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("mps") if _mps_available() else torch.device("cpu")


def resolve_device(spec: str | None = "auto") -> torch.device:
    """``--device``: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; one that this machine
    does not have is a clear error, never a silent fall back to the CPU."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return default_device()
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not _mps_available():
            raise ConfigError("--device mps: Apple's MPS is not available here; use auto or cpu")
        return torch.device("mps")
    kind, _, index = spec.partition(":")
    if kind == "cuda" and (index == "" or index.isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: no CUDA GPU is visible; use auto or cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                f"numbered from 0"
            )
        return torch.device(spec)
    raise ConfigError(f"--device {spec!r} is not one of auto, cpu, cuda, cuda:N, mps")


def as_device(spec) -> torch.device:
    """A ``torch.device`` as given, or ``--device``'s words (None or "auto" included)."""
    import torch

    return spec if isinstance(spec, torch.device) else resolve_device(spec)
