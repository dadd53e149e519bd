"""Device and precision choice: `--precision auto` follows the official demo (bf16) where the
hardware computes bf16 natively, fp32 where it would only emulate it."""

import pytest
import torch
from selva_rt.runtime import device
from selva_rt.runtime.errors import UsageError

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"),
    [(True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")],
)
def test_auto_on_the_cpu_follows_native_bf16(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert device.resolve_precision("auto", CPU) == expected
    assert device.resolve_precision("fp32", CPU) == "fp32"  # an explicit choice stands


def test_without_torch_probes_the_cpu_flags_decide(monkeypatch, tmp_path):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    cpuinfo = tmp_path / "cpuinfo"
    real = device.Path
    monkeypatch.setattr(device, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real(p))
    cpuinfo.write_text("flags\t\t: fpu sse2 avx2 avx512f\n")
    assert not device.cpu_has_native_bf16()
    cpuinfo.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert device.cpu_has_native_bf16()
    cpuinfo.unlink()
    assert not device.cpu_has_native_bf16()


def test_auto_is_bf16_on_cuda_and_names_are_checked():
    assert device.resolve_precision("auto", torch.device("cuda")) == "bf16"
    with pytest.raises(UsageError, match="unknown precision 'fp8'"):
        device.resolve_precision("fp8", CPU)


def test_the_json_and_the_bench_say_what_auto_chose(monkeypatch):
    from selva_rt.benchmarks import bench

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    env = bench.environment(CPU)
    assert env["auto_precision"] == "fp32" and env["cpu"]["native_bf16"] is False
    args = bench.parse_args(["--device", "cpu", "--variant", "tiny"])
    assert {c.precision for c in bench.configs_of(args, CPU)} == {"fp32"}
