"""``slimvlm.io``: images and video files in, checked once.

Oracles: pixel values written into the files by the test (a 16-bit ramp, alpha levels, frame ``i`` at grey level
``20 i``) and recomputed here per pixel; the sampled frame numbers as literal lists; every bad file refused with a
MediaError naming the file and the problem."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from media import frame_number, write_video
from slimvlm.io import MediaError, load_image, load_video, sample_indices


# ----------------------------------------------------------------------------------------------- images


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    ramp = np.arange(0, 65536, 16, dtype=np.uint16).reshape(64, 64)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")  # PIL reads it as 16-bit data
    got = np.asarray(load_image(tmp_path / "g16.png"))
    assert got.shape == (64, 64, 3) and got.dtype == np.uint8
    for y in range(0, 64, 7):
        for x in range(0, 64, 5):
            want = int(ramp[y, x] / 257 + 0.5)  # 65535 -> 255, 0 -> 0, linear between
            assert tuple(got[y, x]) == (want, want, want), (y, x)
    assert (got == 255).mean() < 0.01  # convert("RGB") alone makes 99.6 % of this ramp white


def test_transparency_is_composited_onto_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200  # red channel
    rgba[0, :, 3] = 0  # transparent row -> white
    rgba[1, :, 3] = 255  # opaque row -> its colour
    rgba[2, :, 3] = 128
    rgba[3, :, 3] = 64
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    got = np.asarray(load_image(tmp_path / "a.png")).astype(int)
    for y in range(4):
        a = rgba[y, 0, 3] / 255
        want = [round(200 * a + 255 * (1 - a)), round(255 * (1 - a)), round(255 * (1 - a))]
        assert np.abs(got[y, 0] - want).max() <= 1, (y, got[y, 0], want)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (10, 200, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    img.save(tmp_path / "phone.jpg", exif=exif)
    assert load_image(tmp_path / "phone.jpg").size == (20, 40)


@pytest.mark.parametrize("name, data, message", [
    ("missing.png", None, "no such file"),
    ("notes.jpg", b"just some text", "is not an image PIL can read"),
    ("cut.jpg", "truncated", "cannot decode the image"),
    ("float.tif", "float", "32-bit float image"),
])
def test_bad_images_are_refused_naming_the_file(tmp_path, name, data, message):
    path = tmp_path / name
    if data == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=95)
        path.write_bytes(path.read_bytes()[:1500])
    elif data == "float":
        Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8), "F").save(path)
    elif data is not None:
        path.write_bytes(data)
    with pytest.raises(MediaError, match=message) as err:
        load_image(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------- videos


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    return {
        "mp4": write_video(d / "clip.mp4", 12),
        "mkv": write_video(d / "clip.mkv", 12, fmt="matroska"),  # Matroska stores no frame count
        "empty_avi": write_video(d / "empty.avi", 0, fmt="avi"),
        "empty_mp4": write_video(d / "empty.mp4", 0),
        "dir": d,
    }


@pytest.mark.parametrize("kind", ["mp4", "mkv"])
def test_uniform_sampling_spreads_over_the_whole_clip(clips, kind):
    v = load_video(clips[kind], 5)
    assert v.indices == (0, 3, 6, 8, 11)  # round(linspace(0, 11, 5)) = 0, 2.75, 5.5, 8.25, 11
    assert [frame_number(f) for f in v.frames] == [0, 3, 6, 8, 11]  # the decoded pixels are those frames
    assert v.frames.shape == (5, 48, 64, 3) and v.frames.dtype == np.uint8
    assert v.total_frames == 12 and v.fps == 10.0
    assert v.times == pytest.approx((0.0, 0.3, 0.6, 0.8, 1.1))


def test_fixed_rate_sampling_and_short_clips(clips):
    v = load_video(clips["mp4"], None, fps=4)  # every 0.25 s of a 10 fps clip: frames round(2.5 k)
    assert v.indices == (0, 2, 5, 8, 10) and [frame_number(f) for f in v.frames] == [0, 2, 5, 8, 10]
    assert load_video(clips["mp4"], 2, fps=4).indices == (0, 2)  # at most num_frames
    assert load_video(clips["mp4"], 50).indices == tuple(range(12))  # fewer frames than asked: all of them
    assert load_video(clips["mp4"], 1).indices == (0,)


def test_sample_indices_literal_cases():
    assert sample_indices(12, 5) == [0, 3, 6, 8, 11]
    assert sample_indices(8, 8) == list(range(8))
    assert sample_indices(100, 4) == [0, 33, 66, 99]
    assert sample_indices(30, None, fps=1, source_fps=30) == [0]  # a 1 s clip at 1 fps
    assert sample_indices(31, None, fps=1, source_fps=30) == [0, 30]
    assert sample_indices(0, 4) == []


def test_bad_videos_are_refused_naming_the_file(clips, tmp_path):
    still = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(still)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clips["mp4"].read_bytes()[:600])
    cases = [
        (clips["empty_avi"], "has no video frames"),
        (clips["empty_mp4"], "has no video stream"),  # MP4 drops a track without samples
        (still, "is a still image"),
        (text, "is not a video PyAV"),
        (cut, "is not a video PyAV"),
        (tmp_path / "missing.mp4", "no such file"),
    ]
    for path, message in cases:
        with pytest.raises(MediaError, match=message) as err:
            load_video(path, 4)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_frames=0), "num_frames must be an int >= 1"),
    (dict(num_frames=2.5), "num_frames must be an int >= 1"),
    (dict(fps=0), "fps must be a positive number"),
    (dict(fps=float("nan")), "fps must be a positive number"),
])
def test_bad_sampling_arguments(clips, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_video(clips["mp4"], **kwargs)
