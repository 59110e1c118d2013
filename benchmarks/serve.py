#!/usr/bin/env python
"""Serving throughput and time to first token with slimvlm in front of vLLM (CPU), visual tokens 576 → 144 / 64 / 32.

Run in the serving environment (``bash scripts/install_serve.sh``):

  .venv-serve/bin/python benchmarks/serve.py                 # full run (~10-15 min on 2 shared cores)
  .venv-serve/bin/python benchmarks/serve.py --quick --out /tmp/serve   # plumbing smoke test (~2 min)

Model: ``LlavaForConditionalGeneration`` with random weights (N(0, 0.02), norms 1, biases 0), saved to a temporary
directory and served by one :class:`slimvlm.integrations.vllm.Engine`:
  * LM: Qwen2-0.5B shape (hidden 896, MLP 4864, 24 layers, 14 heads, 2 KV heads of 64, vocab 151936, tied);
  * vision tower: CLIP-L/14-336 width (hidden 1024, MLP 4096, 16 heads, 336 px, patch 14 → 576 patches) but only
    ``--tower-layers`` layers (default 2, real: 24): the full tower takes ~5 s per image here (bf16, 2 busy cores),
    which would not fit the run, and the tower is timed apart from the LLM anyway;
  * bfloat16 everywhere (vLLM's CPU path; the CPU has AVX512-BF16), ``enforce_eager``, prefix caching off (the
    rounds repeat the same prompts), the tiny test tokenizer (token ids only; ``detokenize=False``).

Requests: ``--requests`` (default 32) prompts, each one 336×336 noise image and ~45 text tokens (different per
request), submitted together to ``engine.llm.generate``. Settings: ``none`` (576 visual tokens) and PruMerge+ with a
fixed budget ``keep=144 / 64 / 32`` (every token entering the LLM counted, its summary token too).

For each setting: the torch side once (``engine.prompts``: image processor, tower, projector, reducer), then
``--rounds`` interleaved rounds of the LLM side on the same prompts:
  * generate: all requests at once, ``max_tokens=--decode`` (default 8, ``ignore_eos``); from vLLM's per-request
    metrics also the prefill phase (first request queued → last first token) and each request's TTFT;
  * TTFT alone: one request by itself, ``max_tokens=1``.
Reported (medians over rounds): LLM seconds (wall, and CPU seconds of the process), requests/s, prompt tokens/s,
TTFT under load (median over requests) and alone; LLM-side speed-ups vs ``none`` next to the prompt-length ratio. Check: speed-up of the generate run and of
the prefill phase at 144 tokens ≥ 0.9 × the prompt-length ratio.

Writes ``serve.csv`` and ``serve.md`` to ``--out`` (default ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core in this process: timings without IPC

import numpy as np
import torch

TARGET = 0.9
BUDGETS = (144, 64, 32)
QUESTIONS = ("Describe the image in detail.", "How many people are in the picture?", "What color is the sky?",
             "Is there a dog in the photo?")


def build_checkpoint(path: Path, tower_layers: int, lm_layers: int) -> Path:
    """A random-weight LLaVA (CLIP-L/14-336 width, Qwen2-0.5B-shaped LM) saved for vLLM, with a processor."""
    import transformers as tf
    from transformers.initialization import no_init_weights

    from slimvlm.integrations.vllm.testing import CHAT_TEMPLATE, save_servable
    from slimvlm.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    vision = tf.CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=tower_layers, num_attention_heads=16,
        image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
    )
    text = tf.Qwen2Config(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=lm_layers, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6}, rms_norm_eps=1e-6,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    cfg = tf.LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
        tie_word_embeddings=True,
    )
    with no_init_weights():
        model = tf.LlavaForConditionalGeneration._from_config(cfg, dtype=torch.float32)
    model.tie_weights()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    model = model.to(torch.bfloat16).eval()
    crop = {"height": 336, "width": 336}
    image = tf.CLIPImageProcessor(size={"shortest_edge": 336}, crop_size=crop)
    processor = tf.LlavaProcessor(image_processor=image, tokenizer=tok, patch_size=14, chat_template=CHAT_TEMPLATE,
                                  vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return save_servable(model, processor, path)


def make_requests(n: int, options: dict) -> list:
    from PIL import Image

    from slimvlm.integrations.vllm import Request

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 256, (336, 336, 3), dtype=np.uint8))
        prompt = f"USER: <image>\nRequest {i}. {QUESTIONS[i % len(QUESTIONS)]} ASSISTANT:"
        out.append(Request(prompt, [img], **options))
    return out


def settings(budgets) -> list[tuple[str, int, dict]]:
    rows = [("none", 576, {"method": "none"})]
    rows += [(f"prumerge+ keep={k}", k, {"method": "prumerge+", "options": {"keep": k}}) for k in budgets]
    return rows


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:.0f}"


def markdown(rows: list[dict], meta: dict, checks: list[str]) -> str:
    cols = ["setting", "visual_tokens", "prompt_tokens_mean", "tower_s_per_image",
            "generate_s", "generate_req_per_s", "generate_prompt_tok_per_s", "prefill_s", "prefill_prompt_tok_per_s",
            "ttft_load_median_s", "ttft_alone_s", "prompt_len_ratio", "prefill_speedup", "generate_speedup",
            "generate_cpu_s", "generate_cpu_speedup", "e2e_req_per_s"]
    lines = [
        "# slimvlm + vLLM serving benchmark (CPU)", "",
        f"Run {meta['date']} · `{meta['command']}` · {meta['wall']:.0f} s", "",
        f"vLLM {meta['vllm']}, torch {meta['torch']}, transformers {meta['transformers']}, {meta['cpu']} "
        f"({os.cpu_count()} cores), load average {meta['load0']} at start, {meta['load1']} at the end.", "",
        f"Model: LLaVA, Qwen2-0.5B-shaped LM ({meta['lm_layers']} layers), CLIP-L/14-336-width tower with "
        f"{meta['tower_layers']} layers (real: 24), random weights, bfloat16. {meta['requests']} requests of one 336×336 "
        f"image + ~45 text tokens; generate = {meta['decode']} new tokens; medians of {meta['rounds']} interleaved rounds.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in rows:
        lines.append("| " + " | ".join(r[c] if isinstance(r[c], str) else _fmt(r[c]) for c in cols) + " |")
    lines += ["", f"Columns: `generate_*` = the {meta['requests']} requests submitted at once, `max_tokens={meta['decode']}` "
              "(LLM side only: vLLM's `generate` on the prepared prompts); `prefill_s` = from the first request queued to "
              "the last first token in that run; `*_prompt_tok_per_s` = reduced prompt tokens per second; "
              "`ttft_load` = vLLM's first-token latency per request with the whole batch submitted at once (median over "
              "requests); `ttft_alone` = one request alone; `tower_s_per_image` = image processor + tower + projector + "
              "reducer (torch), per image; `e2e_req_per_s` = requests / (tower + generate); speed-ups are vs `none`; "
              "`prompt_len_ratio` = mean prompt length of `none` / of the setting; `generate_cpu_s` = CPU seconds of this "
              "process (all threads; the engine core runs in it) during the generate run, less sensitive than wall time "
              "to other processes on a shared machine.", "", "## Checks", ""]
    lines += [f"- {c}" for c in checks]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--decode", type=int, default=8, help="new tokens in the generate runs (default 8)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tower-layers", type=int, default=2)
    parser.add_argument("--lm-layers", type=int, default=24)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--quick", action="store_true", help="8 requests, 1 round, 4 LM layers: plumbing only")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.rounds, args.lm_layers = 8, 1, 4
    t_start = time.perf_counter()
    load0 = os.getloadavg()[0]

    import transformers
    import vllm
    from vllm import SamplingParams

    from slimvlm.integrations.vllm import Engine

    first = SamplingParams(temperature=0, max_tokens=1, detokenize=False)
    generate = SamplingParams(temperature=0, max_tokens=args.decode, ignore_eos=True, detokenize=False)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="slimvlm-serve-bench-") as tmp:
        print(f"building the checkpoint ({args.lm_layers} LM layers, {args.tower_layers} tower layers) ...", flush=True)
        ckpt = build_checkpoint(Path(tmp) / "llava", args.tower_layers, args.lm_layers)
        engine = Engine(str(ckpt), "prumerge+", dtype="bfloat16", max_model_len=2048, enforce_eager=True,
                        enable_prefix_caching=False, disable_log_stats=False, kv_cache_memory_bytes=2 << 30,
                        max_num_seqs=max(args.requests, 8))
        llm = engine.llm
        cases = []
        for name, visual, req_opts in settings(BUDGETS):
            requests = make_requests(args.requests, req_opts)
            tower_s, prompts = timed(lambda: engine.prompts(requests))
            kept = {s.tokens_after for stats in engine.last_stats for s in stats}
            if kept != {visual}:
                raise RuntimeError(f"{name}: expected {visual} visual tokens per image, got {sorted(kept)}")
            print(f"{name}: torch side {tower_s:.1f} s for {args.requests} images", flush=True)
            cases.append(dict(name=name, visual=visual, prompts=prompts, tower_s=tower_s, prefill=[], generate=[],
                              generate_cpu=[], alone=[], ttft=[], prompt_tokens=[]))
        llm.generate(cases[0]["prompts"][:2], first, use_tqdm=False)  # warm-up
        for rnd in range(args.rounds):
            for c in cases:
                cpu0 = time.process_time()
                t_gen, outs = timed(lambda: llm.generate(c["prompts"], generate, use_tqdm=False))
                c["generate_cpu"].append(time.process_time() - cpu0)
                t_one, _ = timed(lambda: llm.generate(c["prompts"][:1], first, use_tqdm=False))
                start = min(o.metrics.queued_ts for o in outs)  # engine-core clock, as first_token_ts
                c["generate"].append(t_gen)
                c["prefill"].append(max(o.metrics.first_token_ts for o in outs) - start)
                c["ttft"].append(statistics.median(o.metrics.first_token_latency for o in outs))
                c["alone"].append(t_one)
                c["prompt_tokens"] = [len(o.prompt_token_ids) for o in outs]
                print(f"round {rnd + 1}/{args.rounds} {c['name']}: generate {t_gen:.2f} s (last first token after "
                      f"{c['prefill'][-1]:.2f} s), one request alone {t_one:.2f} s", flush=True)
        engine.close()

    base = cases[0]
    base_len = statistics.mean(base["prompt_tokens"])
    for c in cases:
        n = args.requests
        pre, gen = statistics.median(c["prefill"]), statistics.median(c["generate"])
        tokens = sum(c["prompt_tokens"])
        rows.append({
            "setting": c["name"], "visual_tokens": c["visual"], "prompt_tokens_mean": statistics.mean(c["prompt_tokens"]),
            "tower_s_per_image": c["tower_s"] / n,
            "prefill_s": pre, "prefill_prompt_tok_per_s": tokens / pre,
            "generate_s": gen, "generate_req_per_s": n / gen, "generate_prompt_tok_per_s": tokens / gen,
            "ttft_load_median_s": statistics.median(c["ttft"]), "ttft_alone_s": statistics.median(c["alone"]),
            "prompt_len_ratio": base_len / statistics.mean(c["prompt_tokens"]),
            "prefill_speedup": statistics.median(base["prefill"]) / pre,
            "generate_speedup": statistics.median(base["generate"]) / gen,
            "generate_cpu_s": statistics.median(c["generate_cpu"]),
            "generate_cpu_speedup": statistics.median(base["generate_cpu"]) / statistics.median(c["generate_cpu"]),
            "e2e_req_per_s": n / (c["tower_s"] + gen),
        })
    checks = []
    for r in rows:
        if r["visual_tokens"] != 144:
            continue
        for kind in ("generate", "prefill"):
            need = TARGET * r["prompt_len_ratio"]
            ok = r[f"{kind}_speedup"] >= need
            checks.append(f"{'PASS' if ok else 'FAIL'}: LLM-side {kind} speed-up at 144 tokens {r[f'{kind}_speedup']:.2f}x "
                          f">= {TARGET} x prompt-length ratio {r['prompt_len_ratio']:.2f} = {need:.2f}")
    for r in rows:
        if r["visual_tokens"] == 144:
            checks.append(f"(not a check) CPU-time speed-up of the generate run at 144 tokens: "
                          f"{r['generate_cpu_speedup']:.2f}x")
    for c in checks:
        print(c)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "serve.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    meta = dict(date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), command="python benchmarks/serve.py " + " ".join(argv or sys.argv[1:]),
                wall=time.perf_counter() - t_start, vllm=vllm.__version__, torch=torch.__version__,
                transformers=transformers.__version__, cpu=cpu, load0=f"{load0:.1f}", load1=f"{os.getloadavg()[0]:.1f}",
                lm_layers=args.lm_layers, tower_layers=args.tower_layers, requests=args.requests, decode=args.decode,
                rounds=args.rounds)
    (out / "serve.md").write_text(markdown(rows, meta, checks))
    print(markdown(rows, meta, checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
