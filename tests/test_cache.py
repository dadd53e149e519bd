"""The feature cache (runtime/cache.py): a cached run gives exactly the stem an uncached run gives,
entries are keyed by content and never trusted when damaged, the disk and memory stay within
their limits; overlapping windows share their trunk segments; prompts are encoded alone."""

import json
import os
import shutil

import numpy as np
import pytest
import safetensors.torch
import torch
from selva_rt.runtime.backends.torch_parts import TorchParts
from selva_rt.runtime.cache import FeatureCache, tensor_digest
from selva_rt.runtime.families import family_of
from selva_rt.runtime.families.family import Run
from selva_rt.runtime.pipeline import Pipeline
from selva_rt.runtime.variants import TINY

torch.set_num_threads(1)
STEPS, DURATION = 3, 1.2
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def family(tiny_nets):
    return family_of(TINY, TorchParts(TINY, tiny_nets, CPU, torch.float32))


def generate(pipe: Pipeline, clip, prompts=("dog barking",), **options):
    options = {"seed": 3, "steps": STEPS, "duration": DURATION, **options}
    return pipe.generate(clip, list(prompts), **options)


def entries(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_a_cached_run_gives_the_uncached_stem_and_skips_the_trunk(family, sample_clip, tmp_path):
    uncached = Pipeline(family)
    first = Pipeline(family, FeatureCache.open(tmp_path))
    # A fresh cache over the same folder: what the next `selva-rt generate` finds on disk.
    second = Pipeline(family, FeatureCache.open(tmp_path))
    expected = generate(uncached, sample_clip)
    miss = generate(first, sample_clip)
    hit = generate(second, sample_clip)
    assert np.array_equal(miss.audio, expected.audio)
    assert np.array_equal(hit.audio, expected.audio)
    assert "video_trunk" in miss.timings and "video_trunk" not in hit.timings
    assert "decode" in miss.timings and "decode" not in hit.timings  # the picture record
    assert (hit.start, hit.duration) == (miss.start, miss.duration)
    assert second.cache.stats.hits == {"picture": 1, "window": 1, "text": 1}
    assert len(entries(tmp_path)) == 6  # picture, window, prompt: tensors + json each

    # A new prompt on the clip: the window is found, the prompt is made; same stem as uncached.
    new = generate(second, sample_clip, ["rain on a roof", "dog barking"])
    assert np.array_equal(new.audio, generate(uncached, sample_clip, new.prompts).audio)
    assert "video_trunk" not in new.timings and "video_select" in new.timings
    assert second.cache.stats.hits == {"picture": 2, "window": 2, "text": 2}
    assert second.cache.stats.misses == {"text": 1}


def test_keys_follow_content_not_path_or_mtime(family, sample_clip, tmp_path):
    pipe = Pipeline(family, FeatureCache.open(tmp_path / "cache"))
    generate(pipe, sample_clip)
    copy = tmp_path / "renamed copy.mp4"
    shutil.copy(sample_clip, copy)
    os.utime(copy, (1, 1))
    generate(pipe, copy)
    assert pipe.cache.stats.hits.get("window") == 1  # same frames: found
    assert pipe.cache.stats.hits.get("picture") == 1  # same bytes: not decoded again
    generate(pipe, copy, start=0.4)  # other frames: made
    assert pipe.cache.stats.misses.get("window") == 2


def test_a_clip_rewritten_in_place_is_decoded_again(family, sample_clip, tmp_path):
    """The picture record follows the file's bytes: the same path and mtime with other
    content is decoded, and its stem is the uncached one."""
    from clips import make_clip

    clip = tmp_path / "shot.mp4"
    shutil.copy(sample_clip, clip)
    pipe = Pipeline(family, FeatureCache.open(tmp_path / "cache"))
    generate(pipe, clip)
    mtime = clip.stat().st_mtime_ns
    make_clip(clip, 40, 25, size=(64, 48))  # another picture under the same name and mtime
    os.utime(clip, ns=(mtime, mtime))
    again = generate(pipe, clip)
    assert "decode" in again.timings and pipe.cache.stats.misses.get("picture") == 2
    assert np.array_equal(again.audio, generate(Pipeline(family), clip).audio)


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "other format", "no json"])
def test_a_damaged_entry_is_remade_not_trusted(family, sample_clip, tmp_path, damage):
    pipe = Pipeline(family, FeatureCache.open(tmp_path))
    expected = generate(pipe, sample_clip).audio
    tensors = max(tmp_path.glob("*.safetensors"), key=lambda p: p.stat().st_size)  # the window
    meta = tensors.with_suffix(".json")
    if damage == "flip a byte":
        data = bytearray(tensors.read_bytes())
        data[-5] ^= 0x40
        tensors.write_bytes(bytes(data))
    elif damage == "truncate":
        tensors.write_bytes(tensors.read_bytes()[:100])
    elif damage == "other format":  # what another version of selva-rt left
        record = json.loads(meta.read_text())
        record["format"] += 1
        meta.write_text(json.dumps(record))
    else:
        meta.unlink()
    again = Pipeline(family, FeatureCache.open(tmp_path))
    out = generate(again, sample_clip)
    # The picture record leads to the damaged window: it is decoded and made again.
    assert again.cache.stats.misses == {"window": 1}
    assert again.cache.stats.hits == {"picture": 1, "text": 1}
    assert np.array_equal(out.audio, expected)
    sound = safetensors.torch.load(tensors.read_bytes())  # rewritten whole
    assert json.loads(meta.read_text())["format"] == 1 and "trunk" in sound


def test_reference_mode_reuses_nothing(tiny_nets, sample_clip, tmp_path):
    parts = TorchParts(TINY, tiny_nets, CPU, torch.float32, reference=True)
    pipe = Pipeline(family_of(TINY, parts), FeatureCache.open(tmp_path))
    generate(pipe, sample_clip)
    assert entries(tmp_path) == [] and pipe.cache.stats.misses == {}


def test_least_recently_used_entries_leave_first(tmp_path):
    cache = FeatureCache(tmp_path, disk_bytes=1 << 30, memory_bytes=2 * 4096)
    ident = {"model": "m"}
    keys = {  # a memory-only cache tells the keys without touching the folder
        n: FeatureCache(None, 0).lookup("text", ident, {"prompt": n}, CPU).key
        for n in ("a", "bb", "ccc", "dddd")
    }

    def put(name: str) -> None:
        entry = cache.lookup("text", ident, {"prompt": name}, CPU)
        assert entry.tensors is None
        entry.tensors = {"x": torch.full((1024,), float(len(name)))}  # 4 KiB
        cache.store(entry)

    for name in ("a", "bb", "ccc"):
        put(name)
    assert len(cache.memory) == 2 and cache.memory_used == 2 * 4096  # memory: the last two
    for age, name in enumerate(("a", "bb", "ccc")):  # used in this order, long ago
        os.utime(tmp_path / f"{keys[name]}.json", (100 + age, 100 + age))
    cache.clear_memory()
    assert cache.lookup("text", ident, {"prompt": "a"}, CPU).tensors is not None  # "a" again
    cache.disk_bytes = sum(p.stat().st_size for p in tmp_path.iterdir()) + 100  # three fit
    put("dddd")
    left = {p.stem for p in tmp_path.glob("*.json")}
    assert left == {keys["a"], keys["ccc"], keys["dddd"]}  # "bb": the least recently used
    assert len(entries(tmp_path)) == 6


def test_overlapping_windows_compute_each_trunk_segment_once(family):
    """Two windows 16 frames apart share all but two of their segments: the second window's
    trunk runs on those two only, and its tokens equal a trunk over the whole window."""
    g = torch.Generator().manual_seed(0)
    clip = torch.rand(1, 96, 3, 224, 224, generator=g) * 2 - 1
    first, second = clip[:, :80], clip[:, 16:96]  # 9 segments each, 7 shared
    calls = []
    trunk = family.parts.video_trunk
    family.parts.video_trunk = lambda frames, prompts: (
        calls.append(frames.shape[1]) or trunk(frames, prompts)
    )
    try:
        run = Run(CPU, torch.Generator())
        family.features({"sync": first}, 1, run)
        shared = family.features({"sync": second}, 1, run)["trunk"]
    finally:
        del family.parts.video_trunk
    assert calls == [80, 24]  # the second window: its last two segments (frames 56-80)
    assert torch.equal(shared, family.parts.video_trunk(second, 1))


def test_a_prompt_is_encoded_alone_whatever_shares_its_request(family):
    both = family.encode_text(["dog barking loudly in a yard", "rain"])
    alone = family.encode_text(["rain"])
    assert torch.equal(both.clip[1:], alone.clip)
    assert torch.equal(both.negative, alone.negative)
    n = alone.t5.shape[1]  # the shorter prompt: padded with zeros, masked out
    assert torch.equal(both.t5[1:, :n], alone.t5) and not both.t5_mask[1, n:].any()
    assert torch.count_nonzero(both.t5[1, n:]) == 0


def test_tensor_digest_is_content():
    x = torch.arange(12.0).view(3, 4)
    assert tensor_digest(x) == tensor_digest(x.clone())
    assert tensor_digest(x.t().contiguous()) != tensor_digest(x)  # shape counts
    assert tensor_digest(x.double()) != tensor_digest(x)  # dtype counts


def test_weights_fingerprint_reaches_past_2_to_the_24():
    """Tensors of more than 2**24 elements (selva-small-16k has 50.6 M in one) are sampled up to
    their last element; a float spacing would index one past it."""
    from selva_rt.runtime.cache import weights_fingerprint
    from torch import nn

    big = nn.Module()
    big.register_buffer("w", torch.zeros(50593792, dtype=torch.uint8))
    before = weights_fingerprint([big])
    big.w[-1] = 1
    assert weights_fingerprint([big]) != before
