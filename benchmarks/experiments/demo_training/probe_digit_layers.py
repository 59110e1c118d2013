# digit probes per DINOv2 layer (the tower run afresh on 128 val + N train scenes: python probe_digit_layers.py 900):
# mean of the digit's patches and a 3 x 3 grid inside its box, linear and MLP
import os, sys, time
import torch
from slimvlm.demo import scenes
from slimvlm.demo.model import to_pixels
from slimvlm.assets import load_dinov2_small
from slimvlm.demo.train import box_patches
from digit_probe import patch_at, probe
torch.set_num_threads(2)
tower = load_dinov2_small().eval()
FR = (1 / 6, 1 / 2, 5 / 6)
LAYERS = list(range(13))
def collect(split, n):
    M = {l: [] for l in LAYERS}; G = {l: [] for l in LAYERS}; y = []
    seeds = scenes.split_seeds(split, n)
    for st in range(0, n, 8):
        batch = [scenes.make_scene(s) for s in seeds[st:st + 8]]
        with torch.no_grad():
            hs = tower(pixel_values=to_pixels(batch), output_hidden_states=True).hidden_states
        for b, sc in enumerate(batch):
            for o in sc.objects:
                if o.digit is None: continue
                x0, y0, x1, y1 = o.digit_bbox
                ps = box_patches(o.digit_bbox)
                gs = [patch_at(x0 + fx * (x1 - x0), y0 + fy * (y1 - y0)) for fy in FR for fx in FR]
                for l in LAYERS:
                    f = hs[l][b, 1:]
                    M[l].append(f[ps].mean(0).half()); G[l].append(f[gs].flatten().half())
                y.append(o.digit)
    return {l: torch.stack(M[l]) for l in LAYERS}, {l: torch.stack(G[l]) for l in LAYERS}, torch.tensor(y)
t = time.time()
v = collect("val", 128); print("val", len(v[2]), time.time() - t, flush=True)
tr = collect("train", int(sys.argv[1])); print("train", len(tr[2]), time.time() - t, flush=True)
torch.save((tr, v), os.environ.get("EXP_DIR", "/tmp/exp") + "/layers.pt")
(trM, trG, yt), (vM, vG, yv) = tr, v

print("train", len(yt), "val", len(yv))
for l in sorted(trM):
    print(l, "mean lin %.2f mlp %.2f | grid lin %.2f mlp %.2f" % tuple(probe(X[l], yt, V[l], yv, kind)[0] for X, V in ((trM, vM), (trG, vG)) for kind in ("linear", "mlp")), flush=True)
