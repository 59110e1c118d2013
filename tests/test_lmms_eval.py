"""The lmms-eval bridge (``slimvlm.integrations.lmms_eval``) through the stock lmms-eval 0.7.3, offline.

Runs only where lmms-eval is installed (``scripts/install_eval.sh`` builds ``.venv-eval``; ``scripts/ci_eval.sh``
runs this file there); elsewhere the whole module is skipped. The oracles are slimvlm used directly, one
question at a time: ``slimvlm.demo.model.predict`` (the argmax after ``answer:``) on ``make_scene``'s own pixels
through ``slimvlm.apply(model, method, positions="original")``, and for the Hugging Face path the stock
model's own ``labels`` loss and a hand-written prompt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

lmms_eval = pytest.importorskip("lmms_eval")

from lmms_eval import evaluator  # noqa: E402
from lmms_eval.api.instance import Instance  # noqa: E402
from lmms_eval.tasks import TaskManager  # noqa: E402

import slimvlm  # noqa: E402
from slimvlm.demo import scenes  # noqa: E402
from slimvlm.demo.model import N_IMAGE_TOKENS, make_inputs, predict, prompt_text  # noqa: E402
from slimvlm.integrations import demo_task  # noqa: E402
from slimvlm.integrations import lmms_eval as bridge  # noqa: E402
from slimvlm.integrations.lmms_eval_tasks import TASKS_DIR  # noqa: E402

N_GENERATE = 24  # questions per generate run (the first scenes of the test split)
N_CHOICE = 8  # questions of the multiple-choice run (each asks the model once per option)
REDUCING = ("prumerge+", {})  # adaptive: every scene keeps its own count, so batches mix counts
METHODS = {"none": ("none", {}), "prumerge+": REDUCING}


@pytest.fixture(scope="module", autouse=True)
def offline_cache(tmp_path_factory):
    """Scene images go to a fresh cache (written on first use); no hub access."""
    saved = {k: os.environ.get(k) for k in ("SLIMVLM_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    os.environ.update(SLIMVLM_CACHE=str(tmp_path_factory.mktemp("cache")), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def task_manager():
    return TaskManager("WARNING", include_path=TASKS_DIR, include_defaults=False)


@pytest.fixture(scope="module")
def demo():
    from slimvlm.demo.app import load_shipped

    return load_shipped()


@pytest.fixture(scope="module")
def questions():
    """The first test-split questions, straight from the generator (the task must list the same, in order)."""
    qs = []
    for seed in scenes.split_seeds("test", 20):
        scene = scenes.make_scene(seed)
        qs += [(scene, qa) for qa in scenes.questions(scene)]
        if len(qs) >= N_GENERATE:
            return qs[:N_GENERATE]
    raise AssertionError("20 scenes gave fewer questions than expected")


@pytest.fixture(scope="module")
def direct(demo, questions):
    """method -> per question (answer, visual tokens kept, prompt tokens entering the LLM), by slimvlm itself."""
    model, tok = demo
    out = {}
    for name, (method, options) in METHODS.items():
        runner = slimvlm.apply(model, method, positions="original", **options)
        rows = []
        for scene, qa in questions:
            answer = predict(model, tok, [scene], [qa.question], runner=runner)[0]
            kept = runner.last_stats[0].tokens_after
            text = len(tok(prompt_text(qa.question), add_special_tokens=False)["input_ids"]) - N_IMAGE_TOKENS
            rows.append((answer, kept, text + kept))
        out[name] = rows
    return out


_RUNS: dict = {}


def run(task_manager, task, model_args, batch_size, limit):
    """One in-process lmms-eval evaluation (model resolved by name through the entry point, built from the
    model_args string as the command line does); cached per configuration."""
    key = (task, model_args, batch_size, limit)
    if key not in _RUNS:
        start = time.perf_counter()
        res = evaluator.simple_evaluate(
            model="slimvlm", model_args=model_args, tasks=[task], batch_size=batch_size, limit=limit,
            task_manager=task_manager, log_samples=True, verbosity="WARNING",
        )
        seconds = time.perf_counter() - start
        samples = sorted(res["samples"][task], key=lambda s: s["doc_id"])
        _RUNS[key] = (res, samples, seconds)
    return _RUNS[key]


def model_args(name: str) -> str:
    method, options = METHODS[name]
    return ",".join([f"pretrained=demo,method={method}"] + [f"{k}={v}" for k, v in options.items()])


# ----------------------------------------------------------------------------------------------- the task


def test_task_lists_the_generator_questions(task_manager, questions):
    task = lmms_eval.tasks.get_task_dict(["slimvlm_demo"], task_manager)["slimvlm_demo"]
    docs = task.test_docs()
    assert len(docs) == sum(len(scenes.questions(scenes.make_scene(s))) for s in scenes.split_seeds("test", 200))
    for doc, (scene, qa) in zip(docs, questions):
        assert (doc["seed"], doc["question"], doc["answer"], doc["qtype"]) == (scene.seed, qa.question, qa.answer, qa.qtype)


# ----------------------------------------------------------------------------------------------- generate_until


@pytest.mark.parametrize("name", list(METHODS))
def test_answers_and_token_counts_match_slimvlm(task_manager, questions, direct, name):
    res, samples, seconds = run(task_manager, "slimvlm_demo", model_args(name), 4, N_GENERATE)
    assert [s["doc_id"] for s in samples] == list(range(N_GENERATE))
    got = [demo_task.normalize_answer(s["filtered_resps"][0] if isinstance(s["filtered_resps"], list) else s["filtered_resps"])
           for s in samples]
    want = [a for a, _, _ in direct[name]]
    assert got == want
    # scores: exact match against the generator's answers, overall, per type, five types
    correct = [a == qa.answer for a, (_, qa) in zip(want, questions)]
    metrics = res["results"]["slimvlm_demo"]
    assert metrics["exact_match,none"] == pytest.approx(sum(correct) / len(correct))
    for qt in scenes.QTYPES:
        hits = [c for c, (_, qa) in zip(correct, questions) if qa.qtype == qt]
        if hits:
            assert metrics[f"{qt},none"] == pytest.approx(sum(hits) / len(hits)), qt
    five = [c for c, (_, qa) in zip(correct, questions) if qa.qtype != "digit"]
    assert metrics["five_types,none"] == pytest.approx(sum(five) / len(five))
    # the recorded token counts are what slimvlm kept
    counts = [s["token_counts"][0] for s in samples]
    assert [c["visual_tokens_before"] for c in counts] == [N_IMAGE_TOKENS] * N_GENERATE
    assert [c["visual_tokens_after"] for c in counts] == [k for _, k, _ in direct[name]]
    assert [c["input_tokens"] for c in counts] == [p for _, _, p in direct[name]]
    assert res["efficiency"]["overall"]["total_input_tokens"] == sum(p for _, _, p in direct[name])
    if name != "none":  # adaptive PruMerge+ keeps all 576 on a few busy scenes, far fewer on most
        assert sum(c["visual_tokens_after"] for c in counts) < 0.6 * N_IMAGE_TOKENS * N_GENERATE
    print(f"\n[lmms-eval] slimvlm_demo {model_args(name)} batch 4: exact_match {metrics['exact_match,none']:.4f} "
          f"over {N_GENERATE} questions, {seconds:.1f} s")


def test_batch_size_does_not_change_answers(task_manager):
    name = "prumerge+"
    r4, b4, t4 = run(task_manager, "slimvlm_demo", model_args(name), 4, N_GENERATE)
    r1, b1, t1 = run(task_manager, "slimvlm_demo", model_args(name), 1, N_GENERATE)
    assert [s["filtered_resps"] for s in b4] == [s["filtered_resps"] for s in b1]
    assert [s["token_counts"] for s in b4] == [s["token_counts"] for s in b1]
    kept = [s["token_counts"][0]["visual_tokens_after"] for s in b4]
    # the batches of 4 really mixed kept counts (the run keeps request order; several scenes per batch)
    assert any(len(set(kept[i:i + 4])) > 1 for i in range(0, N_GENERATE, 4))
    g1, g4 = (r["throughput"]["total_elapsed_time"] for r in (r1, r4))
    print(f"\n[lmms-eval] slimvlm_demo {model_args(name)}, {N_GENERATE} questions: answering took {g1:.1f} s at batch 1, "
          f"{g4:.1f} s at batch 4 (whole evaluation with the model load: {t1:.1f} s / {t4:.1f} s)")


# ----------------------------------------------------------------------------------------------- loglikelihood


def test_multiple_choice_picks_the_lowest_loss(task_manager, demo, questions):
    """lmms-eval's multiple_choice takes the argmin of what loglikelihood returns: with losses, the option whose
    word the model rates highest. Oracle: slimvlm's logits at ``answer:`` restricted to the options."""
    model, tok = demo
    method, options = REDUCING
    res, samples, _ = run(task_manager, "slimvlm_demo_choice", model_args("prumerge+"), 4, N_CHOICE)
    runner = slimvlm.apply(model, method, positions="original", **options)
    for sample, (scene, qa) in zip(samples, questions):
        choices = demo_task.docs_for([scene.seed])[[q.question for q in scenes.questions(scene)].index(qa.question)]["choices"]
        logits = runner(**make_inputs(model, tok, [scene], [qa.question])).logits[0, -1].float()
        logp = torch.log_softmax(logits, -1)[tok.convert_tokens_to_ids(choices)]
        assert sample["acc"] == float(choices[int(logp.argmax())] == qa.answer)
        losses = [r[0][0] for r in sample["resps"]]  # one (loss, is_greedy) per option, kept as numbers
        assert losses == pytest.approx((-logp).tolist(), abs=1e-4)
    acc = sum(s["acc"] for s in samples) / len(samples)
    assert res["results"]["slimvlm_demo_choice"]["acc,none"] == pytest.approx(acc)


# ----------------------------------------------------------------------------------------------- multi-round


def test_multi_round_answers_each_round(demo, questions):
    """Round 0 asks a scene's first question, round 1 (from doc_to_text) its second one, then done."""
    model, tok = demo
    lm = bridge.SlimVLMEval.create_from_arg_string("pretrained=demo,method=prumerge+", {"batch_size": 2})
    by_scene: dict = {}
    for scene, qa in questions:
        by_scene.setdefault(scene.seed, (scene, []))[1].append(qa)
    picked = [(scene, qas[:2]) for scene, qas in by_scene.values() if len(qas) >= 2][:3]
    docs = [{"seed": scene.seed, "q": [qa.question for qa in qas]} for scene, qas in picked]
    lm.task_dict = {"multi": {"test": docs}}

    def doc_to_text(doc, previous_output=None, round_idx=None, previous_round_info=None):
        if round_idx == 1:
            return demo_task.doc_to_visual(doc), doc["q"][1], False, previous_output, {"asked": 1}
        return None, None, True, previous_output, previous_round_info

    requests = [
        Instance("generate_until_multi_round", (doc["q"][0], {"max_new_tokens": 4}, demo_task.doc_to_visual, doc_to_text, i, "multi", "test"),
                 idx=0, metadata={"task": "multi", "doc_id": i, "repeats": 1})
        for i, doc in enumerate(docs)
    ]
    results = lm.generate_until_multi_round(requests)
    runner = slimvlm.apply(model, "prumerge+", positions="original")
    for res, (scene, qas) in zip(results, picked):
        assert res.text == [predict(model, tok, [scene], [qa.question], runner=runner)[0] for qa in qas]
        assert res.token_counts.visual_tokens_before == 2 * N_IMAGE_TOKENS  # two rounds, one image each


# ----------------------------------------------------------------------------------------------- bad model_args


BAD_ARGS = [
    ("pretrained=demo,method=nosuch", "unknown method 'nosuch'"),
    ("pretrained=demo,method=prumerge+,keep=0", "keep"),
    ("pretrained=demo,method=none,keep=64", "unknown argument(s) keep"),
    ("pretrained=demo,method=fastv,l1=3", "unknown argument(s) l1: not a model argument (pretrained, method"),
    ("pretrained=demo,method=spatial,keep=32,positions=sideways", "positions must be one of renumber, original"),
    ("pretrained=demo,methdo=spatial", "unknown argument(s) methdo"),
    ("pretrained=demo,batch_size=0", "batch_size must be an integer >= 1"),
    ("pretrained=demo,batch_size=auto", "batch_size=auto is not supported"),
    ("pretrained=demo,dtype=float8", "dtype must be one of"),
    ("method=spatial", "give pretrained="),
    ("pretrained=/no/such/folder", "no such folder"),
    ("pretrained=demo,keep", "expected key=value"),
]


@pytest.mark.parametrize("args,message", BAD_ARGS)
def test_bad_model_args_fail_before_loading(monkeypatch, args, message):
    def must_not_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(bridge, "_DemoBackend", must_not_load)
    monkeypatch.setattr(bridge, "_HFBackend", must_not_load)
    with pytest.raises(bridge.ModelArgsError) as err:
        bridge.SlimVLMEval.create_from_arg_string(args, {"batch_size": 1, "max_batch_size": None, "device": None})
    text = str(err.value)
    assert message in text and "\n" not in text and text.startswith("slimvlm model_args: ")
    print(f"\n[bad model_args] {args!r}: {text}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a CUDA device")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(bridge.ModelArgsError, match="device=cuda but torch sees no CUDA device"):
        bridge.check_model_args({"pretrained": "demo", "device": "cuda"})


def test_model_args_values_are_typed():
    assert bridge.parse_model_args("pretrained=demo,method=spatial,sample_grid=6x6,ratio=0.25,keep=64,mode=faithful") == {
        "pretrained": "demo", "method": "spatial", "sample_grid": (6, 6), "ratio": 0.25, "keep": 64, "mode": "faithful"}
    s = bridge.check_model_args({"pretrained": "demo", "method": "aim", "ratio": "0.25", "l1": "2", "l2": "3"})
    assert (s.method, s.options, s.positions) == ("aim", {"ratio": 0.25, "l1": 2, "l2": 3}, "original")


# ----------------------------------------------------------------------------------------------- a Hugging Face model


@pytest.fixture(scope="module")
def tiny_llava_dir(tmp_path_factory):
    """A tiny LLaVA with a real processor (PIL image processor, chat template) saved as a local checkpoint."""
    from transformers import LlavaProcessor
    from transformers.models.clip import CLIPImageProcessorPil

    from slimvlm.testing import tiny_model, tiny_tokenizer

    path = str(tmp_path_factory.mktemp("tiny_llava"))
    template = ("{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}"
                "<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    processor = LlavaProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size=32), tokenizer=tiny_tokenizer(),
                               patch_size=4, vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=template)
    tiny_model("llava").save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _images(n):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8)) for i in range(n)]


def test_hugging_face_model_through_its_processor(tiny_llava_dir):
    """generate_until and loglikelihood on a local transformers checkpoint, batch 3 (left padded), against
    ``slimvlm.apply`` fed the processor's output for a hand-written prompt, one request at a time."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    images = _images(3)
    contexts = ["What is in the picture?", "Describe it.", "Is there a cat?"]
    docs = [{"image": im} for im in images]
    lm = bridge.SlimVLMEval.create_from_arg_string(f"pretrained={tiny_llava_dir},method=spatial,keep=16", {"batch_size": 3})
    lm.task_dict = {"t": {"test": docs}}
    gen = [Instance("generate_until", (c, {"max_new_tokens": 3, "until": []}, lambda d: [d["image"]], i, "t", "test"),
                    idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1}) for i, c in enumerate(contexts)]
    ll = [Instance("loglikelihood", (c, " yes it is", lambda d: [d["image"]], i, "t", "test"),
                   idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1}) for i, c in enumerate(contexts)]
    answers, losses = lm.generate_until(gen), lm.loglikelihood(ll)

    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).eval()
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    slim = slimvlm.apply(model, "spatial", keep=16)
    for image, context, answer, loss in zip(images, contexts, answers, losses):
        prompt = f"USER: <image>\n{context} ASSISTANT:"
        inputs = processor(text=[prompt], images=[image], return_tensors="pt")
        with torch.inference_mode():
            out = slim.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert answer.text == processor.batch_decode(out[:, slim.last_prompt_length:], skip_special_tokens=True)[0]
        assert answer.token_counts.visual_tokens_before == 64 and answer.token_counts.visual_tokens_after == 16
        assert answer.token_counts.input_tokens == inputs["input_ids"].shape[1] - 64 + 16
        # the loss: mean NLL of the continuation's tokens under the reduced prompt, here unbatched and unpadded
        full = processor(text=[prompt + " yes it is"], images=[image], return_tensors="pt")
        n = full["input_ids"].shape[1] - inputs["input_ids"].shape[1]
        with torch.inference_mode():
            logits = slim(**full).logits[0].float()
        want = torch.nn.functional.cross_entropy(logits[-n - 1:-1], full["input_ids"][0, -n:]).item()
        assert isinstance(loss.text, tuple) and isinstance(loss.text[1], bool)
        assert loss.text[0] == pytest.approx(want, abs=1e-5)


def test_hugging_face_loss_equals_the_stock_labels_loss(tiny_llava_dir):
    """With method none the bridge's loss is the stock model's ``labels=`` loss (the built-in models' value)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    images = _images(2)
    contexts = ["What is in the picture?", "Describe it."]
    lm = bridge.SlimVLMEval.create_from_arg_string(f"pretrained={tiny_llava_dir}", {"batch_size": 2})
    lm.task_dict = {"t": {"test": [{"image": im} for im in images]}}
    ll = [Instance("loglikelihood", (c, " a cat", lambda d: [d["image"]], i, "t", "test"),
                   idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1}) for i, c in enumerate(contexts)]
    losses = lm.loglikelihood(ll)
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).eval()
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    for image, context, loss in zip(images, contexts, losses):
        prompt = f"USER: <image>\n{context} ASSISTANT:"
        n_prompt = processor(text=[prompt], images=[image], return_tensors="pt")["input_ids"].shape[1]
        full = processor(text=[prompt + " a cat"], images=[image], return_tensors="pt")
        labels = full["input_ids"].clone()
        labels[:, :n_prompt] = -100
        with torch.inference_mode():
            want = model(**full, labels=labels).loss.item()
        assert loss.text[0] == pytest.approx(want, abs=1e-5)


# ----------------------------------------------------------------------------------------------- the command line


def test_command_line_end_to_end(tmp_path, direct):
    """The documented command: ``python -m lmms_eval --model slimvlm ... --include_path <tasks>``."""
    n = 16
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "slimvlm", "--model_args", "pretrained=demo,method=none",
           "--tasks", "slimvlm_demo", "--include_path", TASKS_DIR, "--batch_size", "4", "--limit", str(n),
           "--log_samples", "--output_path", str(tmp_path)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sample_files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs if f.endswith("_samples_slimvlm_demo.jsonl")]
    assert len(sample_files) == 1
    with open(sample_files[0]) as f:
        samples = sorted((json.loads(line) for line in f), key=lambda s: s["doc_id"])
    assert [demo_task.normalize_answer(s["filtered_resps"] if isinstance(s["filtered_resps"], str) else s["filtered_resps"][0])
            for s in samples] == [a for a, _, _ in direct["none"][:n]]
    print(f"\n[lmms-eval CLI] none, batch 4, {n} questions: {seconds:.1f} s including start-up")


def test_command_line_bad_model_args(tmp_path):
    """A bad model_arg through the command line: what lmms-eval prints, and that no model loads."""
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "slimvlm", "--model_args", "pretrained=demo,method=prumerge+,keep=0",
           "--tasks", "slimvlm_demo", "--include_path", TASKS_DIR, "--output_path", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    lines = [line for line in out.splitlines() if "slimvlm model_args:" in line]
    assert lines, out[-3000:]
    assert "Model Responding" not in out and "slimvlm generate" not in out
    print(f"\n[lmms-eval CLI, keep=0] exit code {proc.returncode}; the line: {lines[-1].strip()}")
