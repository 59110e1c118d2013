"""``slimvlm serve``: an OpenAI-compatible chat-completions server whose images are reduced before vLLM sees them.

Design: the bridge's engine behind a small Starlette app (Starlette and uvicorn come with vLLM), not vLLM's own
OpenAI server behind a proxy. The torch tower + reducer and vLLM's ``AsyncLLM`` live in one process, so reduced
tokens go to vLLM as tensors (no serialising them into an ``image_embeds`` request and back), every refusal
(undecodable image, unknown or in-LLM method, over-long prompt) is answered here as HTTP 400 with slimvlm's
message, and only vLLM's public engine API is used (its server internals change between releases). The cost:
only the chat-completions subset below is implemented.

Endpoints: ``POST /v1/chat/completions`` (``stream`` true or false), ``GET /v1/models``, ``GET /health``.
Message content is a string or a list of ``{"type": "text"}`` / ``{"type": "image_url"}`` parts; an image URL
is a ``data:image/...;base64,`` URL, or a file path / ``file://`` URL under ``--allowed-local-media-path``.
Sampling: ``max_tokens`` (or ``max_completion_tokens``), ``temperature``, ``top_p``, ``top_k``, ``seed``,
``stop``, ``presence_penalty``, ``frequency_penalty``; ``n`` must be 1. ``return_token_ids`` (as in vLLM's server)
adds the prompt's and the answer's token ids to a non-streamed response. A request may choose its own method with
``"slimvlm": {"method": "spatial", "keep": 64}`` (the OpenAI client's ``extra_body``); the response's ``slimvlm``
field gives the method and, per image, the visual tokens before and after reduction.

This module imports only the standard library at import time (``slimvlm --help`` works without vLLM).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

__all__ = ["DESCRIPTION", "EPILOG", "add_arguments", "run", "ServingEngine", "create_app", "BadRequest"]

DESCRIPTION = (
    "Serve a VLM with an OpenAI-compatible chat-completions endpoint: each image is reduced by a slimvlm method "
    "(vision tower + projector + reducer in torch), the language model runs in vLLM on the reduced tokens. "
    "Needs slimvlm[serve] (vLLM)."
)
EPILOG = """\
Example:
  slimvlm serve llava-hf/llava-1.5-7b-hf --method prumerge+ --keep 144 --port 8000
  curl -s http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' -d '{
    "model": "llava-hf/llava-1.5-7b-hf", "max_tokens": 64,
    "messages": [{"role": "user", "content": [
      {"type": "image_url", "image_url": {"url": "data:image/png;base64,'"$(base64 -w0 cat.png)"'"}},
      {"type": "text", "text": "What is in the image?"}]}],
    "slimvlm": {"method": "spatial", "keep": 64}}'

The "slimvlm" field is optional (default: the server's --method and budget). Images: data URLs, or file paths
under --allowed-local-media-path. Any vLLM engine argument: --vllm KEY=VALUE (value read as JSON, else text),
e.g. --vllm kv_cache_memory_bytes=1073741824 --vllm enforce_eager=true.
In-LLM methods (aim, fastv) cannot run in vLLM and are refused."""


class BadRequest(ValueError):
    """A request the server answers with HTTP 400 (the message says what to fix)."""


# ----------------------------------------------------------------------------------------------- the command


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``slimvlm serve`` arguments except the method budget ones (``--keep`` / ``--ratio`` / ``--mode`` /
    ``--option``, added by the CLI)."""
    p.add_argument("model", help="model directory or hub id (LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision)")
    p.add_argument("--method", "-m", default="none", help="default reduction method (see `slimvlm methods`; default none)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--served-model-name", help="the model name clients send (default: MODEL as given)")
    p.add_argument("--chat-template", metavar="FILE", help="a Jinja chat template, for models that ship none")
    p.add_argument("--allowed-local-media-path", metavar="DIR",
                   help="serve image_url file paths under DIR (default: file paths are refused)")
    p.add_argument("--dtype", default="auto", help="vLLM dtype (auto, bfloat16, float16, float32; default auto)")
    p.add_argument("--max-model-len", type=int, help="context length (default: the model's)")
    p.add_argument("--tensor-parallel-size", type=int, help="vLLM tensor parallel size")
    p.add_argument("--enforce-eager", action="store_true", help="vLLM without graph capture / compilation")
    p.add_argument("--vllm", action="append", default=[], metavar="KEY=VALUE", help="any vllm.EngineArgs field (repeatable)")
    p.add_argument("--tower-device", help="where the vision tower + reducer run (default: cuda if available, else cpu)")


def _engine_args(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"dtype": args.dtype}
    for name in ("max_model_len", "tensor_parallel_size"):
        if getattr(args, name) is not None:
            out[name] = getattr(args, name)
    if args.enforce_eager:
        out["enforce_eager"] = True
    for item in args.vllm:
        if "=" not in item:
            raise ValueError(f"--vllm expects KEY=VALUE (e.g. --vllm max_num_seqs=8), got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def run(args: argparse.Namespace, options: Mapping[str, Any]) -> int:
    """Start the server (blocks until interrupted). Refusals before loading anything raise ValueError."""
    from .support import check_method

    check_method(args.method, dict(options))
    engine_args = _engine_args(args)
    media = Path(args.allowed_local_media_path).resolve() if args.allowed_local_media_path else None
    if media is not None and not media.is_dir():
        raise ValueError(f"--allowed-local-media-path: no such directory: {args.allowed_local_media_path}")
    if args.chat_template and not Path(args.chat_template).is_file():
        raise ValueError(f"--chat-template: no such file: {args.chat_template}")
    chat_template = Path(args.chat_template).read_text() if args.chat_template else None

    import uvicorn

    engine = ServingEngine(args.model, args.method, options, engine_args, chat_template=chat_template,
                           tower_device=args.tower_device)
    app = create_app(engine, args.served_model_name or args.model, media)
    print(f"slimvlm serve: {args.model} with {args.method} {dict(options) or ''} on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


# ----------------------------------------------------------------------------------------------- the engine


class ServingEngine:
    """vLLM's ``AsyncLLM`` with the bridge's :class:`~slimvlm.integrations.vllm.engine.ImageReducer` in front.
    The torch side runs one request at a time in a worker thread; vLLM batches the language-model work."""

    def __init__(self, model: str, method: str, options: Mapping[str, Any], engine_args: Mapping[str, Any], *,
                 chat_template: str | None = None, tower_device: str | None = None):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from .engine import ImageReducer, bridge_engine_args

        args = bridge_engine_args(model, method, options, engine_args)
        self.llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
        self.reducer = ImageReducer(
            model, method, options, dtype=self.llm.model_config.dtype, device=tower_device,
            trust_remote_code=bool(engine_args.get("trust_remote_code", False)),
        )
        processor = self.reducer.processor
        if chat_template is not None:
            processor.chat_template = chat_template
        if not getattr(processor, "chat_template", None):
            raise ValueError(f"{model} ships no chat template; pass one with --chat-template FILE")
        self._lock = threading.Lock()

    def render(self, messages: list[dict[str, Any]]) -> str:
        """The prompt text for chat ``messages`` in the processor's format (image parts as ``{"type": "image"}``)."""
        from jinja2 import TemplateError

        try:
            return self.reducer.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except TemplateError as err:  # e.g. a role the model's template refuses
            raise BadRequest(f"the model's chat template refused these messages: {err}") from None

    def _reduce(self, request: Any) -> tuple[list[Any], list[Any]]:
        with self._lock:
            return self.reducer.reduce([request])[0]

    async def reduce(self, request: Any) -> tuple[list[Any], list[Any]]:
        """The reduced tokens and per-image stats of one :class:`Request` (in a worker thread)."""
        return await asyncio.to_thread(self._reduce, request)

    def shutdown(self) -> None:
        self.llm.shutdown()


# ----------------------------------------------------------------------------------------------- requests


def _load_image_url(url: Any, media: Path | None) -> Any:
    from .engine import load_image

    if not isinstance(url, str) or not url:
        raise BadRequest("image_url.url must be a non-empty string")
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        if not head.endswith(";base64") or not data:
            raise BadRequest("an image data URL must look like data:image/png;base64,<data>")
        try:
            raw = base64.b64decode(data, validate=True)
        except ValueError:
            raise BadRequest("the image data URL is not valid base64") from None
        try:
            return load_image(raw)
        except ValueError as err:
            raise BadRequest(str(err)) from None
    if url.startswith(("http://", "https://")):
        raise BadRequest("remote image URLs are not fetched; send a data:image/...;base64 URL or a file path")
    path = Path(url[len("file://"):] if url.startswith("file://") else url)
    if media is None:
        raise BadRequest("file paths are not served; start the server with --allowed-local-media-path DIR or send a data URL")
    resolved = path.resolve()
    if not resolved.is_relative_to(media):
        raise BadRequest(f"{url} is outside the allowed media path {media}")
    try:
        return load_image(resolved)
    except ValueError as err:
        raise BadRequest(str(err)) from None


def parse_messages(messages: Any, media: Path | None) -> tuple[list[dict[str, Any]], list[Any]]:
    """OpenAI chat messages → (messages in the processor's chat format, decoded images in order)."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    out: list[dict[str, Any]] = []
    images: list[Any] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a role")
        content = msg.get("content")
        if isinstance(content, str):
            out.append({"role": msg["role"], "content": [{"type": "text", "text": content}]})
            continue
        if not isinstance(content, list):
            raise BadRequest(f"messages[{i}].content must be a string or a list of parts")
        parts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image_url" and isinstance(part.get("image_url"), dict):
                images.append(_load_image_url(part["image_url"].get("url"), media))
                parts.append({"type": "image"})
            else:
                raise BadRequest(f"messages[{i}].content[{j}] must be a text or an image_url part")
        out.append({"role": msg["role"], "content": parts})
    return out, images


def _number(body: Mapping[str, Any], key: str, kind: type, low: float | None = None) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise BadRequest(f"{key} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    if low is not None and value < low:
        raise BadRequest(f"{key} must be >= {low}, got {value}")
    return value


def sampling_params(body: Mapping[str, Any], stream: bool) -> Any:
    """vLLM ``SamplingParams`` from the OpenAI request fields (streaming: deltas)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    if body.get("n", 1) != 1:
        raise BadRequest("only n=1 is supported")
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, (str, list)):
        raise BadRequest("stop must be a string or a list of strings")
    max_tokens = _number(body, "max_completion_tokens", int, 1) or _number(body, "max_tokens", int, 1)
    given = {
        "temperature": _number(body, "temperature", float, 0),
        "top_p": _number(body, "top_p", float, 0),
        "top_k": _number(body, "top_k", int),
        "seed": _number(body, "seed", int),
        "presence_penalty": _number(body, "presence_penalty", float),
        "frequency_penalty": _number(body, "frequency_penalty", float),
        "stop": [stop] if isinstance(stop, str) else stop,
    }
    kind = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
    try:
        return SamplingParams(max_tokens=max_tokens, output_kind=kind, **{k: v for k, v in given.items() if v is not None})
    except ValueError as err:
        raise BadRequest(str(err)) from None


def _method_of(body: Mapping[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    ext = body.get("slimvlm")
    if ext is None:
        return None, None
    if not isinstance(ext, dict):
        raise BadRequest('slimvlm must be an object, e.g. {"method": "spatial", "keep": 64}')
    ext = dict(ext)
    method = ext.pop("method", None)
    if method is not None and not isinstance(method, str):
        raise BadRequest("slimvlm.method must be a string")
    return method, ext or None


# ----------------------------------------------------------------------------------------------- the app


def create_app(engine: ServingEngine, served_name: str, media: Path | None = None) -> Any:
    """The Starlette app serving ``engine`` under the model name ``served_name``."""
    from starlette.applications import Starlette
    from starlette.requests import Request as HTTPRequest
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route
    from vllm.exceptions import VLLMClientError

    from .engine import Request, vllm_prompt

    def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)

    async def health(_: HTTPRequest) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def models(_: HTTPRequest) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": served_name, "object": "model", "owned_by": "slimvlm"}]})

    async def chat(http: HTTPRequest) -> Any:
        try:
            body = await http.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error(400, "the request body is not valid JSON")
        if not isinstance(body, dict):
            return error(400, "the request body must be a JSON object")
        if body.get("model") not in (None, served_name):
            return error(404, f"model {body.get('model')!r} is not served here; this server serves {served_name!r}", "not_found_error")
        stream = bool(body.get("stream", False))
        try:
            params = sampling_params(body, stream)
            method, options = _method_of(body)
            messages, images = parse_messages(body.get("messages"), media)
            request = Request(engine.render(messages), images, method=method, options=options)
            tokens, stats = await engine.reduce(request)
        except ValueError as err:  # BadRequest, and slimvlm's own refusals (method, options, placeholders)
            return error(400, str(err))
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        results = engine.llm.generate(vllm_prompt(request, tokens), params, request_id)
        try:
            first = await results.__anext__()  # vLLM validates the prompt (length, ...) before the first output
        except (ValueError, VLLMClientError) as err:
            return error(400, str(err))
        created = int(time.time())
        info = {
            "method": stats[0].method if stats else (method or engine.reducer.method),
            "images": [{"tokens_before": s.tokens_before, "tokens_after": s.tokens_after} for s in stats],
        }
        if stream:
            return StreamingResponse(
                _stream(first, results, request_id, created, served_name, info, body), media_type="text/event-stream"
            )
        final = first
        async for final in results:
            pass
        out = final.outputs[0]
        choice = {"index": 0, "message": {"role": "assistant", "content": out.text}, "finish_reason": out.finish_reason}
        response = {"id": request_id, "object": "chat.completion", "created": created, "model": served_name,
                    "choices": [choice], "usage": _usage(final), "slimvlm": info}
        if body.get("return_token_ids"):  # as vLLM's own server: the (reduced) prompt's and the answer's token ids
            choice["token_ids"] = list(out.token_ids)
            response["prompt_token_ids"] = list(final.prompt_token_ids or [])
        return JSONResponse(response)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> Any:
        yield
        engine.shutdown()

    return Starlette(routes=[
        Route("/health", health),
        Route("/v1/models", models),
        Route("/v1/chat/completions", chat, methods=["POST"]),
    ], lifespan=lifespan)


def _usage(output: Any) -> dict[str, int]:
    prompt = len(output.prompt_token_ids or [])
    completion = sum(len(o.token_ids) for o in output.outputs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _stream(first: Any, results: Any, request_id: str, created: int, model: str, info: dict, body: Mapping) -> Any:
    """Server-sent events of ``chat.completion.chunk`` objects (role, content deltas, finish reason, [usage])."""

    def chunk(delta: dict, finish: str | None = None, **extra: Any) -> str:
        obj = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(obj)}\n\n"

    yield chunk({"role": "assistant", "content": ""}, slimvlm=info)
    prompt_tokens, completion_tokens, output = 0, 0, first
    try:
        while output is not None:
            o = output.outputs[0]
            prompt_tokens = len(output.prompt_token_ids or []) or prompt_tokens
            completion_tokens += len(o.token_ids)
            if o.text or o.finish_reason:
                yield chunk({"content": o.text} if o.text else {}, o.finish_reason)
            output = await anext(results, None)
    finally:  # a client that goes away: vLLM aborts the request when its generator is closed
        await results.aclose()
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        yield f"data: {json.dumps({'id': request_id, 'object': 'chat.completion.chunk', 'created': created, 'model': model, 'choices': [], 'usage': usage})}\n\n"
    yield "data: [DONE]\n\n"
