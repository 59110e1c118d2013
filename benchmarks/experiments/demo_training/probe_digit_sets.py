# DeepSets probe: linear(mean_p MLP(x_p)) over the digit's patches: what a per-patch projector + one averaging read can give
import sys
import torch
from slimvlm.demo import scenes
from slimvlm.demo.train import box_patches, feature_stats
torch.set_num_threads(2)
from cached import load
(tf, _), (vf, _) = load()
mu, sd = feature_stats(tf)
def data(feats, split):
    X, seg, y = [], [], []
    for i, s in enumerate(scenes.split_seeds(split, feats.shape[0])):
        for o in scenes.make_scene(s).objects:
            if o.digit is None: continue
            ps = box_patches(o.digit_bbox)
            X.append((feats[i, ps].float() - mu) / sd); seg += [len(y)] * len(ps); y.append(o.digit)
    return torch.cat(X), torch.tensor(seg), torch.tensor(y)
Xt, st, yt = data(tf, "train"); Xv, sv, yv = data(vf, "val")
print("train", len(yt), "patches", len(st), "val", len(yv), flush=True)
hid = int(sys.argv[1]) if len(sys.argv) > 1 else 256
torch.manual_seed(0)
phi = torch.nn.Sequential(torch.nn.Linear(384, 1024), torch.nn.GELU(), torch.nn.Linear(1024, hid))
head = torch.nn.Linear(hid, 10)
def fwd(X, seg, n, train):
    h = phi(torch.nn.functional.dropout(X, 0.1, train))
    m = torch.zeros(n, hid).index_add(0, seg, h) / torch.bincount(seg, minlength=n)[:, None]
    return head(m)
opt = torch.optim.AdamW(list(phi.parameters()) + list(head.parameters()), lr=1e-3, weight_decay=0.05)
for it in range(600):
    loss = torch.nn.functional.cross_entropy(fwd(Xt, st, len(yt), True), yt); opt.zero_grad(); loss.backward(); opt.step()
    if (it + 1) % 100 == 0:
        with torch.no_grad():
            print(it + 1, "loss %.3f" % loss.item(), "train %.2f" % (fwd(Xt, st, len(yt), False).argmax(1) == yt).float().mean().item(),
                  "val %.2f" % (fwd(Xv, sv, len(yv), False).argmax(1) == yv).float().mean().item(), flush=True)
