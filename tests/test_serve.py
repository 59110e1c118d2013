"""The vLLM bridge (slimvlm.integrations.vllm) against real vLLM on tiny random-weight checkpoints (CPU).

Runs in the serving environment (scripts/install_serve.sh, scripts/ci_serve.sh); skipped where vLLM is not
installed. Reference everywhere: ``slimvlm.apply(model, method, **options).generate`` on transformers, greedy,
float32, fed the processor's outputs for the same images.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine core: starts in seconds

import httpx  # noqa: E402  (comes with vLLM)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from vllm import LLM, SamplingParams  # noqa: E402

import slimvlm  # noqa: E402
from slimvlm.integrations.vllm import FAMILY_SUPPORT, Engine, Request  # noqa: E402
from slimvlm.integrations.vllm.testing import tiny_servable  # noqa: E402

ENGINE_ARGS = dict(dtype="float32", max_model_len=512, enforce_eager=True, kv_cache_memory_bytes=64 << 20, max_num_seqs=8)
NEW_TOKENS = 8
GREEDY = SamplingParams(temperature=0, max_tokens=NEW_TOKENS)


def random_images(n: int, seed: int) -> list[Image.Image]:
    """``n`` noise images of different sizes and aspect ratios (anyres families tile them differently)."""
    rng = np.random.default_rng(seed)
    sizes = [(32, 32), (40, 64), (64, 40), (48, 48), (32, 96)]
    return [Image.fromarray(rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8)) for i in range(n)]


def reference(model_dir: Path, requests: list[Request], engine_method: str, engine_options: dict) -> list[tuple[list[int], int]]:
    """Greedy new tokens and reduced prompt length of each request from slimvlm on transformers."""
    model = transformers.AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = transformers.AutoProcessor.from_pretrained(model_dir)
    out = []
    for r in requests:
        method = r.method or engine_method
        options = dict(r.options) if r.options is not None else engine_options
        slim = slimvlm.apply(model, method, **options)
        inputs = processor(text=[r.prompt], images=[list(r.images)] if r.images else None, return_tensors="pt")
        ids = slim.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        out.append((ids[0, slim.last_prompt_length :].tolist(), slim.last_prompt_length))
    return out


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory) -> Path:
    return tiny_servable("llava", tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="class")
def engine(llava_dir):
    """One engine for the tests of :class:`TestEngine`, closed before any other engine starts: with the in-process
    engine core, closing an engine tears down vLLM's process-global parallel state."""
    with Engine(str(llava_dir), "prumerge+", **ENGINE_ARGS) as eng:
        yield eng


# ------------------------------------------------------------------------------------------- the engine


class TestEngine:
    """The tiny LLaVA behind one engine (PruMerge+, adaptive by default)."""

    def test_different_kept_counts_in_one_generate_match_transformers(self, engine, llava_dir):
        imgs = random_images(5, seed=0)
        prompt = "USER: <image>\nWhat is in the image? ASSISTANT:"
        requests = [
            Request(prompt, [imgs[0]], options={"keep": 4}),
            Request(prompt, [imgs[1]], options={"keep": 12}),
            Request("USER: <image>\n<image>\nCompare them. ASSISTANT:", [imgs[2], imgs[3]]),  # adaptive PruMerge+
            Request(prompt, [imgs[4]], method="spatial", options={"keep": 36}),
        ]
        outputs = engine.generate(requests, GREEDY)
        counts = [[s.tokens_after for s in stats] for stats in engine.last_stats]
        assert counts[0] == [4] and counts[1] == [12] and counts[3] == [36]  # keep counts every token entering the LLM
        assert len({c for cs in counts for c in cs}) >= 4, counts  # several kept counts share the engine step
        assert all(s.tokens_before == 64 for stats in engine.last_stats for s in stats)
        for out, (ref_tokens, ref_len), c in zip(outputs, reference(llava_dir, requests, "prumerge+", {}), counts):
            assert len(out.prompt_token_ids) == ref_len, (c, len(out.prompt_token_ids), ref_len)
            assert list(out.outputs[0].token_ids) == ref_tokens, c
        assert set(engine.last_timing) == {"reduce_s", "llm_s"}

    def test_in_llm_methods_are_refused(self, engine, llava_dir):
        for method in ("aim", "fastv"):
            with pytest.raises(ValueError, match="inside the language model.*vLLM"):
                Engine(str(llava_dir), method, **ENGINE_ARGS)
            with pytest.raises(ValueError, match="inside the language model"):
                engine.generate([Request("USER: <image>\n ASSISTANT:", random_images(1, 2), method=method)], GREEDY)
        outputs = engine.generate([Request("USER: <image>\nhi ASSISTANT:", random_images(1, 3))], GREEDY)
        assert outputs[0].outputs[0].token_ids  # still serving

    def test_bad_requests_are_refused_before_the_tower(self, engine):
        img = random_images(1, 4)
        with pytest.raises(ValueError, match="1 '<image>' placeholder.*2 image"):
            engine.generate([Request("USER: <image>\n ASSISTANT:", img * 2)], GREEDY)
        with pytest.raises(ValueError, match="unknown option"):
            engine.generate([Request("USER: <image>\n ASSISTANT:", img, options={"kep": 3})], GREEDY)
        with pytest.raises(ValueError, match="cannot decode image"):
            engine.generate([Request("USER: <image>\n ASSISTANT:", [b"not an image"])], GREEDY)
        with pytest.raises(ValueError, match="neither an option of prumerge\\+ .* nor a vllm.EngineArgs field"):
            Engine("unused", "prumerge+", kep=3)
        with pytest.raises(ValueError, match="set by the slimvlm engine"):
            Engine("unused", "prumerge+", limit_mm_per_prompt={"image": 1})


@pytest.mark.parametrize("family", ["llava-next", "llava-onevision"])
def test_anyres_families_match_transformers(family, tmp_path):
    model_dir = tiny_servable(family, tmp_path / family)
    imgs = random_images(5, seed=1)
    prompt = "USER: <image>\nDescribe it. ASSISTANT:"
    requests = [Request(prompt, [imgs[i]], options={"keep": k}) for i, k in enumerate((4, 10, 20))]
    requests.append(Request("USER: <image>\n<image>\nCompare. ASSISTANT:", [imgs[3], imgs[4]], options={"keep": 6}))
    with Engine(str(model_dir), "prumerge+", **ENGINE_ARGS) as eng:
        outputs = eng.generate(requests, GREEDY)
        counts = [[s.tokens_after for s in stats] for stats in eng.last_stats]
    assert len({c for cs in counts for c in cs}) >= 3, counts
    for out, (ref_tokens, ref_len), c in zip(outputs, reference(model_dir, requests, "prumerge+", {}), counts):
        assert len(out.prompt_token_ids) == ref_len, c
        assert list(out.outputs[0].token_ids) == ref_tokens, c


def test_stock_vllm_class_cannot_mix_counts(llava_dir):
    """What the plugin fixes: vLLM's own LLaVA class refuses two kept counts in one step. When this fails, vLLM
    has made the token dimension dynamic upstream and the plugin can go."""
    llm = LLM(model=str(llava_dir), enable_mm_embeds=True, limit_mm_per_prompt={"image": 0}, **ENGINE_ARGS)
    prompts = [
        {"prompt": "USER: <image>\nhi ASSISTANT:", "multi_modal_data": {"image": [torch.randn(n, 64)]}} for n in (5, 9)
    ]
    try:
        with pytest.raises(Exception, match="inconsistent shapes"):
            llm.generate(prompts, GREEDY, use_tqdm=False)
    finally:
        llm.llm_engine.engine_core.shutdown()


def test_unservable_families_are_refused(tmp_path):
    assert set(FAMILY_SUPPORT) == set(slimvlm.supported_models())
    from slimvlm.testing import tiny_config

    tiny_config("qwen2-vl").save_pretrained(tmp_path)  # no architectures: the class comes from the config type
    with pytest.raises(ValueError, match="Qwen2VLForConditionalGeneration cannot be served.*image_grid_thw"):
        Engine(str(tmp_path), "prumerge+", **ENGINE_ARGS)


# ------------------------------------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(llava_dir, tmp_path_factory):
    """``slimvlm serve`` on the tiny LLaVA (PruMerge+ keep=10 by default), bound to 127.0.0.1, at most 240 s to
    come up; stopped with SIGINT (then SIGKILL of its process group after 30 s)."""
    media = tmp_path_factory.mktemp("media")
    random_images(1, 5)[0].save(media / "cat.png")
    port = _free_port()
    log = open(tmp_path_factory.mktemp("log") / "server.log", "w+")
    cmd = [sys.executable, "-m", "slimvlm.cli", "serve", str(llava_dir), "--method", "prumerge+", "--keep", "10",
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "256",
           "--enforce-eager", "--allowed-local-media-path", str(media),
           "--vllm", f"kv_cache_memory_bytes={64 << 20}", "--vllm", "max_num_seqs=4"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"slimvlm serve exited with {proc.returncode}:\n{log.read()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("slimvlm serve did not answer /health within 240 s")
            time.sleep(1)
        yield url, media
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def _data_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _chat(image_url: str, text: str = "What is in the image?", **extra) -> dict:
    return {
        "model": "ignored-by-the-test",
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                                  {"type": "text", "text": text}]}],
        "max_tokens": NEW_TOKENS, "temperature": 0, **extra,
    }


def _post(url: str, body: dict) -> httpx.Response:
    body = {k: v for k, v in body.items() if k != "model"}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def test_http_request_with_an_image_is_answered_like_transformers(server, llava_dir):
    url, _ = server
    img = random_images(1, 6)[0]
    r = _post(url, _chat(_data_url(img), return_token_ids=True))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["slimvlm"] == {"method": "prumerge+", "images": [{"tokens_before": 64, "tokens_after": 10}]}
    # the same request on transformers: the chat template's prompt, PruMerge+ keep=10, greedy
    processor = transformers.AutoProcessor.from_pretrained(llava_dir)
    prompt = "USER: <image>\nWhat is in the image? ASSISTANT:"
    (tokens, length), = reference(llava_dir, [Request(prompt, [img])], "prumerge+", {"keep": 10})
    assert body["usage"]["prompt_tokens"] == len(body["prompt_token_ids"]) == length
    assert body["choices"][0]["token_ids"] == tokens
    assert body["usage"]["completion_tokens"] == len(tokens)
    text = processor.tokenizer.decode(tokens, skip_special_tokens=True)
    assert text.startswith(body["choices"][0]["message"]["content"])  # vLLM holds back an unfinished UTF-8 tail


def test_openai_client_streams_with_a_per_request_method(server):
    openai = pytest.importorskip("openai")
    url, media = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=60)
    (model,) = [m.id for m in client.models.list()]
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": str(media / "cat.png")}},
                                             {"type": "text", "text": "Describe it."}]}]
    extra = {"slimvlm": {"method": "spatial", "keep": 16}}
    whole = client.chat.completions.create(model=model, messages=messages, max_tokens=NEW_TOKENS, temperature=0,
                                           extra_body=extra)
    assert whole.model_extra["slimvlm"]["images"] == [{"tokens_before": 64, "tokens_after": 16}]
    chunks = list(client.chat.completions.create(model=model, messages=messages, max_tokens=NEW_TOKENS, temperature=0,
                                                 extra_body=extra, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]


@pytest.mark.parametrize("body, status, message", [
    (_chat("data:image/png;base64," + base64.b64encode(b"not a png").decode()), 400, "cannot decode image"),
    (_chat("data:image/png;base64,###"), 400, "not valid base64"),
    (_chat("https://example.com/cat.png"), 400, "remote image URLs are not fetched"),
    (_chat("/etc/hostname"), 400, "outside the allowed media path"),
    (_chat("MEDIA/missing.png"), 400, "no such image file"),
    (dict(_chat("MEDIA/cat.png"), slimvlm={"method": "nope"}), 400, "unknown method 'nope'"),
    (dict(_chat("MEDIA/cat.png"), slimvlm={"method": "fastv"}), 400, "vLLM runs its own unmodified decoder"),
    (dict(_chat("MEDIA/cat.png"), slimvlm={"keep": "many"}), 400, "keep"),
    (_chat("MEDIA/cat.png", text="word " * 300), 400, "maximum context length is 256"),
    (dict(_chat("MEDIA/cat.png"), max_tokens=-1), 400, "max_tokens must be >= 1"),
    ({"messages": "hi"}, 400, "messages must be a non-empty list"),
])
def test_bad_request_gets_400_and_the_next_good_one_succeeds(server, body, status, message):
    url, media = server

    def fill(b):
        if isinstance(b, dict):
            return {k: fill(v) for k, v in b.items()}
        if isinstance(b, list):
            return [fill(v) for v in b]
        return b.replace("MEDIA", str(media)) if isinstance(b, str) else b

    r = _post(url, fill(body))
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"]
    good = _post(url, _chat(_data_url(random_images(1, 7)[0])))
    assert good.status_code == 200, good.text
    assert good.json()["usage"]["completion_tokens"] >= 1
