"""Accuracy of the demo VLM against the visual tokens each method keeps (``slimvlm eval``).

The papers' Tables 4/5 in miniature: every method runs through the real pipeline (``slimvlm.apply``) on the
stock demo model, on scenes of the generated *test* split (seeds never used in training), at equal budgets.
The vision tower runs once per scene and encoding (:func:`slimvlm.pipeline.encode`) and is shared by every
method that reads the same tower outputs; all questions of a scene go through the LLM as one batch.

Two token counts are recorded per run: ``tokens_llm``, the visual tokens entering the language model, and
``tokens_per_layer``, their mean over the LLM's layers (what the prefill cost follows; equal to ``tokens_llm``
except for methods that prune inside the LLM, AIM and FastV). Plots use ``tokens_per_layer``.

Accuracy is reported over all questions, over the five core question types the demo VLM's frozen patch grid
supports (:data:`~slimvlm.demo.scenes.CORE_QTYPES`), and for ``digit`` apart, the hard small-detail type.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch

from . import scenes
from .model import DEMO_POSITIONS, N_IMAGE_TOKENS, scene_inputs

__all__ = [
    "BUDGETS",
    "IN_LLM_OPTIONS",
    "EvalRun",
    "EvalResult",
    "default_runs",
    "tokens_per_layer",
    "evaluate_runs",
    "write_csv",
    "read_csv",
    "plot",
    "markdown_table",
]

#: the fixed budgets of the comparison (the full 576 is the ``none`` row).
BUDGETS = (144, 64, 32)
#: options every run of a method that prunes inside the LLM gets when it takes them: the demo LM has 4 layers, so
#: in-LLM pruning starts after the first one (FastV's paper K=2 is of 32 layers; the decision must come early).
IN_LLM_OPTIONS: dict[str, Any] = {"k": 1}


@dataclass(frozen=True)
class EvalRun:
    """One point of the comparison: a plot line ``label``, the pipeline method and its options, and the budget
    asked for (None: the method's own adaptive count, or every token for a method without a budget)."""

    label: str
    method: str
    options: Mapping[str, Any] = field(default_factory=dict)
    budget: Optional[int] = None


@dataclass
class EvalResult:
    """Accuracy of one :class:`EvalRun`: overall, over the core question types, per question type and on
    small-object questions."""

    run: EvalRun
    n: int
    accuracy: float
    per_type: dict[str, float]
    small: float
    n_small: int
    tokens_llm: float
    tokens_per_layer: float
    core: float = float("nan")

    def row(self) -> dict[str, Any]:
        from ..methods import get

        budget: Any = self.run.budget
        if budget is None:
            budget = "adaptive" if get(self.run.method).adaptive else N_IMAGE_TOKENS
        out = {
            "label": self.run.label,
            "method": self.run.method,
            "options": json.dumps(dict(self.run.options), sort_keys=True),
            "budget": budget,
            "tokens_llm": round(self.tokens_llm, 2),
            "tokens_per_layer": round(self.tokens_per_layer, 2),
            "n": self.n,
            "accuracy": round(self.accuracy, 4),
            "acc_core": round(self.core, 4),
        }
        for qt in scenes.QTYPES:
            out[f"acc_{qt}"] = round(self.per_type.get(qt, float("nan")), 4)
        out["acc_small"] = round(self.small, 4)
        out["n_small"] = self.n_small
        return out


def default_runs(
    budgets: Sequence[int] = BUDGETS,
    methods: Optional[Iterable[str]] = None,
    adaptive: bool = True,
    options: Mapping[str, Any] = IN_LLM_OPTIONS,
) -> list[EvalRun]:
    """Every method (default: all registered ones that apply to images) at each budget (``keep=budget``); a method
    without a budget (``none``) once, with every token; adaptive methods (PruMerge, PruMerge+) also at their own
    count. Temporal methods (across the frames of a video) are left out of the default: the demo scenes are
    images; asked for by name, they are refused.

    ``options`` go to every run whose method prunes inside the LLM and takes them (default :data:`IN_LLM_OPTIONS`).
    FastV keeps all tokens for its first K layer(s), then ``budget``; AIM merges to ``budget`` before the LLM, then
    prunes with its default schedule."""
    from ..methods import available, get

    asked = methods is not None
    methods = [m for m in available() if not get(m).temporal] if methods is None else list(methods)
    unknown = [m for m in methods if m not in available()]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {available()}")
    videos_only = [m for m in methods if get(m).temporal]
    if asked and videos_only:
        raise ValueError(f"{', '.join(videos_only)} reduce(s) across the frames of a video; the demo scenes are images")
    for b in budgets:
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= N_IMAGE_TOKENS:
            raise ValueError(f"budgets must be ints in [1, {N_IMAGE_TOKENS}], got {b!r}")
    runs = []
    for method in methods:
        info = get(method)
        extra = {k: v for k, v in options.items() if k in info.options and info.prunes_in_llm}
        if "keep" not in info.options:
            runs.append(EvalRun(method, method, extra, None))
            continue
        if adaptive and info.adaptive:
            runs.append(EvalRun(method, method, extra, None))
        runs.extend(EvalRun(method, method, {**extra, "keep": b}, b) for b in budgets)
    return runs


def tokens_per_layer(runner: Any, tokens_llm: int) -> list[int] | None:
    """Visual tokens in each LLM layer for ``tokens_llm`` entering it, under the runner's in-LLM pruning schedule
    (AIM, FastV); None for a method without one (every layer sees ``tokens_llm``)."""
    pruner = getattr(runner, "pruner", None)
    if pruner is None:
        return None
    return [pruner.schedule.count(tokens_llm, layer) for layer in range(len(pruner.layers))]


def _mean_tokens_per_layer(runner: Any, tokens_llm: int) -> float:
    counts = tokens_per_layer(runner, tokens_llm)
    return float(tokens_llm) if counts is None else float(np.mean(counts))


@torch.no_grad()
def evaluate_runs(
    model: Any,
    tokenizer: Any,
    runs: Sequence[EvalRun],
    seeds: Iterable[int],
    *,
    progress: bool = True,
    positions: str = DEMO_POSITIONS,
) -> list[EvalResult]:
    """Accuracy of every run on the scenes ``seeds`` (all of each scene's questions). Greedy one-word answer:
    the argmax of the next token after ``answer:``. ``positions``: how the reduced prompt is numbered
    (``slimvlm.apply``'s option, ``"original"`` or ``"renumber"``; default :data:`~slimvlm.demo.model.DEMO_POSITIONS`)."""
    from tqdm.auto import tqdm

    from ..pipeline import apply, encode, encoding_key

    runners = [apply(model, r.method, positions=positions, **r.options) for r in runs]
    keys = [encoding_key(model, r.method) for r in runs]
    hits: list[list[tuple[str, bool, bool]]] = [[] for _ in runs]
    tokens: list[list[tuple[int, float]]] = [[] for _ in runs]
    seeds = list(seeds)
    for seed in tqdm(seeds, desc="evaluating", unit="scene", disable=not progress):
        scene = scenes.make_scene(seed)
        qas = scenes.questions(scene)
        one, batch = scene_inputs(model, tokenizer, scene, [qa.question for qa in qas])  # the scene encoded once
        encoded: dict[Any, Any] = {}
        for i, (run, runner) in enumerate(zip(runs, runners)):
            key = keys[i]
            if key not in encoded:
                encoded[key] = encode(model, one, run.method)[0]
            logits = runner(**batch, items=[encoded[key]] * len(qas)).logits[:, -1]
            pred = tokenizer.convert_ids_to_tokens(logits.argmax(-1).tolist())
            hits[i].extend((qa.qtype, p == qa.answer, qa.small) for qa, p in zip(qas, pred))
            kept = runner.last_stats[0].tokens_after  # the same scene in every row
            tokens[i].extend([(kept, _mean_tokens_per_layer(runner, kept))] * len(qas))  # averaged per question
    results = []
    for run, h, t in zip(runs, hits, tokens):
        per_type = {qt: float(np.mean([ok for q, ok, _ in h if q == qt])) for qt in scenes.QTYPES if any(q == qt for q, _, _ in h)}
        small = [ok for _, ok, s in h if s]
        core = [ok for q, ok, _ in h if q in scenes.CORE_QTYPES]
        results.append(
            EvalResult(
                run=run,
                n=len(h),
                accuracy=float(np.mean([ok for _, ok, _ in h])) if h else float("nan"),
                per_type=per_type,
                small=float(np.mean(small)) if small else float("nan"),
                n_small=len(small),
                tokens_llm=float(np.mean([a for a, _ in t])) if t else float("nan"),
                tokens_per_layer=float(np.mean([b for _, b in t])) if t else float("nan"),
                core=float(np.mean(core)) if core else float("nan"),
            )
        )
    return results


# ----------------------------------------------------------------------------------------------- outputs

_NUMERIC = ("tokens_llm", "tokens_per_layer", "accuracy", "acc_core", "acc_small") + tuple(f"acc_{qt}" for qt in scenes.QTYPES)


def write_csv(results: Sequence[EvalResult], path: str) -> None:
    """One row per run (see :meth:`EvalResult.row`)."""
    rows = [r.row() for r in results]
    if not rows:
        raise ValueError("no results to write")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def read_csv(path: str) -> list[dict[str, Any]]:
    """Rows written by :func:`write_csv`, numbers parsed."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for k in _NUMERIC:
            if k in row:
                row[k] = float(row[k])
        for k in ("n", "n_small"):
            if k in row:
                row[k] = int(row[k])
    return rows


def _rows(results: Sequence[Any]) -> list[dict[str, Any]]:
    return [r.row() if isinstance(r, EvalResult) else dict(r) for r in results]


def _is_full(row: Mapping[str, Any]) -> bool:
    """A run that gives the LLM every visual token in every layer (the unreduced model)."""
    return float(row["tokens_per_layer"]) == N_IMAGE_TOKENS and float(row["tokens_llm"]) == N_IMAGE_TOKENS


#: the plot's panels: column and title.
PANELS = (("acc_core", "five core question types"), ("acc_digit", "digit (small detail)"), ("acc_small", "small-object questions"))


def plot(results: Sequence[Any], path: str, title: Optional[str] = None) -> None:
    """Accuracy (core question types, digit, small-object questions) against visual tokens per LLM layer, one
    line per method, log-scale x; adaptive runs as open markers; the unreduced model as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _rows(results)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(6 * len(PANELS), 5.2), sharex=True)
    full = [r for r in rows if _is_full(r)]
    labels = [lab for lab in dict.fromkeys(r["label"] for r in rows if not _is_full(r))]
    cmap = plt.get_cmap("tab20")
    markers = "osD^v<>phX*"
    for ax, (key, name) in zip(axes, PANELS):
        for r in full:
            ax.axhline(float(r[key]), color="black", ls="--", lw=1, label=f"{r['label']} ({N_IMAGE_TOKENS})")
        for j, lab in enumerate(labels):
            pts = sorted((float(r["tokens_per_layer"]), float(r[key])) for r in rows if r["label"] == lab and r["budget"] != "adaptive")
            color, marker = cmap(j % 20), markers[j % len(markers)]
            if pts:
                ax.plot(*zip(*pts), marker=marker, color=color, label=lab, lw=1.4, ms=5)
            for r in rows:
                if r["label"] == lab and r["budget"] == "adaptive":
                    ax.plot(float(r["tokens_per_layer"]), float(r[key]), marker=marker, mfc="none", color=color, ms=9, mew=1.6,
                            ls="none", label=f"{lab} (adaptive)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("visual tokens per LLM layer (mean)")
        ax.set_ylabel(f"accuracy, {name}")
        ax.grid(True, which="both", alpha=0.3)
    axes[-1].legend(fontsize=8, loc="lower right", ncol=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(results: Sequence[Any]) -> str:
    """Two tables: accuracy (%) over the core question types, and over all questions, per method × budget; then
    digit and small-object accuracy at the smallest fixed budget evaluated (64 where it was)."""
    rows = _rows(results)
    budgets: list[Any] = []
    for r in rows:
        if r["budget"] not in budgets:
            budgets.append(r["budget"])
    order = sorted(budgets, key=lambda b: (b == "adaptive", -int(b) if b != "adaptive" else 0))
    fixed = [int(b) for b in order if b != "adaptive" and int(b) != N_IMAGE_TOKENS]
    detail = 64 if 64 in fixed else (min(fixed) if fixed else N_IMAGE_TOKENS)
    out = []
    for key, what in (("acc_core", "five core question types (exist, count, colour-at, where, larger)"),
                      ("accuracy", "all questions, digit included")):
        header = " | ".join(f"{b} tokens" if b != "adaptive" else "adaptive (tokens)" for b in order)
        extra = f" | digit @ {detail} | small-object @ {detail} |" if key == "accuracy" else " |"
        lines = [f"Accuracy (%), {what}:", "", f"| method | {header}{extra}",
                 "|---" * (len(order) + 1 + (2 if key == "accuracy" else 0)) + "|"]
        for lab in dict.fromkeys(r["label"] for r in rows):
            cells = []
            at_detail = None
            for b in order:
                hit = [r for r in rows if r["label"] == lab and r["budget"] == b]
                if not hit:
                    cells.append("")
                    continue
                r = hit[0]
                cell = f"{100 * float(r[key]):.1f}"
                if b == "adaptive":
                    cell += f" ({float(r['tokens_llm']):.0f})"
                elif float(r["tokens_per_layer"]) != float(r["tokens_llm"]):  # pruned inside the LLM
                    cell += f" ({float(r['tokens_per_layer']):.0f}/layer)"
                cells.append(cell)
                if b != "adaptive" and (int(b) == detail or _is_full(r)):
                    at_detail = r
            tail = " |"
            if key == "accuracy":
                digit = f"{100 * float(at_detail['acc_digit']):.1f}" if at_detail else ""
                small = f"{100 * float(at_detail['acc_small']):.1f}" if at_detail else ""
                tail = f" | {digit} | {small} |"
            lines.append(f"| {lab} | " + " | ".join(cells) + tail)
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"
