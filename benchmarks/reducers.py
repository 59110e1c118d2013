#!/usr/bin/env python
"""Speed of every token-reduction method in ``slimvlm.methods`` on CPU, one thread, float32.

Shapes:
  * image: N = 576 patch tokens, C = 1024 (LLaVA-1.5, CLIP-L/14-336), batch 1 and 8;
  * video: N = 2048 tokens per item (8 frames x 256 tokens taken as one sequence, grid 32 x 64), batch 1 and 8.
    Temporal methods (``Method.temporal``) read the batch rows as the frames of one video: batch 8 is an
    8-frame video of N tokens per frame.

Inputs are random: features and keys ~ N(0, 1); the [CLS] attention is the softmax of N(0, 0.5^2) logits with
planted outliers (4-9 % of the tokens get +3..+5), so the IQR rule keeps roughly 5-12 % of the tokens, as
PruMerge does on real images (~32-60 of 576); an instruction of 16 token embeddings ~ N(0, 1) of width C
(``text_embeds``). Every registered method gets the signals it accepts from that set.

Baselines timed in the same run:
  1. "official loop": a transcription of the loop structure of the official PruMerge+ code
     (42Shawn/LLaVA-PruMerge ``token_prune_merge_advanced_plus``; /work/shared/docs/algorithms.md §1.3-1.10):
     numpy IQR ratio over the batch, top-k, raster-stride samples de-duplicated by a Python list
     comprehension, then a Python loop over kept tokens (torch.cat of the candidates, one torch.mm for the
     cosine similarities, topk 32, weighted sum) and the extra token. The official code crashes for B > 1
     (torch.cat of the samples), so for B = 8 it runs image by image with the batch-pooled ratio, which is
     what ``mode="faithful"`` does. Its output is checked against ``prumerge_plus(..., mode="faithful")``.
  2. A CLIP-L/14-336-shaped vision tower forward (random weights, sdpa, batch 1, output_hidden_states=True).

Writes ``reducers.csv`` and ``reducers.md`` to ``--out`` (default: benchmarks/results/).

Usage:
  python benchmarks/reducers.py                 # full run (~5-10 min on 2 cores)
  python benchmarks/reducers.py --quick         # smoke test: 2 runs, no tower, no slow official case
  python benchmarks/reducers.py --runs 9 --out /tmp/bench
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

try:
    import slimvlm.methods as sm
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import slimvlm.methods as sm
from slimvlm.bench import cpu_name  # noqa: E402

C = 1024
SHAPES = [  # (label, N, grid passed to grid-aware methods)
    ("image", 576, None),  # 24 x 24: square, the methods infer it
    ("video", 2048, (32, 64)),  # 8 frames x 16 x 16 laid out as one 32 x 64 raster
]
BATCHES = (1, 8)
TEXT_TOKENS = 16  # instruction length given to methods that take text_embeds
TOWER_THRESHOLD_PCT = 2.0
SPEEDUP_THRESHOLD = 10.0
OFFICIAL_BUDGET_S = 120.0  # time budget of one official-loop case; fewer runs beyond it (said in the output)


# ----------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------


def make_inputs(b: int, n: int, seed: int) -> dict:
    """Random features / keys and a [CLS] attention with planted outliers (IQR keeps ~5-12 %)."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(b, n, C, generator=g)
    keys = torch.randn(b, n, C, generator=g)
    logits = torch.randn(b, n, generator=g) * 0.5
    frac = 0.04 + 0.05 * torch.rand(b, generator=g)
    for i in range(b):
        n_out = max(1, int(round(float(frac[i]) * n)))
        idx = torch.randperm(n, generator=g)[:n_out]
        logits[i, idx] += 3.0 + 2.0 * torch.rand(n_out, generator=g)
    cls_attn = logits.softmax(-1)
    text_embeds = torch.randn(b, TEXT_TOKENS, C, generator=g)
    return dict(features=features, cls_attn=cls_attn, keys=keys, text_embeds=text_embeds)


def iqr_stats(cls_attn: torch.Tensor) -> tuple[list[int], float]:
    """Per-image IQR outlier counts and the batch-pooled outlier fraction (the official ratio)."""
    per = (cls_attn.double() > sm.iqr_upper_fence(cls_attn, pooled=False)).sum(1).tolist()
    return per, official_outlier_ratio(cls_attn)


# ----------------------------------------------------------------------------------------------------------
# Baseline 1: transcription of the official PruMerge+ loop (token_prune_merge_advanced_plus, adaptive path)
# ----------------------------------------------------------------------------------------------------------


def official_outlier_ratio(cls_attn: torch.Tensor) -> float:
    """``outlier_dectection``: numpy percentiles over the whole batch flattened, strict upper fence."""
    attn_np = cls_attn.to(dtype=torch.float32).cpu().numpy().flatten()
    q1 = np.percentile(attn_np, 25)
    q3 = np.percentile(attn_np, 75)
    upper_bound = q3 + 1.5 * (q3 - q1)
    outlier_indices = np.where(attn_np > upper_bound)[0]
    return len(outlier_indices) / len(attn_np)


def complement_idx(idx: torch.Tensor, dim: int) -> torch.Tensor:
    """The official ``complement_idx``: scatter 0 at idx, sort, drop the first len(idx) entries."""
    a = torch.arange(dim, device=idx.device)
    ndim = idx.ndim
    dims = idx.shape
    n_idx = dims[-1]
    dims = dims[:-1] + (-1,)
    for _ in range(1, ndim):
        a = a.unsqueeze(0)
    a = a.expand(*dims)
    masked = torch.scatter(a, -1, idx, 0)
    compl, _ = torch.sort(masked, dim=-1, descending=False)
    compl = compl.permute(-1, *tuple(range(ndim - 1)))
    compl = compl[n_idx:].permute(*(tuple(range(1, ndim)) + (0,)))
    return compl


def official_plus_image(image_features, cls_attn, key_wo_cls, reduction_ratio, k=32):
    """One image (batch of 1, as the official code effectively requires), adaptive PruMerge+.

    image_features (1, N, C), cls_attn (1, N), key_wo_cls (1, N, Ck); reduction_ratio = outlier ratio.
    Returns (1, left_tokens + 1, C).
    """
    _, n, c = image_features.shape
    _, idx = torch.topk(cls_attn, int(n * reduction_ratio), dim=1, largest=True)  # sorted, descending

    step_length = int(1 / reduction_ratio)
    arithmetic_sequence = torch.arange(0, n - 1, int(step_length / 3))  # official: arange(0, 575, ...)
    original_tensor_1d = idx.flatten()
    filtered_sequence = torch.tensor([x for x in arithmetic_sequence if x not in original_tensor_1d])
    idx = torch.cat((idx, filtered_sequence.unsqueeze(0)), dim=1)

    index = idx.unsqueeze(-1).expand(-1, -1, c)
    x_others = torch.gather(image_features, dim=1, index=index)
    x_others_attn = torch.gather(cls_attn, dim=1, index=idx)
    key_others = torch.gather(key_wo_cls, dim=1, index=idx.unsqueeze(-1).expand(-1, -1, key_wo_cls.shape[-1]))
    compl = complement_idx(idx, n)
    non_topk = torch.gather(image_features, dim=1, index=compl.unsqueeze(-1).expand(-1, -1, c))
    non_topk_key = torch.gather(key_wo_cls, dim=1, index=compl.unsqueeze(-1).expand(-1, -1, key_wo_cls.shape[-1]))
    non_topk_attn = torch.gather(cls_attn, dim=1, index=compl)

    key_others_norm = torch.nn.functional.normalize(key_others, p=2, dim=-1)
    non_topk_key_norm = torch.nn.functional.normalize(non_topk_key, p=2, dim=-1)

    b, left_tokens, c = x_others.size()
    updated_x_others = torch.zeros_like(x_others)
    for bi in range(b):
        for i in range(left_tokens):
            key_i = key_others_norm[bi, i : i + 1, :]  # (1, Ck)
            rest_x = torch.cat([x_others[bi, :i, :], x_others[bi, i + 1 :, :], non_topk[bi]], dim=0)
            rest_attn = torch.cat([x_others_attn[bi, :i], x_others_attn[bi, i + 1 :], non_topk_attn[bi]], dim=0)
            rest_keys = torch.cat([key_others_norm[bi, :i, :], key_others_norm[bi, i + 1 :, :], non_topk_key_norm[bi]], dim=0)
            cos_sim = torch.mm(key_i, rest_keys.t())  # (1, M + P - 1)
            _, cluster_indices = torch.topk(cos_sim, k=k, dim=1, largest=True)
            cluster_tokens = rest_x[cluster_indices.squeeze(0)]  # (k, C)
            weights = rest_attn[cluster_indices.squeeze(0)].unsqueeze(-1)  # (k, 1)
            weighted_avg = torch.sum(cluster_tokens * weights, dim=0)  # no / sum(weights) (commented out upstream)
            updated_x_others[bi, i, :] = weighted_avg + x_others[bi, i, :]

    extra_one_token = torch.sum(non_topk * non_topk_attn.unsqueeze(-1), dim=1, keepdim=True)
    return torch.cat([updated_x_others, extra_one_token], dim=1)


def official_plus(features, cls_attn, keys):
    """The official adaptive PruMerge+ on a batch: pooled IQR ratio, then image by image (B>1 crashes upstream)."""
    ratio = official_outlier_ratio(cls_attn)
    return [
        official_plus_image(features[i : i + 1], cls_attn[i : i + 1], keys[i : i + 1], ratio)[0]
        for i in range(features.shape[0])
    ]


def compare_to_faithful(official_out: list[torch.Tensor], inp: dict, k: int = 32, tol: float = 1e-4) -> tuple[bool, float, str]:
    """Max |official - slimvlm faithful| over the batch: (strictly within tol, max diff, note).

    Rows beyond ``tol`` are diagnosed: when the k-th and (k+1)-th candidate cosines of that kept token are within
    1e-6 (float64), the two codes legitimately pick different last neighbours, because float32 matmuls with a
    different summation order (one ``torch.mm`` per token vs one batched matmul) round the near-tie differently.
    """
    ours = sm.prumerge_plus(inp["features"], cls_attn=inp["cls_attn"], keys=inp["keys"], mode="faithful")
    worst, bad_rows, total_rows, gaps = 0.0, 0, 0, []
    for i, ref in enumerate(official_out):
        mine, anchors = ours.item(i)
        if mine.shape != ref.shape:
            return False, math.inf, f"item {i}: shape {tuple(mine.shape)} vs official {tuple(ref.shape)}"
        diff = (mine - ref).abs().amax(-1)
        worst = max(worst, float(diff.max()))
        total_rows += diff.numel()
        centres = anchors[:-1]  # the last token is the extra one
        n = inp["features"].shape[1]
        kept = torch.zeros(n, dtype=torch.bool)
        kept[centres] = True
        pruned = torch.arange(n)[~kept]
        kn = torch.nn.functional.normalize(inp["keys"][i].double(), dim=-1)
        for s in (diff > tol).nonzero().flatten().tolist():
            bad_rows += 1
            if s >= len(centres):
                gaps.append(math.inf)  # the extra token differs: no near-tie explains that
                continue
            cand = torch.cat([centres[:s], centres[s + 1 :], pruned])
            v = (kn[centres[s]] @ kn[cand].T).sort(descending=True).values
            gaps.append(float(v[k - 1] - v[k]) if len(v) > k else math.inf)
    if not bad_rows:
        return True, worst, ""
    near = all(g < 1e-6 for g in gaps)
    note = (f"{bad_rows} of {total_rows} rows differ; k-th/(k+1)-th neighbour cosine gap there: "
            f"{', '.join(f'{g:.1e}' for g in gaps[:5])}" + (" -> float32 near-tie(s), not a logic difference" if near
                                                            else " -> NOT explained by near-ties"))
    return False, worst, note


# ----------------------------------------------------------------------------------------------------------
# Baseline 2: CLIP-L/14-336-shaped tower forward
# ----------------------------------------------------------------------------------------------------------


def build_tower():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14,
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = CLIPVisionModel(cfg).eval()
    return model


# ----------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------


def time_fn(fn, runs: int, warmup: int = 1):
    """(median_s, min_s, times, last output) of fn() after ``warmup`` untimed calls, with no_grad."""
    out = None
    with torch.no_grad():
        for _ in range(warmup):
            out = fn()
        gc.collect()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), times, out


@dataclass
class Row:
    method: str
    mode: str
    options: str
    n: int
    batch: int
    median_ms: float
    min_ms: float
    runs: int
    tokens_kept_mean: float | None
    pct_of_tower: float | None = None
    speedup: float | None = None
    note: str = ""
    c: int = C
    extra: dict = field(default_factory=dict)


def method_variants() -> list[tuple[str, dict]]:
    """Every registered method with its defaults, plus PruMerge/PruMerge+ faithful and fixed keep=144."""
    variants = [(name, {}) for name in sm.available()]
    out = []
    for name, opts in variants:
        out.append((name, opts))
        if name == "prumerge":
            out.append((name, {"mode": "faithful"}))
        if name == "prumerge+":
            out.append((name, {"mode": "faithful"}))
            out.append((name, {"mode": "faithful", "keep": 144}))
    return out


def effective_mode(name: str, opts: dict) -> str:
    cfg = sm.make_config(name, **opts)
    return str(getattr(cfg, "mode", "-"))


def fmt_opts(opts: dict) -> str:
    rest = {k: v for k, v in opts.items() if k != "mode"}
    return " ".join(f"{k}={v}" for k, v in rest.items()) or "defaults"


def fmt(x, spec=".2f", none="-"):
    return none if x is None else format(x, spec)


# ----------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------


def source_fingerprint() -> str:
    """Short hash of slimvlm/methods/*.py, to tell which version of the code was timed."""
    import hashlib

    h = hashlib.sha1()
    for f in sorted(Path(sm.__file__).parent.glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:12]


def load_avg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=None, help="timed runs per case (default 7; --quick: 2)")
    ap.add_argument("--tower-runs", type=int, default=3, help="timed runs of the tower forward (default 3)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results", help="output folder")
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 runs, skip the tower and the slowest official case")
    args = ap.parse_args(argv)
    runs = args.runs if args.runs is not None else (2 if args.quick else 7)
    if not args.quick and runs < 5:
        print(f"note: --runs {runs} < 5; the medians are less reliable than the default 7")

    torch.set_num_threads(1)
    t_start = time.perf_counter()
    threads = torch.get_num_threads()
    print(f"slimvlm reducer benchmark | torch {torch.__version__} | threads {threads} | float32 | {cpu_name()}")
    print(f"runs per case: {runs} (median, after 1 warm-up); slimvlm.methods fingerprint {source_fingerprint()}"
          + (" | QUICK MODE" if args.quick else ""))
    load_start = load_avg()
    print(f"load average at start: {load_start} (other processes on this machine distort the timings)")

    rows: list[Row] = []
    notes: list[str] = []
    checks: list[tuple[str, bool | None, str]] = []

    # --- tower forward -------------------------------------------------------------------------------------
    tower_ms = None
    if not args.quick:
        t0 = time.perf_counter()
        model = build_tower()
        pixels = torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(1))
        print(f"tower built in {time.perf_counter() - t0:.1f} s; timing {args.tower_runs} forwards ...", flush=True)
        med, mn, times, out = time_fn(lambda: model(pixel_values=pixels, output_hidden_states=True), args.tower_runs)
        assert len(out.hidden_states) == 25 and out.hidden_states[-2].shape == (1, 577, 1024)
        tower_ms = med * 1e3
        rows.append(Row("clip-l14-336 tower forward", "sdpa", "output_hidden_states=True", 577, 1, med * 1e3, mn * 1e3,
                        len(times), None, 100.0))
        print(f"  tower forward: median {med * 1e3:.0f} ms, min {mn * 1e3:.0f} ms ({', '.join(f'{t:.2f}' for t in times)} s)")
        del model, out
        gc.collect()
    else:
        notes.append("quick mode: tower forward skipped (no % of tower, tower check skipped)")

    # --- methods and the official loop ----------------------------------------------------------------------
    variants = method_variants()
    official_ms: dict[tuple[int, int], float] = {}
    for label, n, grid in SHAPES:
        for b in BATCHES:
            inp = make_inputs(b, n, seed=1000 * n + b)
            per, pooled = iqr_stats(inp["cls_attn"])
            print(f"\n[{label}] N={n} C={C} batch={b}: IQR outliers per item {per} "
                  f"({100 * sum(per) / (b * n):.1f} %); pooled ratio {100 * pooled:.1f} %", flush=True)
            signals = dict(cls_attn=inp["cls_attn"], keys=inp["keys"], text_embeds=inp["text_embeds"], grid=grid)
            case_rows = []
            for name, opts in variants:
                fn = lambda: sm.reduce(name, inp["features"], signals=signals, **opts)  # noqa: E731
                med, mn, times, red = time_fn(fn, runs)
                row = Row(name, effective_mode(name, opts), fmt_opts(opts), n, b, med * 1e3, mn * 1e3, len(times),
                          float(red.lengths.float().mean()))
                if n == 576 and b == 1 and tower_ms:
                    row.pct_of_tower = 100 * row.median_ms / tower_ms
                case_rows.append(row)
                print(f"  {name:<11} {row.mode:<9} {row.options:<9} median {row.median_ms:9.2f} ms  "
                      f"min {row.min_ms:9.2f} ms  kept {row.tokens_kept_mean:7.1f}", flush=True)

            # official loop
            if args.quick and n == 2048 and b == 8:
                notes.append(f"quick mode: official loop at N={n} batch {b} skipped")
                rows.extend(case_rows)
                continue
            t0 = time.perf_counter()
            with torch.no_grad():
                ref = official_plus(inp["features"], inp["cls_attn"], inp["keys"])  # warm-up, and the output to check
            warm_s = time.perf_counter() - t0
            ok, diff, why = compare_to_faithful(ref, inp)
            what = f"official loop == prumerge+ faithful, N={n} batch {b}: max |diff| {diff:.2e} (tol 1e-4)"
            print(f"  {'PASS' if ok else 'FAIL'}: {what}" + (f" ({why})" if why else ""))
            checks.append((what, ok, why))
            if b == 1:
                assert ok, f"{what} {why}"  # the baseline must compute the same thing as our faithful mode
            official_fn = lambda: official_plus(inp["features"], inp["cls_attn"], inp["keys"])  # noqa: E731
            if warm_s * runs <= OFFICIAL_BUDGET_S:
                med, mn, times, _ = time_fn(official_fn, runs, warmup=0)  # the checked run was the warm-up
            else:
                # A run of several seconds needs no warm-up: the checked run counts as the first timed run, and
                # the number of runs is cut to fit the budget.
                o_runs = max(1, min(runs, int(OFFICIAL_BUDGET_S // warm_s)))
                _, _, more, _ = time_fn(official_fn, o_runs - 1, warmup=0) if o_runs > 1 else (0, 0, [], None)
                times = [warm_s] + more
                med, mn = statistics.median(times), min(times)
                msg = (f"official loop at N={n} batch {b}: {len(times)} timed runs instead of {runs} (one run takes "
                       f"~{warm_s:.0f} s; budget {OFFICIAL_BUDGET_S:.0f} s; the first, checked run is counted, "
                       f"no separate warm-up)")
                notes.append(msg)
                print(f"  note: {msg}")
            official_ms[(n, b)] = med * 1e3
            orow = Row("official loop (prumerge+)", "faithful", "transcription", n, b, med * 1e3, mn * 1e3, len(times),
                       float(np.mean([r.shape[0] for r in ref])), speedup=1.0)
            if n == 576 and b == 1 and tower_ms:
                orow.pct_of_tower = 100 * orow.median_ms / tower_ms
            print(f"  {'official loop':<11} {'faithful':<9} {'-':<9} median {orow.median_ms:9.2f} ms  "
                  f"min {orow.min_ms:9.2f} ms  kept {orow.tokens_kept_mean:7.1f}", flush=True)
            for r in case_rows:
                if r.method == "prumerge+" and r.options == "defaults":
                    r.speedup = orow.median_ms / r.median_ms
            case_rows.append(orow)
            rows.extend(case_rows)

    # --- checks ------------------------------------------------------------------------------------------------
    def find(method, mode, n, b, options="defaults"):
        for r in rows:
            if (r.method, r.mode, r.options, r.n, r.batch) == (method, mode, options, n, b):
                return r
        return None

    for mode in ("clean", "faithful"):
        r = find("prumerge+", mode, 576, 1)
        if tower_ms is None:
            checks.append((f"prumerge+ ({mode}) N=576 batch 1 <= {TOWER_THRESHOLD_PCT:.0f} % of tower forward", None,
                           "skipped (no tower in quick mode)"))
        else:
            ok = r.pct_of_tower <= TOWER_THRESHOLD_PCT
            checks.append((f"prumerge+ ({mode}) N=576 batch 1 <= {TOWER_THRESHOLD_PCT:.0f} % of tower forward", ok,
                           f"{r.median_ms:.2f} ms = {r.pct_of_tower:.3f} % of {tower_ms:.0f} ms"))
    for n in (576, 2048):
        for mode in ("faithful", "clean"):
            r = find("prumerge+", mode, n, 8)
            label = f"prumerge+ ({mode}) N={n} batch 8 >= {SPEEDUP_THRESHOLD:.0f}x faster than the official loop"
            if (n, 8) not in official_ms:
                checks.append((label, None, "skipped (official loop not timed)"))
                continue
            ok = r.speedup >= SPEEDUP_THRESHOLD
            o_min = find("official loop (prumerge+)", "faithful", n, 8, "transcription").min_ms
            checks.append((label, ok, f"medians {official_ms[(n, 8)]:.1f} ms / {r.median_ms:.2f} ms = {r.speedup:.1f}x; "
                                      f"mins {o_min:.1f} / {r.min_ms:.2f} = {o_min / r.min_ms:.1f}x"))

    # --- report --------------------------------------------------------------------------------------------
    header = ["method", "mode", "options", "N", "batch", "median ms", "min ms", "runs", "kept", "% tower", "x vs official"]
    table = [[r.method, r.mode, r.options, str(r.n), str(r.batch), fmt(r.median_ms), fmt(r.min_ms), str(r.runs),
              fmt(r.tokens_kept_mean, ".1f"), fmt(r.pct_of_tower, ".3f"), fmt(r.speedup, ".1f")] for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
    print("\n" + "  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)))
    print("\nChecks:")
    check_lines = []
    for what, ok, detail in checks:
        tag = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
        line = f"{tag}: {what}" + (f" ({detail})" if detail else "")
        check_lines.append(line)
        print("  " + line)
    for note in notes:
        print("  note: " + note)
    elapsed = time.perf_counter() - t_start
    load_end = load_avg()
    print(f"\ntotal time {elapsed:.0f} s; load average at start {load_start}, at end {load_end}")

    args.out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = args.out / "reducers.csv", args.out / "reducers.md"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "mode", "options", "N", "C", "batch", "median_ms", "min_ms", "runs", "tokens_kept_mean",
                    "pct_of_tower_forward", "speedup_vs_official_loop"])
        for r in rows:
            w.writerow([r.method, r.mode, r.options, r.n, r.c, r.batch, f"{r.median_ms:.4f}", f"{r.min_ms:.4f}", r.runs,
                        "" if r.tokens_kept_mean is None else f"{r.tokens_kept_mean:.2f}",
                        "" if r.pct_of_tower is None else f"{r.pct_of_tower:.4f}",
                        "" if r.speedup is None else f"{r.speedup:.2f}"])
    md = [
        "# Token-reducer speed (CPU)",
        "",
        f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- torch {torch.__version__}, numpy {np.__version__}, Python {platform.python_version()}",
        f"- slimvlm.methods source fingerprint (sha1 of methods/*.py): {source_fingerprint()}",
        f"- threads: {threads} (`torch.set_num_threads(1)`), float32, `torch.no_grad()`",
        f"- machine: {cpu_name()}, {__import__('os').cpu_count()} logical CPUs, {platform.system()} {platform.machine()}",
        f"- timing: median of {runs} runs after 1 warm-up (`time.perf_counter`); tower: median of "
        f"{args.tower_runs}" + (" (skipped: --quick)" if tower_ms is None else ""),
        "- inputs: random features and keys (B, N, 1024); [CLS] attention = softmax of random logits with "
        "planted outliers (IQR keeps ~5-12 %); N=576 square grid, N=2048 grid=(32, 64) (8 frames x 256 tokens)",
        "- temporal methods (`Method.temporal`: " + (", ".join(m for m in sm.available() if sm.get(m).temporal) or "none")
        + "): the batch rows are the frames of ONE video, so batch 8 is an 8-frame video of N tokens per frame "
        "and batch 1 a single frame (an image)",
        "- % tower: time at N=576 batch 1 as a share of one CLIP-L/14-336-shaped tower forward (random weights, "
        "sdpa, batch 1, output_hidden_states=True)",
        "- x vs official: official-loop time / method time (PruMerge+ adaptive rows only); the official loop is a "
        "transcription of token_prune_merge_advanced_plus (image by image for B>1 with the batch-pooled ratio)",
        f"- total benchmark time: {elapsed:.0f} s; load average (1, 5, 15 min) at start {load_start}, at end "
        f"{load_end} (a load above ~1 means other processes shared the 2 cores, which inflates the timings)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    md += ["| " + " | ".join(t) + " |" for t in table]
    md += ["", "## Checks", ""] + [f"- {line}" for line in check_lines]
    if notes:
        md += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    md_path.write_text("\n".join(md) + "\n")
    print(f"wrote {csv_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
