"""Checkpoints vLLM can load, for tests and benchmarks: a transformers VLM saved in the hub layout with a
processor and a chat template.

- vLLM's CPU attention takes head sizes 32, 64, 80, ... only, so the tiny models here are
  :func:`slimvlm.testing.tiny_config` with 2 query heads / 1 KV head of size 32 (the tiny default is 16).
- transformers >= 5.19 ``save_pretrained`` writes a CLIP / SigLIP tower as ``vision_tower.embeddings.*``;
  published llava-hf checkpoints (and vLLM 0.32's loader) use ``vision_tower.vision_model.*``.
  :func:`save_servable` rewrites those keys to the hub layout, which transformers loads back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["CHAT_TEMPLATE", "tiny_servable", "tiny_processor", "save_servable"]

#: A LLaVA-1.5 style chat template: "USER: <image>\n... ASSISTANT:"; content as a string or a list of
#: ``{"type": "text"|"image"}`` parts.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% elif message['role'] == 'assistant' %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}</s>{% else %} {% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

#: Families with a tiny servable checkpoint (slimvlm.testing names).
FAMILIES = ("llava", "llava-qwen2", "llava-next", "llava-onevision")


def tiny_processor(family: str) -> Any:
    """The processor of a :func:`slimvlm.testing.tiny_model` of ``family`` (32 px tiles, patch 4)."""
    import transformers as tf

    from ...testing import IMAGE_SIZE, PATCH_SIZE, tiny_config, tiny_tokenizer

    cfg = tiny_config(family)
    tok = tiny_tokenizer()
    side = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    if family in ("llava", "llava-qwen2"):
        image = tf.CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=side)
        return tf.LlavaProcessor(
            image_processor=image, tokenizer=tok, patch_size=PATCH_SIZE, chat_template=CHAT_TEMPLATE,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy, num_additional_image_tokens=1,
        )
    if family == "llava-next":
        image = tf.LlavaNextImageProcessor(
            size={"shortest_edge": IMAGE_SIZE}, crop_size=side, image_grid_pinpoints=cfg.image_grid_pinpoints
        )
        return tf.LlavaNextProcessor(
            image_processor=image, tokenizer=tok, patch_size=PATCH_SIZE, chat_template=CHAT_TEMPLATE,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy, num_additional_image_tokens=1,
        )
    if family == "llava-onevision":
        image = tf.LlavaOnevisionImageProcessor(size=side, image_grid_pinpoints=cfg.image_grid_pinpoints)
        return tf.LlavaOnevisionProcessor(
            image_processor=image, tokenizer=tok, chat_template=CHAT_TEMPLATE,
            video_processor=tf.LlavaOnevisionVideoProcessor(size=side),
            num_image_tokens=(IMAGE_SIZE // PATCH_SIZE) ** 2,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
            vision_aspect_ratio=cfg.vision_aspect_ratio,
        )
    raise ValueError(f"no tiny servable checkpoint for {family!r}; families: {', '.join(FAMILIES)}")


def tiny_servable(family: str, path: str | Path, *, seed: int = 0) -> Path:
    """Save a seeded tiny ``family`` VLM (LM heads of size 32) with its processor to ``path``; returns it."""
    import transformers as tf

    from ...testing import FAMILY_CLASSES, tiny_config

    if family not in FAMILIES:
        raise ValueError(f"no tiny servable checkpoint for {family!r}; families: {', '.join(FAMILIES)}")
    cfg = tiny_config(family)
    text = cfg.text_config
    text.num_attention_heads, text.num_key_value_heads, text.head_dim = 2, 1, text.hidden_size // 2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(tf, FAMILY_CLASSES[family])._from_config(cfg, dtype=torch.float32)
    return save_servable(model.eval(), tiny_processor(family), path)


def save_servable(model: Any, processor: Any, path: str | Path) -> Path:
    """Save ``model`` (weights in the hub layout, see the module docstring) and ``processor`` to ``path``."""
    from safetensors.torch import load_file, save_file

    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    index = path / "model.safetensors.index.json"
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    renamed: dict[str, str] = {}
    for shard in shards:
        tensors = load_file(path / shard)
        out = {}
        for key, value in tensors.items():
            new = _hub_key(key)
            renamed[key] = new
            out[new] = value
        save_file(out, path / shard, metadata={"format": "pt"})
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {renamed.get(k, k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2))
    return path


def _hub_key(key: str) -> str:
    """``vision_tower.X`` → ``vision_tower.vision_model.X`` (keys already in the hub layout are kept)."""
    for prefix in ("vision_tower.", "model.vision_tower."):
        if key.startswith(prefix) and not key.startswith(prefix + "vision_model."):
            return prefix + "vision_model." + key[len(prefix):]
    return key
