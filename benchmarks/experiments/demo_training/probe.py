import torch, numpy as np
from slimvlm.demo import scenes
torch.set_num_threads(1)
from cached import load
(tf, tp), (vf, vp) = load()
cols = list(scenes.COLORS); kinds = list(scenes.KINDS)
def data(feats, split, n):
    X, yc, yk, yp, sm = [], [], [], [], []
    for i, s in enumerate(scenes.split_seeds(split, n)):
        sc = scenes.make_scene(s)
        for o in sc.objects:
            cx, cy = o.center
            p = (int(cy)//14)*24 + int(cx)//14
            X.append(feats[i, p].float()); yc.append(cols.index(o.color)); yk.append(kinds.index(o.kind)); yp.append(scenes.PLACES.index(o.place)); sm.append(o.small)
    return torch.stack(X), torch.tensor(yc), torch.tensor(yk), torch.tensor(yp), torch.tensor(sm)
Xt, ct, kt, pt, st = data(tf, "train", 1500)
Xv, cv, kv, pv, sv = data(vf, "val", 128)
mu, sd = Xt.mean(0), Xt.std(0)
Xt=(Xt-mu)/sd; Xv=(Xv-mu)/sd
for name, yt, yv, K in (("color", ct, cv, len(cols)), ("kind", kt, kv, len(kinds)), ("place", pt, pv, len(scenes.PLACES))):
    W = torch.zeros(384, K, requires_grad=True); b = torch.zeros(K, requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=1e-2)
    for it in range(500):
        loss = torch.nn.functional.cross_entropy(Xt@W+b, yt) + 1e-4*(W**2).sum()
        opt.zero_grad(); loss.backward(); opt.step()
    pred = (Xv@W+b).argmax(1)
    print(name, "val acc", (pred==yv).float().mean().item(), "small", (pred[sv]==yv[sv]).float().mean().item(), "n", len(yv), "chance", np.bincount(yt).max()/len(yt))
