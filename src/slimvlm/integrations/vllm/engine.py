"""The vLLM engine with slimvlm in front: the VLM's vision tower, projector and reduction method run in torch
(transformers + :func:`slimvlm.prepare`), the language model runs in vLLM, fed the reduced LLM-width tokens as
precomputed image embeddings.

vLLM is started with ``enable_mm_embeds=True`` and a zero image (and video) limit, so it never builds its own
vision tower; a prompt holds one image placeholder (``<image>``) per image and vLLM expands it to that image's
kept count. The kept tokens are numbered 0..L'-1 over the shorter prompt, as vLLM numbers any prompt (slimvlm's
``positions="renumber"``, the default for the LLaVA families).
"""

from __future__ import annotations

import dataclasses
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from .support import check_family, check_method

__all__ = ["Engine", "ImageReducer", "Request", "load_image", "split_engine_kwargs", "bridge_engine_args", "vllm_prompt"]

#: vLLM settings the bridge depends on; a caller cannot change them.
_RESERVED = ("enable_mm_embeds", "limit_mm_per_prompt")


@dataclass
class Request:
    """One prompt with its images.

    Attributes:
        prompt: text with exactly one image placeholder (the processor's ``image_token``, ``<image>`` for the
            LLaVA families) per image, or its token ids.
        images: PIL images, paths, encoded bytes, or anything the model's image processor takes.
        method: the reduction method for this request (default: the engine's).
        options: that method's options (default: the engine's options when the method is the engine's, else
            the method's defaults). They replace the engine's options, they are not merged with them.
    """

    prompt: str | list[int]
    images: Sequence[Any] = ()
    method: str | None = None
    options: Mapping[str, Any] | None = None


def load_image(image: Any) -> Any:
    """A PIL RGB image from a path, encoded bytes or a PIL image; anything else is returned unchanged (the image
    processor takes arrays and tensors). A ValueError names the problem."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise ValueError(f"no such image file: {image}")
        source: Any = path
    elif isinstance(image, (bytes, bytearray)):
        source = io.BytesIO(image)
    else:
        return image
    what = image if isinstance(image, (str, Path)) else f"{len(image)} bytes"
    try:
        with Image.open(source) as img:
            return img.convert("RGB")
    except UnidentifiedImageError:
        raise ValueError(f"cannot decode image ({what}): not an image format PIL reads") from None
    except OSError as err:
        raise ValueError(f"cannot decode image ({what}): {err}") from None


def split_engine_kwargs(method: str, kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``Engine(..., **kwargs)`` into the method's options (fields of its config) and vLLM engine args
    (fields of ``vllm.EngineArgs``). A name that is neither is refused; a name that is both goes to the method
    (pass it in ``vllm_args=`` to give it to vLLM)."""
    from vllm import EngineArgs

    from ...methods import get

    method_fields = set(get(method).options)
    vllm_fields = {f.name for f in dataclasses.fields(EngineArgs)}
    options = {k: v for k, v in kwargs.items() if k in method_fields}
    vllm_args = {k: v for k, v in kwargs.items() if k not in method_fields and k in vllm_fields}
    unknown = sorted(set(kwargs) - set(options) - set(vllm_args))
    if unknown:
        raise ValueError(
            f"unknown argument(s) {', '.join(unknown)}: neither an option of {method} "
            f"({', '.join(sorted(method_fields)) or 'none'}) nor a vllm.EngineArgs field"
        )
    return options, vllm_args


class ImageReducer:
    """The torch side: a transformers VLM's vision tower + projector and a slimvlm method, turning images into
    reduced LLM-width tokens. The language model of the checkpoint is dropped after loading (vLLM runs it).

    ``reduce(requests)`` returns, per request, its images' tokens ``[(m_i, H), ...]`` and slimvlm's per-image
    :class:`~slimvlm.pipeline.ItemStats`.
    """

    def __init__(self, model: str, method: str = "none", options: Mapping[str, Any] | None = None, *,
                 dtype: torch.dtype = torch.float32, device: str | torch.device | None = None, batch_size: int = 8,
                 trust_remote_code: bool = False):
        import transformers

        config = transformers.AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
        self.model_class = model_class_name(config)
        self.vllm_arch = check_family(self.model_class)
        self.method, self.options = method, dict(options or {})
        check_method(method, self.options)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        try:
            self.processor = transformers.AutoProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as err:
            raise ValueError(f"{model}: no usable processor (image processor + tokenizer): {err}") from None
        self.image_token: str = self.processor.image_token
        self.image_token_id = int(config.image_token_id)
        vlm = getattr(transformers, self.model_class).from_pretrained(model, dtype=dtype)
        vlm.model.language_model = None  # vLLM runs the LM: keep only the tower, projector (and image_newline)
        vlm.lm_head = None
        #: where the tower runs (default: the first GPU if there is one); tokens go to vLLM on the CPU.
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.vlm = vlm.to(self.device).eval()
        self.hidden_size = int(config.text_config.hidden_size)

    def resolve(self, request: Request) -> tuple[str, dict[str, Any]]:
        """The method and options of ``request`` (checked): the engine's unless the request names its own."""
        if request.method is None or request.method == self.method:
            method = self.method
            options = self.options if request.options is None else dict(request.options)
        else:
            method, options = request.method, dict(request.options or {})
        check_method(method, options)
        return method, options

    def check(self, request: Request) -> None:
        """Refuse a request whose placeholders and images disagree (before any tower work)."""
        n = len(request.images)
        if isinstance(request.prompt, str):
            have = request.prompt.count(self.image_token)
        else:
            have = sum(1 for t in request.prompt if t == self.image_token_id)
        if have != n:
            raise ValueError(
                f"the prompt holds {have} {self.image_token!r} placeholder(s) for {n} image(s); write exactly one per "
                "image (vLLM expands each to that image's kept tokens)"
            )

    @torch.no_grad()
    def reduce(self, requests: Sequence[Request]) -> list[tuple[list[Tensor], list[Any]]]:
        """Per request: the reduced tokens of its images and their stats. Requests sharing a method and options
        share tower batches of up to ``batch_size`` requests."""
        from ...pipeline import prepare

        resolved = [self.resolve(r) for r in requests]
        for r in requests:
            self.check(r)
        images = [[load_image(im) for im in r.images] for r in requests]
        out: list[tuple[list[Tensor], list[Any]]] = [([], []) for _ in requests]
        groups: dict[tuple[str, str], list[int]] = {}
        for i, (method, options) in enumerate(resolved):
            if images[i]:
                groups.setdefault((method, repr(sorted(options.items()))), []).append(i)
        for idx in groups.values():
            method, options = resolved[idx[0]]
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                inputs = self.processor(
                    text=[self.image_token * len(images[i]) for i in chunk],
                    images=[images[i] for i in chunk],
                    return_tensors="pt",
                    padding=True,
                ).to(self.device)
                prepared = prepare(self.vlm, inputs, method, **options)
                pooled = prepared.kwargs["mm_encoder_outputs"]["image"].pooler_output  # a list or one tensor
                parts = pooled if isinstance(pooled, (list, tuple)) else [pooled]
                flat = torch.cat([t.reshape(-1, self.hidden_size) for t in parts]).cpu()
                tokens = flat.split([s.tokens_after for s in prepared.stats])
                for t, s in zip(tokens, prepared.stats):
                    if t.shape[0] == 0:
                        raise ValueError(f"{method} kept no token of an image; vLLM needs at least one per placeholder")
                    out[chunk[s.row]][0].append(t)
                    out[chunk[s.row]][1].append(s)
        return out


class Engine:
    """A vLLM ``LLM`` whose images are reduced by slimvlm first.

    >>> engine = Engine("llava-hf/llava-1.5-7b-hf", "prumerge+", keep=144, max_model_len=4096)
    >>> outs = engine.generate([Request("USER: <image>\\nWhat is shown? ASSISTANT:", [image])],
    ...                        SamplingParams(temperature=0, max_tokens=64))

    ``kwargs`` are the method's options (``keep=``, ``ratio=``, ...; see ``slimvlm methods``) and vLLM engine args
    (``dtype=``, ``max_model_len=``, ``tensor_parallel_size=``, ...); ``vllm_args`` gives vLLM args explicitly
    (for a name both take, e.g. ``seed``). ``enable_mm_embeds`` and ``limit_mm_per_prompt`` are set by the engine.
    ``tower_device``: where the tower + reducer run (default: the first GPU if there is one, else the CPU);
    ``encode_batch_size``: requests per tower batch.
    In-LLM methods (AIM pruning, FastV) and families vLLM cannot feed reduced tokens to are refused
    (:mod:`~slimvlm.integrations.vllm.support`).

    After :meth:`generate`: ``last_stats`` (per request, slimvlm's per-image stats) and ``last_timing``
    (seconds in the torch tower + reducer and in vLLM). With vLLM's in-process engine core
    (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) :meth:`close` tears down vLLM's process-global parallel state: close an
    engine before starting another one in the same process.
    """

    def __init__(self, model: str, method: str = "none", *, vllm_args: Mapping[str, Any] | None = None,
                 tower_device: str | None = None, encode_batch_size: int = 8, **kwargs: Any):
        from vllm import LLM

        options, engine_args = split_engine_kwargs(method, kwargs)
        engine_args.update(vllm_args or {})
        self.method, self.options = method, options
        self.llm = LLM(**bridge_engine_args(model, method, options, engine_args))
        dtype = self.llm.llm_engine.model_config.dtype
        self.reducer = ImageReducer(
            model, method, options, dtype=dtype, device=tower_device, batch_size=encode_batch_size,
            trust_remote_code=engine_args.get("trust_remote_code", False),
        )
        self.last_stats: list[list[Any]] = []
        self.last_timing: dict[str, float] = {}

    def prompts(self, requests: Sequence[Request | Mapping[str, Any]]) -> list[dict[str, Any]]:
        """vLLM prompts (``{"prompt" | "prompt_token_ids", "multi_modal_data"}``) with the reduced image tokens;
        sets ``last_stats``."""
        reqs = [r if isinstance(r, Request) else Request(**r) for r in requests]
        reduced = self.reducer.reduce(reqs)
        self.last_stats = [stats for _, stats in reduced]
        return [vllm_prompt(r, tokens) for r, (tokens, _) in zip(reqs, reduced)]

    def generate(self, requests: Sequence[Request | Mapping[str, Any]], sampling_params: Any = None, *,
                 use_tqdm: bool = False) -> list[Any]:
        """vLLM's ``RequestOutput`` for each request, in order. ``sampling_params``: one ``SamplingParams`` or one
        per request (vLLM's default when None)."""
        t0 = time.perf_counter()
        prompts = self.prompts(requests)
        t1 = time.perf_counter()
        outputs = self.llm.generate(prompts, sampling_params, use_tqdm=use_tqdm)
        t2 = time.perf_counter()
        self.last_timing = {"reduce_s": t1 - t0, "llm_s": t2 - t1}
        return outputs

    def close(self) -> None:
        """Stop vLLM's engine and free its memory (also done when the engine is garbage collected)."""
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def bridge_engine_args(model: str, method: str, options: Mapping[str, Any], engine_args: Mapping[str, Any]) -> dict[str, Any]:
    """Check that vLLM can serve ``model`` with ``method`` (cheap: config.json only) and return the vLLM engine
    args with the bridge's settings: precomputed embeddings on, no vLLM encoder, the ``Slimvlm*`` architecture."""
    import transformers

    reserved = sorted(set(engine_args) & set(_RESERVED))
    if reserved:
        raise ValueError(f"{', '.join(reserved)} are set by the slimvlm engine; do not pass them")
    config = transformers.AutoConfig.from_pretrained(model, trust_remote_code=engine_args.get("trust_remote_code", False))
    arch = check_family(model_class_name(config))
    check_method(method, dict(options))
    args = dict(engine_args)
    overrides = dict(args.pop("hf_overrides", None) or {})
    overrides["architectures"] = [arch]
    return dict(model=model, enable_mm_embeds=True, limit_mm_per_prompt=_zero_limits(config), hf_overrides=overrides, **args)


def model_class_name(config: Any) -> str:
    """The transformers class of a checkpoint: ``architectures[0]`` of its config, else the image-text-to-text
    class its config type maps to."""
    archs = getattr(config, "architectures", None)
    if archs:
        return archs[0]
    from transformers import AutoModelForImageTextToText

    try:
        return AutoModelForImageTextToText._model_mapping[type(config)].__name__
    except KeyError:
        return f"(a {type(config).__name__} checkpoint without architectures)"


def vllm_prompt(request: Request, tokens: list[Tensor]) -> dict[str, Any]:
    """The vLLM prompt dict of one request with its reduced image tokens."""
    key = "prompt" if isinstance(request.prompt, str) else "prompt_token_ids"
    prompt: dict[str, Any] = {key: request.prompt}
    if tokens:
        prompt["multi_modal_data"] = {"image": list(tokens)}
    return prompt


def _zero_limits(config: Any) -> dict[str, int]:
    """``limit_mm_per_prompt`` that keeps vLLM from building any encoder: 0 for every modality of the model."""
    limits = {"image": 0}
    if getattr(config, "video_token_id", None) is not None or getattr(config, "video_token_index", None) is not None:
        limits["video"] = 0
    return limits
