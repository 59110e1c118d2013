# Is an object's size in the mean of its patches (tower layer -2)? Ridge regression of log(drawn area) on the
# standardised mean feature, fitted on the objects of N training scenes, and how often it orders the two objects
# of a validation `larger` question right. Runs the tower itself (~0.3 s/scene). Usage: probe_size.py N
import sys
import numpy as np
import torch
from slimvlm.demo import scenes
from slimvlm.demo.train import cache_features, object_patches
torch.set_num_threads(2)


def data(split, n):
    seeds = scenes.split_seeds(split, n)
    feats, _ = cache_features(seeds, None, progress=False)
    X, y, pairs = [], [], []
    for i, s in enumerate(seeds):
        sc = scenes.make_scene(s)
        base = len(X)
        for o in sc.objects:
            X.append(feats[i].float()[object_patches(o)].mean(0))
            y.append(np.log(o.area))
        pairs += [(base + q.objects[0], base + q.objects[1]) for q in scenes.questions(sc) if q.qtype == "larger"]
    return torch.stack(X), torch.tensor(y, dtype=torch.float32), pairs  # pairs: (larger, smaller)


Xt, yt, Pt = data("train", int(sys.argv[1]))
Xv, yv, Pv = data("val", 128)
mu, sd = Xt.mean(0), Xt.std(0) + 1e-6
A = torch.cat([(Xt - mu) / sd, torch.ones(len(Xt), 1)], 1)
B = torch.cat([(Xv - mu) / sd, torch.ones(len(Xv), 1)], 1)
for lam in (1.0, 10.0, 100.0):
    w = torch.linalg.solve(A.T @ A + lam * torch.eye(A.shape[1]), A.T @ yt)
    pv, pt = B @ w, A @ w
    r2 = 1 - ((pv - yv) ** 2).mean() / yv.var()
    acc_v = np.mean([float(pv[a] > pv[b]) for a, b in Pv])
    acc_t = np.mean([float(pt[a] > pt[b]) for a, b in Pt])
    print(f"ridge {lam}: val R2 {r2:.3f}; larger pairs ordered right: val {acc_v:.3f} ({len(Pv)}), train {acc_t:.3f}")
