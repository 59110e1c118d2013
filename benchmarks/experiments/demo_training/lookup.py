# isolated retrieval: can one attention layer over standardised DINOv2 patches find "red circle"?
import os, torch, time, numpy as np, torch.nn.functional as F
from slimvlm.demo import scenes
from slimvlm.demo.train import object_patches, feature_stats
torch.set_num_threads(2); torch.manual_seed(0)
from cached import load
(tf, _), (vf, _) = load()
mean, std = feature_stats(tf)
C = list(scenes.COLORS); K = list(scenes.KINDS)
def items(split, n):
    out = []
    for i, s in enumerate(scenes.split_seeds(split, n)):
        sc = scenes.make_scene(s)
        for o in sc.objects:
            hits = [j for j, p in enumerate(sc.objects) if p.color == o.color and p.kind == o.kind]
            out.append((i, C.index(o.color), K.index(o.kind), sorted({p for j in hits for p in object_patches(sc.objects[j])})))
    return out
tr = items("train", 1500); va = items("val", 128)
print(len(tr), len(va))
d = 64
proj = torch.nn.Sequential(torch.nn.Linear(384, 256), torch.nn.GELU(), torch.nn.Linear(256, 256))
ec = torch.nn.Embedding(8, 256); ek = torch.nn.Embedding(7, 256)
Wq = torch.nn.Linear(256, d, bias=False); Wk = torch.nn.Linear(256, d, bias=False)
for m in (ec, ek): torch.nn.init.normal_(m.weight, std=0.02)
ps = [*proj.parameters(), *ec.parameters(), *ek.parameters(), *Wq.parameters(), *Wk.parameters()]
opt = torch.optim.AdamW(ps, lr=2e-3)
def run(data, feats, idx):
    b = [data[i] for i in idx]
    f = (feats[[x[0] for x in b]].float() - mean) / std
    h = proj(f)  # B,576,256
    h = h / (h.norm(dim=-1, keepdim=True) / 16)  # rmsnorm-ish
    q = Wq(ec(torch.tensor([x[1] for x in b])) + ek(torch.tensor([x[2] for x in b])))
    logit = torch.einsum("bd,bpd->bp", q, Wk(h)) / d ** 0.5
    a = logit.softmax(-1)
    mass = torch.stack([a[j, x[3]].sum() for j, x in enumerate(b)])
    return -torch.log(mass.clamp(min=1e-6)).mean(), mass
t = time.time()
for step in range(400):
    idx = torch.randint(len(tr), (64,)).tolist()
    loss, m = run(tr, tf, idx)
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 50 == 49:
        with torch.no_grad():
            _, vm = run(va, vf, range(len(va)))
        print(step + 1, f"loss {loss.item():.3f} val mass mean {vm.mean():.3f} median {vm.median():.3f} >0.5: {(vm > 0.5).float().mean():.2f}", f"{time.time()-t:.0f}s", flush=True)
