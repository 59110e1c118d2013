"""In-LLM pruning speed: does removing tokens inside the LLM give the speed-up the FLOPs promise?

Same LLaVA-shaped model as ``prefill.py`` (CLIP-L/14-336-shaped tower + Qwen2-0.5B-shaped LM, random weights,
float32, one thread, 576 visual + 40 text tokens). All 576 visual tokens enter the LLM (no pre-LLM merge:
``aim`` runs with ``ratio=1.0``), so only the in-LLM pruning differs between rows:

- ``none``: no pruning;
- ``aim (mask)``: AIM's progressive PageRank pruning as the official code does it (dropped tokens masked);
- ``aim (remove)``: the same decisions, tokens really removed (shorter hidden states and KV caches);
- ``fastv (remove)``: FastV K=2, R=0.5.

For each: median LLM-prefill time (≥ 3 runs after a warm-up), the measured time ratio none / row, and the
analytic FLOPs ratio from ``slimvlm.cost`` for the schedule the pruner really runs (mask mode: the full length,
so 1.0). Targets: remove ≥ 0.85 × analytic; mask ≈ 1.0 (that is the official code's gain).

Writes ``inllm.csv`` and ``inllm.md`` to ``--out`` (default ``benchmarks/results/``).

Usage:
  python benchmarks/inllm.py                     # full run (~5 min on 2 shared cores)
  python benchmarks/inllm.py --quick --layers 2  # plumbing smoke test; numbers meaningless
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
try:
    import slimvlm  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from prefill import build_inputs, build_model  # noqa: E402  (same model and inputs)

from slimvlm import bench  # noqa: E402
from slimvlm.bench import MethodSpec  # noqa: E402

TARGET_REMOVE = 0.85

SETTINGS = [
    MethodSpec("none"),
    MethodSpec("aim", {"ratio": 1.0, "prune_mode": "mask"}, label="aim (mask)"),
    MethodSpec("aim", {"ratio": 1.0, "prune_mode": "remove"}, label="aim (remove)"),
    MethodSpec("fastv", {"k": 2, "r": 0.5, "prune_mode": "remove"}, label="fastv (remove)"),
]


def verdict(row) -> str:
    if row.label == "none":
        return "baseline"
    if row.options.get("prune_mode") == "mask":
        return "≈1.0 expected" if abs(row.prefill_speedup - 1.0) <= 0.15 else "FAIL (mask should be ≈1.0)"
    return "PASS" if row.speedup_ratio is not None and row.speedup_ratio >= TARGET_REMOVE else "FAIL"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--layers", type=int, help="fewer layers in both towers (smoke tests only)")
    ap.add_argument("--quick", action="store_true", help="1 run, no warm-up (smoke test)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.warmup = 1, 0
    args.out.mkdir(parents=True, exist_ok=True)
    load_start = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    t0 = time.perf_counter()
    model = build_model(args.layers)
    print(f"model built in {time.perf_counter() - t0:.1f} s", flush=True)
    inputs = build_inputs(model)
    rows = bench.benchmark(model, inputs, SETTINGS, runs=args.runs, warmup=args.warmup, decode_steps=2,
                           threads=1, progress=lambda s: print(s, flush=True))
    # mask mode runs every layer at full length: its analytic FLOPs are the baseline's
    base = next(r for r in rows if r.label == "none")
    for r in rows:
        if r.options.get("prune_mode") == "mask":
            r.analytic_prefill_gflops = base.analytic_prefill_gflops
    bench.compare(rows, "none")
    bench.to_csv(rows, args.out / "inllm.csv")
    load_end = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        "# In-LLM pruning: measured vs analytic prefill speed-up (CPU)",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; torch {torch.__version__}; "
        f"{bench.cpu_name()}; 1 thread, float32, sdpa",
        "- model: LLaVA, CLIP-L/14-336-shaped tower + Qwen2-0.5B-shaped LM (24 layers), random weights; "
        "576 visual + 40 text tokens, all entering the LLM",
        f"- medians of {args.runs} runs after {args.warmup} warm-up; load average start {load_start}, end {load_end}",
        f"- targets: remove ≥ {TARGET_REMOVE} × analytic FLOPs ratio; mask ≈ 1.0",
        "",
        "| setting | LLM prefill s (median / min) | measured speed-up | analytic FLOPs ratio | measured ÷ analytic | check |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.label} | {r.prefill_s:.3f} / {r.prefill_min_s:.3f} | {r.prefill_speedup:.2f}× | "
            f"{r.analytic_speedup:.2f}× | {r.speedup_ratio:.2f} | {verdict(r)} |"
        )
    md = "\n".join(lines) + "\n"
    (args.out / "inllm.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
