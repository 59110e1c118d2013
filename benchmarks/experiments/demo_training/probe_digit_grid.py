# digit probe that keeps the layout: the features of the patches under a 3 x 3 grid of points inside the digit's
# box, concatenated (probe_digit.py averages the patches, which throws away which segments are where)
import numpy as np
import torch

from slimvlm.demo import scenes

torch.set_num_threads(1); torch.manual_seed(0)
from cached import load
(tf, _), (vf, _) = load()
FR = (1 / 6, 1 / 2, 5 / 6)


def data(feats, split, n):
    X, y, h = [], [], []
    for i, s in enumerate(scenes.split_seeds(split, n)):
        for o in scenes.make_scene(s).objects:
            if o.digit is None:
                continue
            x0, y0, x1, y1 = o.digit_bbox
            ps = [int((y0 + fy * (y1 - y0)) // 14) * 24 + int((x0 + fx * (x1 - x0)) // 14) for fy in FR for fx in FR]
            X.append(feats[i, ps].float().flatten()); y.append(o.digit); h.append(y1 - y0)
    return torch.stack(X), torch.tensor(y), torch.tensor(h)


Xt, yt, ht = data(tf, "train", tf.shape[0]); Xv, yv, hv = data(vf, "val", vf.shape[0])
print("digits train", len(yt), "val", len(yv), "val heights quartiles", np.percentile(hv.numpy(), [25, 50, 75]))
mu, sd = Xt.mean(0), Xt.std(0) + 1e-6; Xt = (Xt - mu) / sd; Xv = (Xv - mu) / sd
d = Xt.shape[1]
for name, net, wd in (("linear", torch.nn.Linear(d, 10), 0.5),
                      ("mlp", torch.nn.Sequential(torch.nn.Linear(d, 512), torch.nn.GELU(), torch.nn.Dropout(0.3), torch.nn.Linear(512, 10)), 0.05)):
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=wd)
    for it in range(400):
        net.train(); loss = torch.nn.functional.cross_entropy(net(Xt), yt)
        opt.zero_grad(); loss.backward(); opt.step()
    net.eval()
    with torch.no_grad():
        ok = net(Xv).argmax(1) == yv; tr = (net(Xt).argmax(1) == yt).float().mean().item()
    for lo, hi in ((10, 16), (16, 28), (28, 100)):
        m = (hv >= lo) & (hv < hi)
        print(name, f"height {lo}-{hi}px", "val", round(ok[m].float().mean().item(), 3), "n", int(m.sum()))
    print(name, "all val", round(ok.float().mean().item(), 3), "train", round(tr, 3))
