"""Train the demo VLM's projector + language model on generated scenes (``slimvlm demo train``).

The DINOv2 tower is frozen, so its features (``hidden_states[-2]``, [CLS] dropped: 576×384 per image, fp16) are
computed once per image (:func:`cache_features`) and reused. Training never runs the tower: the cached features
go through the projector and are placed at the 576 ``<image>`` positions, exactly as LLaVA does.

Several questions share one image in one packed sequence ``<s> <image>×576 | q1 answer: a1 </s> | q2 … |``
with a block attention mask (each question sees the image and itself, never another question) and position ids
that restart after the image for every question, so each question is computed exactly as it would be alone
(RoPE is relative) while the 576-token prefix is paid once per image. Loss on the answer word and ``</s>``.
The prefix is ~80 % of a row's tokens, so more questions per image are cheap: the defaults draw up to 32 from
8 generated question sets per scene (~24 unique questions).

Two training-only aids, neither of which changes the shipped architecture (a stock ``LlavaForConditionalGeneration``):

- the tower features are standardised per channel (DINOv2's channels share a large mean), and the statistics are
  folded into the projector's first linear layer at the end (:func:`fold_feature_norm`);
- two grounding losses. The tokenizer keeps every thing a question names as one token ("red circle", "circles",
  "red objects", "top-left"; see ``model.PHRASES``); head 0 of LM layer 0 at that token is asked to put its
  attention on the patches of the objects it names (on ``<s>`` when there are none; for ``where`` on the patches
  under the object's centre, for ``digit`` on the digit's), and, when the question names one thing, that token's
  own output is asked to predict the answer already (:func:`packed_logits`).
  Without them a from-scratch LM stayed at the answer priors for hundreds of steps: it has to discover which of
  576 image tokens matter, and then how to carry what it found to ``answer:`` (docs/demo-training.md).

Everything is deterministic from the seed (fixed data order, ``torch.manual_seed``).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import scenes
from .model import (
    CONFIG_NAME,
    TRAINING_NAME,
    WEIGHTS_NAME,
    ANSWER_TOKEN,
    LM_DEFAULTS,
    N_IMAGE_TOKENS,
    build_demo_model,
    load_demo_model,
    save_demo_model,
    to_pixels,
)

__all__ = ["QAPool", "cache_features", "question_pool", "question_anchors", "phrase_mixing", "fold_phrase_mixing", "unfold_phrase_mixing", "unfold_feature_norm", "pack_batch", "packed_logits", "eager_in_layer", "evaluate", "check_train_options", "train", "load_demo_model"]


def _tqdm(iterable=None, **kw):
    from tqdm.auto import tqdm

    return tqdm(iterable, **kw)


@dataclass
class QAPool:
    """Tokenised questions of one image: ``tokens[i]`` = question ids + ``answer:`` id, ``answers[i]`` the answer id."""

    tokens: list[list[int]]
    answers: list[int]
    qtypes: list[str]
    #: per question, its grounding anchors (:func:`question_anchors`): ``(token index, patches)`` pairs
    anchors: list[list[tuple[int, list[int]]]] = field(default_factory=list)
    #: per question, the token index the ``answer:`` token should attend to (:func:`pick_token`), or None
    picks: list[Optional[int]] = field(default_factory=list)


def box_patches(box: Sequence[int]) -> list[int]:
    """Raster indices of the 14-px patches that a pixel box ``(x0, y0, x1, y1)`` (x1/y1 exclusive) overlaps."""
    side = scenes.IMAGE_SIZE // scenes.PATCH
    x0, y0, x1, y1 = box
    cols = range(max(0, x0 // scenes.PATCH), min(side, (x1 - 1) // scenes.PATCH + 1))
    rows = range(max(0, y0 // scenes.PATCH), min(side, (y1 - 1) // scenes.PATCH + 1))
    return [r * side + c for r in rows for c in cols]


def object_patches(obj) -> list[int]:
    """Raster indices of the 14-px patches that an object's bounding box overlaps."""
    return box_patches(obj.bbox)


def centre_patches(obj) -> list[int]:
    """The 1–4 patches under a patch-sized square centred on the object's centre: where its place is read."""
    x, y = obj.center
    h = scenes.PATCH // 2
    return box_patches((x - h, y - h, x + h, y + h))


_SINGULAR = {plural: kind for kind, plural in scenes.PLURALS.items()}


def question_anchors(scene, qa, tokens: Sequence[str]) -> list[tuple[int, list[int]]]:
    """Where the question (as ``tokens``, the tokenizer's strings) names objects of ``scene``: ``(token index,
    patches)`` per naming token — a phrase ``red circle`` (that colour and kind) or ``red objects`` (that
    colour), a plural ``circles`` (that kind), ``objects`` (everything), or the place of a ``color_at``
    question (the object ``qa`` is about) — with the patches of every object it matches (for ``where`` only those
    under the object's centre, for ``digit`` those under its digit); ``[]`` when none does (the token should then
    look at ``<s>``).

    Training-only: these are the targets of the grounding loss (:func:`packed_logits`)."""
    objs = scene.objects
    # what the answer is read from: a ``where`` answer from the object's centre (the place probe reads 0.85 from
    # the centre patch), a ``digit`` answer from the digit's own patches; everything else from the whole object
    of = {"where": centre_patches, "digit": lambda o: box_patches(o.digit_bbox)}.get(qa.qtype, object_patches)

    def patches_of(chosen) -> list[int]:
        return sorted({p for o in chosen for p in of(o)})

    out = []
    for k, tok in enumerate(tokens):
        color, _, kind = tok.partition(" ")
        if kind == "objects" and color in scenes.COLORS:
            out.append((k, patches_of(o for o in objs if o.color == color)))
        elif kind in scenes.KINDS and color in scenes.COLORS:
            out.append((k, patches_of(o for o in objs if (o.color, o.kind) == (color, kind))))
        elif tok in _SINGULAR:
            out.append((k, patches_of(o for o in objs if o.kind == _SINGULAR[tok])))
        elif tok == "objects":
            out.append((k, patches_of(objs)))
        elif tok in scenes.PLACES and qa.qtype == "color_at":
            out.append((k, patches_of(objs[i] for i in qa.objects)))
    return out


def pick_token(scene, qa, tokens: Sequence[str]) -> Optional[int]:
    """For a ``larger`` question, the index in ``tokens`` of the phrase naming the larger object (``qa.objects[0]``),
    which the ``answer:`` token should attend to (:func:`train`'s ``pick``); None for other types.

    Why: the mean of an object's patches states its size (a ridge probe on log area: R^2 0.88 on validation
    objects, 99 % of validation ``larger`` pairs ordered right), so after the grounding layer each phrase token
    knows its object's size; ``answer:`` then only has to attend to the larger one and copy what it names.
    Training-only, like :func:`question_anchors`."""
    if qa.qtype != "larger":
        return None
    name = scene.objects[qa.objects[0]].name
    hits = [k for k, tok in enumerate(tokens) if tok == name]
    if len(hits) != 1:
        raise ValueError(f"larger question {qa.question!r}: expected one token {name!r}, found {len(hits)}")
    return hits[0]


def question_pool(scene, tokenizer, variants: int = 1) -> QAPool:
    """Unique questions of ``scene`` from ``scenes.questions`` with its default generator and ``variants - 1``
    extra seeded generators (more questions per cached image)."""
    seen, toks, ans, qt, an, pk = set(), [], [], [], [], []
    for v in range(variants):
        rng = None if v == 0 else np.random.default_rng([scene.seed, 0xDE30, v])
        for qa in scenes.questions(scene, rng):
            if qa.question in seen:
                continue
            seen.add(qa.question)
            ids = tokenizer(" ".join(scenes.tokenize(qa.question)) + " " + ANSWER_TOKEN, add_special_tokens=False)["input_ids"]
            toks.append(ids)
            ans.append(tokenizer.convert_tokens_to_ids(qa.answer))
            qt.append(qa.qtype)
            words = tokenizer.convert_ids_to_tokens(ids[:-1])
            an.append(question_anchors(scene, qa, words))
            pk.append(pick_token(scene, qa, words))
    return QAPool(toks, ans, qt, an, pk)


@torch.no_grad()
def cache_features(
    seeds: Sequence[int],
    tokenizer=None,
    *,
    tower=None,
    batch_size: int = 8,
    variants: int = 1,
    dtype: torch.dtype = torch.float16,
    progress: bool = True,
    desc: str = "caching DINOv2 features",
):
    """Run the frozen tower once per scene. Returns ``(features (N, 576, 384) dtype, pools)``; ``pools`` (when a
    tokenizer is given) holds each scene's :class:`QAPool`, else None."""
    from ..assets import load_dinov2_small

    tower = tower if tower is not None else load_dinov2_small()
    tower.eval()
    seeds = list(seeds)
    feats = torch.empty(len(seeds), N_IMAGE_TOKENS, tower.config.hidden_size, dtype=dtype)
    pools = [] if tokenizer is not None else None
    bar = _tqdm(total=len(seeds), desc=desc, unit="img", disable=not progress)
    for start in range(0, len(seeds), batch_size):
        batch = [scenes.make_scene(s) for s in seeds[start : start + batch_size]]
        pv = to_pixels(batch).to(next(tower.parameters()).dtype)
        hs = tower(pixel_values=pv, output_hidden_states=True).hidden_states[-2][:, 1:]
        feats[start : start + len(batch)] = hs.to(dtype)
        if pools is not None:
            pools.extend(question_pool(sc, tokenizer, variants) for sc in batch)
        bar.update(len(batch))
    bar.close()
    return feats, pools


#: the fewest position ids :func:`train`'s ``squeeze`` gives the image (PruMerge keeps ~32 tokens on average).
SQUEEZE_MIN = 16


def pack_batch(
    items: Sequence[Sequence[tuple[list[int], int]]], bos_id: int, image_id: int, eos_id: int, pad_id: int,
    image_spans: Optional[Sequence[int]] = None,
):
    """Pack per-image lists of ``(question ids ending in answer:, answer id)`` into one row per image.

    Items may carry a third element, the question's anchors (:func:`question_anchors`), and a fourth, its
    :func:`pick_token` (or None) → ``pick``: ``(row, position of answer:, [position of that token])``, and that
    token joins ``anchor_answers``. Returns a dict with
    ``input_ids`` (B, L), 4-D boolean ``attention_mask`` (B, 1, L, L), ``position_ids`` (B, L), ``targets``
    (B, L) (−100 except at ``answer:`` → answer and answer → ``</s>``), ``ground``: ``(row, sequence position
    of the anchor token, sequence positions of its patches — ``[0]``, the ``<s>``, when it has none)`` and
    ``anchor_answers``: ``(row, position of the anchor, answer id)`` for questions with exactly one anchor.

    ``image_spans``: optional, per row, the number K of position ids the 576 image tokens are squeezed into
    (patch i at position ``1 + i*K // 576``, the questions from ``1 + K`` on; K = 576 is the plain layout). The
    sequence is unchanged: training-time layout variation so the LM cannot depend on the image being
    exactly 576 positions long, which reductions before the LLM change (:func:`train`'s ``squeeze``)."""
    P = 1 + N_IMAGE_TOKENS
    if image_spans is not None:
        if len(image_spans) != len(items):
            raise ValueError(f"image_spans has {len(image_spans)} entries for {len(items)} rows")
        bad = [k for k in image_spans if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= N_IMAGE_TOKENS]
        if bad:
            raise ValueError(f"image_spans must be ints in [1, {N_IMAGE_TOKENS}], got {bad}")
    rows = []
    ground: list[tuple[int, int, list[int]]] = []
    anchor_answers: list[tuple[int, int, int]] = []
    pick: list[tuple[int, int, list[int]]] = []
    for row, qas in enumerate(items):
        ids = [bos_id] + [image_id] * N_IMAGE_TOKENS
        seg = [0] * P
        span = N_IMAGE_TOKENS if image_spans is None else image_spans[row]
        pos = [0] + [1 + i * span // N_IMAGE_TOKENS for i in range(N_IMAGE_TOKENS)]
        nxt = 1 + span
        tgt = [-100] * P
        for k, qa in enumerate(qas, start=1):
            q, a = qa[0], qa[1]
            anchors = qa[2] if len(qa) > 2 else ()
            for word, patches in anchors:  # anchors: that token should look at these patches
                ground.append((row, len(ids) + word, [1 + p for p in patches] if patches else [0]))
            if len(anchors) == 1:  # the one thing the question is about: its token should know the answer
                anchor_answers.append((row, len(ids) + anchors[0][0], a))
            if len(qa) > 3 and qa[3] is not None:  # answer: (the question's last token) should look at that token,
                pick.append((row, len(ids) + len(q) - 1, [len(ids) + qa[3]]))
                anchor_answers.append((row, len(ids) + qa[3], a))  # and that token should know the answer
            s = q + [a, eos_id]
            ids += s
            seg += [k] * len(s)
            pos += list(range(nxt, nxt + len(s)))
            tgt += [-100] * (len(q) - 1) + [a, eos_id, -100]
        rows.append((ids, seg, pos, tgt))
    L = max(len(r[0]) for r in rows)
    B = len(rows)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    segs = torch.full((B, L), -1, dtype=torch.long)
    position_ids = torch.zeros((B, L), dtype=torch.long)
    targets = torch.full((B, L), -100, dtype=torch.long)
    for b, (ids, seg, pos, tgt) in enumerate(rows):
        n = len(ids)
        input_ids[b, :n] = torch.tensor(ids)
        segs[b, :n] = torch.tensor(seg)
        position_ids[b, :n] = torch.tensor(pos)
        targets[b, :n] = torch.tensor(tgt)
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    sq, sk = segs[:, :, None], segs[:, None, :]
    allowed = ((sk == 0) | (sk == sq)) & (sk >= 0) & causal
    allowed |= torch.eye(L, dtype=torch.bool)  # padding rows attend to themselves (no empty rows)
    return {"input_ids": input_ids, "attention_mask": allowed[:, None], "position_ids": position_ids, "targets": targets,
            "ground": ground, "anchor_answers": anchor_answers, "pick": pick}


def feature_stats(feats: torch.Tensor, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation (float32) of cached tower features ``(N, 576, C)``."""
    total = torch.zeros(feats.shape[-1], dtype=torch.float64)
    sq = torch.zeros_like(total)
    count = 0
    for start in range(0, feats.shape[0], chunk):
        x = feats[start : start + chunk].reshape(-1, feats.shape[-1]).double()
        total += x.sum(0)
        sq += (x * x).sum(0)
        count += x.shape[0]
    mean = total / max(count, 1)
    var = (sq / max(count, 1) - mean * mean).clamp(min=0)
    return mean.float(), var.sqrt().float().clamp(min=1e-4)


@torch.no_grad()
def fold_feature_norm(model, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Fold the training-time standardisation ``(x - mean) / std`` into the projector's first linear layer, so
    the stock model (fed raw tower features) computes exactly what training computed:
    ``W (x - m) / s + b = (W / s) x + (b - (W / s) m)``."""
    lin = model.model.multi_modal_projector.linear_1
    w = lin.weight.float() / std[None, :]
    lin.weight.copy_(w.to(lin.weight.dtype))
    lin.bias.copy_((lin.bias.float() - w @ mean).to(lin.bias.dtype))


@torch.no_grad()
def unfold_feature_norm(model, mean: torch.Tensor, std: torch.Tensor) -> None:
    """The inverse of :func:`fold_feature_norm`: a saved (folded) projector back to the one training uses on
    standardised features (``W = W' s``, ``b = b' + W' m``), to continue training a saved model."""
    lin = model.model.multi_modal_projector.linear_1
    w = lin.weight.float()
    lin.bias.copy_((lin.bias.float() + w @ mean).to(lin.bias.dtype))
    lin.weight.copy_((w * std[None, :]).to(lin.weight.dtype))


def phrase_mixing(tokenizer) -> torch.Tensor:
    """``(V, V)`` matrix ``M`` with ``M @ E`` the embedding table trained through: identity, except that a phrase
    token's row also adds its two words' rows (``"red circle"`` = own + ``red`` + ``circle``; ``"red objects"`` =
    own + ``red`` + ``objects``). A training-only reparametrisation: phrase tokens share what their words learn
    (each of the 64 phrases would otherwise learn from its own few questions only); :func:`fold_phrase_mixing`
    bakes it into the stock embedding table."""
    from .model import PHRASES

    V = len(tokenizer)
    mix = torch.eye(V)
    for phrase in PHRASES:
        row = tokenizer.convert_tokens_to_ids(phrase)
        for word in phrase.split():
            mix[row, tokenizer.convert_tokens_to_ids(word)] += 1.0
    return mix


@torch.no_grad()
def fold_phrase_mixing(model, mix: torch.Tensor) -> None:
    """``E <- M @ E``: the stock model then embeds every token exactly as training did."""
    emb = model.model.get_input_embeddings().weight
    emb.copy_((mix.to(emb.dtype) @ emb).to(emb.dtype))


@torch.no_grad()
def unfold_phrase_mixing(model, mix: torch.Tensor) -> None:
    """The inverse of :func:`fold_phrase_mixing`: ``E <- M^-1 E`` (``M`` is unit lower-triangular up to a
    permutation, always invertible), to continue training a saved model."""
    emb = model.model.get_input_embeddings().weight
    emb.copy_(torch.linalg.solve(mix.double(), emb.double()).to(emb.dtype))


def packed_logits(
    model, feats: torch.Tensor, batch: dict, norm=None, ground_layer: Optional[int] = None, mix: Optional[torch.Tensor] = None,
    pick_layer: Optional[int] = None,
):
    """Logits at the target positions and the targets there: ``(logits (T, V), targets (T,))``. ``norm``:
    optional ``(mean, std)`` standardising the features before the projector (training only); ``mix``: optional
    :func:`phrase_mixing` matrix applied to the embedding table (training only).

    With ``ground_layer`` (that LM layer must run eager attention: :func:`eager_in_layer`), also returns a dict
    of two training-only losses that teach a from-scratch LM to use the image (the model stays a stock LLaVA):

    - ``"ground"``: the mean over ``batch["ground"]`` of ``-log`` (attention mass of head 0 of that layer, at an
      anchor token, on the patches of the objects it names, or on ``<s>`` when there are none);
    - ``"anchor"``: cross-entropy of the answer predicted (through ``lm_head``) at the anchor token of every
      one-anchor question (``batch["anchor_answers"]``): the token that looked the thing up should know the
      answer, so ``answer:`` only has to copy it from there.

    With ``pick_layer`` too (eager there as well), a third: ``"pick"``, over ``batch["pick"]`` (0 when the batch
    has none), the sum of two means: ``-log`` (attention of head 0 of that layer, at a ``larger`` question's
    ``answer:``, on the phrase naming the larger object: :func:`pick_token`), and the cross-entropy of the answer
    read from what that head alone writes there (its output through ``o_proj``, then the final norm and
    ``lm_head``: a logit lens). The attention term teaches the head where to look; the lens term makes what it
    carries name the answer, which the attention term alone does not."""
    inner = model.model
    table = inner.get_input_embeddings().weight
    emb = F.embedding(batch["input_ids"], table if mix is None else mix.to(table.dtype) @ table)
    feats = feats.to(emb.dtype)
    if norm is not None:
        feats = (feats - norm[0]) / norm[1]
    proj = inner.multi_modal_projector(feats)
    emb = torch.cat([emb[:, :1], proj, emb[:, 1 + N_IMAGE_TOKENS :]], dim=1)
    if pick_layer is not None and ground_layer is None:
        raise ValueError("pick_layer needs ground_layer (the pick loss is one of the grounding losses)")
    wanted = [layer for layer in (ground_layer, pick_layer) if layer is not None]
    captured: dict = {}
    handles = [
        inner.language_model.layers[layer].self_attn.register_forward_hook(
            lambda _m, _a, out, layer=layer: captured.__setitem__(layer, out[1])
        )
        for layer in wanted
    ]
    if pick_layer is not None:  # the heads' outputs before o_proj, for the pick loss's logit lens
        o_proj = inner.language_model.layers[pick_layer].self_attn.o_proj
        handles.append(o_proj.register_forward_pre_hook(lambda _m, args: captured.__setitem__("heads", args[0])))
    allowed = batch["attention_mask"]  # a custom 4-D mask reaches the attention as given: make it additive
    additive = torch.zeros(allowed.shape, dtype=emb.dtype).masked_fill(~allowed, torch.finfo(emb.dtype).min)
    try:
        hidden = inner.language_model(
            inputs_embeds=emb, attention_mask=additive, position_ids=batch["position_ids"], use_cache=False
        ).last_hidden_state
    finally:
        for handle in handles:
            handle.remove()
    sel = batch["targets"] != -100
    logits, targets = model.lm_head(hidden[sel]), batch["targets"][sel]
    if ground_layer is None:
        return logits, targets
    if any(captured.get(layer) is None for layer in wanted):
        raise RuntimeError(
            f"grounding needs the attention weights of LM layer(s) {wanted}: run the LM with "
            f"attn_implementation=eager_in_layer({', '.join(map(str, wanted))}) or 'eager'"
        )
    aux = {"ground": _head0_nll(captured[ground_layer], batch.get("ground", []), logits), "anchor": logits.new_zeros(())}
    if pick_layer is not None:
        # no 1e-6 floor: a trained model's head may start far below it (the shipped weights: ~e^-29 in layer 2,
        # ~e^-55 in layer 1, measured on 4 scenes), where the clamp would block the gradient
        aux["pick"] = _head0_nll(captured[pick_layer], batch.get("pick", []), logits, floor=torch.finfo(logits.dtype).tiny)
        if batch.get("pick"):
            attn = inner.language_model.layers[pick_layer].self_attn
            at = torch.tensor([[r, q] for r, q, _ in batch["pick"]])
            head0 = captured["heads"][at[:, 0], at[:, 1], : attn.head_dim] @ attn.o_proj.weight[:, : attn.head_dim].T
            lens = model.lm_head(inner.language_model.norm(head0))
            aux["pick"] = aux["pick"] + F.cross_entropy(lens.float(), batch["targets"][at[:, 0], at[:, 1]])
    answers = batch.get("anchor_answers", [])
    if answers:
        at = torch.tensor([[r, q] for r, q, _ in answers])
        anchor_logits = model.lm_head(hidden[at[:, 0], at[:, 1]])
        aux["anchor"] = F.cross_entropy(anchor_logits.float(), torch.tensor([a for _, _, a in answers]))
    return logits, targets, aux


def _head0_nll(weights: torch.Tensor, items, like: torch.Tensor, floor: float = 1e-6) -> torch.Tensor:
    """Mean over ``items`` ``(row, query position, key positions)`` of ``-log`` (head 0's attention mass at the
    query on those keys, clamped to at least ``floor``: no gradient below it); 0 without items. One gather for all
    triples, then a per-item sum (indexing per item would make autograd write a full (B, L, L) gradient per item)."""
    if not items:
        return like.new_zeros(())
    rows = torch.tensor([r for r, _, pos in items for _ in pos])
    queries = torch.tensor([q for _, q, pos in items for _ in pos])
    keys = torch.tensor([p for _, _, pos in items for p in pos])
    group = torch.tensor([g for g, (_, _, pos) in enumerate(items) for _ in pos])
    head = weights[:, 0]
    mass = head.new_zeros(len(items)).index_add(0, group, head[rows, queries, keys])
    return -torch.log(mass.clamp(min=floor)).mean()


def eager_in_layer(layer: int, *more: int) -> str:
    """Register and return the name of an attention implementation that runs eager attention in LM layer
    ``layer`` (and ``more``) only and sdpa elsewhere: the grounding losses need those layers' attention weights,
    and eager attention everywhere made a training step ~1.4x slower (2.32 s vs 1.63 s measured for 8 scenes x 16
    questions on 2 cores; identical loss)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.llama.modeling_llama import eager_attention_forward

    layers = (layer, *more)
    for one in layers:
        if isinstance(one, bool) or not isinstance(one, int) or one < 0:
            raise ValueError(f"layer must be a non-negative int, got {one!r}")
    layers = tuple(sorted(set(layers)))
    name = "slimvlm_eager_layer" + "_".join(map(str, layers))

    def attention(module, *args, **kwargs):
        fn = eager_attention_forward if module.layer_idx in layers else sdpa_attention_forward
        return fn(module, *args, **kwargs)

    AttentionInterface.register(name, attention)  # re-registering the same name is harmless
    return name


def _ids(tokenizer):
    return dict(
        bos_id=tokenizer.bos_token_id,
        image_id=tokenizer.convert_tokens_to_ids("<image>"),
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
    )


@torch.no_grad()
def evaluate(
    model, tokenizer, feats: torch.Tensor, pools: Sequence[QAPool], batch_size: int = 8, norm=None, mix=None
) -> dict[str, float]:
    """Greedy answer accuracy (next token after ``answer:``) per question type and overall, on every pooled
    question, through the packed path (each question computed as if alone)."""
    model.eval()
    hit: dict[str, list[int]] = {}
    for start in range(0, len(pools), batch_size):
        ps = pools[start : start + batch_size]
        batch = pack_batch([list(zip(p.tokens, p.answers)) for p in ps], **_ids(tokenizer))
        logits, tgt = packed_logits(model, feats[start : start + len(ps)], batch, norm, mix=mix)
        pred = logits[0::2].argmax(-1)  # answer positions (every other target; the next one is </s>)
        qtypes = [q for p in ps for q in p.qtypes]
        for qt, ok in zip(qtypes, (pred == tgt[0::2]).tolist()):
            hit.setdefault(qt, []).append(int(ok))
    out = {qt: float(np.mean(v)) for qt, v in sorted(hit.items())}
    out["all"] = float(np.mean([x for v in hit.values() for x in v])) if hit else float("nan")
    return out


def check_train_options(
    *, squeeze: float = 0.0, ground: float = 1.0, ground_layer: int = 0, lm: Optional[dict] = None,
    init: Optional[str] = None, pick: float = 0.0, pick_layer: int = 2,
) -> None:
    """ValueError naming the option when :func:`train` could not use it (checked before the minutes of caching)."""
    if not 0.0 <= squeeze <= 1.0:
        raise ValueError(f"squeeze must be in [0, 1], got {squeeze}")
    if init is not None:
        if lm:
            raise ValueError(f"init continues the model in {init}, whose config fixes the LM: lm must be empty, got {lm}")
        if not os.path.isfile(os.path.join(init, WEIGHTS_NAME)):
            raise ValueError(f"init must be a folder written by `slimvlm demo train`: {init} has no {WEIGHTS_NAME}")
        from transformers import LlavaConfig

        text = LlavaConfig.from_json_file(os.path.join(init, CONFIG_NAME)).text_config
        n_layers = text.num_hidden_layers
    else:
        n_layers = {**LM_DEFAULTS, **(lm or {})}["num_hidden_layers"]
    if ground and not 0 <= ground_layer < n_layers:
        raise ValueError(f"ground_layer must be in [0, {n_layers - 1}] (the LM has {n_layers} layers), got {ground_layer}")
    if pick < 0:
        raise ValueError(f"pick must be >= 0, got {pick}")
    if pick and not ground:
        raise ValueError("pick needs ground > 0 (the pick loss is trained with the grounding losses)")
    if pick and not 0 <= pick_layer < n_layers:
        raise ValueError(f"pick_layer must be in [0, {n_layers - 1}] (the LM has {n_layers} layers), got {pick_layer}")


def train(
    out_dir: Optional[str],
    n_images: int = 1500,
    qa_per_image: int = 32,
    steps: int = 2000,
    batch_size: int = 8,
    lr: float = 2e-3,
    seed: int = 0,
    *,
    n_val: int = 128,
    variants: int = 8,
    warmup: float = 0.03,
    weight_decay: float = 0.01,
    eval_every: int = 100,
    cache_batch: int = 8,
    threads: Optional[int] = None,
    progress: bool = True,
    lm: Optional[dict] = None,
    features=None,
    standardize: bool = True,
    compose_phrases: bool = True,
    ground: float = 1.0,
    ground_layer: int = 0,
    squeeze: float = 0.0,
    init: Optional[str] = None,
    pick: float = 0.0,
    pick_layer: int = 2,
    log=print,
):
    """Train projector + LM; returns ``(model, tokenizer, history)`` and saves to ``out_dir`` (when not None).

    ``batch_size`` images per step, ``qa_per_image`` questions each (drawn from a pool of ``variants`` question
    sets per image). ``features``: optional ``(train_feats, train_pools, val_feats, val_pools)`` to skip caching.
    ``standardize``: train on per-channel standardised features (DINOv2's channels share a large mean that would
    make all image tokens look alike) and fold the statistics into the projector at the end. ``ground``: weight
    of the grounding loss (:func:`packed_logits`) on head 0 of LM layer ``ground_layer``; that layer then trains
    with eager attention, the others with sdpa (:func:`eager_in_layer`; all sdpa again at the end). ``squeeze``:
    the fraction of training rows whose 576 image tokens take only K ~ U{16..576} position ids (:func:`pack_batch`
    ``image_spans``; 0 = off, the random stream is then untouched). ``init``: a folder written by this function
    to continue training from (its projector and LM, unfolded back to the training-time parametrisation) instead of
    a fresh random LM; the learning-rate schedule starts anew and ``training.json`` records the folder's own.
    ``pick``: weight of the ``"pick"`` loss (:func:`packed_logits`) on head 0 of LM layer ``pick_layer``: a
    ``larger`` question's ``answer:`` attends to the phrase naming the larger object (:func:`pick_token`); that
    layer runs eager attention as well. 0 = off (the random stream is then untouched)."""
    check_train_options(  # before caching
        squeeze=squeeze, ground=ground, ground_layer=ground_layer, lm=lm, init=init, pick=pick, pick_layer=pick_layer
    )
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model, tokenizer = build_demo_model(seed=seed, **(lm or {})) if init is None else load_demo_model(init)
    t0 = time.perf_counter()
    if features is None:
        tower = model.model.vision_tower
        tr_f, tr_p = cache_features(
            scenes.split_seeds("train", n_images), tokenizer, tower=tower, batch_size=cache_batch, variants=variants,
            progress=progress, desc="caching train features",
        )
        va_f, va_p = cache_features(
            scenes.split_seeds("val", n_val), tokenizer, tower=tower, batch_size=cache_batch, variants=1,
            progress=progress, desc="caching val features",
        )
    else:
        tr_f, tr_p, va_f, va_p = features
    cache_s = time.perf_counter() - t0
    n_cached = len(tr_p) + len(va_p)
    norm = feature_stats(tr_f) if standardize else None
    mix = phrase_mixing(tokenizer) if compose_phrases else None
    if init is not None:  # the saved model has both aids folded in: undo that, training applies them
        if norm is not None:
            unfold_feature_norm(model, *norm)
        if mix is not None:
            unfold_phrase_mixing(model, mix)
    log(f"cached {n_cached} images in {cache_s:.1f} s ({cache_s / max(n_cached, 1):.3f} s/img)")

    if ground:
        model.set_attn_implementation(eager_in_layer(ground_layer, *([pick_layer] if pick else [])))
    params = [p for n, p in model.named_parameters() if not n.startswith("model.vision_tower.")]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98)
    )
    n_warm = max(1, int(warmup * steps))

    def lr_at(step: int) -> float:
        if step < n_warm:
            return (step + 1) / n_warm
        return 0.5 * (1 + math.cos(math.pi * (step - n_warm) / max(1, steps - n_warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    meta = dict(
        n_images=n_images if features is None else len(tr_p), qa_per_image=qa_per_image, steps=steps,
        batch_size=batch_size, lr=lr, seed=seed, n_val=n_val if features is None else len(va_p), variants=variants,
        warmup=warmup, weight_decay=weight_decay, standardize=standardize, compose_phrases=compose_phrases, lm=dict(lm or {}), ground=ground,
        ground_layer=ground_layer, squeeze=squeeze, init=init, pick=pick, pick_layer=pick_layer,
    )
    if init is not None:  # the provenance of what this run continues
        meta["init_training"] = _read_training_json(init)
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    ids = _ids(tokenizer)
    history = {"loss": [], "ce": [], "ground": [], "anchor": [], "pick": [], "val": [], "cache_s": cache_s, "n_cached": n_cached, "step_s": None}
    bar = _tqdm(range(steps), desc="training", unit="step", disable=not progress)
    t1 = time.perf_counter()
    for step in bar:
        model.train()
        model.model.vision_tower.eval()
        if len(order) < batch_size:
            order += torch.randperm(len(tr_p), generator=gen).tolist()
        idx, order = order[:batch_size], order[batch_size:]
        items = []
        for i in idx:
            p = tr_p[i]
            chosen = torch.randperm(len(p.tokens), generator=gen)[:qa_per_image].tolist()
            items.append([
                (p.tokens[j], p.answers[j], p.anchors[j] if ground else ()) + ((p.picks[j],) if pick else ())
                for j in chosen
            ])
        spans = None
        if squeeze:
            draw = torch.rand(len(idx), generator=gen) < squeeze
            short = torch.randint(SQUEEZE_MIN, N_IMAGE_TOKENS + 1, (len(idx),), generator=gen)
            spans = torch.where(draw, short, N_IMAGE_TOKENS).tolist()
        batch = pack_batch(items, **ids, image_spans=spans)
        if ground:
            logits, tgt, aux = packed_logits(
                model, tr_f[idx], batch, norm, ground_layer=ground_layer, mix=mix, pick_layer=pick_layer if pick else None
            )
        else:
            (logits, tgt), aux = packed_logits(model, tr_f[idx], batch, norm, mix=mix), {}
        ce = F.cross_entropy(logits.float(), tgt)
        loss = ce + ground * (aux["ground"] + aux["anchor"]) + pick * aux.get("pick", 0.0) if aux else ce
        history["ce"].append(ce.item())
        for k in ("ground", "anchor", "pick"):
            history[k].append(aux[k].item() if k in aux else 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        history["loss"].append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        if eval_every and ((step + 1) % eval_every == 0 or step + 1 == steps) and len(va_p):
            acc = evaluate(model, tokenizer, va_f, va_p, batch_size=batch_size, norm=norm, mix=mix)
            history["val"].append((step + 1, acc))
            recent = {k: np.mean(history[k][-eval_every:]) for k in ("loss", "ce", "ground", "anchor", "pick")}
            log(f"step {step + 1}: loss {recent['loss']:.3f} (answers {recent['ce']:.3f}, grounding {recent['ground']:.3f}, "
                f"anchors {recent['anchor']:.3f}" + (f", pick {recent['pick']:.3f}" if pick else "") + ") val "
                + " ".join(f"{k}={v:.2f}" for k, v in acc.items()))
            if out_dir is not None and step + 1 < steps:  # a usable checkpoint at every validation
                _save(model, tokenizer, out_dir, norm, mix, dict(meta, steps_done=step + 1, val=acc, loss=history["loss"][-1]))
    bar.close()
    history["step_s"] = (time.perf_counter() - t1) / max(steps, 1)
    _to_stock(model, norm, mix)
    if out_dir is not None:
        save_demo_model(model, tokenizer, out_dir, extra=dict(
            meta, steps_done=steps, val=history["val"][-1][1] if history["val"] else None,
            loss=history["loss"][-1] if history["loss"] else None, step_s=history["step_s"], cache_s=cache_s,
            val_curve=history["val"],
        ))
    return model, tokenizer, history


def _read_training_json(folder: str) -> Optional[dict]:
    """``folder/training.json`` (what :func:`train` wrote there), or None."""
    path = os.path.join(folder, TRAINING_NAME)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _to_stock(model, norm, mix) -> None:
    """End of training, in place: eval mode, sdpa attention, the training-only aids (feature standardisation,
    phrase mixing) folded into the weights."""
    model.eval()
    model.set_attn_implementation("sdpa")
    if norm is not None:
        fold_feature_norm(model, *norm)
    if mix is not None:
        fold_phrase_mixing(model, mix)


def _save(model, tokenizer, out_dir: str, norm, mix, meta: dict) -> None:
    """Save a stock copy of ``model`` (:func:`_to_stock`); training continues on ``model``."""
    import copy

    snap = copy.deepcopy(model)
    _to_stock(snap, norm, mix)
    save_demo_model(snap, tokenizer, out_dir, extra=meta)
