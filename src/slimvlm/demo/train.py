"""Train the demo VLM's projector + language model on generated scenes (``slimvlm demo train``).

The DINOv2 tower is frozen, so its features (``hidden_states[-2]``, [CLS] dropped: 576×384 per image, fp16) are
computed once per image (:func:`cache_features`) and reused. Training never runs the tower: the cached features
go through the projector and are placed at the 576 ``<image>`` positions, exactly as LLaVA does.

Several questions share one image in one packed sequence ``<s> <image>×576 | q1 answer: a1 </s> | q2 … |``
with a block attention mask (each question sees the image and itself, never another question) and position ids
that restart after the image for every question, so each question is computed exactly as it would be alone
(RoPE is relative) while the 576-token prefix is paid once per image. Loss on the answer word and ``</s>``.
Everything is deterministic from the seed (fixed data order, ``torch.manual_seed``).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import scenes
from .model import (
    ANSWER_TOKEN,
    N_IMAGE_TOKENS,
    build_demo_model,
    load_demo_model,
    save_demo_model,
    to_pixels,
)

__all__ = ["QAPool", "cache_features", "question_pool", "pack_batch", "packed_logits", "evaluate", "train", "main", "load_demo_model"]


def _tqdm(iterable=None, **kw):
    from tqdm.auto import tqdm

    return tqdm(iterable, **kw)


@dataclass
class QAPool:
    """Tokenised questions of one image: ``tokens[i]`` = question ids + ``answer:`` id, ``answers[i]`` the answer id."""

    tokens: list[list[int]]
    answers: list[int]
    qtypes: list[str]


def question_pool(scene, tokenizer, variants: int = 1) -> QAPool:
    """Unique questions of ``scene`` from ``scenes.questions`` with its default generator and ``variants - 1``
    extra seeded generators (more questions per cached image)."""
    seen, toks, ans, qt = set(), [], [], []
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
    return QAPool(toks, ans, qt)


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


def pack_batch(items: Sequence[Sequence[tuple[list[int], int]]], bos_id: int, image_id: int, eos_id: int, pad_id: int):
    """Pack per-image lists of ``(question ids ending in answer:, answer id)`` into one row per image.

    Returns a dict with ``input_ids`` (B, L), 4-D boolean ``attention_mask`` (B, 1, L, L), ``position_ids``
    (B, L), ``targets`` (B, L) (−100 except at ``answer:`` → answer and answer → ``</s>``) and ``answer_pos``
    (list of (row, position of ``answer:``) in order)."""
    P = 1 + N_IMAGE_TOKENS
    rows = []
    for qas in items:
        ids = [bos_id] + [image_id] * N_IMAGE_TOKENS
        seg = [0] * P
        pos = list(range(P))
        tgt = [-100] * P
        for k, (q, a) in enumerate(qas, start=1):
            s = q + [a, eos_id]
            ids += s
            seg += [k] * len(s)
            pos += list(range(P, P + len(s)))
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
    return {"input_ids": input_ids, "attention_mask": allowed[:, None], "position_ids": position_ids, "targets": targets}


def packed_logits(model, feats: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the target positions and the targets there: ``(logits (T, V), targets (T,))``."""
    inner = model.model
    emb = inner.get_input_embeddings()(batch["input_ids"])
    proj = inner.multi_modal_projector(feats.to(emb.dtype))
    emb = torch.cat([emb[:, :1], proj, emb[:, 1 + N_IMAGE_TOKENS :]], dim=1)
    hidden = inner.language_model(
        inputs_embeds=emb, attention_mask=batch["attention_mask"], position_ids=batch["position_ids"], use_cache=False
    ).last_hidden_state
    sel = batch["targets"] != -100
    return model.lm_head(hidden[sel]), batch["targets"][sel]


def _ids(tokenizer):
    return dict(
        bos_id=tokenizer.bos_token_id,
        image_id=tokenizer.convert_tokens_to_ids("<image>"),
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
    )


@torch.no_grad()
def evaluate(model, tokenizer, feats: torch.Tensor, pools: Sequence[QAPool], batch_size: int = 8) -> dict[str, float]:
    """Greedy answer accuracy (next token after ``answer:``) per question type and overall, on every pooled
    question, through the packed path (each question computed as if alone)."""
    model.eval()
    hit: dict[str, list[int]] = {}
    for start in range(0, len(pools), batch_size):
        ps = pools[start : start + batch_size]
        batch = pack_batch([list(zip(p.tokens, p.answers)) for p in ps], **_ids(tokenizer))
        logits, tgt = packed_logits(model, feats[start : start + len(ps)], batch)
        pred = logits[0::2].argmax(-1)  # answer positions (every other target; the next one is </s>)
        qtypes = [q for p in ps for q in p.qtypes]
        for qt, ok in zip(qtypes, (pred == tgt[0::2]).tolist()):
            hit.setdefault(qt, []).append(int(ok))
    out = {qt: float(np.mean(v)) for qt, v in sorted(hit.items())}
    out["all"] = float(np.mean([x for v in hit.values() for x in v])) if hit else float("nan")
    return out


def train(
    out_dir: Optional[str],
    n_images: int = 300,
    qa_per_image: int = 8,
    steps: int = 300,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    *,
    n_val: int = 64,
    variants: int = 3,
    warmup: float = 0.05,
    weight_decay: float = 0.01,
    eval_every: int = 100,
    cache_batch: int = 8,
    threads: Optional[int] = None,
    progress: bool = True,
    lm: Optional[dict] = None,
    features=None,
    log=print,
):
    """Train projector + LM; returns ``(model, tokenizer, history)`` and saves to ``out_dir`` (when not None).

    ``batch_size`` images per step, ``qa_per_image`` questions each (drawn from a pool of ``variants`` question
    sets per image). ``features``: optional ``(train_feats, train_pools, val_feats, val_pools)`` to skip caching."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model, tokenizer = build_demo_model(seed=seed, **(lm or {}))
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
    log(f"cached {n_cached} images in {cache_s:.1f} s ({cache_s / max(n_cached, 1):.3f} s/img)")

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
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    ids = _ids(tokenizer)
    history = {"loss": [], "val": [], "cache_s": cache_s, "n_cached": n_cached, "step_s": None}
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
            pick = torch.randperm(len(p.tokens), generator=gen)[:qa_per_image].tolist()
            items.append([(p.tokens[j], p.answers[j]) for j in pick])
        batch = pack_batch(items, **ids)
        logits, tgt = packed_logits(model, tr_f[idx], batch)
        loss = F.cross_entropy(logits.float(), tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        history["loss"].append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        if eval_every and ((step + 1) % eval_every == 0 or step + 1 == steps) and len(va_p):
            acc = evaluate(model, tokenizer, va_f, va_p, batch_size=batch_size)
            history["val"].append((step + 1, acc))
            log(f"step {step + 1}: loss {np.mean(history['loss'][-eval_every:]):.3f} val " + " ".join(f"{k}={v:.2f}" for k, v in acc.items()))
    bar.close()
    history["step_s"] = (time.perf_counter() - t1) / max(steps, 1)
    model.eval()
    if out_dir is not None:
        meta = dict(
            n_images=n_images, qa_per_image=qa_per_image, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
            n_val=n_val, variants=variants, final_loss=history["loss"][-1] if history["loss"] else None,
            val=history["val"][-1][1] if history["val"] else None,
        )
        save_demo_model(model, tokenizer, out_dir, extra=meta)
    return model, tokenizer, history


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="slimvlm demo train", description="Train the demo VLM (projector + small Llama LM).")
    ap.add_argument("--out", required=True, help="output folder (model.safetensors, config.json, tokenizer)")
    ap.add_argument("--images", type=int, default=2000, help="training scenes (tower run once each)")
    ap.add_argument("--qa-per-image", type=int, default=8)
    ap.add_argument("--variants", type=int, default=3, help="question sets drawn per image")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=8, help="images per step")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val", type=int, default=64, help="validation scenes")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    train(
        a.out, n_images=a.images, qa_per_image=a.qa_per_image, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
        seed=a.seed, n_val=a.val, variants=a.variants, eval_every=a.eval_every, threads=a.threads,
        progress=not a.no_progress,
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
