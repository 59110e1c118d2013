"""Tiny, offline, random-weight VLMs for tests and examples (docs/offline-assets.md, "Tiny models").

One factory for the 7 supported families (8 short names, LLaVA comes with a Llama and a Qwen2 LM):

- :func:`tiny_tokenizer`: a byte-level BPE trained on a built-in corpus, special tokens with fixed ids.
- :func:`tiny_model`: a seeded ``XForConditionalGeneration`` (~0.2-0.3 M params, 3-layer vision tower).
- :func:`tiny_inputs`: a ready :class:`~transformers.BatchFeature` for the stock ``forward``/``generate``, built
  without processors (those with a video slot need torchvision, pitfall P2): random pixels, exactly as many
  placeholder tokens as the model produces features, left padding, and every family's extra inputs.

Placeholder counts are computed from the config (:func:`num_visual_tokens`), never by running the model, so
inputs stay right even while a vision tower is hooked; :func:`visual_feature_lengths` asks the model itself.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import BatchFeature, PreTrainedModel, PreTrainedTokenizerFast

__all__ = [
    "FAMILIES",
    "FAMILY_CLASSES",
    "FAMILY_MODALITIES",
    "VIDEO_FAMILIES",
    "SPECIAL_TOKENS",
    "PAD_ID",
    "BOS_ID",
    "EOS_ID",
    "UNK_ID",
    "TEXT_VOCAB_SIZE",
    "IMAGE_SIZE",
    "PATCH_SIZE",
    "tiny_tokenizer",
    "tiny_config",
    "tiny_model",
    "tiny_inputs",
    "family_of",
    "placeholder_token_ids",
    "default_num_frames",
    "video_pixels",
    "num_visual_tokens",
    "placeholder_runs",
    "encoder_kwargs",
    "encode_visual",
    "visual_feature_lengths",
]

FAMILIES: tuple[str, ...] = (
    "llava",
    "llava-qwen2",
    "llava-next",
    "llava-onevision",
    "video-llava",
    "llava-next-video",
    "qwen2-vl",
    "qwen2.5-vl",
)

#: transformers class name per family.
FAMILY_CLASSES: dict[str, str] = {
    "llava": "LlavaForConditionalGeneration",
    "llava-qwen2": "LlavaForConditionalGeneration",
    "llava-next": "LlavaNextForConditionalGeneration",
    "llava-onevision": "LlavaOnevisionForConditionalGeneration",
    "video-llava": "VideoLlavaForConditionalGeneration",
    "llava-next-video": "LlavaNextVideoForConditionalGeneration",
    "qwen2-vl": "Qwen2VLForConditionalGeneration",
    "qwen2.5-vl": "Qwen2_5_VLForConditionalGeneration",
}

#: the visual modalities each family's forward accepts.
FAMILY_MODALITIES: dict[str, tuple[str, ...]] = {
    "llava": ("image",),
    "llava-qwen2": ("image",),
    "llava-next": ("image",),
    "llava-onevision": ("image", "video"),
    "video-llava": ("image", "video"),
    "llava-next-video": ("image", "video"),
    "qwen2-vl": ("image", "video"),
    "qwen2.5-vl": ("image", "video"),
}
VIDEO_FAMILIES: tuple[str, ...] = tuple(f for f in FAMILIES if "video" in FAMILY_MODALITIES[f])

SPECIAL_TOKENS: tuple[str, ...] = (
    "<pad>",
    "<s>",
    "</s>",
    "<unk>",
    "<image>",
    "<video>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|vision_start|>",
    "<|vision_end|>",
)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
IMAGE_ID, VIDEO_ID = 4, 5  # LLaVA family
QWEN_IMAGE_ID, QWEN_VIDEO_ID, VISION_START_ID, VISION_END_ID = 6, 7, 8, 9
TEXT_VOCAB_SIZE = 320
IMAGE_SIZE = 32  # vision tower input (CLIP/SigLIP tile); Qwen's default image size
PATCH_SIZE = 4
_BPE_VOCAB_SIZE = 300
_QWEN = ("qwen2-vl", "qwen2.5-vl")
_ANYRES = ("llava-next", "llava-onevision", "llava-next-video")
# LLaVA-NeXT style pinpoints, scaled from 336 to 32 (real: [[336,672],[672,336],[672,672],[1008,336],[336,1008]]).
_NEXT_PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
# OneVision style (i*384, j*384) up to 4x4 here (real: 6x6), so anyres_max_9 downscaling is reached.
_ONEVISION_PINPOINTS = [[32 * i, 32 * j] for i in range(1, 5) for j in range(1, 5)]

_CORPUS = (
    "USER: Describe the image in detail. ASSISTANT: The image shows a small red car parked on a street.",
    "USER: What is happening in the video? ASSISTANT: A person walks a dog along the river in the morning.",
    "What color is the sky? The sky is blue and there are a few white clouds.",
    "How many cats are in the picture? There are two cats sleeping on a sofa.",
    "Describe the scene. A kitchen with a table, four chairs and a bowl of fruit.",
    "Compare the two images. The first image is brighter than the second image.",
    "What is the man holding? He is holding an umbrella because it is raining.",
    "Read the text on the sign. The sign says stop.",
    "Is there a dog in the photo? Yes, a brown dog is running on the grass.",
    "Summarize the video in one sentence. Children play football in a park.",
    "the a an and of in on with is are was were to for this that what where which who how",
    "image video frame picture photo scene object person people animal color size left right top bottom",
    "0 1 2 3 4 5 6 7 8 9 . , ? ! : ; ' \" ( ) - \n",
)


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Deterministic byte-level BPE tokenizer (vocab 300) with :data:`SPECIAL_TOKENS` at ids 0..9. Cached."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_BPE_VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[4:])})
    fast.padding_side = "left"
    for i, t in enumerate(SPECIAL_TOKENS):
        if fast.convert_tokens_to_ids(t) != i:  # pragma: no cover - guards the fixed-id contract
            raise RuntimeError(f"special token {t!r} did not get id {i}")
    return fast


# --------------------------------------------------------------------------------------------- configs / models


def _check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    return family


def _text_kwargs() -> dict[str, Any]:
    return dict(
        vocab_size=TEXT_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )


def _vision_kwargs() -> dict[str, Any]:
    return dict(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
    )


def tiny_config(family: str):
    """The tiny composite config of ``family`` (vision towers 3 layers deep)."""
    import transformers as tf

    _check_family(family)
    clip = lambda: tf.CLIPVisionConfig(**_vision_kwargs())  # noqa: E731
    llama = lambda: tf.LlamaConfig(**_text_kwargs())  # noqa: E731
    qwen2 = lambda: tf.Qwen2Config(**_text_kwargs())  # noqa: E731
    llava_common = dict(image_token_index=IMAGE_ID, vision_feature_layer=-2, vision_feature_select_strategy="default")
    if family in ("llava", "llava-qwen2"):
        text = llama() if family == "llava" else qwen2()
        return tf.LlavaConfig(vision_config=clip(), text_config=text, **llava_common)
    if family == "llava-next":
        return tf.LlavaNextConfig(
            vision_config=clip(), text_config=llama(), image_grid_pinpoints=_NEXT_PINPOINTS, **llava_common
        )
    if family == "llava-next-video":
        return tf.LlavaNextVideoConfig(
            vision_config=clip(),
            text_config=llama(),
            image_grid_pinpoints=_NEXT_PINPOINTS,
            video_token_index=VIDEO_ID,
            spatial_pool_mode="average",
            spatial_pool_stride=2,
            **llava_common,
        )
    if family == "video-llava":
        return tf.VideoLlavaConfig(
            vision_config=clip(), text_config=llama(), video_token_index=VIDEO_ID, **llava_common
        )
    if family == "llava-onevision":
        siglip = tf.SiglipVisionConfig(**_vision_kwargs(), vision_use_head=False)
        return tf.LlavaOnevisionConfig(
            vision_config=siglip,
            text_config=qwen2(),
            image_token_index=IMAGE_ID,
            video_token_index=VIDEO_ID,
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
            vision_aspect_ratio="anyres_max_9",
            image_grid_pinpoints=_ONEVISION_PINPOINTS,
        )
    # Qwen2-VL / Qwen2.5-VL
    text = dict(_text_kwargs(), rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]})
    common = dict(
        image_token_id=QWEN_IMAGE_ID,
        video_token_id=QWEN_VIDEO_ID,
        vision_start_token_id=VISION_START_ID,
        vision_end_token_id=VISION_END_ID,
    )
    if family == "qwen2-vl":
        vision = dict(
            depth=3, embed_dim=32, hidden_size=64, num_heads=4, patch_size=PATCH_SIZE, spatial_merge_size=2,
            temporal_patch_size=2,
        )
        return tf.Qwen2VLConfig(text_config=text, vision_config=vision, **common)
    vision = dict(
        depth=3, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64, patch_size=PATCH_SIZE,
        spatial_merge_size=2, temporal_patch_size=2, window_size=16, fullatt_block_indexes=[2],
    )
    return tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)


def tiny_model(
    family: str,
    *,
    attn_implementation: str | dict[str, str] = "sdpa",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> PreTrainedModel:
    """A seeded random-weight ``XForConditionalGeneration`` of ``family`` in eval mode.

    Weights depend only on ``family`` and ``seed`` (built in float32 under ``torch.manual_seed(seed)`` inside a
    forked RNG, so the caller's RNG state is untouched), then cast to ``dtype``."""
    import transformers as tf

    cfg = tiny_config(family)
    cls = getattr(tf, FAMILY_CLASSES[family])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls._from_config(cfg, attn_implementation=attn_implementation, dtype=torch.float32)
    model = model.to(dtype).eval()
    gc = model.generation_config
    gc.pad_token_id, gc.eos_token_id, gc.bos_token_id = PAD_ID, EOS_ID, BOS_ID
    return model


def family_of(model: PreTrainedModel) -> str:
    """The short family name of a (tiny or real) model, from its class and text config."""
    name = type(model).__name__
    if name == "LlavaForConditionalGeneration":
        return "llava-qwen2" if getattr(model.config.text_config, "model_type", "") == "qwen2" else "llava"
    for fam, cls in FAMILY_CLASSES.items():
        if cls == name:
            return fam
    raise ValueError(f"unsupported model class {name}")


def placeholder_token_ids(model: PreTrainedModel) -> dict[str, int]:
    """``{"image": id, "video": id}`` of the placeholder tokens the model scatters features into."""
    cfg = model.config
    out = {"image": int(cfg.image_token_id)}
    if getattr(cfg, "video_token_id", None) is not None and "video" in FAMILY_MODALITIES[family_of(model)]:
        out["video"] = int(cfg.video_token_id)
    return out


def default_num_frames(family: str) -> int:
    """Frames per tiny video: 8 for Video-LLaVA (its fixed clip length), else 4 (even, for Qwen's temporal patch)."""
    return 8 if _check_family(family) == "video-llava" else 4


def _frames(family: str, num_frames: Any) -> int:
    """``num_frames``, or the family's default when None; anything but an int >= 1 is refused."""
    if num_frames is None:
        return default_num_frames(family)
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be an int >= 1 (None: the family's default), got {num_frames!r}")
    return num_frames


# --------------------------------------------------------------------------------------------- token counts


def _anyres_tiles(cfg, size: tuple[int, int]) -> int:
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    return image_size_to_num_patches(size, cfg.image_grid_pinpoints, cfg.vision_config.image_size)


def _anyres_grid_tokens(cfg, size: tuple[int, int], onevision: bool) -> int:
    """Tokens of the packed high-res part (unpadded grid + one newline per row), as ``pack_image_features``."""
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

    side = cfg.vision_config.image_size // cfg.vision_config.patch_size
    gh, gw = get_anyres_image_grid_shape(size, cfg.image_grid_pinpoints, cfg.vision_config.image_size)
    _, h, w = unpad_image(torch.empty(0, gh * side, gw * side), torch.tensor(size)).shape
    if onevision:
        max_patches = int(cfg.vision_aspect_ratio.strip("anyres_max_"))
        ratio = math.sqrt(h * w / (max_patches * side**2))
        if ratio > 1.1:
            h, w = int(h // ratio), int(w // ratio)
    return h * (w + 1)


def num_visual_tokens(
    model: PreTrainedModel,
    modality: str = "image",
    *,
    image_size: tuple[int, int] | None = None,
    num_frames: int | None = None,
    multi_image: bool = False,
) -> int:
    """Placeholder tokens one image (of ``image_size``, (H, W)) or one video (``num_frames`` frames of the
    default size) needs, computed from the config. ``multi_image``: the image shares its prompt with other
    images (OneVision then encodes only the base tile)."""
    family = family_of(model)
    cfg = model.config
    if modality not in FAMILY_MODALITIES[family]:
        raise ValueError(f"{family} has no {modality} input")
    if family in _QWEN:
        vc = cfg.vision_config
        h, w = image_size or (IMAGE_SIZE, IMAGE_SIZE)
        _check_qwen_size(family, (h, w))
        t = 1 if modality == "image" else _frames(family, num_frames) // vc.temporal_patch_size
        return t * (h // vc.patch_size) * (w // vc.patch_size) // vc.spatial_merge_size**2
    side = cfg.vision_config.image_size // cfg.vision_config.patch_size
    cls = 1 if getattr(cfg.vision_config, "model_type", "") == "clip_vision_model" else 0
    per_tile = side * side + cls - (1 if cfg.vision_feature_select_strategy == "default" else 0)
    if modality == "video":
        frames = _frames(family, num_frames)
        if family == "video-llava":  # the video tower keeps CLS (no select strategy)
            return frames * (side * side + cls)
        if family == "llava-next-video":  # vision_resampler pools, no newline
            return frames * (side // cfg.spatial_pool_stride) ** 2
        return frames * math.ceil(side / 2) ** 2 + 1  # OneVision: 2x bilinear pooling + one newline per video
    size = tuple(image_size or (IMAGE_SIZE, IMAGE_SIZE))
    if family in _ANYRES:
        if family == "llava-onevision" and multi_image:
            return per_tile + 1
        return per_tile + _anyres_grid_tokens(cfg, size, onevision=family == "llava-onevision")
    _check_fixed_size(family, size)
    return per_tile


def _check_qwen_size(family: str, size: tuple[int, int]) -> None:
    unit = PATCH_SIZE * 2
    if size[0] <= 0 or size[1] <= 0 or size[0] % unit or size[1] % unit:
        raise ValueError(f"{family} image sizes must be positive multiples of {unit}, got {size}")


def _check_fixed_size(family: str, size: tuple[int, int]) -> None:
    if tuple(size) != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"{family} only takes {IMAGE_SIZE}x{IMAGE_SIZE} images, got {size}")


# --------------------------------------------------------------------------------------------- inputs


def _image_sizes(family: str, image_sizes, n_images: int) -> list[tuple[int, int]]:
    if image_sizes is None:
        return [(IMAGE_SIZE, IMAGE_SIZE)] * n_images
    if isinstance(image_sizes, torch.Tensor):
        image_sizes = image_sizes.tolist()
    if len(image_sizes) == 2 and all(isinstance(v, int) for v in image_sizes):
        sizes = [tuple(image_sizes)] * n_images
    else:
        sizes = [tuple(int(v) for v in s) for s in image_sizes]
    if len(sizes) != n_images:
        raise ValueError(f"image_sizes has {len(sizes)} entries for {n_images} images")
    for s in sizes:
        if len(s) != 2 or min(s) <= 0:
            raise ValueError(f"bad image size {s}")
        if family in _QWEN:
            _check_qwen_size(family, s)
        elif family not in _ANYRES:
            _check_fixed_size(family, s)
    return sizes


def _qwen_patches(model, grid: tuple[int, int, int], gen: torch.Generator, dtype) -> torch.Tensor:
    vc = model.config.vision_config
    dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
    return torch.randn(grid[0] * grid[1] * grid[2], dim, generator=gen).to(dtype)


#: normalisation of real frames for the tiny towers (CLIP's mean / std, what LLaVA's processors use)
_CLIP_MEAN, _CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def video_pixels(model: PreTrainedModel, frames: Any) -> torch.Tensor:
    """Real frames ``(F, H, W, 3)`` uint8 → the tiny model's video pixels: each frame resized (bicubic) to the
    tower's square input, scaled to [0, 1] and normalised with CLIP's mean / std → ``(F, 3, S, S)``; for Qwen,
    cut into its flat ``(t·h·w, 3·T·P·P)`` patches in the order its image processor writes them (temporal pairs
    of frames, 2×2 merge blocks of patches together: transformers' ``Qwen2VLVideoProcessor`` patchify order)."""
    import numpy as np
    from PIL import Image

    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] < 1 or arr.dtype != np.uint8:
        raise ValueError(f"frames must be a non-empty (F, H, W, 3) uint8 array, got {arr.dtype} {arr.shape}")
    family = family_of(model)
    vc = model.config.vision_config
    side = IMAGE_SIZE if family in _QWEN else vc.image_size
    resized = np.stack([np.asarray(Image.fromarray(f).resize((side, side), Image.BICUBIC)) for f in arr])
    x = torch.from_numpy(resized.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    x = (x - torch.tensor(_CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(_CLIP_STD).view(1, 3, 1, 1)
    if family not in _QWEN:
        return x
    tps, p, m = vc.temporal_patch_size, vc.patch_size, vc.spatial_merge_size
    f = x.shape[0]
    if f % tps:
        raise ValueError(f"{family} needs a multiple of {tps} frames, got {f}")
    gt, gh, gw = f // tps, side // p, side // p
    x = x.reshape(gt, tps, 3, gh // m, m, p, gw // m, m, p).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, 3 * tps * p * p)


def tiny_inputs(
    model: PreTrainedModel,
    family: str,
    prompts: Sequence[str],
    *,
    images_per_prompt: Sequence[int] | None = None,
    video: bool = False,
    image_sizes: Sequence[tuple[int, int]] | tuple[int, int] | torch.Tensor | None = None,
    num_frames: int | None = None,
    video_frames: Any = None,
    seed: int = 0,
) -> BatchFeature:
    """Ready inputs for the stock ``model(**inputs)`` / ``model.generate(**inputs)``, no processor involved.

    Each prompt ``b`` becomes ``[<s>] "USER: " (run "\\n") * images_per_prompt[b] [video run "\\n"] prompt
    " ASSISTANT:"``, where a run is ``num_visual_tokens`` placeholders (wrapped in ``<|vision_start|>`` /
    ``<|vision_end|>`` and without ``<s>`` for Qwen). Rows are LEFT padded with ``<pad>`` and
    ``attention_mask``. ``images_per_prompt`` defaults to one image each (none when ``video``); ``video``
    adds one video per prompt. ``image_sizes``: one (H, W) for all images or one per image in prompt order
    (any size for NeXT/OneVision/NeXT-Video, multiples of 8 for Qwen, 32x32 otherwise). Pixels are
    ``randn`` from ``torch.Generator().manual_seed(seed)``, drawn prompt by prompt (its images, then its
    video), so a prompt's pixels do not depend on the prompts after it. ``video_frames``: real frames for the
    videos instead (``(F, H, W, 3)`` uint8, e.g. ``slimvlm.io.load_video(path).frames``; ``num_frames`` is then
    ``F``), see :func:`video_pixels`.

    Family extras: ``image_sizes`` (anyres families, tiles padded to the batch maximum), ``batch_num_images``
    (OneVision: a prompt with several images gets only the base tile, as its image processor does),
    ``pixel_values_videos`` ((V, F, 3, 32, 32), or flat patches for Qwen), ``image_grid_thw`` /
    ``video_grid_thw`` / ``mm_token_type_ids`` (1 image, 2 video) for Qwen, ``second_per_grid_ts`` (Qwen2.5-VL
    videos)."""
    family = _check_family(family)
    if family_of(model) != family:
        raise ValueError(f"model is {family_of(model)!r}, not {family!r}")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("need at least one prompt")
    bsz = len(prompts)
    if images_per_prompt is None:
        images_per_prompt = [0 if video else 1] * bsz
    images_per_prompt = [int(n) for n in images_per_prompt]
    if len(images_per_prompt) != bsz or min(images_per_prompt) < 0:
        raise ValueError(f"images_per_prompt must give a count >= 0 for each of the {bsz} prompts")
    if video and "video" not in FAMILY_MODALITIES[family]:
        raise ValueError(f"{family} takes no video")
    if video_frames is not None:
        if not video:
            raise ValueError("video_frames given without video=True")
        given = len(video_frames)
        if num_frames is not None and num_frames != given:
            raise ValueError(f"num_frames={num_frames} but video_frames holds {given} frames")
        num_frames = given
    frames = _frames(family, num_frames)
    qwen = family in _QWEN
    if qwen and frames % model.config.vision_config.temporal_patch_size:
        raise ValueError(f"{family} needs an even number of frames, got {frames}")
    sizes = _image_sizes(family, image_sizes, sum(images_per_prompt))

    tok = tiny_tokenizer()
    ph = placeholder_token_ids(model)
    cfg = model.config
    dtype = model.dtype
    gen = torch.Generator().manual_seed(seed)
    vid_tokens = num_visual_tokens(model, "video", num_frames=frames) if video else 0

    rows: list[list[int]] = []
    types: list[list[int]] = []
    images: list[torch.Tensor] = []  # per image: (tiles, 3, H, W) or Qwen patches
    grids_img: list[tuple[int, int, int]] = []
    videos: list[torch.Tensor] = []
    grids_vid: list[tuple[int, int, int]] = []
    k = 0
    for b, prompt in enumerate(prompts):
        ids: list[int] = [] if qwen else [BOS_ID]
        tt: list[int] = [0] * len(ids)

        def text(s: str) -> None:
            t = tok.encode(s, add_special_tokens=False)
            ids.extend(t)
            tt.extend([0] * len(t))

        def run(modality: str, n: int) -> None:
            if qwen:
                ids.append(VISION_START_ID)
                tt.append(0)
            ids.extend([ph[modality]] * n)
            tt.extend([1 if modality == "image" else 2] * n)
            if qwen:
                ids.append(VISION_END_ID)
                tt.append(0)
            text("\n")

        text("USER: ")
        multi = images_per_prompt[b] > 1
        for _ in range(images_per_prompt[b]):
            size = sizes[k]
            k += 1
            run("image", num_visual_tokens(model, "image", image_size=size, multi_image=multi))
            if qwen:
                vc = cfg.vision_config
                grid = (1, size[0] // vc.patch_size, size[1] // vc.patch_size)
                grids_img.append(grid)
                images.append(_qwen_patches(model, grid, gen, dtype))
            else:
                tiles = 1
                if family in _ANYRES and not (family == "llava-onevision" and multi):
                    tiles = _anyres_tiles(cfg, size)
                side = cfg.vision_config.image_size
                images.append(torch.randn(tiles, 3, side, side, generator=gen).to(dtype))
        if video:
            run("video", vid_tokens)
            if qwen:
                vc = cfg.vision_config
                grid = (frames // vc.temporal_patch_size, IMAGE_SIZE // vc.patch_size, IMAGE_SIZE // vc.patch_size)
                grids_vid.append(grid)
                if video_frames is None:
                    videos.append(_qwen_patches(model, grid, gen, dtype))
                else:
                    videos.append(video_pixels(model, video_frames).to(dtype))
            else:
                side = cfg.vision_config.image_size
                if video_frames is None:
                    videos.append(torch.randn(frames, 3, side, side, generator=gen).to(dtype))
                else:
                    videos.append(video_pixels(model, video_frames).to(dtype))
        text(prompt + " ASSISTANT:")
        rows.append(ids)
        types.append(tt)

    length = max(len(r) for r in rows)
    input_ids = torch.full((bsz, length), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros((bsz, length), dtype=torch.long)
    token_types = torch.zeros((bsz, length), dtype=torch.long)
    for b, (r, tt) in enumerate(zip(rows, types)):
        input_ids[b, length - len(r):] = torch.tensor(r)
        attention_mask[b, length - len(r):] = 1
        token_types[b, length - len(r):] = torch.tensor(tt)
    data: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}

    if images:
        if qwen:
            data["pixel_values"] = torch.cat(images)
            data["image_grid_thw"] = torch.tensor(grids_img, dtype=torch.long)
        elif family in _ANYRES:
            max_tiles = max(x.shape[0] for x in images)
            padded = torch.zeros(len(images), max_tiles, *images[0].shape[1:], dtype=dtype)
            for i, x in enumerate(images):
                padded[i, : x.shape[0]] = x
            data["pixel_values"] = padded
            data["image_sizes"] = torch.tensor(sizes, dtype=torch.long)
            if family == "llava-onevision":
                data["batch_num_images"] = torch.tensor(images_per_prompt, dtype=torch.long)
        else:
            data["pixel_values"] = torch.cat(images)
    if videos:
        if qwen:
            data["pixel_values_videos"] = torch.cat(videos)
            data["video_grid_thw"] = torch.tensor(grids_vid, dtype=torch.long)
            if family == "qwen2.5-vl":
                tps = cfg.vision_config.temporal_patch_size
                data["second_per_grid_ts"] = torch.full((len(videos),), tps / 2.0)  # fps 2, as the processor
        else:
            data["pixel_values_videos"] = torch.stack(videos)
    if qwen:
        data["mm_token_type_ids"] = token_types
    return BatchFeature(data=data)


# --------------------------------------------------------------------------------------------- asking the model


def placeholder_runs(input_ids: torch.Tensor, token_id: int) -> list[list[tuple[int, int]]]:
    """Per row, the ``(start, end)`` spans of consecutive ``token_id`` tokens (one span per image/video)."""
    out: list[list[tuple[int, int]]] = []
    for row in input_ids.tolist():
        spans: list[tuple[int, int]] = []
        start = None
        for i, t in enumerate(row + [None]):
            if t == token_id and start is None:
                start = i
            elif t != token_id and start is not None:
                spans.append((start, i))
                start = None
        out.append(spans)
    return out


def encoder_kwargs(model: PreTrainedModel, inputs: Mapping[str, Any], modality: str) -> dict[str, Any]:
    """The kwargs ``generate`` would pass to ``model.model.get_{modality}_features`` (chosen by signature, as
    ``GenerationMixin._prepare_multimodal_encoder_kwargs_for_generation``); empty when there are no pixels."""
    fn = getattr(model.model, f"get_{modality}_features", None)
    if fn is None:
        return {}
    kw = {k: inputs[k] for k in inspect.signature(fn).parameters if k != "kwargs" and k in inputs}
    pixel_key = "pixel_values" if modality == "image" else "pixel_values_videos"
    return kw if kw.get(pixel_key) is not None else {}


@torch.no_grad()
def encode_visual(model: PreTrainedModel, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """``{modality: BaseModelOutputWithPooling}`` from the model's own ``get_{image,video}_features``; the same
    structure ``forward`` accepts as ``mm_encoder_outputs``."""
    out = {}
    for modality in FAMILY_MODALITIES[family_of(model)]:
        kw = encoder_kwargs(model, inputs, modality)
        if kw:
            out[modality] = getattr(model.model, f"get_{modality}_features")(**kw, return_dict=True)
    return out


def visual_feature_lengths(model: PreTrainedModel, inputs: Mapping[str, Any]) -> dict[str, list[int]]:
    """Per image / per video, how many features the model produces (in placeholder order). Video-LLaVA returns
    its video features per frame; they are summed per video here."""
    lengths: dict[str, list[int]] = {}
    for modality, enc in encode_visual(model, inputs).items():
        per_item = [int(x.shape[0]) for x in enc.pooler_output]
        if family_of(model) == "video-llava" and modality == "video":
            frames = inputs["pixel_values_videos"].shape[1]
            per_item = [sum(per_item[i : i + frames]) for i in range(0, len(per_item), frames)]
        lengths[modality] = per_item
    return lengths
