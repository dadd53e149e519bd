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


def fake_topology(root, cores: dict[int, tuple[int, int]]) -> None:
    for cpu, (package, core) in cores.items():
        topology = root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
        (topology / "core_id").write_text(f"{core}\n")


def test_threads_follow_physical_cores_in_the_affinity_mask(monkeypatch, tmp_path):
    # 2 packages x 2 cores x 2 SMT siblings; this process may run on CPUs 0, 1, 4 and 6:
    # cores (0, 0) twice (0 and its sibling 1), (1, 0) and (1, 1) -> 3 physical cores.
    fake_topology(tmp_path, {c: (c // 4, (c % 4) // 2) for c in range(8)})
    monkeypatch.setattr(device, "SYS_CPU", tmp_path)
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: {0, 1, 4, 6})
    for name in device.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    try:
        assert device.physical_cores() == 3
        assert device.use_physical_cores() == 3 == torch.get_num_threads()
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice stands
        assert device.use_physical_cores() == 2
    finally:
        torch.set_num_threads(before)


def test_without_topology_each_cpu_counts(monkeypatch, tmp_path):
    monkeypatch.setattr(device, "SYS_CPU", tmp_path / "missing")
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: {2, 3})
    assert device.physical_cores() == 2
