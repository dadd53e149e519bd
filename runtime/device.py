"""Where and in what precision the networks run: the one home of precision names and dtypes."""

import torch

from .errors import UsageError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_name(dtype: torch.dtype) -> str:
    return next(k for k, v in DTYPES.items() if v == dtype)


def resolve_device(device: str | torch.device) -> torch.device:
    """ "auto", "cpu", "cuda", "cuda:N" -> a usable torch.device, or a one-line UsageError."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device} was asked for but no CUDA device is available; use cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"unsupported device {device!r}; use cpu, cuda, cuda:N or auto")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """ "auto" -> bf16 on CUDA, fp32 on the CPU; an explicit name is checked."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in DTYPES:
        raise UsageError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    return precision
