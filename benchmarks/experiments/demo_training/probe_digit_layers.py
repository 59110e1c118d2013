# digit probes per DINOv2 layer (the tower run afresh on 128 val + N train scenes: python probe_digit_layers.py 900):
# mean of the digit's patches and a 3 x 3 grid inside its box, linear and MLP
# digit probe per DINOv2 layer: mean of the digit's patches and 3x3 grid, on fresh tower runs
import os, sys, time
import torch
from slimvlm.demo import scenes
from slimvlm.demo.model import to_pixels
from slimvlm.assets import load_dinov2_small
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
                ps = [r * 24 + c for r in range(y0 // 14, (y1 - 1) // 14 + 1) for c in range(x0 // 14, (x1 - 1) // 14 + 1)]
                gs = [int((y0 + fy * (y1 - y0)) // 14) * 24 + int((x0 + fx * (x1 - x0)) // 14) for fy in FR for fx in FR]
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


def probe(Xt, Xv, kind):
    torch.manual_seed(0)
    Xt, Xv = Xt.float(), Xv.float()
    mu, sd = Xt.mean(0), Xt.std(0) + 1e-6; Xt = (Xt - mu) / sd; Xv = (Xv - mu) / sd
    d = Xt.shape[1]
    net = torch.nn.Linear(d, 10) if kind == "linear" else torch.nn.Sequential(torch.nn.Linear(d, 512), torch.nn.GELU(), torch.nn.Dropout(0.3), torch.nn.Linear(512, 10))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.5 if kind == "linear" else 0.05)
    for it in range(400):
        net.train(); loss = torch.nn.functional.cross_entropy(net(Xt), yt); opt.zero_grad(); loss.backward(); opt.step()
    net.eval()
    with torch.no_grad(): return (net(Xv).argmax(1) == yv).float().mean().item()
print("train", len(yt), "val", len(yv))
for l in sorted(trM):
    print(l, "mean lin %.2f mlp %.2f | grid lin %.2f mlp %.2f" % (probe(trM[l], vM[l], "linear"), probe(trM[l], vM[l], "mlp"), probe(trG[l], vG[l], "linear"), probe(trG[l], vG[l], "mlp")), flush=True)
