"""Variable frame rate, taken as shot: on footage whose frame times vary (phone-like jitter, and
50/17 fps alternating), in MP4 and Matroska, the frames `media.decode_video` picks are the ones an
independent computation picks: the official rule ("output frame k is the first frame whose time
reaches k steps of 1/fps, accumulated") evaluated with numpy (a cumulative sum of the steps and a
sorted search) over the presentation times the demuxer reports, not over decoded frames."""

import av
import numpy as np
import pytest
import torch
from clips import make_clip, vfr_pts_ms
from selva_rt.runtime import media
from selva_rt.runtime.variants import CLIP_FPS, SYNC_FPS


def jittered_pts_ms(frames: int, seed: int = 0) -> list[int]:
    """A phone's timestamps: 15-70 ms between frames, drawn at random."""
    steps = np.random.default_rng(seed).integers(15, 71, frames - 1)
    return [0, *np.cumsum(steps).tolist()]


def demuxed_times(path) -> np.ndarray:
    """Presentation times of the video packets, in display order (seconds, float64)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None and p.size)
        return np.array(pts, dtype=np.float64) * float(stream.time_base)


def rule(times: np.ndarray, fps: int, duration: float) -> np.ndarray:
    """Indices of the frames the official rule picks for `duration` seconds at `fps`."""
    count = int(len(times) * 4)  # more than enough thresholds; cut below
    thresholds = np.concatenate([[0.0], np.cumsum(np.full(count - 1, 1 / fps))])
    picked = np.searchsorted(times, thresholds, side="left")
    # Frames past the asked duration are never read: the rule stops at the first one beyond it.
    last = np.searchsorted(times, duration, side="right")
    return picked[picked < last]


def rgb_frames(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
@pytest.mark.parametrize("pattern", ["phone jitter", "50/17 fps"])
@pytest.mark.parametrize("duration", [8.0, 1.3])
def test_frames_picked_on_variable_rate_footage(tmp_path, suffix, pattern, duration):
    pts = jittered_pts_ms(90) if pattern == "phone jitter" else vfr_pts_ms(90)
    path = make_clip(tmp_path / f"vfr{suffix}", frames=90, pts_ms=pts, gop=12)
    times = demuxed_times(path)
    assert np.ptp(np.diff(times)) > 0.03  # really variable
    sync, clip = rule(times, SYNC_FPS, duration), rule(times, CLIP_FPS, duration)
    # The duration rule: what both rates can fill, at most what was asked.
    want = min(duration, len(sync) / SYNC_FPS, len(clip) / CLIP_FPS)
    video = media.decode_video(path, duration, need_clip=True)
    assert video.duration == pytest.approx(want, abs=1e-9)
    assert video.sync_index.tolist() == sync[: int(SYNC_FPS * video.duration)].tolist()
    assert video.clip_index.tolist() == clip[: int(CLIP_FPS * video.duration)].tolist()
    assert len(set(video.sync_index.tolist())) < len(video.sync_index)  # some frames held
    rgb = rgb_frames(path)
    for k in (0, len(video.sync_index) // 2, len(video.sync_index) - 1):
        frame = torch.from_numpy(rgb[video.sync_index[k]]).permute(2, 0, 1)
        assert torch.equal(video.sync_frames[k], media.resize(frame, 224))
