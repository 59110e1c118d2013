"""A ``slimvlm`` model for the stock lmms-eval (0.7.3): any slimvlm method, on any supported model family, at any
batch size.

    python -m lmms_eval --model slimvlm --model_args pretrained=llava-hf/llava-1.5-7b-hf,method=prumerge+ \\
        --tasks pope --batch_size 8

lmms-eval finds the model through our ``lmms_eval.models`` entry point (``pyproject.toml``). ``model_args``
(:data:`MODEL_ARGS`): ``pretrained`` (a hub id, a local folder, ``demo`` for the demo VLM that ships with
slimvlm, or ``demo:DIR`` for one ``slimvlm demo train`` wrote), ``method`` and its options (``keep=64``,
``ratio=0.25``, ``l1=14,l2=22``, ``k=2,r=0.5``, ``mode=faithful``, ...: every field of the method's config),
``positions``, ``dtype``, ``attn_implementation``, ``device``, ``batch_size``, ``max_frames_num``. They are all
checked before any weights load; a bad one raises :class:`ModelArgsError`, one line naming the problem.

A batch of documents goes through the model in one call of ``slimvlm.apply(...)``: each image keeps its own
count (adaptive methods differ per image), left padding keeps the rows aligned at the prompt's end. Hugging
Face models are prompted through their own processor and chat template; the demo VLM (no processor) through
:mod:`slimvlm.demo.model`'s prompt and pixel helpers.

Every answer carries a :class:`SlimTokenCounts`: the prompt tokens that entered the language model and the
tokens generated (lmms-eval's ``input_tokens`` / ``output_tokens``, summed in a results file's ``efficiency``
block), plus the visual tokens before and after reduction (and, for in-LLM pruning, the mean kept per layer);
``--log_samples`` writes them per document.

``loglikelihood`` returns the mean negative log-likelihood of the continuation (a loss, the convention of the
built-in llava models: lmms-eval's ``multiple_choice`` picks the lowest), wrapped in a ``GenerationResult`` so
that lmms-eval keeps the ``(loss, is_greedy)`` pair instead of turning it into a string.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from tqdm.auto import tqdm

__all__ = ["MODEL_ARGS", "ModelArgsError", "Settings", "SlimTokenCounts", "SlimVLMEval", "check_model_args", "parse_model_args"]

#: the model_args of the bridge itself; every other key is an option of the method.
MODEL_ARGS = {
    "pretrained": "a hub id, a local folder, 'demo' (the shipped demo VLM) or 'demo:DIR' (one `slimvlm demo train` wrote)",
    "method": "a slimvlm method (`slimvlm methods`), default none",
    "positions": "'renumber' or 'original' (default: the family's own; the demo VLM: original)",
    "dtype": "auto (default: the checkpoint's; the demo VLM: float32), float32, float16 or bfloat16",
    "attn_implementation": "sdpa (default; AIM / FastV pruning needs it), eager, flash_attention_2, ...",
    "device": "cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)",
    "batch_size": "documents per forward (default 1)",
    "max_frames_num": "frames sampled uniformly from a video file (default 32)",
}
_DTYPES = {"auto": "auto", "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DEMO = "demo"
#: generate() options passed through from a task's generation_kwargs; others (e.g. image_aspect_ratio, meant for
#: other models) are ignored.
_GENERATE_KEYS = ("num_beams", "top_p", "top_k", "repetition_penalty", "length_penalty", "min_new_tokens",
                  "no_repeat_ngram_size", "use_cache")
_DEFAULT_MAX_NEW_TOKENS = 256


class ModelArgsError(ValueError):
    """A bad ``model_args`` value; the message is one line."""

    def __init__(self, message: str):
        super().__init__(f"slimvlm model_args: {message}")


# ----------------------------------------------------------------------------------------------- model_args


def _split_args(text: str) -> list[str]:
    """Split on commas outside quotes and brackets: ``a=1,grid=(6,6)`` → ``["a=1", "grid=(6,6)"]``."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _value(text: Any) -> Any:
    """A model_args value from its text: bool, int, float, ``6x6`` → ``(6, 6)``, else the string."""
    if not isinstance(text, str):
        return text
    s = text.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        return s[1:-1]
    low = s.lower()
    if low in ("true", "false"):
        return low == "true"
    if re.fullmatch(r"[+-]?\d+", s):
        return int(s)
    if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+|\d+)(e[+-]?\d+)?", low):
        return float(s)
    grid = re.fullmatch(r"\(?\s*(\d+)\s*[x,]\s*(\d+)\s*\)?", low)
    if grid:
        return int(grid.group(1)), int(grid.group(2))
    return s


def parse_model_args(text: str) -> dict[str, Any]:
    """``"pretrained=demo,method=spatial,keep=32"`` → ``{"pretrained": "demo", "method": "spatial", "keep": 32}``."""
    out: dict[str, Any] = {}
    for part in _split_args(text or ""):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ModelArgsError(f"expected key=value, got {part!r}")
        if key in out:
            raise ModelArgsError(f"{key} is given twice")
        out[key] = _value(value)
    return out


def _method_facts(method: str) -> tuple[str, ...]:
    """Everything this module asks about a method, in one place: the names of the options it takes (a
    ValueError for an unknown method). Options themselves are checked by ``slimvlm.methods.make_config``."""
    from slimvlm.methods import get

    return get(method).options


@dataclass(frozen=True)
class Settings:
    """Checked model_args: where the model comes from and how it runs; ``options`` go to the method."""

    pretrained: str
    method: str
    options: dict[str, Any]
    positions: Optional[str]
    dtype: str
    attn_implementation: Optional[str]
    device: str
    batch_size: int
    max_frames_num: int

    @property
    def is_demo(self) -> bool:
        return self.pretrained == _DEMO or self.pretrained.startswith(_DEMO + ":")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        hint = " (batch_size=auto is not supported)" if name == "batch_size" and value == "auto" else ""
        raise ModelArgsError(f"{name} must be an integer >= 1, got {value!r}{hint}")
    return value


def _check_pretrained(pretrained: Any) -> str:
    if not isinstance(pretrained, str) or not pretrained:
        raise ModelArgsError(f"give pretrained= (a hub id, a local folder or '{_DEMO}'), got {pretrained!r}")
    if pretrained == _DEMO:
        return pretrained
    if pretrained.startswith(_DEMO + ":"):
        folder = pretrained[len(_DEMO) + 1:]
        if not os.path.isfile(os.path.join(folder, "model.safetensors")):
            raise ModelArgsError(f"pretrained={pretrained}: {folder} holds no demo model (model.safetensors)")
        return pretrained
    if os.path.isdir(pretrained):
        if not os.path.isfile(os.path.join(pretrained, "config.json")):
            raise ModelArgsError(f"pretrained={pretrained}: the folder has no config.json")
    elif pretrained.startswith((".", "/", "~")) or pretrained.count("/") > 1:
        raise ModelArgsError(f"pretrained={pretrained}: no such folder (and not a hub id like org/name)")
    return pretrained


def _check_device(device: Any) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(str(device))
    except (RuntimeError, ValueError):
        raise ModelArgsError(f"device={device!r} is not a torch device (cpu, cuda, cuda:0, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelArgsError(f"device={device} but torch sees no CUDA device")
    return str(dev)


def check_model_args(args: dict[str, Any]) -> Settings:
    """Check every model_arg (values may still be text) without loading anything; :class:`ModelArgsError`
    names the first problem in one line."""
    from slimvlm.methods import make_config
    from slimvlm.pipeline import POSITIONS

    args = {k: _value(v) for k, v in args.items()}
    bridge = {k: args.pop(k) for k in list(args) if k in MODEL_ARGS}
    pretrained = _check_pretrained(bridge.get("pretrained"))
    method = bridge.get("method", "none")
    if not isinstance(method, str):
        raise ModelArgsError(f"method must be a method name, got {method!r}")
    try:
        names = _method_facts(method)
    except ValueError as err:
        raise ModelArgsError(str(err).splitlines()[0]) from None
    unknown = sorted(set(args) - set(names))
    if unknown:  # a typo may be meant for the bridge or for the method: name both lists
        raise ModelArgsError(
            f"unknown argument(s) {', '.join(unknown)}: not a model argument ({', '.join(MODEL_ARGS)}) "
            f"nor an option of {method} ({', '.join(names) or 'it takes none'})"
        )
    try:
        make_config(method, **args)
    except (ValueError, TypeError) as err:
        raise ModelArgsError(str(err).splitlines()[0]) from None
    positions = bridge.get("positions")
    if positions is None and pretrained.split(":")[0] == _DEMO:
        from slimvlm.demo.model import DEMO_POSITIONS  # the demo LM needs its kept tokens at their own positions

        positions = DEMO_POSITIONS
    if positions is not None and positions not in POSITIONS:
        raise ModelArgsError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
    dtype = bridge.get("dtype", "auto")
    if dtype not in _DTYPES:
        raise ModelArgsError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    attn = bridge.get("attn_implementation")
    if attn is not None and not isinstance(attn, str):
        raise ModelArgsError(f"attn_implementation must be a name (sdpa, eager, ...), got {attn!r}")
    return Settings(
        pretrained=pretrained,
        method=method,
        options=dict(args),
        positions=positions,
        dtype=dtype,
        attn_implementation=attn,
        device=_check_device(bridge.get("device")),
        batch_size=_positive_int("batch_size", bridge.get("batch_size", 1)),
        max_frames_num=_positive_int("max_frames_num", bridge.get("max_frames_num", 32)),
    )


# ----------------------------------------------------------------------------------------------- visuals


def _read_video(path: str, frames: int):
    """``(frames, H, W, 3)`` uint8, sampled uniformly by lmms-eval's own reader (PyAV)."""
    try:
        from lmms_eval.models.model_utils.load_video import read_video
    except ImportError as err:
        raise ImportError(f"reading the video {path} needs PyAV ({err}); pip install 'av<16'") from None
    return read_video(path, num_frm=frames)


def _split_visuals(visuals: Any, frames: int) -> tuple[list[Any], list[Any]]:
    """A document's visuals → ``(images, videos)``: PIL images or ``(H, W, 3)`` arrays are images; a path or a
    ``(T, H, W, 3)`` array is a video."""
    import numpy as np
    from PIL import Image

    images, videos = [], []
    for v in visuals or []:
        if isinstance(v, Image.Image):
            images.append(v.convert("RGB"))
        elif isinstance(v, str):
            videos.append(_read_video(v, frames))
        elif isinstance(v, np.ndarray) and v.ndim == 3:
            images.append(Image.fromarray(v).convert("RGB"))
        elif isinstance(v, np.ndarray) and v.ndim == 4:
            videos.append(v)
        else:
            raise TypeError(f"slimvlm: unsupported visual {type(v).__name__}; expected a PIL image, an array or a video path")
    return images, videos


@dataclass
class _Row:
    """One prompt of a batch: its text and its document's images / videos."""

    text: str
    images: list[Any]
    videos: list[Any]


# ----------------------------------------------------------------------------------------------- backends


class _DemoBackend:
    """The demo VLM: a word-level tokenizer and its own prompt (``slimvlm.demo.model.prompt_text``), one image
    per prompt, 336-px pixels from ``slimvlm.demo.model.to_pixels``."""

    def __init__(self, settings: Settings):
        from slimvlm.demo.app import load_shipped
        from slimvlm.demo.model import load_demo_model

        folder = settings.pretrained[len(_DEMO) + 1:]
        self.model, self.tokenizer = load_demo_model(folder) if folder else load_shipped()
        if settings.attn_implementation is not None:
            self.model.set_attn_implementation(settings.attn_implementation)
        if settings.dtype != "auto":
            self.model.to(_DTYPES[settings.dtype])

    def prompt(self, context: str, n_images: int, n_videos: int) -> str:
        from slimvlm.demo.model import prompt_text

        return prompt_text(context)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def inputs(self, rows: Sequence[_Row]) -> dict[str, torch.Tensor]:
        from slimvlm.demo.model import to_pixels

        for row in rows:
            if len(row.images) != 1 or row.videos:
                raise ValueError(
                    f"the demo VLM answers about exactly one image, got {len(row.images)} image(s) and {len(row.videos)} video(s)"
                )
        self.tokenizer.padding_side = "left"
        enc = self.tokenizer([r.text for r in rows], padding=True, return_tensors="pt", add_special_tokens=False)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "pixel_values": to_pixels([r.images[0] for r in rows])}


class _HFBackend:
    """A Hugging Face checkpoint: the model class its config names, its processor and chat template."""

    def __init__(self, settings: Settings):
        import transformers
        from transformers import AutoConfig, AutoProcessor

        from slimvlm.models import supported_models

        config = AutoConfig.from_pretrained(settings.pretrained)
        name = (getattr(config, "architectures", None) or [""])[0]
        if name not in supported_models():  # before the weights load
            raise ModelArgsError(f"pretrained={settings.pretrained} is a {name or type(config).__name__}; "
                                 f"slimvlm supports {', '.join(supported_models())}")
        kwargs: dict[str, Any] = {"dtype": _DTYPES[settings.dtype], "attn_implementation": settings.attn_implementation or "sdpa"}
        if settings.device != "cpu":
            kwargs["device_map"] = settings.device
        self.model = getattr(transformers, name).from_pretrained(settings.pretrained, **kwargs)
        self.processor = AutoProcessor.from_pretrained(settings.pretrained)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)

    def prompt(self, context: str, n_images: int, n_videos: int) -> str:
        """The model's chat template around ``context`` with one image / video slot per visual (without a chat
        template: the processor's image tokens, a newline, the context)."""
        if getattr(self.processor, "chat_template", None):
            content = [{"type": "image"}] * n_images + [{"type": "video"}] * n_videos + [{"type": "text", "text": context}]
            messages = [{"role": "user", "content": content}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        slots = getattr(self.processor, "image_token", "<image>") * n_images + getattr(self.processor, "video_token", "<video>") * n_videos
        return f"{slots}\n{context}" if slots else context

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def inputs(self, rows: Sequence[_Row]) -> dict[str, torch.Tensor]:
        self.tokenizer.padding_side = "left"
        images = [im for r in rows for im in r.images]
        videos = [v for r in rows for v in r.videos]
        kwargs: dict[str, Any] = {"text": [r.text for r in rows], "padding": True, "return_tensors": "pt"}
        if images:
            kwargs["images"] = images
        if videos:
            kwargs["videos"] = videos
        return dict(self.processor(**kwargs))


# ----------------------------------------------------------------------------------------------- the model


@dataclass
class SlimTokenCounts(TokenCounts):
    """lmms-eval's per-answer token counts plus what the reduction did: the visual tokens of the prompt before
    and after it (entering the language model) and, for AIM / FastV, the mean visual tokens per LLM layer.
    ``input_tokens`` counts the prompt that entered the language model (text + kept visual tokens)."""

    visual_tokens_before: Optional[int] = None
    visual_tokens_after: Optional[int] = None
    visual_tokens_per_layer: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = super().to_dict()
        for key in ("visual_tokens_before", "visual_tokens_after", "visual_tokens_per_layer"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def __add__(self, other: "SlimTokenCounts") -> "SlimTokenCounts":
        def add(a, b):
            return b if a is None else a if b is None else a + b

        return SlimTokenCounts(**{f.name: add(getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self)})


def _generate_kwargs(gen_kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A task's generation_kwargs → ``(generate() kwargs, stop strings)``; greedy unless it asks to sample."""
    until = gen_kwargs.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    do_sample = bool(gen_kwargs.get("do_sample", False)) or temperature > 0
    out: dict[str, Any] = {"max_new_tokens": int(gen_kwargs.get("max_new_tokens") or _DEFAULT_MAX_NEW_TOKENS), "do_sample": do_sample}
    if do_sample and temperature > 0:
        out["temperature"] = temperature
    for key in _GENERATE_KEYS:
        if gen_kwargs.get(key) is not None and (do_sample or key not in ("top_p", "top_k")):
            out[key] = gen_kwargs[key]
    return out, until


def _cut(text: str, until: Sequence[str]) -> str:
    """``text`` up to the first stop string."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


class SlimVLMEval(lmms):
    """lmms-eval's ``--model slimvlm``: a stock transformers VLM (or the demo VLM) behind ``slimvlm.apply``.
    ``model_args``: :data:`MODEL_ARGS` plus the method's options (module docstring)."""

    is_simple = True

    def __init__(self, **model_args: Any):
        super().__init__()
        # lmms-eval passes max_batch_size (for batch_size=auto, which we refuse) to every model
        model_args.pop("max_batch_size", None)
        self.settings = check_model_args(model_args)  # every argument, before anything loads
        s = self.settings
        self.backend = _DemoBackend(s) if s.is_demo else _HFBackend(s)
        self.backend.model.eval()
        if s.is_demo:
            self.backend.model.to(s.device)
        self.slim = _apply(self.backend.model, s)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: Optional[dict] = None) -> "SlimVLMEval":
        """lmms-eval's constructor path. ``additional_config`` holds the command line's ``--batch_size`` /
        ``--device``; a value given in ``model_args`` wins (lmms-eval always sends ``--batch_size``, default 1)."""
        args = parse_model_args(arg_string)
        for key, value in (additional_config or {}).items():
            if value is not None and key not in args:
                args[key] = value
        return cls(**args)

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    @property
    def device(self) -> torch.device:
        return torch.device(self.settings.device)

    # ------------------------------------------------------------------------------------------- helpers

    def _doc(self, task: str, split: str, doc_id: int) -> dict:
        return self.task_dict[task][split][doc_id]

    def _row(self, context: str, visuals: Any) -> _Row:
        """The prompt around ``context`` with a slot per visual, and the visuals."""
        images, videos = _split_visuals(visuals, self.settings.max_frames_num)
        return _Row(self.backend.prompt(context, len(images), len(videos)), images, videos)

    def _to_device(self, inputs: dict[str, Any]) -> dict[str, Any]:
        dtype = self.backend.model.dtype
        out = {}
        for k, v in inputs.items():
            if isinstance(v, torch.Tensor):  # pixels in the model's dtype; ids, masks, grids, sizes as they are
                v = v.to(self.device, dtype=dtype) if k.startswith("pixel_values") else v.to(self.device)
            out[k] = v
        return out

    def _counts(self, inputs: dict[str, Any], generated: Optional[torch.Tensor] = None) -> list[SlimTokenCounts]:
        """Per row of the last call: prompt tokens that entered the LLM, generated tokens (up to the first end of
        sequence), visual tokens before / after reduction (and per LLM layer under in-LLM pruning)."""
        from slimvlm.demo.evaluate import tokens_per_layer

        lengths = inputs["attention_mask"].sum(1).tolist()
        eos = self.backend.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos]) - {None}
        out = []
        for row, length in enumerate(lengths):
            before = sum(s.tokens_before for s in self.slim.last_stats if s.row == row)
            after = sum(s.tokens_after for s in self.slim.last_stats if s.row == row)
            per_layer = tokens_per_layer(self.slim, after)
            n_out = None
            if generated is not None:
                ids = generated[row].tolist()
                n_out = next((i + 1 for i, t in enumerate(ids) if t in eos), len(ids))
            out.append(SlimTokenCounts(
                input_tokens=int(length - before + after),
                output_tokens=n_out,
                visual_tokens_before=int(before),
                visual_tokens_after=int(after),
                visual_tokens_per_layer=None if per_layer is None else float(sum(per_layer) / len(per_layer)),
            ))
        return out

    @torch.inference_mode()
    def _generate(self, rows: Sequence[_Row], gen_kwargs: dict[str, Any]) -> list[tuple[str, SlimTokenCounts]]:
        """One batch through ``slimvlm.apply(...).generate``: the answers (cut at the stop strings) and counts."""
        kwargs, until = _generate_kwargs(gen_kwargs)
        inputs = self._to_device(self.backend.inputs(rows))
        pad = self.backend.tokenizer.pad_token_id
        out = self.slim.generate(**inputs, **kwargs, pad_token_id=pad if pad is not None else self.backend.tokenizer.eos_token_id)
        generated = out[:, self.slim.last_prompt_length:]
        texts = self.backend.tokenizer.batch_decode(generated, skip_special_tokens=True)
        return [(_cut(t, until), c) for t, c in zip(texts, self._counts(inputs, generated))]

    def _shared_encoding(self, rows: Sequence[_Row], docs: Sequence[Any]) -> Optional[list[Any]]:
        """The vision tower's output for a batch in which documents repeat (a multiple-choice question asks once per
        option): encoded once per document, or None (encode the batch as usual) when no document repeats or
        rows mix images and videos (then the batch's visual order is not simply row order)."""
        from slimvlm.pipeline import encode

        kinds = {(bool(r.images), bool(r.videos)) for r in rows}
        if None in docs or len(set(docs)) == len(docs) or len(kinds) != 1 or kinds.pop() not in ((True, False), (False, True)):
            return None
        per_doc: dict[Any, list[Any]] = {}
        items = []
        for doc, row in zip(docs, rows):
            if doc not in per_doc:
                per_doc[doc] = encode(self.backend.model, self._to_device(self.backend.inputs([row])), self.settings.method)
            items.extend(per_doc[doc])
        return items

    def _chunks(self, requests: Sequence[Instance], key: Callable[[Instance], str]) -> list[list[int]]:
        """Request indices in batches of ``batch_size``; a batch holds only requests with the same ``key``."""
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(key(req), []).append(i)
        b = self.settings.batch_size
        return [idx[j:j + b] for idx in groups.values() for j in range(0, len(idx), b)]

    # ------------------------------------------------------------------------------------------- lmms API

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """``Instance.args = (context, gen_kwargs, doc_to_visual, doc_id, task, split)``."""
        results: list[Optional[GenerationResult]] = [None] * len(requests)
        chunks = self._chunks(requests, key=lambda r: json.dumps(r.args[1], sort_keys=True, default=str))
        start = time.perf_counter()
        for chunk in tqdm(chunks, desc="slimvlm generate", disable=len(chunks) < 2):
            rows = []
            for i in chunk:
                context, _, doc_to_visual, doc_id, task, split = requests[i].args
                rows.append(self._row(context, doc_to_visual(self._doc(task, split, doc_id))))
            for i, (text, counts) in zip(chunk, self._generate(rows, requests[chunk[0]].args[1])):
                results[i] = GenerationResult(text, counts)
        _log_throughput(time.perf_counter() - start, results)
        return results

    @torch.inference_mode()
    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """``Instance.args = (context, continuation or doc_to_target, doc_to_visual, doc_id, task, split)``, or
        ``(context, continuation)`` without visuals. Each answer is ``(mean NLL of the continuation's tokens,
        whether greedy decoding gives them)`` as ``GenerationResult.text``."""
        results: list[Optional[GenerationResult]] = [None] * len(requests)
        chunks = self._chunks(requests, key=lambda r: "")
        for chunk in tqdm(chunks, desc="slimvlm loglikelihood", disable=len(chunks) < 2):
            rows, n_cont, docs = [], [], []
            for i in chunk:
                args = requests[i].args
                context, target, visuals = args[0], args[1], None
                if len(args) > 2:
                    doc = self._doc(args[4], args[5], args[3])
                    visuals = args[2](doc)
                    target = target if isinstance(target, str) else target(doc)
                row = self._row(context, visuals)
                n_cont.append(self.backend.count_tokens(row.text + target) - self.backend.count_tokens(row.text))
                row.text += target
                rows.append(row)
                docs.append(tuple(args[3:6]) if len(args) > 2 else None)
            inputs = self._to_device(self.backend.inputs(rows))
            logits = self.slim(**inputs, items=self._shared_encoding(rows, docs)).logits.float()
            ids = inputs["input_ids"]  # left padded: every row's continuation ends at the last column
            for j, (i, n, counts) in enumerate(zip(chunk, n_cont, self._counts(inputs))):
                if n < 1:
                    raise ValueError(f"slimvlm: the continuation {requests[i].args[1]!r} adds no token to the prompt")
                pred, target = logits[j, -n - 1:-1], ids[j, -n:]
                loss = torch.nn.functional.cross_entropy(pred, target).item()
                greedy = bool((pred.argmax(-1) == target).all())
                results[i] = GenerationResult((loss, greedy), counts)
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[GenerationResult]:
        """``Instance.args = (context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split)``. Round 0
        answers ``context``; before each later round ``doc_to_text(doc, previous_output=..., round_idx=...,
        previous_round_info=...)`` returns ``(visuals, context, done, previous_output, round_info)``. A document
        leaves the batch when it is done; its answer is the list of its rounds' outputs."""
        results: list[Optional[GenerationResult]] = [None] * len(requests)
        chunks = self._chunks(requests, key=lambda r: json.dumps(r.args[1], sort_keys=True, default=str))
        start = time.perf_counter()
        for chunk in chunks:
            state = {}
            for i in chunk:
                context, _, doc_to_visual, doc_to_text, doc_id, task, split = requests[i].args
                doc = self._doc(task, split, doc_id)
                state[i] = dict(doc=doc, next=doc_to_text, context=context, visuals=doc_to_visual(doc), rounds=[],
                                info=None, counts=SlimTokenCounts())
            active, round_idx = list(chunk), 0
            while active:
                if round_idx > 0:
                    still = []
                    for i in active:
                        st = state[i]
                        visuals, context, done, rounds, info = st["next"](
                            st["doc"], previous_output=list(st["rounds"]), round_idx=round_idx, previous_round_info=st["info"]
                        )
                        st["rounds"] = list(rounds) if rounds is not None else st["rounds"]
                        st.update(visuals=visuals, context=context, info=info)
                        if not done:
                            still.append(i)
                    active = still
                    if not active:
                        break
                rows = [self._row(state[i]["context"], state[i]["visuals"]) for i in active]
                for i, (text, counts) in zip(active, self._generate(rows, requests[active[0]].args[1])):
                    state[i]["rounds"].append(text)
                    state[i]["counts"] = state[i]["counts"] + counts
                round_idx += 1
            for i in chunk:
                results[i] = GenerationResult(list(state[i]["rounds"]), state[i]["counts"])
        _log_throughput(time.perf_counter() - start, results)
        return results


def _log_throughput(seconds: float, results: Sequence[GenerationResult]) -> None:
    """Report the wall time of a request type's answers to lmms-eval (the results file's ``throughput`` block)."""
    from lmms_eval.models.model_utils.gen_metrics import log_metrics

    tokens = sum(r.token_counts.output_tokens or 0 for r in results)
    log_metrics(total_elapsed_time=seconds, total_gen_tokens=tokens, avg_speed=tokens / seconds if seconds > 0 else 0.0,
                additional_metrics={"total_requests": len(results)})


def _apply(model: Any, settings: Settings):
    """``slimvlm.apply`` with the checked method, options and positions."""
    import slimvlm

    return slimvlm.apply(model, settings.method, positions=settings.positions, **settings.options)
