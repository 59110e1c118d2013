"""Measured wall-clock of a VLM under visual-token reduction: encode, reduce, LLM prefill, TTFT, decode.

:func:`benchmark` times any supported model (``slimvlm.models``) on given processor outputs, for a list of
methods (registry names with options), in these phases:

``encode``
    the family adapter's encode: vision tower + projector (+ the [CLS] q/k signals when the method needs them),
    exactly what :func:`slimvlm.prepare` runs first.
``reduce``
    the rest of :func:`slimvlm.prepare`: the method (per image / frame; for pre-projector methods this includes
    projecting the kept tokens) and rebuilding ``input_ids`` / masks / positions / ``mm_encoder_outputs``.
``prefill``
    the stock ``model(**prepared_kwargs, logits_to_keep=1, use_cache=True)``: the LLM on the reduced sequence
    (embedding, scatter of the visual tokens, all decoder layers, LM head on the last token).
``ttft``
    encode + reduce + prefill of the same run (time to the first token's logits; sampling excluded).
``decode``
    one single-token forward from the prefill cache (greedy token fed back), median over ``decode_steps``
    steps of every run.

How the split is taken: through the public staged calls, :func:`slimvlm.pipeline.encode` (timed as encode),
then the wrapper's ``prepare(items=...)`` on those items (timed as reduce); together they are exactly what one
``prepare`` does (``split="staged"`` in the rows).

Defaults (CPU): one thread (``torch.set_num_threads(1)`` inside, restored after),
``torch.no_grad()``, ``time.perf_counter``, one warm-up round, medians (and minima) of ``runs`` rounds. Rounds
are interleaved across methods (round 1 of every method, then round 2, ...) so that load changes on a shared
machine hit every method alike. The model is used as given: run it in float32 on CPU (bf16/fp16 matmuls are
5-100x slower there); ``dtype`` is recorded in every row.

Results are :class:`BenchRow` dataclasses: :func:`to_csv` / :func:`to_json` write them, :func:`from_csv` /
:func:`from_json` read them back, :func:`compare` adds speed-ups against a baseline row, and :func:`plot` draws
time against visual tokens per method beside the analytic FLOPs line (:func:`analytic_prefill_flops`, from
``slimvlm.cost`` when available).

In-LLM pruning (AIM's progressive pruning, FastV) happens inside the prefill, not in ``prepare``: a method that
declares a pruner gets it around the prefill and the decode steps, and its per-layer schedule in the analytic
FLOPs. Other pruning hooks (an :class:`~slimvlm.inllm.InLLMPruner` with a custom schedule, say) are given as a
:class:`MethodSpec` with ``in_llm`` (a context-manager factory) and ``per_layer_visual``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Mapping, Sequence

import torch
from torch import nn

from ._compat import cache_from_output, cache_kwarg

__all__ = [
    "MethodSpec",
    "BenchRow",
    "benchmark",
    "compare",
    "analytic_prefill_flops",
    "to_csv",
    "to_json",
    "from_csv",
    "from_json",
    "plot",
]


@dataclass(frozen=True)
class MethodSpec:
    """One benchmarked setting.

    Attributes:
        method: a registry name (``slimvlm.methods.available()``); checked up front (ValueError otherwise).
        options: the method's config fields (``keep=144``, ``ratio=0.25``, ...).
        label: the name in tables and plots (default: ``method`` plus its options).
        in_llm: an extra in-LLM pruning hook: ``in_llm(model)`` returns a context manager entered around the
            prefill and the decode steps (not around encode / reduce), instead of the method's own pruner (methods
            that declare one, AIM and FastV, need nothing here).
        per_layer_visual: with ``in_llm``, ``per_layer_visual(n_visual, num_layers)`` → visual tokens kept at each
            decoder layer (e.g. ``Schedule.counts``), used for the analytic FLOPs.
    """

    method: str
    options: Mapping[str, Any] = field(default_factory=dict)
    label: str | None = None
    in_llm: Callable[[nn.Module], ContextManager] | None = None
    per_layer_visual: Callable[[int, int], Sequence[int]] | None = None

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        if not self.options:
            return self.method
        return f"{self.method}(" + ",".join(f"{k}={v}" for k, v in sorted(self.options.items())) + ")"


def cpu_name() -> str:
    """The CPU model name (from /proc/cpuinfo on Linux), for benchmark reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _spec(m: Any) -> MethodSpec:
    if isinstance(m, MethodSpec):
        return m
    if isinstance(m, str):
        return MethodSpec(m)
    if isinstance(m, (tuple, list)) and len(m) == 2 and isinstance(m[0], str) and isinstance(m[1], Mapping):
        return MethodSpec(m[0], dict(m[1]))
    raise TypeError(f"a method is a name, a (name, options) pair or a MethodSpec, got {m!r}")


@dataclass
class BenchRow:
    """Timings (seconds) of one method on one input batch. ``*_s`` = median over runs, ``*_min_s`` = minimum.

    Token counts are summed over the batch: ``visual_tokens_before`` / ``visual_tokens`` from the pipeline's
    per-item stats (before / after the method), ``text_tokens`` = the other real (non-padding) tokens,
    ``llm_tokens`` = the KV-cache length after the prefill (the sequence the LLM really ran; per row for B > 1:
    the padded width). ``analytic_prefill_gflops``: the analytic LLM-prefill FLOPs of this setting (see
    :func:`analytic_prefill_flops`); ``prefill_speedup`` / ``analytic_speedup`` / ``speedup_ratio``: filled by
    :func:`compare` (measured and analytic baseline/this, and measured ÷ analytic)."""

    label: str
    method: str
    options: dict[str, Any]
    model: str
    batch: int
    visual_tokens_before: int
    visual_tokens: int
    text_tokens: int
    llm_tokens: int
    encode_s: float
    reduce_s: float
    prefill_s: float
    ttft_s: float
    decode_s: float | None
    encode_min_s: float
    reduce_min_s: float
    prefill_min_s: float
    ttft_min_s: float
    decode_min_s: float | None
    runs: int
    warmup: int
    decode_steps: int
    threads: int
    dtype: str
    device: str
    split: str
    in_llm: bool = False
    torch_version: str = ""
    load_avg_1m: float | None = None
    analytic_prefill_gflops: float | None = None
    analytic_source: str = ""
    prefill_speedup: float | None = None
    analytic_speedup: float | None = None
    speedup_ratio: float | None = None


# ---------------------------------------------------------------------------------------------------- analytic


def analytic_prefill_flops(
    config: Any, n_text: int, n_visual: int, per_layer_visual: Sequence[int] | None = None
) -> tuple[float, str]:
    """Analytic FLOPs of one LLM prefill (``logits_to_keep=1``) with ``n_text`` text and ``n_visual`` visual
    tokens (optionally a per-layer visual schedule), and where the number comes from.

    Uses ``slimvlm.cost.estimate_cost(config, TokenSchedule(...), lm_head="last", convention="matmul")``: the
    matmuls a CPU forward runs, full n×n attention."""
    from .cost import TokenSchedule, estimate_cost

    schedule = TokenSchedule(n_text, n_visual, tuple(per_layer_visual) if per_layer_visual is not None else None)
    rep = estimate_cost(config, schedule, lm_head="last", convention="matmul")
    return float(rep.lm_prefill_flops), "slimvlm.cost (matmul, lm_head=last)"


# ---------------------------------------------------------------------------------------------------- timing


@dataclass
class _Setting:
    spec: MethodSpec
    slim: Any  # slimvlm.pipeline.SlimVLM
    times: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in ("encode", "reduce", "prefill", "ttft", "decode")})
    info: dict[str, Any] = field(default_factory=dict)

    def pruning(self, model: nn.Module) -> ContextManager:
        """The in-LLM pruning active around prefill and decode: the spec's hook, the method's pruner, or none."""
        if self.spec.in_llm is not None:
            return self.spec.in_llm(model)
        return self.slim.pruner if self.slim.pruner is not None else contextlib.nullcontext()

    def layer_counts(self, n_visual: int, num_layers: int) -> list[int] | None:
        """Visual tokens per LLM layer for ``n_visual`` entering it; None: every layer sees them all."""
        if self.spec.per_layer_visual is not None:
            return list(self.spec.per_layer_visual(n_visual, num_layers))
        if self.slim.pruner is None:
            return None
        return self.slim.info.layer_counts(self.slim.config_, n_visual, num_layers)


def _make_setting(model: nn.Module, spec: MethodSpec) -> _Setting:
    from .pipeline import apply

    return _Setting(spec, apply(model, spec.method, **dict(spec.options)))  # ValueError for bad names / options


def _prepare_timed(st: _Setting, model: nn.Module, inputs: Mapping[str, Any]) -> tuple[Any, float, float]:
    """``(Prepared, encode_s, reduce_s)``: the public :func:`~slimvlm.pipeline.encode`, then ``prepare`` on its
    items."""
    from .pipeline import Prepared, encode

    t0 = time.perf_counter()
    items = encode(model, inputs, st.spec.method)
    t1 = time.perf_counter()
    kwargs = st.slim.prepare(items=items, **inputs)
    t2 = time.perf_counter()
    return Prepared(kwargs, st.slim.last_stats, st.spec.method, dict(st.spec.options)), t1 - t0, t2 - t1


def _decode_kwargs(
    prepared_kwargs: Mapping[str, Any], nxt: torch.Tensor, cache: Any, step: int, mask: Any, cache_name: str
) -> dict:
    kw: dict[str, Any] = {"input_ids": nxt, cache_name: cache, "use_cache": True, "logits_to_keep": 1}
    if mask is not None:
        kw["attention_mask"] = mask
    pos = prepared_kwargs.get("position_ids")
    if pos is not None:  # Qwen 3-D (4, B, L) or 1-D (B, L): extend by +1 per step, as generate does
        kw["position_ids"] = pos[..., -1:] + 1 + step
    return kw


def _one_run(model: nn.Module, st: _Setting, inputs: Mapping[str, Any], decode_steps: int) -> dict[str, Any]:
    prepared, enc, red = _prepare_timed(st, model, inputs)
    kwargs = prepared.kwargs
    dec: list[float] = []
    with st.pruning(model):
        t0 = time.perf_counter()
        out = model(**kwargs, logits_to_keep=1, use_cache=True)
        pre = time.perf_counter() - t0
        cache = cache_from_output(out)
        llm_tokens = int(cache.get_seq_length()) if cache is not None else int(kwargs["input_ids"].shape[-1])
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        mask = kwargs.get("attention_mask")
        cache_name = cache_kwarg(model)
        del out
        for j in range(decode_steps):
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            step_kw = _decode_kwargs(kwargs, nxt, cache, j, mask, cache_name)
            t0 = time.perf_counter()
            o = model(**step_kw)
            dec.append(time.perf_counter() - t0)
            nxt = o.logits[:, -1].argmax(-1, keepdim=True)
            cache = cache_from_output(o)
            del o
    del cache
    return dict(prepared=prepared, encode=enc, reduce=red, prefill=pre, decode=dec, llm_tokens=llm_tokens)


def _med(xs: Sequence[float]) -> float | None:
    return float(statistics.median(xs)) if xs else None


def benchmark(
    model: nn.Module,
    inputs: Mapping[str, Any],
    methods: Iterable[str | tuple[str, Mapping[str, Any]] | MethodSpec],
    *,
    runs: int = 3,
    warmup: int = 1,
    decode_steps: int = 4,
    threads: int | None = 1,
    analytic: bool = True,
    baseline: str | None = "none",
    progress: Callable[[str], None] | None = None,
) -> list[BenchRow]:
    """Time ``model`` on ``inputs`` (processor outputs) for every method; one :class:`BenchRow` per method.

    ``methods``: registry names, ``(name, options)`` pairs or :class:`MethodSpec` (all validated before any
    timing: an unknown name or option raises ValueError). ``runs`` timed rounds after ``warmup`` untimed ones,
    interleaved across methods. ``decode_steps`` single-token steps per run (0: no decode timing).
    ``threads``: torch intra-op threads during the benchmark (restored after; ``None``: leave as is).
    ``analytic``: fill ``analytic_prefill_gflops``. ``baseline``: label of the row :func:`compare` measures
    speed-ups against, if present (``None``: don't)."""
    if runs < 1 or warmup < 0 or decode_steps < 0:
        raise ValueError("need runs >= 1, warmup >= 0, decode_steps >= 0")
    specs = [_spec(m) for m in methods]
    if not specs:
        raise ValueError("no methods given")
    labels = [s.name for s in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"duplicate method labels: {labels}; give MethodSpec(label=...)")
    settings = [_make_setting(model, s) for s in specs]
    say = progress or (lambda _msg: None)
    old_threads = torch.get_num_threads()
    param = next(model.parameters(), None)
    dtype = str(param.dtype).replace("torch.", "") if param is not None else "?"
    device = str(param.device) if param is not None else "cpu"
    try:
        if threads is not None:
            torch.set_num_threads(int(threads))
        n_threads = torch.get_num_threads()
        with torch.no_grad():
            for rnd in range(warmup + runs):
                timed = rnd >= warmup
                for st in settings:
                    r = _one_run(model, st, inputs, decode_steps)
                    say(
                        f"{'run' if timed else 'warm-up'} {rnd - warmup + 1 if timed else rnd + 1} {st.spec.name}: "
                        f"encode {r['encode']:.3f}s reduce {r['reduce']:.3f}s prefill {r['prefill']:.3f}s "
                        f"({r['llm_tokens']} tokens)"
                    )
                    if not timed:
                        continue
                    st.times["encode"].append(r["encode"])
                    st.times["reduce"].append(r["reduce"])
                    st.times["prefill"].append(r["prefill"])
                    st.times["ttft"].append(r["encode"] + r["reduce"] + r["prefill"])
                    st.times["decode"].extend(r["decode"])
                    st.info = dict(prepared=r["prepared"], llm_tokens=r["llm_tokens"])
    finally:
        torch.set_num_threads(old_threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows = [
        _row(model, st, runs, warmup, decode_steps, n_threads, dtype, device, load, analytic) for st in settings
    ]
    if baseline is not None and any(r.label == baseline for r in rows):
        compare(rows, baseline)
    return rows


def _row(model, st: _Setting, runs, warmup, decode_steps, threads, dtype, device, load, analytic) -> BenchRow:
    prepared = st.info["prepared"]
    kw = prepared.kwargs
    ids = kw["input_ids"]
    mask = kw.get("attention_mask")
    real = mask.sum(-1) if mask is not None else torch.full((ids.shape[0],), ids.shape[-1])
    vis_rows = [0] * ids.shape[0]
    before = after = 0
    for s in prepared.stats:
        vis_rows[s.row] += s.tokens_after
        before += s.tokens_before
        after += s.tokens_after
    text_rows = [int(real[b]) - vis_rows[b] for b in range(ids.shape[0])]
    gflops, source = None, ""
    if analytic:
        tc = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        total = 0.0
        for b in range(ids.shape[0]):
            sched = st.layer_counts(vis_rows[b], int(tc.num_hidden_layers))
            f, source = analytic_prefill_flops(model.config, text_rows[b], vis_rows[b], sched)
            total += f
        gflops = total / 1e9
    t = st.times
    return BenchRow(
        label=st.spec.name,
        method=st.spec.method,
        options=dict(st.spec.options),
        model=type(model).__name__,
        batch=int(ids.shape[0]),
        visual_tokens_before=before,
        visual_tokens=after,
        text_tokens=sum(text_rows),
        llm_tokens=int(st.info["llm_tokens"]),
        encode_s=_med(t["encode"]),
        reduce_s=_med(t["reduce"]),
        prefill_s=_med(t["prefill"]),
        ttft_s=_med(t["ttft"]),
        decode_s=_med(t["decode"]),
        encode_min_s=min(t["encode"]),
        reduce_min_s=min(t["reduce"]),
        prefill_min_s=min(t["prefill"]),
        ttft_min_s=min(t["ttft"]),
        decode_min_s=min(t["decode"]) if t["decode"] else None,
        runs=runs,
        warmup=warmup,
        decode_steps=decode_steps,
        threads=threads,
        dtype=dtype,
        device=device,
        split="staged",
        in_llm=st.spec.in_llm is not None or st.slim.pruner is not None,
        torch_version=torch.__version__,
        load_avg_1m=load,
        analytic_prefill_gflops=gflops,
        analytic_source=source,
    )


def compare(rows: list[BenchRow], baseline: str = "none") -> list[BenchRow]:
    """Fill ``prefill_speedup`` (baseline median prefill ÷ this), ``analytic_speedup`` (baseline FLOPs ÷ this)
    and ``speedup_ratio`` (measured ÷ analytic) of every row against the row labelled ``baseline``; in place,
    returns ``rows``."""
    base = next((r for r in rows if r.label == baseline), None)
    if base is None:
        raise ValueError(f"no row labelled {baseline!r}; labels: {[r.label for r in rows]}")
    for r in rows:
        r.prefill_speedup = base.prefill_s / r.prefill_s if r.prefill_s else None
        if base.analytic_prefill_gflops and r.analytic_prefill_gflops:
            r.analytic_speedup = base.analytic_prefill_gflops / r.analytic_prefill_gflops
        if r.prefill_speedup is not None and r.analytic_speedup:
            r.speedup_ratio = r.prefill_speedup / r.analytic_speedup
    return rows


# ---------------------------------------------------------------------------------------------------- I/O

_FIELDS = [f.name for f in dataclasses.fields(BenchRow)]


def to_json(rows: Sequence[BenchRow], path: str | os.PathLike) -> Path:
    """Write the rows as a JSON list of objects."""
    path = Path(path)
    path.write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=1) + "\n")
    return path


def from_json(path: str | os.PathLike) -> list[BenchRow]:
    """Read rows written by :func:`to_json`."""
    return [BenchRow(**d) for d in json.loads(Path(path).read_text())]


def to_csv(rows: Sequence[BenchRow], path: str | os.PathLike) -> Path:
    """Write the rows as CSV, one column per :class:`BenchRow` field (``options`` as JSON, ``None`` empty)."""
    path = Path(path)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=_FIELDS)
        w.writeheader()
        for r in rows:
            d = dataclasses.asdict(r)
            d["options"] = json.dumps(d["options"], sort_keys=True)
            w.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v) for k, v in d.items()})
    return path


def _parse(name: str, text: str) -> Any:
    ftype = str(next(f.type for f in dataclasses.fields(BenchRow) if f.name == name))
    if name == "options":
        return json.loads(text)
    if text == "" and "None" in ftype:
        return None
    if ftype.startswith("bool"):
        return text == "True"
    if ftype.startswith("int"):
        return int(text)
    if ftype.startswith("float"):
        return float(text)
    return text


def from_csv(path: str | os.PathLike) -> list[BenchRow]:
    """Read rows written by :func:`to_csv` (floats round-trip exactly)."""
    with Path(path).open(newline="") as fh:
        return [BenchRow(**{k: _parse(k, v) for k, v in d.items()}) for d in csv.DictReader(fh)]


# ---------------------------------------------------------------------------------------------------- plot


def plot(
    rows: Sequence[BenchRow],
    path: str | os.PathLike,
    *,
    phase: str = "prefill",
    baseline: str = "none",
    config: Any = None,
    title: str | None = None,
) -> Path:
    """Time of ``phase`` (``"prefill"``, ``"ttft"``, ``"encode"``, ``"reduce"``, ``"decode"``; median, with a
    bar down to the minimum) against visual tokens, one marker set per method, beside the analytic line: the
    baseline's measured time scaled by analytic FLOPs (``time_base × FLOPs(m) / FLOPs(base)``). With ``config``
    (the model config) and the baseline's text-token count, the line is drawn for every m in
    ``[1, baseline tokens]``; otherwise through the rows' own analytic points. Returns the path written (``.png``
    added when ``path`` has no suffix). Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, key_min = f"{phase}_s", f"{phase}_min_s"
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    base = next((r for r in rows if r.label == baseline), None)
    methods: dict[str, list[BenchRow]] = {}
    for r in rows:
        methods.setdefault(r.method, []).append(r)
    markers = "osD^v<>ph*X"
    span = max((r.visual_tokens for r in rows), default=1)
    dx = span * 0.006  # methods at the same token count are drawn side by side (offset noted on the axis)
    for i, (m, rs) in enumerate(methods.items()):
        rs = sorted(rs, key=lambda r: r.visual_tokens)
        xs = [r.visual_tokens + (i - (len(methods) - 1) / 2) * dx for r in rs]
        ys = [getattr(r, key) for r in rs]
        lo = [max(y - getattr(r, key_min), 0.0) for y, r in zip(ys, rs)]
        ax.errorbar(xs, ys, yerr=[lo, [0.0] * len(ys)], marker=markers[i % len(markers)], linestyle="-" if len(xs) > 1 else "",
                    capsize=3, label=m + (" (in-LLM)" if any(r.in_llm for r in rs) else ""))
    if base is not None and phase in ("prefill", "ttft") and base.analytic_prefill_gflops:
        fixed = (base.encode_s + base.reduce_s) if phase == "ttft" else 0.0
        t_llm = base.prefill_s
        if config is not None and base.batch == 1:
            xs = sorted(set(list(range(1, base.visual_tokens + 1, max(1, base.visual_tokens // 64))) + [base.visual_tokens]))
            ys = [fixed + t_llm * analytic_prefill_flops(config, base.text_tokens, x)[0] / (base.analytic_prefill_gflops * 1e9)
                  for x in xs]
        else:
            pts = sorted({(r.visual_tokens, r.analytic_prefill_gflops) for r in rows if r.analytic_prefill_gflops and not r.in_llm})
            xs = [p[0] for p in pts]
            ys = [fixed + t_llm * p[1] / base.analytic_prefill_gflops for p in pts]
        ax.plot(xs, ys, "k--", linewidth=1, label=f"analytic FLOPs × {baseline} time")
    ax.set_xlabel("visual tokens entering the LLM" + (" (methods offset slightly for visibility)" if len(methods) > 1 else ""))
    ax.set_ylabel(f"{phase} time (s), median; bar to min")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    if not path.suffix:  # what matplotlib would append: say it in the returned path
        path = path.with_suffix(".png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
