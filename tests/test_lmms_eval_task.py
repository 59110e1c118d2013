"""The offline lmms-eval task's functions (``slimvlm.integrations.demo_task``) and the plugin's declaration,
without lmms-eval: these run in the main environment. The bridge itself is tested in ``test_lmms_eval.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from slimvlm.demo import scenes
from slimvlm.integrations import demo_task
from slimvlm.integrations.lmms_eval_tasks import TASKS_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_seed_file_is_the_first_200_test_scenes():
    with open(os.path.join(TASKS_DIR, "slimvlm_demo", "test_scenes.jsonl")) as f:
        seeds = [json.loads(line)["seed"] for line in f]
    assert seeds == list(scenes.split_seeds("test", 200))


def test_docs_are_the_generator_questions_with_valid_choices():
    seeds = list(scenes.split_seeds("test", 30))
    docs = demo_task.docs_for(seeds)
    expected = [(s, qa) for s in seeds for qa in scenes.questions(scenes.make_scene(s))]
    assert len(docs) == len(expected)
    for doc, (seed, qa) in zip(docs, expected):
        assert (doc["seed"], doc["question"], doc["answer"], doc["qtype"], doc["small"]) == (seed, qa.question, qa.answer, qa.qtype, qa.small)
        assert doc["answer"] in doc["choices"] and len(set(doc["choices"])) == len(doc["choices"]) >= 2
    assert {d["qtype"] for d in docs} == set(scenes.QTYPES)
    larger = [d for d in docs if d["qtype"] == "larger"]
    assert larger and all(len(d["choices"]) == 2 and d["choices"][0] in d["question"] for d in larger)


def test_scene_images_are_written_once_and_lossless(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMVLM_CACHE", str(tmp_path))
    seed = scenes.split_seeds("test", 1)[0]
    path = os.path.join(tmp_path, "demo_scenes", f"{seed}.png")
    assert not os.path.exists(path)
    first = demo_task.scene_image(seed)
    assert os.path.isfile(path)
    stamp = os.stat(path).st_mtime_ns
    again = demo_task.scene_image(seed)
    assert os.stat(path).st_mtime_ns == stamp  # read back, not rendered again
    want = scenes.make_scene(seed).image
    assert np.array_equal(np.asarray(first), want) and np.array_equal(np.asarray(again), want)
    assert demo_task.doc_to_visual({"seed": seed})[0].size == (336, 336)


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("SLIMVLM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert demo_task.cache_dir() == os.path.join(tmp_path, "slimvlm", "demo_scenes")


@pytest.mark.parametrize(
    "qtype,reply,answer,expected",
    [
        ("color_at", " Red.\n", "red", {"exact_match": 1.0, "color_at": 1.0, "five_types": 1.0}),
        ("count", "3", "2", {"exact_match": 0.0, "count": 0.0, "five_types": 0.0}),
        ("digit", "7", "7", {"exact_match": 1.0, "digit": 1.0}),  # digit is reported apart from the five types
        ("where", "top left", "top-left", {"exact_match": 0.0, "where": 0.0, "five_types": 0.0}),
    ],
)
def test_scoring(qtype, reply, answer, expected):
    assert demo_task.process_results({"qtype": qtype, "answer": answer}, [reply]) == expected


def test_prompt_options():
    doc = {"question": "how many stars?"}
    assert demo_task.doc_to_text(doc) == "how many stars?"
    assert demo_task.doc_to_text(doc, {"pre_prompt": "Q: ", "post_prompt": " One word."}) == "Q: how many stars? One word."


def test_process_docs_expands_seeds():
    datasets = pytest.importorskip("datasets")
    seeds = list(scenes.split_seeds("test", 2))
    out = demo_task.process_docs(datasets.Dataset.from_list([{"seed": s} for s in seeds]))
    assert out.to_list() == demo_task.docs_for(seeds)


def test_plugin_is_declared_and_importing_slimvlm_stays_light():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["entry-points"]["lmms_eval.models"] == {"slimvlm": "slimvlm.integrations:lmms_eval_manifest"}
    code = ("import sys, slimvlm, slimvlm.integrations, slimvlm.integrations.demo_task; "
            "assert 'lmms_eval' not in sys.modules, 'lmms_eval imported'; "
            "import slimvlm.integrations as i; assert callable(i.lmms_eval_manifest)")
    subprocess.run([sys.executable, "-c", code], check=True)
