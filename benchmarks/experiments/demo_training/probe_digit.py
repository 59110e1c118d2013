# digit probe by digit height, linear vs 1-hidden-layer MLP on the mean of the digit's patches
import torch, numpy as np
from slimvlm.demo import scenes
torch.set_num_threads(1); torch.manual_seed(0)
from cached import load
(tf, _), (vf, _) = load()
def data(feats, split, n):
    X, y, h = [], [], []
    for i, s in enumerate(scenes.split_seeds(split, n)):
        for o in scenes.make_scene(s).objects:
            if o.digit is None: continue
            x0, y0, x1, y1 = o.digit_bbox
            ps = [r * 24 + c for r in range(y0 // 14, (y1 - 1) // 14 + 1) for c in range(x0 // 14, (x1 - 1) // 14 + 1)]
            X.append(feats[i, ps].float().mean(0)); y.append(o.digit); h.append(y1 - y0)
    return torch.stack(X), torch.tensor(y), torch.tensor(h)
Xt, yt, ht = data(tf, "train", 1500); Xv, yv, hv = data(vf, "val", 128)
print("val digit heights: quartiles", np.percentile(hv.numpy(), [25, 50, 75]))
mu, sd = Xt.mean(0), Xt.std(0); Xt = (Xt - mu) / sd; Xv = (Xv - mu) / sd
for name, net in (("linear", torch.nn.Linear(384, 10)), ("mlp", torch.nn.Sequential(torch.nn.Linear(384, 512), torch.nn.GELU(), torch.nn.Dropout(0.3), torch.nn.Linear(512, 10)))):
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
    for it in range(400):
        net.train(); loss = torch.nn.functional.cross_entropy(net(Xt), yt)
        opt.zero_grad(); loss.backward(); opt.step()
    net.eval(); ok = (net(Xv).argmax(1) == yv)
    for lo, hi in ((10, 16), (16, 28), (28, 100)):
        m = (hv >= lo) & (hv < hi)
        print(name, f"height {lo}-{hi}px", "val", round(ok[m].float().mean().item(), 3), "n", int(m.sum()))
    print(name, "all", round(ok.float().mean().item(), 3))
