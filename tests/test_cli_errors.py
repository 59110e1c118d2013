"""Bad invocations of ``slimvlm``: one row each. Every row must exit 2 with ONE line on stderr, ``slimvlm <command>:
error: ...``, naming the problem (a regular expression per row), no traceback, nothing written; rows marked
``EARLY`` must be refused before any model or vision tower is loaded (the loaders are replaced by ones that fail
the test). The rows run in process through ``slimvlm.cli.main``; a few go through the installed entry point and
``python -m slimvlm`` as a user types them. API-level refusals (``slimvlm.apply`` and friends) close the file."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from media import write_video
from slimvlm.cli import main

EARLY, LATE = True, False


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    ok = d / "ok.jpg"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(ok, quality=95)
    (d / "trunc.jpg").write_bytes(ok.read_bytes()[:1500])
    (d / "notes.jpg").write_text("not an image")
    (d / "notes.mp4").write_text("not a video")
    (d / "no_config").mkdir()
    from transformers import LlamaConfig

    (d / "text_only").mkdir()
    LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, vocab_size=64).save_pretrained(d / "text_only")
    write_video(d / "clip.mp4", 8)
    write_video(d / "empty.avi", 0, fmt="avi")
    (d / "a_file").write_text("x")
    return {"DIR": str(d), "OK": str(ok), **{k: str(d / v) for k, v in {
        "TRUNC": "trunc.jpg", "NOTIMG": "notes.jpg", "NOTVID": "notes.mp4", "NOCONFIG": "no_config",
        "TEXTONLY": "text_only", "CLIP": "clip.mp4", "EMPTYVID": "empty.avi", "AFILE": "a_file"}.items()}}


RUN = ["run", "--model", "tiny:llava", "--prompt", "hi", "-m", "spatial"]
BENCH = ["bench", "--model", "tiny:llava", "--prompt", "hi", "--runs", "1", "--warmup", "0"]
VIZ = ["viz", "--image", "OK"]
VIDEO = ["run", "--model", "tiny:llava-onevision", "--prompt", "hi", "-m", "none", "--video"]

# (id, argv, regex the one error line must match, refused before any model / tower loads)
ROWS = [
    # 9. truncated / corrupt images
    ("viz-truncated-jpeg", ["viz", "--image", "TRUNC"], r"trunc\.jpg: cannot decode the image \(image file is truncated", EARLY),
    ("run-truncated-jpeg", RUN + ["--image", "TRUNC"], r"trunc\.jpg: cannot decode the image", EARLY),
    ("run-not-an-image", RUN + ["--image", "NOTIMG"], r"notes\.jpg is not an image PIL can read", EARLY),
    # 10. outputs that cannot be written, refused before the work
    ("viz-out-unwritable", VIZ + ["--out", "/sys/slimvlm_test.png"], r"--out /sys/slimvlm_test\.png: cannot write there", EARLY),
    ("viz-out-folder-cannot-be-made", VIZ + ["--out", "/proc/self/slimvlm/v.png"], r"cannot create the folder /proc/self/slimvlm", EARLY),
    ("viz-out-folder-is-a-file", VIZ + ["--out", "AFILE/sub/v.png"], r"--out .*a_file/sub/v\.png: .*a_file is a file, not a folder", EARLY),
    ("demo-out-unwritable", ["demo", "--out", "/sys/slimvlm_test.png"], r"--out /sys/slimvlm_test\.png: cannot write there", EARLY),
    ("eval-out-unwritable", ["eval", "--out", "/sys/slimvlm_eval"], r"--out /sys/slimvlm_eval\.csv: cannot write there", EARLY),
    ("bench-out-unwritable", BENCH + ["--out", "/sys/slimvlm_test.csv"], r"--out /sys/slimvlm_test\.csv: cannot write there", EARLY),
    ("bench-plot-folder-is-a-file", BENCH + ["--plot", "AFILE/p.png"], r"--plot .*a_file/p\.png: .*a_file is a file, not a folder", EARLY),
    ("bench-out-suffix", BENCH + ["--out", "DIR/rows.txt"], r"--out .*rows\.txt: the file name must end in \.csv or \.json", EARLY),
    # 7. --plot writes a PNG: a name without .png is refused, not silently renamed
    ("bench-plot-suffix", BENCH + ["--plot", "DIR/benchplot"], r"--plot .*benchplot: the file name must end in \.png", EARLY),
    # 11. bench numbers, methods, options
    ("bench-warmup", BENCH[:-2] + ["--warmup", "-1"], r"--warmup must be >= 0, got -1", EARLY),
    ("bench-decode-steps", BENCH + ["--decode-steps", "-1"], r"--decode-steps must be >= 0, got -1", EARLY),
    ("bench-threads", BENCH + ["--threads", "0"], r"--threads must be >= 1, got 0", EARLY),
    ("bench-runs", BENCH[:-4] + ["--runs", "0"], r"--runs must be >= 1, got 0", EARLY),
    ("bench-same-method-twice", BENCH + ["-m", "none", "-m", "visionzip", "-m", "none"], r"-m none is given twice", EARLY),
    ("bench-fastv-layer-past-the-model", BENCH + ["-m", "fastv", "-o", "k=100"], r"fastv: k=100 must be below the model's 4 layers", LATE),
    # 3. an option no given method takes
    ("bench-unknown-option", BENCH + ["-o", "bogus=1"], r"-o bogus=1: no method given takes this option \(none takes no option; prumerge\+ takes keep", EARLY),
    ("viz-unknown-option", VIZ + ["-m", "spatial", "-o", "bogus=1"], r"-o bogus=1: no method given takes this option \(spatial takes keep, ratio, sample_grid\)", EARLY),
    ("viz-mode-for-spatial", VIZ + ["-m", "spatial", "--mode", "faithful"], r"--mode faithful: no method given takes this option", EARLY),
    ("demo-unknown-option", ["demo", "-m", "none", "-m", "aim", "-o", "bogus=1"], r"-o bogus=1: no method given takes", EARLY),
    ("run-unknown-option", RUN + ["--image", "OK", "-o", "bogus=1"], r"-o bogus=1: no method given takes this option \(spatial takes", EARLY),
    ("cost-unknown-option", ["cost", "--model", "vicuna-7b", "-m", "aim", "-o", "bogus=1"], r"-o bogus=1: no method given takes", EARLY),
    ("cost-option-without-method", ["cost", "--model", "vicuna-7b", "--ratio", "0.5"], r"--ratio 0\.5: the options of a method need one: add -m METHOD", EARLY),
    # 4. a layer past the model's last
    ("cost-aim-layer-99", ["cost", "--model", "vicuna-7b", "--keep", "144", "-m", "aim", "-o", "l1=14", "-o", "l2=99"],
     r"AIM needs 1 <= l1 < l2 <= num_layers \(32\), got l1=14, l2=99", EARLY),
    ("cost-negative-generate", ["cost", "--model", "vicuna-7b", "--generate", "-1"], r"--generate must be >= 0", EARLY),
    # 12. run: tokens to generate, model folders that are not vision-language models
    ("run-max-new-tokens-0", RUN + ["--image", "OK", "--max-new-tokens", "0"], r"--max-new-tokens must be >= 1, got 0", EARLY),
    ("run-max-new-tokens-neg", RUN + ["--image", "OK", "--max-new-tokens", "-1"], r"--max-new-tokens must be >= 1, got -1", EARLY),
    ("run-text-only-model", ["run", "--model", "TEXTONLY", "--image", "OK", "--prompt", "hi", "-m", "none"],
     r"text_only is a 'llama' model; slimvlm runs these vision-language models: LlavaForConditionalGeneration", EARLY),
    ("run-folder-without-config", ["run", "--model", "NOCONFIG", "--image", "OK", "--prompt", "hi", "-m", "none"],
     r"no_config holds no config\.json: not a model directory", EARLY),
    ("run-model-is-a-file", ["run", "--model", "AFILE", "--image", "OK", "--prompt", "hi", "-m", "none"], r"--model .*a_file is a file", EARLY),
    # 13. viz sizes and output format
    ("viz-size-0", VIZ + ["--size", "0"], r"--size must be a positive multiple of 14 .*got 0", EARLY),
    ("viz-size-negative", VIZ + ["--size", "-14"], r"--size must be a positive multiple of 14 .*got -14", EARLY),
    # 6. 100 px is not silently 98 px
    ("viz-size-100", VIZ + ["--size", "100"], r"--size must be a positive multiple of 14 .*e\.g\. 98; got 100", EARLY),
    ("viz-out-jpeg", VIZ + ["--out", "DIR/v.jpg"], r"--out .*v\.jpg: the file name must end in \.png", EARLY),
    # 14. demo / eval numbers
    ("demo-seed-negative", ["demo", "--seed", "-5"], r"--seed must be >= 0, got -5", EARLY),
    ("eval-scenes-too-many", ["eval", "--scenes", "100000000"], r"--scenes must be in \[1, 10000000\]", EARLY),
    ("eval-scenes-0", ["eval", "--scenes", "0"], r"--scenes must be >= 1, got 0", EARLY),
    # 2. the demo model's vocabulary
    ("demo-unknown-words", ["demo", "-q", "what is the meaning of life?"],
     r"the demo model does not know 'meaning', 'of', 'life'; .*knows these words: 0 1 2 .* circle .* yes$", EARLY),
    ("demo-empty-question", ["demo", "-q", "how many objects are there?", "-q", ""], r"empty question", EARLY),
    ("demo-same-method-twice", ["demo", "-m", "none", "-m", "none"], r"-m none is given twice", EARLY),
    ("demo-image-and-seed", ["demo", "--image", "OK", "--seed", "3"], r"--seed picks a generated scene", EARLY),
    ("demo-image-truncated", ["demo", "--image", "TRUNC"], r"trunc\.jpg: cannot decode the image", EARLY),
    ("run-demo-unknown-words", ["run", "--model", "demo", "--image", "OK", "--prompt", "describe this photo", "-m", "none"],
     r"the demo model does not know 'describe', 'this', 'photo'", EARLY),
    ("run-demo-video", ["run", "--model", "demo", "--video", "CLIP", "--prompt", "how many objects are there?", "-m", "none"],
     r"the demo model takes one image, no video", EARLY),
    # 16 / 17. video files
    ("run-video-0-frames", VIDEO + ["EMPTYVID"], r"empty\.avi has no video frames", EARLY),
    ("run-video-corrupt", VIDEO + ["NOTVID"], r"notes\.mp4 is not a video PyAV \(FFmpeg\) can read", EARLY),
    ("run-video-still-image", VIDEO + ["OK"], r"ok\.jpg is a still image \(image2\), not a video", EARLY),
    ("run-video-missing", VIDEO + ["DIR/none.mp4"], r"no such file: .*none\.mp4", EARLY),
    ("run-video-family-without-video", ["run", "--model", "tiny:llava", "--video", "CLIP", "--prompt", "hi", "-m", "none"],
     r"tiny:llava takes no video; video families: llava-onevision", EARLY),
    ("run-video-frames-0", VIDEO + ["CLIP", "--frames", "0"], r"--frames must be >= 1, got 0", EARLY),
    ("run-video-fps-0", VIDEO + ["CLIP", "--fps", "0"], r"--fps must be > 0, got 0", EARLY),
    ("run-frames-without-video", RUN + ["--image", "OK", "--frames", "4"], r"--frames and --fps apply to --video", EARLY),
    ("viz-video-0-frames", ["viz", "--video", "EMPTYVID"], r"empty\.avi has no video frames", EARLY),
]


@pytest.fixture
def no_loading(monkeypatch):
    """Loaders that fail the test: a row marked EARLY must not reach them."""
    import transformers

    import slimvlm.assets
    import slimvlm.demo.app
    import slimvlm.demo.model
    import slimvlm.testing

    def loaded(*_a, **_k):
        raise AssertionError("a model was loaded before the bad input was refused")

    for module, name in ((slimvlm.testing, "tiny_model"), (slimvlm.demo.app, "load_shipped"),
                         (slimvlm.demo.model, "load_demo_model"), (slimvlm.assets, "load_dinov2_small")):
        monkeypatch.setattr(module, name, loaded)
    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", loaded)


def _argv(args: list[str], files: dict[str, str]) -> list[str]:
    out = []
    for a in args:
        for key in sorted(files, key=len, reverse=True):
            if a == key or a.startswith(key + "/"):
                a = files[key] + a[len(key):]
                break
        out.append(a)
    return out


@pytest.mark.parametrize("args, message, early", [pytest.param(a, m, e, id=i) for i, a, m, e in ROWS])
def test_bad_invocation(args, message, early, files, capsys, request, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written by mistake lands here, and is seen
    if early:
        request.getfixturevalue("no_loading")
    argv = _argv(args, files)
    before = set(os.listdir(files["DIR"]))
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    lines = [ln for ln in lines if not ln.startswith("note: ")]  # bench's note on tiny models
    assert len(lines) == 1, err
    assert lines[0].startswith(f"slimvlm {argv[0]}: error: "), err
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in err + out
    assert os.listdir(tmp_path) == [] and set(os.listdir(files["DIR"])) == before  # nothing written


def test_bench_creates_the_folders_of_its_outputs(tmp_path, capsys):
    out, plot = tmp_path / "a" / "b" / "rows.csv", tmp_path / "c" / "p.png"
    assert main(BENCH + ["-m", "none", "--decode-steps", "0", "--out", str(out), "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and plot.is_file() and f"wrote {plot}" in text


# ----------------------------------------------------------------------------------------------- real entry point


def _entry(*args: str, module: bool = False) -> subprocess.CompletedProcess:
    exe = shutil.which("slimvlm") or str(Path(sys.executable).with_name("slimvlm"))
    cmd = [sys.executable, "-m", "slimvlm", *args] if module else [exe, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})


@pytest.mark.parametrize("args, message, module", [
    (["viz", "--image", "TRUNC"], r"^slimvlm viz: error: .*trunc\.jpg: cannot decode the image", False),
    (BENCH + ["-o", "bogus=1"], r"^slimvlm bench: error: -o bogus=1: no method given takes this option", True),
    (VIDEO + ["EMPTYVID"], r"^slimvlm run: error: .*empty\.avi has no video frames", False),
])
def test_bad_invocation_through_the_entry_point(args, message, module, files):
    r = _entry(*_argv(args, files), module=module)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and re.search(message, r.stderr.strip()), r.stderr
    assert "Traceback" not in r.stderr


# ----------------------------------------------------------------------------------------------- the API


def _meta_llava():
    from transformers import LlavaForConditionalGeneration

    from slimvlm.testing import tiny_config

    with torch.device("meta"):
        return LlavaForConditionalGeneration(tiny_config("llava"))


def _onevision_video(frames: int | None = None, side: int | None = None):
    from slimvlm.testing import tiny_inputs, tiny_model

    model = tiny_model("llava-onevision")
    inputs = dict(tiny_inputs(model, "llava-onevision", ["hi"], video=True))
    v = inputs["pixel_values_videos"]
    if frames is not None:
        inputs["pixel_values_videos"] = v[:, :frames]
    if side is not None:
        inputs["pixel_values_videos"] = torch.nn.functional.interpolate(v[0], size=side)[None]
    return model, inputs


def _qwen_zero_frames():
    from slimvlm.testing import tiny_inputs, tiny_model

    model = tiny_model("qwen2-vl")
    inputs = dict(tiny_inputs(model, "qwen2-vl", ["hi"], video=True))
    inputs["video_grid_thw"] = inputs["video_grid_thw"].clone()
    inputs["video_grid_thw"][:, 0] = 0
    return model, inputs


@pytest.mark.parametrize("make, method, message", [
    # 15. a model built on the meta device
    (lambda: (_meta_llava(), None), "prumerge+", r"has weights on the meta device \(e\.g\. .*\): they were never loaded"),
    # 16. a video of 0 frames; OneVision frames of a size the tower does not take
    (lambda: _onevision_video(frames=0), "none", r"holds videos of 0 frames"),
    (lambda: _onevision_video(frames=0), "prumerge+", r"holds videos of 0 frames"),
    (lambda: _onevision_video(side=64), "none", r"video frames 64x64 differ from the tower's 32x32"),
    (lambda: _onevision_video(side=64), "prumerge+", r"video frames 64x64 differ from the tower's 32x32"),
    (_qwen_zero_frames, "none", r"video_grid_thw = .* holds a video of 0 frames"),
])
def test_api_refuses_with_one_line(make, method, message):
    import slimvlm

    model, inputs = make()
    with pytest.raises(ValueError, match=message) as err:
        slim = slimvlm.apply(model, method)
        with torch.no_grad():
            slim(**inputs)
    assert "\n" not in str(err.value)
