# DeepSets over 2x2 blocks: element = concat(x_p, x_{p-1}, x_{p-24}, x_{p-25}) for p in the digit's patches (+1 row/col
# down-right so every block touching the digit is counted), MLP then mean then linear
import sys
import torch
from slimvlm.demo import scenes
from slimvlm.demo.train import box_patches, feature_stats
torch.set_num_threads(1)
from cached import load
(tf, _), (vf, _) = load()
mu, sd = feature_stats(tf)
ext = int(sys.argv[1]) if len(sys.argv) > 1 else 0
def data(feats, split):
    X, seg, y = [], [], []
    for i, s in enumerate(scenes.split_seeds(split, feats.shape[0])):
        f = (feats[i].float() - mu) / sd
        for o in scenes.make_scene(s).objects:
            if o.digit is None: continue
            x0, y0, x1, y1 = o.digit_bbox
            ps = box_patches((x0, y0, x1 + 14 * ext, y1 + 14 * ext))
            blocks = []
            for p in ps:
                r, c = divmod(p, 24)
                nb = [p, p - 1 if c else p, p - 24 if r else p, p - 25 if r and c else p]
                blocks.append(f[nb].flatten())
            X.append(torch.stack(blocks)); seg += [len(y)] * len(ps); y.append(o.digit)
    return torch.cat(X), torch.tensor(seg), torch.tensor(y)
Xt, st, yt = data(tf, "train"); Xv, sv, yv = data(vf, "val")
print("train", len(yt), "val", len(yv), flush=True)
hid = 128
torch.manual_seed(0)
phi = torch.nn.Sequential(torch.nn.Linear(Xt.shape[1], 256), torch.nn.GELU(), torch.nn.Linear(256, hid))
head = torch.nn.Linear(hid, 10)
def fwd(X, seg, n, train):
    h = phi(torch.nn.functional.dropout(X, 0.2, train))
    return head(torch.zeros(n, hid).index_add(0, seg, h) / torch.bincount(seg, minlength=n)[:, None])
opt = torch.optim.AdamW(list(phi.parameters()) + list(head.parameters()), lr=1e-3, weight_decay=0.05)
for it in range(300):
    loss = torch.nn.functional.cross_entropy(fwd(Xt, st, len(yt), True), yt); opt.zero_grad(); loss.backward(); opt.step()
    if (it + 1) % 25 == 0:
        with torch.no_grad():
            print(it + 1, "loss %.3f" % loss.item(), "val %.2f" % (fwd(Xv, sv, len(yv), False).argmax(1) == yv).float().mean().item(), flush=True)
