# Would larger digits make the mean of a digit's patches readable? Scenes from the generator with signs drawn
# LO..HI px and their digit RATIO of the sign (shipped: 48..96, 0.6), tower run here on N_TRAIN training-range
# and N_VAL validation-range seeds (seeds 5e6+ / 1.5e7+, not the cached ones); linear / MLP probes on the mean of
# the digit's patches, the centre patch, the 3 x 3 block around the centre.
# Usage: probe_digit_size.py LO HI RATIO N_TRAIN N_VAL
import sys
import time
import torch
from slimvlm.demo import scenes
from slimvlm.demo.train import box_patches, cache_features
from digit_probe import patch_at as P, probe
torch.set_num_threads(1)
lo, hi, ratio, n_train, n_val = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
shipped_size, shipped_box = scenes._sample_size, scenes._digit_box


def sample_size(rng, kind):
    return int(rng.integers(lo, hi + 1)) if kind == "sign" else shipped_size(rng, kind)


def digit_box(kind, size):
    if kind != "sign":
        return shipped_box(kind, size)
    dh = int(round(ratio * size))
    return max(6, int(round(0.56 * dh))), dh


scenes._sample_size, scenes._digit_box = sample_size, digit_box  # module globals: make_scene picks them up


def data(seeds):
    feats, _ = cache_features(seeds, None, progress=False)
    X, y, heights = {"mean": [], "centre": [], "3x3": []}, [], []
    for i, s in enumerate(seeds):
        f = feats[i].float()
        for o in scenes.make_scene(s).objects:
            if o.digit is None:
                continue
            x0, y0, x1, y1 = o.digit_bbox
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            X["mean"].append(f[box_patches(o.digit_bbox)].mean(0))
            X["centre"].append(f[P(cx, cy)])
            X["3x3"].append(f[[P(cx + dx, cy + dy) for dy in (-14, 0, 14) for dx in (-14, 0, 14)]].flatten())
            y.append(o.digit)
            heights.append(y1 - y0)
    return {k: torch.stack(v) for k, v in X.items()}, torch.tensor(y), heights


t = time.time()
Xt, yt, ht = data(list(range(5_000_000, 5_000_000 + n_train)))
Xv, yv, _ = data(list(range(15_000_000, 15_000_000 + n_val)))
print(f"signs {lo}-{hi} px, digit {ratio} of the sign: {len(yt)} train / {len(yv)} val digits, "
      f"heights {min(ht)}-{max(ht)} px ({time.time() - t:.0f} s)")
for k in Xt:
    mlp = f" mlp {probe(Xt[k], yt, Xv[k], yv, 'mlp')[0]:.2f}" if k != "3x3" else ""
    print(f"  {k}: linear {probe(Xt[k], yt, Xv[k], yv)[0]:.2f}{mlp}")
