"""Where and in what precision the networks run: the one home of precision names and dtypes."""

import os
from pathlib import Path

import torch

from .errors import UsageError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SYS_CPU = Path("/sys/devices/system/cpu")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TORCH_NUM_THREADS")


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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX), as the oneDNN kernels
    behind torch's bf16 matmuls and convolutions need to beat fp32 (elsewhere they emulate)."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    if all(hasattr(cpu, name) for name in checks):
        return any(getattr(cpu, name)() for name in checks)
    try:  # a torch without the probes: the kernel's own report of the flags
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """ "auto" -> bf16 on CUDA and on CPUs with native bf16 (as the official demo, which runs
    bf16 everywhere unless told otherwise), else fp32; an explicit name is checked."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" or cpu_has_native_bf16() else "fp32"
    if precision not in DTYPES:
        raise UsageError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    return precision


def physical_cores() -> int:
    """Physical cores this process may run on: its affinity mask (a container's or a Ray
    worker's share, not the whole machine) with SMT siblings counted once."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topology = SYS_CPU / f"cpu{cpu}" / "topology"
        try:
            package = (topology / "physical_package_id").read_text().strip()
            cores.add((package, (topology / "core_id").read_text().strip()))
        except OSError:  # no sysfs topology: count the CPU itself
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def use_physical_cores() -> int:
    """torch's CPU threads -> `physical_cores()`, unless the environment sets a thread count
    (OMP_NUM_THREADS and the like win). Called by the `selva-rt` command, not by the library.
    GEMM-bound work gains nothing from an SMT sibling and loses to its contention, and a thread
    per CPU outside the affinity mask oversubscribes the ones inside it. Returns the thread
    count in use."""
    if not any(os.environ.get(name) for name in THREAD_VARIABLES):
        torch.set_num_threads(physical_cores())
    return torch.get_num_threads()
