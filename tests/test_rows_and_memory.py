"""Several jobs' rows through one sampler and decoder call (`Pipeline.generate_many`, the batch
engine, the server's worker) give each job its own stem; low-memory mode keeps one stage's
weights in memory and gives the same stems; the commands' --no-cache and --low-memory."""

import json

import numpy as np
import pytest
import soundfile
import torch
from selva_rt.runtime import cli
from selva_rt.runtime.backends import offload
from selva_rt.runtime.backends.torch_parts import TorchParts
from selva_rt.runtime.errors import MediaError
from selva_rt.runtime.families import family_of
from selva_rt.runtime.models.networks import build_networks
from selva_rt.runtime.pipeline import Pipeline, Request
from selva_rt.runtime.service.batch import LocalEngine, read_jobs
from selva_rt.runtime.variants import TINY

torch.set_num_threads(1)
STEPS = 3
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pipe(tiny_nets) -> Pipeline:
    return Pipeline(family_of(TINY, TorchParts(TINY, tiny_nets, CPU, torch.float32)))


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def sampler_calls(pipe: Pipeline, monkeypatch) -> list[int]:
    """Rows of every sampler call `pipe` makes from now on."""
    rows, sample = [], pipe.family.sample
    monkeypatch.setattr(
        pipe.family, "sample", lambda x0, *a: rows.append(x0.shape[0]) or sample(x0, *a)
    )
    return rows


def test_jobs_of_one_window_length_share_the_sampler_and_keep_their_stems(
    pipe, sample_clip, monkeypatch
):
    requests = [
        Request(sample_clip, ["dog barking"], seed=1, steps=STEPS, duration=1.2),
        Request(sample_clip, ["rain", "wind"], seed=2, steps=STEPS, duration=1.2),
        Request(sample_clip, ["horn"], seed=3, steps=STEPS, duration=1.2, start=1.0),  # 1.16 s
        Request(sample_clip, ["horn"], seed=4, steps=STEPS + 1, duration=1.2),  # other steps
        Request(sample_clip.with_name("missing.mp4"), ["x"], steps=STEPS),
    ]
    rows = sampler_calls(pipe, monkeypatch)
    together = pipe.generate_many(requests)
    assert rows == [3, 1, 1]  # the first two share one call; other lengths and steps do not
    assert isinstance(together[4], MediaError)
    for req, got in zip(requests[:4], together, strict=False):
        alone = pipe.generate(
            req.clip, req.prompts, seed=req.seed, steps=req.steps, duration=1.2, start=req.start
        )
        assert got.prompts == alone.prompts and got.start == alone.start
        # Other rows in the batch change the GEMMs' blocking: equal to fp32 rounding (the
        # shared-call test of tests/test_modes.py measures 1.6e-5 on the audio).
        assert rel_l2(got.audio, alone.audio) <= 1e-4


def test_the_batch_engine_runs_jobs_together_with_the_same_stems(
    pipe, sample_clip, tmp_path, monkeypatch
):
    lines = [{"clip": str(sample_clip), "prompts": [p], "seed": i, "steps": STEPS, "duration": 1}
             for i, p in enumerate(("rain", "dog", "horn"))]  # fmt: skip
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    entries = read_jobs(jobs)
    rows = sampler_calls(pipe, monkeypatch)
    one = [r for _, r, _ in LocalEngine(pipe, 1, together=1).run(entries)]
    assert rows == [1, 1, 1]
    two = [r for _, r, _ in LocalEngine(pipe, 1, together=2).run(entries)]
    assert rows[3:] == [2, 1]
    for a, b in zip(one, two, strict=True):
        assert rel_l2(b.audio, a.audio) <= 1e-4
        assert "sampling" in b.timings and b.timings["decode"] > 0


def test_low_memory_keeps_one_stage_resident_and_gives_the_same_stems(
    sample_clip, tmp_path, monkeypatch
):
    monkeypatch.setenv("SELVA_RT_HOME", str(tmp_path))
    monkeypatch.setattr(offload, "MIN_BYTES", 0)  # tiny's tensors are small: offload them all
    normal = Pipeline(
        family_of(TINY, TorchParts(TINY, build_networks(TINY, {}), CPU, torch.float32))
    )
    parts = TorchParts(TINY, build_networks(TINY, {}), CPU, torch.float32, low_memory=True)
    low = Pipeline(family_of(TINY, parts))
    nets = parts.nets

    def out(module) -> bool:
        return all(p.is_meta for p in module.parameters())

    dit = nets.generator.joint_blocks  # the generator's latent statistics always stay
    assert out(dit) and out(nets.video_encoder) and out(nets.vocoder)  # nothing in yet
    assert not nets.generator.latent_std.is_meta
    seen = []

    def during_sampling(steps: int) -> None:
        seen.append((out(dit), out(nets.video_encoder), out(nets.vocoder)))

    got = low.generate(sample_clip, ["dog barking", "rain"], steps=STEPS, duration=1.2,
                       progress=during_sampling)  # fmt: skip
    expected = normal.generate(sample_clip, ["dog barking", "rain"], steps=STEPS, duration=1.2)
    # The same weights at other addresses: some CPU GEMM kernels round differently with the
    # weights' alignment (seen in the spatial pooling's query projection), so equal to rounding.
    assert rel_l2(got.audio, expected.audio) <= 1e-4
    assert seen == [(False, True, True)] * STEPS  # the DiT in, encoders and vocoder out
    assert parts.offload.stage == "decoder"
    assert out(dit) and not out(nets.vocoder)
    files = sorted(p.name for p in (tmp_path / "offload").rglob("*.pt"))
    assert files == sorted(f"{n}.pt" for n in parts.offload.networks)
    # A second load of the same weights reuses the files (written once).
    stamp = [p.stat().st_mtime_ns for p in (tmp_path / "offload").rglob("*.pt")]
    TorchParts(TINY, build_networks(TINY, {}), CPU, torch.float32, low_memory=True)
    assert stamp == [p.stat().st_mtime_ns for p in (tmp_path / "offload").rglob("*.pt")]


def test_generate_keeps_features_unless_told_not_to(sample_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("SELVA_RT_HOME", str(tmp_path / "home"))
    args = ["generate", str(sample_clip), "rain", "--variant", "tiny", "--steps", "2"]
    args += ["--duration", "1", "--no-video", "--quiet", "--precision", "fp32"]
    features = tmp_path / "home" / "features"
    assert cli.main([*args, "--out", str(tmp_path / "a"), "--no-cache"]) == 0
    assert not features.exists()
    assert cli.main([*args, "--out", str(tmp_path / "b")]) == 0
    assert len(list(features.glob("*.json"))) == 3  # the picture record, the window and the prompt
    assert cli.main([*args, "--out", str(tmp_path / "c")]) == 0  # found: no trunk
    stems = [soundfile.read(next((tmp_path / d).glob("*.wav")))[0] for d in "abc"]
    assert np.array_equal(stems[0], stems[1]) and np.array_equal(stems[0], stems[2])
    assert cli.main([*args, "--out", str(tmp_path / "d"), "--cache-gb", "-1"]) == 2


def test_what_stays_resident_lets_the_mapped_checkpoint_go(tmp_path, monkeypatch):
    """Networks loaded from a memory-mapped file (how low-memory reads a checkpoint): once the
    stage files are written, nothing resident is a slice of that mapping (one slice would keep
    the whole file mapped, and its pages in the process's resident set)."""
    monkeypatch.setenv("SELVA_RT_HOME", str(tmp_path))
    path = tmp_path / "networks.pt"
    torch.save(build_networks(TINY, {}), path)
    nets = torch.load(path, mmap=True, weights_only=False)
    mapped = {
        t.untyped_storage().data_ptr()
        for m in (nets.generator, nets.vocoder)
        for t in (*m.parameters(), *m.buffers())
    }
    parts = TorchParts(TINY, nets, CPU, torch.float32, low_memory=True)
    resident = [
        t for m in parts.modules() for t in (*m.parameters(), *m.buffers()) if not t.is_meta
    ]
    assert resident and parts.offload.resident_bytes == 0  # only the small tensors stay
    assert not {t.untyped_storage().data_ptr() for t in resident} & mapped
