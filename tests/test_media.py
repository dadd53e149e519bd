"""Media I/O: golden decode, the official timing rule, bad inputs, stems, resampling, muxing.

Test clips are made here with PyAV (small, a few seconds of 64x48 H.264).
"""

import math
import os
import stat
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import torch
from clips import BAD_INPUTS, make_clip, vfr_pts_ms
from golden import assert_close, golden_file, load_case, recorded, setting, sync_frames_from_u8
from selva_rt.runtime import media
from selva_rt.runtime.delivery.outputs import plan_outputs, write_outputs
from selva_rt.runtime.errors import MediaError, OutputError, UsageError
from selva_rt.runtime.pipeline import GenerationResult
from selva_rt.runtime.variants import CLIP_FPS, SYNC_FPS

torch.set_num_threads(1)


def official_selection(path: Path, duration: float, start: float = 0.0):
    """The official read_frames + load_video frame choice written out literally, from all
    decoded frames: (duration, sync indices, clip indices, rgb frames). `start` is our
    extension: times are measured from it."""
    with av.open(str(path)) as container:
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    picked = {CLIP_FPS: [], SYNC_FPS: []}
    for fps, chosen in picked.items():
        next_t = 0.0
        for i, (t, _) in enumerate(frames):
            if t < start:
                continue
            if t - start > duration:
                break
            while t - start >= next_t:
                chosen.append(i)
                next_t += 1 / fps
    duration = min(duration, len(picked[CLIP_FPS]) / CLIP_FPS, len(picked[SYNC_FPS]) / SYNC_FPS)
    sync = picked[SYNC_FPS][: int(SYNC_FPS * duration)]
    clip = picked[CLIP_FPS][: int(CLIP_FPS * duration)]
    return duration, sync, clip, [rgb for _, rgb in frames]


def chw(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)


# ----------------------------------------------------------------------------------------------
# Golden: the official load_video on preproc_video.mp4


def test_golden_preproc_video():
    meta, ref = load_case("preproc_video")
    duration = setting(meta["call"], "duration_sec")  # the json's exact number (tensor: float32)
    video = media.decode_video(golden_file(meta["video_file"]), duration, need_clip=True)

    assert video.duration == recorded(
        meta["returns"]["duration_sec"], ref["out.duration_sec"], "duration"
    )
    assert video.fps == Fraction(meta["video_stream"]["guessed_rate"])
    assert video.size == (meta["video_stream"]["width"], meta["video_stream"]["height"])
    assert torch.equal(video.sync_index, ref["out.sync_src_frame_index"])
    assert torch.equal(video.clip_index, ref["out.clip_src_frame_index"])
    assert torch.equal(video.sync_frames, ref["out.sync_frames_u8"])  # bit-exact
    subset = ref["out.clip_frames_subset_index"]
    assert torch.equal(video.clip_frames[subset], ref["out.clip_frames_u8_subset"])
    clip = video.clip_frames.float() * (1 / 255)
    mean, std = clip.mean((1, 2, 3)), clip.flatten(1).std(1)
    assert_close("preproc_video.clip_mean", mean, ref["out.clip_frames_mean_per_frame"], 1e-6, 1e-6)
    assert_close("preproc_video.clip_std", std, ref["out.clip_frames_std_per_frame"], 1e-6, 1e-6)
    sync = media.to_model_input(video.sync_frames)
    assert_close(
        "preproc_video.sync_frames", sync, sync_frames_from_u8(ref["out.sync_frames_u8"]), 0, 0
    )
    sync_mean = sync.mean((1, 2, 3))
    assert_close(
        "preproc_video.sync_mean", sync_mean, ref["out.sync_frames_mean_per_frame"], 1e-6, 1e-6
    )
    # Stopped at the window instead of decoding the whole clip.
    assert video.decoded_frames <= int(ref["out.num_decoded_frames_le_end"])


def test_to_model_input_matches_official_transform():
    u8 = torch.arange(256, dtype=torch.uint8).repeat(3, 1)[None]
    x = media.to_model_input(u8)
    assert x.dtype == torch.float32
    assert torch.equal(x, sync_frames_from_u8(u8))
    assert x.min() == -1 and x.max() == 1


# ----------------------------------------------------------------------------------------------
# The timing rule, duration rule and start handling against a literal reimplementation


@pytest.mark.parametrize(
    "fps, frames, duration, start",
    [
        (30, 45, 8.0, 0.0),  # shorter than asked: duration from the frame counts
        (24, 48, 1.5, 0.0),
        (Fraction(30000, 1001), 60, 1.2, 0.5),  # NTSC rate, start between frames
        (10, 20, 1.6, 0.0),  # low rate: frames repeated
        (50, 100, 0.8, 1.0),  # high rate: frames dropped; start on a frame
    ],
)
def test_frame_selection_matches_official_rule(tmp_path, fps, frames, duration, start):
    path = make_clip(tmp_path / "clip.mp4", frames=frames, fps=fps)
    want_duration, want_sync, want_clip, rgb = official_selection(path, duration, start)
    video = media.decode_video(path, duration, start=start, need_clip=True)

    assert video.duration == want_duration
    assert video.sync_index.tolist() == want_sync
    assert video.clip_index.tolist() == want_clip
    assert video.sync_frames.shape == (int(SYNC_FPS * want_duration), 3, 224, 224)
    assert video.clip_frames.shape == (int(CLIP_FPS * want_duration), 3, 384, 384)
    for k in {0, len(want_sync) // 2, len(want_sync) - 1}:
        assert torch.equal(video.sync_frames[k], media.resize(chw(rgb[want_sync[k]]), 224))
    assert torch.equal(video.clip_frames[-1], media.resize(chw(rgb[want_clip[-1]]), 384))


def test_without_clip_frames(tmp_path):
    path = make_clip(tmp_path / "clip.mp4", frames=30)
    video = media.decode_video(path, 1.0)
    assert video.clip_frames is None
    assert video.sync_frames.dtype == torch.uint8
    assert video.clip_index.shape == (int(CLIP_FPS * video.duration),)


def test_start_seeks_instead_of_decoding_from_zero(tmp_path):
    gop = 10
    path = make_clip(tmp_path / "clip.mp4", frames=100, fps=25, gop=gop)
    start, duration = 2.5, 0.8
    video = media.decode_video(path, duration, start=start)
    window = round(duration * 25) + 1
    assert video.decoded_frames <= gop + window  # from the keyframe before start
    assert video.sync_index[0] == math.ceil(start * 25)  # the first frame at or after start


@pytest.mark.parametrize(
    "rotation, white, dark",
    [  # where the stored picture's white left half is once shown upright, as players do
        (90, np.s_[:, 140:, :], np.s_[:, :84, :]),  # turned counter-clockwise: at the bottom
        (-90, np.s_[:, :84, :], np.s_[:, 140:, :]),  # clockwise (phones' portrait): at the top
        (180, np.s_[:, :, 140:], np.s_[:, :, :84]),  # upside down: on the right
    ],
)
def test_rotated_clip_is_turned_upright(tmp_path, rotation, white, dark):
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, :32] = 255
    path = make_clip(tmp_path / "rot.mp4", frames=20, rotation=rotation, image=image)
    video = media.decode_video(path, 0.7)
    assert video.rotation == rotation % 360 and video.size == (64, 48)
    frame = video.sync_frames[0].float()
    assert frame[white].mean() > 200 and frame[dark].mean() < 50


# ----------------------------------------------------------------------------------------------
# Bad inputs: one-line MediaErrors


# What probe (header + first frame) already catches; the rest needs the decoded window.
PROBE_CATCHES = set(BAD_INPUTS) - {
    "truncated at a packet",
    "corrupt packet",
    "shorter than a segment",
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input(tmp_path, case):
    make, message = BAD_INPUTS[case]
    path = make(tmp_path)
    with pytest.raises(MediaError) as info:
        media.decode_video(path, 8.0)
    text = str(info.value)
    assert message in text and "\n" not in text, text
    if case in PROBE_CATCHES:
        with pytest.raises(MediaError) as info:
            media.probe(path)
        assert str(info.value) == text
    else:
        media.probe(path)


def test_probe(tmp_path):
    info = media.probe(make_clip(tmp_path / "rot.mp4", frames=30, rotation=-90))
    assert info == media.ClipInfo(
        size=(64, 48), rotation=270, fps=Fraction(25), seconds=1.2, codec="h264"
    )


@pytest.mark.parametrize("duration, start", [(0.0, 0.0), (float("nan"), 0.0), (2.0, -1.0)])
def test_bad_window_is_a_usage_error(tmp_path, duration, start):
    path = make_clip(tmp_path / "clip.mp4", frames=20)
    with pytest.raises(UsageError, match="must be a"):
        media.decode_video(path, duration, start=start)


def test_start_past_the_end(tmp_path):
    path = make_clip(tmp_path / "clip.mp4", frames=25)
    with pytest.raises(MediaError, match="ends at 0.96 s, before the start 5.00 s"):
        media.decode_video(path, 2.0, start=5.0)


def test_short_window_after_start(tmp_path):
    path = make_clip(tmp_path / "clip.mp4", frames=50)
    with pytest.raises(MediaError, match="at least 0.64 s"):
        media.decode_video(path, 8.0, start=1.5)


def test_a_dropped_frame_is_not_a_variable_rate(tmp_path):
    pts = [40 * i for i in range(51) if i != 20]  # 25 fps with one frame missing
    video = media.decode_video(make_clip(tmp_path / "drop.mp4", frames=50, pts_ms=pts), 2.0)
    assert video.duration == 2.0


# ----------------------------------------------------------------------------------------------
# Stems


def sine(freq: float, rate: int, samples: int, amplitude: float = 0.5) -> torch.Tensor:
    t = torch.arange(samples, dtype=torch.float64) / rate
    return (amplitude * torch.sin(2 * math.pi * freq * t)).float()[None]


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_write_audio_round_trip(tmp_path, suffix):
    wav = torch.rand(2, 16001) * 2 - 1
    path = media.write_audio(tmp_path / f"stem{suffix}", wav, 16000)
    data, rate = soundfile.read(path, dtype="float64", always_2d=True)
    info = soundfile.info(str(path))
    assert rate == 16000 and info.subtype == "PCM_24" and data.shape == (16001, 2)
    assert np.abs(data.T - wav.double().numpy()).max() <= 2**-24 + 1e-12  # half an LSB
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left


def test_write_audio_resamples_to_48k(tmp_path):
    path = media.write_audio(
        tmp_path / "stem.wav", sine(1000, 16000, 16000)[0], 16000, out_rate=48000
    )
    data, rate = soundfile.read(path, dtype="float32")
    assert rate == 48000 and data.shape == (48000,)


def test_write_audio_keeps_existing_file(tmp_path, monkeypatch):
    path = tmp_path / "stem.wav"
    path.write_bytes(b"precious")
    with pytest.raises(OutputError, match="exists; pass --force"):
        media.write_audio(path, torch.zeros(1, 100), 16000)
    assert path.read_bytes() == b"precious"

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(soundfile, "write", broken)
    with pytest.raises(RuntimeError):
        media.write_audio(path, torch.zeros(1, 100), 16000, force=True)
    assert path.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["stem.wav"]
    monkeypatch.undo()
    media.write_audio(path, torch.zeros(1, 100), 16000, force=True)
    assert soundfile.info(str(path)).frames == 100


def test_write_audio_rejects_bad_output(tmp_path):
    with pytest.raises(OutputError, match="not 'mp3'"):
        media.write_audio(tmp_path / "stem.mp3", torch.zeros(1, 10), 16000)
    with pytest.raises(OutputError, match="NaN"):
        media.write_audio(tmp_path / "stem.wav", torch.full((1, 10), float("nan")), 16000)
    with pytest.raises(OutputError, match="is not a directory"):
        media.write_audio(tmp_path / "no" / "stem.wav", torch.zeros(1, 10), 16000)


# ----------------------------------------------------------------------------------------------
# Resampling


@pytest.mark.parametrize(
    "orig, new, freq", [(16000, 48000, 1000), (16000, 48000, 7000), (44100, 48000, 5000)]
)
def test_resample_keeps_frequency_and_amplitude(orig, new, freq):
    x = sine(freq, orig, orig)
    y = media.resample(x, orig, new)
    assert y.shape == (1, math.ceil(orig * new / orig))
    inner = slice(new // 10, -new // 10)  # away from the zero-padded edges
    ideal = sine(freq, new, y.shape[1])
    assert (y[:, inner] - ideal[:, inner]).abs().max() < 1e-5
    spectrum = torch.fft.rfft(y[0]).abs()
    assert spectrum.argmax().item() * new / y.shape[1] == pytest.approx(freq, abs=1)
    assert y[:, inner].pow(2).mean().sqrt().item() == pytest.approx(0.5 / math.sqrt(2), rel=1e-5)


def test_resample_down_removes_what_cannot_be_kept():
    y = media.resample(sine(12000, 48000, 48000), 48000, 16000)  # above the new Nyquist
    assert y[:, 1600:-1600].abs().max() < 1e-4


# ----------------------------------------------------------------------------------------------
# Mux


def video_packets(path: Path) -> list[av.Packet]:
    with av.open(str(path)) as container:
        return [p for p in container.demux(video=0) if p.size]


def decoded_audio(path: Path) -> tuple[np.ndarray, av.AudioStream]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(stream)])
        if samples.dtype == np.int32:  # 24-bit PCM decodes to the top bits of int32
            samples = samples / 2**31
        return samples, stream


def test_mux_mp4_copies_video_bit_exactly(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=50, audio_rate=44100)
    audio = sine(440, 16000, 32256)  # the model's 2 s output is 8 ms longer than the picture
    out = media.mux(clip, audio, 16000, tmp_path / "out.mp4", duration=2.0)

    source, copied = video_packets(clip), video_packets(out)
    assert [bytes(p) for p in copied] == [bytes(p) for p in source]
    assert [(p.pts, p.dts) for p in copied] == [(p.pts, p.dts) for p in source]
    with av.open(str(out)) as container:
        assert len(container.streams) == 2  # the clip's own audio is replaced
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "aac" and stream.rate == 16000
        assert stream.duration * stream.time_base == 2  # cut to the picture
    samples, _ = decoded_audio(out)
    assert samples.size >= 32000  # AAC pads its last frame; the edit list hides it
    # In time with the input (the encoder's priming is hidden): the best lag is 0 samples.
    want = audio[0, 1000:31000].numpy()
    error = {lag: np.abs(samples[1000 + lag : 31000 + lag] - want).mean() for lag in (-1, 0, 1)}
    assert min(error, key=error.get) == 0 and error[0] < 0.002


@pytest.mark.parametrize("suffix", [".mov", ".mkv"])
def test_mux_pcm_containers(tmp_path, suffix):
    clip = make_clip(tmp_path / "clip.mp4", frames=50)
    audio = sine(440, 16000, 24000)  # 1.5 s, shorter than the 2 s picture
    out = media.mux(clip, audio, 16000, tmp_path / f"out{suffix}")

    source = video_packets(clip)
    kept = [p for p in source if p.dts * p.time_base < 1.5]  # the cut rule: decode time < end
    assert len(kept) < len(source)
    assert [bytes(p) for p in video_packets(out)] == [bytes(p) for p in kept]
    samples, stream = decoded_audio(out)
    assert stream.codec_context.name == "pcm_s24le" and stream.rate == 16000
    np.testing.assert_allclose(samples, audio[0].numpy(), rtol=0, atol=2**-24)


def test_mux_from_start_keeps_sync(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=100, gop=10)
    start, rate = 1.1, 16000
    audio = sine(440, rate, rate)  # generated for [1.1, 2.1]
    out = media.mux(clip, audio, rate, tmp_path / "out.mkv", start=start)

    source = video_packets(clip)
    tb = source[0].time_base
    keyframe = max(p.pts for p in source if p.is_keyframe and p.pts * tb <= start)
    copied = video_packets(out)
    first = next(i for i, p in enumerate(source) if p.pts == keyframe)
    assert copied[0].is_keyframe
    assert [bytes(p) for p in copied] == [bytes(p) for p in source[first : first + len(copied)]]
    assert all(p.dts * tb < start + 1.0 for p in source[first : first + len(copied)])

    samples, _ = decoded_audio(out)
    lead = round((start - float(keyframe * tb)) * rate)  # silence until `start`
    assert lead > 0 and not samples[:lead].any()
    np.testing.assert_allclose(samples[lead:], audio[0].numpy(), rtol=0, atol=2**-24)


def test_mux_keeps_hvc1_tag(tmp_path):
    clip = tmp_path / "hevc.mp4"
    with av.open(str(make_clip(tmp_path / "h264.mp4", frames=1))) as probe:
        image = next(probe.decode(video=0)).to_ndarray(format="rgb24")
    with av.open(str(clip), "w") as out:  # HEVC tagged 'hvc1', as phones write it
        video = out.add_stream("libx265", rate=25, options={"x265-params": "log-level=none"})
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.codec_context.codec_tag = "hvc1"
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(np.roll(image, i, axis=1), format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode())
    out = media.mux(clip, torch.zeros(1, 12800), 16000, tmp_path / "out.mp4")
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.codec_tag == "hvc1"
    assert [bytes(p) for p in video_packets(out)] == [bytes(p) for p in video_packets(clip)]


def test_mux_refuses_a_codec_the_container_cannot_hold(tmp_path):
    clip = tmp_path / "clip.mkv"
    with av.open(str(clip), "w") as out:
        video = out.add_stream("ffv1", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 9 * i, np.uint8), "rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode())
    with pytest.raises(OutputError, match="ffv1 video of clip.mkv cannot go into .mov"):
        media.mux(clip, torch.zeros(1, 12800), 16000, tmp_path / "out.mov")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mkv"]
    out = media.mux(clip, torch.zeros(1, 12800), 16000, tmp_path / "out.mkv")
    assert [bytes(p) for p in video_packets(out)] == [bytes(p) for p in video_packets(clip)]


def test_mux_start_past_the_end(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=20)
    with pytest.raises(MediaError, match="ends at 0.80 s, before the start 5.00 s"):
        media.mux(clip, torch.zeros(1, 8000), 16000, tmp_path / "out.mp4", start=5.0)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_mux_keeps_rotation(tmp_path):
    clip = make_clip(tmp_path / "rot.mp4", frames=20, rotation=90)
    out = media.mux(clip, torch.zeros(1, 8000), 16000, tmp_path / "out.mp4")
    with av.open(str(out)) as container:
        assert next(container.decode(video=0)).rotation == 90


def test_mux_refuses_to_overwrite(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=20)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"keep me")
    audio = torch.zeros(1, 12800)  # as long as the clip
    with pytest.raises(OutputError, match="exists; pass --force"):
        media.mux(clip, audio, 16000, out)
    assert out.read_bytes() == b"keep me"
    media.mux(clip, audio, 16000, out, force=True)
    assert len(video_packets(out)) == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "out.mp4"]
    with pytest.raises(OutputError, match="not '.avi'"):
        media.mux(clip, audio, 16000, tmp_path / "out.avi")


def test_sample_asset_is_a_usable_clip(sample_clip):
    assert sample_clip.stat().st_size < 300_000
    video = media.decode_video(sample_clip)
    assert video.duration > 2.5 and video.size == (320, 240)


# ----------------------------------------------------------------------------------------------
# Media as shot: variable frame rate, windows of long clips, codecs the clip's container
# family cannot hold, file modes


def held_indices(times: list[float], fps: int, count: int, start: float = 0.0) -> list[int]:
    """The official sample-and-hold rule written out: output frame k is the first frame whose
    time from `start` reaches the accumulated k / fps."""
    out, next_t = [], 0.0
    for i, t in enumerate(times):
        while t - start >= next_t and len(out) < count and t >= start:
            out.append(i)
            next_t += 1 / fps
    return out


def test_variable_frame_rate_is_taken_as_shot(tmp_path):
    pts = vfr_pts_ms(60)
    path = make_clip(tmp_path / "vfr.mp4", frames=60, pts_ms=pts)
    video = media.decode_video(path, 8.0)
    times = [p / 1000 for p in pts]
    assert video.duration == media.clip_duration(path)
    want = held_indices(times, SYNC_FPS, int(SYNC_FPS * video.duration))
    assert video.sync_index.tolist() == want
    assert len(set(want)) < len(want) < 60  # frames held and frames skipped: it is uneven
    out = media.mux(path, np.zeros(16000 * 3, np.float32), 16000, tmp_path / "out.mp4")
    assert packet_bytes(out) == packet_bytes(path)


def packet_bytes(path: Path) -> list[tuple[int | None, bytes]]:
    return [(p.pts, bytes(p)) for p in video_packets(path)]


@pytest.mark.parametrize("pts", [None, vfr_pts_ms(150)], ids=["25 fps", "variable rate"])
def test_windows_decode_as_their_own_clips(tmp_path, pts):
    path = make_clip(tmp_path / "clip.mp4", frames=150, pts_ms=pts, gop=25)
    starts, duration = [0.0, 1.28, 2.56], 2.0
    windows = list(media.decode_windows(path, starts, duration))
    assert len(windows) == 3
    for start, window in zip(starts, windows, strict=True):
        alone = media.decode_video(path, duration, start=start)
        assert window.start == start and window.duration == alone.duration == duration
        assert torch.equal(window.sync_frames, alone.sync_frames)
        if pts is None:  # (from a start > 0, decode_video estimates the index from the rate)
            assert torch.equal(window.sync_index, alone.sync_index)
    # One pass: the decoder stopped once the last window was full, not once per window.
    assert windows[-1].decoded_frames <= max(w.sync_index.max() for w in windows) + 1 + 25


@pytest.mark.parametrize(
    "frames, fps, start", [(100, 25, 0.0), (91, Fraction(30000, 1001), 0.0), (130, 25, 1.3)]
)
def test_clip_duration_is_what_decoding_gives(tmp_path, frames, fps, start):
    path = make_clip(tmp_path / "clip.mp4", frames=frames, fps=fps)
    assert media.clip_duration(path, start) == media.decode_video(path, 100.0, start).duration


def test_ten_bit_matroska_muxes_with_its_packets_unchanged(tmp_path):
    path = make_clip(tmp_path / "deep.mkv", frames=60, pix_fmt="yuv420p10le", gop=30)
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p10le"
        assert any(p.dts is None for p in c.demux(video=0) if p.size)  # B-frames, no dts
    out = media.mux(path, np.zeros(16000 * 3, np.float32), 16000, tmp_path / "out.mkv")
    assert packet_bytes(out) == packet_bytes(path)
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 60


def test_a_codec_mp4_cannot_hold_goes_to_matroska(tmp_path):
    # A QuickTime file named .mp4 holding ProRes, which MP4 does not take.
    path = make_clip(
        tmp_path / "prores.mp4",
        frames=20,
        codec="prores_ks",
        pix_fmt="yuv422p10le",
        container="mov",
    )
    assert media.mux_suffix(path, ".mp4") == ".mkv"
    assert media.mux_suffix(make_clip(tmp_path / "h264.mp4", frames=20), ".mp4") == ".mp4"
    plan = plan_outputs(path, ["rain"], tmp_path / "out")
    assert plan.stems[0].video.suffix == ".mkv"
    out = media.mux(path, np.zeros(16000, np.float32), 16000, tmp_path / "x.mkv")
    assert [bytes(p) for p in video_packets(out)] == [bytes(p) for p in video_packets(path)]


def test_written_files_follow_the_umask(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=25)
    old = os.umask(0o022)
    try:
        stem = media.write_audio(tmp_path / "stem.wav", np.zeros(1600, np.float32), 16000)
        muxed = media.mux(clip, np.zeros(16000, np.float32), 16000, tmp_path / "out.mp4")
        os.umask(0o027)
        other = media.write_audio(tmp_path / "other.flac", np.zeros(1600, np.float32), 16000)
    finally:
        os.umask(old)
    assert stat.S_IMODE(stem.stat().st_mode) == 0o644
    assert stat.S_IMODE(muxed.stat().st_mode) == 0o644
    assert stat.S_IMODE(other.stat().st_mode) == 0o640


def test_a_failed_mux_leaves_no_outputs(tmp_path, monkeypatch):
    clip = make_clip(tmp_path / "clip.mp4", frames=25)
    plan = plan_outputs(clip, ["rain", "thunder"], tmp_path / "out")
    result = GenerationResult(
        audio=np.zeros((2, 16000), np.float32),
        sample_rate=16000,
        prompts=["rain", "thunder"],
        duration=1.0,
        start=0.0,
        seed=42,
        steps=1,
        cfg=4.5,
    )
    real_mux, calls = media.mux, []

    def mux_failing_the_second(*args, **kwargs):  # fault injection: the first stem's files
        calls.append(args[3])  # are complete by then
        if len(calls) == 2:
            raise OutputError("cannot mux the h264 video of clip.mp4 into .mp4 (Invalid argument)")
        return real_mux(*args, **kwargs)

    monkeypatch.setattr(media, "mux", mux_failing_the_second)
    with pytest.raises(OutputError, match="cannot mux"):
        write_outputs(plan, result)
    assert calls[0].exists() is False and len(calls) == 2
    assert list((tmp_path / "out").iterdir()) == []
