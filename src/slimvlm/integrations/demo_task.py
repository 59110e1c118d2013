"""The offline lmms-eval tasks on the demo VLM's test scenes (``lmms_eval_tasks/slimvlm_demo/*.yaml``).

The task data is a list of scene seeds (``test_scenes.jsonl``: the first 200 seeds of the test split, as
``slimvlm eval --scenes 200``); :func:`process_docs` turns each seed into its questions with
:func:`slimvlm.demo.scenes.questions`, so the questions always come from the generator itself. Images are
rendered on first use and kept as lossless PNGs in :func:`cache_dir`.

Two tasks use these functions:

- ``slimvlm_demo``: generate a one-word answer, exact match; the metrics are ``exact_match`` over every
  question, ``five_types`` (every type but ``digit``, the aggregate the project reports) and one accuracy per
  question type (``exist``, ``count``, ``color_at``, ``where``, ``larger``, ``digit``);
- ``slimvlm_demo_choice``: the same questions as multiple choice (lmms-eval scores each choice by the model's
  loss on it and picks the lowest): ``acc``.

This module imports neither lmms-eval nor torch (``datasets`` only inside :func:`process_docs`).
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Optional

from ..demo import scenes

__all__ = [
    "FIVE_TYPES",
    "cache_dir",
    "scene_image",
    "docs_for",
    "process_docs",
    "doc_to_visual",
    "doc_to_text",
    "doc_to_choice",
    "normalize_answer",
    "process_results",
]

#: the question types the project's demo accuracy is reported over (``digit`` is reported apart).
FIVE_TYPES = tuple(qt for qt in scenes.QTYPES if qt != "digit")


def cache_dir() -> str:
    """Where scene images are written: ``$SLIMVLM_CACHE/demo_scenes``, else ``$XDG_CACHE_HOME/slimvlm/...``,
    else ``~/.cache/slimvlm/demo_scenes``."""
    root = os.environ.get("SLIMVLM_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "slimvlm")
    return os.path.join(root, "demo_scenes")


def scene_image(seed: int):
    """The RGB ``PIL.Image`` of scene ``seed``, rendered and saved as ``<cache_dir>/<seed>.png`` on first use
    (PNG is lossless: the pixels equal :func:`slimvlm.demo.scenes.make_scene`'s)."""
    from PIL import Image

    path = os.path.join(cache_dir(), f"{int(seed)}.png")
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        scenes.make_scene(int(seed)).pil().save(tmp, format="PNG")
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    with Image.open(path) as im:
        return im.convert("RGB")


def _choices(scene: scenes.Scene, qa: scenes.QA) -> list[str]:
    """The answer options of a question: its type's answer words; for ``larger``, the two objects' kinds (or
    colours, when the kinds are the same: the answer names what tells them apart)."""
    if qa.qtype == "larger":
        a, b = (scene.objects[i] for i in qa.objects)
        return [a.kind, b.kind] if a.kind != b.kind else [a.color, b.color]
    words = {
        "exist": ["yes", "no"],
        "count": [str(n) for n in range(7)],  # a scene holds 1-6 objects
        "color_at": list(scenes.COLORS),
        "where": list(scenes.PLACES),
        "digit": [str(d) for d in range(10)],
    }
    return words[qa.qtype]


def docs_for(seeds: Iterable[int]) -> list[dict[str, Any]]:
    """One document per question of each scene, in seed order then question order."""
    docs = []
    for seed in seeds:
        scene = scenes.make_scene(int(seed))
        for i, qa in enumerate(scenes.questions(scene)):
            docs.append(
                {
                    "question_id": f"{int(seed)}-{i}",
                    "seed": int(seed),
                    "question": qa.question,
                    "answer": qa.answer,
                    "qtype": qa.qtype,
                    "small": bool(qa.small),
                    "choices": _choices(scene, qa),
                }
            )
    return docs


def process_docs(dataset):
    """lmms-eval ``process_docs``: the dataset of seeds → the dataset of their questions."""
    import datasets

    return datasets.Dataset.from_list(docs_for(dataset["seed"]))


def doc_to_visual(doc: dict) -> list:
    return [scene_image(doc["seed"])]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: Optional[dict] = None) -> str:
    """The question, between the task's optional ``pre_prompt`` / ``post_prompt`` (empty by default: the demo VLM
    knows only its own question words)."""
    kw = lmms_eval_specific_kwargs or {}
    return f"{kw.get('pre_prompt', '')}{doc['question']}{kw.get('post_prompt', '')}"


def doc_to_choice(doc: dict) -> list[str]:
    return list(doc["choices"])


def normalize_answer(text: str) -> str:
    """Lower case, surrounding blanks and a final period removed: ``" Red.\\n"`` → ``"red"``."""
    return text.strip().lower().rstrip(".").strip()


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """Exact match of the normalised answer, under ``exact_match``, the question's type and, for every type but
    ``digit``, ``five_types``; each of those metrics is lmms-eval's mean over the documents that report it."""
    correct = float(normalize_answer(results[0]) == doc["answer"])
    out = {"exact_match": correct, doc["qtype"]: correct}
    if doc["qtype"] in FIVE_TYPES:
        out["five_types"] = correct
    return out
