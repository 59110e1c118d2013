# digit probes on the cached layer -2 features (cached.py): what each way of reading a digit's patches keeps.
# mean of the digit's patches, the patch under its centre, the 1-4 under a patch-sized square at the centre, a 3 x 3
# grid inside the digit box, the 2 x 2 / 3 x 3 blocks around the centre (concatenated); linear probe (+ MLP for the first four)
import torch
from slimvlm.demo import scenes
from slimvlm.demo.train import box_patches
torch.set_num_threads(2)
from cached import load
from digit_probe import patch_at as P, probe
(tf, _), (vf, _) = load()
FR = (1 / 6, 1 / 2, 5 / 6)
def data(feats, split):
    out = {"mean": [], "centre": [], "c2": [], "grid": [], "2x2": [], "3x3c": []}; y = []
    for i, s in enumerate(scenes.split_seeds(split, feats.shape[0])):
        for o in scenes.make_scene(s).objects:
            if o.digit is None: continue
            x0, y0, x1, y1 = o.digit_bbox
            f = feats[i].float()
            out["mean"].append(f[box_patches(o.digit_bbox)].mean(0))
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            out["centre"].append(f[P(cx, cy)])
            out["c2"].append(f[box_patches((cx - 7, cy - 7, cx + 7, cy + 7))].mean(0))
            gs = [P(x0 + fx * (x1 - x0), y0 + fy * (y1 - y0)) for fy in FR for fx in FR]
            out["grid"].append(f[gs].flatten())
            fx, fy = (x0 + x1) / 2, (y0 + y1) / 2  # the blocks around the exact centre
            out["2x2"].append(f[[P(fx - 7, fy - 7), P(fx + 7, fy - 7), P(fx - 7, fy + 7), P(fx + 7, fy + 7)]].flatten())
            out["3x3c"].append(f[[P(fx + dx, fy + dy) for dy in (-14, 0, 14) for dx in (-14, 0, 14)]].flatten())
            y.append(o.digit)
    return {k: torch.stack(v) for k, v in out.items()}, torch.tensor(y)
Xt, yt = data(tf, "train"); Xv, yv = data(vf, "val")
print("train", len(yt), "val", len(yv), flush=True)
for k in Xt:
    mlp = " mlp %.2f" % probe(Xt[k], yt, Xv[k], yv, "mlp")[0] if k in ("mean", "centre", "c2", "grid") else ""
    print(k, "lin %.2f" % probe(Xt[k], yt, Xv[k], yv)[0] + mlp, flush=True)
