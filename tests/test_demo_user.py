"""The demo VLM as a new user meets it: the headline comparison (PruMerge+ at 25 % beside its adaptive count), your
own picture (``slimvlm demo --image``, ``slimvlm run --model demo``), questions in its vocabulary only, an overlay
whatever the methods, and ``demo train``'s files readable like any other."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

from slimvlm.cli import main
from slimvlm.demo import scenes
from slimvlm.demo.app import DEMO_METHODS, IMAGE_QUESTIONS, label_of
from slimvlm.demo.model import check_question, known_words


@pytest.mark.parametrize("question, error", [
    ("how many objects are there?", None),
    ("Which is larger, the red circle or the blue square?", None),
    ("is there a red circle!", None),  # stray punctuation is ignored, as the tokenizer does
    ("what is the meaning of life?", r"does not know 'meaning', 'of', 'life'"),
    ("what's in the center?", r"does not know 's'"),
    ("", r"empty question"),
    ("   ??", r"empty question"),
])
def test_questions_must_use_the_scenes_words(question, error):
    if error is None:
        assert check_question(question) == scenes.tokenize(question)
        return
    with pytest.raises(ValueError, match=error) as err:
        check_question(question)
    if "does not know" in str(err.value):
        assert str(err.value).endswith(" ".join(known_words()))


def test_every_generated_question_is_in_the_vocabulary():
    for seed in scenes.split_seeds("test", 30):
        for qa in scenes.questions(scenes.make_scene(seed)):
            check_question(qa.question)
    for q in IMAGE_QUESTIONS:
        check_question(q)


def test_headline_shows_prumerge_plus_at_a_quarter_and_adaptive(monkeypatch, tmp_path):
    """`slimvlm demo` hands the default comparison to run_demo unchanged: PruMerge+ twice (ratio 0.25 and its own
    count), labelled apart."""
    import slimvlm.demo.app as app

    seen = {}
    monkeypatch.setattr(app, "run_demo", lambda seed, methods, out, **kw: seen.update(methods=methods, out=out))
    monkeypatch.setattr("slimvlm.cli._demo_model", lambda path: None)
    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 0
    assert seen["methods"] == list(DEMO_METHODS) and seen["out"] == "slimvlm_demo.png"
    labels = [label_of(m, o) for m, o in seen["methods"]]
    assert labels == ["none", "prumerge+(ratio=0.25)", "prumerge+(adaptive)", "aim"]


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "shapes.png"
    scenes.make_scene(20_000_042).pil().resize((500, 400)).save(path)  # a picture of another size
    return path


@pytest.mark.slow
def test_demo_on_your_picture_with_an_identity_method_still_draws(shipped_demo, picture, tmp_path):
    from slimvlm.demo.app import run_demo

    lines = []
    out = tmp_path / "x" / "demo.png"
    res = run_demo(methods=[("none", {})], out=str(out), image=Image.open(picture), runs=1,
                   model_and_tokenizer=shipped_demo, echo=lines.append)
    assert res["questions"] == list(IMAGE_QUESTIONS) and res["truth"] is None
    assert res["overlay"] == str(out) and Image.open(out).size[0] >= 336
    text = "\n".join(lines)
    assert "your image, resized to 336x336" in text and f"wrote {out}" in text
    assert all(a in scenes.answer_space() for a in res["answers"]["none"])


@pytest.mark.slow
def test_run_with_the_demo_model_answers_about_your_picture(shipped_demo, picture, monkeypatch, capsys):
    monkeypatch.setattr("slimvlm.demo.app.load_shipped", lambda: shipped_demo)
    argv = ["run", "--model", "demo", "--image", str(picture), "--prompt", "how many objects are there?",
            "-m", "prumerge+", "--ratio", "0.25", "--compare", "none", "--json"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert "trained only on generated scenes" in res["note"]
    assert [r["visual_tokens"] for r in res["results"]] == [[[576, 576]], [[576, 144]]]
    assert all(r["answer"] in scenes.answer_space() for r in res["results"])


@pytest.mark.slow
def test_demo_train_files_share_one_mode(shipped_demo, tmp_path):
    from slimvlm.demo.model import is_demo_model, save_demo_model

    model, tok = shipped_demo
    old = os.umask(0o022)
    try:
        save_demo_model(model, tok, str(tmp_path / "m"), extra={"x": 1})
    finally:
        os.umask(old)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in (tmp_path / "m").iterdir()}
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes
    assert is_demo_model(str(tmp_path / "m")) and not is_demo_model(str(tmp_path))


def test_a_user_picture_is_resized_as_the_tower_takes_it():
    from slimvlm.demo.app import as_demo_image

    arr = np.zeros((30, 50, 3), np.uint8)
    out = as_demo_image(arr)
    assert out.shape == (336, 336, 3) and out.dtype == np.uint8
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        as_demo_image(np.zeros((4, 4), np.float32))
