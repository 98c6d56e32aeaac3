"""vidrl.data.video: frame sampling and resize math by hand, decoding of real mp4 files,
the on-disk clip cache, and the errors bad files raise."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import decord
import numpy as np
import pytest
from pydantic import ValidationError

from vidrl.data import video
from vidrl.data.synth import Scene, ShapeTrack, write_video
from vidrl.data.video import (
    VideoConfig,
    VideoError,
    decode_clip,
    frame_size,
    sample_frame_indices,
)


def qwen2_5_video(**fields: Any) -> VideoConfig:
    """A video config as a run resolves it for Qwen2.5-VL: frames in multiples of its patch 14 x
    merge 2 (a run takes the multiple from the model's family)."""
    return VideoConfig(pixel_multiple=28, **fields)


CFG = qwen2_5_video()


# ---- sample_frame_indices -------------------------------------------------------------


def test_uncapped_sampling_takes_one_frame_per_half_second_at_segment_centres() -> None:
    # 96 frames at 8 fps = 12 s; 12 s * 2 fps = 24 frames; each covers 96 / 24 = 4 source
    # frames, and the centre of segment k is floor((k + 0.5) * 4) = 4k + 2.
    indices = sample_frame_indices(96, 8.0, CFG)
    assert indices.tolist() == [4 * k + 2 for k in range(24)]
    assert indices.dtype == np.int64


def test_capped_sampling_spreads_max_frames_over_the_whole_video() -> None:
    # 10000 frames at 25 fps = 400 s -> 800 frames at 2 fps, capped at 768.
    # step = 10000 / 768 = 13.0208: floor(0.5 * step) = 6, floor(1.5 * step) = 19,
    # floor(2.5 * step) = 32, last floor(767.5 * step) = floor(9993.49) = 9993.
    indices = sample_frame_indices(10_000, 25.0, CFG)
    assert len(indices) == 768
    assert indices[:3].tolist() == [6, 19, 32]
    assert indices[-1] == 9993


def test_short_video_is_raised_to_min_frames() -> None:
    # 10 frames at 10 fps = 1 s -> 2 frames at 2 fps, raised to min_frames 4;
    # step 10 / 4 = 2.5: floor(1.25), floor(3.75), floor(6.25), floor(8.75) = 1, 3, 6, 8.
    assert sample_frame_indices(10, 10.0, CFG).tolist() == [1, 3, 6, 8]


def test_video_with_fewer_frames_than_min_gives_an_even_count_without_repeats() -> None:
    # 3 frames: min 4 is cut to the video's 3, then to the even 2; step 1.5: 0.75 -> 0, 2.25 -> 2.
    assert sample_frame_indices(3, 10.0, CFG).tolist() == [0, 2]
    # A single frame still makes one temporal patch of two: the frame is taken twice.
    assert sample_frame_indices(1, 10.0, CFG).tolist() == [0, 0]


def test_frame_counts_are_even() -> None:
    # 84 frames at 8 fps = 10.5 s -> 21 frames at 2 fps -> nearest even, ties up: 22.
    assert len(sample_frame_indices(84, 8.0, CFG)) == 22
    # An odd max_frames is rounded down to the even count below it: 7 -> 6.
    assert len(sample_frame_indices(1000, 8.0, qwen2_5_video(max_frames=7))) == 6
    # An odd min_frames is rounded up: 5 -> 6 (1 s at 10 fps would give 2 frames).
    assert len(sample_frame_indices(10, 10.0, qwen2_5_video(min_frames=5))) == 6


def test_sampling_rejects_videos_without_frames_or_rate() -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        sample_frame_indices(0, 8.0, CFG)
    with pytest.raises(ValueError, match="fps must be positive"):
        sample_frame_indices(10, 0.0, CFG)


# ---- frame_size -----------------------------------------------------------------------


def test_small_clip_rounds_each_side_to_a_multiple_of_28() -> None:
    # 24 frames share 1605632 px per temporal patch: 1605632 / 24 * 2 = 133803 px per frame.
    # 96 / 28 = 3.43 -> 3 * 28 = 84; 128 / 28 = 4.57 -> 5 * 28 = 140; 84 * 140 = 11760 fits.
    assert frame_size(96, 128, 24, CFG) == (84, 140)


def test_total_budget_shrinks_frames_of_a_longer_clip() -> None:
    # 64 frames: 1605632 / 64 * 2 = 50176 px per frame (< 200704 per-frame maximum).
    # Rounded 476 x 644 is too big: scale = sqrt(480 * 640 / 50176) = 2.4744;
    # 480 / 2.4744 / 28 = 6.93 -> 6 * 28 = 168; 640 / 2.4744 / 28 = 9.24 -> 9 * 28 = 252.
    assert frame_size(480, 640, 64, CFG) == (168, 252)


def test_per_frame_maximum_binds_a_short_clip() -> None:
    # 4 frames would allow 802816 px each, but max_pixels_per_frame is 256 * 784 = 200704:
    # scale = sqrt(307200 / 200704) = 1.2372; 480 / 1.2372 / 28 = 13.86 -> 13 * 28 = 364;
    # 640 / 1.2372 / 28 = 18.48 -> 18 * 28 = 504.
    assert frame_size(480, 640, 4, CFG) == (364, 504)


def test_min_pixels_scale_a_tiny_frame_up() -> None:
    # 20 x 30 rounds to 28 x 28 = 784 < 3136: scale = sqrt(3136 / 600) = 2.2862;
    # 20 * 2.2862 / 28 = 1.63 -> 2 * 28 = 56; 30 * 2.2862 / 28 = 2.45 -> 3 * 28 = 84.
    assert frame_size(20, 30, 4, CFG) == (56, 84)


def test_very_long_clip_follows_qwen_and_floors_below_the_minimum() -> None:
    # 768 frames of 1080p: 1605632 / 768 * 2 = 4181 px per frame (above 1.05 * 3136 = 3292);
    # scale = sqrt(2073600 / 4181.3) = 22.27; 1080 / 22.27 / 28 = 1.73 -> 28;
    # 1920 / 22.27 / 28 = 3.08 -> 84. The budget wins over the minimum, as in Qwen2.5-VL.
    assert frame_size(1080, 1920, 768, CFG) == (28, 84)


def test_extreme_aspect_ratio_is_refused() -> None:
    with pytest.raises(ValueError, match="aspect ratio"):
        frame_size(10, 2010, 4, CFG)


# ---- config ---------------------------------------------------------------------------


def test_config_bounds() -> None:
    with pytest.raises(ValidationError):
        qwen2_5_video(fps=0)
    with pytest.raises(ValidationError, match="min_frames"):
        qwen2_5_video(min_frames=10, max_frames=8)
    with pytest.raises(ValidationError, match="min_pixels_per_frame"):
        qwen2_5_video(min_pixels_per_frame=10_000, max_pixels_per_frame=5_000)
    with pytest.raises(ValidationError):
        qwen2_5_video(frames_per_second=2)  # type: ignore[call-arg]


# ---- decoding real mp4 ----------------------------------------------------------------

RED_INTERVAL = (2.0, 4.0)


@pytest.fixture(scope="module")
def red_circle_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 s at 8 fps, 128x96: a red circle visible during [2, 4) s, a blue square throughout."""
    scene = Scene(
        index=0,
        duration=8.0,
        fps=8,
        width=128,
        height=96,
        background=80,
        noise=3,
        noise_seed=1,
        tracks=(
            ShapeTrack("circle", "red", "appear", RED_INTERVAL, (40.0, 48.0), (40.0, 48.0), 12),
            ShapeTrack("square", "blue", "static", (0.0, 0.0), (96.0, 48.0), (96.0, 48.0), 10),
        ),
    )
    path = tmp_path_factory.mktemp("video") / "red_circle.mp4"
    write_video(path, scene)
    return path


def red_pixels(frames: np.ndarray) -> np.ndarray:
    """[T] count of clearly red pixels per frame of uint8 [T, H, W, 3]."""
    r, g, b = (frames[..., c].astype(int) for c in range(3))
    return ((r > 150) & (g < 100) & (b < 100)).sum(axis=(1, 2))


def test_decoded_clip_shows_the_circle_only_inside_its_interval(red_circle_video: Path) -> None:
    clip = decode_clip(red_circle_video, CFG)
    # 64 frames at 8 fps -> 16 frames at 2 fps, source frames 4k + 2, times (4k + 2) / 8.
    assert clip.frames.shape == (16, 84, 140, 3)  # 96 x 128 -> 84 x 140 (see above)
    assert clip.frames.dtype == np.uint8
    assert clip.frame_indices.tolist() == [4 * k + 2 for k in range(16)]
    np.testing.assert_allclose(clip.timestamps, clip.frame_indices / 8.0)
    assert (clip.fps, clip.duration, clip.source) == (8.0, 8.0, str(red_circle_video))
    counts = red_pixels(clip.frames)
    inside = (clip.timestamps >= RED_INTERVAL[0]) & (clip.timestamps < RED_INTERVAL[1])
    # Samples at 2.25, 2.75, 3.25, 3.75 s lie inside [2, 4): k = 4, 5, 6, 7.
    assert np.flatnonzero(inside).tolist() == [4, 5, 6, 7]
    # A radius-12 disc is pi * 144 = 452 px at 128 x 96, about 433 px at 140 x 84.
    assert counts[inside].min() > 300
    assert counts[~inside].max() < 5


class SpyReader(decord.VideoReader):
    """Records every frame decord is asked to decode."""

    requested: list[list[int]]

    def get_batch(self, indices: Any) -> Any:
        SpyReader.requested.append(list(indices))
        return super().get_batch(indices)

    def __getitem__(self, index: Any) -> Any:
        raise AssertionError(f"decode_clip read frame(s) {index} one by one")

    def next(self) -> Any:
        raise AssertionError("decode_clip read frames sequentially")


def test_only_the_sampled_frames_are_decoded(red_circle_video: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    SpyReader.requested = []
    monkeypatch.setattr(decord, "VideoReader", SpyReader)
    clip = decode_clip(red_circle_video, CFG)
    asked = [i for batch in SpyReader.requested for i in batch]
    assert asked == clip.frame_indices.tolist()
    assert len(asked) == 16  # of the video's 64 frames


def test_chunked_decoding_gives_the_same_frames(
    red_circle_video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = decode_clip(red_circle_video, CFG)
    SpyReader.requested = []
    monkeypatch.setattr(decord, "VideoReader", SpyReader)
    monkeypatch.setattr(video, "DECODE_CHUNK_FRAMES", 5)
    chunked = decode_clip(red_circle_video, CFG)
    assert [len(b) for b in SpyReader.requested] == [5, 5, 5, 1]  # 16 frames in chunks of 5
    np.testing.assert_array_equal(chunked.frames, whole.frames)


# ---- cache ----------------------------------------------------------------------------


class ForbiddenReader:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("the video was decoded although the cache should have answered")


def test_cache_hit_returns_equal_frames_without_decoding(
    red_circle_video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = qwen2_5_video(cache_dir=str(tmp_path / "cache"))
    first = decode_clip(red_circle_video, cfg)
    entries = list((tmp_path / "cache").glob("*.npz"))
    assert len(entries) == 1 and entries[0].name.startswith("red_circle-")
    monkeypatch.setattr(decord, "VideoReader", ForbiddenReader)
    second = decode_clip(red_circle_video, cfg)
    np.testing.assert_array_equal(second.frames, first.frames)
    np.testing.assert_array_equal(second.timestamps, first.timestamps)
    np.testing.assert_array_equal(second.frame_indices, first.frame_indices)
    assert (second.fps, second.duration, second.source) == (first.fps, first.duration, first.source)


def test_changed_sampling_or_file_misses_the_cache(red_circle_video: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    decode_clip(red_circle_video, qwen2_5_video(cache_dir=str(cache)))
    # fps 4: 8 s * 4 = 32 frames, a new entry next to the 2 fps one.
    faster = decode_clip(red_circle_video, qwen2_5_video(cache_dir=str(cache), fps=4.0))
    assert faster.num_frames == 32
    assert len(list(cache.glob("*.npz"))) == 2
    # Settings that do not change frames share the entry.
    decode_clip(red_circle_video, qwen2_5_video(cache_dir=str(cache), decode_threads=2))
    assert len(list(cache.glob("*.npz"))) == 2
    # A newer modification time is a different file as far as the cache knows.
    stat = red_circle_video.stat()
    os.utime(red_circle_video, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    decode_clip(red_circle_video, qwen2_5_video(cache_dir=str(cache)))
    assert len(list(cache.glob("*.npz"))) == 3


def test_corrupt_cache_entry_is_ignored_and_rewritten(red_circle_video: Path, tmp_path: Path) -> None:
    cfg = qwen2_5_video(cache_dir=str(tmp_path / "cache"))
    expected = decode_clip(red_circle_video, cfg)
    (entry,) = (tmp_path / "cache").glob("*.npz")
    entry.write_bytes(b"PK\x03\x04 not really a zip archive")
    again = decode_clip(red_circle_video, cfg)
    np.testing.assert_array_equal(again.frames, expected.frames)
    with np.load(entry, allow_pickle=False) as archive:  # rewritten, readable again
        np.testing.assert_array_equal(archive["frames"], expected.frames)


# ---- errors ---------------------------------------------------------------------------


def test_missing_file_raises_video_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.mp4"
    with pytest.raises(VideoError, match=r"nowhere\.mp4: file not found") as caught:
        decode_clip(path, CFG)
    assert caught.value.path == str(path)
    assert isinstance(caught.value, ValueError)


def test_empty_file_raises_video_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(VideoError, match=r"empty.mp4: empty file"):
        decode_clip(path, CFG)


def test_random_bytes_raise_video_error_not_a_decord_error(tmp_path: Path) -> None:
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoError, match=r"noise.mp4: unreadable"):
        decode_clip(path, CFG)


def test_truncated_video_raises_video_error(red_circle_video: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.mp4"
    data = red_circle_video.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the index (moov) is written last: now missing
    with pytest.raises(VideoError, match=r"cut.mp4: unreadable"):
        decode_clip(path, CFG)


def test_video_cut_after_its_index_fails_while_decoding_frames(tmp_path: Path) -> None:
    # With the index (moov) first, decord opens the cut file; the frames whose data was
    # cut off then fail inside get_batch, which must still be a VideoError. fps 8 samples
    # every frame, so the last, partly cut one is among them.
    import av

    whole, cut = tmp_path / "whole.mp4", tmp_path / "cut_frames.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(whole), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for index in range(96):
            noise = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)  # incompressible
            frame = av.VideoFrame.from_ndarray(noise, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(VideoError, match=r"cut_frames.mp4: corrupt frames"):
        decode_clip(cut, qwen2_5_video(fps=8.0))


def test_directory_raises_video_error(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="not a regular file"):
        decode_clip(tmp_path, CFG)


def test_video_error_survives_pickling() -> None:
    # Ray ships exceptions between processes by pickling them.
    err = pickle.loads(pickle.dumps(VideoError("/data/a.mp4", "empty file (0 bytes)")))
    assert (err.path, err.reason) == ("/data/a.mp4", "empty file (0 bytes)")
    assert str(err) == "cannot decode video /data/a.mp4: empty file (0 bytes)"
