# how many full-batch passes the linear digit probes need (2x2 block around the centre; centre patch)
import sys
import torch
from slimvlm.demo import scenes
torch.set_num_threads(2)
from cached import load
from digit_probe import patch_at as P
(tf, _), (vf, _) = load()
def data(feats, split):
    out = {"centre": [], "2x2": []}; y = []
    for i, s in enumerate(scenes.split_seeds(split, feats.shape[0])):
        for o in scenes.make_scene(s).objects:
            if o.digit is None: continue
            x0, y0, x1, y1 = o.digit_bbox; fx, fy = (x0 + x1) / 2, (y0 + y1) / 2
            f = feats[i].float()
            out["centre"].append(f[P(fx, fy)])
            out["2x2"].append(f[[P(fx - 7, fy - 7), P(fx + 7, fy - 7), P(fx - 7, fy + 7), P(fx + 7, fy + 7)]].flatten())
            y.append(o.digit)
    return {k: torch.stack(v) for k, v in out.items()}, torch.tensor(y)
Xt, yt = data(tf, "train"); Xv, yv = data(vf, "val")
for k in Xt:
    torch.manual_seed(0)
    A, B = Xt[k], Xv[k]; mu, sd = A.mean(0), A.std(0) + 1e-6; A = (A - mu) / sd; B = (B - mu) / sd
    net = torch.nn.Linear(A.shape[1], 10); opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.5)
    res = []
    for it in range(1, 401):
        loss = torch.nn.functional.cross_entropy(net(A), yt); opt.zero_grad(); loss.backward(); opt.step()
        if it in (1, 5, 10, 20, 50, 100, 200, 400):
            with torch.no_grad(): res.append(f"{it}:{(net(B).argmax(1) == yv).float().mean().item():.2f}/{loss.item():.2f}")
    print(k, " ".join(res), flush=True)
