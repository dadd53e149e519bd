"""A family's own frames (`media.FrameTrack`, VATT's eva02 frames at 5 fps): the streaming
selection in the decoder picks exactly what `eva02.pick_frames` picks from the frames'
presentation times, from any start, window by window, with or without the sync frames."""

from fractions import Fraction

import av
import pytest
import torch
from clips import make_clip, vfr_pts_ms
from selva_rt.runtime import media
from selva_rt.runtime.models.eva02 import frame_times, pick_frames


def _pts(path) -> list[Fraction]:
    """Presentation times of every frame of the clip, exact, in presentation order."""
    with av.open(str(path)) as c:
        return sorted(f.pts * f.time_base for f in c.decode(video=0))


def _number(picture: torch.Tensor) -> torch.Tensor:
    """The picture itself (make_clip's frames differ from each other)."""
    return picture.clone()


TRACK = media.FrameTrack("frames", 5, _number)


@pytest.fixture(scope="module")
def ntsc(tmp_path_factory):
    """6 s at 30000/1001 fps (frame k at k * 1001/30000 s: 5 fps times fall between frames)."""
    return make_clip(tmp_path_factory.mktemp("ft") / "ntsc.mp4", 180, Fraction(30000, 1001))


@pytest.mark.parametrize("start", [0.0, 1.3, 2.0])
def test_picks_as_pick_frames(ntsc, start):
    pts = _pts(ntsc)
    video = media.decode_video(ntsc, duration=3.0, start=start, need_sync=False, tracks=[TRACK])
    picked = pick_frames(pts, frame_times(start, 15, 5))
    assert video.frame_index["frames"].tolist() == picked
    assert video.frames["frames"].shape == (15, 3, 48, 64)
    assert len(video.sync_frames) == 0 and "sync" not in video.model_inputs()
    # The pictures are the frames picked (each source frame once, held as often as needed).
    whole = media.decode_video(ntsc, duration=6.0, need_sync=False, tracks=[TRACK])
    assert whole.frame_index["frames"].tolist() == pick_frames(pts, frame_times(0.0, 30, 5))
    by_index = dict(zip(whole.frame_index["frames"].tolist(), whole.frames["frames"], strict=True))
    for i, k in enumerate(picked):
        if k in by_index:
            assert torch.equal(video.frames["frames"][i], by_index[k])


def test_windows_and_the_sync_frames_unchanged(ntsc):
    """decode_windows gives each window what decode_video gives it; the sync frames are the
    same with the track as without."""
    pts = _pts(ntsc)
    starts = [0.0, 1.6, 3.0]
    windows = list(media.decode_windows(ntsc, starts, 3.0, tracks=[TRACK]))
    for s, w in zip(starts, windows, strict=True):
        assert w.frame_index["frames"].tolist() == pick_frames(pts, frame_times(s, 15, 5))
        plain = media.decode_video(ntsc, duration=3.0, start=s)
        assert torch.equal(w.sync_frames, plain.sync_frames)
        assert w.model_inputs()["frames"].shape[0] == 15


def test_short_clip_and_head(tmp_path):
    """A clip shorter than the window asked for: the frames of its picture only; `head` keeps
    the prefix a shorter decode picks."""
    path = make_clip(tmp_path / "vfr.mp4", 50, pts_ms=vfr_pts_ms(50))
    pts = _pts(path)
    video = media.decode_video(path, duration=10.0, tracks=[TRACK], peek=True)
    n = TRACK.count(video.duration)
    assert video.frame_index["frames"].tolist() == pick_frames(pts, frame_times(0.0, n, 5))
    head = video.head(1.0)
    assert head.frame_index["frames"].tolist() == video.frame_index["frames"][:5].tolist()
    assert head.frames["frames"].shape[0] == 5
